//! The agent's reader against storage endpoints that lie: in-process
//! `ShardService` servers on loopback (plaintext, so that any process can
//! pose as a storage node), one serving what it is given, the other the
//! cluster's genuine envelopes.
#![allow(clippy::unwrap_used, missing_docs)]

use rap_node_agent::reads::endpoints::Endpoint;
use rap_node_agent::reads::{Outcome, Reader};
use rap_node_agent::state::ClusterState;
use rap_node_agent::store::ClusterStore;
use rap_proto::envelope::{Digest, ReaderSelector, ShardDraft, SnapshotSigner, TrustRoot, seal};
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId, SnapshotVersion, TrustGeneration};
use rap_proto::pb;
use rap_proto::pb::shard_service_server::{ShardService, ShardServiceServer};
use rap_proto::time::UnixMillis;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// A storage node that serves whatever envelope it was given per scope.
#[derive(Clone, Default)]
struct Server {
    shards: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    node_id: String,
}

impl Server {
    fn set(&self, scope: &str, envelope: &[u8]) {
        self.shards
            .lock()
            .unwrap()
            .insert(scope.to_string(), envelope.to_vec());
    }
}

type Stream = Pin<Box<dyn futures::Stream<Item = Result<pb::GetShardResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ShardService for Server {
    async fn get_shard(
        &self,
        request: Request<pb::GetShardRequest>,
    ) -> Result<Response<pb::GetShardResponse>, Status> {
        let scope = request.into_inner().scope;
        let envelope = self
            .shards
            .lock()
            .unwrap()
            .get(&scope)
            .cloned()
            .ok_or_else(|| Status::not_found(scope))?;
        Ok(Response::new(pb::GetShardResponse {
            envelope,
            served_by_node_id: self.node_id.clone(),
            staleness: None,
            load: None,
        }))
    }

    type WatchShardsStream = Stream;

    async fn watch_shards(
        &self,
        _request: Request<pb::WatchShardsRequest>,
    ) -> Result<Response<Stream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn list_own_scopes(
        &self,
        _request: Request<pb::ListOwnScopesRequest>,
    ) -> Result<Response<pb::ListOwnScopesResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// Serves `server` on a free loopback port; returns its address.
async fn serve(server: Server) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ShardServiceServer::new(server))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    address
}

/// A cluster's genesis key and root.
struct Cluster {
    id: ClusterId,
    key: SnapshotSigner,
    genesis: Vec<u8>,
}

impl Cluster {
    fn new(id: &str) -> Cluster {
        let id = ClusterId::new(id).unwrap();
        let key = SnapshotSigner::generate().unwrap();
        let genesis = TrustRoot::genesis(&id, &[&key], UnixMillis::now())
            .unwrap()
            .bytes()
            .to_vec();
        Cluster { id, key, genesis }
    }

    /// `node/n1` version `version` (chained to `prev`), valid until
    /// `expires_at`.
    fn node_shard(
        &self,
        version: u64,
        prev: Option<Digest>,
        body: &[u8],
        expires_at: UnixMillis,
    ) -> (Vec<u8>, Digest) {
        let now = UnixMillis::now();
        let sealed = seal(
            ShardDraft {
                cluster_id: self.id.clone(),
                scope: "node/n1".parse().unwrap(),
                version: SnapshotVersion(version),
                authority_term: AuthorityTerm(1),
                issued_at: UnixMillis((now.0 - 60_000).min(expires_at.0 - 60_000)),
                expires_at,
                prev_hash: prev,
                readers: vec![ReaderSelector::Node(NodeId::new("n1").unwrap())],
                body: body.to_vec(),
            },
            &self.key,
            TrustGeneration(1),
        )
        .unwrap();
        (sealed.bytes, sealed.header_hash)
    }
}

fn endpoint(id: &str, address: &str, role: &str) -> Endpoint {
    Endpoint {
        node_id: id.into(),
        address: address.into(),
        region: String::new(),
        zone: String::new(),
        role: role.into(),
    }
}

// Goal (issue 11 "a rogue storage endpoint"): an endpoint that serves a
// tampered, older, foreign-cluster or expired envelope is refused with the
// verifier's code, scored down (a bad envelope each time), and the agent
// takes the genuine version from the next endpoint in the same read; what
// it holds never goes back; after a restart of the reader the rolled-back
// envelope is still refused (the marks are on disk) and the rogue's
// score is kept (the store).
// Method: two in-process ShardService servers; the rogue one ranked first
// (a cache replica, the good one a voter); one read per attack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_endpoint_is_refused_scored_down_and_left() {
    let c = Cluster::new("c1");
    let later = UnixMillis(UnixMillis::now().0 + 3_600_000);
    let (v1, h1) = c.node_shard(1, None, b"v1", later);
    let (v2, h2) = c.node_shard(2, Some(h1), b"v2", later);
    let (v3, _) = c.node_shard(3, Some(h2), b"v3", later);

    let rogue = Server {
        node_id: "k9".into(),
        ..Default::default()
    };
    let good = Server {
        node_id: "s1".into(),
        ..Default::default()
    };
    let rogue_at = serve(rogue.clone()).await;
    let good_at = serve(good.clone()).await;
    let state_dir = tempfile::tempdir().unwrap();
    let open = || {
        let state = ClusterState::open(state_dir.path(), &c.id).unwrap();
        let store = ClusterStore::open(state_dir.path(), &state, &c.id).unwrap();
        Reader::open(
            state,
            store,
            c.id.clone(),
            NodeId::new("n1").unwrap(),
            &c.genesis,
            None,
            vec![
                endpoint("k9", &rogue_at, "cache"),
                endpoint("s1", &good_at, "voter"),
            ],
        )
        .unwrap()
    };
    let mut reader = open();

    // Version 1 from the rogue (genuine for now), version 2 from the good one.
    rogue.set("node/n1", &v1);
    assert_eq!(reader.read("node/n1").await.unwrap(), Outcome::Updated(1));
    good.set("node/n1", &v2);
    let k9 = |r: &Reader| {
        r.endpoints
            .list
            .iter()
            .find(|s| s.endpoint.node_id == "k9")
            .unwrap()
            .clone()
    };

    // Each attack: refused, scored down, the good version taken instead.
    let mut tampered = {
        use prost::Message;
        let mut e = pb::SignedEnvelope::decode(v3.as_slice()).unwrap();
        e.body = b"evil".to_vec();
        e.encode_to_vec()
    };
    let other = Cluster::new("c2");
    let (foreign, _) = other.node_shard(1, None, b"x", later);
    let (expired, _) = c.node_shard(
        3,
        Some(h2),
        b"old",
        UnixMillis(UnixMillis::now().0 - 3_600_000),
    );
    let attacks: [(&str, &[u8], &str); 4] = [
        ("tampered", &tampered, "CONTENT_HASH_MISMATCH"),
        ("rolled back", &v1, "ROLLBACK"),
        ("foreign", &foreign, "WRONG_CLUSTER"),
        ("expired", &expired, "EXPIRED"),
    ];
    let mut bad = 0;
    for (what, envelope, code) in attacks {
        rogue.set("node/n1", envelope);
        // Ranked first again once its failure is forgotten: force it.
        reader
            .endpoints
            .succeeded(0, std::time::Duration::from_millis(1), None);
        let outcome = reader.read("node/n1").await.unwrap();
        bad += 1;
        let scored = k9(&reader);
        assert_eq!(scored.bad_envelopes, bad, "{what}");
        assert_eq!(scored.last_error, code, "{what}");
        assert!(
            matches!(outcome, Outcome::Updated(2) | Outcome::Unchanged(2)),
            "{what}: {outcome:?}"
        );
        assert_eq!(reader.held()["node/n1"].version, 2, "{what}");
        assert_eq!(reader.held()["node/n1"].served_by, "s1", "{what}");
    }
    tampered.clear();

    // A new reader over the same state: version 2 from disk, and the
    // rolled-back version 1 is still refused.
    drop(reader);
    let mut reader = open();
    assert_eq!(reader.held()["node/n1"].version, 2);
    assert_eq!(k9(&reader).bad_envelopes, bad, "scores survive a restart");
    rogue.set("node/n1", &v1);
    good.set("node/n1", &v3);
    assert_eq!(reader.read("node/n1").await.unwrap(), Outcome::Updated(3));
    assert_eq!(k9(&reader).last_error, "ROLLBACK");
    assert_eq!(reader.held()["node/n1"].served_by, "s1");

    // The node stops reading the scope, then reads it again at the same
    // version (a role removed and assigned back): the very envelope it
    // accepted is kept again, not refused as a replay.
    reader.retain(&[]);
    assert!(reader.held().is_empty());
    rogue.set("node/n1", &v3);
    assert_eq!(reader.read("node/n1").await.unwrap(), Outcome::Updated(3));
    assert_eq!(reader.held()["node/n1"].version, 3);
}
