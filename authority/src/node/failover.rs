//! A faster failover within openraft 0.9's rules.
//!
//! openraft 0.9 gives a leader a lease of `election_timeout_max`: a voter
//! that heard from the leader within it refuses to vote, and a follower
//! campaigns only after the lease *and* its own randomized election
//! timeout have passed. After `kill -9` of the leader the group therefore
//! waits about 1.5 to 2 × `election_timeout_max` before it can write
//! again.
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

use super::AuthorityNode;
use openraft::ServerState;
use std::sync::Weak;
use tokio::time::Instant;

/// Watches for a lost leader and, on the designated voter, campaigns as
/// soon as the lease allows (see the module docs). Ends with the node.
pub(super) async fn campaign_when_lease_ends(node: Weak<AuthorityNode>) {
    let Some((interval, wait)) = node.upgrade().map(|n| {
        let timing = &n.options.timing;
        (
            n.quorum_check_interval(),
            timing.election_timeout_max + timing.heartbeat / 2,
        )
    }) else {
        return;
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut campaigned_after: Option<Instant> = None;
    loop {
        ticker.tick().await;
        let Some(node) = node.upgrade() else {
            return;
        };
        let Some(contact) = node.reach.last_leader_contact() else {
            // Never had a leader: openraft's own timers.
            continue;
        };
        if campaigned_after == Some(contact)
            || node.reach.now().saturating_duration_since(contact) < wait
        {
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
        if designated != Some(node.raft_id) {
            continue;
        }
        campaigned_after = Some(contact);
        tracing::info!(
            cluster_id = %node.options.cluster_id,
            node_id = %node.options.node_id,
            silent_ms = u64::try_from(node.reach.now().saturating_duration_since(contact).as_millis()).unwrap_or(u64::MAX),
            "no leader within the lease: campaigning now (the designated voter)"
        );
        if let Err(error) = node.raft.trigger().elect().await {
            tracing::warn!(cluster_id = %node.options.cluster_id, node_id = %node.options.node_id, %error, "could not start a campaign");
        }
    }
}
