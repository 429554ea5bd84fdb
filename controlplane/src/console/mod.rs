//! The web console served by `rap-controlplane serve --console-listen`:
//! server-rendered HTML over HTTPS (its own listener and certificate,
//! [`crate::keys::console`]), no script, every page in one answer.
//!
//! Who may use what is stated once, in [`ROUTES`], and checked once, in
//! [`Console::route`]: a session ([`session`]) first, then the route's
//! [`Access`] (platform pages answer 403 to organization admins, audited
//! as `console.view`), then for a form its CSRF token and, for a
//! high-risk action, the principal's TOTP step-up
//! ([`crate::auth::require_step_up`], as in the admin API). The pages
//! ([`pages`]) and forms ([`actions`]) call the same service functions as
//! the admin API, which check authorization again and audit.

mod actions;
pub mod html;
mod pages;
pub mod session;

use crate::audit::{self, Action, RefusalSampler};
use crate::auth::{Kind, Principal};
use crate::context::Context;
use crate::error::{Error, Result};
use axum::body::Body;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// A session ends after this long without a request.
pub const CONSOLE_SESSION_IDLE: Duration = Duration::from_secs(15 * 60);
/// A session ends this long after sign-in, however busy.
pub const CONSOLE_SESSION_ABSOLUTE: Duration = Duration::from_secs(8 * 3600);
/// Most live sessions of one principal; a further sign-in is refused
/// (`RATE_LIMITED`) until one ends.
pub const CONSOLE_SESSIONS_PER_PRINCIPAL_MAX: i64 = 16;
/// Largest form body read.
pub const CONSOLE_BODY_BYTES_MAX: usize = 16 * 1024;
/// Longest query string read.
pub const CONSOLE_QUERY_BYTES_MAX: usize = 4 * 1024;
/// Most parameters of one query string or form.
pub const CONSOLE_PARAMS_MAX: usize = 32;
/// Rows of a list page.
pub const CONSOLE_ROWS_PER_PAGE: u32 = 50;
/// Most concurrent console requests (each may hold a database
/// connection).
pub const CONSOLE_REQUESTS_IN_FLIGHT_MAX: usize = 64;

/// Who may open a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Any signed-in principal (its own account, the org-safe view).
    Principal,
    /// Platform owners and admins only: the core pages.
    Platform,
}

impl Access {
    /// Whether `principal` may use a route of this access.
    pub fn admits(self, principal: &Principal) -> bool {
        match self {
            Access::Principal => true,
            Access::Platform => matches!(principal.kind, Kind::PlatformOwner | Kind::PlatformAdmin),
        }
    }
}

/// A page (GET) or a form (POST) of the console.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// GET shows a page; POST is a form.
    pub post: bool,
    /// Its path (parameters go in the query string or the form).
    pub path: &'static str,
    /// Page title (pages) or what the form does.
    pub title: &'static str,
    /// Who may use it.
    pub access: Access,
    /// Listed in the navigation.
    pub nav: bool,
    /// Audit action of a refusal, and of a form the action it performs
    /// (its step-up is checked for [`crate::auth::STEP_UP_ACTIONS`]).
    pub action: &'static str,
}

const fn page(path: &'static str, title: &'static str, access: Access, nav: bool) -> Route {
    Route {
        post: false,
        path,
        title,
        access,
        nav,
        action: "console.view",
    }
}

const fn form(
    path: &'static str,
    title: &'static str,
    access: Access,
    action: &'static str,
) -> Route {
    Route {
        post: true,
        path,
        title,
        access,
        nav: false,
        action,
    }
}

/// Every route but sign-in (`/signin`, open to anyone), with who may use
/// it. The core pages are [`Access::Platform`]: an organization admin
/// gets 403 there and sees only `/org` and `/account`.
pub const ROUTES: &[Route] = &[
    page("/", "Overview", Access::Platform, true),
    page("/clusters", "Clusters", Access::Platform, true),
    page("/nodes", "Nodes", Access::Platform, true),
    page("/join-requests", "Join Requests", Access::Platform, true),
    page("/node", "Node Detail", Access::Platform, false),
    page("/roles", "Role Assignments", Access::Platform, true),
    page("/services", "Service Workloads", Access::Platform, true),
    page("/health", "Health and Alerts", Access::Platform, true),
    page("/audit", "Audit", Access::Platform, true),
    page("/trust", "Trust and Certificates", Access::Platform, true),
    page("/org", "Organization", Access::Principal, true),
    page("/account", "Account", Access::Principal, false),
    form(
        "/signout",
        "Sign out",
        Access::Principal,
        "console.sign-out",
    ),
    form(
        "/step-up",
        "Step up",
        Access::Principal,
        "principal.step-up",
    ),
    form(
        "/account/totp/enroll",
        "Enrol TOTP",
        Access::Principal,
        "principal.totp-enroll",
    ),
    form(
        "/account/totp/confirm",
        "Confirm TOTP",
        Access::Principal,
        "principal.totp-confirm",
    ),
    form(
        "/join-requests/approve",
        "Approve a join request",
        Access::Platform,
        "join-request.approve",
    ),
    form(
        "/join-requests/reject",
        "Reject a join request",
        Access::Platform,
        "join-request.reject",
    ),
    form(
        "/roles/assign",
        "Assign a role",
        Access::Platform,
        "role.assign",
    ),
    form(
        "/roles/remove",
        "Remove a role",
        Access::Platform,
        "role.remove",
    ),
];

/// Query or form parameters (the first of a repeated name wins).
pub type Params = BTreeMap<String, String>;

/// What a page or form answers.
#[derive(Debug)]
pub enum Reply {
    /// The body of a page (framed by [`html::document`]).
    Page(String),
    /// See other (after a form).
    Redirect(String),
    /// A whole response already made.
    Raw(Response),
}

/// The console of one control plane process.
#[derive(Clone, Debug)]
pub struct Console {
    ctx: Context,
    csp: HeaderValue,
    refusals: Arc<RefusalSampler>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl Console {
    /// The console over `ctx`; anonymous refusals share `refusals` with
    /// the admin API.
    pub fn new(ctx: Context, refusals: Arc<RefusalSampler>) -> Result<Console> {
        let csp = format!(
            "default-src 'none'; style-src {}; img-src 'self' data:; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
            html::style_hash()
        );
        Ok(Console {
            ctx,
            csp: HeaderValue::from_str(&csp)
                .map_err(|e| Error::Internal(format!("content security policy: {e}")))?,
            refusals,
            in_flight: Arc::new(tokio::sync::Semaphore::new(CONSOLE_REQUESTS_IN_FLIGHT_MAX)),
        })
    }

    /// The console as an axum router (one handler: [`Console::route`]).
    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .fallback(
                |axum::extract::State(console): axum::extract::State<Console>,
                 ConnectInfo(peer): ConnectInfo<PeerAddr>,
                 request: axum::extract::Request| async move {
                    let Ok(_permit) = Arc::clone(&console.in_flight).try_acquire_owned() else {
                        let mut busy = (StatusCode::SERVICE_UNAVAILABLE, "busy\n").into_response();
                        console.secure(busy.headers_mut());
                        return busy;
                    };
                    let mut response = console.route(peer.0, request).await;
                    console.secure(response.headers_mut());
                    response
                },
            )
            .with_state(self)
    }

    /// Headers of every answer: the strict CSP, no framing, no sniffing,
    /// no referrer, no caching, HTTPS only.
    fn secure(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
        headers.insert(
            "cross-origin-opener-policy",
            HeaderValue::from_static("same-origin"),
        );
    }

    /// Answers one request: sign-in, else session, access, CSRF and
    /// step-up (in that order, each refusal audited), then the page or
    /// form.
    async fn route(&self, peer: SocketAddr, request: axum::extract::Request) -> Response {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_string();
        let post = match parts.method {
            Method::GET | Method::HEAD => false,
            Method::POST => true,
            _ => return text_status(StatusCode::METHOD_NOT_ALLOWED, "GET or POST only\n"),
        };
        let query = parts.uri.query().unwrap_or_default();
        if query.len() > CONSOLE_QUERY_BYTES_MAX {
            return text_status(StatusCode::URI_TOO_LONG, "query string too long\n");
        }
        let mut params = parse_params(query.as_bytes());
        if post {
            let Ok(bytes) = axum::body::to_bytes(body, CONSOLE_BODY_BYTES_MAX).await else {
                return text_status(StatusCode::PAYLOAD_TOO_LARGE, "form too large\n");
            };
            // Form fields win over the query string.
            params.extend(parse_params(&bytes));
        }
        if path == session::SIGNIN_PATH {
            return match post {
                false => session::signin_page(&params, None, StatusCode::OK),
                true => session::sign_in(self, peer, &parts.headers, &params).await,
            };
        }
        let Some(route) = ROUTES.iter().find(|r| r.path == path && r.post == post) else {
            let status = match ROUTES.iter().any(|r| r.path == path) {
                true => StatusCode::METHOD_NOT_ALLOWED,
                false => StatusCode::NOT_FOUND,
            };
            return text_status(status, "no such page\n");
        };
        let signed = match session::current(self, peer, &parts.headers, route).await {
            Ok(signed) => signed,
            Err(response) => return response,
        };
        let principal = &signed.principal;
        let refuse = |error: Error| async move {
            audit::record_refusal(
                &self.ctx.pool,
                &Action::new(principal.actor(), route.action, None, path.as_str()),
                &error,
            )
            .await;
            error
        };
        if !route.access.admits(principal) {
            let error = refuse(Error::PermissionDenied(format!(
                "{} is for platform-owner and platform-admin principals",
                route.title
            )))
            .await;
            return self.error_page(&signed, route, &error, &params);
        }
        if post {
            if !session::csrf_matches(&signed.csrf, params.get("csrf").map(String::as_str)) {
                let error = refuse(Error::PermissionDenied(
                    "the form came without this session's CSRF token: reload the page and try again"
                        .into(),
                ))
                .await;
                return self.error_page(&signed, route, &error, &params);
            }
            if let Err(error) =
                crate::auth::require_step_up(&self.ctx, principal, route.action).await
            {
                return self.error_page(&signed, route, &error, &params);
            }
        }
        let reply = match (post, route.path) {
            (false, "/") => pages::overview(self, &signed, &params).await,
            (false, "/clusters") => pages::clusters(self, &signed, &params).await,
            (false, "/nodes") => pages::nodes(self, &signed, &params).await,
            (false, "/join-requests") => pages::join_requests(self, &signed, &params).await,
            (false, "/node") => pages::node(self, &signed, &params).await,
            (false, "/roles") => pages::roles(self, &signed, &params).await,
            (false, "/services") => pages::services(self, &signed, &params).await,
            (false, "/health") => pages::health(self, &signed, &params).await,
            (false, "/audit") => pages::audit(self, &signed, &params).await,
            (false, "/trust") => pages::trust(self, &signed, &params).await,
            (false, "/org") => pages::org(self, &signed, &params).await,
            (false, "/account") => pages::account(self, &signed, &params).await,
            (true, "/signout") => session::sign_out(self, &signed).await,
            (true, "/step-up") => actions::step_up(self, &signed, &params).await,
            (true, "/account/totp/enroll") => actions::totp_enroll(self, &signed, &params).await,
            (true, "/account/totp/confirm") => actions::totp_confirm(self, &signed, &params).await,
            (true, "/join-requests/approve") => actions::approve(self, &signed, &params).await,
            (true, "/join-requests/reject") => actions::reject(self, &signed, &params).await,
            (true, "/roles/assign") => actions::assign_role(self, &signed, &params).await,
            (true, "/roles/remove") => actions::remove_role(self, &signed, &params).await,
            _ => Err(Error::Internal(format!(
                "console route {} has no handler",
                route.path
            ))),
        };
        match reply {
            Ok(Reply::Page(body)) => html_response(
                StatusCode::OK,
                html::document(
                    &html::Frame {
                        principal: Some(principal),
                        path: route.path,
                        title: route.title,
                        csrf: &signed.csrf,
                    },
                    &body,
                ),
            ),
            Ok(Reply::Redirect(to)) => see_other(&to),
            Ok(Reply::Raw(response)) => response,
            Err(error) => self.error_page(&signed, route, &error, &params),
        }
    }

    /// A refusal or failure as a page: its code, its message, a step-up
    /// form when that is what it needs, and the way back.
    fn error_page(
        &self,
        signed: &session::Signed,
        route: &Route,
        error: &Error,
        params: &Params,
    ) -> Response {
        let status = match error.grpc_code() {
            tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
            tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists | tonic::Code::Aborted => {
                StatusCode::CONFLICT
            }
            tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(path = route.path, error = %error, "console request failed");
        }
        let back = safe_path(params.get("back").map(String::as_str)).unwrap_or(match route.post {
            true => "/",
            false => route.path,
        });
        let mut body = format!(
            "<div class=\"error\"><strong class=\"mono\" id=\"code\">{}</strong> {}</div>",
            html::esc(error.code()),
            html::esc(&error.to_string())
        );
        if matches!(error, Error::StepUpRequired(_)) {
            body.push_str(&actions::step_up_form(&signed.csrf, back));
        }
        let back = if signed.principal.kind.name() == "org-admin" && back == "/" {
            "/org"
        } else {
            back
        };
        body.push_str(&format!(
            "<p><a href=\"{}\">Back</a> · {}</p>",
            html::esc(back),
            html::audit_link(
                &[("actor", &signed.principal.id), ("result", "refused")],
                "your refusals in the audit trail"
            )
        ));
        let title = match status {
            StatusCode::FORBIDDEN => "Refused",
            _ => "Not done",
        };
        html_response(
            status,
            html::document(
                &html::Frame {
                    principal: Some(&signed.principal),
                    path: route.path,
                    title,
                    csrf: &signed.csrf,
                },
                &body,
            ),
        )
    }
}

/// The peer address of a console connection.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<axum::serve::IncomingStream<'_, ConsoleListener>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, ConsoleListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

type Incoming = Pin<Box<dyn futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send>>;

/// The console's TLS listener: handshakes run apart from the accept loop
/// ([`rap_core::tls::incoming::tls_incoming`]).
pub struct ConsoleListener {
    incoming: Incoming,
    local: SocketAddr,
}

impl axum::serve::Listener for ConsoleListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let peer = stream
                        .get_ref()
                        .0
                        .peer_addr()
                        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
                    return (stream, peer);
                }
                Some(Err(e)) => tracing::debug!(error = %e, "console connection failed"),
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The console's rustls configuration: its certificate, no client
/// certificates, HTTP/1.1.
pub fn tls_config(cert: &crate::keys::console::ConsoleCert) -> Result<Arc<rustls::ServerConfig>> {
    rap_core::tls::install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certified = crate::keys::load_certified_key(&cert.files, &provider)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS protocol versions: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            Arc::unwrap_or_clone(certified),
        )));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `console` over TLS on `listener` until `shutdown` resolves.
pub async fn serve(
    console: Console,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let local = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("console listener: {e}")))?;
    let incoming =
        rap_core::tls::incoming::tls_incoming(listener, tokio_rustls::TlsAcceptor::from(tls));
    let listener = ConsoleListener {
        incoming: Box::pin(incoming),
        local,
    };
    axum::serve(
        listener,
        console
            .router()
            .into_make_service_with_connect_info::<PeerAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .map_err(|e| Error::Internal(format!("console server: {e}")))
}

/// Parameters of a query string or form body, at most
/// [`CONSOLE_PARAMS_MAX`]; the first of a repeated name wins.
pub fn parse_params(bytes: &[u8]) -> Params {
    let mut params = Params::new();
    for (key, value) in form_urlencoded::parse(bytes).take(CONSOLE_PARAMS_MAX) {
        params
            .entry(key.into_owned())
            .or_insert_with(|| value.into_owned());
    }
    params
}

/// `path` when it is a path of this site (`/…`, not `//…`), short enough.
pub fn safe_path(path: Option<&str>) -> Option<&str> {
    path.filter(|p| {
        p.starts_with('/')
            && !p.starts_with("//")
            && !p.contains('\\')
            && p.len() <= 512
            && p.chars().all(|c| !c.is_control())
    })
}

/// An HTML answer.
pub fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A plain-text answer.
fn text_status(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// 303 See Other to a path of this site.
pub fn see_other(to: &str) -> Response {
    let to = safe_path(Some(to)).unwrap_or("/");
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, to)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::SEE_OTHER.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: every path is stated once per method, every form names a
    // real audit action, and the core pages are platform-only. Method:
    // walk ROUTES.
    #[test]
    fn routes_are_unique_and_core_pages_are_platform_only() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(!(a.path == b.path && a.post == b.post), "{} twice", a.path);
            }
            if a.post {
                assert!(a.action.contains('.'), "{}", a.path);
            }
        }
        let org = Principal::stored("o", Kind::OrgAdmin("acme".into()), "o".into());
        let open: Vec<&str> = ROUTES
            .iter()
            .filter(|r| !r.post && r.access.admits(&org))
            .map(|r| r.path)
            .collect();
        assert_eq!(open, ["/org", "/account"]);
    }

    // Goal: a redirect never leaves the site. Method: try the usual
    // tricks.
    #[test]
    fn safe_paths_stay_on_the_site() {
        for bad in ["https://evil", "//evil", "/\\evil", "evil", "/a\nb"] {
            assert_eq!(safe_path(Some(bad)), None, "{bad}");
        }
        assert_eq!(safe_path(Some("/nodes?x=1")), Some("/nodes?x=1"));
    }
}
