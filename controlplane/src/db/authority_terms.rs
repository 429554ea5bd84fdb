//! `cluster_authority_terms`: one row per authority term a cluster has had;
//! the row with `ended_at IS NULL` is the current one.
//!
//! This module holds the only statements that write the table. Every write
//! is checked in pairs:
//! * a new term is exactly the previous term + 1 (term 1 for a cluster
//!   without a term), else [`Error::Internal`];
//! * each statement changes exactly one row, else [`Error::StaleFence`]
//!   (the current row moved on under the caller) or [`Error::Internal`]
//!   (the insert of a term).

use crate::error::{Error, Result};
use sqlx::PgConnection;

/// Why a term began (`reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TermReason {
    /// Term 1, written when the authority group is bootstrapped.
    Bootstrap,
    /// A loss-of-quorum promotion (T → T+1).
    Promotion,
}

impl TermReason {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            TermReason::Bootstrap => "bootstrap",
            TermReason::Promotion => "promotion",
        }
    }
}

/// The current authority row of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct CurrentTerm {
    /// The term (>= 1).
    pub authority_term: i64,
    /// The newest fence seq a mutation was applied with in this term.
    pub last_seq: i64,
    /// `bootstrap` or `promotion`.
    pub reason: String,
    /// The voters the term started with.
    pub survivors: Vec<String>,
}

impl CurrentTerm {
    /// The term as the wire has it.
    pub fn term(&self) -> Result<u64> {
        u64::try_from(self.authority_term).map_err(|_| Error::Internal("negative term".into()))
    }

    /// The last seq as the wire has it (0 for a corrupt negative value).
    pub fn last_seq(&self) -> u64 {
        u64::try_from(self.last_seq).unwrap_or(0)
    }
}

fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Internal(format!("{what} overflow")))
}

/// The current term of `cluster_id`, if it has one.
pub async fn current(conn: &mut PgConnection, cluster_id: &str) -> Result<Option<CurrentTerm>> {
    Ok(sqlx::query_as(
        "SELECT authority_term, last_seq, reason, survivors FROM cluster_authority_terms
          WHERE cluster_id = $1 AND ended_at IS NULL",
    )
    .bind(cluster_id)
    .fetch_optional(conn)
    .await?)
}

/// The current term of `cluster_id`, locked (`FOR UPDATE`) until the
/// caller's transaction ends: fenced mutations and promotions of one
/// cluster run one at a time.
pub async fn lock_current(
    conn: &mut PgConnection,
    cluster_id: &str,
) -> Result<Option<CurrentTerm>> {
    // A promotion that commits while this waits for the current row's
    // lock ends that row and inserts the next term's: the waiting
    // statement then re-checks only the row it waited for, finds it ended
    // and cannot see the new one (READ COMMITTED), so it finds none. A
    // second statement sees the new row; a cluster with no term finds
    // none both times.
    for _ in 0..LOCK_CURRENT_TRIES {
        let current = sqlx::query_as(
            "SELECT authority_term, last_seq, reason, survivors FROM cluster_authority_terms
              WHERE cluster_id = $1 AND ended_at IS NULL FOR UPDATE",
        )
        .bind(cluster_id)
        .fetch_optional(&mut *conn)
        .await?;
        if current.is_some() {
            return Ok(current);
        }
    }
    Ok(None)
}

/// How many times [`lock_current`] reads before it answers "no term": a
/// promotion ends one row between two reads, never two.
const LOCK_CURRENT_TRIES: usize = 2;

/// Writes term 1 of a freshly bootstrapped cluster. `term` must be 1 and the
/// cluster must have no term yet.
pub async fn insert_first(
    conn: &mut PgConnection,
    cluster_id: &str,
    term: u64,
    voters: &[String],
) -> Result<()> {
    let newest: Option<i64> = sqlx::query_scalar(
        "SELECT max(authority_term) FROM cluster_authority_terms WHERE cluster_id = $1",
    )
    .bind(cluster_id)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(newest) = newest {
        return Err(Error::FailedPrecondition(format!(
            "cluster {cluster_id} already has authority term {newest}"
        )));
    }
    if term != 1 {
        return Err(Error::Internal(format!(
            "the first authority term of cluster {cluster_id} must be 1, not {term}"
        )));
    }
    insert(conn, cluster_id, 1, TermReason::Bootstrap, voters).await
}

/// Ends term `old_term` of `cluster_id` and starts `new_term` with the
/// `survivors` (`last_seq = 0`), in the caller's transaction. `new_term`
/// must be `old_term + 1` and `old_term` the current term.
pub async fn advance(
    conn: &mut PgConnection,
    cluster_id: &str,
    old_term: u64,
    new_term: u64,
    reason: TermReason,
    survivors: &[String],
) -> Result<()> {
    if old_term.checked_add(1) != Some(new_term) {
        return Err(Error::Internal(format!(
            "authority term of cluster {cluster_id} must advance by one: {old_term} -> {new_term}"
        )));
    }
    let ended = sqlx::query(
        "UPDATE cluster_authority_terms SET ended_at = now()
          WHERE cluster_id = $1 AND authority_term = $2 AND ended_at IS NULL",
    )
    .bind(cluster_id)
    .bind(to_i64(old_term, "authority term")?)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if ended != 1 {
        return Err(Error::StaleFence(format!(
            "authority term {old_term} of cluster {cluster_id} is not current any more"
        )));
    }
    insert(conn, cluster_id, new_term, reason, survivors).await
}

async fn insert(
    conn: &mut PgConnection,
    cluster_id: &str,
    term: u64,
    reason: TermReason,
    survivors: &[String],
) -> Result<()> {
    let inserted = sqlx::query(
        "INSERT INTO cluster_authority_terms (cluster_id, authority_term, last_seq, reason, survivors)
         VALUES ($1, $2, 0, $3, $4)",
    )
    .bind(cluster_id)
    .bind(to_i64(term, "authority term")?)
    .bind(reason.as_str())
    .bind(survivors)
    .execute(conn)
    .await?
    .rows_affected();
    if inserted != 1 {
        return Err(Error::Internal(format!(
            "authority term {term} of cluster {cluster_id}: {inserted} rows written, expected 1"
        )));
    }
    Ok(())
}

/// Records that a mutation is applied with fence (`term`, `seq`): the
/// current row must be of `term` with a lower `last_seq`
/// ([`crate::truth::admit_fence`], applied atomically by the `WHERE`);
/// exactly that row is updated. Otherwise `STALE_FENCE`, saying why.
pub async fn record_fence(
    conn: &mut PgConnection,
    cluster_id: &str,
    term: u64,
    seq: u64,
) -> Result<()> {
    let seq = i64::try_from(seq).map_err(|_| Error::StaleFence("seq overflow".into()))?;
    let fence_term = i64::try_from(term).map_err(|_| Error::StaleFence("term overflow".into()))?;
    let updated = sqlx::query(
        "UPDATE cluster_authority_terms SET last_seq = $3
          WHERE cluster_id = $1 AND authority_term = $2 AND ended_at IS NULL AND last_seq < $3",
    )
    .bind(cluster_id)
    .bind(fence_term)
    .bind(seq)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 1 {
        return Ok(());
    }
    // Why not, in the words of the one conditional check.
    let current = match current(conn, cluster_id).await? {
        Some(row) => Some(crate::truth::TermRow {
            term: row.term()?,
            last_seq: row.last_seq(),
        }),
        None => None,
    };
    crate::truth::admit_fence(current, term, u64::try_from(seq).unwrap_or(0))?;
    Err(Error::StaleFence(format!(
        "fence seq {seq} updated {updated} authority rows, expected 1"
    )))
}

/// Every cluster with a current authority term (bootstrapped), by id.
pub async fn bootstrapped_clusters(conn: &mut PgConnection) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT cluster_id FROM cluster_authority_terms WHERE ended_at IS NULL ORDER BY cluster_id",
    )
    .fetch_all(conn)
    .await?)
}
