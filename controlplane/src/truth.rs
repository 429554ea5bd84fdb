//! The source of truth a fenced mutation is checked against, as a trait.
//!
//! PostgreSQL is the only source of truth of the product: [`SourceOfTruth`]
//! is implemented for [`PgPool`] here, and [`crate::fencing`] runs every
//! fenced mutation through the trait. The deterministic simulator
//! (`rap-sim`) implements it in memory, so that the control plane's fenced
//! path (lock the authority row, ask the group for a fence, the
//! conditional check, apply, audit, commit) runs there unchanged. No other
//! implementation is allowed: the in-memory one lives only in the
//! simulator.
//!
//! The conditional check itself is [`admit_fence`], one rule both
//! implementations apply: a fence is taken only if it is of the current
//! authority term and newer than the last fence a mutation was applied
//! with. PostgreSQL applies it atomically in its `UPDATE ... WHERE`, and
//! explains a refusal with [`admit_fence`].

use crate::audit::{self, Action};
use crate::db;
use crate::db::authority_terms::TermReason;
use crate::error::{Error, Result};
use rap_authority::client::StoragePeer;
use rap_core::Fence;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::future::Future;

/// A cluster's current authority row: what the conditional check reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermRow {
    /// The current authority term.
    pub term: u64,
    /// The newest fence seq a mutation was applied with in this term.
    pub last_seq: u64,
}

/// The conditional fence check: a mutation with fence (`term`, `seq`) is
/// taken only when `current` is of `term` and its `last_seq` is lower.
/// Otherwise `STALE_FENCE`, saying why.
pub fn admit_fence(current: Option<TermRow>, term: u64, seq: u64) -> Result<()> {
    match current {
        None => Err(Error::StaleFence("no current authority term".to_string())),
        Some(row) if row.term != term => Err(Error::StaleFence(format!(
            "fence of authority term {term}, but term {} is current",
            row.term
        ))),
        Some(row) if seq <= row.last_seq => Err(Error::StaleFence(format!(
            "fence seq {seq} is not newer than {}, already used",
            row.last_seq
        ))),
        Some(_) => Ok(()),
    }
}

/// Where fenced mutations are checked and applied.
pub trait SourceOfTruth: Sync {
    /// One transaction.
    type Tx: TruthTx;

    /// Begins a transaction.
    fn begin(&self) -> impl Future<Output = Result<Self::Tx>> + Send;

    /// Audits `error` as the refusal of `action`, in its own transaction; a
    /// failure to audit is logged, never hides the refusal.
    fn record_refusal(&self, action: &Action, error: &Error) -> impl Future<Output = ()> + Send;
}

/// One transaction of a [`SourceOfTruth`]: nothing it writes is seen by
/// others before [`TruthTx::commit`], and dropping it changes nothing.
pub trait TruthTx: Send {
    /// The current authority row of `cluster_id`, held (`FOR UPDATE`) until
    /// the transaction ends; `None` when the cluster has no term.
    fn lock_current(
        &mut self,
        cluster_id: &str,
    ) -> impl Future<Output = Result<Option<TermRow>>> + Send;

    /// Whether `cluster_id` exists (to tell `NOT_FOUND` from
    /// `NOT_BOOTSTRAPPED`).
    fn cluster_exists(&mut self, cluster_id: &str) -> impl Future<Output = Result<bool>> + Send;

    /// The storage nodes a fence is asked of: voters, then learners.
    fn storage_peers(
        &mut self,
        cluster_id: &str,
    ) -> impl Future<Output = Result<Vec<StoragePeer>>> + Send;

    /// Records that a mutation is applied with fence (`term`, `seq`), under
    /// [`admit_fence`]: `STALE_FENCE` and nothing written otherwise.
    fn record_fence(
        &mut self,
        cluster_id: &str,
        term: u64,
        seq: u64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Ends term `from` and begins `to` (= `from` + 1) with `voters`.
    fn advance_term(
        &mut self,
        cluster_id: &str,
        from: u64,
        to: u64,
        reason: TermReason,
        voters: &[String],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Writes the audit event of a successful `action` (with its fence).
    fn record_ok(
        &mut self,
        action: &Action,
        fence: Option<&Fence>,
        details: serde_json::Value,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Commits.
    fn commit(self) -> impl Future<Output = Result<()>> + Send;
}

/// A PostgreSQL transaction as a [`TruthTx`]; it derefs to the connection
/// the `db` functions take.
#[derive(Debug)]
pub struct PgTx(Transaction<'static, Postgres>);

impl std::ops::Deref for PgTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.0
    }
}

impl std::ops::DerefMut for PgTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.0
    }
}

impl SourceOfTruth for PgPool {
    type Tx = PgTx;

    async fn begin(&self) -> Result<PgTx> {
        Ok(PgTx(PgPool::begin(self).await?))
    }

    async fn record_refusal(&self, action: &Action, error: &Error) {
        audit::record_refusal(self, action, error).await;
    }
}

impl TruthTx for PgTx {
    async fn lock_current(&mut self, cluster_id: &str) -> Result<Option<TermRow>> {
        match db::authority_terms::lock_current(self, cluster_id).await? {
            Some(row) => Ok(Some(TermRow {
                term: row.term()?,
                last_seq: row.last_seq(),
            })),
            None => Ok(None),
        }
    }

    async fn cluster_exists(&mut self, cluster_id: &str) -> Result<bool> {
        db::clusters::exists(self, cluster_id).await
    }

    async fn storage_peers(&mut self, cluster_id: &str) -> Result<Vec<StoragePeer>> {
        crate::fencing::storage_peers(self, cluster_id).await
    }

    async fn record_fence(&mut self, cluster_id: &str, term: u64, seq: u64) -> Result<()> {
        db::authority_terms::record_fence(self, cluster_id, term, seq).await
    }

    async fn advance_term(
        &mut self,
        cluster_id: &str,
        from: u64,
        to: u64,
        reason: TermReason,
        voters: &[String],
    ) -> Result<()> {
        db::authority_terms::advance(self, cluster_id, from, to, reason, voters).await
    }

    async fn record_ok(
        &mut self,
        action: &Action,
        fence: Option<&Fence>,
        details: serde_json::Value,
    ) -> Result<()> {
        audit::record_ok(self, action, fence, details).await?;
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        Ok(self.0.commit().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the one conditional check takes only a newer fence of the
    /// current term, and says why it refuses.
    /// Method: every case against a row of term 2, last seq 5, and none.
    #[test]
    fn admit_fence_takes_only_a_newer_fence_of_the_current_term() {
        let row = Some(TermRow {
            term: 2,
            last_seq: 5,
        });
        assert!(admit_fence(row, 2, 6).is_ok());
        for (term, seq, why) in [
            (2, 5, "not newer than 5"),
            (2, 1, "not newer than 5"),
            (1, 9, "but term 2 is current"),
            (3, 9, "but term 2 is current"),
        ] {
            let e = admit_fence(row, term, seq)
                .err()
                .map(|e| (e.code(), e.to_string()));
            let (code, message) = e.unwrap_or_default();
            assert_eq!(code, "STALE_FENCE", "({term}, {seq})");
            assert!(message.contains(why), "({term}, {seq}): {message}");
        }
        let none = admit_fence(None, 1, 1).err().map(|e| e.code());
        assert_eq!(none, Some("STALE_FENCE"));
    }
}
