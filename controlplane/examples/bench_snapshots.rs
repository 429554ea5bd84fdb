//! Snapshot compile + sign + publish benchmark (issue "Config
//! distribution"), run by `scripts/bench-snapshots.sh`; it prints figures
//! and asserts no speed.
//!
//! A real PostgreSQL (rap-pgtest, or `RAP_PLATFORM_DATABASE_URL`) and a
//! real 3-voter authority group (in-process rap-configstore nodes over
//! mTLS), the platform the tests use. The cluster gets `NODES` members
//! (default 10,000) straight through SQL: every 20th node an entry-node,
//! every 20th (offset 10) a relay-node, a quarter rdp-workers for one of
//! `ORGS` organizations (default 20, one egress endpoint each), two desired
//! workloads each. Then:
//!
//! 1. full: compile, sign and publish every scope (`PublishSnapshot` with no
//!    scope: one fenced transaction);
//! 2. again: the same call with nothing changed (compile + compare only);
//! 3. one role change: a fenced `role assign` of a relay-node (which marks
//!    its node, its peers, every other mesh node's peers and the role),
//!    then the publisher's dirty pass;
//! 4. bytes a typical node downloads: its readable scopes' envelopes, for a
//!    worker and for a mesh node;
//! 5. `GetShard` reads from ONE storage node (a follower) by
//!    [`READ_CONCURRENCY`] concurrent readers, each a distinct node identity
//!    (its own certificate from the cluster CA and its own mTLS connection)
//!    reading its own `node/<id>` for [`READ_SECONDS`]: reads/s, p50/p99;
//! 6. watch fan-out: [`WATCH_CONNECTIONS`] node identities, one connection
//!    each to the same storage node, each with [`STREAMS_PER_CONNECTION`]
//!    `WatchShards` streams on its own `node/<id>`; a `service
//!    desired-state` change (fenced, `workloads::set_desired_state`) for each
//!    of those nodes, then one publisher pass (`publish_cluster`): the time
//!    from the start of that pass to each stream's new version, p50/p99/max;
//! 7. a non-mesh role change seen by a watching node: a watch on
//!    `node/<x>`, then [`ROLE_ROUNDS`] times a fenced `roles::assign` of
//!    rdp-worker for an org (or `roles::remove` of it, alternating) and the
//!    publisher's pass: the time from the call to the watcher holding the
//!    new version, p50/p99;
//! 8. one cache replica (in-process, like the voters): `add-cache` (which
//!    republishes every node shard: they list their caches), the time
//!    until the cache has filled itself with every scope of its placement
//!    (every node is placed on it: it is the only cache), then the `GetShard`
//!    runs of section 5 against the cache.
//!
//! The load average is printed before and after each section. Clients,
//! storage nodes and PostgreSQL share the machine (the storage nodes run
//! in this process, on the same Tokio runtime as the clients).
//!
//! Run: `scripts/bench-snapshots.sh [NODES] [ORGS]`.
#![allow(clippy::unwrap_used, missing_docs)]

use futures::StreamExt;
use rap_controlplane::fencing::StoragePeer;
use rap_controlplane::keys::ClusterKeys;
use rap_controlplane::{roles, snapshots, workloads};
use rap_core::tls::ClusterCa;
use rap_core::tls::pin::ExpectedPeer;
use rap_proto::ids::ClusterId;
use rap_proto::pb;
use rap_proto::pb::shard_service_client::ShardServiceClient;
use rap_testkit::platform::Platform;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Concurrent `GetShard` readers of section 5, one run each.
const READ_CONCURRENCY: [usize; 3] = [1, 16, 64];
/// Length of each `GetShard` run.
const READ_SECONDS: Duration = Duration::from_secs(5);
/// Node identities (= connections) watching in section 6.
const WATCH_CONNECTIONS: usize = 200;
/// Watch streams per connection (all on that identity's `node/<id>`).
const STREAMS_PER_CONNECTION: usize = 5;
/// Assign/remove rounds of section 7.
const ROLE_ROUNDS: usize = 50;
/// First node of the watching identities (n00100..): clear of the nodes
/// the other sections change.
const WATCH_FIRST_NODE: usize = 100;
/// The node of section 7: no role in the seed (2 % 20 and 2 % 4 are not
/// picked), so an rdp-worker assignment is a change.
const ROLE_NODE: &str = "n00002";
/// The organization of section 7's role.
const ROLE_ORG: &str = "org0";
/// Connections set up at once.
const CONNECT_PARALLELISM: usize = 32;
/// Hang guard of any wait for a watched version.
const NOTIFY_GUARD: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nodes: i64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let orgs: i64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    eprintln!("starting PostgreSQL and a 3-voter authority group...");
    let p = rap_testkit::platform::Platform::start().await;
    let cluster = p.cluster.clone();
    let fence = p.count(&format!(
        "SELECT last_seq FROM cluster_authority_terms WHERE cluster_id = '{cluster}' AND ended_at IS NULL"
    ))
    .await;
    eprintln!("seeding {nodes} nodes and {orgs} organizations...");
    let seed = Instant::now();
    for sql in [
        "INSERT INTO organizations (org_id, name)
         SELECT 'org' || i, 'org ' || i FROM generate_series(0, $2 - 1) AS i",
        "INSERT INTO org_endpoints (org_id, cluster_id, name, kind, role)
         SELECT 'org' || i, $3, 'office-' || i, 'egress', 'rdp-worker'
           FROM generate_series(0, $2 - 1) AS i",
        "INSERT INTO nodes (node_id) SELECT 'n' || lpad(i::text, 5, '0')
           FROM generate_series(0, $1 - 1) AS i",
        "INSERT INTO cluster_memberships (cluster_id, node_id, group_id)
         SELECT $3, 'n' || lpad(i::text, 5, '0'), NULL FROM generate_series(0, $1 - 1) AS i",
        "INSERT INTO node_service_instances (cluster_id, node_id, service, desired_state)
         SELECT $3, 'n' || lpad(i::text, 5, '0'), s, 'enabled'
           FROM generate_series(0, $1 - 1) AS i, unnest(ARRAY['web', 'dns']) AS s",
        "INSERT INTO node_capabilities (cluster_id, node_id, capability, source)
         SELECT $3, 'n' || lpad(i::text, 5, '0'), c, 'join'
           FROM generate_series(0, $1 - 1) AS i,
                unnest(ARRAY['can_route_mesh', 'can_accept_client_ingress', 'can_run_rdp_worker']) AS c",
        "INSERT INTO node_role_assignments
             (cluster_id, node_id, role, organization_id, assigned_by, fence_term, fence_seq)
         SELECT $3, 'n' || lpad(i::text, 5, '0'),
                CASE WHEN i % 20 = 0 THEN 'entry-node'
                     WHEN i % 20 = 10 THEN 'relay-node'
                     ELSE 'rdp-worker' END,
                CASE WHEN i % 20 IN (0, 10) THEN NULL ELSE 'org' || (i % $2) END,
                'bench', 1, $4
           FROM generate_series(0, $1 - 1) AS i
          WHERE i % 20 IN (0, 10) OR i % 4 = 1",
    ] {
        sqlx::query(sql)
            .bind(nodes)
            .bind(orgs)
            .bind(&cluster)
            .bind(fence)
            .execute(&p.ctx.pool)
            .await
            .unwrap();
    }
    eprintln!("seeded in {:.1} s", seed.elapsed().as_secs_f64());
    load("before full publish");

    let publish = |scopes: Vec<String>| {
        let p = &p;
        async move {
            snapshots::publish(
                &p.ctx,
                &p.owner,
                &pb::PublishSnapshotRequest {
                    cluster_id: p.cluster.clone(),
                    scopes,
                },
            )
            .await
            .unwrap()
            .published
        }
    };
    let started = Instant::now();
    let published = publish(Vec::new()).await;
    let full = started.elapsed();
    println!(
        "full compile+sign+publish: {} scopes in {:.2} s ({:.0} scopes/s)",
        published.len(),
        full.as_secs_f64(),
        published.len() as f64 / full.as_secs_f64()
    );
    load("after full publish");
    let started = Instant::now();
    let again = publish(Vec::new()).await;
    println!(
        "nothing changed: {} published, {:.2} s (compile + compare with the group's heads)",
        again.len(),
        started.elapsed().as_secs_f64()
    );

    load("after no-change publish");

    let node = "n00001";
    let started = Instant::now();
    roles::assign(
        &p.ctx,
        &p.owner,
        &pb::AssignRoleRequest {
            cluster_id: cluster.clone(),
            node_id: node.to_string(),
            role: "relay-node".to_string(),
            org_id: String::new(),
        },
    )
    .await
    .unwrap();
    let assigned = started.elapsed();
    let outcome = snapshots::publish_cluster(&p.ctx, &cluster, false)
        .await
        .unwrap();
    let total = started.elapsed();
    println!(
        "one role change: assign {:.1} ms, then {} scopes republished ({} unchanged), assign→published {:.1} ms",
        assigned.as_secs_f64() * 1000.0,
        outcome.published.len(),
        outcome.unchanged,
        total.as_secs_f64() * 1000.0
    );
    load("after mesh role change");

    for (label, node) in [("worker", "n00005"), ("mesh node", "n00010")] {
        let peers = p.storage_peers().await;
        let own = p
            .ctx
            .authority
            .shard_heads(&cluster, &peers, vec![format!("node/{node}")], true)
            .await
            .unwrap();
        let envelope = rap_proto::envelope::decode(&own.heads[0].envelope).unwrap();
        let body: pb::NodeShard = rap_proto::shards::decode(
            &envelope.body,
            &rap_proto::ids::ClusterId::new(cluster.as_str()).unwrap(),
        )
        .unwrap();
        let heads = p
            .ctx
            .authority
            .shard_heads(&cluster, &peers, body.readable_scopes.clone(), true)
            .await
            .unwrap();
        let bytes: usize = heads.heads.iter().map(|h| h.envelope.len()).sum();
        println!(
            "a {label} downloads {} scopes, {bytes} bytes ({})",
            heads.heads.len(),
            body.readable_scopes.join(" ")
        );
    }
    load("after bytes per node");

    let peers = p.storage_peers().await;
    let target = follower(&p, &peers).await;
    println!(
        "shard reads and watches against storage node {} ({}) only",
        target.node_id, target.address
    );
    let agents = Agents::new(&p);
    let watchers: Vec<(String, ShardServiceClient<Channel>)> = connect(
        &agents,
        &target,
        WATCH_FIRST_NODE..WATCH_FIRST_NODE + WATCH_CONNECTIONS,
    )
    .await;
    reads(&p.cluster, &watchers).await;
    fan_out(&p, &watchers).await;
    role_changes(&p, &agents, &target).await;
    cache(&p, &agents).await;
}

/// Section 8: one cache replica, filled and read.
async fn cache(p: &Platform, agents: &Agents) {
    load("before cache replica");
    let started = Instant::now();
    let (grpc, http) = p.start_cache("k1", "zone-s1").await;
    let outcome = snapshots::publish_cluster(&p.ctx, &p.cluster, false)
        .await
        .unwrap();
    let published = started.elapsed();
    let peers = p.storage_peers().await;
    let heads = p
        .ctx
        .authority
        .shard_heads(&p.cluster, &peers, vec!["cache/k1".to_string()], true)
        .await
        .unwrap();
    let envelope = rap_proto::envelope::decode(&heads.heads[0].envelope).unwrap();
    let assignment: pb::CacheShard =
        rap_proto::shards::decode(&envelope.body, &ClusterId::new(p.cluster.as_str()).unwrap())
            .unwrap();
    // Its placement and its own assignment.
    let expected = assignment.scopes.len() + 1;
    let held = loop {
        let held = match rap_testkit::cluster::http_get(http, "/metrics").await {
            Ok((200, body)) => {
                rap_testkit::cluster::metric_value(&body, "rap_cache_shards", &[]).unwrap_or(0.0)
            }
            _ => 0.0,
        };
        if held as usize >= expected || started.elapsed() > Duration::from_secs(600) {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let filled = started.elapsed();
    println!(
        "cache replica: add-cache + republish {} scopes {:.2} s; filled with {held} of {expected} scopes ({} nodes served) {:.2} s after add-cache",
        outcome.published.len(),
        published.as_secs_f64(),
        assignment.serves.len(),
        filled.as_secs_f64()
    );
    load("after cache fill");
    let target = StoragePeer {
        node_id: "k1".to_string(),
        address: grpc.to_string(),
    };
    println!("shard reads against cache replica k1 ({grpc}) only");
    let readers = connect(
        agents,
        &target,
        WATCH_FIRST_NODE..WATCH_FIRST_NODE + READ_CONCURRENCY[2],
    )
    .await;
    reads(&p.cluster, &readers).await;
}

/// Prints the load average, labelled.
fn load(label: &str) {
    println!(
        "load average {label}: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

fn node_name(index: usize) -> String {
    format!("n{index:05}")
}

/// Milliseconds at quantile `q` of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// A storage node that is not the leader (the first one otherwise).
async fn follower(p: &Platform, peers: &[StoragePeer]) -> StoragePeer {
    let network = p.ctx.authority.network(&p.cluster).unwrap();
    let first = &peers[0];
    let mut client = rap_authority::client::authority_client(
        &network,
        &first.address,
        &ExpectedPeer::storage_named(&first.node_id),
    )
    .unwrap();
    let status = client
        .status(pb::AuthorityStatusRequest {
            cluster_id: p.cluster.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    peers
        .iter()
        .find(|peer| peer.node_id != status.leader_id)
        .unwrap_or(first)
        .clone()
}

/// Node agents' certificates, issued by the cluster CA.
struct Agents {
    cluster: String,
    ca: ClusterCa,
    dir: std::path::PathBuf,
}

impl Agents {
    fn new(p: &Platform) -> Agents {
        let cluster = ClusterId::new(p.cluster.as_str()).unwrap();
        Agents {
            cluster: p.cluster.clone(),
            ca: ClusterCa::load(&ClusterKeys::dir_for(&p.ctx.keys_dir, &cluster)).unwrap(),
            dir: p.dir.path().join("agents"),
        }
    }

    /// A `ShardService` client of `target` as node `node`, connected.
    async fn client(&self, target: &StoragePeer, node: &str) -> ShardServiceClient<Channel> {
        let files = rap_testkit::shards::node_cert(&self.ca, &self.dir.join(node), node);
        let mut client =
            rap_testkit::shards::shard_client(&files, &target.address, &target.node_id);
        // Connects (mTLS) and checks that the node reads its own scope.
        client.get_shard(get(&self.cluster, node, 0)).await.unwrap();
        client
    }
}

fn get(cluster: &str, node: &str, min_version: u64) -> pb::GetShardRequest {
    pb::GetShardRequest {
        cluster_id: cluster.to_string(),
        scope: format!("node/{node}"),
        min_version,
    }
}

/// One connected client per node of `nodes`, each its own identity.
async fn connect(
    agents: &Agents,
    target: &StoragePeer,
    nodes: std::ops::Range<usize>,
) -> Vec<(String, ShardServiceClient<Channel>)> {
    let started = Instant::now();
    let clients: Vec<(String, ShardServiceClient<Channel>)> =
        futures::stream::iter(nodes.map(|index| async move {
            let node = node_name(index);
            let client = agents.client(target, &node).await;
            (node, client)
        }))
        .buffered(CONNECT_PARALLELISM)
        .collect()
        .await;
    eprintln!(
        "{} node certificates issued and mTLS connections made in {:.1} s",
        clients.len(),
        started.elapsed().as_secs_f64()
    );
    clients
}

/// Section 5: `GetShard` throughput and latency at each concurrency.
async fn reads(cluster: &str, clients: &[(String, ShardServiceClient<Channel>)]) {
    for concurrency in READ_CONCURRENCY {
        load(&format!("before GetShard x{concurrency}"));
        let deadline = Instant::now() + READ_SECONDS;
        let started = Instant::now();
        let tasks: Vec<_> = clients
            .iter()
            .take(concurrency)
            .map(|(node, client)| {
                let request = get(cluster, node, 0);
                let mut client = client.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let sent = Instant::now();
                        client.get_shard(request.clone()).await.unwrap();
                        latencies.push(sent.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        let elapsed = started.elapsed();
        latencies.sort();
        println!(
            "GetShard, {concurrency} concurrent readers (distinct node identities, own node/<id>): \
             {} reads in {:.1} s = {:.0} reads/s, p50 {:.2} ms, p99 {:.2} ms",
            latencies.len(),
            elapsed.as_secs_f64(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            quantile(&latencies, 0.5),
            quantile(&latencies, 0.99)
        );
        load(&format!("after GetShard x{concurrency}"));
    }
}

/// The version of `node/<node>` the storage node serves now.
async fn version_of(client: &mut ShardServiceClient<Channel>, cluster: &str, node: &str) -> u64 {
    let response = client
        .get_shard(get(cluster, node, 0))
        .await
        .unwrap()
        .into_inner();
    rap_proto::envelope::decode(&response.envelope)
        .unwrap()
        .header
        .version
        .0
}

/// A watch of `node/<node>` by that node, knowing `version`.
async fn watch(
    client: &mut ShardServiceClient<Channel>,
    cluster: &str,
    node: &str,
    version: u64,
) -> tonic::Streaming<pb::GetShardResponse> {
    client
        .watch_shards(pb::WatchShardsRequest {
            cluster_id: cluster.to_string(),
            known: vec![pb::ScopeVersion {
                scope: format!("node/{node}"),
                version,
            }],
        })
        .await
        .unwrap()
        .into_inner()
}

/// Waits for the next version on `stream`; returns when it arrived and
/// the version.
async fn next_version(stream: &mut tonic::Streaming<pb::GetShardResponse>) -> (Instant, u64) {
    let message = tokio::time::timeout(NOTIFY_GUARD, stream.message())
        .await
        .expect("hang guard: no new version on the watch")
        .unwrap()
        .expect("the watch ended");
    let arrived = Instant::now();
    let version = rap_proto::envelope::decode(&message.envelope)
        .unwrap()
        .header
        .version
        .0;
    (arrived, version)
}

/// Section 6: the watchers' latency from one publisher pass that changes
/// every watched node.
async fn fan_out(p: &Platform, clients: &[(String, ShardServiceClient<Channel>)]) {
    load("before watch fan-out");
    let started = Instant::now();
    let mut streams = Vec::new();
    for (node, client) in clients {
        let mut client = client.clone();
        let version = version_of(&mut client, &p.cluster, node).await;
        for _ in 0..STREAMS_PER_CONNECTION {
            streams.push((version, watch(&mut client, &p.cluster, node, version).await));
        }
    }
    eprintln!(
        "{} watches open ({} identities x {STREAMS_PER_CONNECTION}) in {:.1} s",
        streams.len(),
        clients.len(),
        started.elapsed().as_secs_f64()
    );
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|(known, mut stream)| {
            tokio::spawn(async move {
                let (arrived, version) = next_version(&mut stream).await;
                assert!(version > known, "v{version} after v{known}");
                arrived
            })
        })
        .collect();
    let started = Instant::now();
    for (node, _) in clients {
        workloads::set_desired_state(
            &p.ctx,
            &p.owner,
            &pb::SetServiceDesiredStateRequest {
                cluster_id: p.cluster.clone(),
                node_id: node.clone(),
                service: "web".into(),
                desired_state: "disabled".into(),
            },
        )
        .await
        .unwrap();
    }
    println!(
        "watch fan-out: {} fenced desired-state changes in {:.1} s (not timed below)",
        clients.len(),
        started.elapsed().as_secs_f64()
    );
    let published_at = Instant::now();
    let outcome = snapshots::publish_cluster(&p.ctx, &p.cluster, false)
        .await
        .unwrap();
    let returned = published_at.elapsed();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.push(task.await.unwrap() - published_at);
    }
    latencies.sort();
    let after_return: Vec<f64> = latencies
        .iter()
        .map(|l| (l.as_secs_f64() - returned.as_secs_f64()) * 1000.0)
        .collect();
    println!(
        "watch fan-out: one publisher pass ({} scopes) returned after {:.1} ms; \
         {} watchers ({} identities x {STREAMS_PER_CONNECTION} streams) got the new version \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms after the pass began \
         (first {:.1} ms; relative to its return: p50 {:+.1} ms, max {:+.1} ms)",
        outcome.published.len(),
        returned.as_secs_f64() * 1000.0,
        latencies.len(),
        clients.len(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        quantile(&latencies, 1.0),
        quantile(&latencies, 0.0),
        after_return[after_return.len() / 2],
        after_return[after_return.len() - 1],
    );
    load("after watch fan-out");
}

/// Section 7: a non-mesh role assigned and removed, seen by the node's
/// own watch.
async fn role_changes(p: &Platform, agents: &Agents, target: &StoragePeer) {
    load("before role change to a watcher");
    let mut client = agents.client(target, ROLE_NODE).await;
    let mut known = version_of(&mut client, &p.cluster, ROLE_NODE).await;
    let mut stream = watch(&mut client, &p.cluster, ROLE_NODE, known).await;
    let (mut seen, mut calls, mut passes) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROLE_ROUNDS {
        let started = Instant::now();
        if round % 2 == 0 {
            roles::assign(
                &p.ctx,
                &p.owner,
                &pb::AssignRoleRequest {
                    cluster_id: p.cluster.clone(),
                    node_id: ROLE_NODE.into(),
                    role: "rdp-worker".into(),
                    org_id: ROLE_ORG.into(),
                },
            )
            .await
            .unwrap();
        } else {
            roles::remove(
                &p.ctx,
                &p.owner,
                &pb::RemoveRoleRequest {
                    cluster_id: p.cluster.clone(),
                    node_id: ROLE_NODE.into(),
                    role: "rdp-worker".into(),
                    org_id: ROLE_ORG.into(),
                },
            )
            .await
            .unwrap();
        }
        calls.push(started.elapsed());
        let pass = Instant::now();
        snapshots::publish_cluster(&p.ctx, &p.cluster, false)
            .await
            .unwrap();
        passes.push(pass.elapsed());
        let (arrived, version) = next_version(&mut stream).await;
        assert!(version > known, "v{version} after v{known}");
        known = version;
        seen.push(arrived - started);
    }
    for list in [&mut seen, &mut calls, &mut passes] {
        list.sort();
    }
    println!(
        "role change (rdp-worker for {ROLE_ORG}, assign/remove alternating, {ROLE_ROUNDS} rounds) \
         seen by the node's watch: p50 {:.1} ms, p99 {:.1} ms after the call \
         (the fenced call p50 {:.1} ms, the publisher pass p50 {:.1} ms)",
        quantile(&seen, 0.5),
        quantile(&seen, 0.99),
        quantile(&calls, 0.5),
        quantile(&passes, 0.5),
    );
    load("after role change to a watcher");
}
