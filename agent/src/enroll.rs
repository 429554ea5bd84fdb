//! Node enrollment: what
//! `rap-node-agent join` does.
//!
//! 1. Load the node's ed25519 key, or generate it here (it never leaves
//!    the node; [`crate::state`]).
//! 2. Connect to the control plane over TLS with server name
//!    `<cluster_id>.cluster.rap`, pinning the cluster CA by the
//!    fingerprint from the join command ([`rap_core::tls::ca_pin`]). Nothing is sent
//!    before the pin holds.
//! 3. Submit a join request with the token and a proof of possession
//!    (signature over the prost encoding of `JoinProofPayload`), and save
//!    its id, so that a restarted `join` resumes polling.
//! 4. Poll `GetJoinStatus` with a fresh proof until the request is
//!    approved (then check and store identity, certificate chain, CA,
//!    trust root and storage endpoints), rejected, expired, or the wait
//!    is over.

use crate::state::{
    CA_CERT_FILE, ClusterState, IdentityRecord, NODE_CERT_FILE, PendingJoin,
    STORAGE_ENDPOINTS_FILE, StateError, StorageEndpointRecord, TRUST_ROOT_FILE, key_fingerprint,
};
use ed25519_dalek::{Signer, SigningKey};
use prost::Message;
use rap_core::identity::PeerIdentity;
use rap_core::identity::cluster_server_name;
use rap_core::tls::ca_pin::{CaFingerprint, PinOutcome, PinnedCaVerifier};
use rap_core::tls::{check_issued_chain, pem_certificate};
use rap_proto::ids::{ClusterId, NodeId, RoleName};
use rap_proto::pb;
use rap_proto::pb::enrollment_service_client::EnrollmentServiceClient;
use rap_proto::time::UnixMillis;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

pub use rap_proto::proof::PURPOSE_JOIN;
pub use rap_proto::proof::PURPOSE_STATUS;
/// Random bytes in a proof's nonce (the control plane takes 16..=64).
pub const PROOF_NONCE_BYTES: usize = 16;
/// Prefix of a join token: `rapjt.<id>.<secret>`.
pub const JOIN_TOKEN_PREFIX: &str = "rapjt";

/// Default time between status polls.
pub const POLL_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
/// Shortest poll interval accepted.
pub const POLL_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Longest poll interval accepted.
pub const POLL_INTERVAL_MAX: Duration = Duration::from_secs(10 * 60);
/// Longest `--wait` accepted (0 means "until interrupted").
pub const WAIT_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Longest TCP connect to the control plane.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest TLS handshake with the control plane.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest single RPC.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest join token accepted (the control plane's limit).
pub const TOKEN_BYTES_MAX: usize = 256;
/// Longest `host:port` accepted (a DNS name is at most 253 bytes).
pub const SERVER_BYTES_MAX: usize = 260;
/// Most capabilities reported (the control plane's limit).
pub const CAPABILITIES_MAX: usize = 64;
/// Longest capability name.
pub const CAPABILITY_NAME_BYTES_MAX: usize = 63;
/// Longest capability detail (the control plane's limit).
pub const CAPABILITY_DETAIL_BYTES_MAX: usize = 256;
/// Most requested roles (the control plane's limit).
pub const REQUESTED_ROLES_MAX: usize = 16;
/// Longest fact text: hostname, failure-domain labels (the control
/// plane's limit).
pub const FACT_TEXT_BYTES_MAX: usize = 200;
/// Most bootstrap storage endpoints stored.
pub const STORAGE_ENDPOINTS_MAX: usize = 1024;
/// Largest hostname file read.
const HOSTNAME_FILE_BYTES_MAX: u64 = 1024;
/// Where Linux publishes the host name.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

const _: () = assert!(POLL_INTERVAL_MIN.as_millis() <= POLL_INTERVAL_DEFAULT.as_millis());
const _: () = assert!(POLL_INTERVAL_DEFAULT.as_millis() <= POLL_INTERVAL_MAX.as_millis());
const _: () = assert!(PROOF_NONCE_BYTES >= 16 && PROOF_NONCE_BYTES <= 64);

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// A command-line value is unusable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which value.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Node-local state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The server is not the pinned cluster's control plane.
    #[error("refusing the server at {server}: {reason}")]
    Pinning {
        /// `host:port`.
        server: String,
        /// What the verifier saw.
        reason: String,
    },
    /// The control plane could not be reached.
    #[error("cannot reach the control plane at {server}: {reason}")]
    Connect {
        /// `host:port`.
        server: String,
        /// The transport error chain.
        reason: String,
    },
    /// The control plane refused or failed a call.
    #[error("{call} failed: {code}: {message}")]
    Rpc {
        /// The RPC.
        call: &'static str,
        /// The stable error code (or the gRPC code).
        code: String,
        /// The control plane's message.
        message: String,
    },
    /// The saved join request is unknown to the control plane.
    #[error(
        "the control plane does not know join request {join_request_id} for this key; \
         remove {} to submit a new one",
        path.display()
    )]
    UnknownRequest {
        /// The saved id.
        join_request_id: String,
        /// The saved request's file.
        path: PathBuf,
    },
    /// The saved join request belongs to another key or cluster.
    #[error("{}: {reason}; remove it to submit a new join request", path.display())]
    StalePending {
        /// The saved request's file.
        path: PathBuf,
        /// The mismatch.
        reason: String,
    },
    /// The approved identity does not match this node.
    #[error("the control plane's answer is unusable: {0}")]
    BadIdentity(String),
}

/// A join, as `rap-node-agent join` was asked for it.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// `host:port` of the control plane.
    pub server: String,
    /// The cluster to join.
    pub cluster: ClusterId,
    /// `rapjt.<id>.<secret>`.
    pub token: String,
    /// blake3 of the cluster CA certificate's DER.
    pub ca_fingerprint: CaFingerprint,
    /// The state directory (the cluster's files go to `<dir>/<cluster>`).
    pub state_dir: PathBuf,
    /// Capabilities reported to the control plane.
    pub capabilities: Vec<pb::Capability>,
    /// Roles asked for (a platform admin decides).
    pub roles: Vec<RoleName>,
    /// Facts about this host.
    pub facts: pb::NodeFacts,
    /// Time between status polls.
    pub poll_interval: Duration,
    /// How long to poll for approval; `None` polls until interrupted.
    pub wait: Option<Duration>,
}

/// Progress reported while joining.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The node key was generated now, at this path.
    KeyCreated(PathBuf),
    /// An existing node key is reused.
    KeyReused(PathBuf),
    /// The server proved it holds a certificate from the pinned CA.
    Pinned {
        /// `host:port`.
        server: String,
    },
    /// A new join request was submitted.
    Submitted {
        /// Its id.
        join_request_id: String,
    },
    /// A saved join request is polled again (no new submission).
    Resumed {
        /// Its id.
        join_request_id: String,
    },
    /// The request waits for a platform admin (reported once).
    WaitingForApproval {
        /// Its id.
        join_request_id: String,
    },
    /// A poll failed transiently; polling goes on.
    Retrying {
        /// What failed.
        error: String,
    },
}

/// An approved enrollment, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    /// What `identity.json` holds.
    pub identity: IdentityRecord,
    /// The cluster's state directory.
    pub dir: PathBuf,
    /// The trust root's generation.
    pub trust_generation: u64,
    /// How many bootstrap storage endpoints were stored.
    pub storage_endpoints: usize,
}

/// How a join ended (other than with an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Approved now; everything is stored.
    Approved(Enrolled),
    /// This state directory already holds an identity for the cluster;
    /// nothing was sent.
    AlreadyEnrolled {
        /// The stored identity.
        identity: IdentityRecord,
        /// The cluster's state directory.
        dir: PathBuf,
    },
    /// A platform admin rejected the request.
    Rejected {
        /// The request.
        join_request_id: String,
        /// The admin's reason.
        reason: String,
    },
    /// The request expired before review.
    Expired {
        /// The request.
        join_request_id: String,
    },
    /// Still pending when the wait was over; running `join` again resumes.
    StillPending {
        /// The request.
        join_request_id: String,
    },
    /// Interrupted (the `interrupt` future of [`join`] completed); running
    /// `join` again resumes.
    Interrupted {
        /// The request, when one was submitted.
        join_request_id: Option<String>,
    },
}

pub use rap_proto::proof::proof_message;

/// A fresh proof for `purpose`: (timestamp, nonce, signature).
fn prove(
    key: &SigningKey,
    purpose: &str,
    cluster: &ClusterId,
) -> Result<(i64, Vec<u8>, Vec<u8>), EnrollError> {
    let now = UnixMillis::now().0;
    let nonce = crate::state::random_bytes::<PROOF_NONCE_BYTES>()?.to_vec();
    let public = key.verifying_key().to_bytes();
    let message = proof_message(purpose, cluster.as_str(), &public, now, &nonce);
    Ok((now, nonce, key.sign(&message).to_bytes().to_vec()))
}

/// Checks `host:port` (an `https://` prefix is tolerated) and returns it
/// without the scheme.
pub fn parse_server(text: &str) -> Result<String, EnrollError> {
    let invalid = |reason: String| EnrollError::Invalid {
        what: "--server",
        reason,
    };
    let text = text.trim();
    let text = text.strip_prefix("https://").unwrap_or(text);
    let text = text.strip_suffix('/').unwrap_or(text);
    if text.is_empty() || text.len() > SERVER_BYTES_MAX {
        return Err(invalid(format!(
            "expected host:port of at most {SERVER_BYTES_MAX} bytes"
        )));
    }
    if text.contains("://") || text.contains('/') || text.contains(char::is_whitespace) {
        return Err(invalid(format!("expected host:port, got {text:?}")));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| invalid(format!("expected host:port, got {text:?}")))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(invalid(format!("expected host:port, got {text:?}")));
    }
    Ok(text.to_string())
}

/// Checks the shape of a join token (`rapjt.<hex id>.<alphanumeric
/// secret>`) without echoing the secret.
pub fn check_token(token: &str) -> Result<(), EnrollError> {
    let invalid = |reason: &str| EnrollError::Invalid {
        what: "--token",
        reason: reason.to_string(),
    };
    if token.len() > TOKEN_BYTES_MAX {
        return Err(invalid("longer than a join token"));
    }
    let mut parts = token.split('.');
    let (prefix, id, secret) = (parts.next(), parts.next(), parts.next());
    let shaped = prefix == Some(JOIN_TOKEN_PREFIX)
        && parts.next().is_none()
        && id.is_some_and(|id| {
            !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        && secret.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()));
    if shaped {
        Ok(())
    } else {
        Err(invalid(
            "expected rapjt.<id>.<secret>, as printed by `rapctl token create`",
        ))
    }
}

/// Parses `NAME` or `NAME=DETAIL` (`NAME` is `[a-z0-9_]{1,63}`).
pub fn parse_capability(text: &str) -> Result<pb::Capability, EnrollError> {
    let (name, detail) = text.split_once('=').unwrap_or((text, ""));
    let ok = !name.is_empty()
        && name.len() <= CAPABILITY_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(EnrollError::Invalid {
            what: "--capability",
            reason: format!(
                "{:?} is not NAME[=DETAIL] with NAME in [a-z0-9_]{{1,{CAPABILITY_NAME_BYTES_MAX}}}",
                shorten(text)
            ),
        });
    }
    if detail.len() > CAPABILITY_DETAIL_BYTES_MAX {
        return Err(EnrollError::Invalid {
            what: "--capability",
            reason: format!(
                "the detail of {name} is {} bytes; at most {CAPABILITY_DETAIL_BYTES_MAX}",
                detail.len()
            ),
        });
    }
    Ok(pb::Capability {
        name: name.to_string(),
        detail: detail.to_string(),
    })
}

/// Parses a duration: a whole number with unit `ms`, `s`, `m` or `h`, or
/// a bare number of seconds. `0` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!(
            "{:?} is not a duration like 500ms, 5s, 2m or 1h",
            shorten(text)
        )
    })?;
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60 * 1000,
        "h" => 3600 * 1000,
        _ => {
            return Err(format!(
                "unknown unit {:?} in {:?}; use ms, s, m or h",
                shorten(unit),
                shorten(text)
            ));
        }
    };
    number
        .checked_mul(per_unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{:?} is too long", shorten(text)))
}

/// Checks a poll interval against [`POLL_INTERVAL_MIN`]..=[`POLL_INTERVAL_MAX`].
pub fn check_poll_interval(interval: Duration) -> Result<Duration, EnrollError> {
    if interval < POLL_INTERVAL_MIN || interval > POLL_INTERVAL_MAX {
        return Err(EnrollError::Invalid {
            what: "--poll-interval",
            reason: format!(
                "{interval:?} is outside {POLL_INTERVAL_MIN:?}..={POLL_INTERVAL_MAX:?}"
            ),
        });
    }
    Ok(interval)
}

/// `--wait`: zero polls until interrupted (`None`); at most [`WAIT_MAX`].
pub fn check_wait(wait: Duration) -> Result<Option<Duration>, EnrollError> {
    if wait > WAIT_MAX {
        return Err(EnrollError::Invalid {
            what: "--wait",
            reason: format!("{wait:?} is longer than {WAIT_MAX:?}"),
        });
    }
    Ok((!wait.is_zero()).then_some(wait))
}

/// Checks requested roles: valid role names, at most
/// [`REQUESTED_ROLES_MAX`].
pub fn parse_roles(roles: &[String]) -> Result<Vec<RoleName>, EnrollError> {
    if roles.len() > REQUESTED_ROLES_MAX {
        return Err(EnrollError::Invalid {
            what: "--role",
            reason: format!("{} roles; at most {REQUESTED_ROLES_MAX}", roles.len()),
        });
    }
    roles
        .iter()
        .map(|r| {
            RoleName::new(r.as_str()).map_err(|e| EnrollError::Invalid {
                what: "--role",
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Facts about this host: `hostname` (default: the kernel's host name),
/// OS, architecture, agent version and failure domain.
pub fn local_facts(
    hostname: Option<&str>,
    domain: pb::FailureDomain,
) -> Result<pb::NodeFacts, EnrollError> {
    let hostname = match hostname {
        Some(h) => h.trim().to_string(),
        None => crate::state::read_bounded(Path::new(HOSTNAME_FILE), HOSTNAME_FILE_BYTES_MAX)
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .unwrap_or_default(),
    };
    for (what, value) in [
        ("--hostname", &hostname),
        ("--region", &domain.region),
        ("--zone", &domain.zone),
        ("--host", &domain.host),
    ] {
        if value.len() > FACT_TEXT_BYTES_MAX || value.chars().any(char::is_control) {
            return Err(EnrollError::Invalid {
                what,
                reason: format!(
                    "at most {FACT_TEXT_BYTES_MAX} bytes of printable text, got {:?}",
                    shorten(value)
                ),
            });
        }
    }
    Ok(pb::NodeFacts {
        hostname,
        os: std::env::consts::OS.to_string(),
        arch: std::env::consts::ARCH.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        domain: Some(domain),
        labels: Default::default(),
    })
}

fn shorten(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 80;
    let mut shown: String = text.chars().take(SHOWN_CHARS_MAX).collect();
    if text.chars().count() > SHOWN_CHARS_MAX {
        shown.push('…');
    }
    shown
}

/// A TLS channel to the control plane at `server`, with server name
/// `<cluster>.cluster.rap` and the CA pinned by `fingerprint`. The
/// handshake runs here, so nothing is sent to a server that fails the pin.
/// Returns the channel, the verifier (which keeps checking reconnects)
/// and the pinned CA certificate.
pub async fn connect(
    server: &str,
    cluster: &ClusterId,
    fingerprint: CaFingerprint,
) -> Result<(Channel, Arc<PinnedCaVerifier>, CertificateDer<'static>), EnrollError> {
    rap_core::tls::install_crypto_provider();
    let verifier = Arc::new(PinnedCaVerifier::new(fingerprint));
    let tls = ClientTlsConfig::new()
        .domain_name(cluster_server_name(cluster))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    let connect_error = |reason: String| EnrollError::Connect {
        server: server.to_string(),
        reason,
    };
    let endpoint = Endpoint::from_shared(format!("https://{server}"))
        .map_err(|e| connect_error(error_chain(&e)))?
        .tls_config_with_verifier(tls, Arc::clone(&verifier) as _)
        .map_err(|e| connect_error(error_chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(RPC_TIMEOUT);
    let connected = endpoint.connect().await;
    match (connected, verifier.outcome()) {
        (_, PinOutcome::Refused(reason)) => Err(EnrollError::Pinning {
            server: server.to_string(),
            reason,
        }),
        (Ok(channel), PinOutcome::Pinned(ca)) => Ok((channel, verifier, ca)),
        (Ok(_), PinOutcome::NotYet) => Err(connect_error(
            "the TLS handshake finished without checking the server certificate".into(),
        )),
        (Err(e), _) => Err(connect_error(error_chain(&e))),
    }
}

/// An error with its sources, `: `-separated.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

fn rpc_error(call: &'static str, status: &tonic::Status) -> EnrollError {
    let code = rap_core::codes::error_detail(status)
        .map(|d| d.code)
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| format!("{:?}", status.code()));
    EnrollError::Rpc {
        call,
        code,
        message: shorten_message(status.message()),
    }
}

fn shorten_message(message: &str) -> String {
    const MESSAGE_CHARS_MAX: usize = 500;
    let mut shown: String = message.chars().take(MESSAGE_CHARS_MAX).collect();
    if message.chars().count() > MESSAGE_CHARS_MAX {
        shown.push('…');
    }
    shown
}

/// Whether a failed poll is worth repeating (the control plane restarting,
/// a timeout, overload).
fn is_transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
    )
}

/// Runs the whole join (see the module docs), reporting progress to
/// `on_event`. When `interrupt` completes (e.g. on Ctrl-C), the join stops
/// at the next safe point with [`JoinOutcome::Interrupted`]: while
/// connecting or polling, but never between submitting a request and
/// saving its id (a lost id would leave a pending request that this node
/// cannot poll).
pub async fn join(
    options: &JoinOptions,
    on_event: &mut (dyn FnMut(Event) + Send),
    interrupt: impl Future<Output = ()> + Send,
) -> Result<JoinOutcome, EnrollError> {
    let mut interrupt = std::pin::pin!(interrupt);
    check_token(&options.token)?;
    let state = ClusterState::open(&options.state_dir, &options.cluster)?;
    if let Some(identity) = state.identity()? {
        return Ok(JoinOutcome::AlreadyEnrolled {
            identity,
            dir: state.dir().to_path_buf(),
        });
    }
    let (key, created) = state.load_or_create_key()?;
    let key_path = state.path(crate::state::NODE_KEY_FILE);
    on_event(if created {
        Event::KeyCreated(key_path)
    } else {
        Event::KeyReused(key_path)
    });
    let pending = saved_request(&state, options, &key)?;

    let (channel, verifier, ca) = tokio::select! {
        connected = connect(&options.server, &options.cluster, options.ca_fingerprint) => connected?,
        () = interrupt.as_mut() => {
            return Ok(JoinOutcome::Interrupted { join_request_id: None });
        }
    };
    on_event(Event::Pinned {
        server: options.server.clone(),
    });
    let mut session = Session {
        options,
        state,
        key,
        client: EnrollmentServiceClient::new(channel),
        verifier,
        ca,
    };
    let join_request_id = match pending {
        Some(p) => {
            on_event(Event::Resumed {
                join_request_id: p.join_request_id.clone(),
            });
            p.join_request_id
        }
        None => {
            let id = session.submit().await?;
            on_event(Event::Submitted {
                join_request_id: id.clone(),
            });
            id
        }
    };
    session
        .poll(join_request_id, on_event, interrupt.as_mut())
        .await
}

/// The saved join request, when it belongs to this cluster and key.
fn saved_request(
    state: &ClusterState,
    options: &JoinOptions,
    key: &SigningKey,
) -> Result<Option<PendingJoin>, EnrollError> {
    let Some(pending) = state.pending()? else {
        return Ok(None);
    };
    let path = state.path(crate::state::JOIN_REQUEST_FILE);
    if pending.cluster_id != options.cluster.as_str() {
        return Err(EnrollError::StalePending {
            path,
            reason: format!("it is for cluster {:?}", shorten(&pending.cluster_id)),
        });
    }
    if pending.key_fingerprint != key_fingerprint(key) {
        return Err(EnrollError::StalePending {
            path,
            reason: "it was signed by another node key".into(),
        });
    }
    Ok(Some(pending))
}

/// A join after the pin held.
struct Session<'a> {
    options: &'a JoinOptions,
    state: ClusterState,
    key: SigningKey,
    client: EnrollmentServiceClient<Channel>,
    verifier: Arc<PinnedCaVerifier>,
    ca: CertificateDer<'static>,
}

impl Session<'_> {
    /// Submits a new join request with the token and saves its id.
    async fn submit(&mut self) -> Result<String, EnrollError> {
        let options = self.options;
        let (timestamp_unix_ms, nonce, proof) = prove(&self.key, PURPOSE_JOIN, &options.cluster)?;
        let request = pb::SubmitJoinRequestRequest {
            token: options.token.clone(),
            cluster_id: options.cluster.to_string(),
            node_public_key: self.key.verifying_key().to_bytes().to_vec(),
            facts: Some(options.facts.clone()),
            capabilities: options.capabilities.clone(),
            requested_roles: options.roles.iter().map(ToString::to_string).collect(),
            timestamp_unix_ms,
            nonce,
            proof,
            kind: pb::NodeKind::Agent as i32,
            node_id: String::new(),
            server_names: Vec::new(),
        };
        let answer = match self.client.submit_join_request(request).await {
            Ok(answer) => answer.into_inner(),
            Err(status) => return Err(self.pin_or(rpc_error("SubmitJoinRequest", &status))),
        };
        rap_proto::ids::JoinRequestId::new(answer.join_request_id.as_str())
            .map_err(|e| EnrollError::BadIdentity(format!("join request id: {e}")))?;
        self.state.save_pending(&PendingJoin {
            join_request_id: answer.join_request_id.clone(),
            cluster_id: options.cluster.to_string(),
            server: options.server.clone(),
            key_fingerprint: key_fingerprint(&self.key),
            submitted_at_unix_ms: UnixMillis::now().0,
        })?;
        Ok(answer.join_request_id)
    }

    /// Polls every poll interval until the request is decided or the wait
    /// is over. Transient failures are reported and polled through.
    async fn poll<F: Future<Output = ()>>(
        &mut self,
        join_request_id: String,
        on_event: &mut (dyn FnMut(Event) + Send),
        mut interrupt: std::pin::Pin<&mut F>,
    ) -> Result<JoinOutcome, EnrollError> {
        let interrupted = |join_request_id: String| {
            Ok(JoinOutcome::Interrupted {
                join_request_id: Some(join_request_id),
            })
        };
        let deadline = self.options.wait.map(|w| tokio::time::Instant::now() + w);
        let mut announced = false;
        loop {
            let answer = tokio::select! {
                answer = self.status(&join_request_id) => answer,
                () = interrupt.as_mut() => return interrupted(join_request_id),
            };
            match answer {
                Ok(answer) => {
                    if let Some(outcome) = self.decide(&join_request_id, answer)? {
                        return Ok(outcome);
                    }
                    if !announced {
                        announced = true;
                        on_event(Event::WaitingForApproval {
                            join_request_id: join_request_id.clone(),
                        });
                    }
                }
                Err(status) if status.code() == tonic::Code::NotFound => {
                    return Err(EnrollError::UnknownRequest {
                        join_request_id,
                        path: self.state.path(crate::state::JOIN_REQUEST_FILE),
                    });
                }
                Err(status) if is_transient(&status) => {
                    let error = self.pin_or(rpc_error("GetJoinStatus", &status));
                    if matches!(error, EnrollError::Pinning { .. }) {
                        return Err(error);
                    }
                    on_event(Event::Retrying {
                        error: error.to_string(),
                    });
                }
                Err(status) => return Err(rpc_error("GetJoinStatus", &status)),
            }
            let mut pause = self.options.poll_interval;
            if let Some(deadline) = deadline {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Ok(JoinOutcome::StillPending { join_request_id });
                }
                pause = pause.min(deadline - now);
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = interrupt.as_mut() => return interrupted(join_request_id),
            }
        }
    }

    /// One status poll with a fresh proof.
    async fn status(
        &mut self,
        join_request_id: &str,
    ) -> Result<pb::GetJoinStatusResponse, tonic::Status> {
        let cluster = &self.options.cluster;
        let (timestamp_unix_ms, nonce, proof) = prove(&self.key, PURPOSE_STATUS, cluster)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let request = pb::GetJoinStatusRequest {
            join_request_id: join_request_id.to_string(),
            cluster_id: cluster.to_string(),
            node_public_key: self.key.verifying_key().to_bytes().to_vec(),
            timestamp_unix_ms,
            nonce,
            proof,
        };
        self.client
            .get_join_status(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// The outcome of a decided request (storing an approval); `None`
    /// while pending.
    fn decide(
        &self,
        join_request_id: &str,
        answer: pb::GetJoinStatusResponse,
    ) -> Result<Option<JoinOutcome>, EnrollError> {
        let join_request_id = join_request_id.to_string();
        let outcome = match pb::JoinRequestStatus::try_from(answer.status)
            .unwrap_or(pb::JoinRequestStatus::Unspecified)
        {
            pb::JoinRequestStatus::Pending => return Ok(None),
            pb::JoinRequestStatus::Approved => JoinOutcome::Approved(store_identity(
                self.options,
                &self.state,
                &self.key,
                &self.ca,
                answer,
            )?),
            pb::JoinRequestStatus::Rejected => JoinOutcome::Rejected {
                join_request_id,
                reason: shorten_message(&answer.reason),
            },
            pb::JoinRequestStatus::Expired => JoinOutcome::Expired { join_request_id },
            pb::JoinRequestStatus::Unspecified => {
                return Err(EnrollError::BadIdentity(format!(
                    "unknown join request status {}",
                    answer.status
                )));
            }
        };
        // Decided: a later `join` must not poll this request again.
        self.state.clear_pending()?;
        Ok(Some(outcome))
    }

    /// A pinning refusal seen by the verifier wins over the RPC error it
    /// caused.
    fn pin_or(&self, error: EnrollError) -> EnrollError {
        match self.verifier.outcome() {
            PinOutcome::Refused(reason) => EnrollError::Pinning {
                server: self.options.server.clone(),
                reason,
            },
            _ => error,
        }
    }
}

/// Checks an approval against this node and the pinned CA, then stores it:
/// node.pem, ca.pem, trust-root.bin, storage-endpoints.json, and last
/// identity.json (whose presence means "enrolled").
fn store_identity(
    options: &JoinOptions,
    state: &ClusterState,
    key: &SigningKey,
    ca: &CertificateDer<'static>,
    answer: pb::GetJoinStatusResponse,
) -> Result<Enrolled, EnrollError> {
    let bad = |reason: String| EnrollError::BadIdentity(reason);
    let identity = answer
        .identity
        .ok_or_else(|| bad("approved without an identity".into()))?;
    if identity.cluster_id != options.cluster.as_str() {
        return Err(bad(format!(
            "identity for cluster {:?}, not {}",
            shorten(&identity.cluster_id),
            options.cluster
        )));
    }
    let node_id = NodeId::new(identity.node_id.as_str()).map_err(|e| bad(e.to_string()))?;
    let leaf = check_issued_chain(
        &identity.certificate_chain_pem,
        ca,
        &PeerIdentity::node(options.cluster.clone(), node_id.clone())
            .map_err(|e| bad(e.to_string()))?,
        key.verifying_key().as_bytes(),
    )
    .map_err(bad)?;
    let trust_root = answer
        .trust_root
        .ok_or_else(|| bad("approved without a trust root".into()))?;
    let trust_generation = check_trust_root(&trust_root, &options.cluster)?;
    if answer.bootstrap_endpoints.len() > STORAGE_ENDPOINTS_MAX {
        return Err(bad(format!(
            "{} storage endpoints; at most {STORAGE_ENDPOINTS_MAX}",
            answer.bootstrap_endpoints.len()
        )));
    }
    let endpoints: Vec<StorageEndpointRecord> = answer
        .bootstrap_endpoints
        .into_iter()
        .map(|e| {
            let domain = e.domain.unwrap_or_default();
            StorageEndpointRecord {
                node_id: e.node_id,
                address: e.address,
                region: domain.region,
                zone: domain.zone,
                host: domain.host,
            }
        })
        .collect();

    let mut chain_pem = pem_certificate(leaf.as_ref());
    chain_pem.push_str(&pem_certificate(ca.as_ref()));
    state.write(NODE_CERT_FILE, chain_pem.as_bytes())?;
    state.write(CA_CERT_FILE, pem_certificate(ca.as_ref()).as_bytes())?;
    state.write(TRUST_ROOT_FILE, &trust_root.encode_to_vec())?;
    state.write_json(STORAGE_ENDPOINTS_FILE, &endpoints)?;
    let record = IdentityRecord {
        node_id: node_id.to_string(),
        cluster_id: options.cluster.to_string(),
        not_after_unix_ms: identity.not_after_unix_ms,
        server: options.server.clone(),
        ca_fingerprint: options.ca_fingerprint.to_hex(),
        key_fingerprint: key_fingerprint(key),
    };
    state.write_json(crate::state::IDENTITY_FILE, &record)?;
    Ok(Enrolled {
        identity: record,
        dir: state.dir().to_path_buf(),
        trust_generation,
        storage_endpoints: endpoints.len(),
    })
}

/// Checks the trust root's shape and cluster; a genesis root (the first
/// generation) must verify with its own keys. A later generation cannot
/// be checked without its predecessors and is taken on the pinned
/// channel's authority. Returns the generation.
fn check_trust_root(root: &pb::SignedTrustRoot, cluster: &ClusterId) -> Result<u64, EnrollError> {
    let bad = |reason: String| EnrollError::BadIdentity(reason);
    let bytes = root.encode_to_vec();
    if bytes.len() > rap_proto::limits::TRUST_ROOT_BYTES_MAX {
        return Err(bad(format!(
            "trust root of {} bytes; at most {}",
            bytes.len(),
            rap_proto::limits::TRUST_ROOT_BYTES_MAX
        )));
    }
    let inner =
        pb::TrustRoot::decode(root.root.as_slice()).map_err(|e| bad(format!("trust root: {e}")))?;
    if inner.cluster_id != cluster.as_str() {
        return Err(bad(format!(
            "trust root of cluster {:?}, not {cluster}",
            shorten(&inner.cluster_id)
        )));
    }
    if inner.generation == 1 {
        rap_proto::envelope::VerifiedTrustRoot::verify_genesis(&bytes, cluster, None)
            .map_err(|e| bad(format!("trust root: {e}")))?;
    }
    Ok(inner.generation)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // Goal: durations parse with and without units; junk is refused.
    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "s", "1.5s", "-1s", "5d", "99999999999999999999h", "1 s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(check_poll_interval(Duration::from_millis(50)).is_err());
        assert!(check_poll_interval(POLL_INTERVAL_DEFAULT).is_ok());
        assert_eq!(check_wait(Duration::ZERO).unwrap(), None);
        assert!(check_wait(WAIT_MAX + Duration::from_secs(1)).is_err());
    }

    // Goal: the proof bytes are the prost encoding of JoinProofPayload
    // (field by field), so the control plane's rebuild matches.
    #[test]
    fn proof_message_is_the_payload_encoding() {
        let message = proof_message(PURPOSE_JOIN, "c1", &[1; 32], 5, &[2; 16]);
        let decoded = pb::JoinProofPayload::decode(message.as_slice()).unwrap();
        assert_eq!(decoded.purpose, PURPOSE_JOIN);
        assert_eq!(decoded.cluster_id, "c1");
        assert_eq!(decoded.node_public_key, vec![1; 32]);
        assert_eq!(decoded.timestamp_unix_ms, 5);
        assert_eq!(decoded.nonce, vec![2; 16]);
        assert_eq!(decoded.encode_to_vec(), message);
    }

    // Goal: server, token, capability and role shapes.
    #[test]
    fn input_shapes() {
        assert_eq!(
            parse_server("cp.example.com:7443").unwrap(),
            "cp.example.com:7443"
        );
        assert_eq!(
            parse_server("https://10.0.0.1:7443/").unwrap(),
            "10.0.0.1:7443"
        );
        assert_eq!(parse_server("[::1]:7443").unwrap(), "[::1]:7443");
        for bad in [
            "",
            "cp",
            "cp:",
            ":7443",
            "cp:0",
            "cp:70000",
            "http://cp:1",
            "cp:1/x",
        ] {
            assert!(parse_server(bad).is_err(), "{bad}");
        }
        check_token("rapjt.0a1b.SeCreT123").unwrap();
        for bad in [
            "",
            "rapjt.0a1b",
            "rapat.0a1b.x",
            "rapjt.XY.x",
            "rapjt.0a.x.y",
            "rapjt..x",
        ] {
            let err = check_token(bad).unwrap_err().to_string();
            assert!(err.contains("rapjt.<id>.<secret>"), "{err}");
        }
        assert_eq!(
            parse_capability("can_run_rdp_worker=v2").unwrap(),
            pb::Capability {
                name: "can_run_rdp_worker".into(),
                detail: "v2".into()
            }
        );
        for bad in ["", "Upper", "has-dash", &"a".repeat(64)] {
            assert!(parse_capability(bad).is_err(), "{bad}");
        }
        assert!(parse_roles(&["entry-node".into()]).is_ok());
        assert!(parse_roles(&["Bad Role".into()]).is_err());
        assert!(parse_roles(&vec!["r".to_string(); REQUESTED_ROLES_MAX + 1]).is_err());
    }
}
