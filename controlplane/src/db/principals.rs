//! `admin_principals` (operators of the admin API: platform owners and
//! admins, org admins) and `admin_api_tokens` (their bearer tokens; only
//! blake3 of the secret is stored).

use crate::error::Result;
use sqlx::PgConnection;
use std::time::Duration;

/// An API token as listed (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
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
    /// [`crate::auth::API_TOKEN_LAST_USED_GRANULARITY`]).
    pub last_used_at_ms: i64,
    /// `active`, `expired` or `revoked`.
    pub status: String,
}

/// The columns of [`ApiTokenRow`].
const API_TOKEN_COLUMNS: &str = "token_id::text AS token_id, principal_id::text AS principal_id,
    created_by,
    (extract(epoch FROM created_at) * 1000)::bigint AS created_at_ms,
    (extract(epoch FROM expires_at) * 1000)::bigint AS expires_at_ms,
    coalesce((extract(epoch FROM revoked_at) * 1000)::bigint, 0) AS revoked_at_ms,
    coalesce(revoked_by, '') AS revoked_by,
    coalesce((extract(epoch FROM last_used_at) * 1000)::bigint, 0) AS last_used_at_ms,
    CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
         WHEN expires_at <= now() THEN 'expired' ELSE 'active' END AS status";

/// A bearer token looked up for authentication, with its principal.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TokenLookup {
    /// blake3 of the secret.
    pub token_hash: Vec<u8>,
    /// The principal.
    pub principal_id: String,
    /// Its kind.
    pub kind: String,
    /// Its organization (org-admins).
    pub org_id: Option<String>,
    /// Its name.
    pub name: String,
    /// The token is revoked.
    pub revoked: bool,
    /// The token is past its expiry.
    pub expired: bool,
    /// The principal is not active.
    pub disabled: bool,
    /// `last_used_at` is older than the granularity: write it.
    pub touch: bool,
    /// The principal has a confirmed TOTP.
    pub totp_enrolled: bool,
    /// The token stepped up within its step-up window, which is still
    /// open.
    pub stepped_up: bool,
}

/// A principal's stored fields.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PrincipalFields {
    /// Its kind.
    pub kind: String,
    /// Its organization (org-admins).
    pub org_id: Option<String>,
    /// Its name.
    pub name: String,
    /// `active` or `disabled`.
    pub status: String,
}

/// Looks a token up by id, with `touch` set when its last use is older
/// than `granularity`.
pub async fn lookup_token(
    conn: &mut PgConnection,
    token_id: &str,
    granularity: Duration,
) -> Result<Option<TokenLookup>> {
    Ok(sqlx::query_as(
        "SELECT t.token_hash, p.principal_id, p.kind, p.org_id, p.name,
                t.revoked_at IS NOT NULL AS revoked, t.expires_at <= now() AS expired,
                p.status <> 'active' AS disabled,
                (t.last_used_at IS NULL
                 OR t.last_used_at <= now() - make_interval(secs => $2)) AS touch,
                p.totp_confirmed_at IS NOT NULL AS totp_enrolled,
                coalesce(t.stepped_up_until > now(), false) AS stepped_up
           FROM admin_api_tokens t JOIN admin_principals p USING (principal_id)
          WHERE t.token_id = $1",
    )
    .bind(token_id)
    .bind(granularity.as_secs_f64())
    .fetch_optional(conn)
    .await?)
}

/// Records the token's use now, unless it was recorded within
/// `granularity` (concurrent calls write once).
pub async fn touch_token(
    conn: &mut PgConnection,
    token_id: &str,
    granularity: Duration,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE admin_api_tokens SET last_used_at = now()
          WHERE token_id = $1
            AND (last_used_at IS NULL OR last_used_at <= now() - make_interval(secs => $2))",
    )
    .bind(token_id)
    .bind(granularity.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts a token expiring after `ttl`. A missing principal is a foreign
/// key violation (the caller maps it).
pub async fn insert_token(
    conn: &mut PgConnection,
    token_id: &str,
    principal_id: &str,
    token_hash: &[u8],
    ttl: Duration,
    created_by: &str,
) -> std::result::Result<ApiTokenRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO admin_api_tokens (token_id, principal_id, token_hash, expires_at, created_by)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5)
         RETURNING {API_TOKEN_COLUMNS}"
    ))
    .bind(token_id)
    .bind(principal_id)
    .bind(token_hash)
    .bind(ttl.as_secs_f64())
    .bind(created_by)
    .fetch_one(conn)
    .await
}

/// Tokens, of `principal_id` only when given, after `after`, at most
/// `limit`, by token id.
pub async fn list_tokens(
    conn: &mut PgConnection,
    principal_id: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<Vec<ApiTokenRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {API_TOKEN_COLUMNS} FROM admin_api_tokens
          WHERE ($1::text IS NULL OR principal_id = $1) AND token_id > $2
          ORDER BY token_id LIMIT $3"
    ))
    .bind(principal_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// The owner of a token, its row locked until the transaction ends.
pub async fn lock_token_owner(conn: &mut PgConnection, token_id: &str) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT principal_id::text FROM admin_api_tokens WHERE token_id = $1 FOR UPDATE",
    )
    .bind(token_id)
    .fetch_optional(conn)
    .await?)
}

/// Revokes a token unless it is revoked already; returns whether it
/// changed.
pub async fn revoke_token(
    conn: &mut PgConnection,
    token_id: &str,
    revoked_by: &str,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE admin_api_tokens SET revoked_at = now(), revoked_by = $2
          WHERE token_id = $1 AND revoked_at IS NULL",
    )
    .bind(token_id)
    .bind(revoked_by)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

/// One token.
pub async fn get_token(conn: &mut PgConnection, token_id: &str) -> Result<Option<ApiTokenRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {API_TOKEN_COLUMNS} FROM admin_api_tokens WHERE token_id = $1"
    ))
    .bind(token_id)
    .fetch_optional(conn)
    .await?)
}

/// The active platform owners, their rows locked in id order.
pub async fn lock_active_owners(conn: &mut PgConnection) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT principal_id::text FROM admin_principals
          WHERE kind = 'platform-owner' AND status = 'active'
          ORDER BY principal_id FOR UPDATE",
    )
    .fetch_all(conn)
    .await?)
}

/// A principal, its row locked until the transaction ends.
pub async fn lock_principal(
    conn: &mut PgConnection,
    principal_id: &str,
) -> Result<Option<PrincipalFields>> {
    Ok(sqlx::query_as(
        "SELECT kind, org_id::text AS org_id, name, status FROM admin_principals
          WHERE principal_id = $1 FOR UPDATE",
    )
    .bind(principal_id)
    .fetch_optional(conn)
    .await?)
}

/// A principal's status, its row share-locked until the transaction ends.
pub async fn share_lock_status(
    conn: &mut PgConnection,
    principal_id: &str,
) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT status FROM admin_principals WHERE principal_id = $1 FOR SHARE")
            .bind(principal_id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Sets a principal's status.
pub async fn set_status(conn: &mut PgConnection, principal_id: &str, status: &str) -> Result<()> {
    sqlx::query("UPDATE admin_principals SET status = $2 WHERE principal_id = $1")
        .bind(principal_id)
        .bind(status)
        .execute(conn)
        .await?;
    Ok(())
}

/// Inserts a principal; `false` when the id is taken. An unknown
/// organization is a foreign key violation (the caller maps it).
pub async fn insert_principal(
    conn: &mut PgConnection,
    principal_id: &str,
    kind: &str,
    org_id: Option<&str>,
    name: &str,
) -> std::result::Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "INSERT INTO admin_principals (principal_id, kind, org_id, name)
         VALUES ($1, $2, $3, $4) ON CONFLICT (principal_id) DO NOTHING",
    )
    .bind(principal_id)
    .bind(kind)
    .bind(org_id)
    .bind(name)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Takes the table lock that serializes `init` (first owner) runs.
pub async fn lock_for_init(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("LOCK TABLE admin_principals IN EXCLUSIVE MODE")
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether a platform owner exists.
pub async fn owner_exists(conn: &mut PgConnection) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM admin_principals WHERE kind = 'platform-owner')",
    )
    .fetch_one(conn)
    .await?)
}

/// A principal's TOTP as stored, its row locked until the transaction
/// ends.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Totp {
    /// The sealed secret in force (none: not enrolled).
    pub sealed: Option<Vec<u8>>,
    /// The newest step a code of it was accepted for.
    pub last_step: Option<i64>,
    /// A sealed new secret waiting for its first code.
    pub pending: Option<Vec<u8>>,
}

/// Locks `principal_id`'s row and reads its TOTP (`None`: no such
/// principal).
pub async fn lock_totp(conn: &mut PgConnection, principal_id: &str) -> Result<Option<Totp>> {
    Ok(sqlx::query_as(
        "SELECT totp_sealed AS sealed, totp_last_step AS last_step, totp_pending_sealed AS pending
           FROM admin_principals WHERE principal_id = $1 FOR UPDATE",
    )
    .bind(principal_id)
    .fetch_optional(conn)
    .await?)
}

/// Stores a new sealed secret waiting for its first code (replacing any
/// other waiting one); the secret in force stays in force.
pub async fn set_pending_totp(
    conn: &mut PgConnection,
    principal_id: &str,
    sealed: &[u8],
) -> Result<()> {
    sqlx::query("UPDATE admin_principals SET totp_pending_sealed = $2 WHERE principal_id = $1")
        .bind(principal_id)
        .bind(sealed)
        .execute(conn)
        .await?;
    Ok(())
}

/// Puts the waiting secret in force, a code for `step` accepted.
pub async fn confirm_totp(conn: &mut PgConnection, principal_id: &str, step: i64) -> Result<()> {
    sqlx::query(
        "UPDATE admin_principals
            SET totp_sealed = totp_pending_sealed, totp_pending_sealed = NULL,
                totp_confirmed_at = now(), totp_last_step = $2
          WHERE principal_id = $1 AND totp_pending_sealed IS NOT NULL",
    )
    .bind(principal_id)
    .bind(step)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that a code of the secret in force was accepted for `step`.
pub async fn use_totp_step(conn: &mut PgConnection, principal_id: &str, step: i64) -> Result<()> {
    sqlx::query("UPDATE admin_principals SET totp_last_step = $2 WHERE principal_id = $1")
        .bind(principal_id)
        .bind(step)
        .execute(conn)
        .await?;
    Ok(())
}

/// Opens token `token_id`'s step-up window for `window`; returns its end,
/// Unix ms.
pub async fn step_up_token(
    conn: &mut PgConnection,
    token_id: &str,
    window: Duration,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "UPDATE admin_api_tokens SET stepped_up_until = now() + make_interval(secs => $2)
          WHERE token_id = $1
          RETURNING (extract(epoch FROM stepped_up_until) * 1000)::bigint",
    )
    .bind(token_id)
    .bind(window.as_secs_f64())
    .fetch_one(conn)
    .await?)
}

/// A principal as listed.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Listed {
    /// Its id.
    pub principal_id: String,
    /// Its kind.
    pub kind: String,
    /// Its organization (org-admins).
    pub org_id: Option<String>,
    /// Its name.
    pub name: String,
    /// `active` or `disabled`.
    pub status: String,
    /// It has a confirmed TOTP.
    pub totp_enrolled: bool,
}

/// Principals by id after `after`, at most `limit`.
pub async fn list(conn: &mut PgConnection, after: &str, limit: i64) -> Result<Vec<Listed>> {
    Ok(sqlx::query_as(
        "SELECT principal_id, kind, org_id, name, status,
                totp_confirmed_at IS NOT NULL AS totp_enrolled
           FROM admin_principals WHERE principal_id > $1 ORDER BY principal_id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Removes `principal_id`'s TOTP (in force and waiting); returns whether
/// it had any.
pub async fn clear_totp(conn: &mut PgConnection, principal_id: &str) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE admin_principals
            SET totp_sealed = NULL, totp_confirmed_at = NULL, totp_last_step = NULL,
                totp_pending_sealed = NULL
          WHERE principal_id = $1
            AND (totp_sealed IS NOT NULL OR totp_pending_sealed IS NOT NULL)",
    )
    .bind(principal_id)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}
