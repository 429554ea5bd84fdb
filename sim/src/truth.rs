//! The control plane's side in the simulator: its real fenced-mutation path
//! (`rap_controlplane::fencing::run`: hold the authority row, ask the group
//! for a fence through the control plane's authority client, the
//! conditional check, apply, audit, commit) over [`MemoryTruth`], an
//! in-memory [`SourceOfTruth`] that stands in for PostgreSQL. It exists
//! only here; the product has PostgreSQL alone.
//!
//! It keeps what the checkers need of PostgreSQL: one authority row (term
//! and last fence seq), the storage nodes a fence is asked of, the applied
//! mutations and the audit rows. A transaction holds the whole state from
//! `begin` to `commit` (PostgreSQL holds the authority row, `FOR UPDATE`,
//! for as long), sees its own writes, and changes nothing if dropped. The
//! conditional check is the product's own [`admit_fence`].
//!
//! Every commit is logged in commit order ([`TruthEvent`]): the rules
//! `truth-fences-increase`, `truth-current-term` and
//! `mutations-as-answered` read it ([`crate::checkers`]).

use crate::events::{Event, EventLog, NodeIndex, TruthEvent, node_name};
use crate::harness::now;
use rap_authority::client::StoragePeer;
use rap_controlplane::audit::Action;
use rap_controlplane::db::authority_terms::TermReason;
use rap_controlplane::truth::{SourceOfTruth, TermRow, TruthTx, admit_fence};
use rap_controlplane::{Error, Result};
use rap_core::Fence;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::OwnedMutexGuard;

/// The action name of the simulator's fenced mutations.
pub const MUTATE: &str = "sim.mutate";

/// One audit row, as the checkers need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    /// The object acted on.
    pub target: String,
    /// `ok` or `refused`.
    pub result: &'static str,
    /// The refusal code (empty when `ok`).
    pub code: String,
}

/// What PostgreSQL would hold for the simulated cluster.
#[derive(Clone, Debug, Default)]
struct Rows {
    cluster_id: String,
    current: Option<TermRow>,
    peers: Vec<StoragePeer>,
    /// Applied mutations: target → the fence it was applied with.
    values: BTreeMap<String, (u64, u64)>,
}

/// The in-memory source of truth (see the module docs). Clones share it.
#[derive(Clone, Debug)]
pub struct MemoryTruth {
    rows: Arc<tokio::sync::Mutex<Rows>>,
    audit: Arc<Mutex<Vec<AuditRow>>>,
    /// The committed current term, read without waiting for the row (as a
    /// plain `SELECT` reads PostgreSQL's last committed row).
    committed_term: Arc<AtomicU64>,
    log: EventLog,
    /// [`crate::mutants::Mutant::ControlPlaneUnchecked`]: no row held, no
    /// conditional check.
    unchecked: bool,
}

impl MemoryTruth {
    /// A bootstrapped cluster `cluster_id` at `term` whose storage nodes
    /// are `nodes` (dialled at `address(node)`); the term is logged.
    pub fn bootstrapped(
        cluster_id: &str,
        term: u64,
        nodes: &[NodeIndex],
        address: impl Fn(NodeIndex) -> String,
        log: EventLog,
        unchecked: bool,
    ) -> Self {
        let peers = nodes
            .iter()
            .map(|n| StoragePeer {
                node_id: node_name(*n),
                address: address(*n),
            })
            .collect();
        log.push(Event::Truth {
            at: now(),
            what: TruthEvent::TermRecorded { term },
        });
        MemoryTruth {
            rows: Arc::new(tokio::sync::Mutex::new(Rows {
                cluster_id: cluster_id.to_string(),
                current: Some(TermRow { term, last_seq: 0 }),
                peers,
                values: BTreeMap::new(),
            })),
            audit: Arc::new(Mutex::new(Vec::new())),
            committed_term: Arc::new(AtomicU64::new(term)),
            log,
            unchecked,
        }
    }

    /// The committed current term (as `rapctl authority status` reads
    /// it), without waiting for a transaction that holds the row.
    pub fn current_term(&self) -> u64 {
        self.committed_term.load(Ordering::SeqCst)
    }

    /// Records `peer` as a storage node again (a rejoined member).
    pub async fn add_peer(&self, node: NodeIndex, address: String) {
        let mut rows = self.rows.lock().await;
        let node_id = node_name(node);
        if !rows.peers.iter().any(|p| p.node_id == node_id) {
            rows.peers.push(StoragePeer { node_id, address });
        }
    }

    /// Logs what the truth holds at the end of a run.
    pub async fn log_final(&self) {
        let keys = self.rows.lock().await.values.keys().cloned().collect();
        let audit = self
            .audit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        self.log.push(Event::Truth {
            at: now(),
            what: TruthEvent::Final { keys, audit },
        });
    }
}

impl SourceOfTruth for MemoryTruth {
    type Tx = MemoryTx;

    async fn begin(&self) -> Result<MemoryTx> {
        let (guard, view) = if self.unchecked {
            (None, self.rows.lock().await.clone())
        } else {
            let guard = self.rows.clone().lock_owned().await;
            let view = guard.clone();
            (Some(guard), view)
        };
        Ok(MemoryTx {
            truth: self.clone(),
            guard,
            view,
            ops: Vec::new(),
            audit: Vec::new(),
        })
    }

    async fn record_refusal(&self, action: &Action, error: &Error) {
        self.audit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(AuditRow {
                target: action.target.clone(),
                result: "refused",
                code: error.code().to_string(),
            });
    }
}

/// A write of a [`MemoryTx`], applied at commit.
#[derive(Clone, Debug)]
enum Op {
    Fence { term: u64, seq: u64 },
    Put { target: String, fence: (u64, u64) },
    Advance { to: u64, voters: Vec<String> },
}

/// One transaction of [`MemoryTruth`].
#[derive(Debug)]
pub struct MemoryTx {
    truth: MemoryTruth,
    /// The whole state, held until commit or drop (`None` for the
    /// unchecked mutant).
    guard: Option<OwnedMutexGuard<Rows>>,
    /// What this transaction sees: the state at `begin` and its own writes.
    view: Rows,
    ops: Vec<Op>,
    audit: Vec<AuditRow>,
}

impl MemoryTx {
    /// The simulator's mutation: records `target` as applied with `fence`.
    pub fn put(&mut self, target: &str, fence: &Fence) {
        let fence = (fence.authority_term.0, fence.seq.0);
        self.view.values.insert(target.to_string(), fence);
        self.ops.push(Op::Put {
            target: target.to_string(),
            fence,
        });
    }

    fn ours(&self, cluster_id: &str) -> bool {
        self.view.cluster_id == cluster_id
    }
}

impl TruthTx for MemoryTx {
    async fn lock_current(&mut self, cluster_id: &str) -> Result<Option<TermRow>> {
        Ok(self.view.current.filter(|_| self.ours(cluster_id)))
    }

    async fn cluster_exists(&mut self, cluster_id: &str) -> Result<bool> {
        Ok(self.ours(cluster_id))
    }

    async fn storage_peers(&mut self, cluster_id: &str) -> Result<Vec<StoragePeer>> {
        Ok(if self.ours(cluster_id) {
            self.view.peers.clone()
        } else {
            Vec::new()
        })
    }

    async fn record_fence(&mut self, cluster_id: &str, term: u64, seq: u64) -> Result<()> {
        let current = self.view.current.filter(|_| self.ours(cluster_id));
        if !self.truth.unchecked {
            admit_fence(current, term, seq)?;
        }
        self.view.current = Some(TermRow {
            term: current.map_or(term, |row| row.term),
            last_seq: seq,
        });
        self.ops.push(Op::Fence { term, seq });
        Ok(())
    }

    async fn advance_term(
        &mut self,
        cluster_id: &str,
        from: u64,
        to: u64,
        _reason: TermReason,
        voters: &[String],
    ) -> Result<()> {
        let current = self.view.current.filter(|_| self.ours(cluster_id));
        if current.map(|row| row.term) != Some(from) || to != from + 1 {
            return Err(Error::StaleFence(format!(
                "term {from} is not current, or {to} does not follow it"
            )));
        }
        self.view.current = Some(TermRow {
            term: to,
            last_seq: 0,
        });
        self.view.peers.retain(|p| voters.contains(&p.node_id));
        self.ops.push(Op::Advance {
            to,
            voters: voters.to_vec(),
        });
        Ok(())
    }

    async fn record_ok(
        &mut self,
        action: &Action,
        _fence: Option<&Fence>,
        _details: serde_json::Value,
    ) -> Result<()> {
        self.audit.push(AuditRow {
            target: action.target.clone(),
            result: "ok",
            code: String::new(),
        });
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        let MemoryTx {
            truth,
            guard,
            ops,
            audit,
            ..
        } = self;
        let mut rows = match guard {
            Some(guard) => guard,
            None => truth.rows.clone().lock_owned().await,
        };
        let mut fence = None;
        for op in ops {
            match op {
                Op::Fence { term, seq } => {
                    // Unchecked, the row takes whatever came (the mutant).
                    rows.current = Some(TermRow {
                        term: rows.current.map_or(term, |row| row.term),
                        last_seq: seq,
                    });
                    fence = Some((term, seq));
                }
                Op::Put { target, fence } => {
                    rows.values.insert(target, fence);
                }
                Op::Advance { to, voters } => {
                    rows.current = Some(TermRow {
                        term: to,
                        last_seq: 0,
                    });
                    rows.peers.retain(|p| voters.contains(&p.node_id));
                    truth.committed_term.store(to, Ordering::SeqCst);
                    truth.log.push(Event::Truth {
                        at: now(),
                        what: TruthEvent::TermRecorded { term: to },
                    });
                }
            }
        }
        for row in &audit {
            truth.log.push(Event::Truth {
                at: now(),
                what: TruthEvent::Committed {
                    target: row.target.clone(),
                    fence,
                },
            });
        }
        truth
            .audit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(audit);
        Ok(())
    }
}
