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
//! heard from a leader for the lease, campaigns at once too, instead of
//! waiting for its own timer; it does so at most once per such refusal.
//! openraft leaves a voter's term alone when it refuses a shorter log, so
//! its first campaign would be in the candidate's own term, where the
//! candidate already voted for itself: it campaigns again (at most
//! [`ELECT_STEPS_MAX`] times) until its term is above the candidate's.

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
    loop {
        ticker.tick().await;
        let Some(node) = node.upgrade() else {
            return;
        };
        let Some(contact) = node.reach.last_leader_contact() else {
            // Never had a leader: openraft's own timers.
            continue;
        };
        let silent = node.reach.now().saturating_duration_since(contact);
        // A candidate behind us asked for our vote after the leader went
        // silent, and the lease has ended here too.
        let refusal = node
            .reach
            .last_refused_shorter_log()
            .filter(|(at, _)| *at > contact && answered_refusal != Some(*at));
        let out_of_lease = silent >= node.options.timing.vote_lease();
        let early = campaigned_after != Some(contact) && silent >= wait;
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
            campaigned_after = Some(contact);
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
