//! A promotion left unfinished is finished by running it again, driven
//! with `rapctl authority` against the real server.

use crate::Rapctl;
use rap_controlplane::{db, workloads};
use rap_proto::pb;
use rap_testkit::platform::{Platform, wait_for_minority};

fn desired(p: &Platform, node: &str, state: &str) -> pb::SetServiceDesiredStateRequest {
    pb::SetServiceDesiredStateRequest {
        cluster_id: p.cluster.clone(),
        node_id: node.to_string(),
        service: "rdp-worker".into(),
        desired_state: state.to_string(),
    }
}

// Goal: PostgreSQL moves first and fails closed: once it records term 2,
// the term-1 group grants nothing that PostgreSQL accepts; if the order
// never reached the survivors, running the same promotion again with the
// new expected term finishes it without writing a third term. Also: the
// `rapctl authority` commands over the real server.
// Method: write the rows a promotion commits before its order (end term 1,
// term 2 with survivor s1, s2/s3 retired) while the group is healthy: a
// fenced mutation is refused. Stop s2, s3; `rapctl authority status` shows
// term 2 and s1 in a minority; `rapctl authority promote --expected-term 2`
// re-sends the order; the group is at term 2 and fences work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_promotion_is_finished_by_running_it_again() {
    let p = Platform::start().await;
    let node = p.enroll(&["can_run_rdp_worker"]).await;
    // The service below needs its role.
    p.assign_role(&node, "rdp-worker").await;
    let server = p.serve().await;

    // What `promote` commits before it sends the order.
    let mut tx = p.ctx.pool.begin().await.unwrap();
    let survivors = vec!["s1".to_string()];
    db::authority_terms::advance(
        &mut tx,
        &p.cluster,
        1,
        2,
        db::authority_terms::TermReason::Promotion,
        &survivors,
    )
    .await
    .unwrap();
    db::storage_nodes::retire_all_but(&mut tx, &p.cluster, &survivors)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Fail-closed: the healthy term-1 group cannot serve term 2.
    let e = workloads::set_desired_state(&p.ctx, &p.owner, &desired(&p, &node, "enabled"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "AUTHORITY_REFUSED", "{e}");
    assert!(e.to_string().contains("TERM_MISMATCH"), "{e}");
    // And while it has a quorum, the promotion is not re-sent.
    let (code, _, stderr) = server
        .rapctl(
            &p,
            &[
                "authority",
                "promote",
                "c1",
                "--survivor",
                "s1",
                "--expected-term",
                "2",
            ],
        )
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("QUORUM_PRESENT"), "{stderr}");
    assert!(
        stderr.contains("hint: a survivor still reaches a quorum"),
        "{stderr}"
    );

    p.stop_voters(2).await;
    wait_for_minority(&p, "s1").await;
    let (code, stdout, stderr) = server
        .rapctl(&p, &["authority", "status", "c1", "-o", "json"])
        .await;
    assert_eq!(code, 0, "{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["authority_term"], 2, "{stdout}");
    assert_eq!(status["observations"][0]["node_id"], "s1", "{stdout}");
    assert_eq!(status["observations"][0]["view"], "minority", "{stdout}");
    assert_eq!(status["observations"][0]["reachable_voters"], 1, "{stdout}");
    assert_eq!(status["observations"][0]["total_voters"], 3, "{stdout}");

    // Other survivors than the recorded ones: refused.
    let (code, _, stderr) = server
        .rapctl(
            &p,
            &[
                "authority",
                "promote",
                "c1",
                "--survivor",
                "s2",
                "--expected-term",
                "2",
            ],
        )
        .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not a voter"), "{stderr}");

    let (code, stdout, stderr) = server
        .rapctl(
            &p,
            &[
                "authority",
                "promote",
                "c1",
                "--survivor",
                "s1",
                "--expected-term",
                "2",
            ],
        )
        .await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("promoted cluster c1 to authority term 2"),
        "{stdout}"
    );
    assert_eq!(
        p.count("SELECT count(*) FROM cluster_authority_terms")
            .await,
        2,
        "a re-run writes no third term"
    );
    let details: serde_json::Value = sqlx::query_scalar(
        "SELECT details FROM cluster_audit_events
          WHERE action = 'authority.promote' AND result = 'ok'",
    )
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!(details["resumed"], true);
    assert_eq!(
        (details["old_term"].clone(), details["new_term"].clone()),
        (1.into(), 2.into())
    );

    let set = workloads::set_desired_state(&p.ctx, &p.owner, &desired(&p, &node, "enabled"))
        .await
        .unwrap();
    assert_eq!(set.version, 1);
    assert_eq!(
        p.count("SELECT count(*) FROM cluster_audit_events WHERE action = 'service.desired-state' AND result = 'ok' AND fence_term = 2").await,
        1
    );
    let (code, stdout, stderr) = server.rapctl(&p, &["authority", "status", "c1"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("leader"), "{stdout}");
    assert!(stdout.contains("healthy"), "{stdout}");
}
