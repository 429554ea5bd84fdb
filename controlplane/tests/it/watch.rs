//! The watcher: partitions and node health announced in the audit trail,
//! once per change, against the real authority group and PostgreSQL.

use rap_controlplane::db;
use rap_controlplane::heartbeats::Heartbeats;
use rap_controlplane::overview::NODE_STALE_AFTER;
use rap_controlplane::watch::{self, Round, WATCHER_ACTOR};
use rap_proto::pb;
use rap_testkit::platform::{Platform, heartbeat};
use std::time::Duration;

/// (action, target, reason) of what a round announced.
fn said(round: &Round) -> Vec<(String, String, String)> {
    round
        .announced
        .iter()
        .map(|(action, _, target, reason)| (action.clone(), target.clone(), reason.clone()))
        .collect()
}

fn event(action: &str, target: &str, reason: &str) -> (String, String, String) {
    (action.into(), target.into(), reason.into())
}

// Goal: the watcher records the storage nodes' views by itself and
// announces each change once: a group back to healthy (partition.resolved)
// and one that lost a voter (partition.detected), an agent's first
// heartbeat and its health changing (node.health-changed), an agent that
// went silent (node.heartbeat-stale); nodes first seen and unchanged
// states write nothing, and two control planes running a round at once
// write one event per change; observations past the retention are
// deleted. Method: the real platform (three in-process
// voters, two agents enrolled as in production), heartbeats through the
// control plane's writer, rounds run directly (the serving loop runs the
// same function every 15 s), a voter stopped; the events read back
// through the audit listing's actor filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_announces_each_change_once() {
    let p = Platform::start().await;
    let heartbeats = Heartbeats::start(p.ctx.pool.clone());
    let a = p.enroll(&["can_run_vnc_worker"]).await;
    let b = p.enroll(&["can_run_vnc_worker"]).await;

    // Every voter sees the others before the first round (a test run
    // on two busy cores may take a moment).
    for _ in 0..100 {
        let status = rap_controlplane::authority_ops::record_status(&p.ctx, "c1")
            .await
            .unwrap();
        let healthy = pb::PartitionView::Healthy as i32;
        if status.observations.iter().all(|o| o.view == healthy) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An observation older than the retention.
    sqlx::query(
        "INSERT INTO cluster_partitions (cluster_id, node_id, view, observed_at)
         VALUES ('c1', 's1', 'minority', now() - interval '8 days')",
    )
    .execute(&p.ctx.pool)
    .await
    .unwrap();

    // Nothing wrong and nothing announced yet: the views are recorded,
    // no event; the old observation is gone.
    let first = watch::round(&p.ctx).await.unwrap();
    assert_eq!(first.probed, 1);
    assert!(first.announced.is_empty(), "{first:?}");
    assert_eq!(first.pruned, 1);
    assert_eq!(
        p.count(
            "SELECT count(*) FROM cluster_partitions
              WHERE observed_at < now() - interval '7 days'"
        )
        .await,
        0
    );
    assert!(
        p.count("SELECT count(*) FROM cluster_partitions WHERE cluster_id = 'c1'")
            .await
            >= 3
    );

    // A group announced as in minority (before a restart, say) that is
    // healthy now: resolved.
    let mut conn = p.ctx.pool.acquire().await.unwrap();
    db::announced::set_cluster_state(&mut conn, "c1", "minority")
        .await
        .unwrap();
    drop(conn);
    let round = watch::round(&p.ctx).await.unwrap();
    assert_eq!(
        said(&round),
        [event("partition.resolved", "c1", "minority -> healthy")]
    );

    // A first heartbeat, and one that is already stale.
    let stale_ms = i64::try_from(NODE_STALE_AFTER.as_millis()).unwrap() + 30_000;
    heartbeat(&heartbeats, "c1", &a, pb::NodeHealth::Healthy, 0).await;
    heartbeat(&heartbeats, "c1", &b, pb::NodeHealth::Healthy, stale_ms).await;
    let round = watch::round(&p.ctx).await.unwrap();
    let mut first_heartbeats = vec![
        event("node.health-changed", &a, "never_seen -> healthy"),
        event("node.heartbeat-stale", &b, "never_seen -> stale"),
    ];
    first_heartbeats.sort();
    let mut announced = said(&round);
    announced.sort();
    assert_eq!(announced, first_heartbeats);
    let round = watch::round(&p.ctx).await.unwrap();
    assert!(round.announced.is_empty(), "{round:?}");

    // Two control planes at once: one event.
    heartbeat(&heartbeats, "c1", &a, pb::NodeHealth::Unhealthy, 0).await;
    let (one, two) = tokio::join!(watch::round(&p.ctx), watch::round(&p.ctx));
    let (one, two) = (one.unwrap(), two.unwrap());
    let mut both = said(&one);
    both.extend(said(&two));
    assert_eq!(
        both,
        [event("node.health-changed", &a, "healthy -> unhealthy")]
    );

    // A voter stops: the survivors still have a quorum, degraded.
    p.stop_voters(1).await;
    let mut detected = Vec::new();
    for _ in 0..30 {
        let round = watch::round(&p.ctx).await.unwrap();
        detected = said(&round)
            .into_iter()
            .filter(|(action, _, _)| action.starts_with("partition."))
            .collect();
        if !detected.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        detected,
        [event("partition.detected", "c1", "healthy -> degraded")]
    );

    // The trail, as an operator lists it.
    let listed = rap_controlplane::audit::list(
        &p.ctx.pool,
        &p.owner,
        &pb::ListAuditEventsRequest {
            actor: WATCHER_ACTOR.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut trail: Vec<(String, String, String)> = listed
        .events
        .iter()
        .map(|e| (e.action.clone(), e.target.clone(), e.reason.clone()))
        .collect();
    // One round's node events come in node id order.
    trail[1..3].sort();
    let mut expected = vec![event("partition.resolved", "c1", "minority -> healthy")];
    expected.extend(first_heartbeats);
    expected.push(event("node.health-changed", &a, "healthy -> unhealthy"));
    expected.push(event("partition.detected", "c1", "healthy -> degraded"));
    assert_eq!(trail, expected);
    assert!(
        listed
            .events
            .iter()
            .all(|e| e.cluster_id == "c1" && e.result == "ok")
    );
}
