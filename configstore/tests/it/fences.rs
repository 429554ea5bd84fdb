//! Fencing tokens across real processes: uniqueness and order under
//! concurrent clients, and no acknowledged fence or shard lost when the
//! leader is killed under load and then every node is killed and restarted
//! (docs/ARCHITECTURE.md, "a fence is granted only by applying a
//! committed `AcquireFence` entry").

use crate::bin;
use openraft::RaftLogReader;
use openraft::storage::RaftStateMachine;
use rap_proto::pb;
use rap_testkit::cluster::{
    Client, Cluster, HANG_GUARD, acquire, eventually, is_retryable, is_untyped_node_answer,
    join_all, publish, run,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Concurrent clients in the ordering test.
const CLIENTS: usize = 8;
/// Fences each of them acquires.
const FENCES_PER_CLIENT: usize = 25;
/// Retries of a retryable failure one client tolerates (a spurious
/// election on a loaded machine), so the test checks order, not luck.
const RETRIES_MAX: usize = 20;

/// Clients that keep acquiring fences during the failover test.
const LOAD_CLIENTS: usize = 4;
/// Upper bound of attempts per load client (the loops stop earlier, when
/// the test says so).
const LOAD_ATTEMPTS_MAX: usize = 20_000;
/// Fences acknowledged before the leader is killed.
const FENCES_BEFORE_KILL: usize = 40;
/// Fences acknowledged after the new leader is seen.
const FENCES_AFTER_FAILOVER: usize = 20;

/// Checks the fence invariants over every client's acknowledged fences
/// (in the order each client got them): all of cluster `cluster` and term
/// `term`, unique in (term, seq), increasing per client (seq and log
/// index), and ordered the same way by log index and by seq (the fences of
/// one group-commit entry share its index). Returns the fences sorted by
/// (log index, seq).
fn check_fences(
    cluster: &str,
    term: u64,
    per_client: &BTreeMap<usize, Vec<pb::FencingToken>>,
) -> Vec<pb::FencingToken> {
    let mut seen_seq = BTreeSet::new();
    let mut all = Vec::new();
    for (client, fences) in per_client {
        for pair in fences.windows(2) {
            assert!(
                (pair[0].authority_term, pair[0].seq) < (pair[1].authority_term, pair[1].seq),
                "client {client}: fence seq did not increase: {:?} then {:?}",
                pair[0],
                pair[1]
            );
            assert!(
                pair[0].log_index < pair[1].log_index,
                "client {client}: log index did not increase: {:?} then {:?}",
                pair[0],
                pair[1]
            );
        }
        for fence in fences {
            assert_eq!(fence.cluster_id, cluster, "fence of another cluster");
            assert_eq!(fence.authority_term, term, "fence of another term");
            assert!(fence.seq > 0, "seq 0 is never granted: {fence:?}");
            assert!(
                seen_seq.insert((fence.authority_term, fence.seq)),
                "fence (term {}, seq {}) granted twice",
                fence.authority_term,
                fence.seq
            );
            all.push(fence.clone());
        }
    }
    all.sort_by_key(|f| (f.log_index, f.seq));
    for pair in all.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "log order and seq order disagree: {:?} before {:?}",
            pair[0],
            pair[1]
        );
    }
    all
}

// Goal (invariant: fences are unique and strictly increase): many clients
// acquiring fences at once through every node (followers forward to the
// leader) never get the same (term, seq), each sees its seqs increase, and
// the seq order is the commit (log index) order, also when the leader
// grants several in one entry (group commit).
// Method: 3 voters; 8 clients × 25 AcquireFence, client k talking to node
// k mod 3; check every invariant over the 200 fences, then that the group
// granted exactly those (seqs 1..=200) unless a client had to retry.
#[test]
fn fences_strictly_increase_under_concurrent_clients() {
    run(async {
        let cluster = Cluster::launch(bin(), 3).await;
        let cluster_id = cluster.cluster_id.to_string();
        let term = cluster.authority_term(0).await;
        assert_eq!(term, 1, "a new group is at authority term 1");

        let mut handles = Vec::new();
        for k in 0..CLIENTS {
            let mut client = cluster.client(k % cluster.nodes.len());
            let cluster_id = cluster_id.clone();
            handles.push(tokio::spawn(async move {
                let mut fences = Vec::with_capacity(FENCES_PER_CLIENT);
                let mut retries = 0;
                while fences.len() < FENCES_PER_CLIENT {
                    match acquire(&mut client, &cluster_id, term, &format!("client-{k}")).await {
                        Ok(fence) => fences.push(fence),
                        Err(status) if is_retryable(&status) && retries < RETRIES_MAX => {
                            eprintln!("client {k}: retrying after {status:?}");
                            retries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(status) => panic!("client {k}: AcquireFence refused: {status:?}"),
                    }
                }
                (k, fences, retries)
            }));
        }
        let results = join_all(handles).await;
        let retries: usize = results.iter().map(|(_, _, r)| r).sum();
        let per_client: BTreeMap<usize, Vec<pb::FencingToken>> =
            results.into_iter().map(|(k, f, _)| (k, f)).collect();
        let all = check_fences(&cluster_id, term, &per_client);
        assert_eq!(all.len(), CLIENTS * FENCES_PER_CLIENT);

        let leader = cluster.wait_leader(&cluster.all()).await;
        let status = cluster.status(leader).await.expect("leader status");
        let max_seq = all.iter().map(|f| f.seq).max().unwrap_or(0);
        if retries == 0 {
            let seqs: Vec<u64> = all.iter().map(|f| f.seq).collect();
            let expected: Vec<u64> = (1..=all.len() as u64).collect();
            assert_eq!(
                seqs, expected,
                "every granted seq went to a client, in order"
            );
            assert_eq!(status.last_fence_seq, max_seq);
        } else {
            // A write that timed out may still have committed a seq that
            // no client saw: gaps are allowed, going backwards is not.
            assert!(status.last_fence_seq >= max_seq, "{status:?}");
        }
        let grants = cluster.metric_sum("rap_fence_grants_total", &[]).await;
        assert!(
            grants >= all.len() as f64,
            "rap_fence_grants_total summed over the nodes is {grants}, {} fences were acknowledged",
            all.len()
        );
    });
}

/// A fence some client got back, and when.
struct Ack {
    client: usize,
    fence: pb::FencingToken,
    at: Instant,
}

/// Retryable failures of one load client.
#[derive(Default)]
struct Failures {
    /// All of them.
    retried: usize,
    /// Those a node answered without an `ErrorDetail`.
    untyped: usize,
}

/// Acquires fences until `stop`, rotating to the next node after a
/// retryable failure; every other failure fails the test.
async fn load_client(
    k: usize,
    mut clients: Vec<Client>,
    cluster_id: String,
    term: u64,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
) -> Failures {
    let mut node = k % clients.len();
    let mut failures = Failures::default();
    for _ in 0..LOAD_ATTEMPTS_MAX {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match acquire(&mut clients[node], &cluster_id, term, &format!("load-{k}")).await {
            Ok(fence) => acks.lock().unwrap_or_else(|e| e.into_inner()).push(Ack {
                client: k,
                fence,
                at: Instant::now(),
            }),
            Err(status) if is_retryable(&status) => {
                failures.retried += 1;
                if is_untyped_node_answer(&status) {
                    if failures.untyped == 0 {
                        eprintln!("load client {k}: untyped refusal from a node: {status:?}");
                    }
                    failures.untyped += 1;
                }
                node = (node + 1) % clients.len();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("load client {k}: AcquireFence refused: {status:?}"),
        }
    }
    failures
}

fn ack_count(acks: &Mutex<Vec<Ack>>, after: Option<Instant>) -> usize {
    let acks = acks.lock().unwrap_or_else(|e| e.into_inner());
    acks.iter()
        .filter(|a| after.is_none_or(|t| a.at > t))
        .count()
}

// Goal (invariants: a new leader takes over after kill -9 of the old one;
// no acknowledged fence or shard is ever lost): fences keep being granted
// after the leader dies, above every fence granted before, and after every
// node is killed and restarted the group remembers every acknowledged
// fence and the published shard.
// Method: 3 voters; publish node/n1 v1 through a follower under a fence;
// 4 clients acquire fences through all nodes; kill -9 the leader after 40
// acknowledgements; wait (hang guard) for a new leader and 20 more
// acknowledgements, all above the highest seq acknowledged before the
// kill; stop the load; kill -9 the survivors, restart all three; the group's
// last_fence_seq covers every acknowledged seq and a new fence is above
// them all; once every node has applied it, kill -9 all and read each
// node's redb store directly: its durable log holds every entry after the
// (unsynced, possibly older) applied state, re-applying them brings the
// last fence back, and the shard is there, byte for byte.
#[test]
fn leader_kill_under_load_then_full_restart_loses_nothing() {
    run(async {
        let mut cluster = Cluster::launch(bin(), 3).await;
        let cluster_id = cluster.cluster_id.to_string();
        let term = cluster.authority_term(0).await;
        let old_leader = cluster.wait_leader(&cluster.all()).await;
        let old_leader_id = cluster.nodes[old_leader].id.clone();

        // A shard, published through a follower (forwarded to the leader).
        let follower = (old_leader + 1) % cluster.nodes.len();
        let mut client = cluster.client(follower);
        let fence = acquire(&mut client, &cluster_id, term, "publish")
            .await
            .expect("fence for the publication");
        let shard = cluster
            .sealer()
            .seal("node/n1", &["node:n1"], 1, None, term, b"shard body v1");
        let published = publish(&mut client, fence.clone(), vec![shard.bytes.clone()])
            .await
            .expect("publish node/n1 v1");
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].scope, "node/n1");
        assert_eq!(published[0].version, 1);
        assert_eq!(
            published[0].content_hash,
            shard.header.content_hash.0.to_vec()
        );

        // Load.
        let acks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for k in 0..LOAD_CLIENTS {
            let clients = cluster
                .all()
                .into_iter()
                .map(|i| cluster.client(i))
                .collect();
            handles.push(tokio::spawn(load_client(
                k,
                clients,
                cluster_id.clone(),
                term,
                acks.clone(),
                stop.clone(),
            )));
        }
        eventually(
            "fences before the kill",
            HANG_GUARD,
            Duration::from_millis(10),
            || async { (ack_count(&acks, None) >= FENCES_BEFORE_KILL).then_some(()) },
        )
        .await;

        // kill -9 the leader.
        let killed_at = Instant::now();
        cluster.kill(old_leader);
        let survivors = cluster.running();
        let new_leader = cluster.wait_leader(&survivors).await;
        let elected_at = Instant::now();
        assert_ne!(cluster.nodes[new_leader].id, old_leader_id);
        eprintln!(
            "new leader {} seen {:?} after kill -9 of {old_leader_id} (not a bound: see the bench)",
            cluster.nodes[new_leader].id,
            elected_at - killed_at
        );
        eventually(
            "fences after the failover",
            HANG_GUARD,
            Duration::from_millis(10),
            || async {
                (ack_count(&acks, Some(elected_at)) >= FENCES_AFTER_FAILOVER).then_some(())
            },
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        let failures = join_all(handles).await;
        let retried: usize = failures.iter().map(|f| f.retried).sum();
        let untyped: usize = failures.iter().map(|f| f.untyped).sum();

        let acks = std::mem::take(&mut *acks.lock().unwrap_or_else(|e| e.into_inner()));
        let max_before_kill = acks
            .iter()
            .filter(|a| a.at < killed_at)
            .map(|a| a.fence.seq)
            .max()
            .expect("fences before the kill");
        for ack in acks.iter().filter(|a| a.at > elected_at) {
            assert!(
                ack.fence.seq > max_before_kill,
                "after the failover client {} got seq {}, not above {max_before_kill} granted before the kill",
                ack.client,
                ack.fence.seq
            );
        }
        let mut per_client: BTreeMap<usize, Vec<pb::FencingToken>> = BTreeMap::new();
        per_client.entry(usize::MAX).or_default().push(fence);
        for ack in &acks {
            per_client
                .entry(ack.client)
                .or_default()
                .push(ack.fence.clone());
        }
        let all = check_fences(&cluster_id, term, &per_client);
        let max_acked = all.iter().map(|f| f.seq).max().unwrap_or(0);
        eprintln!(
            "{} fences acknowledged (max seq {max_acked}); {retried} retried failures, {untyped} of them untyped answers from a node",
            all.len()
        );

        // kill -9 everything, restart everything.
        cluster.kill_all();
        cluster.start_all().await;
        let leader = cluster.wait_leader(&cluster.all()).await;
        let status = cluster.status(leader).await.expect("status after restart");
        assert!(
            status.last_fence_seq >= max_acked,
            "acknowledged seq {max_acked} lost: the restarted group is at {}",
            status.last_fence_seq
        );
        let mut client = cluster.client(leader);
        let after = acquire(&mut client, &cluster_id, term, "after-restart")
            .await
            .expect("fence after the restart");
        assert!(
            after.seq > max_acked,
            "new fence {after:?} is not above every acknowledged seq ({max_acked})"
        );
        assert!(after.log_index > all.last().map(|f| f.log_index).unwrap_or(0));

        // Every node applies it; then read each store directly.
        for index in cluster.all() {
            eventually(
                "every node applies the last fence",
                HANG_GUARD,
                Duration::from_millis(20),
                || async {
                    let s = cluster.status(index).await.ok()?;
                    (s.applied_index >= after.log_index).then_some(())
                },
            )
            .await;
        }
        cluster.kill_all();
        for node in &cluster.nodes {
            let (mut log, mut state_machine) = rap_authority::store::open(&node.data_dir)
                .unwrap_or_else(|e| panic!("open the store of {}: {e}", node.id));
            // The applied state is committed without an fsync and may lag
            // the durable log after kill -9; the log must hold every entry
            // after it, and re-applying them (what openraft does on start)
            // must bring the fence back.
            let applied = state_machine.last_applied().map_or(0, |id| id.index);
            if applied < after.log_index {
                let entries = log
                    .try_get_log_entries(applied + 1..after.log_index + 1)
                    .await
                    .unwrap_or_else(|e| panic!("{}: read the log: {e}", node.id));
                assert_eq!(
                    entries.last().map(|entry| entry.log_id.index),
                    Some(after.log_index),
                    "{}: the durable log lacks the entry of the last fence",
                    node.id
                );
                state_machine
                    .apply(entries)
                    .await
                    .unwrap_or_else(|e| panic!("{}: re-apply the log: {e}", node.id));
            }
            let view = state_machine.view();
            assert!(
                view.last_fence_seq().0 >= after.seq,
                "{}: last fence seq {} on disk, {} was granted",
                node.id,
                view.last_fence_seq().0,
                after.seq
            );
            let record = view
                .shard("node/n1")
                .unwrap_or_else(|| panic!("{}: shard node/n1 lost", node.id));
            assert_eq!(record.version.0, 1, "{}", node.id);
            assert_eq!(record.authority_term.0, term, "{}", node.id);
            assert_eq!(
                record.envelope.as_slice(),
                shard.bytes.as_slice(),
                "{}: stored envelope differs from the published one",
                node.id
            );
        }
    });
}
