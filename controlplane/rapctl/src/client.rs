//! The connection to the control plane's `AdminService`: endpoint, TLS,
//! the bearer API token, timeouts and message limits.

use crate::errors::{self, CliError, HintContext, NO_TOKEN};
use anyhow::{Context, Result, bail};
use rap_proto::pb;
use rap_proto::pb::admin_service_client::AdminServiceClient;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Where the control plane listens unless told otherwise.
pub const ENDPOINT_DEFAULT: &str = "https://127.0.0.1:7443";
/// The TLS name the server certificate is checked against by default.
pub const SERVER_NAME_DEFAULT: &str = "localhost";
/// The token file, relative to `$HOME`, unless told otherwise.
pub const TOKEN_FILE_IN_HOME: &str = ".config/rap/token";
/// The CA file, relative to `$HOME`, used when `--ca` is not given and it
/// exists.
pub const CA_FILE_IN_HOME: &str = ".config/rap/ca.pem";
/// How long to wait for a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take: longer than the server's slowest
/// operations (bootstrap waits up to 30 s per voter, promotion restarts
/// survivors), so rapctl reports the server's answer, not its own timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Largest response message decoded.
pub const MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest token file read.
pub const TOKEN_FILE_BYTES_MAX: u64 = 4 * 1024;
/// Largest CA file read.
pub const CA_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// The settings of the last session opened: a call refused for want of a
/// step-up is answered by stepping up through the same control plane
/// with the same token ([`last_conn`]).
static LAST_CONN: std::sync::Mutex<Option<Conn>> = std::sync::Mutex::new(None);

/// The settings [`connect`] was last called with, if any.
pub fn last_conn() -> Option<Conn> {
    LAST_CONN.lock().ok().and_then(|last| last.clone())
}

/// How to reach and authenticate to the control plane. Flattened into
/// every control-plane command.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// The control plane's admin API: https://host:port, or http://host:port
    /// (plaintext, development only).
    #[arg(long, env = "RAP_ENDPOINT", default_value = ENDPOINT_DEFAULT, global = true)]
    pub endpoint: String,
    /// File holding the bearer API token `rapat.<id>.<secret>`
    /// [default: $HOME/.config/rap/token].
    #[arg(long, env = "RAP_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// PEM of the CA that signed the control plane's server certificate
    /// (https only) [default: $HOME/.config/rap/ca.pem if it exists].
    #[arg(long, env = "RAP_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// The name the server certificate must carry (https only).
    #[arg(long, env = "RAP_SERVER_NAME", default_value = SERVER_NAME_DEFAULT, global = true)]
    pub server_name: String,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerAuth {
    header: MetadataValue<Ascii>,
}

impl Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// The generated client with the bearer interceptor.
pub type AdminClient = AdminServiceClient<InterceptedService<Channel, BearerAuth>>;

/// A connected client and what error hints need to know about it.
pub struct Session {
    /// The client; cheap to clone.
    pub client: AdminClient,
    endpoint: String,
    token_file: String,
    noun: &'static str,
}

impl Session {
    /// Turns a failed call into a [`CliError`] with a hint.
    pub fn fail(&self, status: tonic::Status) -> anyhow::Error {
        let ctx = HintContext {
            endpoint: &self.endpoint,
            token_file: &self.token_file,
            noun: self.noun,
            ..HintContext::default()
        };
        errors::from_status(&status, ctx).into()
    }
}

/// Resolves the token file: the flag or env, else `$HOME/.config/rap/token`.
fn token_path(conn: &Conn) -> Result<PathBuf> {
    if let Some(path) = &conn.token_file {
        return Ok(path.clone());
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(Path::new(&home).join(TOKEN_FILE_IN_HOME)),
        _ => Err(CliError {
            code: NO_TOKEN.to_string(),
            message: "no --token-file given and $HOME is not set".to_string(),
            hint: errors::hint_for(
                NO_TOKEN,
                &HintContext {
                    token_file: "a file",
                    ..HintContext::default()
                },
            ),
        }
        .into()),
    }
}

/// Reads at most `max` bytes of `path`; errors if it holds more.
fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// Reads and checks the API token in `path`.
pub fn read_token(path: &Path) -> Result<String, CliError> {
    let shown = path.display().to_string();
    let fail = |message: String| CliError {
        code: NO_TOKEN.to_string(),
        message,
        hint: errors::hint_for(
            NO_TOKEN,
            &HintContext {
                token_file: &shown,
                ..HintContext::default()
            },
        ),
    };
    let bytes = read_bounded(path, TOKEN_FILE_BYTES_MAX)
        .map_err(|e| fail(format!("cannot read token file {shown}: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| fail(format!("token file {shown} is not UTF-8 text")))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail(format!("token file {shown} is empty")));
    }
    if token
        .strip_prefix(rap_core::limits::JOIN_TOKEN_PREFIX)
        .is_some_and(|rest| rest.starts_with('.'))
    {
        return Err(fail(format!(
            "token file {shown} holds a join token (rapjt.…), which enrolls nodes; rapctl needs an API token (rapat.…)"
        )));
    }
    let shaped = token
        .strip_prefix(rap_controlplane::auth::API_TOKEN_PREFIX)
        .is_some_and(|rest| rest.starts_with('.'));
    if !shaped || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail(format!(
            "token file {shown} does not hold an API token of the form rapat.<id>.<secret>"
        )));
    }
    Ok(token.to_string())
}

/// The CA file to trust: `--ca`, else `$HOME/.config/rap/ca.pem` if present.
fn ca_path(conn: &Conn) -> Option<PathBuf> {
    if let Some(path) = &conn.ca {
        return Some(path.clone());
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    let path = Path::new(&home).join(CA_FILE_IN_HOME);
    path.is_file().then_some(path)
}

/// Whether `host` names this machine.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Connects to the control plane named by `conn`, for a command on `noun`
/// (named in error hints).
pub async fn connect(conn: &Conn, noun: &'static str) -> Result<Session> {
    if let Ok(mut last) = LAST_CONN.lock() {
        *last = Some(conn.clone());
    }
    let token_file = token_path(conn)?;
    let token = read_token(&token_file)?;
    let mut header: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .context("the API token is not a valid header value")?;
    header.set_sensitive(true);

    let endpoint_text = conn.endpoint.trim().to_string();
    let https = if endpoint_text.starts_with("https://") {
        true
    } else if endpoint_text.starts_with("http://") {
        false
    } else {
        bail!("--endpoint {endpoint_text:?} must start with https:// (or http:// for development)");
    };
    let mut endpoint = Endpoint::from_shared(endpoint_text.clone())
        .with_context(|| format!("--endpoint {endpoint_text:?} is not a valid URL"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    if https {
        rap_core::tls::install_crypto_provider();
        let Some(ca) = ca_path(conn) else {
            bail!(
                "an https endpoint needs the CA that signed the control plane's server \
                 certificate: pass --ca <pem> or set RAP_CA (or use http:// for development)"
            );
        };
        let pem = read_bounded(&ca, CA_FILE_BYTES_MAX)
            .with_context(|| format!("cannot read CA file {}", ca.display()))?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem))
            .domain_name(conn.server_name.clone())
            .timeout(CONNECT_TIMEOUT);
        endpoint = endpoint
            .tls_config(tls)
            .context("cannot set up TLS for the endpoint")?;
    } else if !endpoint.uri().host().is_some_and(is_loopback) {
        eprintln!(
            "warning: {endpoint_text} is plaintext http: the API token crosses the network \
             unencrypted; use https:// outside development"
        );
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| errors::connect_failed(&e, &endpoint_text))?;
    let client = AdminServiceClient::with_interceptor(channel, BearerAuth { header })
        .max_decoding_message_size(MESSAGE_BYTES_MAX);
    Ok(Session {
        client,
        endpoint: endpoint_text,
        token_file: token_file.display().to_string(),
        noun,
    })
}

/// Most pages one list command fetches before it stops and says so.
pub const LIST_PAGES_MAX: usize = 1000;
/// Page size list commands ask for (the server caps it).
pub const PAGE_SIZE: u32 = rap_controlplane::limits::PAGE_SIZE_MAX;

/// A page request for `token` (empty for the first page).
pub fn page(token: &str) -> Option<pb::PageRequest> {
    Some(pb::PageRequest {
        page_size: PAGE_SIZE,
        page_token: token.to_string(),
    })
}

/// Fetches every page: `fetch(page_token)` returns one page's items and the
/// next page token (empty at the end). Stops after [`LIST_PAGES_MAX`] pages
/// with a warning.
pub async fn all_pages<T>(
    mut fetch: impl AsyncFnMut(String) -> Result<(Vec<T>, String)>,
) -> Result<Vec<T>> {
    let mut items = Vec::new();
    let mut token = String::new();
    for _ in 0..LIST_PAGES_MAX {
        let (page, next) = fetch(token).await?;
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
    eprintln!(
        "warning: stopped after {LIST_PAGES_MAX} pages ({} items); the list is incomplete",
        items.len()
    );
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let err = read_token(&path).expect_err("missing");
        assert_eq!(err.code, NO_TOKEN);
        assert!(
            err.hint
                .unwrap_or_default()
                .contains("rap-controlplane init")
        );

        std::fs::write(&path, "  rapat.abc.secret\n").expect("write");
        assert_eq!(read_token(&path).expect("ok"), "rapat.abc.secret");

        std::fs::write(&path, "rapjt.abc.secret\n").expect("write");
        assert!(
            read_token(&path)
                .expect_err("join")
                .message
                .contains("join token")
        );

        std::fs::write(&path, "\n").expect("write");
        assert!(
            read_token(&path)
                .expect_err("empty")
                .message
                .contains("empty")
        );

        std::fs::write(&path, "x".repeat(TOKEN_FILE_BYTES_MAX as usize + 1)).expect("write");
        assert!(
            read_token(&path)
                .expect_err("big")
                .message
                .contains("larger")
        );
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]"));
        assert!(!is_loopback("10.0.0.1"));
        assert!(!is_loopback("cp.example"));
    }
}
