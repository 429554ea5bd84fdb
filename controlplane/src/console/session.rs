//! Sign-in and sessions of the console. A principal signs in with one of
//! its API tokens; the session then stands for that token (revoking it,
//! its expiry or disabling the principal ends the session at the next
//! request). The cookie `__Host-rap-session` is `HttpOnly`, `Secure`,
//! `SameSite=Strict`, path `/`; only its blake3 hash is stored
//! ([`crate::db::console`]). A session ends after
//! [`super::CONSOLE_SESSION_IDLE`] without a request and
//! [`super::CONSOLE_SESSION_ABSOLUTE`] after sign-in. Every form carries
//! the session's CSRF token; the sign-in form a token of its own cookie
//! (double submit). Refused sign-ins and requests without a live session
//! are audited like the admin API's refused calls.

use super::{Console, Params, Route, html, html_response, see_other};
use crate::audit::{self, Action};
use crate::auth::{self, Principal};
use crate::db;
use crate::error::{Error, Result};
use crate::secret;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use std::net::SocketAddr;
use std::sync::Arc;

/// The sign-in page.
pub const SIGNIN_PATH: &str = "/signin";
/// The session cookie.
pub const SESSION_COOKIE: &str = "__Host-rap-session";
/// The sign-in form's CSRF cookie.
pub const SIGNIN_COOKIE: &str = "__Host-rap-signin";
/// How long a sign-in form stays good.
pub const SIGNIN_FORM_MAX_AGE_S: u64 = 600;
/// Audit action of a sign-in.
pub const ACTION_SIGN_IN: &str = "console.sign-in";
/// Audit action of a sign-out.
pub const ACTION_SIGN_OUT: &str = "console.sign-out";
/// Longest cookie header read.
const COOKIE_HEADER_BYTES_MAX: usize = 4096;

/// A request's live session and its principal.
#[derive(Clone, Debug)]
pub struct Signed {
    /// Who is signed in (as its token authenticates now).
    pub principal: Principal,
    /// The CSRF token of the session's forms.
    pub csrf: String,
    hash: [u8; 32],
}

/// The value of cookie `name` in the request, if any.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| v.len() <= COOKIE_HEADER_BYTES_MAX)
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn session_hash(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// Whether `presented` is the session's CSRF token (compared as hashes,
/// in constant time).
pub fn csrf_matches(expected: &str, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| blake3::hash(p.as_bytes()) == blake3::hash(expected.as_bytes()))
}

fn set_cookie(name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let age = max_age
        .map(|s| format!("; Max-Age={s}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict{age}"
    ))
    .unwrap_or(HeaderValue::from_static(""))
}

fn with_cookie(mut response: Response, cookie: HeaderValue) -> Response {
    response.headers_mut().append(header::SET_COOKIE, cookie);
    response
}

/// The sign-in page (with `error` shown), setting a fresh form cookie.
pub fn signin_page(params: &Params, error: Option<&Error>, status: StatusCode) -> Response {
    let form_token = match secret::random_bytes::<32>() {
        Ok(bytes) => hex::encode(bytes),
        Err(e) => {
            tracing::error!(error = %e, "no randomness for the sign-in form");
            return html_response(StatusCode::INTERNAL_SERVER_ERROR, "no randomness\n".into());
        }
    };
    let next = super::safe_path(params.get("next").map(String::as_str)).unwrap_or("");
    let mut body = String::from("<div class=\"signin\">");
    if params.get("ended").is_some() {
        body.push_str(
            "<div class=\"notice\" id=\"ended\">Your session ended (signed out, idle or too \
             old): sign in again.</div>",
        );
    }
    if let Some(error) = error {
        body.push_str(&format!(
            "<div class=\"error\"><strong class=\"mono\" id=\"code\">{}</strong> {}</div>",
            html::esc(error.code()),
            html::esc(&error.to_string())
        ));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"{SIGNIN_PATH}\" id=\"signin\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{form_token}\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label for=\"token\">API token of your principal</label>\
         <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"off\" \
         placeholder=\"rapat.…\" required>\
         <button type=\"submit\">Sign in</button></form>\
         <p class=\"muted\">A platform owner's first token is printed once by \
         <span class=\"mono\">rap-controlplane init</span>; others come from \
         <span class=\"mono\">rapctl token create</span>. High-risk actions also ask for a \
         TOTP code when the principal enrolled one.</p></div>",
        html::esc(next)
    ));
    let page = html::document(
        &html::Frame {
            principal: None,
            path: SIGNIN_PATH,
            title: "Sign in",
            csrf: "",
        },
        &body,
    );
    with_cookie(
        html_response(status, page),
        set_cookie(SIGNIN_COOKIE, &form_token, Some(SIGNIN_FORM_MAX_AGE_S)),
    )
}

/// POST `/signin`: checks the form's cookie, authenticates the token as
/// the admin API does, and opens a session.
pub async fn sign_in(
    console: &Console,
    peer: SocketAddr,
    headers: &HeaderMap,
    params: &Params,
) -> Response {
    let form_ok = match cookie(headers, SIGNIN_COOKIE) {
        Some(expected) => csrf_matches(expected, params.get("csrf").map(String::as_str)),
        None => false,
    };
    let bearer = params.get("token").map(|t| format!("Bearer {}", t.trim()));
    let result = match form_ok {
        false => Err(Error::PermissionDenied(
            "the sign-in form came without its CSRF token: reload the page".into(),
        )),
        true => auth::authenticate(&console.ctx.pool, bearer.as_deref()).await,
    };
    let principal = match result {
        Ok(principal) => principal,
        Err(error) => {
            let refused = Action::new(
                auth::refused_actor(bearer.as_deref(), &error),
                ACTION_SIGN_IN,
                None,
                "",
            );
            anonymous_refusal(console, peer, &refused, &error).await;
            return signin_page(params, Some(&error), StatusCode::UNAUTHORIZED);
        }
    };
    match open(console, &principal, peer).await {
        Ok(secret) => {
            let landing = match principal.kind {
                auth::Kind::OrgAdmin(_) => "/org",
                _ => "/",
            };
            let next = super::safe_path(params.get("next").map(String::as_str))
                .filter(|n| !n.is_empty())
                .unwrap_or(landing);
            let response = with_cookie(see_other(next), set_cookie(SESSION_COOKIE, &secret, None));
            with_cookie(response, set_cookie(SIGNIN_COOKIE, "", Some(0)))
        }
        Err(error) => {
            audit::record_refusal(
                &console.ctx.pool,
                &Action::new(
                    principal.actor(),
                    ACTION_SIGN_IN,
                    None,
                    principal.id.as_str(),
                ),
                &error,
            )
            .await;
            signin_page(params, Some(&error), StatusCode::TOO_MANY_REQUESTS)
        }
    }
}

/// Stores a new session of `principal`; returns the cookie's secret.
async fn open(console: &Console, principal: &Principal, peer: SocketAddr) -> Result<String> {
    let mut tx = console.ctx.pool.begin().await?;
    db::console::prune(&mut tx, super::CONSOLE_SESSION_IDLE).await?;
    if db::console::count_for(&mut tx, &principal.id).await?
        >= super::CONSOLE_SESSIONS_PER_PRINCIPAL_MAX
    {
        return Err(Error::RateLimited {
            what: format!(
                "console sessions of {} (at most {} open; sign out of one)",
                principal.id,
                super::CONSOLE_SESSIONS_PER_PRINCIPAL_MAX
            ),
            retry_after: super::CONSOLE_SESSION_IDLE,
        });
    }
    let secret = hex::encode(secret::random_bytes::<32>()?);
    let csrf = hex::encode(secret::random_bytes::<32>()?);
    db::console::insert(
        &mut tx,
        &session_hash(&secret),
        &principal.token_id,
        &principal.id,
        &csrf,
        super::CONSOLE_SESSION_ABSOLUTE,
        &peer.ip().to_string(),
    )
    .await?;
    audit::record_ok(
        &mut tx,
        &Action::new(
            principal.actor(),
            ACTION_SIGN_IN,
            None,
            principal.id.as_str(),
        ),
        None,
        serde_json::json!({ "token_id": principal.token_id, "peer": peer.ip().to_string() }),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(principal_id = %principal.id, "console sign-in");
    Ok(secret)
}

/// The request's live session, or the answer to give instead: a page
/// asks to sign in (303 to `/signin`), a form is refused (401); both
/// audited as anonymous refusals, and a cookie of an ended session is
/// cleared.
pub async fn current(
    console: &Console,
    peer: SocketAddr,
    headers: &HeaderMap,
    route: &Route,
) -> std::result::Result<Signed, Response> {
    let presented = cookie(headers, SESSION_COOKIE);
    let had_cookie = presented.is_some();
    let found = match presented {
        None => Ok(None),
        Some(secret) => {
            let hash = session_hash(secret);
            match console.ctx.pool.acquire().await {
                Ok(mut conn) => db::console::touch(&mut conn, &hash, super::CONSOLE_SESSION_IDLE)
                    .await
                    .map(|s| s.map(|s| (s, hash))),
                Err(e) => Err(e.into()),
            }
        }
    };
    let (session, hash) = match found {
        Ok(Some(found)) => found,
        Ok(None) => {
            let error = Error::Unauthenticated(match had_cookie {
                true => "the console session ended (signed out, idle or too old)".into(),
                false => "not signed in to the console".into(),
            });
            let refused = Action::new(audit::ANONYMOUS, route.action, None, route.path);
            anonymous_refusal(console, peer, &refused, &error).await;
            return Err(ended(route, had_cookie));
        }
        Err(error) => {
            tracing::error!(error = %error, "console session lookup failed");
            return Err(html_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database did not answer; try again\n".into(),
            ));
        }
    };
    match auth::authenticate_token_id(&console.ctx.pool, &session.token_id).await {
        Ok(principal) => Ok(Signed {
            principal,
            csrf: session.csrf_token,
            hash,
        }),
        Err(error) => {
            // The token was revoked or expired, or the principal disabled.
            if let Ok(mut conn) = console.ctx.pool.acquire().await {
                let _ = db::console::delete(&mut conn, &hash).await;
            }
            let refused = Action::new(
                format!("api-token:{}", session.token_id),
                route.action,
                None,
                route.path,
            );
            anonymous_refusal(console, peer, &refused, &error).await;
            Err(ended(route, true))
        }
    }
}

/// The answer to a request without a live session.
fn ended(route: &Route, had_cookie: bool) -> Response {
    let mut to = format!("{SIGNIN_PATH}?next={}", html::url(route.path));
    if had_cookie {
        to.push_str("&ended=1");
    }
    let response = match route.post {
        // A form's content is not replayed after sign-in: it was typed
        // into a page of the old session.
        true => {
            let mut r = html_response(
                StatusCode::UNAUTHORIZED,
                format!(
                    "<!doctype html><title>Signed out</title><p>Your session ended. \
                     <a href=\"{}\">Sign in again</a>.</p>",
                    html::esc(&to)
                ),
            );
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        false => see_other(&to),
    };
    match had_cookie {
        true => with_cookie(response, set_cookie(SESSION_COOKIE, "", Some(0))),
        false => response,
    }
}

/// POST `/signout`: ends the session (audited) and clears the cookie.
pub async fn sign_out(console: &Console, signed: &Signed) -> Result<super::Reply> {
    let mut tx = console.ctx.pool.begin().await?;
    db::console::delete(&mut tx, &signed.hash).await?;
    audit::record_ok(
        &mut tx,
        &Action::new(
            signed.principal.actor(),
            ACTION_SIGN_OUT,
            None,
            signed.principal.id.as_str(),
        ),
        None,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(super::Reply::Raw(with_cookie(
        see_other(SIGNIN_PATH),
        set_cookie(SESSION_COOKIE, "", Some(0)),
    )))
}

/// Audits a refusal of a caller that is no principal (sampled per peer
/// address, as the admin API does).
async fn anonymous_refusal(console: &Console, peer: SocketAddr, action: &Action, error: &Error) {
    let peer = audit::Peer {
        ip: Some(peer.ip()),
        sampler: Arc::clone(&console.refusals),
    };
    audit::with_peer(
        peer,
        audit::record_refusal(&console.ctx.pool, action, error),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the cookie attributes the issue asks for are on every
    // session cookie. Method: render one.
    #[test]
    fn session_cookies_are_host_only_http_only_secure_strict() {
        let value = set_cookie(SESSION_COOKIE, "abc", None);
        let text = value.to_str().expect("ascii");
        for part in [
            "__Host-rap-session=abc",
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
        ] {
            assert!(text.contains(part), "{text}");
        }
        assert!(!text.contains("Domain"), "{text}");
    }

    // Goal: a CSRF token matches only itself. Method: compare.
    #[test]
    fn csrf_tokens_match_exactly() {
        assert!(csrf_matches("abc", Some("abc")));
        assert!(!csrf_matches("abc", Some("abd")));
        assert!(!csrf_matches("abc", None));
        assert!(!csrf_matches("abc", Some("")));
    }
}
