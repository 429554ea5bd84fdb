//! Enrolment: `node_join_tokens` (join tokens; only blake3 of the secret
//! is stored), `node_join_requests` (what a joining host asked for, and
//! the review) and `revoked_key_overrides` (an owner's one-time permission
//! for a key with a revoked certificate to join again).

use crate::error::Result;
use sqlx::PgConnection;
use std::time::Duration;

fn is_unique_violation(error: &sqlx::Error, index: &str) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23505") && db.constraint() == Some(index))
}

/// A join token as listed (never its secret).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct JoinToken {
    /// Token id.
    pub token_id: String,
    /// Its cluster.
    pub cluster_id: String,
    /// Expiry, Unix ms.
    pub expires_at_unix_ms: i64,
    /// Use limit.
    pub max_uses: i32,
    /// Uses so far.
    pub used_count: i32,
    /// Who made it.
    pub created_by: String,
    /// Revocation time, Unix ms; 0 when not revoked.
    pub revoked_at_unix_ms: i64,
}

const TOKEN_COLUMNS: &str = "token_id, cluster_id,
    (extract(epoch FROM expires_at) * 1000)::bigint AS expires_at_unix_ms,
    max_uses, used_count, created_by,
    coalesce((extract(epoch FROM revoked_at) * 1000)::bigint, 0) AS revoked_at_unix_ms";

/// A join token to insert.
#[derive(Clone, Copy, Debug)]
pub struct NewToken<'a> {
    /// Token id.
    pub token_id: &'a str,
    /// Its cluster.
    pub cluster_id: &'a str,
    /// blake3 of the secret.
    pub token_hash: &'a [u8],
    /// Time to live.
    pub ttl: Duration,
    /// Use limit.
    pub max_uses: i32,
    /// Who makes it.
    pub created_by: &'a str,
    /// `join` or `storage`.
    pub scope: &'a str,
    /// The storage node id a `storage` token is for.
    pub storage_node_id: Option<&'a str>,
}

/// Inserts a join token.
pub async fn insert_token(conn: &mut PgConnection, token: NewToken<'_>) -> Result<JoinToken> {
    Ok(sqlx::query_as(&format!(
        "INSERT INTO node_join_tokens
             (token_id, cluster_id, token_hash, expires_at, max_uses, created_by, scope, storage_node_id)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5, $6, $7, $8)
         RETURNING {TOKEN_COLUMNS}"
    ))
    .bind(token.token_id)
    .bind(token.cluster_id)
    .bind(token.token_hash)
    .bind(token.ttl.as_secs_f64())
    .bind(token.max_uses)
    .bind(token.created_by)
    .bind(token.scope)
    .bind(token.storage_node_id)
    .fetch_one(conn)
    .await?)
}

/// A page of join tokens (of one cluster when `cluster_id` is not empty).
pub async fn list_tokens(
    conn: &mut PgConnection,
    cluster_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<JoinToken>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM node_join_tokens
          WHERE ($1 = '' OR cluster_id = $1) AND token_id > $2 ORDER BY token_id LIMIT $3"
    ))
    .bind(cluster_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Revokes a token (a revoked token keeps its first revocation); `None`
/// for an unknown token.
pub async fn revoke_token(
    conn: &mut PgConnection,
    token_id: &str,
    revoked_by: &str,
) -> Result<Option<JoinToken>> {
    Ok(sqlx::query_as(&format!(
        "UPDATE node_join_tokens SET revoked_at = coalesce(revoked_at, now()),
                revoked_by = coalesce(revoked_by, $2)
          WHERE token_id = $1 RETURNING {TOKEN_COLUMNS}"
    ))
    .bind(token_id)
    .bind(revoked_by)
    .fetch_optional(conn)
    .await?)
}

/// A token as a join checks it, locked.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TokenCheck {
    /// blake3 of the secret.
    pub token_hash: Vec<u8>,
    /// Its cluster.
    pub cluster_id: String,
    /// Revoked.
    pub revoked: bool,
    /// Past its expiry.
    pub expired: bool,
    /// Uses so far.
    pub used_count: i32,
    /// Use limit.
    pub max_uses: i32,
    /// `join` or `storage`.
    pub scope: String,
    /// The storage node id of a `storage` token.
    pub storage_node_id: Option<String>,
}

/// A token with its row locked, so check-and-count is atomic under
/// concurrent joins.
pub async fn lock_token(conn: &mut PgConnection, token_id: &str) -> Result<Option<TokenCheck>> {
    Ok(sqlx::query_as(
        "SELECT token_hash, cluster_id, revoked_at IS NOT NULL AS revoked,
                expires_at <= now() AS expired, used_count, max_uses, scope, storage_node_id
           FROM node_join_tokens WHERE token_id = $1 FOR UPDATE",
    )
    .bind(token_id)
    .fetch_optional(conn)
    .await?)
}

/// Counts one use of a token.
pub async fn use_token(conn: &mut PgConnection, token_id: &str) -> Result<()> {
    sqlx::query("UPDATE node_join_tokens SET used_count = used_count + 1 WHERE token_id = $1")
        .bind(token_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// A join request as listed.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Request {
    /// Request id.
    pub join_request_id: String,
    /// Its cluster.
    pub cluster_id: String,
    /// The token it used.
    pub token_id: String,
    /// Key fingerprint.
    pub fingerprint: String,
    /// Host facts (JSON).
    pub reported_facts: serde_json::Value,
    /// Capabilities (JSON).
    pub reported_capabilities: serde_json::Value,
    /// Roles asked for.
    pub requested_roles: Vec<String>,
    /// `pending`, `approved`, `rejected`, `expired`.
    pub status: String,
    /// Reviewer, empty before review.
    pub reviewer: String,
    /// Rejection reason, empty unless rejected.
    pub reason: String,
    /// Creation time, Unix ms.
    pub created_at_unix_ms: i64,
    /// Approved node id, empty unless approved.
    pub node_id: String,
    /// `node` or `storage`.
    pub kind: String,
    /// The node id a storage node asked for (empty for agents).
    pub requested_node_id: String,
    /// Server names of a storage node's certificate.
    pub server_names: Vec<String>,
}

const REQUEST_COLUMNS: &str = "join_request_id, cluster_id, token_id, fingerprint, reported_facts,
    reported_capabilities, requested_roles, status, coalesce(reviewed_by, '') AS reviewer,
    coalesce(rejection_reason, '') AS reason,
    (extract(epoch FROM created_at) * 1000)::bigint AS created_at_unix_ms,
    coalesce(approved_node_id, '') AS node_id, kind,
    coalesce(requested_node_id, '') AS requested_node_id, server_names";

/// A page of join requests, filtered by cluster (when not empty) and
/// status (when given).
pub async fn list_requests(
    conn: &mut PgConnection,
    cluster_id: &str,
    status: Option<&str>,
    after: &str,
    limit: i64,
) -> Result<Vec<Request>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {REQUEST_COLUMNS} FROM node_join_requests
          WHERE ($1 = '' OR cluster_id = $1) AND ($2::text IS NULL OR status = $2)
            AND join_request_id > $3
          ORDER BY join_request_id LIMIT $4"
    ))
    .bind(cluster_id)
    .bind(status)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// One join request.
pub async fn get_request(conn: &mut PgConnection, id: &str) -> Result<Option<Request>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {REQUEST_COLUMNS} FROM node_join_requests WHERE join_request_id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// The cluster of a join request.
pub async fn request_cluster(conn: &mut PgConnection, id: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT cluster_id FROM node_join_requests WHERE join_request_id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Marks pending requests older than `pending_max` as expired (of one
/// key in one cluster when `key` is given); returns how many.
pub async fn expire_stale(
    conn: &mut PgConnection,
    key: Option<(&str, &str)>,
    pending_max: Duration,
) -> Result<u64> {
    let (cluster_id, fingerprint) = key.unzip();
    Ok(sqlx::query(
        "UPDATE node_join_requests SET status = 'expired'
          WHERE status = 'pending' AND created_at <= now() - make_interval(secs => $1)
            AND ($2::text IS NULL OR cluster_id = $2) AND ($3::text IS NULL OR fingerprint = $3)",
    )
    .bind(pending_max.as_secs_f64())
    .bind(cluster_id)
    .bind(fingerprint)
    .execute(conn)
    .await?
    .rows_affected())
}

/// A join request to insert.
#[derive(Clone, Copy, Debug)]
pub struct NewRequest<'a> {
    /// Request id.
    pub join_request_id: &'a str,
    /// Its cluster.
    pub cluster_id: &'a str,
    /// The token used.
    pub token_id: &'a str,
    /// Host name.
    pub node_name: &'a str,
    /// Key fingerprint.
    pub fingerprint: &'a str,
    /// Public key.
    pub public_key: &'a [u8],
    /// Proof nonce.
    pub proof_nonce: &'a [u8],
    /// Capabilities (JSON).
    pub reported_capabilities: &'a serde_json::Value,
    /// Host facts (JSON).
    pub reported_facts: &'a serde_json::Value,
    /// Roles asked for.
    pub requested_roles: &'a [String],
    /// `node` or `storage`.
    pub kind: &'a str,
    /// The node id a storage node asks for.
    pub requested_node_id: Option<&'a str>,
    /// Server names of a storage node.
    pub server_names: &'a [String],
}

/// What inserting a join request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestInserted {
    /// Recorded.
    Yes,
    /// The same key and nonce were used before.
    NonceUsed,
    /// The key has a pending request in the cluster already.
    PendingExists,
}

/// Inserts a join request.
pub async fn insert_request(
    conn: &mut PgConnection,
    request: NewRequest<'_>,
) -> Result<RequestInserted> {
    let inserted = sqlx::query(
        "INSERT INTO node_join_requests
             (join_request_id, cluster_id, token_id, node_name, fingerprint, public_key, proof_nonce,
              reported_capabilities, reported_facts, requested_roles, kind, requested_node_id, server_names)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(request.join_request_id)
    .bind(request.cluster_id)
    .bind(request.token_id)
    .bind(request.node_name)
    .bind(request.fingerprint)
    .bind(request.public_key)
    .bind(request.proof_nonce)
    .bind(request.reported_capabilities)
    .bind(request.reported_facts)
    .bind(request.requested_roles)
    .bind(request.kind)
    .bind(request.requested_node_id)
    .bind(request.server_names)
    .execute(conn)
    .await;
    match inserted {
        Ok(_) => Ok(RequestInserted::Yes),
        Err(e) if is_unique_violation(&e, "node_join_requests_nonce_once") => {
            Ok(RequestInserted::NonceUsed)
        }
        Err(e) if is_unique_violation(&e, "node_join_requests_one_pending") => {
            Ok(RequestInserted::PendingExists)
        }
        Err(e) => Err(e.into()),
    }
}

/// A join request under review, locked.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Review {
    /// Its status.
    pub status: String,
    /// Key fingerprint.
    pub fingerprint: String,
    /// Public key.
    pub public_key: Vec<u8>,
    /// Capabilities (JSON).
    pub reported_capabilities: serde_json::Value,
    /// Host name.
    pub node_name: String,
    /// Its cluster.
    pub cluster_id: String,
    /// Pending longer than the limit given.
    pub too_old: bool,
    /// `node` or `storage`.
    pub kind: String,
    /// The node id a storage node asked for.
    pub requested_node_id: Option<String>,
    /// Server names of a storage node.
    pub server_names: Vec<String>,
}

/// A request locked for review; `too_old` says whether it has been
/// pending longer than `pending_max`.
pub async fn lock_for_review(
    conn: &mut PgConnection,
    id: &str,
    pending_max: Duration,
) -> Result<Option<Review>> {
    Ok(sqlx::query_as(
        "SELECT status, fingerprint, public_key, reported_capabilities, node_name, cluster_id,
                created_at <= now() - make_interval(secs => $2) AS too_old, kind,
                requested_node_id, server_names
           FROM node_join_requests WHERE join_request_id = $1 FOR UPDATE",
    )
    .bind(id)
    .bind(pending_max.as_secs_f64())
    .fetch_optional(conn)
    .await?)
}

/// Marks a request approved as `node_id`.
pub async fn approve(
    conn: &mut PgConnection,
    id: &str,
    reviewer: &str,
    node_id: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE node_join_requests SET status = 'approved', reviewed_by = $2, reviewed_at = now(),
                approved_node_id = $3 WHERE join_request_id = $1",
    )
    .bind(id)
    .bind(reviewer)
    .bind(node_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a request rejected with `reason`.
pub async fn reject(conn: &mut PgConnection, id: &str, reviewer: &str, reason: &str) -> Result<()> {
    sqlx::query(
        "UPDATE node_join_requests SET status = 'rejected', reviewed_by = $2, reviewed_at = now(),
                rejection_reason = $3 WHERE join_request_id = $1",
    )
    .bind(id)
    .bind(reviewer)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// A request as the agent's poll sees it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Poll {
    /// Its cluster.
    pub cluster_id: String,
    /// Key fingerprint.
    pub fingerprint: String,
    /// Its status; a pending request older than the limit reads `expired`.
    pub status: String,
    /// Rejection reason, empty unless rejected.
    pub reason: String,
    /// Approved node id.
    pub approved_node_id: Option<String>,
}

/// A request as polled: no write, a stale pending one reads `expired`.
pub async fn poll(
    conn: &mut PgConnection,
    id: &str,
    pending_max: Duration,
) -> Result<Option<Poll>> {
    Ok(sqlx::query_as(
        "SELECT cluster_id, fingerprint,
                CASE WHEN status = 'pending' AND created_at <= now() - make_interval(secs => $2)
                     THEN 'expired' ELSE status END AS status,
                coalesce(rejection_reason, '') AS reason, approved_node_id
           FROM node_join_requests WHERE join_request_id = $1",
    )
    .bind(id)
    .bind(pending_max.as_secs_f64())
    .fetch_optional(conn)
    .await?)
}

/// The open override for a key in a cluster, locked.
pub async fn lock_open_override(
    conn: &mut PgConnection,
    cluster_id: &str,
    fingerprint: &str,
) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT override_id FROM revoked_key_overrides
          WHERE cluster_id = $1 AND fingerprint = $2 AND used_at IS NULL FOR UPDATE",
    )
    .bind(cluster_id)
    .bind(fingerprint)
    .fetch_optional(conn)
    .await?)
}

/// Marks an override used by a request.
pub async fn use_override(
    conn: &mut PgConnection,
    override_id: i64,
    request_id: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE revoked_key_overrides SET used_by_request = $2, used_at = now() WHERE override_id = $1",
    )
    .bind(override_id)
    .bind(request_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records an override; `false` when one is open for the key already.
pub async fn insert_override(
    conn: &mut PgConnection,
    cluster_id: &str,
    fingerprint: &str,
    allowed_by: &str,
    reason: &str,
) -> Result<bool> {
    let inserted = sqlx::query(
        "INSERT INTO revoked_key_overrides (cluster_id, fingerprint, allowed_by, reason)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(cluster_id)
    .bind(fingerprint)
    .bind(allowed_by)
    .bind(reason)
    .execute(conn)
    .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(e) if is_unique_violation(&e, "revoked_key_overrides_one_open") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Pending join requests of one cluster.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PendingCounts {
    /// The cluster.
    pub cluster_id: String,
    /// Pending.
    pub pending: i64,
    /// Of those, waiting longer than the window asked for.
    pub waiting: i64,
}

/// [`PendingCounts`] of every cluster with a pending request; a request
/// older than `waiting` counts as waiting.
pub async fn pending_counts(
    conn: &mut PgConnection,
    waiting: Duration,
) -> Result<Vec<PendingCounts>> {
    Ok(sqlx::query_as(
        "SELECT cluster_id, count(*) AS pending,
                count(*) FILTER (WHERE created_at <= now() - make_interval(secs => $1)) AS waiting
           FROM node_join_requests
          WHERE status = 'pending'
          GROUP BY cluster_id ORDER BY cluster_id",
    )
    .bind(waiting.as_secs_f64())
    .fetch_all(conn)
    .await?)
}
