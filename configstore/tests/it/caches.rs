//! Cache replicas on real processes: three voters `s1`..`s3` in failure
//! domains 1..3 and three cache replicas `k1`..`k3` in the same domains
//! (`rap-configstore serve --cache-voter .. --cache-trust-root ..`). The
//! assignments are what the control plane compiles: each node agent's
//! scopes on two caches chosen by `caches_for` (distinct zones, its own
//! zone first), published as `cache/<id>` shards through the group.
//!
//! * a cache fills itself from the voters and serves exactly its
//!   placement, byte for byte, saying `from_cache_replica`;
//! * the readers check applies on a cache as on a voter, and a cache
//!   serves no storage node; a voter serves a storage node only its
//!   placement;
//! * new versions reach a watcher of a cache; a scope placement takes away
//!   is deleted;
//! * losing a whole domain (its voter and its cache) leaves every scope of
//!   every node readable from a cache; with every voter gone the caches go
//!   on serving, also after a restart (from their durable store).

use crate::bin;
use crate::shards::{Publisher, get, get_applied, issue, next, node_cert, open_watch, refusal};
use rap_authority::placement::{Candidate, ReaderSite, caches_for};
use rap_core::identity::PeerIdentity;
use rap_core::tls::TlsFiles;
use rap_proto::ids::NodeId;
use rap_proto::pb;
use rap_proto::pb::shard_service_client::ShardServiceClient;
use rap_testkit::cluster::{Cluster, HANG_GUARD, code_of, eventually, guarded, run};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tonic::transport::Channel;

const CLUSTER: &str = "c1";
const REPLICAS: usize = 2;
const ROLE: &str = "relay-node";

/// Node agents: (id, failure domain, holds ROLE).
const NODES: [(&str, usize, bool); 6] = [
    ("n1", 1, true),
    ("n2", 1, false),
    ("n3", 2, true),
    ("n4", 2, false),
    ("n5", 3, false),
    ("n6", 3, true),
];

/// Cache replicas: (id, failure domain).
const CACHES: [(&str, usize); 3] = [("k1", 1), ("k2", 2), ("k3", 3)];

/// The scopes node `id` reads (all published in this test).
fn readable(id: &str, relay: bool) -> Vec<String> {
    let mut scopes = vec![format!("node/{id}"), "trust/revocations".to_string()];
    if relay {
        scopes.push(format!("role/{ROLE}"));
    }
    scopes
}

/// cache id → the nodes it serves, as `caches_for` places them.
fn placement() -> BTreeMap<String, BTreeSet<String>> {
    let candidates: Vec<Candidate> = CACHES
        .iter()
        .map(|(id, d)| Candidate {
            node_id: id.to_string(),
            region: format!("r{d}"),
            zone: format!("z{d}"),
            host: format!("h{d}"),
        })
        .collect();
    let mut serves: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (node, d, _) in NODES {
        let (region, zone) = (format!("r{d}"), format!("z{d}"));
        let site = ReaderSite {
            node_id: node,
            region: &region,
            zone: &zone,
        };
        let picked = caches_for(&candidates, &site, REPLICAS);
        assert_eq!(picked.len(), REPLICAS);
        assert_eq!(candidates[picked[0]].zone, zone, "{node}: own zone first");
        for at in picked {
            serves
                .entry(candidates[at].node_id.clone())
                .or_default()
                .insert(node.to_string());
        }
    }
    serves
}

/// The `cache/<id>` body serving `nodes`.
fn assignment(cache: &str, nodes: &BTreeSet<String>) -> Vec<u8> {
    let mut scopes = BTreeSet::new();
    for (node, _, relay) in NODES {
        if nodes.contains(node) {
            scopes.extend(readable(node, relay));
        }
    }
    rap_proto::shards::encode(&pb::CacheShard {
        format: rap_proto::shards::SHARD_FORMAT,
        cluster_id: CLUSTER.into(),
        node_id: cache.into(),
        scopes: scopes.into_iter().collect(),
        serves: nodes.iter().cloned().collect(),
    })
    .expect("encode the assignment")
}

/// A shard client of cache replica `index`, presenting `files`.
fn cache_client(files: &TlsFiles, cluster: &Cluster, index: usize) -> ShardServiceClient<Channel> {
    let cache = &cluster.caches[index];
    rap_testkit::shards::shard_client(files, &cache.address(), &cache.id)
}

fn cache_index(id: &str) -> usize {
    CACHES
        .iter()
        .position(|(c, _)| *c == id)
        .expect("a cache of the test")
}

/// Publishes every node's scopes and every cache's assignment.
async fn publish_all(
    cluster: &Cluster,
    shards: &mut Publisher,
    serves: &BTreeMap<String, BTreeSet<String>>,
) {
    for (node, _, relay) in NODES {
        let roles: &[(&str, &str)] = if relay { &[(ROLE, "")] } else { &[] };
        shards.node_shard(cluster, 0, node, roles).await;
    }
    let role = rap_proto::shards::encode(&pb::RoleShard {
        format: rap_proto::shards::SHARD_FORMAT,
        cluster_id: CLUSTER.into(),
        role: ROLE.into(),
        ..Default::default()
    })
    .expect("encode the role shard");
    let role_reader = format!("role:{ROLE}");
    shards
        .publish(cluster, 0, &format!("role/{ROLE}"), &[&role_reader], &role)
        .await;
    shards.revocations(cluster, 0, &[]).await;
    for (cache, nodes) in serves {
        shards
            .publish(
                cluster,
                0,
                &format!("cache/{cache}"),
                &[],
                &assignment(cache, nodes),
            )
            .await;
    }
}

/// Asserts that every node reads every one of its scopes, byte for byte
/// at its newest published version, from at least one cache of `up`
/// that serves it (from every one when `each`).
async fn every_scope_readable(
    cluster: &Cluster,
    shards: &Publisher,
    serves: &BTreeMap<String, BTreeSet<String>>,
    up: &[&str],
    each: bool,
) {
    for (node, _, relay) in NODES {
        let files = node_cert(cluster, node);
        let holders: Vec<&str> = up
            .iter()
            .copied()
            .filter(|c| serves.get(*c).is_some_and(|nodes| nodes.contains(node)))
            .collect();
        assert!(!holders.is_empty(), "{node} has no cache left in {up:?}");
        let holders = if each { holders } else { holders[..1].to_vec() };
        for cache in holders {
            let mut client = cache_client(&files, cluster, cache_index(cache));
            for scope in readable(node, relay) {
                let newest = shards.head(&scope);
                let answer = get_applied(&mut client, &scope, newest).await;
                assert_eq!(
                    answer.envelope,
                    shards.bytes(&scope, newest),
                    "{node} reads {scope} from {cache}"
                );
                assert_eq!(answer.served_by_node_id, cache);
                let staleness = answer.staleness.expect("staleness");
                assert!(staleness.from_cache_replica, "{scope} from {cache}");
                assert!(staleness.authority_term >= 1);
            }
        }
    }
}

// Goal (issue 10 "Placement", "Attacks on caches" at process level):
// cache replicas hold exactly their placement and keep every scope
// readable when a domain is lost. Each cache fills itself from the voters
// and serves its nodes' scopes byte for byte (from_cache_replica); a
// node's scope is NOT_FOUND on the cache that does not serve it
// (need-to-know) and another served node's scope is NOT_A_READER; a cache
// refuses a storage caller (CALLER_NOT_ADMITTED); a voter serves a cache
// only its placement (NOT_A_READER) and a storage node without one
// nothing; a new version reaches a watcher of a cache; a scope the
// placement takes away is deleted from the cache; with any one domain's
// cache killed, every node reads every scope from the other two; after
// kill -9 of domain 2 (voter s2 and cache k2) every node reads every
// scope from a surviving cache; after kill -9 of every voter the caches still serve,
// also after a cache restarts (from its durable store).
// Method: 3 voters + 3 caches in domains 1..3, six nodes two per domain,
// replicas 2 placed by caches_for; shards sealed with the genesis key and
// published through the group.
#[test]
fn caches_hold_their_placement_and_outlive_a_domain() {
    run(async {
        let mut cluster = Cluster::launch(bin(), 3).await;
        let serves = placement();
        let mut shards = Publisher::new();
        publish_all(&cluster, &mut shards, &serves).await;
        for (id, domain) in CACHES {
            let index = cluster.add_cache(id, domain);
            cluster.start_cache(index).await;
        }
        every_scope_readable(&cluster, &shards, &serves, &["k1", "k2", "k3"], true).await;

        // Need-to-know: the one cache that does not serve a node holds
        // nothing of it; a cache serving two nodes admits each to its own.
        for (node, _, _) in NODES {
            let files = node_cert(&cluster, node);
            for (cache, nodes) in &serves {
                if nodes.contains(node) {
                    continue;
                }
                let mut client = cache_client(&files, &cluster, cache_index(cache));
                let (code, _) = refusal(&mut client, &format!("node/{node}"), 0).await;
                assert_eq!(code, "NOT_FOUND", "{cache} holds node/{node}");
            }
        }
        let (cache, nodes) = serves
            .iter()
            .find(|(_, nodes)| nodes.len() >= 2)
            .expect("a cache serving two nodes");
        let mut pair = nodes.iter();
        let (first, second) = (pair.next().expect("one"), pair.next().expect("two"));
        let mut client = cache_client(&node_cert(&cluster, first), &cluster, cache_index(cache));
        let (code, _) = refusal(&mut client, &format!("node/{second}"), 0).await;
        assert_eq!(
            code, "NOT_A_READER",
            "{first} reads node/{second} at {cache}"
        );

        // A cache serves no storage node; a voter serves a cache only its
        // placement, and a storage node without one nothing.
        let voter_files = TlsFiles::in_dir(&cluster.nodes[0].tls_dir);
        let mut as_voter = cache_client(&voter_files, &cluster, 0);
        let (code, _) = refusal(&mut as_voter, "trust/revocations", 0).await;
        assert_eq!(code, "CALLER_NOT_ADMITTED");
        let k1 = TlsFiles::in_dir(&cluster.caches[0].tls_dir);
        let mut k1_at_voter = rap_testkit::shards::shard_client(
            &k1,
            &cluster.nodes[1].address(),
            &cluster.nodes[1].id,
        );
        let foreign = NODES
            .iter()
            .map(|(n, _, _)| *n)
            .find(|n| !serves["k1"].contains(*n))
            .expect("a node k1 does not serve");
        let (code, _) = refusal(&mut k1_at_voter, &format!("node/{foreign}"), 0).await;
        assert_eq!(code, "NOT_A_READER", "k1 reads node/{foreign} at a voter");
        let k9 = issue(
            &cluster,
            "k9",
            &PeerIdentity::storage(cluster.cluster_id.clone(), NodeId::new("k9").expect("id"))
                .expect("storage identity"),
        );
        let mut k9_at_voter = rap_testkit::shards::shard_client(
            &k9,
            &cluster.nodes[1].address(),
            &cluster.nodes[1].id,
        );
        assert_eq!(
            refusal(&mut k9_at_voter, "cache/k9", 0).await.0,
            "NOT_FOUND"
        );
        assert_eq!(
            refusal(&mut k9_at_voter, "trust/revocations", 0).await.0,
            "NOT_A_READER"
        );

        // A new version reaches a watcher of a cache.
        let (watched, _, _) = NODES[0];
        let its_cache = serves
            .iter()
            .find(|(_, nodes)| nodes.contains(watched))
            .map(|(c, _)| c.clone())
            .expect("a cache of n1");
        let mut watcher = cache_client(
            &node_cert(&cluster, watched),
            &cluster,
            cache_index(&its_cache),
        );
        let scope = format!("node/{watched}");
        let mut stream = open_watch(&mut watcher, &[(scope.as_str(), 1)]).await;
        let version = shards.node_shard(&cluster, 0, watched, &[(ROLE, "")]).await;
        assert_eq!(next(&mut stream, &shards).await, (scope.clone(), version));

        // Placement takes a node away from a cache: its scopes go.
        let mut moved = serves.clone();
        let (shrunk, nodes) = moved
            .iter_mut()
            .find(|(_, nodes)| nodes.len() >= 2)
            .expect("a cache serving two nodes");
        let dropped = nodes.pop_first().expect("a node");
        let shrunk = shrunk.clone();
        let body = assignment(&shrunk, &moved[&shrunk]);
        shards
            .publish(&cluster, 0, &format!("cache/{shrunk}"), &[], &body)
            .await;
        let files = node_cert(&cluster, &dropped);
        let client = cache_client(&files, &cluster, cache_index(&shrunk));
        eventually(
            &format!("{shrunk} deletes node/{dropped}"),
            HANG_GUARD,
            Duration::from_millis(50),
            || {
                let mut client = client.clone();
                let scope = format!("node/{dropped}");
                async move {
                    match guarded("GetShard", client.get_shard(get(&scope, 0))).await {
                        Err(status) if code_of(&status) == "NOT_FOUND" => Some(()),
                        _ => None,
                    }
                }
            },
        )
        .await;
        // Put it back, so that every node has REPLICAS caches again.
        let body = assignment(&shrunk, &serves[&shrunk]);
        shards
            .publish(&cluster, 0, &format!("cache/{shrunk}"), &[], &body)
            .await;
        every_scope_readable(&cluster, &shards, &serves, &["k1", "k2", "k3"], true).await;

        // Any one domain's cache lost: the other two serve everything.
        for (lost, _) in CACHES {
            let index = cache_index(lost);
            cluster.kill_cache(index);
            let up: Vec<&str> = CACHES
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| *id != lost)
                .collect();
            every_scope_readable(&cluster, &shards, &serves, &up, false).await;
            cluster.start_cache(index).await;
        }

        // Domain 2 is lost: its voter and its cache.
        cluster.kill(1);
        cluster.kill_cache(cache_index("k2"));
        every_scope_readable(&cluster, &shards, &serves, &["k1", "k3"], false).await;

        // Every voter is lost: the caches go on serving what they hold,
        // and a restarted cache serves from its durable store.
        cluster.kill(0);
        cluster.kill(2);
        every_scope_readable(&cluster, &shards, &serves, &["k1", "k3"], false).await;
        let k1 = cache_index("k1");
        cluster.kill_cache(k1);
        cluster.start_cache(k1).await;
        let served: Vec<&str> = serves["k1"].iter().map(String::as_str).collect();
        for node in served {
            let mut client = cache_client(&node_cert(&cluster, node), &cluster, k1);
            let scope = format!("node/{node}");
            let answer = guarded("GetShard", client.get_shard(get(&scope, 0)))
                .await
                .unwrap_or_else(|status| panic!("{scope} from a restarted k1: {status:?}"))
                .into_inner();
            assert_eq!(answer.envelope, shards.bytes(&scope, shards.head(&scope)));
            let staleness = answer.staleness.expect("staleness");
            assert_eq!(
                staleness.partition_view,
                pb::PartitionView::Minority as i32,
                "a cache no voter confirmed says it may be stale"
            );
        }
    });
}
