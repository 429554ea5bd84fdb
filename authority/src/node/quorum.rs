//! Which voters this node can reach, and what it answers when a quorum
//! is not among them: the basis of the fast `NO_QUORUM` refusal and of
//! the partition view. [`probe_voters`] keeps it current; [`track_term`]
//! keeps the transport's authority term equal to the applied state's.

use super::*;

/// A leader's pending write looks at its quorum every heartbeat / this.
const QUORUM_CHECK_DIVISOR: u32 = 4;
/// ... but not more often than this.
const QUORUM_CHECK_MIN: Duration = Duration::from_millis(5);

impl AuthorityNode {
    pub(super) fn raft_metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    pub(super) fn voters(metrics: &RaftMetrics) -> BTreeMap<RaftNodeId, Member> {
        let membership = metrics.membership_config.membership();
        let ids: BTreeSet<RaftNodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .filter(|(id, _)| ids.contains(id))
            .map(|(id, member)| (*id, member.clone()))
            .collect()
    }

    /// Voters reachable from here, this node included: those our own
    /// calls reached recently, and the leader while its AppendEntries keep
    /// arriving (it may reach us before our next probe reaches it).
    pub(super) fn reachable_voters(&self, voters: &BTreeMap<RaftNodeId, Member>) -> usize {
        let leader = self.raft_metrics().current_leader;
        voters
            .keys()
            .filter(|id| self.voter_reachable(**id, leader))
            .count()
    }

    /// Whether voter `id` counts as reachable (see `reachable_voters`).
    pub(super) fn voter_reachable(&self, id: RaftNodeId, leader: Option<RaftNodeId>) -> bool {
        id == self.raft_id
            || self
                .reach
                .is_reachable(id, self.options.timing.reach_window())
            || (Some(id) == leader && self.leader_heard_since_failure(id))
    }

    /// The leader `id` reached us within the lease, and our last call to it
    /// did not fail. Hearing a leader is not reaching it (a node that can
    /// receive but not send hears it all the time), so a failed call counts
    /// until a call succeeds again (see [`AuthorityNode::probe`]).
    pub(super) fn leader_heard_since_failure(&self, id: RaftNodeId) -> bool {
        let heard = self
            .reach
            .last_leader_contact_age()
            .is_some_and(|age| age <= self.options.timing.lease);
        heard
            && self
                .reach
                .peer(id)
                .is_none_or(|contact| contact.consecutive_failures == 0)
    }

    /// Calls `member`'s `Status` once (bounded by two heartbeats) and
    /// records the outcome; true when it answered.
    pub(super) async fn probe(&self, id: RaftNodeId, member: &Member) -> bool {
        let timeout = self.options.timing.heartbeat * 2;
        let reached = match self.authority_client(member) {
            Ok(mut client) => {
                let request = rap_proto::pb::AuthorityStatusRequest {
                    cluster_id: self.options.cluster_id.to_string(),
                };
                matches!(
                    tokio::time::timeout(timeout, client.status(request)).await,
                    Ok(Ok(_))
                )
            }
            Err(_) => false,
        };
        if reached {
            self.reach.record_success(id);
        } else {
            self.reach.record_failure(id);
        }
        reached
    }

    /// How often a leader's pending write looks at its quorum
    /// ([`Self::quorum_lost`]): a quarter heartbeat.
    pub(super) fn quorum_check_interval(&self) -> Duration {
        (self.options.timing.heartbeat / QUORUM_CHECK_DIVISOR).max(QUORUM_CHECK_MIN)
    }

    /// Whether this leader has certainly lost its quorum: no quorum
    /// acknowledged it within `lease` and the transport does
    /// not reach a quorum of voters either, or the transport found
    /// too many voters gone (failed connections in a row within two
    /// heartbeats: `PeerContact::is_gone`) for the rest to make a quorum.
    /// A write refused on this may still commit later; its caller never
    /// sees it.
    pub(super) fn quorum_lost(
        &self,
        voters: &BTreeMap<RaftNodeId, Member>,
        lease: Duration,
    ) -> bool {
        let metrics = self.raft_metrics();
        // A lapsed lease alone is not proof: under heavy load a quorum
        // that answers every call may acknowledge late. It counts when the
        // transport does not reach a quorum either.
        if !partition::leader_lease_valid(metrics.millis_since_quorum_ack, lease)
            && self.reachable_voters(voters) < partition::quorum(voters.len())
        {
            tracing::debug!(cluster_id = %self.options.cluster_id, node_id = %self.options.node_id, since_quorum_ack_ms = ?metrics.millis_since_quorum_ack, "quorum lost: the lease ended");
            return true;
        }
        let now = self.reach.now();
        let within = self.options.timing.heartbeat * 2;
        let standing = voters
            .keys()
            .filter(|id| {
                **id == self.raft_id
                    || !self
                        .reach
                        .peer(**id)
                        .is_some_and(|peer| peer.is_gone(now, within))
            })
            .count();
        let lost = standing < partition::quorum(voters.len());
        if lost {
            tracing::debug!(cluster_id = %self.options.cluster_id, node_id = %self.options.node_id, standing, voters = voters.len(), "quorum lost: the transport cannot connect to enough voters");
        }
        lost
    }

    pub(super) fn no_quorum(&self, voters: &BTreeMap<RaftNodeId, Member>) -> Error {
        Error::NoQuorum {
            reachable_voters: u32::try_from(self.reachable_voters(voters)).unwrap_or(u32::MAX),
            total_voters: u32::try_from(voters.len()).unwrap_or(u32::MAX),
        }
    }

    /// The leader as a member, when this node knows one it heard from
    /// within the lease.
    pub fn fresh_leader(&self) -> Option<Member> {
        let metrics = self.raft_metrics();
        let leader = metrics.current_leader?;
        if leader == self.raft_id {
            return None;
        }
        // Heard within the lease, and our own probe or a failed forward
        // did not see it unreachable after it last reached us.
        if !self.leader_heard_since_failure(leader) {
            return None;
        }
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .cloned()
    }
}

/// Keeps the transport's authority term (with its proof, and the trust
/// root that verifies proofs) equal to the applied state's.
pub(super) async fn track_term(node: std::sync::Weak<AuthorityNode>) {
    let Some(mut changes) = node.upgrade().map(|n| n.raft.metrics()) else {
        return;
    };
    while changes.changed().await.is_ok() {
        let Some(node) = node.upgrade() else {
            return;
        };
        node.sync_guard();
    }
}

/// Probes every other voter's `Status` now and then, so every node (not
/// only the leader) knows which voters it can reach.
pub(super) async fn probe_voters(node: std::sync::Weak<AuthorityNode>) {
    let Some(interval) = node.upgrade().map(|n| n.options.timing.probe_interval()) else {
        return;
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(node) = node.upgrade() else {
            return;
        };
        let voters = AuthorityNode::voters(&node.raft_metrics());
        let probes = voters
            .iter()
            .filter(|(id, _)| **id != node.raft_id)
            .map(|(id, member)| node.probe(*id, member));
        futures::future::join_all(probes).await;
    }
}
