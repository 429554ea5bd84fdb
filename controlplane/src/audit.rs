//! Audit events: every mutation and every refused mutation (DESIGN.md §3,
//! issue "every refusal of a trust action is audited"). Successful
//! mutations write their event inside the mutation's transaction; refusals
//! write theirs in a transaction of their own, since the mutation's was
//! rolled back.

use crate::error::{Error, Result};
use sqlx::PgPool;
use sqlx::postgres::PgConnection;

/// Longest audit reason stored (longer ones are cut).
pub const AUDIT_REASON_BYTES_MAX: usize = 1024;
/// Longest audit target stored.
pub const AUDIT_TARGET_BYTES_MAX: usize = 256;

/// Who does what to what: the fixed part of an audit event.
#[derive(Clone, Debug)]
pub struct Action {
    /// The principal (or `node:<id>`, `anonymous`).
    pub actor: String,
    /// Dotted action name, e.g. `join-request.approve`.
    pub action: &'static str,
    /// The cluster, when the action concerns one.
    pub cluster_id: Option<String>,
    /// The object acted on.
    pub target: String,
}

impl Action {
    /// An action on `target` in `cluster_id`.
    pub fn new(
        actor: impl Into<String>,
        action: &'static str,
        cluster_id: Option<&str>,
        target: impl Into<String>,
    ) -> Self {
        Action {
            actor: actor.into(),
            action,
            cluster_id: cluster_id.map(str::to_string),
            target: target.into(),
        }
    }
}

/// A fence recorded with an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceRef {
    /// Authority term.
    pub term: u64,
    /// Sequence within the term.
    pub seq: u64,
    /// Raft log index of the entry that granted it.
    pub log_index: u64,
}

impl FenceRef {
    /// The fence on the wire, for `cluster_id`.
    pub fn to_pb(self, cluster_id: &str) -> rap_proto::pb::FencingToken {
        rap_proto::pb::FencingToken {
            cluster_id: cluster_id.to_string(),
            authority_term: self.term,
            seq: self.seq,
            log_index: self.log_index,
        }
    }
}

/// Writes a successful event inside `conn`'s transaction.
pub async fn record_ok(
    conn: &mut PgConnection,
    action: &Action,
    fence: Option<FenceRef>,
    details: serde_json::Value,
) -> Result<i64> {
    insert(conn, action, "ok", "", fence, details).await
}

/// Writes a refusal (`refused`) or failure (`failed`) in its own
/// transaction. A failure to audit is logged, never hides the refusal.
pub async fn record_refusal(pool: &PgPool, action: &Action, error: &Error) {
    let result = if matches!(
        error,
        Error::Database(_) | Error::Internal(_) | Error::Keys(_) | Error::Migrate(_)
    ) {
        "failed"
    } else {
        "refused"
    };
    let details = serde_json::json!({ "code": error.code() });
    tracing::info!(
        cluster_id = action.cluster_id.as_deref().unwrap_or(""),
        actor = %action.actor,
        action = action.action,
        target = %action.target,
        code = error.code(),
        "refused: {error}"
    );
    let written = async {
        let mut conn = pool.acquire().await?;
        insert(&mut conn, action, result, &error.to_string(), None, details).await
    }
    .await;
    if let Err(e) = written {
        tracing::error!(action = action.action, error = %e, "could not write the audit event of a refusal");
    }
}

/// Passes `result` through, auditing it when it is an error.
pub async fn audited<T>(pool: &PgPool, action: &Action, result: Result<T>) -> Result<T> {
    if let Err(error) = &result {
        record_refusal(pool, action, error).await;
    }
    result
}

async fn insert(
    conn: &mut PgConnection,
    action: &Action,
    result: &str,
    reason: &str,
    fence: Option<FenceRef>,
    details: serde_json::Value,
) -> Result<i64> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO cluster_audit_events
             (cluster_id, actor, action, target, result, reason, fence_term, fence_seq, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         RETURNING event_id",
    )
    .bind(action.cluster_id.as_deref())
    .bind(&action.actor)
    .bind(action.action)
    .bind(cut(&action.target, AUDIT_TARGET_BYTES_MAX))
    .bind(result)
    .bind(cut(reason, AUDIT_REASON_BYTES_MAX))
    .bind(fence.map(|f| i64::try_from(f.term).unwrap_or(i64::MAX)))
    .bind(fence.map(|f| i64::try_from(f.seq).unwrap_or(i64::MAX)))
    .bind(details)
    .fetch_one(conn)
    .await?;
    Ok(id)
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
