//! Cache replicas, control-plane side: registration, the cache policy and
//! node locations through the admin API, the `cache/<id>` shards the
//! publisher publishes for them, and the placement report with caches,
//! against a real PostgreSQL and a real 3-voter authority group.

use rap_controlplane::caches;
use rap_controlplane::snapshots::{self, placement};
use rap_controlplane::tls::client_tls_config;
use rap_core::marks::FileHighWaterStore;
use rap_proto::envelope::{Reader, Scope, Verifier};
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::pb;
use rap_proto::pb::admin_service_client::AdminServiceClient;
use rap_proto::shards;
use rap_proto::time::UnixMillis;
use rap_testkit::platform::Platform;
use std::collections::{BTreeMap, BTreeSet};
use tonic::transport::{Channel, Endpoint};

const CAPABILITIES: &[&str] = &["can_route_mesh", "can_run_rdp_worker"];

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn code_of(status: &tonic::Status) -> String {
    rap_core::codes::error_detail(status)
        .map(|d| d.code)
        .unwrap_or_default()
}

async fn admin(p: &Platform, addr: std::net::SocketAddr) -> AdminServiceClient<Channel> {
    let ca = std::fs::read_to_string(p.ctx.keys_dir.join("platform/ca.pem")).unwrap();
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(client_tls_config(&ca, "localhost", None))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AdminServiceClient::new(channel)
}

fn cache_spec(id: &str, region: &str, zone: &str) -> pb::StorageEndpoint {
    pb::StorageEndpoint {
        node_id: id.to_string(),
        address: format!("{id}.example:7001"),
        domain: Some(pb::FailureDomain {
            region: region.to_string(),
            zone: zone.to_string(),
            host: id.to_string(),
        }),
    }
}

async fn assign(p: &Platform, node: &str, role: &str) {
    rap_controlplane::roles::assign(
        &p.ctx,
        &p.owner,
        &pb::AssignRoleRequest {
            cluster_id: p.cluster.clone(),
            node_id: node.to_string(),
            role: role.to_string(),
            org_id: String::new(),
        },
    )
    .await
    .unwrap();
}

/// (role, address, zone) of a storage node row.
async fn storage_row(p: &Platform, id: &str) -> Option<(String, String, String)> {
    sqlx::query_as(
        "SELECT role, address, zone FROM storage_nodes WHERE cluster_id = $1 AND node_id = $2",
    )
    .bind(&p.cluster)
    .bind(id)
    .fetch_optional(&p.ctx.pool)
    .await
    .unwrap()
}

/// Reads `scope` with `GetSnapshot` and verifies it as storage node
/// `reader` with `verifier` (opened on the genesis trust root).
async fn read_verified(
    client: &mut AdminServiceClient<Channel>,
    p: &Platform,
    verifier: &mut Verifier<FileHighWaterStore>,
    scope: &str,
    reader: &str,
) -> Vec<u8> {
    let envelope = client
        .get_snapshot(bearer(
            pb::GetSnapshotRequest {
                cluster_id: p.cluster.clone(),
                scope: scope.to_string(),
            },
            &p.owner_token,
        ))
        .await
        .unwrap_or_else(|e| panic!("{scope}: {e}"))
        .into_inner()
        .envelope;
    let reader = Reader::StorageNode {
        node_id: NodeId::new(reader).unwrap(),
    };
    verifier
        .verify(
            &envelope,
            &scope.parse::<Scope>().unwrap(),
            &reader,
            UnixMillis::now(),
        )
        .unwrap_or_else(|e| panic!("{scope}: {e}"))
        .body
}

/// Each node's caches from the `cache/` shards: node → caches serving it.
fn served_by(bodies: &BTreeMap<String, pb::CacheShard>) -> BTreeMap<String, BTreeSet<String>> {
    let mut served: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (cache, body) in bodies {
        for node in &body.serves {
            served
                .entry(node.clone())
                .or_default()
                .insert(cache.clone());
        }
    }
    served
}

// Goal (cache replicas, end to end on the control-plane side): caches and
// node locations registered through the admin API are published by the
// running publisher as signed `cache/<id>` shards (verified against the
// genesis trust root) that assign every node two caches in distinct zones,
// its own zone's first, and hold exactly what the served nodes read; each
// node's shard lists the voters and exactly its caches; a voter's id is
// refused as a cache (STORAGE_ROLE, audited, the voter unchanged); an org
// admin is refused every call (PERMISSION_DENIED, audited, nothing
// changed); removing a cache republishes its shard empty and moves its
// nodes to the caches left.
// Method: a real group and the served control plane; six nodes over three
// zones, two with roles; three caches, one per zone; read every cache and
// node shard back with GetSnapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_are_registered_placed_and_published() {
    let p = Platform::start().await;
    let mut nodes = Vec::new();
    for _ in 0..6 {
        nodes.push(p.enroll(CAPABILITIES).await);
    }
    assign(&p, &nodes[0], "relay-node").await;
    assign(&p, &nodes[1], "rdp-worker").await;
    let server = p.serve().await;
    let mut client = admin(&p, server.addr).await;
    let token = p.owner_token.clone();
    let zone_of_node: BTreeMap<String, String> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), format!("z{}", i % 3 + 1)))
        .collect();
    for (node, zone) in &zone_of_node {
        let location = client
            .set_node_location(bearer(
                pb::SetNodeLocationRequest {
                    cluster_id: p.cluster.clone(),
                    node_id: node.clone(),
                    region: "r1".into(),
                    zone: zone.clone(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&location.zone, zone);
    }
    let zone_of_cache: BTreeMap<String, String> = (1..=3)
        .map(|i| (format!("cache-{i}"), format!("z{i}")))
        .collect();
    for (cache, zone) in &zone_of_cache {
        let added = client
            .add_cache_replica(bearer(
                pb::AddCacheReplicaRequest {
                    cluster_id: p.cluster.clone(),
                    cache: Some(cache_spec(cache, "r1", zone)),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((added.role.as_str(), added.existed), ("cache", false));
    }
    let policy = client
        .set_cache_policy(bearer(
            pb::SetCachePolicyRequest {
                cluster_id: p.cluster.clone(),
                replicas: 2,
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((policy.previous_replicas, policy.caches), (2, 3));

    // A voter is not a cache replica.
    let refused = client
        .add_cache_replica(bearer(
            pb::AddCacheReplicaRequest {
                cluster_id: p.cluster.clone(),
                cache: Some(cache_spec("s1", "r1", "z9")),
            },
            &token,
        ))
        .await
        .expect_err("a voter as a cache");
    assert_eq!(code_of(&refused), "STORAGE_ROLE");
    let s1 = storage_row(&p, "s1").await.unwrap();
    assert_eq!((s1.0.as_str(), s1.2.as_str()), ("voter", "zone-s1"));
    assert_ne!(s1.1, "s1.example:7001");
    let events = p.audit_events(caches::ACTION_ADD_CACHE).await;
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[3].0, "refused");
    assert!(events[3].1.contains("voter"), "{events:?}");

    // Published by the running publisher, readable and verifiable.
    p.wait_for_publisher().await;
    let cluster = ClusterId::new(p.cluster.as_str()).unwrap();
    let (_marks, mut verifier) = p.genesis_verifier().await;
    let mut bodies: BTreeMap<String, pb::CacheShard> = BTreeMap::new();
    for cache in zone_of_cache.keys() {
        let scope = format!("cache/{cache}");
        let body = read_verified(&mut client, &p, &mut verifier, &scope, cache).await;
        let body: pb::CacheShard = shards::decode(&body, &cluster).unwrap();
        assert_eq!(&body.node_id, cache);
        bodies.insert(cache.clone(), body);
    }
    let served = served_by(&bodies);
    assert_eq!(served.len(), nodes.len(), "every node is served");
    let mut node_bodies: BTreeMap<String, pb::NodeShard> = BTreeMap::new();
    for node in &nodes {
        let mine = &served[node];
        assert_eq!(mine.len(), 2, "{node}: {mine:?}");
        let zones: BTreeSet<&String> = mine.iter().map(|c| &zone_of_cache[c]).collect();
        assert_eq!(zones.len(), 2, "{node}: distinct zones");
        assert!(zones.contains(&zone_of_node[node]), "{node}: own zone");
        let body = read_verified(
            &mut client,
            &p,
            &mut verifier,
            &format!("node/{node}"),
            "s1",
        )
        .await;
        let body: pb::NodeShard = shards::decode(&body, &cluster).unwrap();
        let endpoints: BTreeSet<(String, String)> = body
            .storage_endpoints
            .iter()
            .map(|e| (e.node_id.clone(), e.role.clone()))
            .collect();
        let mut expected: BTreeSet<(String, String)> = ["s1", "s2", "s3"]
            .iter()
            .map(|v| (v.to_string(), "voter".to_string()))
            .collect();
        expected.extend(mine.iter().map(|c| (c.clone(), "cache".to_string())));
        assert_eq!(endpoints, expected, "{node}: voters and its own caches");
        node_bodies.insert(node.clone(), body);
    }
    for (cache, body) in &bodies {
        let expected: BTreeSet<String> = body
            .serves
            .iter()
            .flat_map(|n| node_bodies[n].readable_scopes.clone())
            .collect();
        let held: BTreeSet<String> = body.scopes.iter().cloned().collect();
        assert_eq!(held, expected, "{cache}: what its nodes read, nothing else");
        for node in &nodes {
            assert_eq!(
                held.contains(&format!("node/{node}")),
                body.serves.contains(node),
                "{cache} and node/{node}"
            );
        }
    }
    let relay_caches = &served[&nodes[0]];
    for cache in relay_caches {
        assert!(
            bodies[cache]
                .scopes
                .contains(&format!("peers/{}", nodes[0]))
        );
        assert!(
            bodies[cache]
                .scopes
                .contains(&"role/relay-node".to_string())
        );
    }

    // An org admin: refused, audited, nothing changed.
    let org_admin = p.principal("org-admin", Some("acme")).await;
    let cluster_id = p.cluster.clone();
    let errors = [
        caches::add(
            &p.ctx,
            &org_admin,
            &pb::AddCacheReplicaRequest {
                cluster_id: cluster_id.clone(),
                cache: Some(cache_spec("cache-9", "r1", "z1")),
            },
        )
        .await
        .map(|_| ())
        .expect_err("org admin adds a cache"),
        caches::remove(
            &p.ctx,
            &org_admin,
            &pb::RemoveCacheReplicaRequest {
                cluster_id: cluster_id.clone(),
                node_id: "cache-1".into(),
            },
        )
        .await
        .map(|_| ())
        .expect_err("org admin removes a cache"),
        caches::set_policy(
            &p.ctx,
            &org_admin,
            &pb::SetCachePolicyRequest {
                cluster_id: cluster_id.clone(),
                replicas: 0,
            },
        )
        .await
        .map(|_| ())
        .expect_err("org admin sets the policy"),
        caches::set_location(
            &p.ctx,
            &org_admin,
            &pb::SetNodeLocationRequest {
                cluster_id: cluster_id.clone(),
                node_id: nodes[0].clone(),
                region: "r9".into(),
                zone: "z9".into(),
            },
        )
        .await
        .map(|_| ())
        .expect_err("org admin moves a node"),
    ];
    for error in &errors {
        assert_eq!(error.code(), "PERMISSION_DENIED", "{error}");
    }
    for action in [
        caches::ACTION_REMOVE_CACHE,
        caches::ACTION_CACHE_POLICY,
        caches::ACTION_SET_LOCATION,
    ] {
        let events = p.audit_events(action).await;
        let refused: Vec<_> = events.iter().filter(|e| e.0 == "refused").collect();
        assert_eq!(refused.len(), 1, "{action}: {events:?}");
    }
    assert_eq!(
        p.audit_events(caches::ACTION_ADD_CACHE)
            .await
            .iter()
            .filter(|e| e.0 == "refused")
            .count(),
        2,
        "the voter and the org admin"
    );
    assert_eq!(storage_row(&p, "cache-9").await, None);
    assert_eq!(storage_row(&p, "cache-1").await.unwrap().0, "cache");
    assert_eq!(
        p.count("SELECT cache_replicas::bigint FROM clusters").await,
        2
    );
    assert_eq!(
        p.count("SELECT count(*) FROM cluster_memberships WHERE zone = 'z9'")
            .await,
        0
    );

    // Remove a cache: its shard assigns nothing, its nodes move.
    let removed = client
        .remove_cache_replica(bearer(
            pb::RemoveCacheReplicaRequest {
                cluster_id: p.cluster.clone(),
                node_id: "cache-3".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.role, "retired");
    p.wait_for_publisher().await;
    // A fresh reader: the shards of nodes cache-3 did not serve are
    // unchanged (the same version, which a reader does not accept twice).
    let (_marks, mut verifier) = p.genesis_verifier().await;
    let emptied = read_verified(&mut client, &p, &mut verifier, "cache/cache-3", "cache-3").await;
    let emptied: pb::CacheShard = shards::decode(&emptied, &cluster).unwrap();
    assert!(emptied.scopes.is_empty() && emptied.serves.is_empty());
    let mut left = BTreeMap::new();
    for cache in ["cache-1", "cache-2"] {
        let scope = format!("cache/{cache}");
        let body = read_verified(&mut client, &p, &mut verifier, &scope, cache).await;
        left.insert(
            cache.to_string(),
            shards::decode::<pb::CacheShard>(&body, &cluster).unwrap(),
        );
    }
    let served = served_by(&left);
    for node in &nodes {
        assert_eq!(served[node].len(), 2, "{node}: both caches left");
        let body = read_verified(
            &mut client,
            &p,
            &mut verifier,
            &format!("node/{node}"),
            "s1",
        )
        .await;
        let body: pb::NodeShard = shards::decode(&body, &cluster).unwrap();
        assert!(
            body.storage_endpoints
                .iter()
                .all(|e| e.node_id != "cache-3"),
            "{node}"
        );
    }
}

// Goal (placement with caches): cache replicas are what keeps scopes
// readable when every voter is lost: with two caches in two other zones
// and two replicas per node, losing every voter zone leaves no scope
// unreadable; losing one cache zone too leaves only that cache's own
// assignment unreadable (nobody else reads it); losing the last cache zone
// leaves every scope unreadable; with the policy at 0 (caches hold nothing
// but their own assignment) losing the voters leaves every other scope
// unreadable.
// Method: voters in zone-s1..zone-s3 (region r1); caches in r2/a and r2/b;
// three nodes in r2/a and r2/b; publish; ask for placement reports with
// `without` selectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_counts_what_caches_keep_readable() {
    let p = Platform::start().await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let node = p.enroll(CAPABILITIES).await;
        caches::set_location(
            &p.ctx,
            &p.owner,
            &pb::SetNodeLocationRequest {
                cluster_id: p.cluster.clone(),
                node_id: node.clone(),
                region: "r2".into(),
                zone: if i % 2 == 0 { "a" } else { "b" }.into(),
            },
        )
        .await
        .unwrap();
        nodes.push(node);
    }
    assign(&p, &nodes[0], "relay-node").await;
    for (id, zone) in [("cache-a", "a"), ("cache-b", "b")] {
        caches::add(
            &p.ctx,
            &p.owner,
            &pb::AddCacheReplicaRequest {
                cluster_id: p.cluster.clone(),
                cache: Some(cache_spec(id, "r2", zone)),
            },
        )
        .await
        .unwrap();
    }
    snapshots::publish(
        &p.ctx,
        &p.owner,
        &pb::PublishSnapshotRequest {
            cluster_id: p.cluster.clone(),
            scopes: Vec::new(),
        },
    )
    .await
    .unwrap();
    let report = async |without: &[&str]| {
        placement::report(
            &p.ctx,
            &p.owner,
            &pb::GetPlacementRequest {
                cluster_id: p.cluster.clone(),
                without: without.iter().map(|w| w.to_string()).collect(),
            },
        )
        .await
        .unwrap()
    };
    let voters = ["zone=zone-s1", "zone=zone-s2", "zone=zone-s3"];

    let r = report(&[]).await;
    assert_eq!((r.cache_replicas, r.cache_replicas_per_node), (2, 2));
    let total: u32 = r.classes.iter().map(|c| c.scopes).sum();
    // 3 node + 1 peers + 1 role + 2 trust + 2 cache.
    assert_eq!(total, 9, "{r:?}");
    let node_class = r.classes.iter().find(|c| c.class == "node").unwrap();
    assert_eq!(
        node_class.holders,
        ["s1", "s2", "s3", "cache-a", "cache-b"],
        "voters, then the caches holding node scopes"
    );

    let r = report(&voters).await;
    assert!(!r.writes_survive);
    assert_eq!(r.voters_left, 0);
    assert_eq!(r.unreadable_scopes, 0, "the caches hold every scope: {r:?}");
    assert!(r.unreadable.is_empty());
    assert!(r.classes.iter().all(|c| c.holders_left == 2), "{r:?}");

    let mut without: Vec<&str> = voters.to_vec();
    without.push("zone=a");
    let r = report(&without).await;
    assert_eq!(r.unreadable, ["cache/cache-a"], "cache-b holds the rest");
    assert!(r.classes.iter().all(|c| c.holders_left == 1), "{r:?}");

    without.push("zone=b");
    let r = report(&without).await;
    assert_eq!(r.unreadable_scopes, total);
    assert_eq!(r.unreadable.len(), total as usize);

    // Without caches holding anything, the voters were the only copies.
    caches::set_policy(
        &p.ctx,
        &p.owner,
        &pb::SetCachePolicyRequest {
            cluster_id: p.cluster.clone(),
            replicas: 0,
        },
    )
    .await
    .unwrap();
    let r = report(&voters).await;
    assert_eq!(r.cache_replicas_per_node, 0);
    assert_eq!(
        r.unreadable_scopes,
        total - 2,
        "only the caches' own assignments survive: {:?}",
        r.unreadable
    );
    assert!(r.unreadable.iter().all(|s| !s.starts_with("cache/")));
}

/// A node agent's certificate, its node shard and its caches (id, address).
type Placed = (
    rap_core::tls::TlsFiles,
    pb::NodeShard,
    Vec<(String, String)>,
);

/// `GetShard` of `scope` from storage node `node_id` at `address` as the
/// node agent with `files`, retried (hang guard 20 s) until it answers at
/// least `min_version`.
async fn read_from(
    files: &rap_core::tls::TlsFiles,
    address: &str,
    node_id: &str,
    scope: &str,
    min_version: u64,
) -> pb::GetShardResponse {
    let mut client = rap_testkit::shards::shard_client(files, address, node_id);
    let mut last = String::new();
    for _ in 0..200 {
        let request = pb::GetShardRequest {
            cluster_id: "c1".into(),
            scope: scope.to_string(),
            min_version,
        };
        match tokio::time::timeout(std::time::Duration::from_secs(5), client.get_shard(request))
            .await
        {
            Ok(Ok(answer)) => return answer.into_inner(),
            Ok(Err(status)) => last = format!("{}: {}", code_of(&status), status.message()),
            Err(_) => last = "no answer in 5 s".into(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("hang guard: {scope} from {node_id}: {last}");
}

/// Every scope `node` reads, read from each cache in `caches` (node id →
/// address): the bytes the voters hold, marked as served by a cache.
async fn reads_everything_from(
    files: &rap_core::tls::TlsFiles,
    node: &pb::NodeShard,
    voter: &rap_controlplane::fencing::StoragePeer,
    caches: &[(String, String)],
) {
    for scope in &node.readable_scopes {
        let from_voter = read_from(files, &voter.address, &voter.node_id, scope, 1).await;
        let version = rap_proto::envelope::decode(&from_voter.envelope)
            .unwrap()
            .header
            .version
            .0;
        for (cache, address) in caches {
            let answer = read_from(files, address, cache, scope, version).await;
            assert_eq!(answer.envelope, from_voter.envelope, "{scope} from {cache}");
            assert_eq!(&answer.served_by_node_id, cache);
            assert!(answer.staleness.unwrap().from_cache_replica, "{scope}");
        }
    }
}

// Goal (issue 10 "Placement", end to end): what the control plane places
// is what real cache replicas serve. Caches registered in three zones and
// node agents located in them are published; each node's own node shard
// (read from a voter) names its two caches, and the node reads every one
// of its scopes from each of them, byte for byte what the voters hold;
// after the zone of one voter and one cache is lost, every node still
// reads every scope from a cache it was given; with every voter gone the
// caches still serve.
// Method: the platform's 3 in-process voters (zones zone-s1..3), three
// in-process cache replicas (one per zone) enrolled, registered and
// started through the control plane, the served control plane's
// publisher; three nodes, one per zone, one a relay node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_serve_what_the_control_plane_placed() {
    let p = Platform::start().await;
    let _server = p.serve().await;
    let voters = p.storage_peers().await;
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let node = p.enroll(CAPABILITIES).await;
        caches::set_location(
            &p.ctx,
            &p.owner,
            &pb::SetNodeLocationRequest {
                cluster_id: p.cluster.clone(),
                node_id: node.clone(),
                region: "r1".into(),
                zone: format!("zone-s{i}"),
            },
        )
        .await
        .unwrap();
        nodes.push(node);
    }
    assign(&p, &nodes[0], "relay-node").await;
    let mut cache_addresses = BTreeMap::new();
    for i in 1..=3 {
        let id = format!("k{i}");
        let (address, _) = p.start_cache(&id, &format!("zone-s{i}")).await;
        cache_addresses.insert(id, address.to_string());
    }
    p.wait_for_publisher().await;

    let cluster = ClusterId::new(p.cluster.as_str()).unwrap();
    let ca = rap_core::tls::ClusterCa::load(&rap_controlplane::keys::ClusterKeys::dir_for(
        &p.ctx.keys_dir,
        &cluster,
    ))
    .unwrap();
    let certs = tempfile::tempdir().unwrap();
    let mut placed: BTreeMap<String, Placed> = BTreeMap::new();
    for node in &nodes {
        let files = rap_testkit::shards::node_cert(&ca, &certs.path().join(node), node);
        let own = read_from(
            &files,
            &voters[0].address,
            &voters[0].node_id,
            &format!("node/{node}"),
            1,
        )
        .await;
        let envelope = rap_proto::envelope::decode(&own.envelope).unwrap();
        let shard: pb::NodeShard = shards::decode(&envelope.body, &cluster).unwrap();
        let mine: Vec<(String, String)> = shard
            .storage_endpoints
            .iter()
            .filter(|e| e.role == "cache")
            .map(|e| (e.node_id.clone(), e.address.clone()))
            .collect();
        assert_eq!(mine.len(), 2, "{node}: {mine:?}");
        for (cache, address) in &mine {
            assert_eq!(
                &cache_addresses[cache], address,
                "{node}: {cache}'s address"
            );
        }
        reads_everything_from(&files, &shard, &voters[0], &mine).await;
        placed.insert(node.clone(), (files, shard, mine));
    }

    // The zone of s3 and k3 is lost.
    p.stop_voters(1).await;
    p.stop_cache("k3").await;
    for (node, (files, shard, mine)) in &placed {
        let left: Vec<(String, String)> = mine.iter().filter(|(c, _)| c != "k3").cloned().collect();
        assert!(!left.is_empty(), "{node} kept a cache");
        reads_everything_from(files, shard, &voters[0], &left).await;
    }

    // Every voter is gone: the caches serve what they hold.
    p.stop_voters(3).await;
    for (node, (files, shard, mine)) in &placed {
        for (cache, address) in mine.iter().filter(|(c, _)| c != "k3") {
            let scope = format!("node/{node}");
            let answer = read_from(files, address, cache, &scope, 1).await;
            let envelope = rap_proto::envelope::decode(&answer.envelope).unwrap();
            let body: pb::NodeShard = shards::decode(&envelope.body, &cluster).unwrap();
            assert_eq!(&body, shard, "{node} from {cache} without voters");
        }
    }
}
