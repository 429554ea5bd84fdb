//! The running agent's liveness tasks against the real control plane
//! server: heartbeats (`rap_node_agent::heartbeat`) and certificate
//! renewal with key rotation (`rap_node_agent::renewal`), on agents
//! enrolled through `rap_node_agent::enroll::join`.

use rap_controlplane::keys::ClusterKeys;
use rap_controlplane::{enrollment, nodes};
use rap_core::tls::ca_pin::CaFingerprint;
use rap_node_agent::control::ControlPlane;
use rap_node_agent::enroll::{JoinOptions, JoinOutcome};
use rap_node_agent::heartbeat::{
    AGENT_VERSION, AcceptedVersionReport, AgentReport, Health, HeartbeatOptions, HeartbeatOutcome,
    run_heartbeats,
};
use rap_node_agent::renewal::{self, RenewalOutcome};
use rap_node_agent::state::{self, ClusterState};
use rap_proto::ids::ClusterId;
use rap_proto::pb;
use rap_testkit::platform::{ControlPlane as Server, Platform};
use std::path::Path;
use std::time::Duration;
use tokio::sync::watch;

/// Hang guard for a join to be approved and stored.
const JOIN_MAX: Duration = Duration::from_secs(30);
/// Hang guard for a watched outcome.
const OUTCOME_MAX: Duration = Duration::from_secs(60);

fn cluster(p: &Platform) -> ClusterId {
    ClusterId::new(p.cluster.as_str()).unwrap()
}

/// Enrolls node `node_id` with `capabilities` through the agent's join
/// (approved by the owner); returns its cluster state directory.
async fn enroll(
    p: &Platform,
    server: &Server,
    state_dir: &Path,
    node_id: &str,
    capabilities: &[(&str, &str)],
) -> ClusterState {
    let fingerprint = ClusterKeys::load(&p.ctx.keys_dir, &cluster(p))
        .unwrap()
        .ca_fingerprint();
    let options = JoinOptions {
        server: server.addr.to_string(),
        cluster: cluster(p),
        token: p.token(1).await,
        ca_fingerprint: CaFingerprint::parse(&fingerprint).unwrap(),
        state_dir: state_dir.to_path_buf(),
        capabilities: capabilities
            .iter()
            .map(|(name, detail)| pb::Capability {
                name: name.to_string(),
                detail: detail.to_string(),
            })
            .collect(),
        roles: Vec::new(),
        facts: pb::NodeFacts {
            hostname: format!("host-{node_id}"),
            ..Default::default()
        },
        poll_interval: Duration::from_millis(100),
        wait: Some(JOIN_MAX),
    };
    let joining = tokio::spawn(async move {
        rap_node_agent::enroll::join(&options, &mut |_| {}, std::future::pending()).await
    });
    let requests = crate::join::pending_requests(p, 1).await;
    enrollment::approve(
        &p.ctx,
        &p.owner,
        &pb::ReviewJoinRequestRequest {
            join_request_id: requests[0].join_request_id.clone(),
            node_id: node_id.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let outcome = tokio::time::timeout(JOIN_MAX, joining)
        .await
        .expect("hang guard: join")
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, JoinOutcome::Approved(_)), "{outcome:?}");
    ClusterState::open(state_dir, &cluster(p)).unwrap()
}

/// Waits until `outcome` satisfies `ready` (hang guard [`OUTCOME_MAX`]).
async fn wait_for<T: Clone>(rx: &mut watch::Receiver<T>, ready: impl FnMut(&T) -> bool) -> T {
    tokio::time::timeout(OUTCOME_MAX, rx.wait_for(ready))
        .await
        .expect("hang guard: outcome")
        .unwrap()
        .clone()
}

async fn latest_count(p: &Platform, node: &str, condition: &str) -> i64 {
    p.count(&format!(
        "SELECT coalesce(sum(heartbeat_count), 0)::bigint FROM node_heartbeat_latest
          WHERE cluster_id = '{}' AND node_id = '{node}' {condition}",
        p.cluster
    ))
    .await
}

/// Heartbeat task of `options`; returns (report sender, stop, outcome).
fn spawn_heartbeats(
    options: HeartbeatOptions,
    report: AgentReport,
) -> (
    watch::Sender<AgentReport>,
    watch::Sender<bool>,
    watch::Receiver<HeartbeatOutcome>,
    tokio::task::JoinHandle<HeartbeatOutcome>,
) {
    let (report_tx, report_rx) = watch::channel(report);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (outcome_tx, outcome_rx) = watch::channel(HeartbeatOutcome::default());
    let task = tokio::spawn(run_heartbeats(options, report_rx, stop_rx, outcome_tx));
    (report_tx, stop_tx, outcome_rx, task)
}

// Goal: heartbeats of an enrolled agent reach the control plane with
// health, degraded mode, agent version and the join's capabilities; the
// control plane's interval is honoured (and a changed report goes out
// early); a heartbeat claiming another node with this node's certificate
// is refused by the control plane (PERMISSION_DENIED) and changes
// nothing. Method: two agents joined through the real server; the
// heartbeat task against it; node_heartbeat_latest, GetNode and the
// published outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_reach_the_control_plane() {
    let p = Platform::start().await;
    let server = p.serve().await;
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let state_a = enroll(
        &p,
        &server,
        dir_a.path(),
        "node-a",
        &[("gpu", "nvidia-l4"), ("can_run_rdp_worker", "")],
    )
    .await;
    enroll(&p, &server, dir_b.path(), "node-b", &[]).await;

    let link = ControlPlane::open(&state_a).unwrap();
    let options = HeartbeatOptions::new(link.clone(), &state_a).unwrap();
    assert_eq!(options.capabilities.len(), 2);
    let report = AgentReport {
        health: Health::Degraded,
        degraded_mode: true,
        services: Vec::new(),
        accepted_versions: vec![AcceptedVersionReport {
            scope: "node/node-a".into(),
            version: 3,
            authority_term: 1,
        }],
    };
    let (report_tx, stop, mut outcome, task) = spawn_heartbeats(options, report.clone());
    let first = wait_for(&mut outcome, |o| o.sent >= 1).await;
    assert!(first.reachable());
    assert_eq!(first.failed, 0);
    assert_eq!(
        first.interval,
        Some(Duration::from_secs(10)),
        "the server's interval"
    );
    assert_eq!(
        first.certificate_serial.as_deref(),
        Some(link.identity.facts().serial_hex.as_str())
    );
    let condition = format!(
        "AND health = 'degraded' AND degraded_mode AND agent_version = '{AGENT_VERSION}'
         AND capabilities @> '[{{\"name\": \"gpu\", \"detail\": \"nvidia-l4\"}}]'::jsonb
         AND jsonb_array_length(accepted_versions) = 1"
    );
    assert_eq!(latest_count(&p, "node-a", &condition).await, 1);
    let node = nodes::get(
        &p.ctx,
        &p.owner,
        &pb::GetNodeRequest {
            cluster_id: p.cluster.clone(),
            node_id: "node-a".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(node.health, "degraded");
    assert!(node.last_heartbeat_unix_ms > 0);
    let mut capabilities: Vec<_> = node
        .capabilities
        .iter()
        .map(|c| (c.name.as_str(), c.detail.as_str()))
        .collect();
    capabilities.sort();
    assert_eq!(
        capabilities,
        vec![("can_run_rdp_worker", ""), ("gpu", "nvidia-l4")]
    );

    // The 10 s interval is honoured: nothing more for a while ...
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(outcome.borrow().sent, 1);
    assert_eq!(latest_count(&p, "node-a", "").await, 1);
    // ... a changed report goes out early ...
    report_tx.send_replace(AgentReport {
        health: Health::Healthy,
        degraded_mode: false,
        ..report
    });
    let second = wait_for(&mut outcome, |o| o.sent >= 2).await;
    let second_at = tokio::time::Instant::now();
    assert_eq!(second.failed, 0);
    assert_eq!(
        latest_count(&p, "node-a", "AND health = 'healthy' AND NOT degraded_mode").await,
        2
    );
    // ... and the next one comes one interval later.
    wait_for(&mut outcome, |o| o.sent >= 3).await;
    let waited = second_at.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited <= Duration::from_secs(15),
        "{waited:?}"
    );
    stop.send_replace(true);
    let last = tokio::time::timeout(OUTCOME_MAX, task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.sent, 3);
    assert_eq!(last.failed, 0);

    // node-a's certificate, node-b's name: refused by the control plane.
    let mut forged = HeartbeatOptions::new(link.clone(), &state_a).unwrap();
    forged.control_plane.node = rap_proto::ids::NodeId::new("node-b").unwrap();
    let (_report, stop, mut outcome, task) = spawn_heartbeats(forged, AgentReport::default());
    let refused = wait_for(&mut outcome, |o| o.failed >= 1).await;
    stop.send_replace(true);
    task.await.unwrap();
    let error = refused.last_error.clone().unwrap();
    assert_eq!(error.code, "PERMISSION_DENIED", "{}", error.message);
    assert!(!error.retryable);
    assert_eq!(refused.sent, 0);
    assert!(!refused.reachable());
    assert_eq!(latest_count(&p, "node-b", "").await, 0);
    assert_eq!(latest_count(&p, "node-a", "").await, 3);
}

/// (node.pem, node.key, identity.json) as bytes.
fn files(state: &ClusterState) -> Vec<Vec<u8>> {
    [
        state::NODE_CERT_FILE,
        state::NODE_KEY_FILE,
        state::IDENTITY_FILE,
    ]
    .iter()
    .map(|name| std::fs::read(state.path(name)).unwrap())
    .collect()
}

/// The raw public key of node.pem's certificate.
fn cert_key(state: &ClusterState) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(state.path(state::NODE_CERT_FILE)).unwrap();
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.public_key().subject_public_key.data.to_vec()
}

// Goal: on short-lived certificates the renewal task renews at about two
// thirds of each lifetime with a new key each time, the files on disk
// stay a matching pair and identity.json follows, the running process
// uses the renewed certificate (the next heartbeat is sent with it, the
// superseded one being refused by the control plane); a revoked node's
// renewal is refused (PERMISSION_DENIED) and leaves every file as it
// was. Method: a control plane issuing 12 s node certificates, an agent
// joined through it, the renewal and heartbeat tasks sharing one
// identity; node_identities rows; a renewal after RevokeNode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_rotates_keys_and_stops_at_revocation() {
    const VALIDITY: Duration = Duration::from_secs(12);
    let mut p = Platform::start().await;
    // Storage nodes keep their long certificates; the agent gets 12 s ones.
    p.ctx.node_cert_validity = VALIDITY;
    let server = p.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let state = enroll(&p, &server, dir.path(), "node-r", &[]).await;
    let link = ControlPlane::open(&state).unwrap();
    let first = link.identity.facts();
    let first_key = std::fs::read(state.path(state::NODE_KEY_FILE)).unwrap();
    assert!(
        first.not_after.duration_since(first.not_before).unwrap()
            < VALIDITY + rap_core::tls::NOT_BEFORE_BACKDATE + Duration::from_secs(2)
    );

    let options = HeartbeatOptions::new(link.clone(), &state).unwrap();
    let (_report, stop_beats, mut beats, beats_task) =
        spawn_heartbeats(options, AgentReport::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (renewed_tx, mut renewed) = watch::channel(RenewalOutcome::default());
    let started = tokio::time::Instant::now();
    let renewal_task = tokio::spawn(renewal::keep_renewed(
        link.clone(),
        state.clone(),
        stop_rx,
        renewed_tx,
    ));

    let mut keys = vec![first_key];
    let mut serials = vec![first.serial_hex.clone()];
    for n in 1..=2u64 {
        let outcome = wait_for(&mut renewed, |o| o.renewals >= n).await;
        let renewal = outcome.last.unwrap();
        let lived = started.elapsed();
        eprintln!("renewal {n} after {lived:?}: {renewal:?}");
        // Not before two thirds of each lifetime.
        assert!(
            lived >= VALIDITY * 2 / 3 * n as u32 - Duration::from_secs(2),
            "{lived:?}"
        );
        assert_eq!(link.identity.facts().serial_hex, renewal.serial);
        assert!(!serials.contains(&renewal.serial));
        serials.push(renewal.serial.clone());
        let key = std::fs::read(state.path(state::NODE_KEY_FILE)).unwrap();
        assert!(!keys.contains(&key), "a new key each time");
        keys.push(key);
        let on_disk = state::read_key_file(&state.path(state::NODE_KEY_FILE)).unwrap();
        assert_eq!(
            on_disk.verifying_key().as_bytes().as_slice(),
            cert_key(&state)
        );
        let record = state.identity().unwrap().unwrap();
        assert_eq!(record.key_fingerprint, renewal.key_fingerprint);
        assert_eq!(record.not_after_unix_ms, renewal.not_after_unix_ms);
        assert!(!state.path(state::NEXT_NODE_KEY_FILE).exists());
    }
    stop_tx.send_replace(true);
    let renewals = renewal_task.await.unwrap();
    assert_eq!(renewals.renewals, 2);
    assert_eq!(renewals.failures, 0);
    assert_eq!(
        p.count(&format!(
            "SELECT count(*) FROM node_identities WHERE cluster_id = '{}' AND node_id = 'node-r'
               AND identity_status = 'rotated'",
            p.cluster
        ))
        .await,
        2
    );

    // The next heartbeat goes out with the newest certificate.
    let newest = serials.last().unwrap().clone();
    let beat = wait_for(&mut beats, |o| {
        o.certificate_serial.as_deref() == Some(newest.as_str())
    })
    .await;
    assert!(beat.reachable());
    stop_beats.send_replace(true);
    beats_task.await.unwrap();

    // Revoked: the renewal is refused and nothing changes on disk.
    nodes::revoke(
        &p.ctx,
        &p.owner,
        &pb::RevokeNodeRequest {
            cluster_id: p.cluster.clone(),
            node_id: "node-r".into(),
            reason: "decommissioned".into(),
        },
    )
    .await
    .unwrap();
    let before = files(&state);
    let error = renewal::renew_now(&link, &state).await.unwrap_err();
    assert_eq!(error.code(), "PERMISSION_DENIED", "{error}");
    assert!(!error.is_retryable());
    assert_eq!(files(&state), before);
    assert!(!state.path(state::NEXT_NODE_KEY_FILE).exists());
    assert_eq!(link.identity.facts().serial_hex, newest);
}
