//! The console's forms. Each runs only after [`super::Console::route`]
//! checked the session, the route's access, the CSRF token and, for a
//! high-risk action, the step-up; each calls the same service function as
//! the admin API (which checks authorization again and audits), and
//! answers with a redirect to the page it came from, whose notice links
//! to the audit row it caused.

use super::html::{self, csrf_field, esc};
use super::session::Signed;
use super::{Console, Params, Reply, safe_path};
use crate::error::{Error, Result};
use rap_proto::pb;

fn field<'a>(params: &'a Params, name: &str) -> &'a str {
    params.get(name).map(|v| v.trim()).unwrap_or_default()
}

/// Back to the page the form came from, with the notice of `action`.
fn done(params: &Params, fallback: &str, action: &str, target: &str) -> Reply {
    let back = safe_path(params.get("back").map(String::as_str)).unwrap_or(fallback);
    let (path, query) = back.split_once('?').unwrap_or((back, ""));
    let mut pairs: Vec<(String, String)> = super::parse_params(query.as_bytes())
        .into_iter()
        .filter(|(k, _)| k != "done" && k != "target")
        .collect();
    pairs.push(("done".into(), action.into()));
    pairs.push(("target".into(), target.into()));
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Reply::Redirect(format!("{path}{}", html::query(&refs)))
}

/// The TOTP form that steps the session's token up and returns to
/// `back`.
pub fn step_up_form(csrf: &str, back: &str) -> String {
    format!(
        "<form class=\"inline\" method=\"post\" action=\"/step-up\" id=\"step-up\">{}\
         <input type=\"hidden\" name=\"back\" value=\"{}\">\
         <label for=\"code\">TOTP code</label>\
         <input id=\"code\" name=\"code\" inputmode=\"numeric\" autocomplete=\"one-time-code\" \
         pattern=\"[0-9]{{6}}\" size=\"8\" required>\
         <button type=\"submit\">Step up</button></form>\
         <p class=\"muted\">A code is good once; the step-up lasts {} minutes.</p>",
        csrf_field(csrf),
        esc(back),
        crate::limits::STEP_UP_WINDOW.as_secs() / 60
    )
}

/// POST `/step-up`: a fresh code opens the step-up window of the
/// session's token.
pub async fn step_up(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    crate::principals::step_up(
        &c.ctx,
        &s.principal,
        &pb::TotpCodeRequest {
            code: field(params, "code").to_string(),
        },
    )
    .await?;
    Ok(done(
        params,
        "/account",
        "principal.step-up",
        &s.principal.id,
    ))
}

/// POST `/account/totp/enroll`: a new secret, shown once with its QR
/// code and a form for the first code.
pub async fn totp_enroll(c: &Console, s: &Signed, _params: &Params) -> Result<Reply> {
    let enrolled = crate::principals::enroll_totp(&c.ctx, &s.principal).await?;
    let qr = html::qr_svg(&enrolled.otpauth_uri)
        .ok_or_else(|| Error::Internal("the otpauth URI does not fit a QR code".into()))?;
    Ok(Reply::Page(format!(
        "<p>Scan this with your authenticator app, then type its first code. Until then the \
         secret is not in force.</p>{qr}\
         <dl class=\"facts\"><dt>Secret</dt><dd class=\"mono\" id=\"secret\">{}</dd>\
         <dt>Digits / period</dt><dd>{} / {} s</dd></dl>\
         <form class=\"inline\" method=\"post\" action=\"/account/totp/confirm\">{}\
         <input type=\"hidden\" name=\"back\" value=\"/account\">\
         <label for=\"code\">First code</label>\
         <input id=\"code\" name=\"code\" inputmode=\"numeric\" pattern=\"[0-9]{{6}}\" size=\"8\" required>\
         <button type=\"submit\">Confirm</button></form>",
        esc(&enrolled.secret_base32),
        enrolled.digits,
        enrolled.period_seconds,
        csrf_field(&s.csrf)
    )))
}

/// POST `/account/totp/confirm`: the first code puts the new secret in
/// force (and steps the token up).
pub async fn totp_confirm(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    crate::principals::confirm_totp(
        &c.ctx,
        &s.principal,
        &pb::TotpCodeRequest {
            code: field(params, "code").to_string(),
        },
    )
    .await?;
    Ok(done(
        params,
        "/account",
        "principal.totp-confirm",
        &s.principal.id,
    ))
}

/// POST `/join-requests/approve` (fenced; step-up checked before).
pub async fn approve(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let id = field(params, "id");
    let approved = crate::enrollment::approve(
        &c.ctx,
        &s.principal,
        &pb::ReviewJoinRequestRequest {
            join_request_id: id.to_string(),
            reason: field(params, "reason").to_string(),
            node_id: field(params, "node_id").to_string(),
        },
    )
    .await?;
    Ok(done(
        params,
        "/join-requests",
        "join-request.approve",
        &format!("{} as {}", approved.join_request_id, approved.node_id),
    ))
}

/// POST `/join-requests/reject`.
pub async fn reject(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let id = field(params, "id");
    crate::enrollment::reject(
        &c.ctx,
        &s.principal,
        &pb::ReviewJoinRequestRequest {
            join_request_id: id.to_string(),
            reason: field(params, "reason").to_string(),
            node_id: String::new(),
        },
    )
    .await?;
    Ok(done(params, "/join-requests", "join-request.reject", id))
}

/// (cluster, node, role, org) of a role form.
fn role_fields(params: &Params) -> (String, String, String, String) {
    let get = |name| field(params, name).to_string();
    (get("cluster"), get("node"), get("role"), get("org"))
}

/// POST `/roles/assign` (fenced; step-up checked before).
pub async fn assign_role(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let (cluster_id, node_id, role, org_id) = role_fields(params);
    let assigned = crate::roles::assign(
        &c.ctx,
        &s.principal,
        &pb::AssignRoleRequest {
            cluster_id,
            node_id,
            role,
            org_id,
        },
    )
    .await?;
    Ok(done(
        params,
        "/roles",
        "role.assign",
        &format!("{} {}", assigned.node_id, assigned.role),
    ))
}

/// POST `/roles/remove` (fenced).
pub async fn remove_role(c: &Console, s: &Signed, params: &Params) -> Result<Reply> {
    let (cluster_id, node_id, role, org_id) = role_fields(params);
    let removed = crate::roles::remove(
        &c.ctx,
        &s.principal,
        &pb::RemoveRoleRequest {
            cluster_id,
            node_id,
            role,
            org_id,
        },
    )
    .await?;
    Ok(done(
        params,
        "/roles",
        "role.remove",
        &format!("{} {}", removed.node_id, removed.role),
    ))
}
