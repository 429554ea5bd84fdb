//! The event log: everything a run did and saw, in the order it happened,
//! stamped with simulated time. The checkers read nothing else, and two
//! runs of one seed are compared line by line ([`EventLog::lines`]).
//!
//! Who writes what: the harness writes [`Event::Fault`] when it applies a
//! fault; each storage-node host writes [`Event::Boot`], [`Event::Raft`]
//! (on every change of its Raft term, leader or role) and [`Event::View`]
//! (on every change of its partition view); the client host writes
//! [`Event::Phase`], [`Event::Fence`] (one per `AcquireFence` call),
//! [`Event::Final`], the operator's [`Event::Promotion`] and
//! [`Event::Promote`], and an [`Event::View`] when a node it waits for
//! reports `fenced`.

use crate::faults::Applied;
use rap_authority::partition::PartitionView;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A storage node's index in the cluster (`0..voters`); its host name is
/// [`node_name`]`(index)`.
pub type NodeIndex = usize;

/// The host name (and RAP node id) of node `index`: `node-1`, `node-2`, ...
pub fn node_name(index: NodeIndex) -> String {
    format!("node-{}", index + 1)
}

/// A node's Raft role, as its metrics report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Leader of its term.
    Leader,
    /// Candidate in an election.
    Candidate,
    /// Follower.
    Follower,
    /// Learner (not a voter).
    Learner,
    /// Raft stopped.
    Shutdown,
}

impl Role {
    /// The role of openraft's `ServerState`.
    pub fn of(state: openraft::ServerState) -> Role {
        match state {
            openraft::ServerState::Leader => Role::Leader,
            openraft::ServerState::Candidate => Role::Candidate,
            openraft::ServerState::Follower => Role::Follower,
            openraft::ServerState::Learner => Role::Learner,
            openraft::ServerState::Shutdown => Role::Shutdown,
        }
    }
}

/// Phases of the client's script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The group is bootstrapped (genesis committed).
    Bootstrapped,
    /// A first fence was granted: the workload and the fault schedule
    /// start now (fault offsets count from here).
    WorkloadStarted,
    /// The workers stopped; every fault must be healed by now.
    WorkloadEnded,
    /// Every node agrees on leader, applied index and last fence.
    Converged,
}

/// How one `AcquireFence` call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A fence was granted.
    Granted {
        /// Authority term of the fence.
        authority_term: u64,
        /// Its sequence number.
        seq: u64,
        /// The log index of the entry that granted it.
        log_index: u64,
    },
    /// Refused with a gRPC status.
    Refused {
        /// The `ErrorDetail` code (`NO_QUORUM`, ...), or `-` when the status
        /// carries none (a transport failure).
        code: String,
        /// The gRPC status code.
        grpc: tonic::Code,
    },
    /// No answer before the client's deadline.
    TimedOut,
}

/// One `AcquireFence` call of a client worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceCall {
    /// The worker that made it (`usize::MAX` for the client's own setup
    /// and final calls).
    pub worker: usize,
    /// The node it was sent to.
    pub node: NodeIndex,
    /// When it was sent.
    pub started: Duration,
    /// When its answer (or the client's deadline) came.
    pub ended: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

impl FenceCall {
    /// The fence, when one was granted: `(authority_term, seq, log_index)`.
    pub fn granted(&self) -> Option<(u64, u64, u64)> {
        match self.outcome {
            Outcome::Granted {
                authority_term,
                seq,
                log_index,
            } => Some((authority_term, seq, log_index)),
            _ => None,
        }
    }
}

/// A node's state at the end of a run, from its `Status` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalStatus {
    /// The leader it names (empty: none).
    pub leader: String,
    /// Its Raft term.
    pub raft_term: u64,
    /// Its authority term.
    pub authority_term: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// The last fence sequence it has applied.
    pub last_fence_seq: u64,
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A storage node (re)started, with the election timeout it drew.
    Boot {
        /// Simulated time.
        at: Duration,
        /// The node.
        node: NodeIndex,
        /// Its election timeout for this incarnation.
        election_timeout: Duration,
    },
    /// The client's script moved on.
    Phase {
        /// Simulated time.
        at: Duration,
        /// The phase entered.
        phase: Phase,
    },
    /// The harness applied a fault (resolved to concrete nodes).
    Fault {
        /// Simulated time.
        at: Duration,
        /// What was done to the network or the hosts.
        fault: Applied,
    },
    /// A node's Raft metrics changed term, leader or role.
    Raft {
        /// Simulated time.
        at: Duration,
        /// The node.
        node: NodeIndex,
        /// Its authority term (a promotion starts a new Raft group, whose
        /// Raft terms count from 1 again).
        authority_term: u64,
        /// Its Raft term.
        term: u64,
        /// The leader it knows, if any.
        leader: Option<NodeIndex>,
        /// Its role.
        role: Role,
    },
    /// A node's partition view changed.
    View {
        /// Simulated time.
        at: Duration,
        /// The node.
        node: NodeIndex,
        /// The new view.
        view: PartitionView,
    },
    /// An `AcquireFence` call finished.
    Fence(FenceCall),
    /// The forger sent a Raft RPC claiming a higher authority term
    /// (see [`crate::forger`]).
    Forged {
        /// Simulated time of the answer.
        at: Duration,
        /// The node it was sent to.
        node: NodeIndex,
        /// The sender the header claimed.
        from: String,
        /// The term the header claimed.
        term: u64,
        /// The proof it carried: none, garbage or stranger-signed.
        proof: &'static str,
        /// The refusal code, or `accepted`, a transport error, `timed out`.
        outcome: String,
    },
    /// A crashed host's disk lost its unsynced writes
    /// ([`crate::disk`]).
    PowerLoss {
        /// Simulated time.
        at: Duration,
        /// The node.
        node: NodeIndex,
        /// Unsynced writes undone.
        lost_writes: usize,
    },
    /// The operator signed a promotion order (loss-of-quorum recovery):
    /// from now on a node may believe `term` and report `fenced`.
    Promotion {
        /// Simulated time.
        at: Duration,
        /// The new authority term.
        term: u64,
        /// The survivors the order names.
        survivors: Vec<NodeIndex>,
        /// The survivor the new group starts from.
        seed: NodeIndex,
        /// The seed's applied index the order names.
        seed_applied: u64,
    },
    /// A survivor answered the promotion order.
    Promote {
        /// Simulated time of the answer.
        at: Duration,
        /// The survivor.
        node: NodeIndex,
        /// `promoted term=N`, or the refusal code and message.
        outcome: String,
    },
    /// The operator brought an old member back into the new group after
    /// the heal (`rapctl authority rejoin`).
    Rejoin {
        /// Simulated time of the answer.
        at: Duration,
        /// The old member.
        node: NodeIndex,
        /// `rejoined term=N`, or the refusal.
        outcome: String,
    },
    /// Shard publication and reads ([`crate::shards`]).
    Shard {
        /// Simulated time.
        at: Duration,
        /// What happened.
        what: ShardEvent,
    },
    /// The control plane's source of truth ([`crate::truth`]) and its
    /// fenced mutations.
    Truth {
        /// Simulated time.
        at: Duration,
        /// What happened.
        what: TruthEvent,
    },
    /// A storage node's wall clock is off by `skew_ms` (drawn at the
    /// start, or set right by the operator: [`crate::clocks`]).
    Clock {
        /// Simulated time.
        at: Duration,
        /// The node.
        node: NodeIndex,
        /// Milliseconds ahead (negative: behind) of the true time.
        skew_ms: i64,
    },
    /// A node's final status (after convergence).
    Final {
        /// Simulated time.
        at: Duration,
        /// The node.
        node: NodeIndex,
        /// What it reported.
        status: FinalStatus,
    },
}

impl Event {
    /// When the event happened (a fence call: when it ended).
    pub fn at(&self) -> Duration {
        match self {
            Event::Boot { at, .. }
            | Event::Phase { at, .. }
            | Event::Fault { at, .. }
            | Event::Raft { at, .. }
            | Event::View { at, .. }
            | Event::Forged { at, .. }
            | Event::PowerLoss { at, .. }
            | Event::Promotion { at, .. }
            | Event::Promote { at, .. }
            | Event::Rejoin { at, .. }
            | Event::Shard { at, .. }
            | Event::Truth { at, .. }
            | Event::Clock { at, .. }
            | Event::Final { at, .. } => *at,
            Event::Fence(call) => call.ended,
        }
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>7}ms ", millis(self.at()))?;
        match self {
            Event::Boot {
                node,
                election_timeout,
                ..
            } => write!(
                f,
                "boot {} election_timeout={}ms",
                node_name(*node),
                millis(*election_timeout)
            ),
            Event::Phase { phase, .. } => write!(f, "phase {phase:?}"),
            Event::Fault { fault, .. } => write!(f, "fault {fault}"),
            Event::Raft {
                node,
                authority_term,
                term,
                leader,
                role,
                ..
            } => {
                write!(
                    f,
                    "raft {} term={term} role={role:?} leader={}",
                    node_name(*node),
                    leader.map(node_name).unwrap_or_else(|| "-".into())
                )?;
                if *authority_term != 1 {
                    write!(f, " authority_term={authority_term}")?;
                }
                Ok(())
            }
            Event::Promotion {
                term,
                survivors,
                seed,
                seed_applied,
                ..
            } => write!(
                f,
                "promotion order term={term} survivors={} seed={} seed_applied={seed_applied}",
                survivors
                    .iter()
                    .map(|n| node_name(*n))
                    .collect::<Vec<_>>()
                    .join(","),
                node_name(*seed)
            ),
            Event::PowerLoss {
                node, lost_writes, ..
            } => write!(
                f,
                "power loss {}: {lost_writes} unsynced writes undone",
                node_name(*node)
            ),
            Event::Promote { node, outcome, .. } => {
                write!(f, "promote {}: {outcome}", node_name(*node))
            }
            Event::Rejoin { node, outcome, .. } => {
                write!(f, "rejoin {}: {outcome}", node_name(*node))
            }
            Event::View { node, view, .. } => {
                write!(f, "view {} {}", node_name(*node), view.as_str())
            }
            Event::Fence(call) => {
                let worker = if call.worker == usize::MAX {
                    "client".to_string()
                } else {
                    format!("w{}", call.worker)
                };
                write!(
                    f,
                    "fence {worker} via {} sent={}ms took={}ms ",
                    node_name(call.node),
                    millis(call.started),
                    millis(call.ended.saturating_sub(call.started))
                )?;
                match &call.outcome {
                    Outcome::Granted {
                        authority_term,
                        seq,
                        log_index,
                    } => write!(
                        f,
                        "granted term={authority_term} seq={seq} index={log_index}"
                    ),
                    Outcome::Refused { code, grpc } => write!(f, "refused {code} ({grpc:?})"),
                    Outcome::TimedOut => write!(f, "timed out"),
                }
            }
            Event::Forged {
                node,
                from,
                term,
                proof,
                outcome,
                ..
            } => write!(
                f,
                "forged vote to {} from={from} term={term} proof={proof}: {outcome}",
                node_name(*node)
            ),
            Event::Shard { what, .. } => write!(f, "shard {what}"),
            Event::Truth { what, .. } => write!(f, "truth {what}"),
            Event::Clock { node, skew_ms, .. } => {
                write!(f, "clock {} skew={skew_ms}ms", node_name(*node))
            }
            Event::Final { node, status, .. } => write!(
                f,
                "final {} leader={} raft_term={} authority_term={} applied={} last_fence_seq={}",
                node_name(*node),
                if status.leader.is_empty() {
                    "-"
                } else {
                    &status.leader
                },
                status.raft_term,
                status.authority_term,
                status.applied_index,
                status.last_fence_seq
            ),
        }
    }
}

/// What the control plane's source of truth did ([`Event::Truth`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TruthEvent {
    /// The current authority term is now `term` (bootstrap, or a
    /// promotion recorded before its order is sent).
    TermRecorded {
        /// The term.
        term: u64,
    },
    /// A transaction committed (logged in commit order): its audit row's
    /// target and, for a fenced mutation, its fence `(term, seq)`.
    Committed {
        /// The audit row's target.
        target: String,
        /// The fence the transaction was checked with.
        fence: Option<(u64, u64)>,
    },
    /// A control-plane worker's fenced mutation of `target` was answered.
    Mutation {
        /// The worker (`usize::MAX` for the client's own after the heal).
        worker: usize,
        /// The mutation's target (unique per run).
        target: String,
        /// When it was asked.
        started: Duration,
        /// `Ok` with the fence, or the refusal code.
        answer: Result<(u64, u64), String>,
    },
    /// What the truth holds at the end of the run.
    Final {
        /// The targets of the applied mutations.
        keys: BTreeSet<String>,
        /// Every audit row, in the order written.
        audit: Vec<crate::truth::AuditRow>,
    },
}

impl fmt::Display for TruthEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TruthEvent::TermRecorded { term } => write!(f, "term recorded {term}"),
            TruthEvent::Committed { target, fence } => match fence {
                Some((term, seq)) => write!(f, "commit {target} fence={term}/{seq}"),
                None => write!(f, "commit {target} unfenced"),
            },
            TruthEvent::Mutation {
                worker,
                target,
                started,
                answer,
            } => {
                let worker = if *worker == usize::MAX {
                    "client".to_string()
                } else {
                    format!("m{worker}")
                };
                write!(f, "mutation {worker} {target} sent={}ms ", millis(*started))?;
                match answer {
                    Ok((term, seq)) => write!(f, "applied fence={term}/{seq}"),
                    Err(code) => write!(f, "refused {code}"),
                }
            }
            TruthEvent::Final { keys, audit } => write!(
                f,
                "final applied={} audit_rows={} refused={}",
                keys.len(),
                audit.len(),
                audit.iter().filter(|row| row.result != "ok").count()
            ),
        }
    }
}

/// What happened to a shard ([`Event::Shard`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardEvent {
    /// The group holds `version` of `scope` with body `body`: the
    /// publisher's call was acknowledged, or (`found`) its answer was lost
    /// and the group's heads showed it.
    Published {
        /// The scope.
        scope: String,
        /// The version.
        version: u64,
        /// The authority term it was sealed in.
        term: u64,
        /// The body's content hash (first 8 bytes, hex).
        body: String,
        /// Learnt from the heads rather than from the answer.
        found: bool,
    },
    /// An agent verified and kept `version` of `scope`.
    Accepted {
        /// The agent.
        agent: String,
        /// Which run of the agent (it restarts from its state).
        incarnation: u32,
        /// The scope.
        scope: String,
        /// The version.
        version: u64,
        /// The authority term it was sealed in.
        term: u64,
        /// The body's content hash (first 8 bytes, hex).
        body: String,
        /// The storage node that served it.
        served_by: String,
    },
    /// A cache replica or an agent stands on `node`'s side of every
    /// partition of the storage nodes ([`crate::shards::ShardPlan::sides`]).
    Home {
        /// The cache replica or agent.
        host: String,
        /// The storage node it stands with.
        node: NodeIndex,
    },
    /// An agent's wall clock is `skew_ms` off the publisher's
    /// ([`crate::shards::ShardPlan::skews`]).
    Clock {
        /// The agent.
        agent: String,
        /// How far its clock is ahead (negative: behind), milliseconds.
        skew_ms: i64,
    },
    /// A storage node served an agent a scope whose readers do not admit
    /// it (asked for with the agent's own certificate).
    Served {
        /// The agent.
        agent: String,
        /// The scope.
        scope: String,
        /// The version served.
        version: u64,
        /// The storage node.
        served_by: String,
    },
}

impl fmt::Display for ShardEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardEvent::Published {
                scope,
                version,
                term,
                body,
                found,
            } => write!(
                f,
                "published {scope} v{version} term={term} body={body}{}",
                if *found { " (found in the heads)" } else { "" }
            ),
            ShardEvent::Accepted {
                agent,
                incarnation,
                scope,
                version,
                term,
                body,
                served_by,
            } => write!(
                f,
                "{agent}#{incarnation} accepted {scope} v{version} term={term} body={body} from {served_by}"
            ),
            ShardEvent::Clock { agent, skew_ms } => {
                write!(f, "{agent}'s clock is {skew_ms} ms off")
            }
            ShardEvent::Home { host, node } => {
                write!(f, "{host} stands with {} in partitions", node_name(*node))
            }
            ShardEvent::Served {
                agent,
                scope,
                version,
                served_by,
            } => write!(
                f,
                "{served_by} served {agent} {scope} v{version}, which it may not read"
            ),
        }
    }
}

/// The shared, append-only event log of one run. Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct EventLog {
    events: Arc<Mutex<Vec<Event>>>,
}

/// Most events one run may log: a runaway loop fails the run instead of
/// eating the machine's memory.
pub const EVENTS_MAX: usize = 200_000;

impl EventLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `event`. Past [`EVENTS_MAX`] events the log stops growing
    /// and the run is failed by [`EventLog::overflowed`].
    pub fn push(&self, event: Event) {
        let mut events = self.lock();
        if events.len() <= EVENTS_MAX {
            events.push(event);
        }
    }

    /// Whether more than [`EVENTS_MAX`] events were pushed.
    pub fn overflowed(&self) -> bool {
        self.lock().len() > EVENTS_MAX
    }

    /// A copy of the events so far.
    pub fn snapshot(&self) -> Vec<Event> {
        self.lock().clone()
    }

    /// The events rendered one per line (what determinism compares).
    pub fn lines(&self) -> Vec<String> {
        self.lock().iter().map(ToString::to_string).collect()
    }

    /// The latest node that claims leadership of the highest term, as far
    /// as the log knows.
    pub fn current_leader(&self) -> Option<NodeIndex> {
        current_leader(&self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The node whose latest Raft event says it leads, with the highest
/// (authority term, Raft term) among such nodes.
pub fn current_leader(events: &[Event]) -> Option<NodeIndex> {
    let mut latest: std::collections::BTreeMap<NodeIndex, ((u64, u64), Role)> = Default::default();
    for event in events {
        if let Event::Raft {
            node,
            authority_term,
            term,
            role,
            ..
        } = event
        {
            latest.insert(*node, ((*authority_term, *term), *role));
        }
    }
    latest
        .into_iter()
        .filter(|(_, (_, role))| *role == Role::Leader)
        .max_by_key(|(_, (term, _))| *term)
        .map(|(node, _)| node)
}
