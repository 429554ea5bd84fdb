//! The rap side: a 3-voter `rap-configstore` group of processes on
//! 127.0.0.1 with mTLS (`rap_testkit::cluster`), and the operations and
//! scenarios the drivers measure on it.

use crate::load::{self, Op, Row};
use crate::{GUARD, PROBE_DEADLINE, PROBE_EVERY, millis};
use rap_proto::envelope::Digest;
use rap_proto::pb;
use rap_proto::pb::shard_service_client::ShardServiceClient;
use rap_testkit::cluster::{Client, Cluster, Sealer, acquire, code_of, join_all};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Readers of the benchmark's shards: every node.
const READERS: &[&str] = &["all-nodes"];

/// A refusal in one short line: its ErrorDetail code (with k/n for
/// NO_QUORUM), or the gRPC code and message when it has no detail.
pub fn outcome_of(status: &tonic::Status) -> String {
    match rap_core::codes::error_detail(status) {
        Some(d) if d.code == "NO_QUORUM" => {
            format!("NO_QUORUM {}/{}", d.reachable_voters, d.total_voters)
        }
        Some(d) => d.code,
        None => format!("{:?} untyped: {}", status.code(), status.message()),
    }
}

/// `AcquireFence` in a loop: one durable Raft write per call.
#[derive(Clone)]
pub struct FenceOp {
    client: Client,
    cluster_id: String,
    term: u64,
}

impl FenceOp {
    /// An op on node `index` of `cluster` at authority term `term`.
    pub fn new(cluster: &Cluster, index: usize, term: u64) -> Self {
        FenceOp {
            client: cluster.client(index),
            cluster_id: cluster.cluster_id.to_string(),
            term,
        }
    }
}

impl Op for FenceOp {
    async fn call(&mut self) -> Result<(), String> {
        let result = acquire(&mut self.client, &self.cluster_id, self.term, "bench").await;
        load::settle(result, outcome_of)
    }
}

/// Publishes the next version of one scope per call (sealed by the
/// caller, under one fence acquired up front): one durable Raft write.
///
/// A failed publication may still have been committed (a refusal after
/// the entry was appended, a lost answer), so after a failure the op goes
/// on with version 1 of a fresh scope (`<scope>-r<n>`) instead of guessing
/// its head; a retry of the same version would be refused as a `FORK`.
pub struct PublishOp {
    client: Client,
    sealer: Arc<Sealer>,
    fence: pb::FencingToken,
    base_scope: String,
    scope: String,
    restarts: u32,
    head: Option<(u64, Digest)>,
    body: Vec<u8>,
}

impl PublishOp {
    /// An op publishing `body` as `scope` through node `index`, under
    /// `fence`; the scope must not exist yet.
    pub fn new(
        cluster: &Cluster,
        sealer: Arc<Sealer>,
        index: usize,
        fence: pb::FencingToken,
        scope: String,
        body: Vec<u8>,
    ) -> Self {
        PublishOp {
            client: cluster.client(index),
            sealer,
            fence,
            base_scope: scope.clone(),
            scope,
            restarts: 0,
            head: None,
            body,
        }
    }

    /// Seals the next version: (version, its header hash, the bytes).
    fn next(&self) -> (u64, Digest, Vec<u8>) {
        let (version, prev) = match self.head {
            Some((version, hash)) => (version + 1, Some(hash)),
            None => (1, None),
        };
        let sealed = self.sealer.seal(
            &self.scope,
            READERS,
            version,
            prev,
            self.fence.authority_term,
            &self.body,
        );
        (version, sealed.header_hash, sealed.bytes)
    }

    /// Publishes the next version; returns it.
    pub async fn publish_next(&mut self) -> Result<u64, String> {
        let (version, hash, bytes) = self.next();
        self.send(version, hash, bytes).await
    }

    async fn send(&mut self, version: u64, hash: Digest, bytes: Vec<u8>) -> Result<u64, String> {
        let result =
            rap_testkit::cluster::publish(&mut self.client, self.fence.clone(), vec![bytes]).await;
        if let Err(status) = result {
            self.restarts += 1;
            self.scope = format!("{}-r{}", self.base_scope, self.restarts);
            self.head = None;
            return Err(outcome_of(&status));
        }
        self.head = Some((version, hash));
        Ok(version)
    }
}

impl Op for PublishOp {
    async fn call(&mut self) -> Result<(), String> {
        self.publish_next().await.map(|_| ())
    }
}

/// `GetShard` of one scope in a loop, as a node agent.
pub struct ReadOp {
    client: ShardServiceClient<Channel>,
    cluster_id: String,
    scope: String,
}

impl Op for ReadOp {
    async fn call(&mut self) -> Result<(), String> {
        let request = pb::GetShardRequest {
            cluster_id: self.cluster_id.clone(),
            scope: self.scope.clone(),
            min_version: 0,
        };
        load::settle(self.client.get_shard(request).await, outcome_of)
    }
}

/// Node agents' certificates and shard clients, issued from the
/// cluster's CA into `<cluster>/agents`.
pub struct Agents {
    ca: rap_core::tls::ClusterCa,
    dir: std::path::PathBuf,
}

impl Agents {
    /// The agents of `cluster`.
    pub fn new(cluster: &Cluster) -> Self {
        Agents {
            ca: rap_core::tls::ClusterCa::load(&cluster.root().join("ca")).expect("the cluster CA"),
            dir: cluster.root().join("agents"),
        }
    }

    /// A shard client of node `index` (its own channel) presenting node
    /// `id`'s certificate.
    pub fn client(&self, cluster: &Cluster, id: &str, index: usize) -> ShardServiceClient<Channel> {
        let dir = self.dir.join(id);
        let files = if dir.join("node.pem").exists() {
            rap_core::tls::TlsFiles::in_dir(&dir)
        } else {
            rap_testkit::shards::node_cert(&self.ca, &dir, id)
        };
        let node = &cluster.nodes[index];
        rap_testkit::shards::shard_client(&files, &node.address(), &node.id)
    }

    /// A read op of `scope` on node `index` as node `id`.
    pub fn read_op(&self, cluster: &Cluster, id: &str, index: usize, scope: &str) -> ReadOp {
        ReadOp {
            client: self.client(cluster, id, index),
            cluster_id: cluster.cluster_id.to_string(),
            scope: scope.to_string(),
        }
    }
}

/// Starts a 3-voter group under `work_dir` with the given Raft timing,
/// every pid appended to `pid_file`; returns it with its leader and term.
pub async fn start(
    bin: &Path,
    work_dir: &Path,
    pid_file: &Path,
    timing: rap_testkit::cluster::Timing,
) -> (Cluster, usize, u64) {
    let mut cluster = Cluster::new_in(bin, 3, Some(work_dir));
    cluster.timing = timing;
    cluster.pid_file = Some(pid_file.to_path_buf());
    let leader = cluster.up().await;
    let term = cluster.authority_term(leader).await;
    (cluster, leader, term)
}

/// 100 fences one after another on the leader (connections, caches).
pub async fn warm_up(cluster: &Cluster, leader: usize, term: u64) {
    let mut op = FenceOp::new(cluster, leader, term);
    load::repeat(&mut op, 100).await.expect("warm-up fence");
}

/// A fence for publishing, from node `index`.
pub async fn fence(cluster: &Cluster, index: usize, term: u64) -> pb::FencingToken {
    let mut client = cluster.client(index);
    acquire(
        &mut client,
        cluster.cluster_id.as_str(),
        term,
        "bench publisher",
    )
    .await
    .expect("a fence for publishing")
}

/// `clients` concurrent loops of AcquireFence against `targets` (client k
/// talks to `targets[k % len]`) for `duration`.
pub async fn throughput(
    cluster: &Cluster,
    targets: &[usize],
    clients: usize,
    term: u64,
    duration: Duration,
) -> Row {
    let ops = (0..clients)
        .map(|k| FenceOp::new(cluster, targets[k % targets.len()], term))
        .collect();
    load::run(ops, duration).await
}

/// Brings every node up and waits for a leader every node follows.
pub async fn heal(cluster: &mut Cluster) -> usize {
    cluster.start_all().await;
    cluster.wait_leader(&cluster.all()).await
}

/// One failover run: the window from kill -9 of the leader until a fence
/// is granted by a survivor (a call is started on each survivor every
/// [`PROBE_EVERY`], each with [`PROBE_DEADLINE`]), the time until a
/// survivor reported itself leader, and (old leader, new leader).
pub async fn failover(cluster: &mut Cluster, term: u64) -> (Duration, Duration, (String, String)) {
    let leader = heal(cluster).await;
    let old = cluster.nodes[leader].id.clone();
    let survivors: Vec<usize> = cluster.all().into_iter().filter(|&i| i != leader).collect();
    // Warm connections to the survivors, so the window is the group's.
    let mut probes = Vec::new();
    for &i in &survivors {
        let mut probe = FenceOp::new(cluster, i, term);
        probe.call().await.expect("fence before the kill");
        probes.push(probe);
    }
    let status_clients: Vec<(String, Client)> = survivors
        .iter()
        .map(|&i| (cluster.nodes[i].id.clone(), cluster.client(i)))
        .collect();
    cluster.kill(leader);
    let killed = Instant::now();
    // When a survivor first reports itself leader (Status every 5 ms).
    let cluster_id = cluster.cluster_id.to_string();
    let elected = load::first_true(killed, Duration::from_millis(5), GUARD, || {
        let clients = status_clients.clone();
        let cluster_id = cluster_id.clone();
        async move {
            for (id, mut client) in clients {
                let request = pb::AuthorityStatusRequest {
                    cluster_id: cluster_id.clone(),
                };
                if let Ok(Ok(s)) =
                    tokio::time::timeout(Duration::from_secs(1), client.status(request)).await
                    && s.get_ref().leader_id == id
                {
                    return true;
                }
            }
            false
        }
    });
    let probing = load::first_success(&probes, killed, PROBE_EVERY, PROBE_DEADLINE, GUARD);
    let (window, elected) = tokio::join!(probing, elected);
    let window = window.unwrap_or_else(|| panic!("no fence granted within {GUARD:?} of the kill"));
    let elected = elected.unwrap_or(GUARD);
    let new_leader = cluster.wait_leader(&survivors).await;
    (window, elected, (old, cluster.nodes[new_leader].id.clone()))
}

/// Kills 2 of 3 (both followers, or the leader and one follower) and times
/// two AcquireFence calls on the survivor, then the time from the kill
/// until its refusals are NO_QUORUM: (duration, outcome) each.
pub async fn minority(
    cluster: &mut Cluster,
    term: u64,
    isolated_leader: bool,
) -> Vec<(Duration, String)> {
    let leader = heal(cluster).await;
    let survivor = if isolated_leader {
        leader
    } else {
        (leader + 1) % cluster.nodes.len()
    };
    let mut client = cluster.client(survivor);
    acquire(&mut client, cluster.cluster_id.as_str(), term, "warm-up")
        .await
        .expect("fence before the kill");
    for index in cluster.all() {
        if index != survivor {
            cluster.kill(index);
        }
    }
    let killed = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..2 {
        let t0 = Instant::now();
        let result = acquire(&mut client, cluster.cluster_id.as_str(), term, "minority").await;
        let took = t0.elapsed();
        let outcome = match result {
            Ok(fence) => format!("GRANTED seq {} (!)", fence.seq),
            Err(status) => outcome_of(&status),
        };
        calls.push((took, outcome));
    }
    // When the survivor's refusals become NO_QUORUM (typed).
    loop {
        let result = acquire(&mut client, cluster.cluster_id.as_str(), term, "minority").await;
        if let Err(status) = &result
            && code_of(status) == "NO_QUORUM"
        {
            calls.push((killed.elapsed(), "since the kill".to_string()));
            break;
        }
        assert!(killed.elapsed() < GUARD, "no NO_QUORUM within {GUARD:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    calls
}

/// Fan-out: `watchers` WatchShards streams of one scope (spread over the
/// nodes, `per_identity` streams per node identity), then `updates`
/// versions published one after another through the leader. Returns the
/// latencies from the start of each publication to its arrival at each
/// watcher (sorted), and the deliveries expected but missing.
pub async fn fanout(
    cluster: &Cluster,
    leader: usize,
    term: u64,
    watchers: usize,
    per_identity: usize,
    updates: u64,
    body: &[u8],
) -> (Vec<Duration>, u64) {
    let scope = "role/bench-fanout".to_string();
    let mut publisher = PublishOp::new(
        cluster,
        Arc::new(cluster.sealer()),
        leader,
        fence(cluster, leader, term).await,
        scope.clone(),
        body.to_vec(),
    );
    let first = publisher.publish_next().await.expect("publish version 1");
    let agents = Agents::new(cluster);
    let base = Instant::now();
    let sent = Arc::new(crate::fanout::SendTimes::new(updates + 1));
    let mut streams = Vec::new();
    for w in 0..watchers {
        let id = format!("w{}", w / per_identity.max(1));
        let index = w % cluster.nodes.len();
        let mut client = agents.client(cluster, &id, index);
        let stream = client
            .watch_shards(pb::WatchShardsRequest {
                cluster_id: cluster.cluster_id.to_string(),
                known: vec![pb::ScopeVersion {
                    scope: scope.clone(),
                    version: first,
                }],
            })
            .await
            .expect("open a watch")
            .into_inner();
        streams.push((client, stream));
    }
    let last = first + updates;
    let handles: Vec<_> = streams
        .into_iter()
        .map(|(client, mut stream)| {
            tokio::spawn(async move {
                // The client's channel lives as long as its stream.
                let _client = client;
                let mut seen = Vec::new();
                while let Ok(Ok(Some(message))) =
                    tokio::time::timeout(Duration::from_secs(10), stream.message()).await
                {
                    let at = base.elapsed();
                    let Ok(envelope) = rap_proto::envelope::decode(&message.envelope) else {
                        break;
                    };
                    let version = envelope.header.version.0;
                    seen.push((version, at));
                    if version >= last {
                        break;
                    }
                }
                seen
            })
        })
        .collect();
    for _ in 0..updates {
        let (version, hash, bytes) = publisher.next();
        sent.mark(version, base.elapsed());
        publisher
            .send(version, hash, bytes)
            .await
            .expect("publish an update");
    }
    sent.collect(join_all(handles).await, first + 1..=last)
}

/// Prints `rows` of fence throughput the way `bench-authority` does.
pub fn print_row(clients: usize, target: &str, row: &Row) {
    println!(
        "{:<8} {:<10} {:>9} {:>11.0} {:>9.2} {:>9.2} {:>7}",
        clients,
        target,
        row.latencies.len(),
        row.per_sec(),
        millis(row.p(50)),
        millis(row.p(99)),
        row.error_count()
    );
    for (outcome, count) in &row.errors {
        println!("         error x{count}: {outcome}");
    }
}
