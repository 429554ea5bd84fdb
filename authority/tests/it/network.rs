//! The Raft transport over real sockets on 127.0.0.1: mTLS admission by
//! caller kind and membership (the access layer), peer pinning, header
//! checks over the wire, fencing learnt only from signed orders, timeouts
//! and unreachable peers. The server runs over a stub [`RaftHandler`] that
//! counts calls, so "refused before Raft is touched" is observable
//! without a store.

use openraft::error::{Fatal, InstallSnapshotError, RPCError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesResponse, InstallSnapshotResponse, VoteResponse};
use prost::Message;
use rap_authority::access::{AccessLayer, GroupView};
use rap_authority::network::codec::{
    self, AppendEntriesReply, AppendEntriesRequest, InstallSnapshotReply, InstallSnapshotRequest,
    VoteReply, VoteRequest,
};
use rap_authority::network::{
    NetworkConfig, NetworkFactory, PeerAuth, RaftHandler, RaftServer, Reachability, TermGuard,
};
use rap_authority::typ::{LogId, Member, RaftError, SnapshotMeta, Vote, raft_id_of};
use rap_core::codes::error_detail;
use rap_core::identity::PeerIdentity;
use rap_core::tls::live::{LiveIdentity, server_config};
use rap_core::tls::pin::{ExpectedPeer, PeerTls};
use rap_core::tls::{ClusterCa, NODE_CERT_VALIDITY_DEFAULT, TlsFiles};
use rap_proto::envelope::{SnapshotSigner, TrustRoot, VerifiedTrustRoot};
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId};
use rap_proto::pb::raft_service_client::RaftServiceClient;
use rap_proto::pb::{RaftRequest, RaftRpcHeader};
use rap_proto::time::UnixMillis;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};

const CLUSTER: &str = "c1";
const SERVER_NODE: &str = "s1";
const TTL: Duration = Duration::from_secs(5);

/// Counts calls; answers votes with a fixed response (or an error), can
/// stall, keeps the last snapshot chunk.
#[derive(Clone, Default)]
struct Stub {
    calls: Arc<AtomicUsize>,
    stall: Option<Duration>,
    stopped: bool,
    /// Answer votes with (granted, this node's last log id) instead.
    vote_answer: Option<(bool, Option<LogId>)>,
    last_chunk: Arc<Mutex<Option<InstallSnapshotRequest>>>,
}

impl Stub {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn enter(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(stall) = self.stall {
            tokio::time::sleep(stall).await;
        }
    }
}

impl RaftHandler for Stub {
    async fn append_entries(&self, _rpc: AppendEntriesRequest) -> AppendEntriesReply {
        self.enter().await;
        Ok(AppendEntriesResponse::Success)
    }

    async fn vote(&self, rpc: VoteRequest) -> VoteReply {
        self.enter().await;
        if self.stopped {
            return Err(RaftError::Fatal(Fatal::Stopped));
        }
        Ok(match self.vote_answer {
            Some((granted, last_log_id)) => VoteResponse::new(rpc.vote, last_log_id, granted),
            None => VoteResponse::new(rpc.vote, None, true),
        })
    }

    async fn install_snapshot(&self, rpc: InstallSnapshotRequest) -> InstallSnapshotReply {
        self.enter().await;
        let vote = rpc.vote;
        *self.last_chunk.lock().expect("lock") = Some(rpc);
        Ok(InstallSnapshotResponse { vote })
    }
}

/// The cluster's signing key and its genesis root: promotion orders are
/// signed with the one and verified against the other.
struct Keys {
    signer: SnapshotSigner,
    root: VerifiedTrustRoot,
}

fn keys() -> Keys {
    let signer = SnapshotSigner::generate().expect("key");
    let root = TrustRoot::genesis(&cluster(), &[&signer], UnixMillis(1)).expect("root");
    Keys { signer, root }
}

impl Keys {
    /// The encoded, signed promotion order to `new_term`.
    fn order(&self, new_term: u64) -> Vec<u8> {
        let order = rap_proto::pb::PromotionOrder {
            cluster_id: CLUSTER.into(),
            current_term: new_term - 1,
            new_term,
            survivors: vec!["s2".into()],
            seed_node_id: "s2".into(),
            ..Default::default()
        };
        rap_proto::orders::sign_promotion(&order, &self.signer).encode_to_vec()
    }
}

fn cluster() -> ClusterId {
    ClusterId::new(CLUSTER).expect("cluster")
}

/// A guard at `term` that verifies orders with `keys` and, above term 1,
/// holds the order of its term.
fn guard(node: &str, term: u64, keys: &Keys) -> Arc<TermGuard> {
    let guard = Arc::new(TermGuard::new(
        cluster(),
        NodeId::new(node).expect("node"),
        AuthorityTerm(term),
    ));
    guard.set_trust_root(keys.root.clone());
    if term > 1 {
        assert!(guard.set_own_proof(&keys.order(term)));
    }
    guard
}

/// The receiver's group in these tests: a fixed member set, nothing
/// revoked.
struct Group {
    members: BTreeSet<String>,
}

impl GroupView for Group {
    fn cluster_id(&self) -> &ClusterId {
        static CLUSTER_ID: std::sync::OnceLock<ClusterId> = std::sync::OnceLock::new();
        CLUSTER_ID.get_or_init(cluster)
    }
    fn is_member(&self, id: &NodeId) -> bool {
        self.members.contains(id.as_str())
    }
    fn is_revoked(&self, _serial_hex: &str) -> bool {
        false
    }
    fn serves(&self) -> &'static [rap_authority::access::Rpc] {
        &rap_authority::access::Rpc::VOTER
    }
}

struct Running {
    addr: SocketAddr,
    guard: Arc<TermGuard>,
    reachability: Arc<Reachability>,
    metrics: Arc<rap_authority::metrics::AuthorityMetrics>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves a RaftServer over `stub` at `term` on a random port of
/// 127.0.0.1; with `tls`, behind the access layer with members s2 and s3,
/// over the storage node's TLS stack (reloadable identity, own accept
/// loop).
async fn serve(stub: Stub, term: u64, keys: &Keys, tls: Option<&TlsFiles>) -> Running {
    let guard = guard(SERVER_NODE, term, keys);
    let reachability = Arc::new(Reachability::new());
    let peer_auth = if tls.is_some() {
        PeerAuth::MutualTls
    } else {
        PeerAuth::Plaintext
    };
    let metrics = Arc::new(rap_authority::metrics::AuthorityMetrics::new(
        CLUSTER,
        SERVER_NODE,
        rap_authority::metrics::NodeKind::Voter,
    ));
    let server = RaftServer::new(stub, guard.clone(), reachability.clone(), peer_auth)
        .with_metrics(metrics.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let group = Arc::new(Group {
        members: ["s2", "s3"].into_iter().map(String::from).collect(),
    });
    let layer = AccessLayer::new(group, Some(metrics.clone()), tls.is_some());
    let router = Server::builder()
        .layer(layer)
        .add_service(server.into_service());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = stopped.await;
    };
    match tls {
        Some(files) => {
            let identity = LiveIdentity::load(files.clone()).expect("server identity");
            let acceptor =
                tokio_rustls::TlsAcceptor::from(server_config(&identity).expect("server TLS"));
            tokio::spawn(router.serve_with_incoming_shutdown(
                rap_core::tls::incoming::tls_incoming(listener, acceptor),
                stopped,
            ));
        }
        None => {
            tokio::spawn(router.serve_with_incoming_shutdown(TcpIncoming::from(listener), stopped));
        }
    }
    Running {
        addr,
        guard,
        reachability,
        metrics,
        _stop: stop,
    }
}

fn member(node: &str, addr: SocketAddr) -> Member {
    Member {
        node_id: node.into(),
        address: addr.to_string(),
        ..Default::default()
    }
}

fn peer_tls(files: &TlsFiles) -> Arc<PeerTls> {
    PeerTls::new(LiveIdentity::load(files.clone()).expect("client identity")).expect("client TLS")
}

fn factory(node: &str, term: u64, keys: &Keys, tls: Option<&TlsFiles>) -> NetworkFactory {
    let config = NetworkConfig {
        tls: tls.map(peer_tls),
        connect_timeout: Duration::from_millis(500),
        ..NetworkConfig::default()
    };
    NetworkFactory::new(
        config,
        guard(node, term, keys),
        Arc::new(Reachability::new()),
    )
    .expect("factory")
}

fn vote_request() -> VoteRequest {
    VoteRequest::new(Vote::new(4, 7), None)
}

/// A raw gRPC client (no NetworkFactory), for sending arbitrary headers;
/// under TLS pinned to storage node s1.
async fn raw_client(addr: SocketAddr, tls: Option<&TlsFiles>) -> RaftServiceClient<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2));
    let channel = match tls {
        Some(files) => endpoint.connect_with_connector_lazy(
            peer_tls(files)
                .connector(&ExpectedPeer::storage_named(SERVER_NODE))
                .expect("connector"),
        ),
        None => endpoint.connect_lazy(),
    };
    RaftServiceClient::new(channel)
}

fn raw_vote(cluster: &str, term: u64, from: &str, proof: &[u8]) -> RaftRequest {
    RaftRequest {
        header: Some(RaftRpcHeader {
            cluster_id: cluster.into(),
            authority_term: term,
            from_node_id: from.into(),
            term_proof: proof.to_vec(),
        }),
        payload: codec::encode("vote", &vote_request()).expect("encode"),
    }
}

/// The status of a call the server refused during the TLS handshake: a
/// transport error carrying the TLS alert, no application detail.
fn assert_handshake_refused(status: &tonic::Status) {
    assert!(
        status.details().is_empty(),
        "no application answer: {status:?}"
    );
    assert!(format!("{status:?}").contains("fatal alert"), "{status:?}");
}

/// A CA for CLUSTER with a storage certificate for the server and
/// certificates for `clients` (`s…` storage nodes, `n…` agents, anything
/// else operators).
fn pki(dir: &Path, clients: &[&str]) -> (TlsFiles, Vec<TlsFiles>) {
    let ca = ClusterCa::create(&dir.join("ca"), &cluster()).expect("CA");
    let server = ca
        .issue_storage(
            &dir.join(SERVER_NODE),
            &NodeId::new(SERVER_NODE).expect("node"),
            &[],
        )
        .expect("server cert");
    let clients = clients
        .iter()
        .map(|name| issue(&ca, &dir.join(name), name))
        .collect();
    (server, clients)
}

fn issue(ca: &ClusterCa, dir: &Path, name: &str) -> TlsFiles {
    let id = NodeId::new(name).expect("node");
    let identity = if name.starts_with('s') {
        PeerIdentity::storage(cluster(), id)
    } else if name.starts_with('n') {
        PeerIdentity::node(cluster(), id)
    } else {
        PeerIdentity::operator(cluster(), id)
    }
    .expect("identity");
    ca.issue(dir, &identity, NODE_CERT_VALIDITY_DEFAULT, &[])
        .expect("client cert")
}

// Goal: over mTLS, a client with a certificate of the same CA gets its
// vote through the whole stack (factory → channel → server → handler →
// reply), and both sides record the contact. Method: a NetworkFactory
// connection's vote against the stub; check reply and counters.
#[tokio::test]
async fn mtls_same_ca_round_trip() {
    let k = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_files, clients) = pki(dir.path(), &["s2"]);
    let stub = Stub::default();
    let running = serve(stub.clone(), 1, &k, Some(&server_files)).await;
    let mut factory = factory("s2", 1, &k, Some(&clients[0]));
    let target = raft_id_of(SERVER_NODE);
    let mut connection = factory
        .new_client(target, &member(SERVER_NODE, running.addr))
        .await;

    let reply = connection
        .vote(vote_request(), RPCOption::new(TTL))
        .await
        .expect("vote over mTLS");
    assert!(reply.vote_granted);
    assert_eq!(reply.vote, Vote::new(4, 7));
    assert_eq!(stub.calls(), 1);
    assert!(
        factory
            .reachability()
            .is_reachable(target, Duration::from_secs(5))
    );

    let append = AppendEntriesRequest {
        vote: Vote::new_committed(4, 7),
        prev_log_id: None,
        leader_commit: None,
        entries: vec![],
    };
    assert_eq!(running.reachability.last_leader_contact(), None);
    let reply = connection
        .append_entries(append, RPCOption::new(TTL))
        .await
        .expect("append over mTLS");
    assert_eq!(reply, AppendEntriesResponse::Success);
    assert!(
        running.reachability.last_leader_contact().is_some(),
        "the server records a leader's AppendEntries"
    );
}

// Goal: the server notes when Raft refused a candidate whose log is behind
// this node's (with the candidate's term), so the failover module can
// campaign instead of that candidate; a refusal with no longer log (a
// lease) and a granted vote are not noted. Method: stub handlers answering
// each way to the same vote request (term 4, empty log).
#[tokio::test]
async fn a_refused_shorter_log_is_noted() {
    let k = keys();
    let ours = LogId::new(openraft::CommittedLeaderId::new(3, 1), 10);
    for (answer, noted) in [
        ((false, Some(ours)), true),
        ((false, None), false),
        ((true, Some(ours)), false),
    ] {
        let stub = Stub {
            vote_answer: Some(answer),
            ..Stub::default()
        };
        let running = serve(stub.clone(), 1, &k, None).await;
        let mut factory = factory("s2", 1, &k, None);
        let mut connection = factory
            .new_client(raft_id_of(SERVER_NODE), &member(SERVER_NODE, running.addr))
            .await;
        let reply = connection
            .vote(vote_request(), RPCOption::new(TTL))
            .await
            .expect("vote");
        assert_eq!(reply.vote_granted, answer.0);
        assert_eq!(stub.calls(), 1);
        let seen = running.reachability.last_refused_shorter_log();
        assert_eq!(seen.map(|(_, term)| term), noted.then_some(4), "{answer:?}");
    }
}

// Goal: the header check runs before Raft, and its refusal crosses the
// wire typed: a wrong cluster comes back as WRONG_CLUSTER in the
// ErrorDetail and the handler is never called. Method: a raw client with a
// valid certificate sends a vote whose header names cluster c2.
#[tokio::test]
async fn wrong_cluster_refused_over_the_wire() {
    let k = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_files, clients) = pki(dir.path(), &["s2"]);
    let stub = Stub::default();
    let running = serve(stub.clone(), 1, &k, Some(&server_files)).await;
    let mut client = raw_client(running.addr, Some(&clients[0])).await;
    let status = client
        .vote(raw_vote("c2", 1, "s2", &[]))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let detail = error_detail(&status).expect("detail");
    assert_eq!(detail.code, "WRONG_CLUSTER");
    assert_eq!(stub.calls(), 0, "Raft must not be touched");
    let text = running
        .metrics
        .render(&Default::default(), rap_authority::metrics::Format::Text);
    assert!(
        text.contains("reason=\"WRONG_CLUSTER\"} 1"),
        "the refusal is counted: {text}"
    );
}

// Goal: a client certificate is bound to the node it names: s2's
// certificate cannot speak for s3 (both members). Method: raw vote from
// s2's certificate with from_node_id = s3.
#[tokio::test]
async fn certificate_must_match_sender() {
    let k = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_files, clients) = pki(dir.path(), &["s2"]);
    let stub = Stub::default();
    let running = serve(stub.clone(), 1, &k, Some(&server_files)).await;
    let mut client = raw_client(running.addr, Some(&clients[0])).await;
    let status = client
        .vote(raw_vote(CLUSTER, 1, "s3", &[]))
        .await
        .expect_err("refused");
    let detail = error_detail(&status).expect("detail");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert_eq!(detail.code, "CALLER_NOT_ADMITTED", "{status:?}");
    assert!(
        detail.message.contains("rap://cluster/c1/storage/s2"),
        "{}",
        detail.message
    );
    assert_eq!(stub.calls(), 0);
}

// Goal: a client whose certificate comes from another CA is refused at
// the TLS handshake: no gRPC answer at all, the handler is never called.
// Method: a second ClusterCa (same cluster name, different key) issues the
// client's certificate; the vote fails with a transport error, no detail.
#[tokio::test]
async fn other_ca_refused_at_handshake() {
    let k = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_files, _) = pki(dir.path(), &[]);
    let rogue_ca = ClusterCa::create(&dir.path().join("rogue-ca"), &cluster()).expect("rogue CA");
    let rogue = issue(&rogue_ca, &dir.path().join("rogue"), "s2");
    // The rogue client trusts the real CA for the server, so only its own
    // certificate is wrong.
    std::fs::copy(&server_files.ca, &rogue.ca).expect("trust the real CA");
    let stub = Stub::default();
    let running = serve(stub.clone(), 1, &k, Some(&server_files)).await;
    let mut client = raw_client(running.addr, Some(&rogue)).await;
    let status = client
        .vote(raw_vote(CLUSTER, 1, "s2", &[]))
        .await
        .expect_err("refused");
    assert_handshake_refused(&status);
    assert_eq!(stub.calls(), 0);

    // Through the factory the same refusal is Unreachable (openraft backs off).
    let mut factory = factory("s2", 1, &k, Some(&rogue));
    let mut connection = factory
        .new_client(raft_id_of(SERVER_NODE), &member(SERVER_NODE, running.addr))
        .await;
    let err = connection
        .vote(vote_request(), RPCOption::new(TTL))
        .await
        .expect_err("refused");
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
    assert_eq!(stub.calls(), 0);
}

// Goal: a client without a certificate is refused (mTLS is required, not
// optional). Method: a TLS client that trusts the CA but presents no
// identity.
#[tokio::test]
async fn client_without_certificate_refused() {
    let k = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_files, _) = pki(dir.path(), &[]);
    let stub = Stub::default();
    let running = serve(stub.clone(), 1, &k, Some(&server_files)).await;
    let ca_pem = std::fs::read(&server_files.ca).expect("CA");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", running.addr))
        .expect("endpoint")
        .tls_config(tls)
        .expect("TLS")
        .connect_lazy();
    let status = RaftServiceClient::new(channel)
        .vote(raw_vote(CLUSTER, 1, "s2", &[]))
        .await
        .expect_err("refused");
    assert_handshake_refused(&status);
    assert!(
        format!("{status:?}").contains("CertificateRequired"),
        "{status:?}"
    );
    assert_eq!(stub.calls(), 0);

    // And a plaintext client cannot talk to the TLS listener either.
    let mut plain = raw_client(running.addr, None).await;
    assert!(plain.vote(raw_vote(CLUSTER, 1, "s2", &[])).await.is_err());
    assert_eq!(stub.calls(), 0);
}

// Goal: a node whose term is below the receiver's learns it is fenced
// from the STALE_TERM refusal: the call is Unreachable, the failure is
// recorded, and from then on it sends nothing. Method: client at term 3,
// server at term 5 (plaintext); two votes; count handler calls.
#[tokio::test]
async fn stale_sender_learns_it_is_fenced() {
    let k = keys();
    let stub = Stub::default();
    let running = serve(stub.clone(), 5, &k, None).await;
    let mut factory = factory("s2", 3, &k, None);
    let target = raft_id_of(SERVER_NODE);
    let mut connection = factory
        .new_client(target, &member(SERVER_NODE, running.addr))
        .await;
    let err = connection
        .vote(vote_request(), RPCOption::new(TTL))
        .await
        .expect_err("refused");
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
    assert!(format!("{err}").contains("STALE_TERM"), "{err}");
    assert_eq!(factory.guard().fenced_by(), Some(AuthorityTerm(5)));
    let peer = factory.reachability().peer(target).expect("recorded");
    assert_eq!(peer.consecutive_failures, 1);
    assert!(peer.last_success.is_none());
    assert!(
        !running.guard.is_fenced(),
        "the receiver is not fenced by a lower term"
    );

    let again = connection
        .vote(vote_request(), RPCOption::new(TTL))
        .await
        .expect_err("fenced: not sent");
    assert!(format!("{again}").contains("fenced"), "{again}");
    assert_eq!(stub.calls(), 0);
}

// Goal: a receiver that sees a higher term records it and is fenced: it
// refuses that call and then even calls of its own (old) term. The sender
// is not fenced by the receiver's FENCED answer (the receiver is below
// it). Method: server at term 3; a term-4 client, then a term-3 client.
#[tokio::test]
async fn receiver_fenced_by_higher_term() {
    let k = keys();
    let stub = Stub::default();
    let running = serve(stub.clone(), 3, &k, None).await;
    let addr = running.addr;
    let mut newer = factory("s2", 4, &k, None);
    let err = newer
        .new_client(raft_id_of(SERVER_NODE), &member(SERVER_NODE, addr))
        .await
        .vote(vote_request(), RPCOption::new(TTL))
        .await
        .expect_err("refused");
    assert!(format!("{err}").contains("FENCED"), "{err}");
    assert_eq!(running.guard.fenced_by(), Some(AuthorityTerm(4)));
    assert!(!newer.guard().is_fenced());

    let mut old_peer = factory("s3", 3, &k, None);
    let err = old_peer
        .new_client(raft_id_of(SERVER_NODE), &member(SERVER_NODE, addr))
        .await
        .vote(vote_request(), RPCOption::new(TTL))
        .await
        .expect_err("refused");
    assert!(format!("{err}").contains("FENCED"), "{err}");
    assert!(
        old_peer.guard().is_fenced(),
        "a FENCED answer at our own term proves a higher term exists"
    );
    assert_eq!(stub.calls(), 0);
}

// Goal: a remote Raft error comes back typed as RemoteError, and the peer
// still counts as reachable (it answered). Method: stub answers
// Fatal::Stopped.
#[tokio::test]
async fn remote_raft_error_is_typed() {
    let k = keys();
    let stub = Stub {
        stopped: true,
        ..Stub::default()
    };
    let running = serve(stub.clone(), 1, &k, None).await;
    let mut factory = factory("s2", 1, &k, None);
    let target = raft_id_of(SERVER_NODE);
    let err = factory
        .new_client(target, &member(SERVER_NODE, running.addr))
        .await
        .vote(vote_request(), RPCOption::new(TTL))
        .await
        .expect_err("remote error");
    match err {
        RPCError::RemoteError(remote) => {
            assert_eq!(remote.target, target);
            assert_eq!(remote.source, RaftError::Fatal(Fatal::Stopped));
        }
        other => panic!("expected RemoteError, got {other:?}"),
    }
    assert!(
        factory
            .reachability()
            .is_reachable(target, Duration::from_secs(5))
    );
}

// Goal: hard_ttl is honoured: a handler that stalls makes the call fail as
// Unreachable shortly before the TTL, and the failure is recorded. Method:
// stub stalls 2 s, TTL 200 ms; time the call.
#[tokio::test]
async fn slow_peer_times_out_within_ttl() {
    let k = keys();
    let stub = Stub {
        stall: Some(Duration::from_secs(2)),
        ..Stub::default()
    };
    let running = serve(stub.clone(), 1, &k, None).await;
    let mut factory = factory("s2", 1, &k, None);
    let target = raft_id_of(SERVER_NODE);
    let mut connection = factory
        .new_client(target, &member(SERVER_NODE, running.addr))
        .await;
    let started = Instant::now();
    let err = connection
        .vote(vote_request(), RPCOption::new(Duration::from_millis(200)))
        .await
        .expect_err("timeout");
    let took = started.elapsed();
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
    assert!(took < Duration::from_millis(200), "took {took:?}");
    assert_eq!(
        factory
            .reachability()
            .peer(target)
            .expect("recorded")
            .consecutive_failures,
        1
    );
}

// Goal: a peer with nothing listening is Unreachable, quickly, and
// recorded; a peer with a malformed address is Unreachable too, without
// a panic. Method: a port that was bound then released; an address with a
// scheme.
#[tokio::test]
async fn unreachable_peers() {
    let k = keys();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let mut factory = factory("s2", 1, &k, None);
    let target = raft_id_of("s9");
    let err = factory
        .new_client(target, &member("s9", closed))
        .await
        .vote(vote_request(), RPCOption::new(TTL))
        .await
        .expect_err("unreachable");
    assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
    assert!(!factory.reachability().is_reachable(target, TTL));
    assert_eq!(
        factory
            .reachability()
            .peer(target)
            .expect("recorded")
            .consecutive_failures,
        1
    );

    let bad = Member {
        node_id: "s8".into(),
        address: "http://127.0.0.1:1".into(),
        ..Default::default()
    };
    let err = factory
        .new_client(raft_id_of("s8"), &bad)
        .await
        .vote(vote_request(), RPCOption::new(TTL))
        .await
        .expect_err("bad address");
    assert!(format!("{err}").contains("host:port"), "{err}");
}

// Goal: a snapshot chunk crosses the wire intact (data as bytes, meta and
// flags preserved). Method: send one chunk through the factory; compare
// with what the stub received.
#[tokio::test]
async fn snapshot_chunk_round_trip() {
    let k = keys();
    let stub = Stub::default();
    let running = serve(stub.clone(), 1, &k, None).await;
    let mut factory = factory("s2", 1, &k, None);
    let chunk = InstallSnapshotRequest {
        vote: Vote::new_committed(2, 7),
        meta: SnapshotMeta {
            snapshot_id: "snap-1".into(),
            ..Default::default()
        },
        offset: 4096,
        data: (0..=255u8).cycle().take(100_000).collect(),
        done: false,
    };
    let reply = factory
        .new_client(raft_id_of(SERVER_NODE), &member(SERVER_NODE, running.addr))
        .await
        .install_snapshot(chunk.clone(), RPCOption::new(TTL))
        .await
        .map_err(|e: RPCError<_, _, RaftError<InstallSnapshotError>>| e)
        .expect("chunk accepted");
    assert_eq!(reply.vote, chunk.vote);
    let received = stub.last_chunk.lock().expect("lock").clone();
    assert_eq!(received, Some(chunk));
}

// Goal (the trust boundary): a certificate from the right CA is not
// permission. An agent's and an operator's certificate are refused on
// every Raft RPC with CALLER_NOT_ADMITTED, a storage node that is not a
// member of the group with NOT_A_MEMBER, even with a higher term in the
// header; nothing reaches Raft, nobody is fenced, each refusal is
// counted. Method: raw Vote, AppendEntries and InstallSnapshot from each
// certificate against a server whose members are s2 and s3.
#[tokio::test]
async fn wrong_callers_are_refused_before_raft() {
    let k = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_files, clients) = pki(dir.path(), &["n-1", "admin", "s9"]);
    let stub = Stub::default();
    let running = serve(stub.clone(), 1, &k, Some(&server_files)).await;
    for (files, name, code) in [
        (&clients[0], "n-1", "CALLER_NOT_ADMITTED"),
        (&clients[1], "admin", "CALLER_NOT_ADMITTED"),
        (&clients[2], "s9", "NOT_A_MEMBER"),
    ] {
        let mut client = raw_client(running.addr, Some(files)).await;
        let vote = raw_vote(CLUSTER, 2, name, b"abc");
        let statuses = [
            client.vote(vote.clone()).await.expect_err("vote refused"),
            client
                .append_entries(vote.clone())
                .await
                .expect_err("append refused"),
            client
                .install_snapshot(vote)
                .await
                .expect_err("snapshot refused"),
        ];
        for status in statuses {
            assert_eq!(
                status.code(),
                tonic::Code::PermissionDenied,
                "{name}: {status:?}"
            );
            assert_eq!(error_detail(&status).expect("detail").code, code, "{name}");
        }
    }
    assert_eq!(stub.calls(), 0, "Raft must not be touched");
    assert!(!running.guard.is_fenced());
    let text = running
        .metrics
        .render(&Default::default(), rap_authority::metrics::Format::Text);
    assert!(
        text.contains("reason=\"CALLER_NOT_ADMITTED\"} 6"),
        "the refusals are counted: {text}"
    );
    assert!(text.contains("reason=\"NOT_A_MEMBER\"} 3"), "{text}");
}

// Goal (invariant 9): a member's higher term is believed only with its
// signed promotion order: without one, with garbage, or with an order
// signed by another key, the RPC is refused with UNPROVEN_TERM, counted,
// and the receiver stays unfenced; with the right order it is fenced.
// Method: raw votes from member s2 at term 2 against a term-1 server.
#[tokio::test]
async fn higher_term_needs_its_signed_order() {
    let k = keys();
    let stranger = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_files, clients) = pki(dir.path(), &["s2"]);
    let stub = Stub::default();
    let running = serve(stub.clone(), 1, &k, Some(&server_files)).await;
    let mut client = raw_client(running.addr, Some(&clients[0])).await;
    for proof in [Vec::new(), b"garbage".to_vec(), stranger.order(2)] {
        let status = client
            .vote(raw_vote(CLUSTER, 2, "s2", &proof))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert_eq!(error_detail(&status).expect("detail").code, "UNPROVEN_TERM");
    }
    assert!(!running.guard.is_fenced(), "an unproven term fences nobody");
    assert_eq!(running.guard.unproven_refused(), 3);
    let text = running
        .metrics
        .render(&Default::default(), rap_authority::metrics::Format::Text);
    assert!(text.contains("reason=\"UNPROVEN_TERM\"} 3"), "{text}");
    // The same member, same term, at its own term is served.
    client
        .vote(raw_vote(CLUSTER, 1, "s2", &[]))
        .await
        .expect("served at the common term");
    assert_eq!(stub.calls(), 1);

    let status = client
        .vote(raw_vote(CLUSTER, 2, "s2", &k.order(2)))
        .await
        .expect_err("fenced");
    assert_eq!(error_detail(&status).expect("detail").code, "FENCED");
    assert_eq!(running.guard.fenced_by(), Some(AuthorityTerm(2)));
}

// Goal (peer pinning): a client that dials storage node s1 refuses a
// server presenting another storage node's certificate (s2, same CA) or
// an agent's, at the handshake, before sending anything. Method: serve
// with s2's and with n-1's certificate; dial expecting s1, raw and
// through the factory.
#[tokio::test]
async fn clients_pin_the_storage_node_they_dial() {
    let k = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, certs) = pki(dir.path(), &["s2", "n-1", "s3"]);
    for impostor in [&certs[0], &certs[1]] {
        let stub = Stub::default();
        let running = serve(stub.clone(), 1, &k, Some(impostor)).await;
        let mut client = raw_client(running.addr, Some(&certs[2])).await;
        let status = client
            .vote(raw_vote(CLUSTER, 1, "s3", &[]))
            .await
            .expect_err("the server is not s1");
        assert!(status.details().is_empty(), "{status:?}");
        assert!(
            format!("{status:?}").contains("not storage s1"),
            "{status:?}"
        );
        let mut factory = factory("s3", 1, &k, Some(&certs[2]));
        let err = factory
            .new_client(raft_id_of(SERVER_NODE), &member(SERVER_NODE, running.addr))
            .await
            .vote(vote_request(), RPCOption::new(TTL))
            .await
            .expect_err("impostor");
        assert!(matches!(err, RPCError::Unreachable(_)), "{err:?}");
        assert_eq!(stub.calls(), 0);
    }
}

// Goal: a receiver whose own term is proven answers a stale sender with
// STALE_TERM and the order, but a sender told only a number (a receiver
// without the order) is not fenced by it. Method: a term-5 server
// without its order's proof; a term-3 client.
#[tokio::test]
async fn bare_stale_term_fences_nobody() {
    let k = keys();
    let stub = Stub::default();
    let running = serve(stub.clone(), 1, &k, None).await;
    // Move the server to term 5 without a proof of it.
    running.guard.set_term(AuthorityTerm(5));
    let mut factory = factory("s2", 3, &k, None);
    let err = factory
        .new_client(raft_id_of(SERVER_NODE), &member(SERVER_NODE, running.addr))
        .await
        .vote(vote_request(), RPCOption::new(TTL))
        .await
        .expect_err("refused");
    assert!(format!("{err}").contains("STALE_TERM"), "{err}");
    assert!(!factory.guard().is_fenced(), "a bare number proves nothing");
}
