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
    /// The details (a JSON object).
    pub details: serde_json::Value,
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

/// Which events a listing keeps; an empty field matches every event.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter<'a> {
    /// Only this cluster's events.
    pub cluster_id: &'a str,
    /// Only this actor's.
    pub actor: &'a str,
    /// Only this action, or every action under it when `action_prefix`.
    pub action: &'a str,
    /// `action` is a prefix (it ends in a dot).
    pub action_prefix: bool,
    /// Only events on this target or under it (`agent-1` also finds
    /// `agent-1/rdp-worker`).
    pub target: &'a str,
    /// Only this result (`ok`, `refused`, `failed`).
    pub result: &'a str,
}

/// Where a listing starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The newest events below this id (`i64::MAX`: the newest of all),
    /// newest first.
    Before(i64),
    /// The events after this id, oldest first.
    After(i64),
}

/// The columns of [`Event`] and the filter clause of [`list`] (`$1`..`$6`).
const LIST_FROM: &str =
    "SELECT event_id, cluster_id, actor, action, target, result, reason, fence_term, fence_seq,
            (extract(epoch FROM at) * 1000)::bigint AS at_unix_ms, details
       FROM cluster_audit_events
      WHERE ($1 = '' OR cluster_id = $1)
        AND ($2 = '' OR actor = $2)
        AND ($3 = '' OR action = $3)
        AND ($4 = '' OR action LIKE $4)
        AND ($5 = '' OR target = $5 OR starts_with(target, $5 || '/'))
        AND ($6 = '' OR result = $6)";

/// Up to `limit` events that `filter` keeps, from `start` on (newest
/// first for [`Start::Before`], oldest first for [`Start::After`]).
pub async fn list(
    conn: &mut PgConnection,
    filter: &Filter<'_>,
    start: Start,
    limit: i64,
) -> Result<Vec<Event>> {
    let (sql, from) = match start {
        Start::Before(id) => (
            format!("{LIST_FROM} AND event_id < $7 ORDER BY event_id DESC LIMIT $8"),
            id,
        ),
        Start::After(id) => (
            format!("{LIST_FROM} AND event_id > $7 ORDER BY event_id LIMIT $8"),
            id,
        ),
    };
    // Actions are `[a-z0-9._-]`: `_` is the one LIKE wildcard among them.
    let (exact, like) = if filter.action_prefix {
        ("", format!("{}%", filter.action.replace('_', "\\_")))
    } else {
        (filter.action, String::new())
    };
    Ok(sqlx::query_as(&sql)
        .bind(filter.cluster_id)
        .bind(filter.actor)
        .bind(exact)
        .bind(like)
        .bind(filter.target)
        .bind(filter.result)
        .bind(from)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// How many events of `actor` with `action` and `result` were written
/// within `window` (a refusal budget, e.g. wrong TOTP codes).
pub async fn count_recent(
    conn: &mut PgConnection,
    actor: &str,
    action: &str,
    result: &str,
    window: std::time::Duration,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM cluster_audit_events
          WHERE actor = $1 AND action = $2 AND result = $3
            AND at > now() - make_interval(secs => $4)",
    )
    .bind(actor)
    .bind(action)
    .bind(result)
    .bind(window.as_secs_f64())
    .fetch_one(conn)
    .await?)
}
