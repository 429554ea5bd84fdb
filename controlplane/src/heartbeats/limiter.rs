//! The per-node limiter of the heartbeat batcher: a token bucket per
//! (cluster, node) for the rate, and a budget of logged changes (see the
//! parent module's docs).

use super::*;

/// Per-node limits of a [`Heartbeats`] batcher (see the module docs);
/// [`NodeLimits::default`] uses the limits of [`crate::limits`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLimits {
    /// Heartbeats a node may send back to back.
    pub burst: u32,
    /// One more heartbeat is allowed every this long.
    pub refill: Duration,
    /// Nodes tracked at once.
    pub nodes_max: usize,
    /// Changes of one node logged per `log_interval`.
    pub log_changes_max: u32,
    /// The interval of `log_changes_max` (and of the periodic samples).
    pub log_interval: Duration,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            burst: HEARTBEAT_NODE_BURST,
            refill: HEARTBEAT_NODE_REFILL,
            nodes_max: HEARTBEAT_NODES_TRACKED_MAX,
            log_changes_max: HEARTBEAT_LOG_CHANGES_MAX,
            log_interval: HEARTBEAT_LOG_INTERVAL,
        }
    }
}

/// Generic cell rate algorithm: a token bucket of `burst` refilled one per
/// `every`, kept as the "theoretical arrival time" `tat` (the bucket is
/// full when `tat <= now`). Takes one token, or says how long until one is
/// there.
pub(super) fn take_token(
    tat: &mut Instant,
    now: Instant,
    every: Duration,
    burst: u32,
) -> Result<(), Duration> {
    let start = (*tat).max(now);
    let next = start.checked_add(every).unwrap_or(start);
    let tolerance = every.checked_mul(burst).unwrap_or(Duration::MAX);
    let ahead = next.saturating_duration_since(now);
    if ahead > tolerance {
        Err(ahead - tolerance)
    } else {
        *tat = next;
        Ok(())
    }
}

/// One node's limiter state.
#[derive(Debug)]
pub(super) struct NodeState {
    /// The rate bucket ([`take_token`]).
    rate_tat: Instant,
    /// The change-log budget ([`take_token`]).
    log_tat: Instant,
    /// Health, degraded mode and agent version hash of its last admitted
    /// heartbeat.
    last: Option<(Health, bool, u64)>,
    /// Refused since its bucket was last full (warned once per episode).
    limited: bool,
}

impl NodeState {
    pub(super) fn new(now: Instant) -> Self {
        NodeState {
            rate_tat: now,
            log_tat: now,
            last: None,
            limited: false,
        }
    }

    /// Both buckets full: forgetting the node loses nothing.
    pub(super) fn idle(&self, now: Instant) -> bool {
        self.rate_tat <= now && self.log_tat <= now
    }
}

/// The per-node limiter (see the module docs). One mutex over a map: a
/// few hundred nanoseconds per heartbeat, far below the write path.
#[derive(Debug)]
pub(super) struct NodeLimiter {
    limits: NodeLimits,
    /// `log_interval / log_changes_max`.
    log_every: Duration,
    nodes: Mutex<HashMap<String, NodeState>>,
    /// Set while the table is full of busy nodes (warned once).
    full: AtomicBool,
}

impl NodeLimiter {
    pub(super) fn new(limits: NodeLimits) -> Self {
        let limits = NodeLimits {
            burst: limits.burst.max(1),
            nodes_max: limits.nodes_max.max(1),
            log_changes_max: limits.log_changes_max.max(1),
            ..limits
        };
        NodeLimiter {
            log_every: limits.log_interval / limits.log_changes_max,
            limits,
            nodes: Mutex::new(HashMap::new()),
            full: AtomicBool::new(false),
        }
    }

    pub(super) fn tracked(&self) -> usize {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether node `cluster_id`/`node_id` has a token at `now`, without
    /// taking it: lets a caller refuse before validating the heartbeat.
    pub(super) fn peek(&self, cluster_id: &str, node_id: &str, now: Instant) -> Result<()> {
        let key = format!("{cluster_id}/{node_id}");
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = nodes.get_mut(&key) else {
            return Ok(());
        };
        let mut tat = state.rate_tat;
        match take_token(&mut tat, now, self.limits.refill, self.limits.burst) {
            Ok(()) => Ok(()),
            Err(wait) => {
                self.note_limited(state, cluster_id, node_id);
                Err(self.refusal(cluster_id, node_id, wait))
            }
        }
    }

    /// Logs the first refusal of an episode (it ends when the node's
    /// bucket is full again, i.e. it slowed down).
    pub(super) fn note_limited(&self, state: &mut NodeState, cluster_id: &str, node_id: &str) {
        if !state.limited {
            state.limited = true;
            tracing::warn!(
                cluster_id,
                node_id,
                burst = self.limits.burst,
                refill_ms = u64::try_from(self.limits.refill.as_millis()).unwrap_or(u64::MAX),
                "node exceeds its heartbeat rate: refusing its excess (RATE_LIMITED) \
                 until it slows down"
            );
        }
    }

    pub(super) fn refusal(&self, cluster_id: &str, node_id: &str, retry_after: Duration) -> Error {
        Error::RateLimited {
            what: format!(
                "heartbeats of node {cluster_id}/{node_id} (at most {} at once, one more every {} ms)",
                self.limits.burst,
                self.limits.refill.as_millis()
            ),
            retry_after,
        }
    }

    /// Admits `heartbeat` at `now` or refuses it with
    /// [`Error::RateLimited`]. `Ok(log_change)`: false when it changes its
    /// node's state but the node's change budget is spent.
    pub(super) fn admit(&self, heartbeat: &Heartbeat, now: Instant) -> Result<bool> {
        let key = format!("{}/{}", heartbeat.cluster_id, heartbeat.node_id);
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        if !nodes.contains_key(&key) && nodes.len() >= self.limits.nodes_max {
            nodes.retain(|_, state| !state.idle(now));
            if nodes.len() >= self.limits.nodes_max {
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        nodes_max = self.limits.nodes_max,
                        cluster_id = %heartbeat.cluster_id,
                        node_id = %heartbeat.node_id,
                        "heartbeat limiter tracks its maximum of busy nodes: refusing new nodes \
                         as rate limited until some go idle"
                    );
                }
                return Err(Error::RateLimited {
                    what: format!(
                        "heartbeats: the control plane tracks {} busy nodes already",
                        self.limits.nodes_max
                    ),
                    retry_after: self.limits.refill,
                });
            }
            self.full.store(false, Ordering::Relaxed);
        }
        let state = nodes.entry(key).or_insert_with(|| NodeState::new(now));
        if state.rate_tat <= now {
            // A full bucket: the node slowed down; a new episode may start.
            state.limited = false;
        }
        if let Err(wait) = take_token(
            &mut state.rate_tat,
            now,
            self.limits.refill,
            self.limits.burst,
        ) {
            self.note_limited(
                state,
                heartbeat.cluster_id.as_str(),
                heartbeat.node_id.as_str(),
            );
            return Err(self.refusal(
                heartbeat.cluster_id.as_str(),
                heartbeat.node_id.as_str(),
                wait,
            ));
        }
        let current = (
            heartbeat.health,
            heartbeat.degraded_mode,
            version_hash(&heartbeat.agent_version),
        );
        let changed = state.last != Some(current);
        state.last = Some(current);
        let log_change = !changed
            || take_token(
                &mut state.log_tat,
                now,
                self.log_every,
                self.limits.log_changes_max,
            )
            .is_ok();
        Ok(log_change)
    }
}

pub(super) fn version_hash(version: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    version.hash(&mut hasher);
    hasher.finish()
}
