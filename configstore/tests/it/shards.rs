//! `ShardService` on real storage nodes: three `rap-configstore`
//! processes (mTLS, the harness's development CA), shards sealed with the
//! genesis signing key and published through the group under a fence,
//! read by node-agent certificates minted from the same CA.
//!
//! * a node reads exactly what the envelopes' readers admit, with its
//!   roles taken from its own signed `node/<id>` shard;
//! * other caller kinds are refused by the access layer;
//! * a revoked node certificate is refused, and its open watch ends;
//! * a watch delivers new versions as they are applied, across a leader
//!   change, and resumes from the caller's known versions after the
//!   watched node restarts;
//! * a node cut off from its quorum still serves what it holds, saying
//!   `MINORITY`, and publishes nothing (`NO_QUORUM`).

use crate::bin;
use rap_core::codes::error_detail;
use rap_core::identity::PeerIdentity;
use rap_core::tls::{ClusterCa, NODE_CERT_VALIDITY_DEFAULT, TlsFiles};
use rap_proto::envelope::Digest;
use rap_proto::pb;
use rap_proto::pb::shard_service_client::ShardServiceClient;
use rap_testkit::cluster::{
    Cluster, HANG_GUARD, acquire, code_of, eventually, guarded, metric_value, publish, run,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const CLUSTER: &str = "c1";

/// A shard client of storage node `index`, presenting `files` and pinned
/// to that node's storage identity.
fn shard_client(files: &TlsFiles, cluster: &Cluster, index: usize) -> ShardServiceClient<Channel> {
    let node = &cluster.nodes[index];
    rap_testkit::shards::shard_client(files, &node.address(), &node.id)
}

/// A certificate for `identity` from the cluster's CA, in `<root>/agents/<name>`.
pub(crate) fn issue(cluster: &Cluster, name: &str, identity: &PeerIdentity) -> TlsFiles {
    let ca = ClusterCa::load(&cluster.root().join("ca")).expect("the cluster CA");
    ca.issue(
        &cluster.root().join("agents").join(name),
        identity,
        NODE_CERT_VALIDITY_DEFAULT,
        &[],
    )
    .expect("issue a certificate")
}

/// A node agent's certificate for node `id`.
pub(crate) fn node_cert(cluster: &Cluster, id: &str) -> TlsFiles {
    let ca = ClusterCa::load(&cluster.root().join("ca")).expect("the cluster CA");
    rap_testkit::shards::node_cert(&ca, &cluster.root().join("agents").join(id), id)
}

/// Publishes one version after another of each scope (sealed with the
/// genesis key, chained to the previous version).
pub(crate) struct Publisher {
    heads: BTreeMap<String, (u64, Digest)>,
    sent: BTreeMap<(String, u64), Vec<u8>>,
}

impl Publisher {
    pub(crate) fn new() -> Self {
        Publisher {
            heads: BTreeMap::new(),
            sent: BTreeMap::new(),
        }
    }

    /// Publishes the next version of `scope` with `readers` and `body`
    /// through node `via` (forwarded to the leader if need be); returns
    /// the version.
    pub(crate) async fn publish(
        &mut self,
        cluster: &Cluster,
        via: usize,
        scope: &str,
        readers: &[&str],
        body: &[u8],
    ) -> u64 {
        let (version, prev) = match self.heads.get(scope) {
            Some((version, hash)) => (version + 1, Some(*hash)),
            None => (1, None),
        };
        let term = cluster.authority_term(via).await;
        let sealed = cluster
            .sealer()
            .seal(scope, readers, version, prev, term, body);
        let mut client = cluster.client(via);
        let fence = acquire(&mut client, CLUSTER, term, "shard test")
            .await
            .expect("a fence");
        let published = publish(&mut client, fence, vec![sealed.bytes.clone()])
            .await
            .expect("publish");
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].version, version);
        self.heads
            .insert(scope.to_string(), (version, sealed.header_hash));
        self.sent.insert((scope.to_string(), version), sealed.bytes);
        version
    }

    /// The newest version published of `scope`.
    pub(crate) fn head(&self, scope: &str) -> u64 {
        self.heads
            .get(scope)
            .map(|(version, _)| *version)
            .expect("published")
    }

    /// The exact bytes published as `version` of `scope`.
    pub(crate) fn bytes(&self, scope: &str, version: u64) -> &[u8] {
        self.sent
            .get(&(scope.to_string(), version))
            .map(Vec::as_slice)
            .expect("published")
    }

    /// `node/<id>` with `roles` ((role, org) pairs; "" for no org).
    pub(crate) async fn node_shard(
        &mut self,
        cluster: &Cluster,
        via: usize,
        id: &str,
        roles: &[(&str, &str)],
    ) -> u64 {
        let reader = format!("node:{id}");
        self.publish(
            cluster,
            via,
            &format!("node/{id}"),
            &[&reader],
            &node_body(id, roles),
        )
        .await
    }

    /// `trust/revocations` listing `revoked` ((node id, serial) pairs).
    pub(crate) async fn revocations(
        &mut self,
        cluster: &Cluster,
        via: usize,
        revoked: &[(&str, &str)],
    ) -> u64 {
        let body = rap_proto::revocations::encode(
            &cluster.cluster_id,
            revoked
                .iter()
                .map(|(node, serial)| pb::RevokedCertificate {
                    node_id: node.to_string(),
                    certificate_serial: serial.to_string(),
                    revoked_at_unix_ms: 1,
                })
                .collect(),
        )
        .expect("encode the revocations");
        self.publish(cluster, via, "trust/revocations", &["all-nodes"], &body)
            .await
    }
}

/// The body of `node/<id>` with `roles` ((role, org) pairs; "" for no org).
pub(crate) fn node_body(id: &str, roles: &[(&str, &str)]) -> Vec<u8> {
    rap_proto::shards::encode(&pb::NodeShard {
        format: rap_proto::shards::SHARD_FORMAT,
        cluster_id: CLUSTER.into(),
        node_id: id.into(),
        membership_status: "active".into(),
        roles: roles
            .iter()
            .map(|(role, org)| pb::NodeRole {
                role: role.to_string(),
                org_id: org.to_string(),
            })
            .collect(),
        ..Default::default()
    })
    .expect("encode the node shard")
}

pub(crate) fn get(scope: &str, min_version: u64) -> pb::GetShardRequest {
    pb::GetShardRequest {
        cluster_id: CLUSTER.into(),
        scope: scope.into(),
        min_version,
    }
}

/// Scope and version of a served envelope.
pub(crate) fn served(response: &pb::GetShardResponse) -> (String, u64) {
    let envelope = rap_proto::envelope::decode(&response.envelope).expect("a valid envelope");
    (envelope.header.scope.to_string(), envelope.header.version.0)
}

/// GetShard of `scope` at `min_version` on `client`, retried while the
/// node has not applied it yet (`NOT_YET` / `NOT_FOUND`).
pub(crate) async fn get_applied(
    client: &mut ShardServiceClient<Channel>,
    scope: &str,
    min_version: u64,
) -> pb::GetShardResponse {
    eventually(
        &format!("{scope} v{min_version} is applied"),
        HANG_GUARD,
        Duration::from_millis(50),
        || {
            let mut client = client.clone();
            async move {
                match guarded("GetShard", client.get_shard(get(scope, min_version))).await {
                    Ok(response) => Some(response.into_inner()),
                    Err(status)
                        if ["NOT_YET", "NOT_FOUND"].contains(&code_of(&status).as_str()) =>
                    {
                        None
                    }
                    Err(status) => panic!("GetShard {scope}: {status:?}"),
                }
            }
        },
    )
    .await
}

/// The refusal code of GetShard `scope` (panics if it is answered).
pub(crate) async fn refusal(
    client: &mut ShardServiceClient<Channel>,
    scope: &str,
    min_version: u64,
) -> (String, tonic::Code) {
    let status = guarded("GetShard", client.get_shard(get(scope, min_version)))
        .await
        .expect_err(&format!("{scope} must be refused"));
    (code_of(&status), status.code())
}

async fn own_scopes(client: &mut ShardServiceClient<Channel>) -> Vec<(String, u64)> {
    let response = guarded(
        "ListOwnScopes",
        client.list_own_scopes(pb::ListOwnScopesRequest {
            cluster_id: CLUSTER.into(),
        }),
    )
    .await
    .expect("ListOwnScopes")
    .into_inner();
    assert!(!response.truncated);
    response
        .scopes
        .into_iter()
        .map(|s| (s.scope, s.version))
        .collect()
}

/// A node that is not the leader.
async fn follower(cluster: &Cluster) -> usize {
    let leader = cluster.wait_leader(&cluster.running()).await;
    (leader + 1) % cluster.nodes.len()
}

// Goal: need-to-know on reads. A node reads its own node/<id> and
// trust/revocations, is refused node/<other> with NOT_A_READER (an
// unknown scope is NOT_FOUND), reads role/<r> only once its own node
// shard lists role r, and org/<o>/services only once one of its roles
// serves org o; ListOwnScopes lists exactly the readable scopes; answers
// carry the envelope bytes exactly as published and the serving node's
// staleness; min_version above the held version is NOT_YET; another
// cluster id is WRONG_CLUSTER; refusals are counted by code in /metrics.
// Method: 3 voters; publish node/n1 (no roles), node/n2, trust/revocations,
// role/entry-node, org/acme/services; n1 reads from a follower; then
// node/n1 v2 with role entry-node, v3 adding rdp-worker for acme.
#[test]
fn a_node_reads_what_its_readers_admit() {
    run(async {
        let cluster = Cluster::launch(bin(), 3).await;
        let at = follower(&cluster).await;
        let mut shards = Publisher::new();
        shards.node_shard(&cluster, 0, "n1", &[]).await;
        shards
            .node_shard(&cluster, 0, "n2", &[("entry-node", "")])
            .await;
        shards
            .publish(
                &cluster,
                0,
                "role/entry-node",
                &["role:entry-node"],
                b"role",
            )
            .await;
        shards
            .publish(&cluster, 0, "org/acme/services", &["org:acme"], b"services")
            .await;
        // Last, so that once it is applied on the follower, all are.
        shards.revocations(&cluster, 0, &[]).await;

        let n1 = node_cert(&cluster, "n1");
        let mut client = shard_client(&n1, &cluster, at);
        // The last publication is applied here before anything is judged.
        let _ = get_applied(&mut client, "trust/revocations", 1).await;

        let own = get_applied(&mut client, "node/n1", 1).await;
        assert_eq!(
            own.envelope,
            shards.bytes("node/n1", 1),
            "served exactly as published"
        );
        assert_eq!(own.served_by_node_id, cluster.nodes[at].id);
        let staleness = own.staleness.expect("staleness");
        assert_eq!(staleness.authority_term, 1);
        assert!(!staleness.from_cache_replica);
        assert!(
            matches!(
                pb::PartitionView::try_from(staleness.partition_view),
                Ok(pb::PartitionView::Healthy | pb::PartitionView::Degraded)
            ),
            "{staleness:?}"
        );
        let revocations = get_applied(&mut client, "trust/revocations", 0).await;
        assert_eq!(revocations.envelope, shards.bytes("trust/revocations", 1));

        let denied = (String::from("NOT_A_READER"), tonic::Code::PermissionDenied);
        assert_eq!(refusal(&mut client, "node/n2", 0).await, denied);
        assert_eq!(refusal(&mut client, "role/entry-node", 0).await, denied);
        assert_eq!(refusal(&mut client, "org/acme/services", 0).await, denied);
        assert_eq!(
            refusal(&mut client, "role/relay-node", 0).await,
            ("NOT_FOUND".to_string(), tonic::Code::NotFound)
        );
        assert_eq!(
            refusal(&mut client, "node/n1", 2).await,
            ("NOT_YET".to_string(), tonic::Code::Unavailable)
        );
        assert_eq!(
            refusal(&mut client, "not a scope", 0).await.0,
            "INVALID_SCOPE"
        );
        let foreign = guarded(
            "GetShard of another cluster",
            client.get_shard(pb::GetShardRequest {
                cluster_id: "c2".into(),
                scope: "node/n1".into(),
                min_version: 0,
            }),
        )
        .await
        .expect_err("another cluster");
        assert_eq!(code_of(&foreign), "WRONG_CLUSTER");
        assert_eq!(
            own_scopes(&mut client).await,
            vec![
                ("node/n1".to_string(), 1),
                ("trust/revocations".to_string(), 1)
            ]
        );

        // Its own node shard now lists role entry-node (cluster-wide).
        shards
            .node_shard(&cluster, 0, "n1", &[("entry-node", "")])
            .await;
        let _ = get_applied(&mut client, "node/n1", 2).await;
        let role = get_applied(&mut client, "role/entry-node", 0).await;
        assert_eq!(role.envelope, shards.bytes("role/entry-node", 1));
        assert_eq!(refusal(&mut client, "org/acme/services", 0).await, denied);
        assert_eq!(refusal(&mut client, "node/n2", 0).await, denied);

        // One of its roles serves acme.
        shards
            .node_shard(
                &cluster,
                0,
                "n1",
                &[("entry-node", ""), ("rdp-worker", "acme")],
            )
            .await;
        let _ = get_applied(&mut client, "node/n1", 3).await;
        let services = get_applied(&mut client, "org/acme/services", 0).await;
        assert_eq!(services.envelope, shards.bytes("org/acme/services", 1));
        assert_eq!(
            own_scopes(&mut client).await,
            vec![
                ("node/n1".to_string(), 3),
                ("org/acme/services".to_string(), 1),
                ("role/entry-node".to_string(), 1),
                ("trust/revocations".to_string(), 1),
            ]
        );
        // n2's reader is its own shard's: entry-node, no org.
        let mut n2 = shard_client(&node_cert(&cluster, "n2"), &cluster, at);
        let _ = get_applied(&mut n2, "role/entry-node", 0).await;
        assert_eq!(refusal(&mut n2, "org/acme/services", 0).await, denied);
        assert_eq!(refusal(&mut n2, "node/n1", 0).await, denied);

        let (code, body) = cluster.http(at, "/metrics").await;
        assert_eq!(code, 200);
        for reason in ["NOT_A_READER", "NOT_FOUND", "NOT_YET", "WRONG_CLUSTER"] {
            let count =
                metric_value(&body, "rap_refusals_total", &[("reason", reason)]).unwrap_or(0.0);
            assert!(count >= 1.0, "{reason} counted: {count}");
        }
    });
}

// Goal: only node agents (and cache replicas, for their placement) may
// call ShardService: an operator's and the control plane's certificates
// of this very cluster are refused by the access layer
// (CALLER_NOT_ADMITTED) on GetShard, ListOwnScopes and WatchShards,
// though the scope exists and admits all nodes; a storage node's
// certificate is refused ListOwnScopes by the layer and, with no
// `cache/<id>` assignment, every scope by the handler (NOT_A_READER); a
// node certificate is served the same scope.
// Method: 3 voters, trust/revocations published; each certificate calls
// each RPC on one node.
#[test]
fn other_caller_kinds_are_refused() {
    run(async {
        let cluster = Cluster::launch(bin(), 3).await;
        let mut shards = Publisher::new();
        shards.revocations(&cluster, 0, &[]).await;
        let mut node = shard_client(&node_cert(&cluster, "n1"), &cluster, 0);
        let _ = get_applied(&mut node, "trust/revocations", 1).await;

        let storage = TlsFiles::in_dir(&cluster.nodes[1].tls_dir);
        let operator = TlsFiles::in_dir(&cluster.admin_tls_dir);
        let control_plane = issue(
            &cluster,
            "controlplane",
            &PeerIdentity::control_plane(cluster.cluster_id.clone()),
        );
        for (who, files) in [
            ("storage", &storage),
            ("operator", &operator),
            ("controlplane", &control_plane),
        ] {
            let mut client = shard_client(files, &cluster, 0);
            // A storage node passes the layer on the reads a cache replica
            // fills itself with, and is then refused its missing placement.
            let read_code = if who == "storage" {
                "NOT_A_READER"
            } else {
                "CALLER_NOT_ADMITTED"
            };
            let get = guarded("GetShard", client.get_shard(get("trust/revocations", 0)))
                .await
                .expect_err(who);
            assert_eq!(code_of(&get), read_code, "{who}: {get:?}");
            assert_eq!(get.code(), tonic::Code::PermissionDenied, "{who}");
            let list = guarded(
                "ListOwnScopes",
                client.list_own_scopes(pb::ListOwnScopesRequest {
                    cluster_id: CLUSTER.into(),
                }),
            )
            .await
            .expect_err(who);
            assert_eq!(code_of(&list), "CALLER_NOT_ADMITTED", "{who}: {list:?}");
            let watch = guarded(
                "WatchShards",
                client.watch_shards(pb::WatchShardsRequest {
                    cluster_id: CLUSTER.into(),
                    known: vec![pb::ScopeVersion {
                        scope: "trust/revocations".into(),
                        version: 0,
                    }],
                }),
            )
            .await
            .expect_err(who);
            assert_eq!(code_of(&watch), read_code, "{who}: {watch:?}");
        }
    });
}

// Goal: a revoked node certificate reads nothing more: once
// trust/revocations lists its serial, GetShard is CERTIFICATE_REVOKED,
// a watch it opened before ends with CERTIFICATE_REVOKED, and another
// node's certificate is still served.
// Method: 3 voters; n1 reads node/n1 and opens a watch; trust/revocations
// is published with n1's serial; n1 and n2 call again.
#[test]
fn a_revoked_node_certificate_is_refused() {
    run(async {
        let cluster = Cluster::launch(bin(), 3).await;
        let at = follower(&cluster).await;
        let mut shards = Publisher::new();
        shards.node_shard(&cluster, 0, "n1", &[]).await;
        shards.node_shard(&cluster, 0, "n2", &[]).await;
        let n1 = node_cert(&cluster, "n1");
        let mut client = shard_client(&n1, &cluster, at);
        let _ = get_applied(&mut client, "node/n1", 1).await;
        let mut watch = guarded(
            "WatchShards",
            client.watch_shards(pb::WatchShardsRequest {
                cluster_id: CLUSTER.into(),
                known: vec![pb::ScopeVersion {
                    scope: "node/n1".into(),
                    version: 1,
                }],
            }),
        )
        .await
        .expect("watch")
        .into_inner();

        let serial = n1.facts().expect("facts").serial_hex;
        shards.revocations(&cluster, 0, &[("n1", &serial)]).await;

        let ended = guarded("the watch ends", watch.message())
            .await
            .expect_err("the watch ends with a refusal");
        assert_eq!(code_of(&ended), "CERTIFICATE_REVOKED", "{ended:?}");
        eventually(
            "n1 is refused as revoked",
            HANG_GUARD,
            Duration::from_millis(50),
            || {
                let mut client = client.clone();
                async move {
                    let status = client.get_shard(get("node/n1", 0)).await.err()?;
                    (code_of(&status) == "CERTIFICATE_REVOKED").then_some(())
                }
            },
        )
        .await;
        let mut n2 = shard_client(&node_cert(&cluster, "n2"), &cluster, at);
        let own = get_applied(&mut n2, "node/n2", 1).await;
        assert_eq!(own.envelope, shards.bytes("node/n2", 1));
    });
}

/// The next message of a watch: (scope, version), with the exact bytes
/// checked against what was published.
pub(crate) async fn next(
    stream: &mut tonic::Streaming<pb::GetShardResponse>,
    shards: &Publisher,
) -> (String, u64) {
    let message = guarded("the next watched version", stream.message())
        .await
        .expect("the watch goes on")
        .expect("the watch is not closed");
    let (scope, version) = served(&message);
    assert_eq!(message.envelope, shards.bytes(&scope, version));
    (scope, version)
}

pub(crate) async fn open_watch(
    client: &mut ShardServiceClient<Channel>,
    known: &[(&str, u64)],
) -> tonic::Streaming<pb::GetShardResponse> {
    guarded(
        "WatchShards",
        client.watch_shards(pb::WatchShardsRequest {
            cluster_id: CLUSTER.into(),
            known: known
                .iter()
                .map(|(scope, version)| pb::ScopeVersion {
                    scope: scope.to_string(),
                    version: *version,
                })
                .collect(),
        }),
    )
    .await
    .expect("watch")
    .into_inner()
}

// Goal: WatchShards sends what the caller lacks, then every newer version
// as it is applied, never leaving the watcher behind the newest: a version
// held at the start, versions published after the watch began, a scope
// that did not exist when the watch began, two versions published back to
// back (the stream ends at the newer), a version published after the
// leader was killed (same stream); after the watched node is killed and
// restarted, a new watch with the known versions sends exactly what was
// published meanwhile and nothing already known.
// Method: 3 voters; n1 watches node/n1 and trust/revocations on a
// follower; publications through the leader; kill -9 of the leader, then
// of the watched node, restart, watch again with the versions received.
#[test]
fn watch_delivers_new_versions_and_resumes() {
    run(async {
        let mut cluster = Cluster::launch(bin(), 3).await;
        let leader = cluster.wait_leader(&cluster.all()).await;
        let at = (leader + 1) % 3;
        let mut shards = Publisher::new();
        shards.node_shard(&cluster, leader, "n1", &[]).await;
        let n1 = node_cert(&cluster, "n1");
        let mut client = shard_client(&n1, &cluster, at);
        let _ = get_applied(&mut client, "node/n1", 1).await;
        let mut stream = open_watch(&mut client, &[("node/n1", 0), ("trust/revocations", 0)]).await;
        assert_eq!(next(&mut stream, &shards).await, ("node/n1".into(), 1));

        shards
            .node_shard(&cluster, leader, "n1", &[("a", "")])
            .await;
        assert_eq!(next(&mut stream, &shards).await, ("node/n1".into(), 2));
        shards.revocations(&cluster, leader, &[]).await;
        assert_eq!(
            next(&mut stream, &shards).await,
            ("trust/revocations".into(), 1)
        );

        // Two versions back to back: whatever the stream sends in
        // between, it ends at the newer one, in increasing order.
        shards
            .node_shard(&cluster, leader, "n1", &[("b", "")])
            .await;
        shards
            .node_shard(&cluster, leader, "n1", &[("c", "")])
            .await;
        let mut last = 2;
        while last < 4 {
            let (scope, version) = next(&mut stream, &shards).await;
            assert_eq!(scope, "node/n1");
            assert!(version > last, "v{version} after v{last}");
            last = version;
        }

        // The leader dies; the watched follower keeps its stream.
        cluster.kill(leader);
        let new_leader = cluster.wait_leader(&cluster.running()).await;
        shards
            .node_shard(&cluster, new_leader, "n1", &[("d", "")])
            .await;
        assert_eq!(next(&mut stream, &shards).await, ("node/n1".into(), 5));
        cluster.start(leader).await;

        // The watched node dies: the stream ends; a version is published
        // while it is down.
        cluster.kill(at);
        let ended = guarded("the stream ends", stream.message()).await;
        assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");
        let others: Vec<usize> = cluster.running();
        let leader = cluster.wait_leader(&others).await;
        shards
            .node_shard(&cluster, leader, "n1", &[("e", "")])
            .await;
        cluster.start(at).await;

        // Resume with what was received: only node/n1 v6 is new.
        let mut client = shard_client(&n1, &cluster, at);
        let _ = get_applied(&mut client, "node/n1", 6).await;
        let mut stream = open_watch(&mut client, &[("node/n1", 5), ("trust/revocations", 1)]).await;
        assert_eq!(next(&mut stream, &shards).await, ("node/n1".into(), 6));
        shards.revocations(&cluster, leader, &[]).await;
        assert_eq!(
            next(&mut stream, &shards).await,
            ("trust/revocations".into(), 2)
        );
    });
}

/// Asserts that `result` is a `NO_QUORUM` refusal (gRPC `UNAVAILABLE` with
/// an `ErrorDetail`) from a node that reaches only itself of 3 voters.
fn expect_no_quorum<T: std::fmt::Debug>(what: &str, result: Result<T, tonic::Status>) {
    let status = result.expect_err(&format!("{what} in a minority must be refused"));
    assert_eq!(
        status.code(),
        tonic::Code::Unavailable,
        "{what}: {status:?}"
    );
    let detail = error_detail(&status)
        .unwrap_or_else(|| panic!("{what}: no rap.v1.ErrorDetail in {status:?}"));
    assert_eq!(detail.code, "NO_QUORUM", "{what}: {status:?}");
    assert_eq!(
        (detail.reachable_voters, detail.total_voters),
        (1, 3),
        "{what}: {detail:?}"
    );
}

// Goal: a storage node cut off from its quorum keeps serving the shards it
// holds and says so, while nothing is published through it: GetShard by a
// node certificate answers the bytes published before the cut with
// Staleness.partition_view = MINORITY (and the term it knew), ListOwnScopes
// answers too; AcquireFence and PublishShards (under a fence granted
// before the cut) are refused with NO_QUORUM, 1 of 3 voters reachable,
// without hanging (hang guard; the time is printed, not asserted), and
// the refused publication changes nothing it serves. Once the other
// voters are back, a publication goes through again and the survivor
// serves it, and its view leaves minority.
// Method: 3 voters; node/n1 and trust/revocations published through the
// leader; n1 reads them at a follower (the survivor); a fence is taken;
// kill -9 of the leader and the other follower; wait until the survivor's
// Status says minority; n1 reads at the survivor; AcquireFence, then
// PublishShards of node/n1 v2 under the earlier fence, at the survivor;
// n1 reads v1 again; restart both, wait for a leader, publish node/n1 v2
// through it, n1 reads v2 at the survivor.
#[test]
fn a_minority_serves_reads_and_refuses_publishes() {
    run(async {
        let mut cluster = Cluster::launch(bin(), 3).await;
        let leader = cluster.wait_leader(&cluster.all()).await;
        let survivor = (leader + 1) % 3;
        let mut shards = Publisher::new();
        shards.node_shard(&cluster, leader, "n1", &[]).await;
        shards.revocations(&cluster, leader, &[]).await;
        let n1 = node_cert(&cluster, "n1");
        let mut client = shard_client(&n1, &cluster, survivor);
        let _ = get_applied(&mut client, "trust/revocations", 1).await;
        let _ = get_applied(&mut client, "node/n1", 1).await;
        let term = cluster.authority_term(survivor).await;
        let mut writes = cluster.client(survivor);
        let earlier = acquire(&mut writes, CLUSTER, term, "before the cut")
            .await
            .expect("a fence with every voter up");

        for index in cluster.all() {
            if index != survivor {
                cluster.kill(index);
            }
        }
        crate::minority::wait_minority(&cluster, survivor).await;

        // Reads: served from what the survivor holds, saying minority.
        let own = guarded(
            "GetShard in a minority",
            client.get_shard(get("node/n1", 1)),
        )
        .await
        .expect("a minority serves what it holds")
        .into_inner();
        assert_eq!(own.envelope, shards.bytes("node/n1", 1));
        assert_eq!(own.served_by_node_id, cluster.nodes[survivor].id);
        let staleness = own.staleness.expect("staleness");
        assert_eq!(
            pb::PartitionView::try_from(staleness.partition_view),
            Ok(pb::PartitionView::Minority),
            "{staleness:?}"
        );
        assert_eq!(staleness.authority_term, term);
        assert!(!staleness.from_cache_replica);
        assert_eq!(
            own_scopes(&mut client).await,
            vec![
                ("node/n1".to_string(), 1),
                ("trust/revocations".to_string(), 1)
            ]
        );

        // Writes: refused at once with NO_QUORUM.
        let started = Instant::now();
        let fence = acquire(&mut writes, CLUSTER, term, "in a minority").await;
        let fence_took = started.elapsed();
        expect_no_quorum("AcquireFence", fence);
        let (v1, prev) = shards.heads["node/n1"];
        let sealed = cluster.sealer().seal(
            "node/n1",
            &["node:n1"],
            v1 + 1,
            Some(prev),
            term,
            &node_body("n1", &[("entry-node", "")]),
        );
        let started = Instant::now();
        let published = publish(&mut writes, earlier, vec![sealed.bytes]).await;
        let publish_took = started.elapsed();
        expect_no_quorum("PublishShards", published);
        eprintln!(
            "minority: AcquireFence refused after {fence_took:?}, PublishShards after {publish_took:?} (not bounds)"
        );
        let again = guarded(
            "GetShard in a minority",
            client.get_shard(get("node/n1", 0)),
        )
        .await
        .expect("still served")
        .into_inner();
        assert_eq!(served(&again), ("node/n1".to_string(), 1));

        // The quorum is back: publications go through and are served.
        cluster.start_all().await;
        let leader = cluster.wait_leader(&cluster.all()).await;
        let version = shards
            .node_shard(&cluster, leader, "n1", &[("entry-node", "")])
            .await;
        assert_eq!(version, 2);
        let newer = get_applied(&mut client, "node/n1", 2).await;
        let applied = Instant::now();
        assert_eq!(newer.envelope, shards.bytes("node/n1", 2));
        // The view follows the reachability the node observes, which may
        // lag the first apply by a moment: it must leave minority.
        let staleness = eventually(
            "the survivor no longer says minority",
            HANG_GUARD,
            Duration::from_millis(50),
            || {
                let mut client = client.clone();
                async move {
                    let response = guarded("GetShard", client.get_shard(get("node/n1", 2)))
                        .await
                        .expect("served")
                        .into_inner();
                    let staleness = response.staleness.expect("staleness");
                    (staleness.partition_view != pb::PartitionView::Minority as i32)
                        .then_some(staleness)
                }
            },
        )
        .await;
        eprintln!(
            "minority: v2 served at the survivor with view {:?}; minority left {:?} later",
            pb::PartitionView::try_from(newer.staleness.expect("staleness").partition_view),
            applied.elapsed()
        );
        assert!(
            matches!(
                pb::PartitionView::try_from(staleness.partition_view),
                Ok(pb::PartitionView::Healthy | pb::PartitionView::Degraded)
            ),
            "{staleness:?}"
        );
    });
}
