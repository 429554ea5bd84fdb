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
//! most once per [`API_TOKEN_LAST_USED_GRANULARITY`]. This module owns the
//! SQL of `admin_principals` and `admin_api_tokens`;
//! [`crate::principals`] decides who may call the lifecycle operations.

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
}

impl Principal {
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
    type TokenRow = (
        Vec<u8>,
        String,
        String,
        Option<String>,
        String,
        bool,
        bool,
        bool,
        bool,
    );
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT t.token_hash, p.principal_id, p.kind, p.org_id, p.name,
                t.revoked_at IS NOT NULL, t.expires_at <= now(), p.status <> 'active',
                (t.last_used_at IS NULL
                 OR t.last_used_at <= now() - make_interval(secs => $2))
           FROM admin_api_tokens t JOIN admin_principals p USING (principal_id)
          WHERE t.token_id = $1",
    )
    .bind(&id)
    .bind(API_TOKEN_LAST_USED_GRANULARITY.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    let Some((stored, principal_id, kind, org, name, revoked, expired, disabled, touch)) = row
    else {
        return Err(Error::Unauthenticated("unknown API token".into()));
    };
    if !secret::hash_matches(&hash, &stored) {
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
        let touched = sqlx::query(
            "UPDATE admin_api_tokens SET last_used_at = now()
              WHERE token_id = $1
                AND (last_used_at IS NULL OR last_used_at <= now() - make_interval(secs => $2))",
        )
        .bind(&id)
        .bind(API_TOKEN_LAST_USED_GRANULARITY.as_secs_f64())
        .execute(pool)
        .await;
        if let Err(e) = touched {
            tracing::warn!(token_id = %id, error = %e, "could not record the API token's last use");
        }
    }
    Ok(Principal {
        id: principal_id,
        kind: Kind::parse(&kind, org.as_deref())?,
        name,
    })
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

/// An API token as listed (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTokenRow {
    /// Token id (the middle of `rapat.<id>.<secret>`).
    pub token_id: String,
    /// Whose it is.
    pub principal_id: String,
    /// Who made it (`rap-controlplane-init`, a principal, ...; empty for
    /// tokens made before schema version 2).
    pub created_by: String,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms.
    pub expires_at_ms: i64,
    /// Unix ms; 0 when not revoked.
    pub revoked_at_ms: i64,
    /// Who revoked it; empty when not revoked.
    pub revoked_by: String,
    /// Unix ms; 0 when never used (written at most once per
    /// [`API_TOKEN_LAST_USED_GRANULARITY`]).
    pub last_used_at_ms: i64,
    /// `active`, `expired` or `revoked`.
    pub status: String,
}

/// The columns of [`ApiTokenRow`], in order.
pub const API_TOKEN_COLUMNS: &str = "token_id::text, principal_id::text, created_by,
    (extract(epoch FROM created_at) * 1000)::bigint,
    (extract(epoch FROM expires_at) * 1000)::bigint,
    coalesce((extract(epoch FROM revoked_at) * 1000)::bigint, 0),
    coalesce(revoked_by, ''),
    coalesce((extract(epoch FROM last_used_at) * 1000)::bigint, 0),
    CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
         WHEN expires_at <= now() THEN 'expired' ELSE 'active' END";

type ApiTokenTuple = (String, String, String, i64, i64, i64, String, i64, String);

fn token_row(t: ApiTokenTuple) -> ApiTokenRow {
    let (token_id, principal_id, created_by, created, expires, revoked, revoked_by, used, status) =
        t;
    ApiTokenRow {
        token_id,
        principal_id,
        created_by,
        created_at_ms: created,
        expires_at_ms: expires,
        revoked_at_ms: revoked,
        revoked_by,
        last_used_at_ms: used,
        status,
    }
}

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
    let row: ApiTokenTuple = sqlx::query_as(&format!(
        "INSERT INTO admin_api_tokens (token_id, principal_id, token_hash, expires_at, created_by)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5)
         RETURNING {API_TOKEN_COLUMNS}"
    ))
    .bind(&token.id)
    .bind(principal_id)
    .bind(&token.hash[..])
    .bind(ttl.as_secs_f64())
    .bind(created_by)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| foreign_key_to_not_found(e, "principal", principal_id))?;
    Ok((token.raw, token_row(row)))
}

/// API tokens, of `principal_id` only when given, after `after` (token
/// id), at most `limit`, in token id order.
pub async fn list_tokens(
    pool: &PgPool,
    principal_id: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<Vec<ApiTokenRow>> {
    let rows: Vec<ApiTokenTuple> = sqlx::query_as(&format!(
        "SELECT {API_TOKEN_COLUMNS} FROM admin_api_tokens
          WHERE ($1::text IS NULL OR principal_id = $1) AND token_id > $2
          ORDER BY token_id LIMIT $3"
    ))
    .bind(principal_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(token_row).collect())
}

/// The owner of token `token_id`, with the token's row locked for the rest
/// of the transaction.
pub async fn lock_token(conn: &mut sqlx::PgConnection, token_id: &str) -> Result<String> {
    let owner: Option<String> = sqlx::query_scalar(
        "SELECT principal_id::text FROM admin_api_tokens WHERE token_id = $1 FOR UPDATE",
    )
    .bind(token_id)
    .fetch_optional(&mut *conn)
    .await?;
    owner.ok_or_else(|| Error::not_found("API token", token_id))
}

/// Revokes `token_id` (idempotent: a revoked token keeps its first
/// revocation); returns the row and whether this call revoked it.
pub async fn revoke_token(
    conn: &mut sqlx::PgConnection,
    token_id: &str,
    revoked_by: &str,
) -> Result<(ApiTokenRow, bool)> {
    let changed = sqlx::query(
        "UPDATE admin_api_tokens SET revoked_at = now(), revoked_by = $2
          WHERE token_id = $1 AND revoked_at IS NULL",
    )
    .bind(token_id)
    .bind(revoked_by)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    let row: Option<ApiTokenTuple> = sqlx::query_as(&format!(
        "SELECT {API_TOKEN_COLUMNS} FROM admin_api_tokens WHERE token_id = $1"
    ))
    .bind(token_id)
    .fetch_optional(&mut *conn)
    .await?;
    let row = row.ok_or_else(|| Error::not_found("API token", token_id))?;
    Ok((token_row(row), changed))
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
    let active_owners: Vec<String> = sqlx::query_scalar(
        "SELECT principal_id::text FROM admin_principals
          WHERE kind = 'platform-owner' AND status = 'active'
          ORDER BY principal_id FOR UPDATE",
    )
    .fetch_all(&mut *conn)
    .await?;
    let row: Option<(String, Option<String>, String, String)> = sqlx::query_as(
        "SELECT kind, org_id::text, name, status FROM admin_principals
          WHERE principal_id = $1 FOR UPDATE",
    )
    .bind(principal_id)
    .fetch_optional(&mut *conn)
    .await?;
    let (kind, org, name, status) =
        row.ok_or_else(|| Error::not_found("principal", principal_id))?;
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
        sqlx::query("UPDATE admin_principals SET status = $2 WHERE principal_id = $1")
            .bind(principal_id)
            .bind(wanted)
            .execute(&mut *conn)
            .await?;
    }
    Ok((
        PrincipalRow {
            principal: Principal {
                id: principal_id.to_string(),
                kind: Kind::parse(&kind, org.as_deref())?,
                name,
            },
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
    let inserted = sqlx::query(
        "INSERT INTO admin_principals (principal_id, kind, org_id, name)
         VALUES ($1, $2, $3, $4) ON CONFLICT (principal_id) DO NOTHING",
    )
    .bind(principal_id)
    .bind(kind.name())
    .bind(org)
    .bind(name)
    .execute(&mut *conn)
    .await
    .map_err(|e| foreign_key_to_not_found(e, "organization", org.unwrap_or("")))?
    .rows_affected();
    if inserted == 0 {
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
    sqlx::query("LOCK TABLE admin_principals IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM admin_principals WHERE kind = 'platform-owner')",
    )
    .fetch_one(&mut *tx)
    .await?;
    if exists {
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
    let status: Option<(String, String)> = sqlx::query_as(
        "SELECT kind, status FROM admin_principals WHERE principal_id = $1 FOR UPDATE",
    )
    .bind(principal_id)
    .fetch_optional(&mut *tx)
    .await?;
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
