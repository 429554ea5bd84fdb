//! Who this node can reach, as the Raft transport sees it: per peer the
//! time of the last successful RPC and of the last failure, and the time a
//! leader of our term last reached us. The partition view (`healthy`,
//! `degraded`, `minority`) and `Status` (reachable voters, last-contact
//! age) are computed from it; nothing here decides anything.
//!
//! Times come from a [`Clock`]; the default [`TokioClock`] reads
//! `tokio::time::Instant`, so paused-time tests and the turmoil simulation
//! see simulated time.

use super::PEERS_MAX;
use crate::typ::RaftNodeId;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// A source of "now" for [`Reachability`].
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// [`Clock`] on `tokio::time::Instant::now()` (simulated time under a
/// paused runtime or turmoil).
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A [`Clock`] that moves only when told: for tests that check ages.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Instant>,
}

impl ManualClock {
    /// A clock standing at the current tokio instant.
    pub fn new() -> Self {
        ManualClock {
            now: Mutex::new(Instant::now()),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Failures in a row, the latest a failed connection, after which a peer
/// counts as gone ([`PeerContact::is_gone`]).
pub const GONE_AFTER_FAILURES: u32 = 2;

/// What the transport knows about one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerContact {
    /// When an RPC to it last succeeded (a Raft answer came back).
    pub last_success: Option<Instant>,
    /// When an RPC to it last failed (transport error, timeout, refusal).
    pub last_failure: Option<Instant>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// When the transport last found it gone: no connection could be
    /// made or kept (refused, reset, no channel), as opposed to a slow
    /// answer.
    pub last_unreachable: Option<Instant>,
}

impl PeerContact {
    /// Reachable at `now`: the latest outcome was a success no older than
    /// `within`.
    pub fn is_reachable(&self, now: Instant, within: Duration) -> bool {
        // `consecutive_failures` is reset by a success and raised by a
        // failure, so zero means the latest outcome was a success (even
        // when both happened within one clock tick).
        self.consecutive_failures == 0
            && self
                .last_success
                .is_some_and(|success| now.saturating_duration_since(success) <= within)
    }

    /// Gone at `now`: its latest [`GONE_AFTER_FAILURES`] outcomes at least
    /// are failures, and the transport found no connection to it within
    /// `within` (a timeout alone does not count: a busy peer is slow, not
    /// gone; one broken connection alone does not either: the first call
    /// after a peer restarted fails on the old connection).
    pub fn is_gone(&self, now: Instant, within: Duration) -> bool {
        self.consecutive_failures >= GONE_AFTER_FAILURES
            && self.last_unreachable.is_some_and(|at| {
                now.saturating_duration_since(at) <= within
                    && self.last_success.is_none_or(|success| success <= at)
            })
    }

    fn latest(&self) -> Option<Instant> {
        self.last_success.max(self.last_failure)
    }
}

/// The transport's record of contact with peers and with the leader.
/// Shared (in an `Arc`) by the client, the server and whoever computes the
/// partition view. Holds at most [`PEERS_MAX`] peers; when full, the peer
/// heard of least recently is forgotten.
#[derive(Debug)]
pub struct Reachability {
    clock: Arc<dyn Clock>,
    peers: Mutex<BTreeMap<RaftNodeId, PeerContact>>,
    last_leader_contact: Mutex<Option<Instant>>,
    refused_shorter_log: Mutex<Option<(Instant, u64)>>,
}

impl Default for Reachability {
    fn default() -> Self {
        Self::new()
    }
}

impl Reachability {
    /// An empty record on the [`TokioClock`].
    pub fn new() -> Self {
        Self::with_clock(Arc::new(TokioClock))
    }

    /// An empty record on `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Reachability {
            clock,
            peers: Mutex::new(BTreeMap::new()),
            last_leader_contact: Mutex::new(None),
            refused_shorter_log: Mutex::new(None),
        }
    }

    /// Now, on this record's clock.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// An RPC to `target` got a Raft answer.
    pub fn record_success(&self, target: RaftNodeId) {
        let now = self.now();
        self.update(target, |peer| {
            peer.last_success = Some(now);
            peer.consecutive_failures = 0;
        });
    }

    /// An RPC to `target` failed (transport, timeout or refusal).
    pub fn record_failure(&self, target: RaftNodeId) {
        let now = self.now();
        self.update(target, |peer| {
            peer.last_failure = Some(now);
            peer.consecutive_failures = peer.consecutive_failures.saturating_add(1);
        });
    }

    /// An RPC to `target` failed because no connection could be made or
    /// kept (see [`PeerContact::is_gone`]).
    pub fn record_unreachable(&self, target: RaftNodeId) {
        let now = self.now();
        self.update(target, |peer| {
            peer.last_failure = Some(now);
            peer.last_unreachable = Some(now);
            peer.consecutive_failures = peer.consecutive_failures.saturating_add(1);
        });
    }

    /// A leader of our authority term reached us (AppendEntries accepted
    /// for processing by Raft).
    pub fn record_leader_contact(&self) {
        let now = self.now();
        *self
            .last_leader_contact
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(now);
    }

    /// This node refused its vote to a candidate whose log is behind its
    /// own: that candidate cannot win while this node is needed, so this
    /// node may campaign instead (see the failover module).
    /// `candidate_term` is the term the candidate asked in.
    pub fn record_refused_shorter_log(&self, candidate_term: u64) {
        let now = self.now();
        *self
            .refused_shorter_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((now, candidate_term));
    }

    /// When this node last refused a candidate whose log was behind, and
    /// the term that candidate asked in.
    pub fn last_refused_shorter_log(&self) -> Option<(Instant, u64)> {
        *self
            .refused_shorter_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets `target` (it left the membership).
    pub fn forget(&self, target: RaftNodeId) {
        self.lock_peers().remove(&target);
    }

    /// What is known about `target`.
    pub fn peer(&self, target: RaftNodeId) -> Option<PeerContact> {
        self.lock_peers().get(&target).copied()
    }

    /// Every peer with a record, by raft id.
    pub fn peers(&self) -> Vec<(RaftNodeId, PeerContact)> {
        let mut peers: Vec<_> = self.lock_peers().iter().map(|(id, p)| (*id, *p)).collect();
        peers.sort_by_key(|(id, _)| *id);
        peers
    }

    /// Whether `target` answered last and within `within`.
    pub fn is_reachable(&self, target: RaftNodeId, within: Duration) -> bool {
        let now = self.now();
        self.peer(target)
            .is_some_and(|peer| peer.is_reachable(now, within))
    }

    /// How many of `targets` are reachable within `within` (the caller
    /// adds itself when counting voters).
    pub fn reachable_count(
        &self,
        targets: impl IntoIterator<Item = RaftNodeId>,
        within: Duration,
    ) -> usize {
        let now = self.now();
        let peers = self.lock_peers();
        targets
            .into_iter()
            .filter(|target| {
                peers
                    .get(target)
                    .is_some_and(|peer| peer.is_reachable(now, within))
            })
            .count()
    }

    /// Time since `target` last answered, if it ever did.
    pub fn last_contact_age(&self, target: RaftNodeId) -> Option<Duration> {
        let now = self.now();
        self.peer(target)?
            .last_success
            .map(|success| now.saturating_duration_since(success))
    }

    /// When a leader of our term last reached this node.
    pub fn last_leader_contact(&self) -> Option<Instant> {
        *self
            .last_leader_contact
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Time since a leader of our term last reached this node.
    pub fn last_leader_contact_age(&self) -> Option<Duration> {
        let now = self.now();
        self.last_leader_contact()
            .map(|at| now.saturating_duration_since(at))
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, BTreeMap<RaftNodeId, PeerContact>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, target: RaftNodeId, change: impl FnOnce(&mut PeerContact)) {
        let mut peers = self.lock_peers();
        if !peers.contains_key(&target) && peers.len() >= PEERS_MAX {
            let stalest = peers
                .iter()
                .min_by_key(|(_, peer)| peer.latest())
                .map(|(id, _)| *id);
            if let Some(stalest) = stalest {
                peers.remove(&stalest);
            }
        }
        change(peers.entry(target).or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> (Arc<ManualClock>, Reachability) {
        let clock = Arc::new(ManualClock::new());
        let reach = Reachability::with_clock(clock.clone());
        (clock, reach)
    }

    // Goal: a peer is gone only after GONE_AFTER_FAILURES failures in a
    // row whose latest is a failed connection, and only while that is
    // recent; a timeout is not gone; one success clears it. Method: a
    // manual clock and recorded outcomes.
    #[test]
    fn gone_needs_failed_connections_in_a_row() {
        let (clock, reach) = record();
        let window = Duration::from_millis(200);
        let gone = |reach: &Reachability| {
            reach
                .peer(7)
                .is_some_and(|p| p.is_gone(reach.now(), window))
        };
        reach.record_success(7);
        reach.record_unreachable(7);
        assert!(!gone(&reach), "one broken connection is not gone");
        reach.record_unreachable(7);
        assert!(gone(&reach));
        clock.advance(Duration::from_millis(201));
        assert!(!gone(&reach), "only while recent");
        reach.record_success(7);
        reach.record_failure(7);
        reach.record_failure(7);
        assert!(!gone(&reach), "timeouts are slow, not gone");
        reach.record_unreachable(7);
        assert!(gone(&reach));
        reach.record_success(7);
        assert!(!gone(&reach));
    }

    // Goal: a peer is reachable only if its latest outcome is a success and
    // that success is recent. Method: success, age past the window, fail,
    // succeed again, on a manual clock.
    #[test]
    fn reachable_means_latest_success_is_recent() {
        let (clock, reach) = record();
        let window = Duration::from_millis(500);
        assert!(!reach.is_reachable(1, window));
        reach.record_success(1);
        assert!(reach.is_reachable(1, window));
        clock.advance(Duration::from_millis(600));
        assert!(!reach.is_reachable(1, window), "too old");
        assert_eq!(reach.last_contact_age(1), Some(Duration::from_millis(600)));
        reach.record_success(1);
        clock.advance(Duration::from_millis(1));
        reach.record_failure(1);
        reach.record_failure(1);
        assert!(!reach.is_reachable(1, window), "latest is a failure");
        assert_eq!(reach.peer(1).expect("known").consecutive_failures, 2);
        clock.advance(Duration::from_millis(1));
        reach.record_success(1);
        assert!(reach.is_reachable(1, window));
        assert_eq!(reach.peer(1).expect("known").consecutive_failures, 0);
    }

    // Goal: reachable_count counts only the given targets that are
    // reachable. Method: three peers, one failing, one never contacted.
    #[test]
    fn counts_reachable_targets() {
        let (_clock, reach) = record();
        reach.record_success(1);
        reach.record_success(2);
        reach.record_failure(2);
        reach.record_success(9);
        let window = Duration::from_secs(1);
        assert_eq!(reach.reachable_count([1, 2, 3], window), 1);
        assert_eq!(reach.peers().len(), 3);
        reach.forget(9);
        assert_eq!(reach.peer(9), None);
    }

    // Goal: the leader-contact age follows the clock. Method: record,
    // advance, read.
    #[test]
    fn leader_contact_age() {
        let (clock, reach) = record();
        assert_eq!(reach.last_leader_contact_age(), None);
        reach.record_leader_contact();
        clock.advance(Duration::from_millis(250));
        assert_eq!(
            reach.last_leader_contact_age(),
            Some(Duration::from_millis(250))
        );
    }

    // Goal: the record is bounded: past PEERS_MAX the stalest peer goes.
    // Method: fill, then add one more, on an advancing clock.
    #[test]
    fn bounded_by_peers_max() {
        let (clock, reach) = record();
        for id in 0..PEERS_MAX as u64 {
            reach.record_success(id);
            clock.advance(Duration::from_millis(1));
        }
        reach.record_success(1_000);
        assert_eq!(reach.peers().len(), PEERS_MAX);
        assert_eq!(reach.peer(0), None, "the stalest peer is forgotten");
        assert!(reach.peer(1_000).is_some());
    }
}
