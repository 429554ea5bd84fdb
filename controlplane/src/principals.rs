//! The lifecycle of admin API tokens and principals: list, create and
//! revoke tokens; disable and enable principals. The SQL lives in
//! [`crate::auth`] (the owner of `admin_api_tokens` and
//! `admin_principals`); this module decides who may call what, and audits.
//!
//! Who may call (checked once per call, first, by the `require_*` methods
//! of [`Principal`]):
//! * [`list_tokens`], [`revoke_token`]: any principal for its own tokens,
//!   a platform-owner for anyone's ([`Principal::require_self_or_owner`]);
//! * [`create_token`], [`set_enabled`]: platform-owner only
//!   ([`Principal::require_owner`]).
//!
//! These change no trust of nodes, so they are audited but not fenced.
//! Every mutation writes its audit event in its transaction; every refusal
//! is audited (callers here are authenticated principals).

use crate::audit::{self, Action};
use crate::auth::{self, ApiTokenRow, Kind, Principal};
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result};
use crate::limits::{REASON_BYTES_MAX, STEP_UP_WINDOW, TOTP_FAILURES_MAX, TOTP_FAILURES_WINDOW};
use crate::orgs::principal_pb;
use crate::page::Page;
use crate::totp;
use rap_proto::pb;

/// Audit action of a (refused) token list.
pub const ACTION_TOKEN_LIST: &str = "api-token.list";
/// Audit action of a token's creation.
pub const ACTION_TOKEN_CREATE: &str = "api-token.create";
/// Audit action of a token's revocation.
pub const ACTION_TOKEN_REVOKE: &str = "api-token.revoke";
/// Audit action of disabling a principal.
pub const ACTION_DISABLE: &str = "principal.disable";
/// Audit action of enabling a principal.
pub const ACTION_ENABLE: &str = "principal.enable";

/// The wire form of a token row.
pub fn token_pb(row: ApiTokenRow) -> pb::ApiToken {
    pb::ApiToken {
        token_id: row.token_id,
        principal_id: row.principal_id,
        status: row.status,
        created_by: row.created_by,
        created_at_unix_ms: row.created_at_ms,
        expires_at_unix_ms: row.expires_at_ms,
        revoked_at_unix_ms: row.revoked_at_ms,
        revoked_by: row.revoked_by,
        last_used_at_unix_ms: row.last_used_at_ms,
    }
}

/// Lists API tokens. `principal_id` empty: the caller's own (a
/// platform-owner: everyone's); another principal's only for a
/// platform-owner. Refusals are audited.
pub async fn list_tokens(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ListApiTokensRequest,
) -> Result<pb::ListApiTokensResponse> {
    let action = Action::new(
        principal.actor(),
        ACTION_TOKEN_LIST,
        None,
        request.principal_id.as_str(),
    );
    let result = async {
        let only = match (&principal.kind, request.principal_id.as_str()) {
            (Kind::PlatformOwner, "") => None,
            (_, "") => Some(principal.id.as_str()),
            (_, wanted) => {
                principal.require_self_or_owner(wanted)?;
                Some(wanted)
            }
        };
        let page = Page::from_pb(request.page.as_ref());
        let rows = auth::list_tokens(&ctx.pool, only, &page.after, page.limit()).await?;
        let mut tokens: Vec<pb::ApiToken> = rows.into_iter().map(token_pb).collect();
        let next_page_token = page.finish(&mut tokens, |t| t.token_id.clone());
        Ok(pb::ListApiTokensResponse {
            tokens,
            next_page_token,
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// Creates an API token for an active principal (platform-owner only);
/// the raw token is in the response only, the audit event names the
/// token id, never the secret.
pub async fn create_token(
    ctx: &Context,
    principal: &Principal,
    request: &pb::CreateApiTokenRequest,
) -> Result<pb::CreateApiTokenResponse> {
    let mut action = Action::new(
        principal.actor(),
        ACTION_TOKEN_CREATE,
        None,
        request.principal_id.as_str(),
    );
    let result = async {
        principal.require_owner()?;
        let ttl = auth::token_ttl(request.ttl_seconds)?;
        let mut tx = ctx.pool.begin().await?;
        let status = db::principals::share_lock_status(&mut tx, &request.principal_id).await?;
        match status.as_deref() {
            None => return Err(Error::not_found("principal", request.principal_id.as_str())),
            Some("active") => {}
            Some(_) => {
                return Err(Error::FailedPrecondition(format!(
                    "principal {} is disabled: enable it first (`rapctl principal enable`)",
                    request.principal_id
                )));
            }
        }
        let (raw_token, row) =
            auth::issue_token(&mut tx, &request.principal_id, ttl, &principal.actor()).await?;
        action.target = row.token_id.clone();
        audit::record_ok(
            &mut tx,
            &action,
            None,
            serde_json::json!({
                "principal_id": request.principal_id,
                "ttl_seconds": ttl.as_secs(),
            }),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            principal_id = %request.principal_id,
            token_id = %row.token_id,
            by = %principal.id,
            "API token created"
        );
        Ok(pb::CreateApiTokenResponse {
            token: Some(token_pb(row)),
            raw_token,
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// Revokes an API token: its own for any principal, anyone's for a
/// platform-owner. Idempotent; the audit event says whether it changed.
pub async fn revoke_token(
    ctx: &Context,
    principal: &Principal,
    request: &pb::RevokeApiTokenRequest,
) -> Result<pb::ApiToken> {
    let action = Action::new(
        principal.actor(),
        ACTION_TOKEN_REVOKE,
        None,
        request.token_id.as_str(),
    );
    let result = async {
        rap_proto::ids::validate_id("token id", &request.token_id)?;
        let mut tx = ctx.pool.begin().await?;
        let owner = auth::lock_token(&mut tx, &request.token_id).await?;
        principal.require_self_or_owner(&owner)?;
        let (row, changed) =
            auth::revoke_token(&mut tx, &request.token_id, &principal.actor()).await?;
        audit::record_ok(
            &mut tx,
            &action,
            None,
            serde_json::json!({"principal_id": owner, "changed": changed}),
        )
        .await?;
        tx.commit().await?;
        if changed {
            tracing::info!(
                principal_id = %owner,
                token_id = %request.token_id,
                by = %principal.id,
                "API token revoked"
            );
        }
        Ok(token_pb(row))
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// Enables or disables a principal (platform-owner only); the last active
/// platform-owner cannot be disabled. Idempotent; the audit event says
/// whether it changed and why (`reason`, disable only).
pub async fn set_enabled(
    ctx: &Context,
    principal: &Principal,
    principal_id: &str,
    enabled: bool,
    reason: &str,
) -> Result<pb::PrincipalState> {
    let action = Action::new(
        principal.actor(),
        if enabled {
            ACTION_ENABLE
        } else {
            ACTION_DISABLE
        },
        None,
        principal_id,
    );
    let result = async {
        principal.require_owner()?;
        if reason.len() > REASON_BYTES_MAX {
            return Err(Error::Oversize {
                what: "reason",
                limit: REASON_BYTES_MAX,
                got: reason.len(),
            });
        }
        rap_proto::ids::validate_id("principal id", principal_id)?;
        let mut tx = ctx.pool.begin().await?;
        let (row, changed) = auth::set_principal_status(&mut tx, principal_id, enabled).await?;
        audit::record_ok(
            &mut tx,
            &action,
            None,
            serde_json::json!({
                "kind": row.principal.kind.name(),
                "changed": changed,
                "reason": reason,
            }),
        )
        .await?;
        tx.commit().await?;
        if changed {
            tracing::info!(
                principal_id,
                status = %row.status,
                by = %principal.id,
                "principal status changed"
            );
        }
        Ok(pb::PrincipalState {
            principal: Some(principal_pb(&row.principal)),
            status: row.status,
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// Audit action of a (refused) principal listing.
pub const ACTION_LIST: &str = "principal.list";

/// Lists principals with their status and TOTP enrolment (platform-owner
/// only; a refusal is audited).
pub async fn list(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ListPrincipalsRequest,
) -> Result<pb::ListPrincipalsResponse> {
    let action = Action::new(principal.actor(), ACTION_LIST, None, "");
    audit::refuse_unless(&ctx.pool, &action, principal.require_owner()).await?;
    let page = Page::from_pb(request.page.as_ref());
    let mut rows =
        db::principals::list(&mut *ctx.pool.acquire().await?, &page.after, page.limit()).await?;
    let next_page_token = page.finish(&mut rows, |row| row.principal_id.clone());
    let principals = rows
        .into_iter()
        .map(|row| {
            let kind = Kind::parse(&row.kind, row.org_id.as_deref())?;
            let mut principal = principal_pb(&Principal::stored(&row.principal_id, kind, row.name));
            principal.totp_enrolled = row.totp_enrolled;
            Ok(pb::PrincipalState {
                principal: Some(principal),
                status: row.status,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(pb::ListPrincipalsResponse {
        principals,
        next_page_token,
    })
}

/// Audit action of removing a principal's TOTP on the control plane host.
pub const ACTION_TOTP_RESET: &str = "principal.totp-reset";
/// The actor of [`reset_totp`].
pub const RESET_TOTP_ACTOR: &str = "rap-controlplane-reset-totp";

/// Break glass (`rap-controlplane reset-totp`, run with direct database
/// access like `owner-token`): removes `principal_id`'s TOTP, for a
/// principal that lost its authenticator (it can no longer step up, nor
/// enrol again, which needs a step-up); it enrols again afterwards.
/// Returns whether it had one. Audited as [`RESET_TOTP_ACTOR`].
pub async fn reset_totp(pool: &sqlx::PgPool, principal_id: &str) -> Result<bool> {
    let mut tx = pool.begin().await?;
    if db::principals::lock_totp(&mut tx, principal_id)
        .await?
        .is_none()
    {
        return Err(Error::not_found("principal", principal_id));
    }
    let had = db::principals::clear_totp(&mut tx, principal_id).await?;
    audit::record_ok(
        &mut tx,
        &Action::new(RESET_TOTP_ACTOR, ACTION_TOTP_RESET, None, principal_id),
        None,
        serde_json::json!({"had_totp": had}),
    )
    .await?;
    tx.commit().await?;
    Ok(had)
}

/// Audit action of a TOTP enrolment (a new secret, unconfirmed).
pub const ACTION_TOTP_ENROLL: &str = "principal.totp-enroll";
/// Audit action of a TOTP enrolment's confirmation.
pub const ACTION_TOTP_CONFIRM: &str = "principal.totp-confirm";
/// Audit action of a step-up.
pub const ACTION_STEP_UP: &str = "principal.step-up";

/// The platform's TOTP sealing key, read on a blocking thread.
async fn totp_key(ctx: &Context) -> Result<[u8; 32]> {
    let keys_dir = ctx.keys_dir.clone();
    tokio::task::spawn_blocking(move || crate::keys::totp_key(&keys_dir))
        .await
        .map_err(|e| Error::Internal(format!("loading the TOTP key: {e}")))?
}

/// A new TOTP secret for the calling principal, waiting for its first
/// code ([`confirm_totp`]); a secret in force stays in force until then
/// (re-enrolling needs a step-up: the admin API checks
/// [`crate::auth::STEP_UP_ACTIONS`]). Audited.
pub async fn enroll_totp(ctx: &Context, principal: &Principal) -> Result<pb::EnrollTotpResponse> {
    let action = Action::new(
        principal.actor(),
        ACTION_TOTP_ENROLL,
        None,
        principal.id.as_str(),
    )
    .with_step_up(principal);
    let result = async {
        let key = totp_key(ctx).await?;
        let secret: [u8; totp::TOTP_SECRET_BYTES] = crate::secret::random_bytes()?;
        let sealed = totp::seal(&key, &principal.id, &secret)?;
        let mut tx = ctx.pool.begin().await?;
        let Some(before) = db::principals::lock_totp(&mut tx, &principal.id).await? else {
            return Err(Error::not_found("principal", &principal.id));
        };
        db::principals::set_pending_totp(&mut tx, &principal.id, &sealed).await?;
        audit::record_ok(
            &mut tx,
            &action,
            None,
            serde_json::json!({"replaces_confirmed": before.sealed.is_some()}),
        )
        .await?;
        tx.commit().await?;
        Ok(pb::EnrollTotpResponse {
            secret_base32: totp::secret_base32(&secret),
            otpauth_uri: totp::otpauth_uri(&principal.id, &secret),
            digits: totp::TOTP_DIGITS,
            period_seconds: u32::try_from(totp::TOTP_STEP_SECONDS).unwrap_or(u32::MAX),
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// Checks `code` against the calling principal's TOTP (the secret
/// waiting for its first code when `confirming`, which then comes into
/// force; else the one in force) and opens its token's step-up window;
/// records the step so the code is not good again. Refusals: no such
/// secret (`TOTP_NOT_ENROLLED`), a wrong, stale or reused code
/// (`TOTP_INVALID`), too many refused codes lately (`RATE_LIMITED`).
/// Nothing changes on a refusal; each is audited.
async fn check_code(
    ctx: &Context,
    principal: &Principal,
    code: &str,
    confirming: bool,
) -> Result<pb::TotpStatus> {
    let name = if confirming {
        ACTION_TOTP_CONFIRM
    } else {
        ACTION_STEP_UP
    };
    let action = Action::new(principal.actor(), name, None, principal.token_id.as_str());
    let result = async {
        if principal.token_id.is_empty() {
            return Err(Error::FailedPrecondition(
                "a step-up belongs to an API token; call with one".into(),
            ));
        }
        let key = totp_key(ctx).await?;
        let mut tx = ctx.pool.begin().await?;
        let Some(stored) = db::principals::lock_totp(&mut tx, &principal.id).await? else {
            return Err(Error::not_found("principal", &principal.id));
        };
        let refused = db::audit::count_recent(
            &mut tx,
            &principal.actor(),
            name,
            "refused",
            TOTP_FAILURES_WINDOW,
        )
        .await?;
        if refused >= TOTP_FAILURES_MAX {
            return Err(Error::RateLimited {
                what: format!("TOTP codes of principal {}", principal.id),
                retry_after: TOTP_FAILURES_WINDOW,
            });
        }
        let (sealed, last) = match (confirming, &stored.pending, &stored.sealed) {
            (true, Some(pending), _) => (pending, None),
            (true, None, _) => {
                return Err(Error::TotpNotEnrolled(format!(
                    "principal {} has no enrolment waiting for its first code",
                    principal.id
                )));
            }
            (false, _, Some(sealed)) => (sealed, stored.last_step),
            (false, _, None) => {
                return Err(Error::TotpNotEnrolled(format!(
                    "principal {} has no confirmed TOTP",
                    principal.id
                )));
            }
        };
        let secret = totp::open(&key, &principal.id, sealed)?;
        let now = u64::try_from(rap_proto::time::UnixMillis::now().0 / 1000).unwrap_or(0);
        let last = last.and_then(|s| u64::try_from(s).ok());
        let step = totp::verify(&secret, code, now, last).ok_or_else(|| {
            Error::TotpInvalid("wrong, outside the clock window, or already used".into())
        })?;
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        if confirming {
            db::principals::confirm_totp(&mut tx, &principal.id, step).await?;
        } else {
            db::principals::use_totp_step(&mut tx, &principal.id, step).await?;
        }
        let until =
            db::principals::step_up_token(&mut tx, &principal.token_id, STEP_UP_WINDOW).await?;
        audit::record_ok(
            &mut tx,
            &action,
            None,
            serde_json::json!({"stepped_up_until_unix_ms": until}),
        )
        .await?;
        tx.commit().await?;
        Ok(pb::TotpStatus {
            enrolled: true,
            stepped_up_until_unix_ms: until,
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// Confirms the calling principal's pending TOTP with its first code (and
/// steps its token up).
pub async fn confirm_totp(
    ctx: &Context,
    principal: &Principal,
    request: &pb::TotpCodeRequest,
) -> Result<pb::TotpStatus> {
    check_code(ctx, principal, &request.code, true).await
}

/// Steps the calling token up for [`STEP_UP_WINDOW`] with a fresh code of
/// the principal's confirmed TOTP.
pub async fn step_up(
    ctx: &Context,
    principal: &Principal,
    request: &pb::TotpCodeRequest,
) -> Result<pb::TotpStatus> {
    check_code(ctx, principal, &request.code, false).await
}
