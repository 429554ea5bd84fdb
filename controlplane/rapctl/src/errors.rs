//! What a failed control-plane call looks like to an operator:
//! `error: <CODE>: <message>` and a `hint:` line saying what to do next.

use prost::Message;
use rap_core::codes;
use rap_proto::pb;
use std::fmt;

/// Longest server-supplied message shown (characters); the rest is cut.
const MESSAGE_CHARS_MAX: usize = 1000;

/// Code of a connection that could not be made at all.
pub const CONNECT_FAILED: &str = "CONNECT_FAILED";
/// Code of a missing or unusable local API token file.
pub const NO_TOKEN: &str = "NO_TOKEN";

/// A refusal or failure with a stable code and, where one is known, a hint.
/// `main` prints it as `error: CODE: message` then `hint: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// Stable code: the server's `ErrorDetail.code`, the gRPC code name, or
    /// a local code such as [`CONNECT_FAILED`].
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// What to do next, if known.
    pub hint: Option<String>,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for CliError {}

/// What a hint may mention about the failed call.
#[derive(Debug, Clone, Copy, Default)]
pub struct HintContext<'a> {
    /// The endpoint that was called.
    pub endpoint: &'a str,
    /// The token file that was used.
    pub token_file: &'a str,
    /// For `NO_QUORUM`: voters the authority group reaches.
    pub reachable_voters: u32,
    /// For `NO_QUORUM`: voters in the group.
    pub total_voters: u32,
    /// The command noun that failed (`cluster`, `join-request`, ...), or
    /// empty.
    pub noun: &'a str,
}

/// Nouns with a `list` subcommand.
const LISTABLE: &[&str] = &[
    "cluster",
    "token",
    "join-request",
    "node",
    "role",
    "group",
    "service",
    "audit",
    "org",
];

/// "`rapctl <noun> list`" for the failed command's noun.
fn list_command(noun: &str) -> String {
    if LISTABLE.contains(&noun) {
        format!("`rapctl {noun} list`")
    } else {
        "the matching `rapctl ... list`".to_string()
    }
}

/// The next step for an operator who got `code`. Pure: no I/O.
pub fn hint_for(code: &str, ctx: &HintContext<'_>) -> Option<String> {
    let endpoint = ctx.endpoint;
    let hint = match code {
        codes::UNAUTHENTICATED => format!(
            "the API token was refused: check that the token file ({}) holds a current \
             `rapat.<id>.<secret>` token, or point --token-file / RAP_TOKEN_FILE at one",
            ctx.token_file
        ),
        NO_TOKEN => format!(
            "`rap-controlplane init` prints the first platform-owner token; save it to {} \
             (mode 0600) or point --token-file / RAP_TOKEN_FILE at it; \
             `rapctl principal create` makes more",
            ctx.token_file
        ),
        codes::PERMISSION_DENIED => "your principal kind may not do this; `rapctl whoami` shows \
             who the token belongs to"
            .to_string(),
        codes::API_TOKEN_EXPIRED | codes::API_TOKEN_REVOKED => format!(
            "the API token in {} can no longer be used: a platform owner makes a new one with \
             `rapctl principal token create <principal-id>` (for an owner locked out, \
             `rap-controlplane owner-token` on the control plane host)",
            ctx.token_file
        ),
        codes::PRINCIPAL_DISABLED => "this principal is disabled: a platform owner may \
             `rapctl principal enable <principal-id>`"
            .to_string(),
        codes::STEP_UP_REQUIRED => "this action needs a fresh second factor: run \
             `rapctl step-up` with the code your authenticator shows, then run the command \
             again (a step-up lasts 5 minutes; nothing was changed)"
            .to_string(),
        codes::TOTP_INVALID => "the code was wrong, already used, or your clock is off: wait \
             for the next code (every 30 s) and try again"
            .to_string(),
        codes::TOTP_NOT_ENROLLED => "this principal has no authenticator yet: \
             `rapctl principal totp enroll`, then `rapctl principal totp confirm <code>`"
            .to_string(),
        codes::RATE_LIMITED => "this caller sends faster than its own limit; wait the time the \
             message says and retry"
            .to_string(),
        codes::NO_QUORUM => format!(
            "the cluster's authority group reaches {}/{} voters; bring voters back or, if the \
             majority is lost for good, see docs/operations.md \"Promotion\"; nothing was changed",
            ctx.reachable_voters, ctx.total_voters
        ),
        codes::NOT_BOOTSTRAPPED => "the cluster has no authority group yet: run `rapctl cluster \
             bootstrap <cluster-id> --voter <node-id>=<host:port> ...` first"
            .to_string(),
        codes::TOKEN_EXPIRED
        | codes::TOKEN_REVOKED
        | codes::TOKEN_EXHAUSTED
        | codes::TOKEN_UNKNOWN => "that join token cannot be used any more: create a new one with \
             `rapctl token create --cluster <cluster-id>`"
            .to_string(),
        codes::TOKEN_MALFORMED => "a join token is `rapjt.<id>.<secret>`: copy it whole, as \
             `rapctl token create` printed it"
            .to_string(),
        codes::TOKEN_WRONG_CLUSTER => {
            "that join token belongs to another cluster: create one with \
             `rapctl token create --cluster <cluster-id>` for this cluster"
                .to_string()
        }
        c if c.starts_with("TOKEN_") => "the join token was refused: `rapctl token list \
             --cluster <cluster-id>` shows its state; create a new one if needed"
            .to_string(),
        codes::NOT_FOUND => format!(
            "check the id: {} shows what exists (and what your principal may see)",
            list_command(ctx.noun)
        ),
        codes::ALREADY_EXISTS => format!(
            "it exists already: pick another id, or see the existing one with {}",
            list_command(ctx.noun)
        ),
        codes::FAILED_PRECONDITION => format!(
            "the object is not in a state that allows this (the message says why); {} shows \
             its current state",
            list_command(ctx.noun)
        ),
        codes::MISSING_CAPABILITY => {
            "the node must report that capability first; `rapctl node show` \
             lists what it reported"
                .to_string()
        }
        codes::NO_MEMBERSHIP => {
            "the node is not an active member of the cluster; `rapctl node list \
             --cluster <cluster-id>` shows who is"
                .to_string()
        }
        codes::GROUP_CYCLE => "a group cannot move under itself or one of its descendants; \
             `rapctl group list --cluster <cluster-id>` shows the tree"
            .to_string(),
        codes::SERVICE_NOT_ALLOWED => "a service runs only on a node holding one of its roles: \
             `rapctl role assign --cluster <cluster-id> --node <node> --role <role>` first \
             (disabling is always allowed)"
            .to_string(),
        codes::STORAGE_ROLE => "voters and learners hold every shard and are not cache \
             replicas (nor are cache replicas placed with `rapctl node set-location`); \
             `rapctl cluster placement <cluster-id>` lists each storage node's role"
            .to_string(),
        codes::STALE_FENCE => "a newer authority term exists; nothing was changed. Retry; if it \
             persists, `rapctl cluster show <cluster-id>` shows the current term"
            .to_string(),
        codes::AUTHORITY_UNREACHABLE | codes::AUTHORITY_REFUSED => {
            "the control plane could not get the \
             cluster's authority group to agree; check that its storage nodes (the --voter \
             addresses when bootstrapping, else those `rapctl cluster show <cluster-id>` lists) \
             run and are reachable from the control plane; nothing was changed"
                .to_string()
        }
        codes::INVALID_ARGUMENT | codes::OVERSIZE => {
            "check the arguments; `--help` shows the accepted forms".to_string()
        }
        CONNECT_FAILED | "UNAVAILABLE" => format!(
            "is `rap-controlplane serve` running at {endpoint}? check --endpoint / RAP_ENDPOINT \
             and --ca (and --server-name for a certificate name mismatch)"
        ),
        "DEADLINE_EXCEEDED" => format!(
            "the control plane at {endpoint} did not answer in time; it may be overloaded or \
             waiting on its database or authority group; retry"
        ),
        "UNIMPLEMENTED" => format!(
            "the control plane at {endpoint} does not offer this call; is it older than this \
             rapctl?"
        ),
        codes::NOT_IMPLEMENTED => {
            "this control plane does not do that yet; the message says what to use instead"
                .to_string()
        }
        codes::OVERLOADED | "RESOURCE_EXHAUSTED" => {
            "the control plane is busy; retry in a few seconds".to_string()
        }
        codes::DATABASE | codes::INTERNAL | codes::KEYS | codes::MIGRATION => {
            "the control plane failed; its log has the details".to_string()
        }
        _ => return None,
    };
    Some(hint)
}

/// The SCREAMING_CASE name of a gRPC status code.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Turns a gRPC status into a [`CliError`]: the code and counts from its
/// `ErrorDetail` when it carries one, else from the gRPC code.
pub fn from_status(status: &tonic::Status, ctx: HintContext<'_>) -> CliError {
    let detail = pb::ErrorDetail::decode(status.details()).unwrap_or_default();
    let code = if detail.code.is_empty() {
        grpc_code_name(status.code()).to_string()
    } else {
        clean(&detail.code)
    };
    let message = if detail.message.is_empty() {
        status.message()
    } else {
        detail.message.as_str()
    };
    let message = if message.is_empty() {
        "(no message)".to_string()
    } else {
        clean(message)
    };
    let ctx = HintContext {
        reachable_voters: detail.reachable_voters,
        total_voters: detail.total_voters,
        ..ctx
    };
    CliError {
        hint: hint_for(&code, &ctx),
        code,
        message,
    }
}

/// A connection failure: `error` and its causes on one line.
pub fn connect_failed(error: &(dyn std::error::Error + 'static), endpoint: &str) -> CliError {
    let mut message = format!("cannot connect to {endpoint}");
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut last = String::new();
    while let Some(e) = cause {
        let text = e.to_string();
        // Wrapper errors often repeat their source's text.
        if !text.is_empty() && !last.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        last = text;
        cause = e.source();
    }
    let ctx = HintContext {
        endpoint,
        ..HintContext::default()
    };
    CliError {
        code: CONNECT_FAILED.to_string(),
        message: clean(&message),
        hint: hint_for(CONNECT_FAILED, &ctx),
    }
}

/// Server-supplied text made safe for a terminal: control characters
/// escaped, length bounded.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MESSAGE_CHARS_MAX));
    for (i, c) in text.chars().enumerate() {
        if i == MESSAGE_CHARS_MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> HintContext<'static> {
        HintContext {
            endpoint: "https://cp.example:7443",
            token_file: "/home/op/.config/rap/token",
            reachable_voters: 1,
            total_voters: 3,
            noun: "cluster",
        }
    }

    #[test]
    fn hints_name_the_next_step() {
        let c = ctx();
        let hint = |code| hint_for(code, &c).unwrap_or_default();
        assert!(hint("UNAUTHENTICATED").contains("RAP_TOKEN_FILE"));
        assert!(hint("UNAUTHENTICATED").contains("/home/op/.config/rap/token"));
        assert!(hint(NO_TOKEN).contains("rap-controlplane init"));
        assert!(hint("PERMISSION_DENIED").contains("rapctl whoami"));
        let quorum = hint("NO_QUORUM");
        assert!(quorum.contains("1/3 voters"), "{quorum}");
        assert!(quorum.contains("Promotion"));
        assert!(quorum.contains("nothing was changed"));
        assert!(hint("NOT_BOOTSTRAPPED").contains("rapctl cluster bootstrap"));
        for code in ["TOKEN_EXPIRED", "TOKEN_REVOKED", "TOKEN_EXHAUSTED"] {
            assert!(hint(code).contains("rapctl token create"), "{code}");
        }
        assert!(hint("TOKEN_SOMETHING_NEW").contains("token list"));
        assert!(hint("NOT_FOUND").contains("`rapctl cluster list`"));
        assert!(hint("ALREADY_EXISTS").contains("exists already"));
        assert!(hint("FAILED_PRECONDITION").contains("`rapctl cluster list`"));
        let principal = HintContext {
            noun: "principal",
            ..c
        };
        assert!(
            hint_for("NOT_FOUND", &principal)
                .unwrap_or_default()
                .contains("rapctl ... list")
        );
        for code in [CONNECT_FAILED, "UNAVAILABLE"] {
            let h = hint(code);
            assert!(h.contains("https://cp.example:7443"), "{h}");
            assert!(h.contains("rap-controlplane serve"));
            assert!(h.contains("RAP_ENDPOINT") && h.contains("--ca"));
        }
        assert_eq!(hint_for("SOMETHING_ELSE", &c), None);
    }

    #[test]
    fn status_detail_code_wins_over_grpc_code() {
        let detail = pb::ErrorDetail {
            code: "NO_QUORUM".into(),
            message: "no quorum: 1/3 voters reachable".into(),
            reachable_voters: 1,
            total_voters: 3,
            ..Default::default()
        };
        let status = tonic::Status::with_details(
            tonic::Code::Unavailable,
            "NO_QUORUM: no quorum",
            detail.encode_to_vec().into(),
        );
        let ctx = HintContext::default();
        let error = from_status(&status, ctx);
        assert_eq!(error.code, "NO_QUORUM");
        assert_eq!(error.message, "no quorum: 1/3 voters reachable");
        assert!(error.hint.unwrap_or_default().contains("1/3"));

        let plain = tonic::Status::permission_denied("nope");
        let error = from_status(&plain, ctx);
        assert_eq!(error.code, "PERMISSION_DENIED");
        assert_eq!(error.message, "nope");
        assert_eq!(error.to_string(), "PERMISSION_DENIED: nope");
    }

    #[test]
    fn server_text_is_escaped_and_bounded() {
        assert_eq!(clean("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\n");
        let long = "x".repeat(MESSAGE_CHARS_MAX + 10);
        assert_eq!(clean(&long).chars().count(), MESSAGE_CHARS_MAX + 1);
    }

    #[test]
    fn connect_failure_lists_causes_once_with_endpoint_hint() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = connect_failed(&io, "http://127.0.0.1:1");
        assert_eq!(error.code, CONNECT_FAILED);
        assert_eq!(
            error.message,
            "cannot connect to http://127.0.0.1:1: refused"
        );
        assert!(
            error
                .hint
                .unwrap_or_default()
                .contains("http://127.0.0.1:1")
        );
    }
}
