//! The storage-node trust boundary with real processes: three
//! `rap-configstore` processes enrolled through the real control plane
//! with `rap-configstore join` (their keys made on the node), bootstrapped
//! through it, then attacked and run the way an operator would.
//!
//! * an enrolled agent's certificate is refused on every Raft and
//!   authority RPC, nothing changes, and fenced approvals go on;
//! * a member's certificate cannot fence anybody with an unsigned term;
//! * a storage node's certificate cannot impersonate another storage node
//!   to its peers or to the control plane;
//! * a revoked storage certificate is refused by the others;
//! * certificates living 20 s are renewed for three lifetimes while fences
//!   keep being granted, without a restart.

use crate::bin;
use rap_controlplane::fencing::StoragePeer;
use rap_controlplane::keys::ClusterKeys;
use rap_controlplane::{enrollment, nodes, tokens};
use rap_core::tls::live::{LiveIdentity, server_config};
use rap_core::tls::pin::{ExpectedPeer, PeerTls};
use rap_core::tls::{NODE_CERT_VALIDITY_DEFAULT, TlsFiles};
use rap_proto::ids::ClusterId;
use rap_proto::pb;
use rap_proto::pb::authority_service_client::AuthorityServiceClient;
use rap_proto::pb::raft_service_client::RaftServiceClient;
use rap_testkit::cluster::{Cluster, HANG_GUARD, code_of, eventually, guarded, metric_value, run};
use rap_testkit::platform::{ControlPlane, Platform, write_private};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

const CLUSTER: &str = "c1";

/// The real control plane (in this process, serving TLS on 127.0.0.1) and
/// three `rap-configstore` processes enrolled with `rap-configstore join`.
struct Enrolled {
    p: Platform,
    cp: ControlPlane,
    cluster: Cluster,
}

/// Runs the `rap-configstore` CLI off the runtime's threads (the control
/// plane it talks to runs on them).
async fn cli(cluster: &Cluster, args: Vec<String>) -> (i32, String, String) {
    let bin = bin().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(bin)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run rap-configstore");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .map_err(|e| format!("{e}: {}", cluster.log_tails()))
    .expect("the CLI task")
}

impl Enrolled {
    /// Platform, control plane (issuing certificates valid for
    /// `validity`), three joined storage nodes, a bootstrapped group.
    async fn start(validity: Duration) -> Enrolled {
        let p = Platform::without_storage(CLUSTER, validity).await;
        let cp = p.serve().await;
        let mut cluster = Cluster::new(bin(), 3);
        let fingerprint = ClusterKeys::load(&p.ctx.keys_dir, &ClusterId::new(CLUSTER).expect("id"))
            .expect("cluster keys")
            .ca_fingerprint();
        for index in 0..cluster.nodes.len() {
            let node = &cluster.nodes[index];
            // The harness's development certificates are not this
            // cluster's: the node joins with a key of its own.
            for file in ["ca.pem", "node.pem", "node.key"] {
                let _ = std::fs::remove_file(node.tls_dir.join(file));
            }
            let token = tokens::create(
                &p.ctx,
                &p.owner,
                &pb::CreateJoinTokenRequest {
                    cluster_id: CLUSTER.into(),
                    ttl_seconds: 600,
                    max_uses: 1,
                    storage_node_id: node.id.clone(),
                },
            )
            .await
            .expect("storage token");
            assert!(
                token.join_command.starts_with("rap-configstore join "),
                "{}",
                token.join_command
            );
            let args: Vec<String> = [
                "join",
                "--control-plane",
                &cp.addr.to_string(),
                "--cluster",
                CLUSTER,
                "--node-id",
                &node.id,
                "--token",
                &token.raw_token,
                "--ca-fingerprint",
                &fingerprint,
                "--tls-dir",
                &path(&node.tls_dir),
                "--advertise",
                &node.address(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let (code, stdout, stderr) = cli(&cluster, args).await;
            assert_eq!(code, 0, "join {}: {stdout}{stderr}", node.id);
            assert!(stdout.contains("enrolled storage node"), "{stdout}");
        }
        cluster.start_all().await;
        p.bootstrap(cluster.voter_specs()).await;
        p.wait_for_fence().await;
        Enrolled { p, cp, cluster }
    }

    /// The storage nodes as the control plane dials them.
    async fn peers(&self) -> Vec<StoragePeer> {
        self.p.storage_peers().await
    }

    /// `Status` of node `index`, asked by the control plane (pinned).
    async fn status(&self, index: usize) -> pb::AuthorityStatusResponse {
        let network = self.p.ctx.authority.network(CLUSTER).expect("network");
        let node = &self.cluster.nodes[index];
        let mut client = rap_authority::client::authority_client(
            &network,
            &node.address(),
            &ExpectedPeer::storage_named(&node.id),
        )
        .expect("client");
        guarded(
            "Status",
            client.status(pb::AuthorityStatusRequest {
                cluster_id: CLUSTER.into(),
            }),
        )
        .await
        .expect("Status")
        .into_inner()
    }

    /// A fence through the control plane's client (pinned, mTLS).
    async fn fence(
        &self,
        purpose: &str,
    ) -> Result<pb::FencingToken, rap_controlplane::error::Error> {
        let peers = self.peers().await;
        self.p
            .ctx
            .authority
            .acquire_fence(CLUSTER, &peers, 1, purpose)
            .await
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A channel presenting the certificate in `files` to storage node `index`
/// (pinned to it, as any honest client would).
fn channel_as(files: &TlsFiles, cluster: &Cluster, index: usize) -> Channel {
    let tls = PeerTls::new(LiveIdentity::load(files.clone()).expect("identity")).expect("tls");
    let node = &cluster.nodes[index];
    Endpoint::from_shared(format!("http://{}", node.address()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector_lazy(
            tls.connector(&ExpectedPeer::storage_named(&node.id))
                .expect("connector"),
        )
}

/// A Raft request whose header claims `term` from `from`, with `proof`
/// and a 3-byte garbage payload.
fn forged_raft(term: u64, from: &str, proof: &[u8]) -> pb::RaftRequest {
    pb::RaftRequest {
        header: Some(pb::RaftRpcHeader {
            cluster_id: CLUSTER.into(),
            authority_term: term,
            from_node_id: from.into(),
            term_proof: proof.to_vec(),
        }),
        payload: vec![1, 2, 3],
    }
}

/// Enrols an agent through the control plane (approved by the owner) and
/// writes its certificate and key, as `rap-node-agent join` would keep
/// them, into `dir`.
async fn enrolled_agent(p: &Platform, dir: &Path) -> TlsFiles {
    let (key, id) = p.join(&[]).await;
    enrollment::approve(
        &p.ctx,
        &p.owner,
        &pb::ReviewJoinRequestRequest {
            join_request_id: id.clone(),
            ..Default::default()
        },
    )
    .await
    .expect("approve the agent");
    let answer = enrollment::status(&p.ctx, &key.status_request(CLUSTER, &id))
        .await
        .expect("poll");
    let identity = answer.identity.expect("identity");
    let keys =
        ClusterKeys::load(&p.ctx.keys_dir, &ClusterId::new(CLUSTER).expect("id")).expect("keys");
    let files = TlsFiles::in_dir(dir);
    std::fs::create_dir_all(dir).expect("mkdir");
    write_private(&files.key, key.pem().as_bytes());
    std::fs::write(&files.cert, identity.certificate_chain_pem).expect("cert");
    std::fs::write(&files.ca, keys.ca_cert_pem()).expect("ca");
    files
}

/// What must not change on a node: term, fence seq, view, leader, voters.
fn snapshot(status: &pb::AuthorityStatusResponse) -> (u64, u64, i32, usize) {
    (
        status.authority_term,
        status.last_fence_seq,
        status.partition_view,
        status.voters.len(),
    )
}

// Goal (finding 1 and 2): an ordinary enrolled agent's certificate (same
// cluster CA) cannot fence the authority group or call any authority
// RPC: Vote, AppendEntries and InstallSnapshot with a higher term and a
// garbage payload, and every AuthorityService method (also marked as
// relayed) are refused with PERMISSION_DENIED on every storage node;
// nothing changes, every view stays healthy, the refusals are counted;
// a member's own certificate cannot fence anybody with an unsigned or
// garbage term proof either; afterwards a fenced approval through the
// control plane succeeds.
// Method: the real agent enrollment gives the certificate; raw gRPC
// clients with it against the three processes; statuses before and after
// through the control plane; /metrics; one more approval.
#[test]
fn an_enrolled_agent_is_refused_everywhere() {
    run(async {
        let e = Enrolled::start(NODE_CERT_VALIDITY_DEFAULT).await;
        let agent = enrolled_agent(&e.p, &e.p.dir.path().join("agent")).await;
        let agent_id = agent.identity().expect("identity").node_id.to_string();
        // The approval's scopes are published (with a fence) first.
        e.p.wait_for_publisher().await;
        let mut before = Vec::new();
        for index in 0..3 {
            before.push(snapshot(&e.status(index).await));
        }
        for index in 0..3 {
            let channel = channel_as(&agent, &e.cluster, index);
            let mut raft = RaftServiceClient::new(channel.clone());
            for from in [agent_id.as_str(), "s1", "s2"] {
                let statuses = [
                    raft.vote(forged_raft(2, from, b"abc")).await,
                    raft.append_entries(forged_raft(2, from, b"abc")).await,
                    raft.install_snapshot(forged_raft(2, from, b"abc")).await,
                ];
                for status in statuses {
                    let status = status.expect_err("a Raft RPC from an agent");
                    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
                    assert_eq!(code_of(&status), "CALLER_NOT_ADMITTED", "{status:?}");
                }
            }
            let mut authority = AuthorityServiceClient::new(channel);
            for relayed in [false, true] {
                fn req<T>(message: T, relayed: bool) -> tonic::Request<T> {
                    let mut request = tonic::Request::new(message);
                    if relayed {
                        request.metadata_mut().insert(
                            "x-rap-forwarded",
                            tonic::metadata::MetadataValue::from_static("1"),
                        );
                    }
                    request
                }
                let voter = pb::VoterSpec {
                    node_id: "n-evil".into(),
                    address: "127.0.0.1:1".into(),
                    domain: None,
                };
                let results: Vec<(&str, tonic::Status)> = vec![
                    (
                        "AcquireFence",
                        authority
                            .acquire_fence(req(
                                pb::AcquireFenceRequest {
                                    cluster_id: CLUSTER.into(),
                                    purpose: "evil".into(),
                                    expected_term: 1,
                                },
                                relayed,
                            ))
                            .await
                            .expect_err("fence"),
                    ),
                    (
                        "PublishShards",
                        authority
                            .publish_shards(req(pb::PublishShardsRequest::default(), relayed))
                            .await
                            .expect_err("publish"),
                    ),
                    (
                        "ShardHeads",
                        authority
                            .shard_heads(req(
                                pb::ShardHeadsRequest {
                                    cluster_id: CLUSTER.into(),
                                    scopes: Vec::new(),
                                    include_envelopes: true,
                                },
                                relayed,
                            ))
                            .await
                            .expect_err("heads"),
                    ),
                    (
                        "Status",
                        authority
                            .status(req(
                                pb::AuthorityStatusRequest {
                                    cluster_id: CLUSTER.into(),
                                },
                                relayed,
                            ))
                            .await
                            .expect_err("status"),
                    ),
                    (
                        "Promote",
                        authority
                            .promote(req(pb::PromoteRequest::default(), relayed))
                            .await
                            .expect_err("promote"),
                    ),
                    (
                        "Rejoin",
                        authority
                            .rejoin(req(pb::RejoinRequest::default(), relayed))
                            .await
                            .expect_err("rejoin"),
                    ),
                    (
                        "Bootstrap",
                        authority
                            .bootstrap(req(
                                pb::BootstrapGroupRequest {
                                    cluster_id: CLUSTER.into(),
                                    voters: vec![voter.clone()],
                                    trust_root: vec![],
                                    allow_single_voter: true,
                                },
                                relayed,
                            ))
                            .await
                            .expect_err("bootstrap"),
                    ),
                    (
                        "AddVoter",
                        authority
                            .add_voter(req(
                                pb::AddVoterRequest {
                                    cluster_id: CLUSTER.into(),
                                    voter: Some(voter.clone()),
                                },
                                relayed,
                            ))
                            .await
                            .expect_err("add voter"),
                    ),
                    (
                        "RemoveVoter",
                        authority
                            .remove_voter(req(
                                pb::RemoveVoterRequest {
                                    cluster_id: CLUSTER.into(),
                                    node_id: "s1".into(),
                                },
                                relayed,
                            ))
                            .await
                            .expect_err("remove voter"),
                    ),
                    (
                        "PrepareJoin",
                        authority
                            .prepare_join(req(
                                pb::PrepareJoinRequest {
                                    cluster_id: CLUSTER.into(),
                                    members: vec![voter],
                                },
                                relayed,
                            ))
                            .await
                            .expect_err("prepare join"),
                    ),
                ];
                for (rpc, status) in results {
                    assert_eq!(
                        status.code(),
                        tonic::Code::PermissionDenied,
                        "{rpc}: {status:?}"
                    );
                    assert_eq!(code_of(&status), "CALLER_NOT_ADMITTED", "{rpc}: {status:?}");
                }
            }
        }

        // A member's own certificate with an unsigned higher term: refused,
        // nobody fenced.
        let s3 = TlsFiles::in_dir(&e.cluster.nodes[2].tls_dir);
        for index in 0..2 {
            let mut raft = RaftServiceClient::new(channel_as(&s3, &e.cluster, index));
            for proof in [&b""[..], &b"garbage"[..]] {
                let status = raft
                    .vote(forged_raft(2, "s3", proof))
                    .await
                    .expect_err("unproven term");
                assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
                assert_eq!(code_of(&status), "UNPROVEN_TERM", "{status:?}");
            }
        }

        for (index, before) in before.iter().enumerate() {
            let status = e.status(index).await;
            assert_eq!(
                &snapshot(&status),
                before,
                "{} changed",
                e.cluster.nodes[index].id
            );
            assert_eq!(
                status.partition_view,
                pb::PartitionView::Healthy as i32,
                "{} is not healthy",
                e.cluster.nodes[index].id
            );
            let (_, metrics) = e.cluster.http(index, "/metrics").await;
            let counted = metric_value(
                &metrics,
                "rap_refusals_total",
                &[("reason", "CALLER_NOT_ADMITTED")],
            )
            .unwrap_or(0.0);
            assert!(
                counted >= 27.0,
                "{}: {counted} refusals counted",
                e.cluster.nodes[index].id
            );
        }
        let unproven = e
            .cluster
            .metric_sum("rap_refusals_total", &[("reason", "UNPROVEN_TERM")])
            .await;
        assert_eq!(unproven, 4.0);

        // The control plane's fenced mutations go on.
        let (_, id) = e.p.join(&[]).await;
        enrollment::approve(
            &e.p.ctx,
            &e.p.owner,
            &pb::ReviewJoinRequestRequest {
                join_request_id: id,
                ..Default::default()
            },
        )
        .await
        .expect("a fenced approval after the attack");
        drop(e.cp);
    });
}

/// A TLS server on `addr` presenting `files` (another node's certificate),
/// counting TCP connections and completed handshakes; it answers nothing.
async fn impostor(
    addr: std::net::SocketAddr,
    files: &TlsFiles,
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let identity = LiveIdentity::load(files.clone()).expect("impostor identity");
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&identity).expect("tls"));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the impostor");
    let connections = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let (c, h) = (connections.clone(), handshakes.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let h = h.clone();
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(tcp).await {
                    h.fetch_add(1, Ordering::SeqCst);
                    // Hold the connection without answering.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    drop(stream);
                }
            });
        }
    });
    (connections, handshakes)
}

// Goal (finding 4): a storage node holding a valid certificate of another
// storage node cannot impersonate it: when s1 is down and a server on
// s1's address presents s3's certificate (same CA, storage kind), s1's
// peers and the control plane dial it but never finish a handshake, and
// the control plane's fence through it is refused.
// Method: kill s1; an impostor TLS server with s3's files on s1's port
// counts connections and completed handshakes; wait for the peers' Raft
// and probe traffic; ask the control plane for a fence through s1 only.
#[test]
fn a_storage_node_cannot_impersonate_another() {
    run(async {
        let mut e = Enrolled::start(NODE_CERT_VALIDITY_DEFAULT).await;
        e.cluster.kill(0);
        let s3 = TlsFiles::in_dir(&e.cluster.nodes[2].tls_dir);
        let (connections, handshakes) = impostor(e.cluster.nodes[0].grpc, &s3).await;
        eventually(
            "the peers dial s1",
            HANG_GUARD,
            Duration::from_millis(50),
            || async { (connections.load(Ordering::SeqCst) >= 2).then_some(()) },
        )
        .await;
        let only_s1 = vec![StoragePeer {
            node_id: "s1".into(),
            address: e.cluster.nodes[0].address(),
        }];
        let refused =
            e.p.ctx
                .authority
                .acquire_fence(CLUSTER, &only_s1, 1, "via the impostor")
                .await;
        assert!(
            refused.is_err(),
            "a fence through the impostor: {refused:?}"
        );
        assert_eq!(
            handshakes.load(Ordering::SeqCst),
            0,
            "nobody finished a handshake with the impostor ({} connections)",
            connections.load(Ordering::SeqCst)
        );
        // The remaining majority still grants fences.
        e.fence("after").await.expect("fence through s2 and s3");
        drop(e.cp);
    });
}

// Goal (finding 5): storage nodes follow trust/revocations: after the
// control plane revokes storage node s3, s1 and s2 refuse s3's
// certificate with CERTIFICATE_REVOKED, and the group still grants
// fences.
// Method: nodes::revoke of s3 (publishes trust/revocations under a
// fence); s3's certificate calls Status and Vote on s1 and s2.
#[test]
fn revoked_storage_certificates_are_refused() {
    run(async {
        let e = Enrolled::start(NODE_CERT_VALIDITY_DEFAULT).await;
        nodes::revoke(
            &e.p.ctx,
            &e.p.owner,
            &pb::RevokeNodeRequest {
                cluster_id: CLUSTER.into(),
                node_id: "s3".into(),
                reason: "test".into(),
            },
        )
        .await
        .expect("revoke s3");
        let s3 = TlsFiles::in_dir(&e.cluster.nodes[2].tls_dir);
        for index in 0..2 {
            eventually(
                "s3 is refused as revoked",
                HANG_GUARD,
                Duration::from_millis(100),
                || async {
                    let mut client =
                        AuthorityServiceClient::new(channel_as(&s3, &e.cluster, index));
                    let status = client
                        .status(pb::AuthorityStatusRequest {
                            cluster_id: CLUSTER.into(),
                        })
                        .await
                        .err()?;
                    (code_of(&status) == "CERTIFICATE_REVOKED").then_some(())
                },
            )
            .await;
            let mut raft = RaftServiceClient::new(channel_as(&s3, &e.cluster, index));
            let status = raft
                .vote(forged_raft(1, "s3", &[]))
                .await
                .expect_err("revoked");
            assert_eq!(code_of(&status), "CERTIFICATE_REVOKED", "{status:?}");
        }
        eventually(
            "fences after the revocation",
            HANG_GUARD,
            Duration::from_millis(100),
            || async { e.fence("after revocation").await.ok() },
        )
        .await;
        drop(e.cp);
    });
}

// Goal (finding 3): a cluster whose certificates live 20 s runs for three
// lifetimes: every storage node renews its own certificate through the
// control plane (key rotated) before it expires and reloads it without a
// restart; fences keep being granted all along and every view stays
// healthy; no node logs a certificate failure.
// Method: control plane issuing 20 s certificates; three joined
// processes; for 62 s a fence every 300 ms (each must be granted) and the
// views every 2 s; then the rotated identities per node in PostgreSQL,
// the pids, and the node logs.
#[test]
fn twenty_second_certificates_are_renewed_for_three_lifetimes() {
    run(async {
        let lifetime = Duration::from_secs(20);
        let e = Enrolled::start(lifetime).await;
        let pids: Vec<Option<u32>> = e.cluster.nodes.iter().map(|n| n.pid()).collect();
        let started = Instant::now();
        let mut granted = 0u32;
        let mut last_views = Instant::now();
        while started.elapsed() < lifetime * 3 + Duration::from_secs(2) {
            let fence = e.fence("renewal run").await;
            assert!(
                fence.is_ok(),
                "fence refused after {:?}: {fence:?}\n{}",
                started.elapsed(),
                e.cluster.log_tails()
            );
            granted += 1;
            if last_views.elapsed() > Duration::from_secs(2) {
                last_views = Instant::now();
                for index in 0..3 {
                    let view = e.status(index).await.partition_view;
                    assert_eq!(
                        view,
                        pb::PartitionView::Healthy as i32,
                        "view of {}",
                        e.cluster.nodes[index].id
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for node in &e.cluster.nodes {
            let rotated: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM node_identities
                  WHERE cluster_id = $1 AND node_id = $2 AND identity_status = 'rotated'",
            )
            .bind(CLUSTER)
            .bind(&node.id)
            .fetch_one(&e.p.ctx.pool)
            .await
            .expect("count");
            assert!(
                rotated >= 3,
                "{} renewed {rotated} times in three lifetimes",
                node.id
            );
            let log = std::fs::read_to_string(&node.log).expect("log");
            for failure in [
                "Expired",
                "expired certificate",
                "BadCertificate",
                "renewal failed",
            ] {
                assert!(!log.contains(failure), "{} logged {failure:?}", node.id);
            }
        }
        let now: Vec<Option<u32>> = e.cluster.nodes.iter().map(|n| n.pid()).collect();
        assert_eq!(pids, now, "no node was restarted");
        println!(
            "twenty-second certificates: {granted} fences granted over {:?}",
            started.elapsed()
        );
        drop(e.cp);
    });
}
