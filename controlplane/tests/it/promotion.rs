//! Promotion and rejoin through the control plane: platform-owner only, audited, refused while the group has
//! a quorum; afterwards PostgreSQL is at the new term and fenced mutations
//! carry its fences.

use rap_controlplane::{authority_ops, snapshots, workloads};
use rap_proto::pb;
use rap_testkit::platform::{Platform, wait_for_minority};
use std::time::{Duration, Instant};

/// Longest wait for the group to change its mind (hang guard).
const HANG_GUARD: Duration = Duration::from_secs(30);
/// Pause between polls.
const POLL: Duration = Duration::from_millis(100);

fn promote_request(
    p: &Platform,
    survivors: &[&str],
    expected_term: u64,
) -> pb::PromotePartitionRequest {
    pb::PromotePartitionRequest {
        cluster_id: p.cluster.clone(),
        survivors: survivors.iter().map(|s| s.to_string()).collect(),
        expected_term,
    }
}

fn rejoin_request(p: &Platform, node: &str) -> pb::RejoinNodeRequest {
    pb::RejoinNodeRequest {
        cluster_id: p.cluster.clone(),
        node_id: node.to_string(),
    }
}

fn desired(p: &Platform, node: &str, state: &str) -> pb::SetServiceDesiredStateRequest {
    pb::SetServiceDesiredStateRequest {
        cluster_id: p.cluster.clone(),
        node_id: node.to_string(),
        service: "rdp-worker".into(),
        desired_state: state.to_string(),
    }
}

/// (term, reason, survivors, last_seq) of every authority row, oldest first,
/// with whether it has ended.
async fn terms(p: &Platform) -> Vec<(i64, String, Vec<String>, bool)> {
    sqlx::query_as(
        "SELECT authority_term, reason, survivors, ended_at IS NOT NULL
           FROM cluster_authority_terms WHERE cluster_id = $1 ORDER BY authority_term",
    )
    .bind(&p.cluster)
    .fetch_all(&p.ctx.pool)
    .await
    .unwrap()
}

/// (node id, role) of every storage node.
async fn roles(p: &Platform) -> Vec<(String, String)> {
    sqlx::query_as("SELECT node_id, role FROM storage_nodes WHERE cluster_id = $1 ORDER BY node_id")
        .bind(&p.cluster)
        .fetch_all(&p.ctx.pool)
        .await
        .unwrap()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Asserts that the newest `action` event has `result` and mentions
/// `needle`.
async fn last_event(p: &Platform, action: &str, result: &str, needle: &str) {
    let events = p.audit_events(action).await;
    let (got, reason) = events.last().unwrap_or_else(|| panic!("no {action} event"));
    assert_eq!(got, result, "{action}: {reason}");
    assert!(
        reason.contains(needle),
        "{action}: {reason:?} lacks {needle:?}"
    );
}

// Goal: promotion is refused (and changes nothing, and is audited) while
// the group has a quorum, for a non-owner, for a stale expected term and
// for an unknown or unreachable survivor; after the majority is lost it
// moves PostgreSQL to term 2 with the survivor, retires the other voters,
// and fenced mutations then carry term-2 fences. A re-run is refused;
// rejoin refuses a voter, a non-owner and an unreachable retired node.
// Method: a 3-voter in-process group; promote while healthy; stop s2, s3;
// wait until s1 sees a minority; promote s1 at expected term 1; check the
// rows, the audit log, and a desired-state mutation's fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_moves_the_cluster_to_the_next_term() {
    let p = Platform::start().await;
    let node = p.enroll(&["can_run_rdp_worker"]).await;
    p.assign_role(&node, "rdp-worker").await;
    workloads::set_desired_state(&p.ctx, &p.owner, &desired(&p, &node, "enabled"))
        .await
        .unwrap();
    let healthy = terms(&p).await;
    assert_eq!(
        healthy,
        vec![(
            1,
            "bootstrap".into(),
            vec!["s1".into(), "s2".into(), "s3".into()],
            false
        )]
    );
    let all_voters = pairs(&[("s1", "voter"), ("s2", "voter"), ("s3", "voter")]);
    assert_eq!(roles(&p).await, all_voters);

    // While the group has a quorum: refused by the survivor check.
    let e = authority_ops::promote(&p.ctx, &p.owner, &promote_request(&p, &["s1"], 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "AUTHORITY_REFUSED", "{e}");
    assert!(e.to_string().contains("QUORUM_PRESENT"), "{e}");
    last_event(&p, "authority.promote", "refused", "still sees a quorum").await;
    assert_eq!(terms(&p).await, healthy);
    assert_eq!(roles(&p).await, all_voters);

    // A platform admin may not promote (nor rejoin).
    let admin = p.principal("platform-admin", None).await;
    let e = authority_ops::promote(&p.ctx, &admin, &promote_request(&p, &["s1"], 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "PERMISSION_DENIED", "{e}");
    last_event(&p, "authority.promote", "refused", "platform-owner").await;
    let e = authority_ops::rejoin(&p.ctx, &admin, &rejoin_request(&p, "s2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "PERMISSION_DENIED", "{e}");
    last_event(&p, "authority.rejoin", "refused", "platform-owner").await;

    // Bad requests.
    let cases: &[(&[&str], u64, &str, &str)] = &[
        (&[], 1, "INVALID_ARGUMENT", "name the survivors"),
        (&["s1"], 0, "INVALID_ARGUMENT", "--expected-term"),
        (&["s1", "s1"], 1, "INVALID_ARGUMENT", "more than once"),
        (&["s9"], 1, "FAILED_PRECONDITION", "not a storage node"),
        (&["s1"], 2, "FAILED_PRECONDITION", "not the expected 2"),
    ];
    for (survivors, expected, code, needle) in cases {
        let e =
            authority_ops::promote(&p.ctx, &p.owner, &promote_request(&p, survivors, *expected))
                .await
                .unwrap_err();
        assert_eq!(e.code(), *code, "{survivors:?}/{expected}: {e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
    assert_eq!(terms(&p).await, healthy);

    // Shards published at term 1 (the survivor holds them all).
    let published = snapshots::publish_cluster(&p.ctx, &p.cluster, false)
        .await
        .unwrap()
        .published;
    assert!(!published.is_empty());

    // The majority is lost.
    p.stop_voters(2).await;
    wait_for_minority(&p, "s1").await;
    let e = workloads::set_desired_state(&p.ctx, &p.owner, &desired(&p, &node, "disabled"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "NO_QUORUM", "{e}");

    // A stopped voter named as a survivor: unreachable, nothing changed.
    let e = authority_ops::promote(&p.ctx, &p.owner, &promote_request(&p, &["s1", "s2"], 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "AUTHORITY_UNREACHABLE", "{e}");
    assert_eq!(terms(&p).await, healthy);
    assert_eq!(roles(&p).await, all_voters);

    // The promotion.
    let status = authority_ops::promote(&p.ctx, &p.owner, &promote_request(&p, &["s1"], 1))
        .await
        .unwrap();
    assert_eq!(status.authority_term, 2);
    assert_eq!(status.leader_id, "s1");
    assert_eq!(status.observations.len(), 1);
    assert_eq!(
        terms(&p).await,
        vec![
            (
                1,
                "bootstrap".into(),
                vec!["s1".into(), "s2".into(), "s3".into()],
                true
            ),
            (2, "promotion".into(), vec!["s1".into()], false),
        ]
    );
    assert_eq!(
        roles(&p).await,
        pairs(&[("s1", "voter"), ("s2", "retired"), ("s3", "retired")])
    );
    last_event(&p, "authority.promote", "ok", "").await;
    let details: serde_json::Value = sqlx::query_scalar(
        "SELECT details FROM cluster_audit_events
          WHERE action = 'authority.promote' AND result = 'ok'",
    )
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!(details["old_term"], 1);
    assert_eq!(details["new_term"], 2);
    assert_eq!(details["survivors"], serde_json::json!(["s1"]));
    assert_eq!(details["retired"], serde_json::json!(["s2", "s3"]));

    // Every published scope is to be compared with the new group again.
    let dirty: Vec<String> =
        sqlx::query_scalar("SELECT scope FROM snapshot_dirty WHERE cluster_id = $1 ORDER BY scope")
            .bind(&p.cluster)
            .fetch_all(&p.ctx.pool)
            .await
            .unwrap();
    for scope in &published {
        assert!(
            dirty.contains(&scope.scope),
            "{} not dirty: {dirty:?}",
            scope.scope
        );
    }

    // Fenced mutations work again, with term-2 fences.
    let started = Instant::now();
    loop {
        match workloads::set_desired_state(&p.ctx, &p.owner, &desired(&p, &node, "disabled")).await
        {
            Ok(set) => {
                assert_eq!(set.desired_state, "disabled");
                break;
            }
            Err(e) if started.elapsed() < HANG_GUARD && e.code() == "NO_QUORUM" => {
                tokio::time::sleep(POLL).await;
            }
            Err(e) => panic!("no fenced mutation at term 2: {e}"),
        }
    }
    let fence_terms: Vec<Option<i64>> = sqlx::query_scalar(
        "SELECT fence_term FROM cluster_audit_events
          WHERE action = 'service.desired-state' AND result = 'ok' ORDER BY event_id",
    )
    .fetch_all(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!(fence_terms, vec![Some(1), Some(2)]);
    let current: (i64, i64) = sqlx::query_as(
        "SELECT authority_term, last_seq FROM cluster_authority_terms
          WHERE cluster_id = $1 AND ended_at IS NULL",
    )
    .bind(&p.cluster)
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!(current.0, 2);
    assert!(current.1 >= 1, "the term-2 fence was recorded: {current:?}");

    // The publisher compares every scope with the new group: the survivor
    // holds what PostgreSQL recorded, so only what changed since (the
    // node's desired state) gets a new version, above the record; nothing
    // stays dirty.
    let again = snapshots::publish_cluster(&p.ctx, &p.cluster, false)
        .await
        .unwrap()
        .published;
    for scope in &again {
        let before = published.iter().find(|s| s.scope == scope.scope);
        assert!(
            before.is_none_or(|b| scope.version > b.version),
            "{scope:?} after {before:?}"
        );
        assert_eq!(scope.authority_term, 2, "{scope:?}");
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM snapshot_dirty WHERE cluster_id = $1")
        .bind(&p.cluster)
        .fetch_one(&p.ctx.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);

    // The old expected term is stale; the new one finds a healthy group.
    let after = terms(&p).await;
    let e = authority_ops::promote(&p.ctx, &p.owner, &promote_request(&p, &["s1"], 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "FAILED_PRECONDITION", "{e}");
    assert!(e.to_string().contains("current authority term"), "{e}");
    last_event(&p, "authority.promote", "refused", "not the expected 1").await;
    let e = authority_ops::promote(&p.ctx, &p.owner, &promote_request(&p, &["s1"], 2))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("QUORUM_PRESENT"), "{e}");
    assert_eq!(terms(&p).await, after);

    // Rejoin: only a retired node, and only when it answers.
    let e = authority_ops::rejoin(&p.ctx, &p.owner, &rejoin_request(&p, "s1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "FAILED_PRECONDITION", "{e}");
    assert!(e.to_string().contains("not retired"), "{e}");
    let e = authority_ops::rejoin(&p.ctx, &p.owner, &rejoin_request(&p, "s2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "AUTHORITY_UNREACHABLE", "{e}");
    last_event(&p, "authority.rejoin", "refused", "s2").await;
    assert_eq!(
        roles(&p).await,
        pairs(&[("s1", "voter"), ("s2", "retired"), ("s3", "retired")])
    );
}
