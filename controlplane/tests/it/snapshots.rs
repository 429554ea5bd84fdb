//! Config distribution, control-plane side: need-to-know compilation,
//! deterministic bytes, dirty marks, publication under a fence, and a
//! publish whose commit fails, against a real PostgreSQL and a real
//! 3-voter authority group.

use rap_controlplane::error::Error;
use rap_controlplane::snapshots::compile::{ClusterRows, Compiler};
use rap_controlplane::{db, orgs, roles, snapshots};
use rap_proto::envelope::{Reader, decode};
use rap_proto::ids::ClusterId;
use rap_proto::pb;
use rap_proto::shards::{self, node_reader};
use rap_testkit::platform::Platform;
use std::collections::{BTreeMap, BTreeSet};

const CAPABILITIES: &[&str] = &[
    "can_route_mesh",
    "can_accept_client_ingress",
    "can_run_rdp_worker",
];

async fn assign(p: &Platform, node: &str, role: &str, org: &str) {
    roles::assign(
        &p.ctx,
        &p.owner,
        &pb::AssignRoleRequest {
            cluster_id: p.cluster.clone(),
            node_id: node.to_string(),
            role: role.to_string(),
            org_id: org.to_string(),
        },
    )
    .await
    .unwrap();
}

async fn org(p: &Platform, org_id: &str, endpoint: &str, role: &str) {
    orgs::create_org(
        &p.ctx,
        &p.owner,
        &pb::CreateOrganizationRequest {
            org_id: org_id.to_string(),
            name: org_id.to_string(),
        },
    )
    .await
    .unwrap();
    orgs::add_endpoint(
        &p.ctx,
        &p.owner,
        &pb::AddOrgEndpointRequest {
            org_id: org_id.to_string(),
            cluster_id: p.cluster.clone(),
            name: endpoint.to_string(),
            kind: "egress".to_string(),
            role: role.to_string(),
        },
    )
    .await
    .unwrap();
}

async fn publish(p: &Platform, scopes: &[&str]) -> Result<Vec<pb::ScopePublication>, Error> {
    snapshots::publish(
        &p.ctx,
        &p.owner,
        &pb::PublishSnapshotRequest {
            cluster_id: p.cluster.clone(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        },
    )
    .await
    .map(|r| r.published)
}

/// The group's newest envelope of every scope, decoded, by scope.
async fn group_shards(p: &Platform) -> BTreeMap<String, rap_proto::envelope::DecodedEnvelope> {
    let peers = p.storage_peers().await;
    let all = p
        .ctx
        .authority
        .shard_heads(&p.cluster, &peers, Vec::new(), false)
        .await
        .unwrap();
    let scopes = all.heads.into_iter().map(|h| h.scope).collect();
    p.ctx
        .authority
        .shard_heads(&p.cluster, &peers, scopes, true)
        .await
        .unwrap()
        .heads
        .into_iter()
        .map(|h| (h.scope.clone(), decode(&h.envelope).unwrap()))
        .collect()
}

async fn rotate(p: &Platform) -> pb::RotateSigningKeyResponse {
    snapshots::rotate_signing_key(
        &p.ctx,
        &p.owner,
        &pb::RotateSigningKeyRequest {
            cluster_id: p.cluster.clone(),
        },
    )
    .await
    .unwrap()
}

async fn dirty(p: &Platform) -> BTreeSet<String> {
    let mut conn = p.ctx.pool.acquire().await.unwrap();
    db::snapshots::dirty(&mut conn, &p.cluster, 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|mark| mark.scope)
        .collect()
}

// Goal: a scope marked again while a publication ran (after its marks were
// read) stays dirty when that publication unmarks what it read, so the
// later change is published too; a bootstrap marks the all-nodes scopes
// (every node's readable scopes name them). Method: after the bootstrap's
// marks are published, mark, read the marks, mark the
// same scope again in another transaction, unmark with the marks read
// first; the scope is still dirty; unmarking with fresh marks clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_marked_again_during_a_publication_stays_dirty() {
    let p = Platform::start().await;
    // The bootstrap marked the all-nodes scopes; publish them first.
    assert_eq!(
        dirty(&p).await,
        BTreeSet::from(["trust/revocations".to_string(), "trust/root".to_string()])
    );
    snapshots::publish_cluster(&p.ctx, &p.cluster, false)
        .await
        .unwrap();
    assert!(dirty(&p).await.is_empty());
    let scope = vec!["trust/root".to_string()];
    let mut conn = p.ctx.pool.acquire().await.unwrap();
    db::snapshots::mark_dirty(&mut conn, &p.cluster, &scope)
        .await
        .unwrap();
    let read = db::snapshots::dirty(&mut conn, &p.cluster, 10)
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    db::snapshots::mark_dirty(&mut conn, &p.cluster, &scope)
        .await
        .unwrap();
    db::snapshots::unmark(&mut conn, &p.cluster, &read)
        .await
        .unwrap();
    assert_eq!(dirty(&p).await, BTreeSet::from(["trust/root".to_string()]));
    let fresh = db::snapshots::dirty(&mut conn, &p.cluster, 10)
        .await
        .unwrap();
    db::snapshots::unmark(&mut conn, &p.cluster, &fresh)
        .await
        .unwrap();
    assert!(dirty(&p).await.is_empty());
}

// Goal (issue 10 "Need-to-know"): in a 20-node cluster with mixed roles and
// two organizations, every node can read exactly the scopes it needs, and
// the bodies carry nothing beyond what their readers need.
// Method: 5 relay, 5 entry, 5 rdp workers for org a, 5 for org b; publish
// everything; for every node, build its reader from its own signed node
// shard and check which of the group's envelopes admit it against the
// expected set (and against the node shard's own list); then check the
// contents: no other org in an org shard, peers only for mesh nodes and
// only mesh peers in them, no topology in role shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_reads_exactly_what_it_needs() {
    let p = Platform::start().await;
    let mut nodes = Vec::new();
    for _ in 0..20 {
        nodes.push(p.enroll(CAPABILITIES).await);
    }
    org(&p, "org-a", "office-a", "rdp-worker").await;
    org(&p, "org-b", "office-b", "rdp-worker").await;
    let mut expected_roles: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let (role, org) = match i / 5 {
            0 => ("relay-node", ""),
            1 => ("entry-node", ""),
            2 => ("rdp-worker", "org-a"),
            _ => ("rdp-worker", "org-b"),
        };
        assign(&p, node, role, org).await;
        expected_roles.insert(node.as_str(), (role, org));
    }
    let published = publish(&p, &[]).await.unwrap();
    // 20 node + 10 peers + 3 roles + 2 orgs + revocations + root.
    assert_eq!(published.len(), 37, "{published:?}");
    assert!(dirty(&p).await.is_empty(), "publishing unmarks");

    let shards = group_shards(&p).await;
    let cluster = ClusterId::new(p.cluster.as_str()).unwrap();
    let mesh: BTreeSet<&str> = nodes[..10].iter().map(String::as_str).collect();
    for node in &nodes {
        let (role, org) = expected_roles[node.as_str()];
        let own = &shards[&format!("node/{node}")];
        let body: pb::NodeShard = shards::decode(&own.body, &cluster).unwrap();
        let reader = node_reader(&body).unwrap();
        let readable: BTreeSet<String> = shards
            .iter()
            .filter(|(_, e)| reader.is_admitted(&e.header.readers))
            .map(|(scope, _)| scope.clone())
            .collect();
        let mut expected: BTreeSet<String> = [
            format!("node/{node}"),
            format!("role/{role}"),
            "trust/revocations".to_string(),
            "trust/root".to_string(),
        ]
        .into();
        if mesh.contains(node.as_str()) {
            expected.insert(format!("peers/{node}"));
        }
        if !org.is_empty() {
            expected.insert(format!("org/{org}/services"));
        }
        assert_eq!(readable, expected, "what {node} can read");
        assert_eq!(
            body.readable_scopes
                .iter()
                .cloned()
                .collect::<BTreeSet<_>>(),
            expected,
            "what {node}'s own shard says it can read"
        );
        assert_eq!(body.roles.len(), 1);
        assert!(body.storage_endpoints.len() >= 3, "voters listed");
    }
    // A storage node is admitted to everything it holds.
    let storage = Reader::StorageNode {
        node_id: rap_proto::ids::NodeId::new("s1").unwrap(),
    };
    assert!(
        shards
            .values()
            .all(|e| storage.is_admitted(&e.header.readers))
    );

    // Contents: an org shard names its own org's endpoints only.
    let org_a: pb::OrgServicesShard =
        shards::decode(&shards["org/org-a/services"].body, &cluster).unwrap();
    assert_eq!(org_a.endpoints.len(), 1);
    assert_eq!(org_a.endpoints[0].name, "office-a");
    assert_eq!(org_a.serving_roles, ["rdp-worker"]);
    // Peers only between mesh nodes; a worker has no peers scope at all.
    for node in &nodes[..10] {
        let peers: pb::PeersShard =
            shards::decode(&shards[&format!("peers/{node}")].body, &cluster).unwrap();
        let listed: BTreeSet<&str> = peers.peers.iter().map(|x| x.node_id.as_str()).collect();
        let others: BTreeSet<&str> = mesh.iter().copied().filter(|m| m != node).collect();
        assert_eq!(listed, others, "peers of {node}");
    }
    for node in &nodes[10..] {
        assert!(!shards.contains_key(&format!("peers/{node}")));
    }
    // A role shard says nothing about who holds the role.
    let relay: pb::RoleShard = shards::decode(&shards["role/relay-node"].body, &cluster).unwrap();
    assert_eq!(relay.required_capability, "can_route_mesh");
    let rdp: pb::RoleShard = shards::decode(&shards["role/rdp-worker"].body, &cluster).unwrap();
    assert_eq!(
        rdp.endpoints.len(),
        2,
        "both orgs' endpoints served by the role"
    );
    for (scope, envelope) in &shards {
        if !scope.starts_with("node/") && !scope.starts_with("peers/") {
            for node in &nodes[10..] {
                let text = String::from_utf8_lossy(&envelope.body);
                assert!(!text.contains(node.as_str()), "{scope} names worker {node}");
            }
        }
    }
}

// Goal (issue 10 "Determinism", "marks only the scopes it touches"): the
// same database state compiles to the same bytes; a second publication
// publishes nothing; one role change marks exactly its scopes and
// publishes only those.
// Method: compile twice from two reads and compare every body; publish
// twice; assign one mesh role and compare the dirty set and what the
// publisher publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_state_same_bytes_and_changes_touch_only_their_scopes() {
    let p = Platform::start().await;
    let relay = p.enroll(CAPABILITIES).await;
    let other = p.enroll(CAPABILITIES).await;
    let worker = p.enroll(CAPABILITIES).await;
    assign(&p, &relay, "relay-node", "").await;
    assign(&p, &worker, "rdp-worker", "").await;
    let cluster = ClusterId::new(p.cluster.as_str()).unwrap();
    let compile_all = async || {
        let mut conn = p.ctx.pool.acquire().await.unwrap();
        let compiler = Compiler::new(ClusterRows::load(&mut conn, &cluster).await.unwrap());
        compiler
            .scopes()
            .unwrap()
            .iter()
            .map(|scope| {
                (
                    scope.to_string(),
                    compiler.compile(scope).unwrap().unwrap().body,
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    let first = compile_all().await;
    let second = compile_all().await;
    assert_eq!(first, second);
    assert!(first.len() >= 7, "{:?}", first.keys());

    let published = publish(&p, &[]).await.unwrap();
    assert_eq!(published.len(), first.len());
    assert!(published.iter().all(|s| s.version == 1));
    assert_eq!(publish(&p, &[]).await.unwrap(), [], "nothing changed");

    assign(&p, &other, "relay-node", "").await;
    let expected: BTreeSet<String> = [
        format!("node/{other}"),
        format!("peers/{other}"),
        format!("peers/{relay}"),
        "role/relay-node".to_string(),
    ]
    .into();
    assert_eq!(dirty(&p).await, expected);
    let republished: BTreeSet<String> = snapshots::publish_cluster(&p.ctx, &p.cluster, false)
        .await
        .unwrap()
        .published
        .into_iter()
        .map(|s| s.scope)
        .collect();
    // role/relay-node's body does not name its holders: unchanged.
    let changed: BTreeSet<String> = expected
        .iter()
        .filter(|s| s.as_str() != "role/relay-node")
        .cloned()
        .collect();
    assert_eq!(republished, changed);
    assert!(dirty(&p).await.is_empty());
    assert!(!republished.contains(&format!("node/{worker}")));
}

// Goal (issue 10 "Wedge"): a publish that the group accepted but whose
// PostgreSQL commit failed is followed by a successful publish of the same
// scope, with the next version and the committed content.
// Method: a deferred trigger makes the commit of any publication fail;
// revoke a node (its transaction publishes trust/revocations v1, then fails
// to commit); drop the trigger; revoke again: the group's head chains on,
// PostgreSQL records the new version, and nothing was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_commit_fails_does_not_wedge_the_scope() {
    let p = Platform::start().await;
    let node = p.enroll(CAPABILITIES).await;
    sqlx::raw_sql(
        "CREATE FUNCTION fail_publication() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'injected commit failure'; END $$;
         CREATE CONSTRAINT TRIGGER fail_publication AFTER INSERT ON snapshot_publications
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_publication();",
    )
    .execute(&p.ctx.pool)
    .await
    .unwrap();
    let request = pb::RevokeNodeRequest {
        cluster_id: p.cluster.clone(),
        node_id: node.clone(),
        reason: "test".into(),
    };
    let revoke = || rap_controlplane::nodes::revoke(&p.ctx, &p.owner, &request);
    revoke().await.expect_err("the commit fails");
    let peers = p.storage_peers().await;
    let head = |scope: &'static str| {
        let peers = peers.clone();
        let p = &p;
        async move {
            p.ctx
                .authority
                .shard_heads(&p.cluster, &peers, vec![scope.to_string()], false)
                .await
                .unwrap()
                .heads
                .into_iter()
                .next()
        }
    };
    let orphan = head("trust/revocations")
        .await
        .expect("the group accepted v1");
    assert_eq!(orphan.version, 1);
    assert_eq!(
        p.count("SELECT count(*) FROM snapshot_publications").await,
        0,
        "PostgreSQL recorded nothing"
    );
    assert_eq!(
        p.count("SELECT count(*) FROM node_identities WHERE identity_status = 'revoked'")
            .await,
        0,
        "the revocation rolled back"
    );

    sqlx::raw_sql("DROP TRIGGER fail_publication ON snapshot_publications")
        .execute(&p.ctx.pool)
        .await
        .unwrap();
    revoke()
        .await
        .expect("the next publish of the scope succeeds");
    let head = head("trust/revocations").await.unwrap();
    assert_eq!(head.version, 2, "chained onto the orphan");
    let mut conn = p.ctx.pool.acquire().await.unwrap();
    let latest = db::snapshots::latest(&mut conn, &p.cluster, "trust/revocations")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.version, 2);
    assert_eq!(latest.header_hash, head.header_hash);
    let envelope = db::snapshots::latest_envelope(&mut conn, &p.cluster, "trust/revocations")
        .await
        .unwrap()
        .unwrap();
    let list = rap_proto::revocations::decode(
        &decode(&envelope).unwrap().body,
        &ClusterId::new(p.cluster.as_str()).unwrap(),
    )
    .unwrap();
    assert_eq!(list.revoked.len(), 1);
    assert_eq!(list.revoked[0].node_id, node);
}

// Goal: only platform principals publish, read or list shards or rotate
// the signing key; a refusal is typed, publishes nothing and is audited.
// Method: an org admin calls all four; then check the group holds no
// shard, no key generation was recorded, and the audit rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_admin_cannot_publish_read_list_or_rotate() {
    let p = Platform::start().await;
    p.enroll(CAPABILITIES).await;
    let admin = p.principal("org-admin", Some("acme")).await;
    let refused = snapshots::publish(
        &p.ctx,
        &admin,
        &pb::PublishSnapshotRequest {
            cluster_id: p.cluster.clone(),
            scopes: Vec::new(),
        },
    )
    .await
    .expect_err("org admin publishes");
    assert_eq!(refused.code(), "PERMISSION_DENIED");
    let refused = snapshots::get(
        &p.ctx,
        &admin,
        &pb::GetSnapshotRequest {
            cluster_id: p.cluster.clone(),
            scope: "trust/root".into(),
        },
    )
    .await
    .expect_err("org admin reads");
    assert_eq!(refused.code(), "PERMISSION_DENIED");
    let refused = snapshots::list(
        &p.ctx,
        &admin,
        &pb::ListSnapshotsRequest {
            cluster_id: p.cluster.clone(),
            page: None,
        },
    )
    .await
    .expect_err("org admin lists");
    assert_eq!(refused.code(), "PERMISSION_DENIED");
    let refused = snapshots::rotate_signing_key(
        &p.ctx,
        &admin,
        &pb::RotateSigningKeyRequest {
            cluster_id: p.cluster.clone(),
        },
    )
    .await
    .expect_err("org admin rotates");
    assert_eq!(refused.code(), "PERMISSION_DENIED");
    assert!(group_shards(&p).await.is_empty(), "nothing published");
    assert_eq!(
        p.count("SELECT count(*) FROM cluster_trust_roots").await,
        0,
        "no generation recorded"
    );
    let keys_dir = rap_controlplane::keys::ClusterKeys::dir_for(
        &p.ctx.keys_dir,
        &ClusterId::new(p.cluster.as_str()).unwrap(),
    );
    assert!(!keys_dir.join("signing-g2.key").exists(), "no key written");
    for action in [
        "snapshot.publish",
        "snapshot.get",
        "snapshot.list",
        "cluster.rotate-signing-key",
    ] {
        let events = p.audit_events(action).await;
        assert_eq!(events.len(), 1, "{action}: {events:?}");
        assert_eq!(events[0].0, "refused");
    }
    // A scope that is not one is refused before anything happens.
    let bad = publish(&p, &["nodes/x"]).await.expect_err("bad scope");
    assert_eq!(bad.code(), "INVALID_ARGUMENT");
}

// Goal (issue 10 "Signing-key rotation"): `RotateSigningKey` moves every
// shard to trust generation 2 (root 2 signed by generation 1), publishes
// the chain as trust/root, and from then on the group refuses envelopes of
// the retired key; a reader that pinned genesis follows the chain from the
// trust/root envelope alone and accepts the re-signed shards; a second
// rotation goes on to generation 3, and ordinary publications afterwards
// are signed under the group's generation.
// Method: a real group; a file-backed reader verifier opened with the
// genesis root; rotate; check every head's generation, the reader, an
// old-key envelope published under a fence, the audit row, a second
// rotation and a role change published by the dirty pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_signing_key_re_signs_everything_and_retires_the_old_key() {
    use rap_proto::envelope::{Scope, ShardDraft, seal};
    use rap_proto::ids::{AuthorityTerm, NodeId, SnapshotVersion, TrustGeneration};
    use rap_proto::time::UnixMillis;

    let p = Platform::start().await;
    let node = p.enroll(CAPABILITIES).await;
    publish(&p, &[]).await.unwrap();
    let cluster = ClusterId::new(p.cluster.as_str()).unwrap();
    let (_marks, mut reader) = p.genesis_verifier().await;
    let me = Reader::Node {
        node_id: NodeId::new(node.as_str()).unwrap(),
        roles: Vec::new(),
        orgs: Vec::new(),
    };
    let node_scope: Scope = format!("node/{node}").parse().unwrap();
    let before = group_shards(&p).await;
    reader
        .verify(
            &encoded(&before[&node_scope.to_string()]),
            &node_scope,
            &me,
            UnixMillis::now(),
        )
        .expect("generation 1 shard");

    let rotated = rotate(&p).await;
    assert_eq!(rotated.trust_generation, 2);
    assert_eq!(rotated.republished as usize, before.len());
    let after = group_shards(&p).await;
    assert_eq!(after.len(), before.len());
    for (scope, envelope) in &after {
        assert_eq!(
            envelope.header.trust_generation,
            TrustGeneration(2),
            "{scope}"
        );
    }
    let events = p.audit_events("cluster.rotate-signing-key").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "ok");

    // The reader follows the chain from the trust/root envelope itself.
    let root_envelope = encoded(&after["trust/root"]);
    let reached = shards::follow_trust_roots(&mut reader, &cluster, &root_envelope).unwrap();
    assert_eq!(reached, Some(TrustGeneration(2)));
    reader
        .verify(&root_envelope, &Scope::TrustRoot, &me, UnixMillis::now())
        .expect("trust/root under generation 2");
    let node_v2 = &after[&node_scope.to_string()];
    reader
        .verify(&encoded(node_v2), &node_scope, &me, UnixMillis::now())
        .expect("re-signed node shard");

    // The retired key: refused by the group and by the reader.
    let keys = rap_controlplane::keys::ClusterKeys::load(&p.ctx.keys_dir, &cluster).unwrap();
    let old = seal(
        ShardDraft {
            cluster_id: cluster.clone(),
            scope: node_scope.clone(),
            version: SnapshotVersion(node_v2.header.version.0 + 1),
            authority_term: AuthorityTerm(1),
            issued_at: UnixMillis::now(),
            expires_at: UnixMillis::now().plus_ms(3_600_000),
            prev_hash: Some(node_v2.header_hash()),
            readers: node_v2.header.readers.clone(),
            body: node_v2.body.clone(),
        },
        keys.signer(),
        TrustGeneration(1),
    )
    .unwrap();
    let peers = p.storage_peers().await;
    let fence = p
        .ctx
        .authority
        .acquire_fence(&p.cluster, &peers, 1, "test")
        .await
        .unwrap();
    let refused = p
        .ctx
        .authority
        .publish(&p.cluster, &peers, fence, vec![old.bytes.clone()])
        .await
        .expect_err("an envelope of the retired key");
    assert!(
        refused.to_string().contains("STALE_TRUST_GENERATION"),
        "{refused}"
    );
    assert!(matches!(
        reader.verify(&old.bytes, &node_scope, &me, UnixMillis::now()),
        Err(rap_proto::Error::StaleTrustGeneration { .. })
    ));

    // Again: generation 3; then an ordinary change is signed under it.
    let again = rotate(&p).await;
    assert_eq!(again.trust_generation, 3);
    assign(&p, &node, "relay-node", "").await;
    snapshots::publish_cluster(&p.ctx, &p.cluster, false)
        .await
        .unwrap();
    let last = group_shards(&p).await;
    assert_eq!(
        last[&node_scope.to_string()].header.trust_generation,
        TrustGeneration(3)
    );
    let chain: pb::TrustRootShard = shards::decode(&last["trust/root"].body, &cluster).unwrap();
    assert_eq!(chain.roots.len(), 3, "genesis and two rotations");
}

/// The envelope bytes of a decoded envelope (re-encoded exactly as signed).
fn encoded(envelope: &rap_proto::envelope::DecodedEnvelope) -> Vec<u8> {
    use prost::Message;
    pb::SignedEnvelope {
        header: envelope.header_bytes.clone(),
        body: envelope.body.clone(),
        signature: envelope.signature.to_vec(),
    }
    .encode_to_vec()
}

// Goal (issue 10 "Placement", for the holders that exist today: voters):
// the placement report says which storage nodes hold each kind of scope
// and what losing a zone leaves; losing the zone it says is survivable
// really leaves every published scope readable; losing every zone is
// reported as every scope unreadable and no quorum; an org admin is
// refused. Method: label the three voters z1..z3 in PostgreSQL, publish,
// ask for the report without z3, stop the z3 voter and read every
// published scope back from the group; then the report without all three
// zones, and one as an org admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_reports_what_losing_a_zone_leaves() {
    use rap_controlplane::snapshots::placement;
    let p = Platform::start().await;
    p.enroll(CAPABILITIES).await;
    let published = publish(&p, &[]).await.unwrap();
    let peers = p.storage_peers().await;
    for (i, peer) in peers.iter().enumerate() {
        sqlx::query("UPDATE storage_nodes SET zone = $1 WHERE cluster_id = $2 AND node_id = $3")
            .bind(format!("z{}", i + 1))
            .bind(&p.cluster)
            .bind(&peer.node_id)
            .execute(&p.ctx.pool)
            .await
            .unwrap();
    }
    let ask = |without: &[&str]| pb::GetPlacementRequest {
        cluster_id: p.cluster.clone(),
        without: without.iter().map(|w| w.to_string()).collect(),
    };
    let report = placement::report(&p.ctx, &p.owner, &ask(&["zone=z3"]))
        .await
        .unwrap();
    assert_eq!(report.write_tolerance, "survives loss of 1 zone");
    assert!(report.writes_survive);
    assert_eq!((report.voters, report.voters_left), (3, 2));
    assert_eq!(report.unreadable_scopes, 0);
    let total: u32 = report.classes.iter().map(|c| c.scopes).sum();
    assert_eq!(total as usize, published.len());
    assert!(
        report
            .classes
            .iter()
            .all(|c| c.holders.len() == 3 && c.holders_left == 2)
    );

    // Lose the zone: every published scope is still served.
    p.stop_voters(1).await;
    for scope in published.iter().map(|s| s.scope.clone()) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let got = snapshots::get(
                &p.ctx,
                &p.owner,
                &pb::GetSnapshotRequest {
                    cluster_id: p.cluster.clone(),
                    scope: scope.clone(),
                },
            )
            .await;
            match got {
                Ok(envelope) => {
                    assert!(!envelope.envelope.is_empty());
                    break;
                }
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "hang guard: {scope} unreadable after losing one zone: {e}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }

    let everything = placement::report(&p.ctx, &p.owner, &ask(&["zone=z1", "zone=z2", "zone=z3"]))
        .await
        .unwrap();
    assert!(!everything.writes_survive);
    assert_eq!(everything.unreadable_scopes, total);
    let bad = placement::report(&p.ctx, &p.owner, &ask(&["rack=r1"]))
        .await
        .expect_err("unknown label");
    assert_eq!(bad.code(), "INVALID_ARGUMENT");
    let admin = p.principal("org-admin", Some("acme")).await;
    let refused = placement::report(&p.ctx, &admin, &ask(&[]))
        .await
        .expect_err("org admin");
    assert_eq!(refused.code(), "PERMISSION_DENIED");
    assert_eq!(
        p.audit_events("cluster.placement").await.len(),
        2,
        "both refusals audited"
    );
}

// Goal: after a promotion the new group starts from the survivors' state
// and may lack versions PostgreSQL recorded (the old side published them
// between the split and the order). The next publication of such a scope
// numbers above the record and chains onto the recorded header, so a
// reader holding the recorded version accepts it, and the record takes it
// (the group's own next number would clash with the record's key and be a
// rollback to that reader). Method: publish everything (v1); record v5 of
// node/<relay> as an old side would have (a row of
// snapshot_publications the group never saw, with its own header hash);
// change the node's roles and publish: the group's head and the record
// are then v6, whose prev_hash names the recorded v5; a scope without
// such a record still goes on from the group's head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_numbers_above_what_postgres_recorded() {
    let p = Platform::start().await;
    let relay = p.enroll(CAPABILITIES).await;
    let other = p.enroll(CAPABILITIES).await;
    publish(&p, &[]).await.unwrap();
    let scope = format!("node/{relay}");
    let old_side_header = [9u8; 32];
    let mut conn = p.ctx.pool.acquire().await.unwrap();
    db::snapshots::insert_many(
        &mut conn,
        &p.cluster,
        db::snapshots::PublishedUnder {
            authority_term: 1,
            fence_seq: 1,
            published_by: "old-side",
        },
        &[db::snapshots::Published {
            scope: &scope,
            version: 5,
            content_hash: &[7u8; 32],
            header_hash: &old_side_header,
            envelope: &[],
        }],
    )
    .await
    .unwrap();
    drop(conn);

    assign(&p, &relay, "relay-node", "").await;
    assign(&p, &other, "relay-node", "").await;
    let published: BTreeMap<String, u64> = snapshots::publish_cluster(&p.ctx, &p.cluster, false)
        .await
        .unwrap()
        .published
        .into_iter()
        .map(|s| (s.scope, s.version))
        .collect();
    assert_eq!(published.get(&scope), Some(&6), "{published:?}");
    assert_eq!(
        published.get(&format!("node/{other}")),
        Some(&2),
        "no record above the group's head: {published:?}"
    );
    let shards = group_shards(&p).await;
    let head = &shards[&scope];
    assert_eq!(head.header.version.0, 6);
    assert_eq!(
        head.header.prev_hash.map(|h| h.0),
        Some(old_side_header),
        "chained onto the recorded v5"
    );
    let mut conn = p.ctx.pool.acquire().await.unwrap();
    let latest = db::snapshots::latest(&mut conn, &p.cluster, &scope)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.version, 6);
    assert_eq!(latest.header_hash, head.header_hash().0.to_vec());
}
