//! Admin principals and their bearer tokens (`rapat.<id>.<secret>`).
//!
//! Kinds: `platform-owner` (everything, including promotion and creating
//! principals), `platform-admin` (cluster and node trust and placement),
//! `org-admin(org)` (only the org-safe projection of its own organization;
//! never node ids of core mesh nodes, other orgs, trust material or
//! partition internals). Seed Golden Rules 5–7.
//!
//! Tokens always expire ([`API_TOKEN_TTL_DEFAULT`], at most
//! [`API_TOKEN_TTL_MAX`]); [`authenticate`] tells revoked, expired and
//! disabled apart once the secret matched, and records `last_used_at` at
//! most once per [`API_TOKEN_LAST_USED_GRANULARITY`]. This module decides
//! about `admin_principals` and `admin_api_tokens` (their SQL is in
//! [`crate::db::principals`]); [`crate::principals`] decides who may call
//! the lifecycle operations.

use crate::db;
use crate::error::{Error, Result};
use crate::limits::{API_TOKEN_LAST_USED_GRANULARITY, API_TOKEN_TTL_DEFAULT, API_TOKEN_TTL_MAX};
use crate::secret;
use sqlx::PgPool;
use std::time::Duration;

/// Token prefix of admin API tokens.
pub const API_TOKEN_PREFIX: &str = "rapat";
/// Principal id of the first platform owner made by `rap-controlplane init`.
pub const FIRST_OWNER_ID: &str = "owner";
/// Longest `authorization` header accepted.
pub const AUTHORIZATION_BYTES_MAX: usize = 512;
/// Audit actor of `rap-controlplane init`.
pub const INIT_ACTOR: &str = "rap-controlplane-init";
/// Audit actor of `rap-controlplane owner-token`.
pub const OWNER_TOKEN_ACTOR: &str = "rap-controlplane-owner-token";

/// What a principal may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Owns the platform.
    PlatformOwner,
    /// Operates clusters and nodes.
    PlatformAdmin,
    /// Administers one organization.
    OrgAdmin(String),
}

impl Kind {
    /// The stored name of the kind.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::PlatformOwner => "platform-owner",
            Kind::PlatformAdmin => "platform-admin",
            Kind::OrgAdmin(_) => "org-admin",
        }
    }

    /// Parses a kind name (+ org for org admins).
    pub fn parse(name: &str, org: Option<&str>) -> Result<Kind> {
        match (name, org.filter(|o| !o.is_empty())) {
            ("platform-owner", None) => Ok(Kind::PlatformOwner),
            ("platform-admin", None) => Ok(Kind::PlatformAdmin),
            ("org-admin", Some(org)) => Ok(Kind::OrgAdmin(
                rap_proto::ids::OrgId::new(org)?.as_str().to_string(),
            )),
            ("org-admin", None) => Err(Error::invalid("an org-admin needs --org")),
            ("platform-owner" | "platform-admin", Some(_)) => {
                Err(Error::invalid("only org-admin principals belong to an org"))
            }
            (other, _) => Err(Error::invalid(format!(
                "unknown principal kind {other:?}: platform-owner, platform-admin or org-admin"
            ))),
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: Kind,
    /// Display name.
    pub name: String,
    /// The API token it called with (empty for principals made in
    /// process, which never step up).
    pub token_id: String,
    /// It has a confirmed TOTP: high-risk actions need a step-up.
    pub totp_enrolled: bool,
    /// Its token stepped up within the step-up window.
    pub stepped_up: bool,
}

/// The high-risk admin actions: a principal with TOTP needs a step-up
/// within [`crate::limits::STEP_UP_WINDOW`] for them
/// ([`Principal::require_step_up`], checked for every call in the admin
/// API before the action runs). Besides the actions that change trust,
/// minting an API token and enabling a principal are here: with a stolen
/// token of an enrolled principal, either would give a token that needs
/// no step-up.
pub const STEP_UP_ACTIONS: [&str; 11] = [
    "join-request.approve",
    "role.assign",
    "node.revoke",
    "join-token.create",
    "authority.promote",
    "authority.rejoin",
    "cluster.rotate-signing-key",
    "principal.create",
    "principal.totp-enroll",
    "api-token.create",
    "principal.enable",
];

impl Principal {
    /// A principal as stored, not a caller: no token, no step-up.
    pub fn stored(id: &str, kind: Kind, name: String) -> Principal {
        Principal {
            id: id.to_string(),
            kind,
            name,
            token_id: String::new(),
            totp_enrolled: false,
            stepped_up: false,
        }
    }

    /// Refuses `action` when it is high-risk ([`STEP_UP_ACTIONS`]) and
    /// the principal has TOTP but did not step up within the window
    /// (`STEP_UP_REQUIRED`). A principal without TOTP is refused only when
    /// the control plane `required` a step-up from everyone
    /// (`TOTP_NOT_ENROLLED`), and may still enrol.
    pub fn require_step_up(&self, action: &str, required: bool) -> Result<()> {
        if !STEP_UP_ACTIONS.contains(&action) {
            return Ok(());
        }
        if self.totp_enrolled {
            return match self.stepped_up {
                true => Ok(()),
                false => Err(Error::StepUpRequired(action.to_string())),
            };
        }
        if required && action != "principal.totp-enroll" {
            return Err(Error::TotpNotEnrolled(format!(
                "this control plane requires a TOTP step-up for {action}: \
                 enrol with `rapctl principal totp enroll` first"
            )));
        }
        Ok(())
    }

    /// How the principal appears in audit events.
    pub fn actor(&self) -> String {
        self.id.clone()
    }

    /// Platform owner or admin: may see and operate clusters and nodes.
    pub fn require_platform(&self) -> Result<()> {
        match self.kind {
            Kind::PlatformOwner | Kind::PlatformAdmin => Ok(()),
            Kind::OrgAdmin(_) => Err(Error::PermissionDenied(
                "platform objects are for platform-owner and platform-admin principals".into(),
            )),
        }
    }

    /// Platform owner only.
    pub fn require_owner(&self) -> Result<()> {
        match self.kind {
            Kind::PlatformOwner => Ok(()),
            _ => Err(Error::PermissionDenied(
                "only a platform-owner may do this".into(),
            )),
        }
    }

    /// Platform owner, or the principal `principal_id` itself (its own
    /// tokens).
    pub fn require_self_or_owner(&self, principal_id: &str) -> Result<()> {
        match self.kind {
            Kind::PlatformOwner => Ok(()),
            _ if self.id == principal_id => Ok(()),
            _ => Err(Error::PermissionDenied(
                "only a platform-owner may do this for another principal".into(),
            )),
        }
    }

    /// Platform principals, or the admin of `org_id`.
    pub fn require_org(&self, org_id: &str) -> Result<()> {
        match &self.kind {
            Kind::PlatformOwner | Kind::PlatformAdmin => Ok(()),
            Kind::OrgAdmin(own) if own == org_id => Ok(()),
            Kind::OrgAdmin(_) => Err(Error::PermissionDenied(
                "an org-admin sees only its own organization".into(),
            )),
        }
    }
}

/// The principal a bearer token belongs to. Missing, malformed and
/// unknown tokens (or a wrong secret) are [`Error::Unauthenticated`]; once
/// the secret matched, a revoked token is [`Error::ApiTokenRevoked`], an
/// expired one [`Error::ApiTokenExpired`], a disabled principal
/// [`Error::PrincipalDisabled`] (token ids and principal ids only, never
/// secret material). Records `last_used_at` at most once per
/// [`API_TOKEN_LAST_USED_GRANULARITY`]: the lookup says whether it is due,
/// so most calls do not write.
pub async fn authenticate(pool: &PgPool, authorization: Option<&str>) -> Result<Principal> {
    let header = authorization.ok_or_else(|| {
        Error::Unauthenticated("no bearer token (authorization: Bearer rapat.…)".into())
    })?;
    if header.len() > AUTHORIZATION_BYTES_MAX {
        return Err(Error::Unauthenticated(
            "authorization header too long".into(),
        ));
    }
    let raw = header
        .strip_prefix("Bearer ")
        .ok_or_else(|| Error::Unauthenticated("authorization is not a Bearer token".into()))?;
    let (id, hash) = secret::parse(API_TOKEN_PREFIX, raw)
        .ok_or_else(|| Error::Unauthenticated("malformed API token".into()))?;
    admit_token(pool, &id, Some(&hash)).await
}

/// The principal of the console session that signed in with API token
/// `token_id`: the session stands for the secret, which was checked at
/// sign-in; revocation, expiry and disabling are checked as for every
/// call ([`authenticate`]).
pub async fn authenticate_token_id(pool: &PgPool, token_id: &str) -> Result<Principal> {
    admit_token(pool, token_id, None).await
}

/// Looks up token `id` and admits its principal: the secret's `hash`
/// must match when given; then revoked, expired and disabled refuse.
async fn admit_token(pool: &PgPool, id: &str, hash: Option<&blake3::Hash>) -> Result<Principal> {
    let id = id.to_string();
    let mut conn = pool.acquire().await?;
    let row = db::principals::lookup_token(&mut conn, &id, API_TOKEN_LAST_USED_GRANULARITY).await?;
    let Some(db::principals::TokenLookup {
        token_hash: stored,
        principal_id,
        kind,
        org_id: org,
        name,
        revoked,
        expired,
        disabled,
        touch,
        totp_enrolled,
        stepped_up,
    }) = row
    else {
        return Err(Error::Unauthenticated("unknown API token".into()));
    };
    if hash.is_some_and(|hash| !secret::hash_matches(hash, &stored)) {
        return Err(Error::Unauthenticated("unknown API token".into()));
    }
    if revoked {
        return Err(Error::ApiTokenRevoked(id));
    }
    if expired {
        return Err(Error::ApiTokenExpired(id));
    }
    if disabled {
        return Err(Error::PrincipalDisabled(principal_id));
    }
    if touch {
        // Conditional again: concurrent calls write once. A failed write
        // costs the timestamp, not the call.
        let touched =
            db::principals::touch_token(&mut conn, &id, API_TOKEN_LAST_USED_GRANULARITY).await;
        if let Err(e) = touched {
            tracing::warn!(token_id = %id, error = %e, "could not record the API token's last use");
        }
    }
    Ok(Principal {
        id: principal_id,
        kind: Kind::parse(&kind, org.as_deref())?,
        name,
        token_id: id,
        totp_enrolled,
        stepped_up,
    })
}

/// [`Principal::require_step_up`] for `action` under this control
/// plane's `require-step-up`, the refusal audited: the one check of the
/// admin API and the console before a high-risk action runs.
pub async fn require_step_up(
    ctx: &crate::context::Context,
    principal: &Principal,
    action: &'static str,
) -> Result<()> {
    let checked = principal.require_step_up(action, ctx.require_step_up);
    if let Err(error) = &checked {
        crate::audit::record_refusal(
            &ctx.pool,
            &crate::audit::Action::new(principal.actor(), action, None, ""),
            error,
        )
        .await;
    }
    checked
}

/// The audit actor of a refused authentication: `api-token:<id>` when the
/// token's secret matched (expired, revoked, principal disabled), else
/// `anonymous`. Both are anonymous for audit sampling.
pub fn refused_actor(authorization: Option<&str>, error: &Error) -> String {
    let matched = matches!(
        error,
        Error::ApiTokenExpired(_) | Error::ApiTokenRevoked(_) | Error::PrincipalDisabled(_)
    );
    let id = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .and_then(|raw| secret::parse(API_TOKEN_PREFIX, raw))
        .map(|(id, _)| id);
    match id {
        Some(id) if matched => format!("api-token:{id}"),
        _ => crate::audit::ANONYMOUS.to_string(),
    }
}

pub use crate::db::principals::ApiTokenRow;

/// Checks an API token TTL: 0 means [`API_TOKEN_TTL_DEFAULT`]; longer than
/// [`API_TOKEN_TTL_MAX`] is refused.
pub fn token_ttl(ttl_seconds: u64) -> Result<Duration> {
    if ttl_seconds == 0 {
        return Ok(API_TOKEN_TTL_DEFAULT);
    }
    if ttl_seconds > API_TOKEN_TTL_MAX.as_secs() {
        return Err(Error::invalid(format!(
            "ttl {ttl_seconds}s is longer than the limit {}s ({} days)",
            API_TOKEN_TTL_MAX.as_secs(),
            API_TOKEN_TTL_MAX.as_secs() / 86_400
        )));
    }
    Ok(Duration::from_secs(ttl_seconds))
}

/// Issues a new API token for `principal_id` (which must exist) expiring
/// after `ttl`; returns the raw token (shown once) and the stored row.
pub async fn issue_token(
    conn: &mut sqlx::PgConnection,
    principal_id: &str,
    ttl: Duration,
    created_by: &str,
) -> Result<(String, ApiTokenRow)> {
    let token = secret::generate::<{ crate::limits::API_TOKEN_SECRET_BYTES }>(API_TOKEN_PREFIX)?;
    let row = db::principals::insert_token(
        conn,
        &token.id,
        principal_id,
        &token.hash[..],
        ttl,
        created_by,
    )
    .await
    .map_err(|e| foreign_key_to_not_found(e, "principal", principal_id))?;
    Ok((token.raw, row))
}

/// API tokens, of `principal_id` only when given, after `after` (token
/// id), at most `limit`, in token id order.
pub async fn list_tokens(
    pool: &PgPool,
    principal_id: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<Vec<ApiTokenRow>> {
    let mut conn = pool.acquire().await?;
    db::principals::list_tokens(&mut conn, principal_id, after, limit).await
}

/// The owner of token `token_id`, with the token's row locked for the rest
/// of the transaction.
pub async fn lock_token(conn: &mut sqlx::PgConnection, token_id: &str) -> Result<String> {
    let owner = db::principals::lock_token_owner(conn, token_id).await?;
    owner.ok_or_else(|| Error::not_found("API token", token_id))
}

/// Revokes `token_id` (idempotent: a revoked token keeps its first
/// revocation); returns the row and whether this call revoked it.
pub async fn revoke_token(
    conn: &mut sqlx::PgConnection,
    token_id: &str,
    revoked_by: &str,
) -> Result<(ApiTokenRow, bool)> {
    let changed = db::principals::revoke_token(conn, token_id, revoked_by).await?;
    let row = db::principals::get_token(conn, token_id).await?;
    let row = row.ok_or_else(|| Error::not_found("API token", token_id))?;
    Ok((row, changed))
}

/// A principal as stored, with its status (`active` or `disabled`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalRow {
    /// The principal.
    pub principal: Principal,
    /// `active` or `disabled`.
    pub status: String,
}

/// Sets `principal_id`'s status to `active` or `disabled` and returns it
/// with whether it changed. Disabling the last active platform-owner is
/// refused (`FAILED_PRECONDITION`): the active owners' rows are locked
/// first, in id order, so two owners disabling each other at once cannot
/// both succeed.
pub async fn set_principal_status(
    conn: &mut sqlx::PgConnection,
    principal_id: &str,
    enabled: bool,
) -> Result<(PrincipalRow, bool)> {
    let active_owners = db::principals::lock_active_owners(conn).await?;
    let db::principals::PrincipalFields {
        kind,
        org_id: org,
        name,
        status,
    } = db::principals::lock_principal(conn, principal_id)
        .await?
        .ok_or_else(|| Error::not_found("principal", principal_id))?;
    let wanted = if enabled { "active" } else { "disabled" };
    if !enabled
        && kind == Kind::PlatformOwner.name()
        && status == "active"
        && active_owners.iter().all(|owner| owner == principal_id)
    {
        return Err(Error::FailedPrecondition(format!(
            "{principal_id} is the last active platform-owner and cannot be disabled; \
             create or enable another platform-owner first"
        )));
    }
    let changed = status != wanted;
    if changed {
        db::principals::set_status(conn, principal_id, wanted).await?;
    }
    Ok((
        PrincipalRow {
            principal: Principal::stored(principal_id, Kind::parse(&kind, org.as_deref())?, name),
            status: wanted.to_string(),
        },
        changed,
    ))
}

/// Creates a principal and its first token (expiring after
/// [`API_TOKEN_TTL_DEFAULT`]); returns the raw token (shown once).
pub async fn create_principal(
    conn: &mut sqlx::PgConnection,
    principal_id: &str,
    kind: &Kind,
    name: &str,
) -> Result<String> {
    create_principal_by(conn, principal_id, kind, name, "").await
}

/// [`create_principal`], recording `created_by` on the token.
pub async fn create_principal_by(
    conn: &mut sqlx::PgConnection,
    principal_id: &str,
    kind: &Kind,
    name: &str,
    created_by: &str,
) -> Result<String> {
    rap_proto::ids::NodeId::new(principal_id)
        .map_err(|e| Error::invalid(format!("principal id: {e}")))?;
    if name.len() > crate::limits::TEXT_BYTES_MAX {
        return Err(Error::Oversize {
            what: "principal name",
            limit: crate::limits::TEXT_BYTES_MAX,
            got: name.len(),
        });
    }
    let org = match kind {
        Kind::OrgAdmin(org) => Some(org.as_str()),
        _ => None,
    };
    let inserted = db::principals::insert_principal(conn, principal_id, kind.name(), org, name)
        .await
        .map_err(|e| foreign_key_to_not_found(e, "organization", org.unwrap_or("")))?;
    if !inserted {
        return Err(Error::AlreadyExists {
            kind: "principal",
            id: principal_id.to_string(),
        });
    }
    let (raw, _) = issue_token(conn, principal_id, API_TOKEN_TTL_DEFAULT, created_by).await?;
    Ok(raw)
}

/// `init`: creates the first platform owner when there is none and returns
/// its raw token; `None` when an owner exists already (nothing changes).
/// Its token expires like every other ([`API_TOKEN_TTL_DEFAULT`]): the
/// owner makes the next one with `rapctl principal token create`, and
/// [`issue_owner_token`] (`rap-controlplane owner-token`, on the host with
/// database access) recovers when every owner token has lapsed.
pub async fn create_first_owner(pool: &PgPool) -> Result<Option<String>> {
    let mut tx = pool.begin().await?;
    // One init at a time.
    db::principals::lock_for_init(&mut tx).await?;
    if db::principals::owner_exists(&mut tx).await? {
        return Ok(None);
    }
    let raw = create_principal_by(
        &mut tx,
        FIRST_OWNER_ID,
        &Kind::PlatformOwner,
        "first platform owner",
        INIT_ACTOR,
    )
    .await?;
    crate::audit::record_ok(
        &mut tx,
        &crate::audit::Action::new(INIT_ACTOR, "principal.create", None, FIRST_OWNER_ID),
        None,
        serde_json::json!({
            "kind": "platform-owner",
            "token_ttl_seconds": API_TOKEN_TTL_DEFAULT.as_secs(),
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(raw))
}

/// Break glass (`rap-controlplane owner-token`, run with direct database
/// access like `init`): a new token for the ACTIVE platform-owner
/// `principal_id`, expiring after `ttl`; audited as
/// [`OWNER_TOKEN_ACTOR`]. For when every owner token expired or was
/// revoked.
pub async fn issue_owner_token(pool: &PgPool, principal_id: &str, ttl: Duration) -> Result<String> {
    let mut tx = pool.begin().await?;
    let status = db::principals::lock_principal(&mut tx, principal_id)
        .await?
        .map(|row| (row.kind, row.status));
    match status {
        None => return Err(Error::not_found("principal", principal_id)),
        Some((kind, _)) if kind != Kind::PlatformOwner.name() => {
            return Err(Error::FailedPrecondition(format!(
                "{principal_id} is a {kind}, not a platform-owner"
            )));
        }
        Some((_, status)) if status != "active" => {
            return Err(Error::PrincipalDisabled(principal_id.to_string()));
        }
        Some(_) => {}
    }
    let (raw, row) = issue_token(&mut tx, principal_id, ttl, OWNER_TOKEN_ACTOR).await?;
    crate::audit::record_ok(
        &mut tx,
        &crate::audit::Action::new(OWNER_TOKEN_ACTOR, "api-token.create", None, row.token_id),
        None,
        serde_json::json!({"principal_id": principal_id, "ttl_seconds": ttl.as_secs()}),
    )
    .await?;
    tx.commit().await?;
    Ok(raw)
}

/// Maps a foreign-key violation to `NOT_FOUND` of `kind`.
pub fn foreign_key_to_not_found(error: sqlx::Error, kind: &'static str, id: &str) -> Error {
    if let sqlx::Error::Database(db) = &error
        && db.code().as_deref() == Some("23503")
    {
        return Error::not_found(kind, id);
    }
    Error::Database(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: only a principal with TOTP that has not stepped up is refused,
    // and only for the high-risk actions. Method: every combination over
    // the listed actions and a read.
    #[test]
    fn step_up_is_asked_of_enrolled_principals_for_high_risk_actions() {
        let caller = |totp_enrolled, stepped_up| Principal {
            totp_enrolled,
            stepped_up,
            token_id: "t1".into(),
            ..Principal::stored("owner", Kind::PlatformOwner, String::new())
        };
        for required in [false, true] {
            for action in STEP_UP_ACTIONS {
                let refused = caller(true, false)
                    .require_step_up(action, required)
                    .unwrap_err();
                assert_eq!(refused.code(), "STEP_UP_REQUIRED", "{action}");
                assert!(caller(true, true).require_step_up(action, required).is_ok());
                let unenrolled = caller(false, false).require_step_up(action, required);
                if required && action != "principal.totp-enroll" {
                    assert_eq!(unenrolled.unwrap_err().code(), "TOTP_NOT_ENROLLED");
                } else {
                    assert!(unenrolled.is_ok(), "{action}");
                }
            }
            for action in ["node.list", "principal.step-up", "principal.totp-confirm"] {
                assert!(
                    caller(true, false)
                        .require_step_up(action, required)
                        .is_ok()
                );
                assert!(
                    caller(false, false)
                        .require_step_up(action, required)
                        .is_ok()
                );
            }
        }
    }
}
