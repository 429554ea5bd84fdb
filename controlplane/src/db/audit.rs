//! `cluster_audit_events`: every mutation and every refused mutation. Rows
//! are append-only (the schema refuses UPDATE, DELETE and TRUNCATE) and
//! kept forever. [`crate::audit`] decides what is written (cutting,
//! sampling of anonymous refusals); this module only stores and lists.

use crate::error::Result;
use sqlx::PgConnection;

/// An event to write.
#[derive(Clone, Copy, Debug)]
pub struct NewEvent<'a> {
    /// The cluster, when the action concerns one.
    pub cluster_id: Option<&'a str>,
    /// Who.
    pub actor: &'a str,
    /// Dotted action name.
    pub action: &'a str,
    /// The object acted on.
    pub target: &'a str,
    /// `ok`, `refused` or `failed`.
    pub result: &'a str,
    /// Why (refusals).
    pub reason: &'a str,
    /// The fence (term, seq) of a fenced mutation.
    pub fence: Option<(i64, i64)>,
}

/// A stored event.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Event {
    /// Its id (increasing).
    pub event_id: i64,
    /// The cluster, if any.
    pub cluster_id: Option<String>,
    /// Who.
    pub actor: String,
    /// Dotted action name.
    pub action: String,
    /// The object acted on.
    pub target: String,
    /// `ok`, `refused` or `failed`.
    pub result: String,
    /// Why.
    pub reason: String,
    /// Fence term, if fenced.
    pub fence_term: Option<i64>,
    /// Fence seq, if fenced.
    pub fence_seq: Option<i64>,
    /// When, Unix ms.
    pub at_unix_ms: i64,
}

/// Writes an event; returns its id.
pub async fn insert(
    conn: &mut PgConnection,
    event: NewEvent<'_>,
    details: serde_json::Value,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO cluster_audit_events
             (cluster_id, actor, action, target, result, reason, fence_term, fence_seq, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING event_id",
    )
    .bind(event.cluster_id)
    .bind(event.actor)
    .bind(event.action)
    .bind(event.target)
    .bind(event.result)
    .bind(event.reason)
    .bind(event.fence.map(|(term, _)| term))
    .bind(event.fence.map(|(_, seq)| seq))
    .bind(details)
    .fetch_one(conn)
    .await?)
}

/// Events of a cluster (all when `cluster_id` is empty): with `after` 0,
/// the newest `limit`, newest first; else the `limit` after event `after`,
/// oldest first.
pub async fn list(
    conn: &mut PgConnection,
    cluster_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<Event>> {
    Ok(sqlx::query_as(
        "SELECT event_id, cluster_id, actor, action, target, result, reason, fence_term, fence_seq,
                (extract(epoch FROM at) * 1000)::bigint AS at_unix_ms
           FROM cluster_audit_events
          WHERE ($1 = '' OR cluster_id = $1) AND event_id > $2
          ORDER BY CASE WHEN $2 = 0 THEN -event_id ELSE event_id END
          LIMIT $3",
    )
    .bind(cluster_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}
