//! A node cut off from its quorum refuses writes with a typed `NO_QUORUM`
//! instead of hanging, says `minority`, and is not ready.

use crate::bin;
use rap_core::codes::error_detail;
use rap_proto::pb;
use rap_testkit::cluster::{
    Cluster, HANG_GUARD, acquire, code_of, eventually, is_untyped_node_answer, run,
};
use std::time::{Duration, Instant};

/// Asserts that `result` is a `NO_QUORUM` refusal (gRPC `UNAVAILABLE` with
/// an `ErrorDetail`) naming `total` voters; returns the reachable count.
fn expect_no_quorum(
    what: &str,
    result: Result<pb::FencingToken, tonic::Status>,
    total: u32,
) -> u32 {
    let status = match result {
        Ok(fence) => panic!("{what}: a minority granted {fence:?}"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        tonic::Code::Unavailable,
        "{what}: {status:?}"
    );
    let detail = error_detail(&status)
        .unwrap_or_else(|| panic!("{what}: no rap.v1.ErrorDetail in {status:?}"));
    assert_eq!(detail.code, "NO_QUORUM", "{what}: {status:?}");
    assert_eq!(detail.total_voters, total, "{what}: {detail:?}");
    detail.reachable_voters
}

/// Waits until node `index` reports the minority view.
pub(crate) async fn wait_minority(cluster: &Cluster, index: usize) -> pb::AuthorityStatusResponse {
    eventually(
        "the survivor reports PARTITION_VIEW_MINORITY",
        HANG_GUARD,
        Duration::from_millis(20),
        || async {
            let status = cluster.status(index).await.ok()?;
            (status.partition_view == pb::PartitionView::Minority as i32).then_some(status)
        },
    )
    .await
}

/// Kills every node but `survivor`.
fn kill_all_but(cluster: &mut Cluster, survivor: usize) {
    for index in cluster.all() {
        if index != survivor {
            cluster.kill(index);
        }
    }
}

/// The checks every isolated survivor must pass once it knows it is in a
/// minority: Status says minority with only itself reachable, /readyz is
/// 503 naming the view, and it granted nothing after `last_seq`.
async fn check_minority_node(cluster: &Cluster, survivor: usize, last_seq: u64) {
    let status = wait_minority(cluster, survivor).await;
    assert_eq!(status.voters.len(), 3);
    for voter in &status.voters {
        assert_eq!(
            voter.reachable,
            voter.node_id == cluster.nodes[survivor].id,
            "only the survivor itself is reachable: {voter:?}"
        );
    }
    let (code, body) = cluster.http(survivor, "/readyz").await;
    assert_eq!(code, 503, "/readyz in a minority: {body}");
    assert!(body.contains("minority"), "/readyz says why: {body}");
    let status = cluster.status(survivor).await.expect("status in minority");
    // The survivor may not have applied the last fence granted before the
    // kill, but it must never show one the clients were not granted.
    assert!(
        status.last_fence_seq <= last_seq,
        "a minority granted a fence: {} > {last_seq}",
        status.last_fence_seq
    );
    let view = cluster
        .metric_sum("rap_partition_view", &[("view", "minority")])
        .await;
    assert_eq!(view, 1.0, "rap_partition_view{{view=\"minority\"}}");
}

// Goal (a leader that has not heard from a quorum refuses
// before proposing, with NO_QUORUM, and never hangs; Status says
// minority): an isolated leader refuses a fence with UNAVAILABLE +
// ErrorDetail {NO_QUORUM, 1/3}, reports the minority view, fails /readyz,
// grants nothing, counts the refusals, and grants again once the other
// voters are back.
// Method: 3 voters, one fence; kill -9 both followers; AcquireFence on the
// leader right away (hang guard only) and again once its Status says
// minority; check Status, /readyz, /metrics, last_fence_seq; restart the
// two, wait for a leader, get a fence above the first.
#[test]
fn isolated_leader_refuses_with_no_quorum_then_recovers() {
    run(async {
        let mut cluster = Cluster::launch(bin(), 3).await;
        let cluster_id = cluster.cluster_id.to_string();
        let term = cluster.authority_term(0).await;
        let leader = cluster.wait_leader(&cluster.all()).await;
        let mut client = cluster.client(leader);
        let baseline = acquire(&mut client, &cluster_id, term, "baseline")
            .await
            .expect("fence with all voters up");

        kill_all_but(&mut cluster, leader);
        let started = Instant::now();
        let first = acquire(&mut client, &cluster_id, term, "isolated-leader").await;
        let took = started.elapsed();
        expect_no_quorum("first write on the isolated leader", first, 3);
        eprintln!("isolated leader: first write refused after {took:?} (not a bound)");

        check_minority_node(&cluster, leader, baseline.seq).await;
        let reachable = expect_no_quorum(
            "write on the isolated leader in minority",
            acquire(&mut client, &cluster_id, term, "isolated-leader-2").await,
            3,
        );
        assert_eq!(reachable, 1, "reachable voters of the isolated leader");
        let refusals = cluster
            .metric_sum("rap_refusals_total", &[("reason", "NO_QUORUM")])
            .await;
        assert!(refusals >= 2.0, "NO_QUORUM refusals counted: {refusals}");
        let status = cluster.status(leader).await.expect("status in minority");
        assert_eq!(
            status.last_fence_seq, baseline.seq,
            "a minority granted a fence"
        );

        // The other voters come back: the group grants again.
        cluster.start_all().await;
        let leader = cluster.wait_leader(&cluster.all()).await;
        let mut client = cluster.client(leader);
        let recovered = acquire(&mut client, &cluster_id, term, "recovered")
            .await
            .expect("fence once the quorum is back");
        assert!(
            recovered.seq > baseline.seq,
            "{recovered:?} after {baseline:?}"
        );
    });
}

// Goal: a follower left alone (leader and the other
// follower dead) never grants and never hangs: every write is refused
// with UNAVAILABLE, and once it knows it is alone the refusal is
// ErrorDetail {NO_QUORUM, 1/3}; Status says minority, /readyz is 503.
// Method: 3 voters, one fence; kill -9 the leader and one follower; send
// AcquireFence to the survivor every 50 ms (each under the hang guard)
// until one is NO_QUORUM with 1/3 reachable (hang guard on the whole
// loop); then the minority checks. Early refusals may be untyped (see
// `follower_forwarding_failure_is_typed`); they are printed, not failed.
#[test]
fn isolated_follower_refuses_with_no_quorum() {
    run(async {
        let mut cluster = Cluster::launch(bin(), 3).await;
        let cluster_id = cluster.cluster_id.to_string();
        let term = cluster.authority_term(0).await;
        let leader = cluster.wait_leader(&cluster.all()).await;
        let survivor = (leader + 1) % cluster.nodes.len();
        let mut client = cluster.client(survivor);
        let baseline = acquire(&mut client, &cluster_id, term, "baseline")
            .await
            .expect("fence with all voters up");

        kill_all_but(&mut cluster, survivor);
        let started = Instant::now();
        let mut attempt = 0;
        eventually(
            "a NO_QUORUM 1/3 refusal on the isolated follower",
            HANG_GUARD,
            Duration::from_millis(50),
            || {
                attempt += 1;
                let mut client = client.clone();
                let cluster_id = cluster_id.clone();
                let attempt = attempt;
                async move {
                    let result = acquire(&mut client, &cluster_id, term, "isolated").await;
                    let status = match result {
                        Ok(fence) => panic!("an isolated follower granted {fence:?}"),
                        Err(status) => status,
                    };
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    let detail = error_detail(&status);
                    eprintln!(
                        "isolated follower: write #{attempt} at {:?}: {:?} {:?}{}",
                        started.elapsed(),
                        code_of(&status),
                        detail
                            .as_ref()
                            .map(|d| (d.reachable_voters, d.total_voters)),
                        if is_untyped_node_answer(&status) {
                            format!(" untyped: {:?}", status.message())
                        } else {
                            String::new()
                        }
                    );
                    let detail = detail?;
                    (detail.code == "NO_QUORUM"
                        && detail.reachable_voters == 1
                        && detail.total_voters == 3)
                        .then_some(())
                }
            },
        )
        .await;
        check_minority_node(&cluster, survivor, baseline.seq).await;
        expect_no_quorum(
            "write on the isolated follower in minority",
            acquire(&mut client, &cluster_id, term, "isolated-2").await,
            3,
        );
    });
}

// Goal (NO_QUORUM is gRPC UNAVAILABLE with a machine-readable reason;
// ARCHITECTURE.md "every refusal is typed"):
// when a follower forwards a write to a leader that has just died, the
// client gets a typed refusal (an ErrorDetail, e.g. NO_QUORUM or
// NOT_LEADER), never the raw transport error of the forwarding hop.
// Method: 3 voters; kill -9 the leader; for one second, send AcquireFence
// to a surviving follower every 20 ms; every answer must be a fence or a
// refusal with an ErrorDetail.
#[test]
fn follower_forwarding_failure_is_typed() {
    run(async {
        let mut cluster = Cluster::launch(bin(), 3).await;
        let cluster_id = cluster.cluster_id.to_string();
        let term = cluster.authority_term(0).await;
        let leader = cluster.wait_leader(&cluster.all()).await;
        let follower = (leader + 1) % cluster.nodes.len();
        let mut client = cluster.client(follower);
        acquire(&mut client, &cluster_id, term, "baseline")
            .await
            .expect("fence with all voters up");

        cluster.kill(leader);
        let started = Instant::now();
        let mut untyped = Vec::new();
        while started.elapsed() < Duration::from_secs(1) {
            if let Err(status) = acquire(&mut client, &cluster_id, term, "after-kill").await
                && error_detail(&status).is_none()
            {
                untyped.push(format!("{:?} at {:?}", status, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            untyped.is_empty(),
            "untyped refusals from a follower after the leader died:\n{}",
            untyped.join("\n")
        );
    });
}
