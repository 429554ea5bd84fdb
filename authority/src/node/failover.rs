//! A faster failover within openraft 0.9's rules.
//!
//! openraft 0.9 gives a leader a lease of its `election_timeout_max`: a
//! voter that heard from the leader within it refuses to vote, and a
//! follower campaigns only after the lease *and* its own randomized
//! election timeout have passed. The node hands openraft the minimum
//! election timeout as that maximum ([`super::Timing::raft_election_window_ms`]),
//! so the lease is the minimum election timeout, as etcd's check-quorum
//! lease is its election timeout; openraft's own timers then campaign
//! between 1.5 and 2 × the minimum after the leader went silent.
//!
//! Here one survivor does not wait for the random part: once no leader
//! has reached it for the lease plus half a heartbeat, the *designated*
//! voter (the lowest Raft id among the voters, leaving out the leader it
//! last knew) asks openraft to campaign (`trigger().elect()`). The other
//! voters' leases have ended by then too (the leader's heartbeats reach
//! them at about the same time), so they can grant the vote. Everyone
//! else keeps openraft's randomized timers, so two early candidates never
//! split the vote. Safety does not depend on any of this (Raft elections
//! are safe at any time, and `single-term-leader` keeps one leader per
//! term); only when the first campaign happens changes. A node that hears
//! from a leader never campaigns early, and it campaigns at most once per
//! leader contact it lost.
//!
//! The designated voter may be behind (it restarted, and the last entries
//! were committed without it): the others then refuse it their vote.
//! A voter that refused a candidate for a shorter log, and has itself not
//! heard from a leader for the lease (or, since it started, has heard
//! from none), campaigns at once too, instead of waiting for its own
//! timer; it does so at most once per such refusal. Without that, a
//! restarted old leader whose log is the longest could never win: the
//! others, whose shorter logs it refuses, retry faster than its own timer
//! and keep its every campaign a term behind (a crash-storm sweep found
//! three voters of five up and no leader for good).
//! openraft leaves a voter's term alone when it refuses a shorter log, so
//! its first campaign would be in the candidate's own term, where the
//! candidate already voted for itself: it campaigns again (at most
//! [`ELECT_STEPS_MAX`] times) until its term is above the candidate's.
//!
//! A split vote: openraft 0.9 draws its election timeout once per process
//! and checks it only on a tick of 1.5 heartbeats, so every timeout in
//! one tick's span fires on the same tick. Voters whose ticks line up
//! (they started together, or their phases differ by less than a vote's
//! round trip) then campaign in the same instant every round, each votes
//! for itself, and no one ever wins: the simulator found three voters
//! doing so for good after a lossy period. So a candidate that has not
//! won (nor heard of a leader) campaigns again on its own timer, after a
//! delay drawn afresh for every term from `[lease / 2, lease)`
//! ([`retry_delay`]), as etcd draws a new randomized timeout each round.
//! The draw is a hash of the cluster, the node and the term: it differs
//! between voters and between rounds, and a replay gives the same.

use super::AuthorityNode;
use openraft::ServerState;
use std::sync::Weak;
use std::time::Duration;
use tokio::time::Instant;

/// Most campaigns in a row to get above a refused candidate's term.
const ELECT_STEPS_MAX: u64 = 3;

/// Watches for a lost leader and, on the designated voter, campaigns as
/// soon as the lease allows (see the module docs). Ends with the node.
pub(super) async fn campaign_when_lease_ends(node: Weak<AuthorityNode>) {
    let Some((interval, wait)) = node.upgrade().map(|n| {
        let timing = &n.options.timing;
        (
            n.quorum_check_interval(),
            timing.vote_lease() + timing.heartbeat / 2,
        )
    }) else {
        return;
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut campaigned_after: Option<Instant> = None;
    let mut answered_refusal: Option<Instant> = None;
    let mut split = SplitVote::default();
    let Some(started) = node.upgrade().map(|n| n.reach.now()) else {
        return;
    };
    loop {
        ticker.tick().await;
        let Some(node) = node.upgrade() else {
            return;
        };
        if split.due(&node) {
            let term = node.raft_metrics().current_term;
            tracing::info!(
                cluster_id = %node.options.cluster_id,
                node_id = %node.options.node_id,
                term,
                "no leader came of this node's campaign: campaigning again"
            );
            if let Err(error) = node.raft.trigger().elect().await {
                tracing::warn!(cluster_id = %node.options.cluster_id, node_id = %node.options.node_id, %error, "could not start a campaign");
            }
            continue;
        }
        // Silent since the last leader contact, or since this process
        // started when it has had none (a restarted voter whose log may
        // be the longest: the others cannot win without its vote).
        let contact = node.reach.last_leader_contact();
        let since = contact.unwrap_or(started);
        let silent = node.reach.now().saturating_duration_since(since);
        // A candidate behind us asked for our vote after the leader went
        // silent, and the lease has ended here too.
        let refusal = node
            .reach
            .last_refused_shorter_log()
            .filter(|(at, _)| *at > since && answered_refusal != Some(*at));
        let out_of_lease = silent >= node.options.timing.vote_lease();
        // The designated voter's early campaign follows a lost leader
        // only; without one, openraft's own timers.
        let early = contact.is_some() && campaigned_after != contact && silent >= wait;
        if !(early || (out_of_lease && refusal.is_some())) {
            continue;
        }
        let metrics = node.raft_metrics();
        if metrics.state != ServerState::Follower {
            continue;
        }
        let voters = AuthorityNode::voters(&metrics);
        if !voters.contains_key(&node.raft_id) {
            continue;
        }
        let lost = metrics.current_leader;
        let designated = voters.keys().copied().filter(|id| Some(*id) != lost).min();
        let mut above_term = None;
        let why = if out_of_lease && let Some((at, candidate_term)) = refusal {
            answered_refusal = Some(at);
            above_term = Some(candidate_term);
            "no leader within the lease and a candidate behind us asked: campaigning now"
        } else if early && designated == Some(node.raft_id) {
            campaigned_after = contact;
            "no leader within the lease: campaigning now (the designated voter)"
        } else {
            continue;
        };
        tracing::info!(
            cluster_id = %node.options.cluster_id,
            node_id = %node.options.node_id,
            silent_ms = u64::try_from(silent.as_millis()).unwrap_or(u64::MAX),
            "{why}"
        );
        let wait_term = node.options.timing.heartbeat;
        for _ in 0..ELECT_STEPS_MAX {
            let before = node.raft_metrics().current_term;
            if let Err(error) = node.raft.trigger().elect().await {
                tracing::warn!(cluster_id = %node.options.cluster_id, node_id = %node.options.node_id, %error, "could not start a campaign");
                break;
            }
            let Some(candidate_term) = above_term else {
                break;
            };
            let term = wait_for_term_above(&node, before, wait_term).await;
            let state = node.raft_metrics().state;
            if term > candidate_term
                || !matches!(state, ServerState::Follower | ServerState::Candidate)
            {
                break;
            }
        }
    }
}

/// The split-vote retry of one node (see the module docs).
#[derive(Default)]
struct SplitVote {
    /// The term last seen, and since when.
    term: Option<(u64, Instant)>,
    /// The last term this node campaigned out of.
    retried: Option<u64>,
}

impl SplitVote {
    /// Whether this node, a candidate without a leader, has waited its
    /// retry delay in its current term; marks the term as retried.
    fn due(&mut self, node: &AuthorityNode) -> bool {
        let metrics = node.raft_metrics();
        let now = node.reach.now();
        let term = metrics.current_term;
        let since = match self.term {
            Some((seen, since)) if seen == term => since,
            _ => {
                self.term = Some((term, now));
                now
            }
        };
        if metrics.state != ServerState::Candidate
            || metrics.current_leader.is_some()
            || self.retried == Some(term)
        {
            return false;
        }
        let delay = retry_delay(
            node.options.timing.vote_lease(),
            node.options.cluster_id.as_str(),
            node.options.node_id.as_str(),
            term,
        );
        if now.saturating_duration_since(since) < delay {
            return false;
        }
        self.retried = Some(term);
        true
    }
}

/// How long a candidate waits in `term` before it campaigns again: in
/// `[lease / 2, lease)`, drawn from a hash of the cluster, the node and
/// the term.
fn retry_delay(lease: Duration, cluster: &str, node: &str, term: u64) -> Duration {
    let mut hasher = blake3::Hasher::new();
    hasher.update(cluster.as_bytes());
    hasher.update(&[0]);
    hasher.update(node.as_bytes());
    hasher.update(&term.to_le_bytes());
    let mut draw = [0u8; 8];
    draw.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    let half = lease / 2;
    let span = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
    lease - half + Duration::from_micros(u64::from_le_bytes(draw) % span)
}

/// Waits (at most `within`) until this node's term is above `before`;
/// returns its term then.
async fn wait_for_term_above(node: &AuthorityNode, before: u64, within: Duration) -> u64 {
    let mut changes = node.raft.metrics();
    let _ = tokio::time::timeout(within, async {
        while changes.borrow_and_update().current_term <= before {
            if changes.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    node.raft_metrics().current_term
}

#[cfg(test)]
mod tests {
    use super::retry_delay;
    use std::collections::BTreeSet;
    use std::time::Duration;

    // Goal: the split-vote retry delay stays in [lease / 2, lease) and
    // differs between voters and between terms (or the voters would stay
    // in step). Method: draw it for 3 nodes over 50 terms; check the
    // bounds, that the same inputs give the same delay, and that the
    // draws spread out.
    #[test]
    fn retry_delays_stay_in_range_and_differ() {
        let lease = Duration::from_millis(500);
        let mut seen = BTreeSet::new();
        for term in 1..=50 {
            let delays: Vec<_> = ["node-1", "node-2", "node-3"]
                .iter()
                .map(|node| retry_delay(lease, "cluster-a", node, term))
                .collect();
            for delay in &delays {
                assert!(*delay >= lease / 2 && *delay < lease, "{delay:?}");
                seen.insert(*delay);
            }
            assert_eq!(delays[0], retry_delay(lease, "cluster-a", "node-1", term));
            assert!(
                delays[0] != delays[1] || delays[1] != delays[2],
                "all three voters drew {:?} in term {term}",
                delays[0]
            );
        }
        assert!(
            seen.len() > 140,
            "only {} distinct delays of 150",
            seen.len()
        );
        let spread = seen.iter().max().copied().unwrap_or_default()
            - seen.iter().min().copied().unwrap_or_default();
        assert!(spread > lease / 4, "delays spread over only {spread:?}");
    }
}
