//! The watcher: every [`WATCH_INTERVAL`] the control plane asks each
//! bootstrapped cluster's storage nodes how they see their group and
//! records the answers (`cluster_partitions`, as `rapctl authority
//! status` does), then announces in the audit trail what changed since
//! the last announcement:
//!
//! * `partition.detected` when a group's state (from its voters' recent
//!   views, [`crate::overview::authority_state`]) leaves `healthy` or
//!   moves between `degraded`, `minority` and `fenced`;
//!   `partition.resolved` when it is `healthy` again. A group with no
//!   recent view is not announced either way.
//! * `node.heartbeat-stale` when an agent's last heartbeat becomes older
//!   than [`NODE_STALE_AFTER`], `node.health-changed` for any other
//!   change of its state (`healthy`, `degraded`, `unhealthy`, `unknown`,
//!   `never_seen`). A node first seen is recorded without an event.
//!
//! Each event's reason says `from -> to`. A round runs in one transaction
//! under an advisory lock ([`db::announced::lock_round`]), with the
//! announced states updated in it, so several control planes probe once
//! per round between them and announce each change once. At most [`WATCH_EVENTS_PER_ROUND_MAX`]
//! node events are written per round; the rest wait for the next one.
//! Observations older than [`PARTITION_RETENTION`] are deleted as it goes.

use crate::audit::{self, Action};
use crate::context::Context;
use crate::db;
use crate::error::Result;
use crate::overview::{AUTHORITY_UNKNOWN, NODE_STALE_AFTER, VIEW_FRESH, authority_state};
use std::collections::BTreeMap;
use std::time::Duration;

/// How often the watcher runs a round.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(15);
/// Most node events one round writes.
pub const WATCH_EVENTS_PER_ROUND_MAX: usize = 1000;
/// How long partition observations are kept.
pub const PARTITION_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most observations one round deletes.
pub const PARTITION_PRUNE_CHUNK: i64 = 10_000;
/// The actor of the watcher's events.
pub const WATCHER_ACTOR: &str = "control-plane:watcher";
/// A group left `healthy`, or moved between bad states.
pub const ACTION_PARTITION_DETECTED: &str = "partition.detected";
/// A group is `healthy` again.
pub const ACTION_PARTITION_RESOLVED: &str = "partition.resolved";
/// An agent's health state changed (other than to `stale`).
pub const ACTION_NODE_HEALTH: &str = "node.health-changed";
/// An agent's last heartbeat became older than the stale window.
pub const ACTION_HEARTBEAT_STALE: &str = "node.heartbeat-stale";

/// The state a group is taken to be in before anything was announced.
const CLUSTER_STATE_FIRST: &str = "healthy";

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Clusters whose storage nodes were asked.
    pub probed: usize,
    /// Another control plane held the round's lock: nothing announced.
    pub skipped: bool,
    /// (action, cluster, target, reason) of each event written.
    pub announced: Vec<(String, String, String, String)>,
    /// Node changes left for the next round (over the per-round limit).
    pub deferred: usize,
    /// Observations deleted.
    pub pruned: u64,
}

/// One round: probe, record, announce, prune. Only one control plane
/// runs a round at a time; the others skip it whole (no probes either).
pub async fn round(ctx: &Context) -> Result<Round> {
    let mut done = Round::default();
    let mut tx = ctx.pool.begin().await?;
    if !db::announced::lock_round(&mut tx).await? {
        done.skipped = true;
        return Ok(done);
    }
    let voters: BTreeMap<String, i64> = db::storage_nodes::voter_counts(&mut tx)
        .await?
        .into_iter()
        .collect();
    for cluster_id in voters.keys() {
        match crate::authority_ops::record_status(ctx, cluster_id).await {
            Ok(_) => done.probed += 1,
            Err(e) => {
                tracing::warn!(cluster_id = %cluster_id, code = e.code(), error = %e, "watcher cannot ask the storage nodes");
            }
        }
    }

    let mut views: BTreeMap<String, Vec<db::partitions::VoterView>> = BTreeMap::new();
    for view in db::partitions::voter_views(&mut tx, VIEW_FRESH).await? {
        views.entry(view.cluster_id.clone()).or_default().push(view);
    }
    let announced = db::announced::cluster_states(&mut tx).await?;
    for (cluster_id, count) in &voters {
        let seen: Vec<&db::partitions::VoterView> =
            views.get(cluster_id).into_iter().flatten().collect();
        let state = authority_state(usize::try_from(*count).unwrap_or(0), &seen);
        let before = announced
            .get(cluster_id)
            .map_or(CLUSTER_STATE_FIRST, String::as_str);
        if state == AUTHORITY_UNKNOWN || state == before {
            continue;
        }
        let action = if state == "healthy" {
            ACTION_PARTITION_RESOLVED
        } else {
            ACTION_PARTITION_DETECTED
        };
        let reason = format!("{before} -> {state}");
        audit::record_change(
            &mut tx,
            &Action::new(WATCHER_ACTOR, action, Some(cluster_id), cluster_id.as_str()),
            &reason,
            serde_json::json!({"from": before, "to": state, "voters_seen": seen.len()}),
        )
        .await?;
        db::announced::set_cluster_state(&mut tx, cluster_id, state).await?;
        tracing::info!(cluster_id = %cluster_id, action, from = before, to = state, "authority group state changed");
        done.announced.push((
            action.to_string(),
            cluster_id.clone(),
            cluster_id.clone(),
            reason,
        ));
    }

    let announced = db::announced::node_states(&mut tx).await?;
    let mut record: Vec<db::nodes::AgentState> = Vec::new();
    let mut events = 0usize;
    for node in db::nodes::agent_states(&mut tx, NODE_STALE_AFTER).await? {
        let key = (node.cluster_id.clone(), node.node_id.clone());
        let Some(before) = announced.get(&key) else {
            record.push(node);
            continue;
        };
        if *before == node.state {
            continue;
        }
        if events == WATCH_EVENTS_PER_ROUND_MAX {
            done.deferred += 1;
            continue;
        }
        events += 1;
        let action = if node.state == "stale" {
            ACTION_HEARTBEAT_STALE
        } else {
            ACTION_NODE_HEALTH
        };
        let reason = format!("{before} -> {}", node.state);
        audit::record_change(
            &mut tx,
            &Action::new(
                WATCHER_ACTOR,
                action,
                Some(&node.cluster_id),
                node.node_id.as_str(),
            ),
            &reason,
            serde_json::json!({"from": before, "to": node.state}),
        )
        .await?;
        tracing::info!(cluster_id = %node.cluster_id, node_id = %node.node_id, action, %reason, "node health changed");
        done.announced.push((
            action.to_string(),
            node.cluster_id.clone(),
            node.node_id.clone(),
            reason,
        ));
        record.push(node);
    }
    if !record.is_empty() {
        let column =
            |f: fn(&db::nodes::AgentState) -> &str| record.iter().map(f).collect::<Vec<_>>();
        db::announced::set_node_states(
            &mut tx,
            &column(|n| &n.cluster_id),
            &column(|n| &n.node_id),
            &column(|n| &n.state),
        )
        .await?;
    }
    done.pruned =
        db::partitions::prune(&mut tx, PARTITION_RETENTION, PARTITION_PRUNE_CHUNK).await?;
    tx.commit().await?;
    Ok(done)
}

/// Runs a round every [`WATCH_INTERVAL`] until `stop` turns true.
pub async fn run_watcher(ctx: Context, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(WATCH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = interval.tick() => {}
        }
        match round(&ctx).await {
            Ok(done) if done.deferred > 0 => {
                tracing::warn!(
                    deferred = done.deferred,
                    "watcher: more node changes than one round announces; the rest follow"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(code = e.code(), error = %e, "watcher round failed; will retry")
            }
        }
    }
}
