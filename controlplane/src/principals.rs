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
use crate::limits::REASON_BYTES_MAX;
use crate::orgs::principal_pb;
use crate::page::Page;
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
