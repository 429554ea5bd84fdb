//! A cache replica: a storage node that is not a voter. It holds the
//! shards that placement assigns it (its signed `cache/<id>` shard), fetched
//! from the voters ([`follow`]), each verified and kept durably in its
//! [`CacheStore`], and serves them to their readers through the same
//! `ShardService` as the voters ([`crate::shard::ShardApi::cache`]).
//!
//! What it serves is exactly what it verified: the envelopes as signed, the
//! readers check on their own `readers` lists, the caller's roles from the
//! `node/<caller>` shard it holds (placement gives a cache the `node/`
//! scope of every node it serves), revocations from the
//! `trust/revocations` shard it holds.
//!
//! Staleness: a cache has no Raft state of its own. It confirms with a
//! voter every [`follow::CONFIRM_INTERVAL`] that it holds the newest
//! assignment; its replies carry the partition view of the voter it last
//! confirmed with, or `MINORITY` once no voter has confirmed for
//! [`CONFIRM_STALE_AFTER`] (it cannot tell whether it is current), the
//! time since that confirmation, and `from_cache_replica`.

pub mod follow;

use crate::cache::CacheStore;
use crate::error::{Error, Result};
use crate::metrics::{AuthorityMetrics, Format, NodeKind};
use crate::state::ShardRecord;
use rap_proto::envelope::{Scope, decode};
use rap_proto::ids::{ClusterId, LogIndex, NodeId};
use rap_proto::pb;
use rap_proto::revocations::REVOCATIONS_SCOPE;
use rap_proto::time::UnixMillis;
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// After this long without a voter confirming its assignment, a cache
/// replica reports `MINORITY`: it serves what it holds, but cannot say it
/// is current.
pub const CONFIRM_STALE_AFTER: Duration = Duration::from_secs(15);

/// The upstream voter a cache replica last confirmed with.
#[derive(Clone, Debug)]
struct Confirmed {
    /// On tokio's clock: the real one in production, the simulated one
    /// under the simulator.
    at: Instant,
    view: i32,
    authority_term: u64,
}

/// A cache replica's verified shards, in memory over its durable store.
#[derive(Debug)]
pub struct CacheReplica {
    store: CacheStore,
    cluster_id: ClusterId,
    node_id: NodeId,
    held: RwLock<BTreeMap<String, ShardRecord>>,
    revoked: RwLock<Arc<HashSet<String>>>,
    /// The highest authority term among the kept envelopes.
    held_term: AtomicU64,
    changes: watch::Sender<u64>,
    confirmed: Mutex<Option<Confirmed>>,
    metrics: Arc<AuthorityMetrics>,
    started: Instant,
}

impl CacheReplica {
    /// Serves what `store` holds (every kept envelope is decoded again; one
    /// that does not decode is a storage error).
    pub fn open(store: CacheStore) -> Result<CacheReplica> {
        let cluster_id = store.cluster_id().clone();
        let node_id = store.node_id().clone();
        let mut held = BTreeMap::new();
        for scope in store.scopes()? {
            let Some(envelope) = store.get(&scope)? else {
                continue;
            };
            held.insert(scope.clone(), record_of(&scope, envelope)?);
        }
        let revoked = held
            .get(REVOCATIONS_SCOPE)
            .map(|r| crate::admission::revoked_serials(&r.envelope, &cluster_id))
            .unwrap_or_default();
        let held_term = held.values().map(|r| r.authority_term.0).max().unwrap_or(0);
        let (changes, _) = watch::channel(0);
        let metrics = Arc::new(AuthorityMetrics::new(
            cluster_id.as_str(),
            node_id.as_str(),
            NodeKind::Cache,
        ));
        Ok(CacheReplica {
            store,
            cluster_id,
            node_id,
            held: RwLock::new(held),
            revoked: RwLock::new(Arc::new(revoked)),
            held_term: AtomicU64::new(held_term),
            changes,
            confirmed: Mutex::new(None),
            metrics,
            started: Instant::now(),
        })
    }

    /// The cluster.
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }

    /// This storage node.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// Its counters (refusals, latencies).
    pub fn metrics(&self) -> &Arc<AuthorityMetrics> {
        &self.metrics
    }

    /// The kept shard of `scope`.
    pub fn shard(&self, scope: &str) -> Option<ShardRecord> {
        self.read(|held| held.get(scope).cloned())
    }

    /// The version kept of `scope` (0: none).
    pub fn version(&self, scope: &str) -> u64 {
        self.read(|held| held.get(scope).map_or(0, |r| r.version.0))
    }

    /// Reads the kept shards.
    pub fn read<T>(&self, f: impl FnOnce(&BTreeMap<String, ShardRecord>) -> T) -> T {
        f(&self.held.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Announces every change of what is kept.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether `serial_hex` is revoked by the kept `trust/revocations`.
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(serial_hex)
    }

    /// Verifies `envelope` and keeps it (see [`CacheStore::accept`]); the
    /// verifier's typed refusal changes nothing and is counted.
    pub fn accept(&self, envelope: &[u8]) -> Result<ShardRecord> {
        match self.accept_batch(&[envelope])?.pop() {
            Some(outcome) => outcome,
            None => Err(Error::Storage(
                "a batch of one envelope gave no outcome".into(),
            )),
        }
    }

    /// [`CacheReplica::accept`] for a batch, kept in one durable
    /// transaction ([`CacheStore::accept_batch`]): one outcome per
    /// envelope, refusals counted; `Err` when the store fails.
    pub fn accept_batch(&self, envelopes: &[&[u8]]) -> Result<Vec<Result<ShardRecord>>> {
        let outcomes = self.store.accept_batch(envelopes, UnixMillis::now())?;
        let mut records = Vec::with_capacity(outcomes.len());
        let mut changed = false;
        for (envelope, outcome) in envelopes.iter().zip(outcomes) {
            let kept = match outcome {
                Ok(kept) => kept,
                Err(error) => {
                    self.metrics.refused(error.code());
                    records.push(Err(error));
                    continue;
                }
            };
            let scope = kept.scope.to_string();
            let record = record_of(&scope, envelope.to_vec())?;
            if scope == REVOCATIONS_SCOPE {
                let serials = crate::admission::revoked_serials(envelope, &self.cluster_id);
                *self.revoked.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(serials);
            }
            self.held_term
                .fetch_max(record.authority_term.0, Ordering::AcqRel);
            self.held
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(scope, record.clone());
            changed = true;
            records.push(Ok(record));
        }
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
        Ok(records)
    }

    /// Deletes every kept scope not in `keep` (placement took it away;
    /// its mark stays, so it never comes back older). Returns the scopes
    /// deleted.
    pub fn retain(&self, keep: &BTreeSet<String>) -> Result<Vec<String>> {
        let gone: Vec<String> = self.read(|held| {
            held.keys()
                .filter(|scope| !keep.contains(*scope))
                .cloned()
                .collect()
        });
        for scope in &gone {
            self.store.remove(scope)?;
            self.held
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(scope);
            if scope == REVOCATIONS_SCOPE {
                *self.revoked.write().unwrap_or_else(PoisonError::into_inner) =
                    Arc::new(HashSet::new());
            }
        }
        if !gone.is_empty() {
            self.changes.send_modify(|n| *n += 1);
        }
        Ok(gone)
    }

    /// The kept assignment (`cache/<this node>`), decoded.
    pub fn assignment(&self) -> Result<Option<pb::CacheShard>> {
        let Some(record) = self.shard(&Scope::Cache(self.node_id.clone()).to_string()) else {
            return Ok(None);
        };
        let envelope = decode(&record.envelope)?;
        let shard: pb::CacheShard = rap_proto::shards::decode(&envelope.body, &self.cluster_id)?;
        if shard.node_id != self.node_id.as_str() {
            return Err(Error::InvalidRequest(format!(
                "the assignment of cache {} names {}",
                self.node_id,
                shard.node_id.chars().take(80).collect::<String>()
            )));
        }
        Ok(Some(shard))
    }

    /// A voter confirmed the assignment, seeing `staleness`.
    pub fn confirm(&self, staleness: &pb::Staleness) {
        *self
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Confirmed {
            at: Instant::now(),
            view: staleness.partition_view,
            authority_term: staleness.authority_term,
        });
    }

    /// How fresh what this cache serves may be.
    pub fn staleness(&self) -> pb::Staleness {
        let confirmed = self
            .confirmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let held_term = self.held_term.load(Ordering::Acquire);
        let (age, view, term) = match confirmed {
            Some(c) => {
                let age = c.at.elapsed();
                let view = if age > CONFIRM_STALE_AFTER {
                    pb::PartitionView::Minority as i32
                } else {
                    c.view
                };
                (age, view, c.authority_term.max(held_term))
            }
            None => (
                self.started.elapsed(),
                pb::PartitionView::Minority as i32,
                held_term,
            ),
        };
        pb::Staleness {
            partition_view: view,
            last_apply_age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            from_cache_replica: true,
            authority_term: term,
        }
    }
}

impl CacheReplica {
    /// The metrics exposition of this cache replica in `format`: the
    /// shared counters (refusals, latencies), its authority term and
    /// partition view as it reports them, what it holds, when a voter last
    /// confirmed it and when its certificate (`certificate_not_after`)
    /// ends.
    pub fn render_metrics(
        &self,
        certificate_not_after: Option<std::time::SystemTime>,
        format: Format,
    ) -> String {
        let staleness = self.staleness();
        let view = pb::PartitionView::try_from(staleness.partition_view)
            .map(|v| match v {
                pb::PartitionView::Healthy => "healthy",
                pb::PartitionView::Degraded => "degraded",
                pb::PartitionView::Fenced => "fenced",
                _ => "minority",
            })
            .unwrap_or("minority");
        let gauges = crate::metrics::Gauges {
            authority_term: staleness.authority_term,
            partition_view: view,
            last_apply_age: Duration::from_millis(staleness.last_apply_age_ms),
            certificate_not_after,
            shards_held: u64::try_from(self.read(BTreeMap::len)).unwrap_or(u64::MAX),
            ..Default::default()
        };
        self.metrics.render(&gauges, format)
    }

    /// Whether it serves current state: `Ok` with a line when it holds an
    /// assignment a voter confirmed within [`CONFIRM_STALE_AFTER`], else
    /// `Err` with the reason.
    pub fn readiness(&self) -> std::result::Result<String, String> {
        let held = self.read(BTreeMap::len);
        let staleness = self.staleness();
        let assigned = self
            .shard(&Scope::Cache(self.node_id.clone()).to_string())
            .is_some();
        if !assigned {
            return Err("no assignment yet (is this node registered as a cache replica, and a voter reachable?)".into());
        }
        if staleness.partition_view == pb::PartitionView::Minority as i32 {
            return Err(format!(
                "no voter confirmed the assignment for {} ms; serving {held} shards that may be stale",
                staleness.last_apply_age_ms
            ));
        }
        Ok(format!(
            "ready: cache replica holding {held} shards, confirmed {} ms ago",
            staleness.last_apply_age_ms
        ))
    }
}

/// What the access layer of a cache replica sees: no group members (it
/// speaks no Raft), revocations from the `trust/revocations` it holds.
impl crate::access::GroupView for CacheReplica {
    fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }
    fn is_member(&self, _id: &NodeId) -> bool {
        false
    }
    fn is_revoked(&self, serial_hex: &str) -> bool {
        CacheReplica::is_revoked(self, serial_hex)
    }
    fn node_id(&self) -> Option<NodeId> {
        Some(self.node_id.clone())
    }
    fn serves(&self) -> &'static [crate::access::Rpc] {
        &crate::access::Rpc::CACHE
    }
}

/// The record of a kept envelope (it was verified when kept).
fn record_of(scope: &str, envelope: Vec<u8>) -> Result<ShardRecord> {
    let decoded = decode(&envelope).map_err(|e| {
        Error::Storage(format!("the kept envelope of {scope} does not decode: {e}"))
    })?;
    Ok(ShardRecord {
        header_hash: decoded.header_hash(),
        version: decoded.header.version,
        trust_generation: decoded.header.trust_generation,
        authority_term: decoded.header.authority_term,
        log_index: LogIndex(0),
        envelope: ByteBuf::from(envelope),
    })
}
