//! The Raft transport over real sockets on 127.0.0.1: mTLS admission,
//! header checks over the wire, fencing learnt from refusals, timeouts
//! and unreachable peers. The server runs over a stub [`RaftHandler`]
//! that counts calls, so "refused before Raft is touched" is observable
//! without a store.

use openraft::error::{Fatal, InstallSnapshotError, RPCError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesResponse, InstallSnapshotResponse, VoteResponse};
use rap_authority::error::error_detail;
use rap_authority::network::codec::{
    self, AppendEntriesReply, AppendEntriesRequest, InstallSnapshotReply, InstallSnapshotRequest,
    VoteReply, VoteRequest,
};
use rap_authority::network::{
    NetworkConfig, NetworkFactory, PeerAuth, RaftHandler, RaftServer, Reachability, TermGuard,
};
use rap_authority::tls::{DevCa, TlsFiles};
use rap_authority::typ::{Member, RaftError, SnapshotMeta, Vote, raft_id_of};
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId};
use rap_proto::pb::raft_service_client::RaftServiceClient;
use rap_proto::pb::{RaftRequest, RaftRpcHeader};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server, ServerTlsConfig};

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
        Ok(VoteResponse::new(rpc.vote, None, true))
    }

    async fn install_snapshot(&self, rpc: InstallSnapshotRequest) -> InstallSnapshotReply {
        self.enter().await;
        let vote = rpc.vote;
        *self.last_chunk.lock().expect("lock") = Some(rpc);
        Ok(InstallSnapshotResponse { vote })
    }
}

fn guard(node: &str, term: u64) -> Arc<TermGuard> {
    Arc::new(TermGuard::new(
        ClusterId::new(CLUSTER).expect("cluster"),
        NodeId::new(node).expect("node"),
        AuthorityTerm(term),
    ))
}

struct Running {
    addr: SocketAddr,
    guard: Arc<TermGuard>,
    reachability: Arc<Reachability>,
    metrics: Arc<rap_authority::metrics::AuthorityMetrics>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves a RaftServer over `stub` on a random port of 127.0.0.1.
async fn serve(stub: Stub, term: u64, tls: Option<ServerTlsConfig>) -> Running {
    let guard = guard(SERVER_NODE, term);
    let reachability = Arc::new(Reachability::new());
    let peer_auth = if tls.is_some() {
        PeerAuth::MutualTls
    } else {
        PeerAuth::Plaintext
    };
    let metrics = Arc::new(rap_authority::metrics::AuthorityMetrics::default());
    let server = RaftServer::new(stub, guard.clone(), reachability.clone(), peer_auth)
        .with_metrics(metrics.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).expect("server TLS");
    }
    let router = builder.add_service(server.into_service());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        router.serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
            let _ = stopped.await;
        }),
    );
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

fn factory(node: &str, term: u64, tls: Option<&TlsFiles>) -> NetworkFactory {
    let config = NetworkConfig {
        tls: tls.map(|files| files.client_config().expect("client TLS")),
        connect_timeout: Duration::from_millis(500),
        ..NetworkConfig::default()
    };
    NetworkFactory::new(config, guard(node, term), Arc::new(Reachability::new())).expect("factory")
}

fn vote_request() -> VoteRequest {
    VoteRequest::new(Vote::new(4, 7), None)
}

/// A raw gRPC client (no NetworkFactory), for sending arbitrary headers.
async fn raw_client(addr: SocketAddr, tls: Option<&TlsFiles>) -> RaftServiceClient<Channel> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2));
    if let Some(files) = tls {
        endpoint = endpoint
            .tls_config(files.client_config().expect("client TLS"))
            .expect("endpoint TLS");
    }
    RaftServiceClient::new(endpoint.connect_lazy())
}

fn raw_vote(cluster: &str, term: u64, from: &str) -> RaftRequest {
    RaftRequest {
        header: Some(RaftRpcHeader {
            cluster_id: cluster.into(),
            authority_term: term,
            from_node_id: from.into(),
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

/// A CA for CLUSTER with certificates for the server and `clients`.
fn pki(dir: &Path, clients: &[&str]) -> (TlsFiles, Vec<TlsFiles>) {
    let ca =
        DevCa::create(&dir.join("ca"), &ClusterId::new(CLUSTER).expect("cluster")).expect("CA");
    let server = ca
        .issue_node(
            &dir.join(SERVER_NODE),
            &NodeId::new(SERVER_NODE).expect("node"),
        )
        .expect("server cert");
    let clients = clients
        .iter()
        .map(|name| {
            ca.issue_node(&dir.join(name), &NodeId::new(*name).expect("node"))
                .expect("client cert")
        })
        .collect();
    (server, clients)
}

// Goal: over mTLS, a client with a certificate of the same CA gets its
// vote through the whole stack (factory → channel → server → handler →
// reply), and both sides record the contact. Method: a NetworkFactory
// connection's vote against the stub; check reply and counters.
#[tokio::test]
async fn mtls_same_ca_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_files, clients) = pki(dir.path(), &["s2"]);
    let stub = Stub::default();
    let running = serve(
        stub.clone(),
        1,
        Some(server_files.server_config().expect("tls")),
    )
    .await;
    let mut factory = factory("s2", 1, Some(&clients[0]));
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

// Goal: the header check runs before Raft, and its refusal crosses the
// wire typed: a wrong cluster comes back as WRONG_CLUSTER in the
// ErrorDetail and the handler is never called. Method: a raw client with a
// valid certificate sends a vote whose header names cluster c2.
#[tokio::test]
async fn wrong_cluster_refused_over_the_wire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_files, clients) = pki(dir.path(), &["s2"]);
    let stub = Stub::default();
    let running = serve(
        stub.clone(),
        1,
        Some(server_files.server_config().expect("tls")),
    )
    .await;
    let mut client = raw_client(running.addr, Some(&clients[0])).await;
    let status = client
        .vote(raw_vote("c2", 1, "s2"))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let detail = error_detail(&status).expect("detail");
    assert_eq!(detail.code, "WRONG_CLUSTER");
    assert_eq!(stub.calls(), 0, "Raft must not be touched");
    let text = running.metrics.render("c1", "s1", &Default::default());
    assert!(
        text.contains("reason=\"WRONG_CLUSTER\"} 1"),
        "the refusal is counted: {text}"
    );
}

// Goal: a client certificate is bound to the node it names: s2's
// certificate cannot speak for s3. Method: raw vote from s2's certificate
// with from_node_id = s3.
#[tokio::test]
async fn certificate_must_match_sender() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_files, clients) = pki(dir.path(), &["s2"]);
    let stub = Stub::default();
    let running = serve(
        stub.clone(),
        1,
        Some(server_files.server_config().expect("tls")),
    )
    .await;
    let mut client = raw_client(running.addr, Some(&clients[0])).await;
    let status = client
        .vote(raw_vote(CLUSTER, 1, "s3"))
        .await
        .expect_err("refused");
    let detail = error_detail(&status).expect("detail");
    assert_eq!(detail.code, "INVALID_REQUEST", "{status:?}");
    assert!(
        detail.message.contains("rap://cluster/c1/node/s2"),
        "{}",
        detail.message
    );
    assert_eq!(stub.calls(), 0);
}

// Goal: a client whose certificate comes from another CA is refused at
// the TLS handshake: no gRPC answer at all, the handler is never called.
// Method: a second DevCa (same cluster name, different key) issues the
// client's certificate; the vote fails with a transport error, no detail.
#[tokio::test]
async fn other_ca_refused_at_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_files, _) = pki(dir.path(), &[]);
    let rogue_ca = DevCa::create(
        &dir.path().join("rogue-ca"),
        &ClusterId::new(CLUSTER).expect("cluster"),
    )
    .expect("rogue CA");
    let rogue = rogue_ca
        .issue_node(&dir.path().join("rogue"), &NodeId::new("s2").expect("node"))
        .expect("rogue cert");
    // The rogue client trusts the real CA for the server, so only its own
    // certificate is wrong.
    std::fs::copy(&server_files.ca, &rogue.ca).expect("trust the real CA");
    let stub = Stub::default();
    let running = serve(
        stub.clone(),
        1,
        Some(server_files.server_config().expect("tls")),
    )
    .await;
    let mut client = raw_client(running.addr, Some(&rogue)).await;
    let status = client
        .vote(raw_vote(CLUSTER, 1, "s2"))
        .await
        .expect_err("refused");
    assert_handshake_refused(&status);
    assert_eq!(stub.calls(), 0);

    // Through the factory the same refusal is Unreachable (openraft backs off).
    let mut factory = factory("s2", 1, Some(&rogue));
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
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_files, _) = pki(dir.path(), &[]);
    let stub = Stub::default();
    let running = serve(
        stub.clone(),
        1,
        Some(server_files.server_config().expect("tls")),
    )
    .await;
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
        .vote(raw_vote(CLUSTER, 1, "s2"))
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
    assert!(plain.vote(raw_vote(CLUSTER, 1, "s2")).await.is_err());
    assert_eq!(stub.calls(), 0);
}

// Goal: a node whose term is below the receiver's learns it is fenced
// from the STALE_TERM refusal: the call is Unreachable, the failure is
// recorded, and from then on it sends nothing. Method: client at term 3,
// server at term 5 (plaintext); two votes; count handler calls.
#[tokio::test]
async fn stale_sender_learns_it_is_fenced() {
    let stub = Stub::default();
    let running = serve(stub.clone(), 5, None).await;
    let mut factory = factory("s2", 3, None);
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
    let stub = Stub::default();
    let running = serve(stub.clone(), 3, None).await;
    let addr = running.addr;
    let mut newer = factory("s2", 4, None);
    let err = newer
        .new_client(raft_id_of(SERVER_NODE), &member(SERVER_NODE, addr))
        .await
        .vote(vote_request(), RPCOption::new(TTL))
        .await
        .expect_err("refused");
    assert!(format!("{err}").contains("FENCED"), "{err}");
    assert_eq!(running.guard.fenced_by(), Some(AuthorityTerm(4)));
    assert!(!newer.guard().is_fenced());

    let mut old_peer = factory("s3", 3, None);
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
    let stub = Stub {
        stopped: true,
        ..Stub::default()
    };
    let running = serve(stub.clone(), 1, None).await;
    let mut factory = factory("s2", 1, None);
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
    let stub = Stub {
        stall: Some(Duration::from_secs(2)),
        ..Stub::default()
    };
    let running = serve(stub.clone(), 1, None).await;
    let mut factory = factory("s2", 1, None);
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
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let mut factory = factory("s2", 1, None);
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
    let stub = Stub::default();
    let running = serve(stub.clone(), 1, None).await;
    let mut factory = factory("s2", 1, None);
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
