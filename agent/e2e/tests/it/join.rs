//! `rap-node-agent join` as an operator runs it: the real binary against
//! the real control plane server (TLS listener, PostgreSQL, a 3-voter
//! authority group), approved or rejected through the control plane's
//! enrollment functions.

use rap_controlplane::enrollment;
use rap_controlplane::keys::ClusterKeys;
use rap_node_agent::state::{self, IdentityRecord, StorageEndpointRecord};
use rap_proto::ids::ClusterId;
use rap_proto::pb;
use rap_testkit::platform::Platform;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

/// Hang guard for one agent run.
const AGENT_RUN_MAX: Duration = Duration::from_secs(60);
/// Hang guard for a join request to show up.
const REQUEST_APPEARS_MAX: Duration = Duration::from_secs(30);

pub(crate) fn cluster_keys(p: &Platform) -> ClusterKeys {
    ClusterKeys::load(
        &p.ctx.keys_dir,
        &ClusterId::new(p.cluster.as_str()).unwrap(),
    )
    .unwrap()
}

/// What one agent run printed and how it ended.
pub(crate) struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// A running `rap-node-agent join`.
pub(crate) struct Agent {
    child: tokio::process::Child,
}

impl Agent {
    /// Starts `rap-node-agent join` with the standard arguments plus `extra`.
    pub(crate) fn join(
        server: &rap_testkit::platform::ControlPlane,
        cluster: &str,
        token: &str,
        fingerprint: &str,
        state_dir: &Path,
        extra: &[&str],
    ) -> Agent {
        let addr = server.addr.to_string();
        let mut args = vec![
            "join",
            "--server",
            &addr,
            "--cluster",
            cluster,
            "--token",
            token,
            "--ca-fingerprint",
            fingerprint,
            "--poll-interval",
            "200ms",
        ];
        args.extend_from_slice(extra);
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rap-node-agent-under-test"))
            .args(&args)
            .env("RAP_AGENT_STATE_DIR", state_dir)
            .env_remove("RAP_JOIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Agent { child }
    }

    /// Waits for it to exit (hang guard [`AGENT_RUN_MAX`]).
    pub(crate) async fn finish(self) -> Run {
        let output = tokio::time::timeout(AGENT_RUN_MAX, self.child.wait_with_output())
            .await
            .expect("hang guard: the agent did not exit")
            .unwrap();
        let run = Run {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        eprintln!(
            "agent exited {:?}\n--- stdout\n{}--- stderr\n{}",
            run.code(),
            run.stdout,
            run.stderr
        );
        run
    }
}

/// The cluster's pending join requests, once there are `n` of them.
pub(crate) async fn pending_requests(p: &Platform, n: usize) -> Vec<pb::JoinRequest> {
    let deadline = tokio::time::Instant::now() + REQUEST_APPEARS_MAX;
    loop {
        let (requests, _) = enrollment::list(
            &p.ctx,
            &p.owner,
            &pb::ListJoinRequestsRequest {
                cluster_id: p.cluster.clone(),
                status: pb::JoinRequestStatus::Pending as i32,
                page: None,
            },
        )
        .await
        .unwrap();
        if requests.len() >= n {
            return requests;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hang guard: no join request within {REQUEST_APPEARS_MAX:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cluster_dir(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir.join(cluster)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn uri_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

// Goal: the join command works as printed by `rapctl token create`, the
// pin is enforced before anything is sent, and a restarted join resumes
// instead of submitting again. Method: the real binary, the real server;
// (1) a wrong fingerprint: exit 1 naming the fingerprint, no request, the
// token unused; (2) a join that gives up waiting (exit 3) and a second run
// that resumes the same request, which the owner approves: exit 0 and
// node.pem (URI SAN names the node, chains to the pinned CA), node.key
// (0600, the certificate's key), ca.pem, identity.json, trust-root.bin,
// storage-endpoints.json, capabilities.json; the files work for an mTLS
// heartbeat; (3) a third run does nothing ("already enrolled").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_pins_resumes_and_enrolls() {
    let p = Platform::start().await;
    let server = p.serve().await;
    let keys = cluster_keys(&p);
    let fingerprint = keys.ca_fingerprint();
    let token = p.token(1).await;
    let state_dir = tempfile::tempdir().unwrap();

    // (1) Wrong fingerprint: refused before the token is sent.
    let wrong = blake3::hash(b"not the cluster CA").to_hex().to_string();
    let run = Agent::join(
        &server,
        &p.cluster,
        &token,
        &wrong,
        state_dir.path(),
        &["--wait", "30s"],
    )
    .finish()
    .await;
    assert_eq!(run.code(), Some(1));
    assert!(run.stderr.contains(&wrong), "{}", run.stderr);
    assert!(run.stderr.contains("fingerprint"), "{}", run.stderr);
    assert_eq!(
        p.count("SELECT count(*) FROM node_join_requests WHERE kind = 'node'")
            .await,
        0
    );
    assert_eq!(
        p.count("SELECT count(*) FROM node_join_tokens WHERE used_count > 0 AND scope = 'join'")
            .await,
        0
    );
    assert!(p.audit_events("join-request.submit").await.is_empty());

    // (2) Submit, give up waiting after a moment.
    let extra = [
        "--capability",
        "can_run_rdp_worker",
        "--capability",
        "gpu=nvidia-l4",
        "--role",
        "entry-node",
        "--hostname",
        "host-x",
        "--region",
        "r1",
        "--zone",
        "z1",
    ];
    let mut first = extra.to_vec();
    first.extend_from_slice(&["--wait", "1s"]);
    let run = Agent::join(
        &server,
        &p.cluster,
        &token,
        &fingerprint,
        state_dir.path(),
        &first,
    )
    .finish()
    .await;
    assert_eq!(run.code(), Some(3), "still pending");
    let requests = pending_requests(&p, 1).await;
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    let id = request.join_request_id.clone();
    assert!(
        run.stdout.contains(&format!(
            "waiting for approval: rapctl join-request approve {id}"
        )),
        "{}",
        run.stdout
    );
    let dir = cluster_dir(state_dir.path(), &p.cluster);
    assert!(dir.join(state::JOIN_REQUEST_FILE).exists());
    let facts = request.facts.clone().unwrap();
    assert_eq!(facts.hostname, "host-x");
    assert_eq!(facts.domain.unwrap().zone, "z1");
    assert_eq!(request.requested_roles, vec!["entry-node".to_string()]);
    let mut capabilities: Vec<_> = request
        .capabilities
        .iter()
        .map(|c| (c.name.as_str(), c.detail.as_str()))
        .collect();
    capabilities.sort();
    assert_eq!(
        capabilities,
        vec![("can_run_rdp_worker", ""), ("gpu", "nvidia-l4")]
    );

    // Restarted: resumes the same request (the token is used up, so a
    // second submission would fail); the owner approves meanwhile.
    let mut second = extra.to_vec();
    second.extend_from_slice(&["--wait", "30s", "-o", "json"]);
    let agent = Agent::join(
        &server,
        &p.cluster,
        &token,
        &fingerprint,
        state_dir.path(),
        &second,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let approved = enrollment::approve(
        &p.ctx,
        &p.owner,
        &pb::ReviewJoinRequestRequest {
            join_request_id: id.clone(),
            node_id: "node-a".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(approved.node_id, "node-a");
    let run = agent.finish().await;
    assert_eq!(run.code(), Some(0));
    assert!(
        run.stderr.contains(&format!("resuming join request {id}")),
        "{}",
        run.stderr
    );
    let answer: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(answer["status"], "approved");
    assert_eq!(answer["node_id"], "node-a");
    assert_eq!(
        p.count("SELECT count(*) FROM node_join_requests WHERE kind = 'node'")
            .await,
        1
    );

    // The files.
    let chain_pem = std::fs::read(dir.join(state::NODE_CERT_FILE)).unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(&chain[1], keys.ca_cert_der());
    assert_eq!(
        uri_sans(chain[0].as_ref()),
        vec![format!("rap://cluster/{}/node/node-a", p.cluster)]
    );
    let key_path = dir.join(state::NODE_KEY_FILE);
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(mode(&dir), 0o700);
    let key = state::read_key_file(&key_path).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.verifying_key().as_bytes().as_slice()
    );
    let ca_pem = std::fs::read(dir.join(state::CA_CERT_FILE)).unwrap();
    let ca = CertificateDer::from_pem_slice(&ca_pem).unwrap();
    assert_eq!(
        rap_controlplane::keys::certificate_fingerprint(ca.as_ref()),
        fingerprint
    );
    let trust_root = std::fs::read(dir.join(state::TRUST_ROOT_FILE)).unwrap();
    let verified = rap_proto::envelope::VerifiedTrustRoot::verify_genesis(
        &trust_root,
        &ClusterId::new(p.cluster.as_str()).unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(verified.root_hash().to_hex(), keys.trust_root_hash_hex());
    let identity: IdentityRecord =
        serde_json::from_slice(&std::fs::read(dir.join(state::IDENTITY_FILE)).unwrap()).unwrap();
    assert_eq!(identity.node_id, "node-a");
    assert_eq!(identity.cluster_id, p.cluster);
    assert_eq!(identity.ca_fingerprint, fingerprint);
    assert!(identity.not_after_unix_ms > rap_proto::time::UnixMillis::now().0);
    let endpoints: Vec<StorageEndpointRecord> =
        serde_json::from_slice(&std::fs::read(dir.join(state::STORAGE_ENDPOINTS_FILE)).unwrap())
            .unwrap();
    assert_eq!(endpoints.len(), rap_testkit::platform::VOTERS);
    let stored: Vec<state::CapabilityRecord> =
        serde_json::from_slice(&std::fs::read(dir.join(state::CAPABILITIES_FILE)).unwrap())
            .unwrap();
    let mut stored: Vec<_> = stored
        .iter()
        .map(|c| (c.name.as_str(), c.detail.as_str()))
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        vec![("can_run_rdp_worker", ""), ("gpu", "nvidia-l4")]
    );
    assert!(!dir.join(state::JOIN_REQUEST_FILE).exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The stored certificate and key work: an mTLS heartbeat.
    let tls = rap_controlplane::tls::client_tls_config(
        &String::from_utf8(ca_pem).unwrap(),
        &format!("{}.cluster.rap", p.cluster),
        Some((
            &String::from_utf8(chain_pem).unwrap(),
            &std::fs::read_to_string(&key_path).unwrap(),
        )),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = rap_proto::pb::agent_service_client::AgentServiceClient::new(channel)
        .heartbeat(pb::HeartbeatRequest {
            cluster_id: p.cluster.clone(),
            node_id: "node-a".into(),
            health: pb::NodeHealth::Healthy as i32,
            agent_version: "0.1.0".into(),
            sent_at_unix_ms: rap_proto::time::UnixMillis::now().0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.next_interval_ms > 0);

    // (3) Once enrolled, join does nothing.
    let run = Agent::join(
        &server,
        &p.cluster,
        &token,
        &fingerprint,
        state_dir.path(),
        &[],
    )
    .finish()
    .await;
    assert_eq!(run.code(), Some(0));
    assert!(run.stdout.contains("already enrolled"), "{}", run.stdout);
    assert!(run.stdout.contains("node-a"), "{}", run.stdout);
    assert_eq!(
        p.count("SELECT count(*) FROM node_join_requests WHERE kind = 'node'")
            .await,
        1
    );
}

// Goal: an interrupted join keeps its request and resumes it; a rejected
// request ends the join with exit 1 and the admin's reason, and forgets
// the request (a new token joins afresh). Method: the real binary; SIGINT
// while it polls (exit 130), run again, the owner rejects while it polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_then_rejected() {
    let p = Platform::start().await;
    let server = p.serve().await;
    let fingerprint = cluster_keys(&p).ca_fingerprint();
    let token = p.token(1).await;
    let state_dir = tempfile::tempdir().unwrap();
    let dir = cluster_dir(state_dir.path(), &p.cluster);

    // --wait defaults to forever: only a signal ends it.
    let agent = Agent::join(
        &server,
        &p.cluster,
        &token,
        &fingerprint,
        state_dir.path(),
        &[],
    );
    let requests = pending_requests(&p, 1).await;
    let id = requests[0].join_request_id.clone();
    let pid = agent.child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let run = agent.finish().await;
    assert_eq!(run.code(), Some(130));
    assert!(
        run.stderr
            .contains(&format!("interrupted while join request {id} is pending")),
        "{}",
        run.stderr
    );
    assert!(dir.join(state::JOIN_REQUEST_FILE).exists());

    let agent = Agent::join(
        &server,
        &p.cluster,
        &token,
        &fingerprint,
        state_dir.path(),
        &["--wait", "30s"],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reason = "unknown host, not in the inventory";
    enrollment::reject(
        &p.ctx,
        &p.owner,
        &pb::ReviewJoinRequestRequest {
            join_request_id: id.clone(),
            reason: reason.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let run = agent.finish().await;
    assert_eq!(run.code(), Some(1));
    assert!(
        run.stdout.contains(&format!("resuming join request {id}")),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("rejected"), "{}", run.stderr);
    assert!(run.stderr.contains(reason), "{}", run.stderr);
    assert!(!dir.join(state::JOIN_REQUEST_FILE).exists());
    assert!(!dir.join(state::IDENTITY_FILE).exists());
    assert!(!dir.join(state::NODE_CERT_FILE).exists());
    assert_eq!(
        p.count("SELECT count(*) FROM node_join_requests WHERE kind = 'node'")
            .await,
        1
    );
}
