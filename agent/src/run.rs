//! `rap-node-agent run`: keeps the node's verified scopes current.
//!
//! A round: read the node's own `node/<id>` scope, take the storage
//! endpoints it lists (the voters and this node's cache replicas; the
//! bootstrap list stays as the last resort), read every scope it lists as
//! readable, drop what it no longer lists, write [`STATUS_FILE`], then
//! watch those scopes on the best endpoint until the node's own scope
//! changes, the watch fails (that endpoint is scored down), or
//! [`RESYNC_INTERVAL`] passes (endpoints are ranked again). Every envelope
//! is verified before it is kept ([`crate::reads`]).
//!
//! Degraded mode: when no endpoint serves a verified scope, or the serving
//! node is in a minority, the agent keeps running on the last verified
//! state and says why in [`STATUS_FILE`] (`health: degraded`); the next
//! round that succeeds clears it.
//!
//! Revoked: when the control plane refuses a heartbeat with
//! `CERTIFICATE_REVOKED`, or the verified `trust/revocations` shard lists
//! the certificate this node presents, `run` stops every workload, writes
//! `health: revoked` and ends with [`ReadError::Revoked`] (the command
//! exits 4, which the systemd unit does not restart). Heartbeats and
//! renewal stop with it: nothing is retried for an identity that is gone.

use crate::control::ControlPlane;
use crate::heartbeat::{
    AcceptedVersionReport, AgentReport, Health, HeartbeatOptions, HeartbeatOutcome, ServiceReport,
};
use crate::reads::endpoints::{Endpoint, Scored, Tier};
use crate::reads::{Held, Outcome, ReadError, Reader};
use crate::renewal::RenewalOutcome;
use crate::state::{ClusterState, StorageEndpointRecord, TRUST_ROOT_FILE};
use crate::store::ClusterStore;
use crate::workloads::{Supervisor, WorkloadStatus};
use rap_core::tls::live::LiveIdentity;
use rap_core::tls::pin::PeerTls;
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::pb;
use rap_proto::time::UnixMillis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The status file `run` writes and `status` prints.
pub const STATUS_FILE: &str = "status.json";
/// Longest a watch runs before the endpoints are ranked again.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Pause after a round in which no endpoint served; doubled after each
/// such round up to [`RETRY_PAUSE_MAX`], so that a fleet of agents does not
/// hammer storage nodes that are coming back.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Longest pause between rounds that find no endpoint serving.
pub const RETRY_PAUSE_MAX: Duration = Duration::from_secs(30);
/// Largest status file read.
pub const STATUS_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// What `run` last knew, as `status` prints it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// The cluster.
    pub cluster_id: String,
    /// This node.
    pub node_id: String,
    /// When this was written (Unix ms).
    pub updated_at_unix_ms: i64,
    /// `healthy`, `degraded` or `revoked`.
    pub health: String,
    /// Why it is degraded or revoked ('' when healthy).
    pub degraded_reason: String,
    /// The verified scopes held.
    pub scopes: BTreeMap<String, Held>,
    /// The storage endpoints, best first, with their tiers and scores.
    pub endpoints: Vec<EndpointStatus>,
    /// The storage node that answered last.
    pub last_answer: Option<crate::reads::LastAnswer>,
    /// The peer cache: mesh peers from the verified `peers/<id>` shard.
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
    /// The desired workloads and what is observed of each.
    pub workloads: Vec<WorkloadStatus>,
    /// The control plane as the heartbeats found it.
    pub control_plane: ControlPlaneStatus,
    /// The node certificate as renewal left it.
    pub certificate: CertificateStatus,
}

/// One storage endpoint as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// `active`, `warm` or `cold`.
    pub tier: Tier,
    /// The endpoint and its score.
    #[serde(flatten)]
    pub scored: Scored,
}

/// One mesh peer, as the verified `peers/<id>` shard names it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its node id.
    pub node_id: String,
    /// Its mesh-capable roles.
    pub roles: Vec<String>,
    /// `active` (same group) or `warm`.
    pub tier: String,
}

/// The heartbeats' view of the control plane.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ControlPlaneStatus {
    /// Whether the last heartbeat got through.
    pub reachable: bool,
    /// Heartbeats that got through.
    pub sent: u64,
    /// Heartbeats refused or lost.
    pub failed: u64,
    /// When a heartbeat last got through (Unix ms; 0: never).
    pub last_heartbeat_unix_ms: i64,
    /// The last failure's code and message ('' when none).
    pub last_error: String,
}

/// The node certificate's renewals.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// Renewals by this run.
    pub renewals: u64,
    /// The newest certificate's serial ('' before the first renewal).
    pub serial: String,
    /// Its expiry (Unix ms; 0 before the first renewal).
    pub not_after_unix_ms: i64,
    /// The last failure ('' when none).
    pub last_error: String,
}

/// The agent's reader of `cluster` from its enrolled state in `state_dir`,
/// presenting `identity` (reloaded in place when renewal replaces it).
pub fn open_reader(
    state_dir: &Path,
    cluster: &ClusterId,
    identity: Arc<LiveIdentity>,
) -> Result<Reader, ReadError> {
    let state = ClusterState::open(state_dir, cluster)?;
    let store = ClusterStore::open(state_dir, &state, cluster)?;
    let record = store.identity()?.ok_or_else(|| {
        ReadError::Setup(format!(
            "not enrolled in cluster {cluster} under {}: run `rap-node-agent join` first",
            state_dir.display()
        ))
    })?;
    let node_id = NodeId::new(record.node_id.as_str())?;
    let tls = PeerTls::new(identity).map_err(|e| ReadError::Setup(format!("TLS: {e}")))?;
    let genesis = crate::state::read_bounded(
        &state.path(TRUST_ROOT_FILE),
        rap_proto::limits::TRUST_ROOT_BYTES_MAX as u64,
    )?;
    let bootstrap = store.storage_endpoints()?;
    let endpoints = bootstrap.into_iter().map(bootstrap_endpoint).collect();
    Reader::open(
        state,
        store,
        cluster.clone(),
        node_id,
        &genesis,
        Some(tls),
        endpoints,
    )
}

fn bootstrap_endpoint(record: StorageEndpointRecord) -> Endpoint {
    Endpoint {
        node_id: record.node_id,
        address: record.address,
        region: record.region,
        zone: record.zone,
        role: "bootstrap".to_string(),
    }
}

/// The tasks `run` keeps beside its reads.
struct Tasks {
    report: watch::Sender<AgentReport>,
    heartbeat: watch::Receiver<HeartbeatOutcome>,
    renewal: watch::Receiver<RenewalOutcome>,
    stop: watch::Sender<bool>,
    identity: Arc<LiveIdentity>,
}

/// How the agent stands, as [`STATUS_FILE`] and the store say it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Standing {
    /// Reads and heartbeats work.
    Healthy,
    /// Running on the last verified state; why.
    Degraded(String),
    /// The node's identity was revoked; why.
    Revoked(String),
}

impl Standing {
    fn of(degraded: Option<String>) -> Standing {
        degraded.map_or(Standing::Healthy, Standing::Degraded)
    }

    fn name(&self) -> &'static str {
        match self {
            Standing::Healthy => "healthy",
            Standing::Degraded(_) => "degraded",
            Standing::Revoked(_) => "revoked",
        }
    }

    fn reason(&self) -> &str {
        match self {
            Standing::Healthy => "",
            Standing::Degraded(why) | Standing::Revoked(why) => why,
        }
    }
}

/// Runs rounds until `stop` resolves; heartbeats and renewal run beside
/// them until then.
pub async fn run(
    state_dir: &Path,
    cluster: &ClusterId,
    echo_listen: std::net::SocketAddr,
    stop: impl Future<Output = ()>,
) -> Result<(), ReadError> {
    let state = ClusterState::open(state_dir, cluster)?;
    // Finishes or discards an interrupted key rotation first; only this
    // process may (it is the one that renews).
    let control = ControlPlane::open(&state)
        .map_err(|e| ReadError::Setup(format!("the enrolled identity: {e}")))?;
    let mut reader = open_reader(state_dir, cluster, control.identity.clone())?;
    let tasks = spawn_tasks(control, &state)?;
    let mut supervisor = Supervisor::new(echo_listen);
    let mut workloads = Vec::new();
    let bootstrap: Vec<Endpoint> = reader.bootstrap().to_vec();
    tracing::info!(cluster_id = %cluster, held = reader.held().len(), "agent running");
    tokio::pin!(stop);
    let mut retry = RETRY_PAUSE;
    let outcome = loop {
        let read_trouble = round(&mut reader, &bootstrap).await;
        let reads_failed = read_trouble.is_some();
        if let Some(why) = revoked(&reader, &tasks) {
            tracing::error!(cluster_id = %cluster, "{why}: stopping every workload and ending");
            let workloads = supervisor.stop_all(reader.node_shard().as_ref(), &why);
            let standing = Standing::Revoked(why.clone());
            write_status(&state, &reader, cluster, &standing, &tasks, &workloads);
            break Err(ReadError::Revoked(why));
        }
        // Only verified state is applied: the held node shard.
        if let Some(shard) = reader.node_shard() {
            workloads = supervisor.apply(&shard).await;
        }
        let degraded = degraded_reason(read_trouble, &tasks);
        report(&tasks, &reader, degraded.as_deref(), &workloads);
        write_status(
            &state,
            &reader,
            cluster,
            &Standing::of(degraded),
            &tasks,
            &workloads,
        );
        // Reads that failed are tried again after a growing pause; a
        // control plane that is away does not stop the watch.
        let pause_for = retry;
        retry = if reads_failed {
            (retry * 2).min(RETRY_PAUSE_MAX)
        } else {
            RETRY_PAUSE
        };
        let pause = async {
            if reads_failed {
                tokio::time::sleep(pause_for).await;
            } else {
                reader.probe().await;
                watch(&mut reader, &state, cluster, &tasks, &workloads).await;
            }
        };
        tokio::select! {
            () = pause => {}
            () = &mut stop => break Ok(()),
        }
    };
    let _ = tasks.stop.send(true);
    outcome
}

fn spawn_tasks(control: ControlPlane, state: &ClusterState) -> Result<Tasks, ReadError> {
    let identity = control.identity.clone();
    let (stop, stopped) = watch::channel(false);
    let (report, reports) = watch::channel(AgentReport::default());
    let (heartbeat_tx, heartbeat) = watch::channel(HeartbeatOutcome::default());
    let (renewal_tx, renewal) = watch::channel(RenewalOutcome::default());
    let options = HeartbeatOptions::new(control.clone(), state)?;
    tokio::spawn(crate::heartbeat::run_heartbeats(
        options,
        reports,
        stopped.clone(),
        heartbeat_tx,
    ));
    tokio::spawn(crate::renewal::keep_renewed(
        control,
        state.clone(),
        stopped,
        renewal_tx,
    ));
    Ok(Tasks {
        report,
        heartbeat,
        renewal,
        stop,
        identity,
    })
}

/// Why this node counts as revoked, if it does: the control plane refused
/// its last heartbeat with `CERTIFICATE_REVOKED`, or the verified
/// revocation list it holds names the certificate it presents. (A storage
/// node's refusal alone is not proof: it is an unsigned answer.)
fn revoked(reader: &Reader, tasks: &Tasks) -> Option<String> {
    {
        let beats = tasks.heartbeat.borrow();
        if let Some(error) = beats
            .last_error
            .as_ref()
            .filter(|_| refused_as_revoked(&beats))
        {
            return Some(format!(
                "the control plane refused a heartbeat: {}",
                error.message
            ));
        }
    }
    let serial = tasks.identity.facts().serial_hex;
    reader.lists_revoked(&serial).then(|| {
        format!("the verified revocation list names this node's certificate (serial {serial})")
    })
}

/// Whether the heartbeats were refused because the node is revoked.
fn refused_as_revoked(outcome: &HeartbeatOutcome) -> bool {
    outcome
        .last_error
        .as_ref()
        .is_some_and(|e| e.code == rap_core::codes::CERTIFICATE_REVOKED)
}

/// Why the agent is degraded: its reads, else a control plane the
/// heartbeats do not reach.
fn degraded_reason(reads: Option<String>, tasks: &Tasks) -> Option<String> {
    reads.or_else(|| {
        let heartbeat = tasks.heartbeat.borrow();
        (heartbeat.consecutive_failures > 0).then(|| {
            format!(
                "the control plane is unreachable ({}); running on the last verified state",
                heartbeat
                    .last_error
                    .as_ref()
                    .map(|e| e.code.clone())
                    .unwrap_or_default()
            )
        })
    })
}

/// Hands the heartbeat task what the node holds and how it is.
fn report(tasks: &Tasks, reader: &Reader, degraded: Option<&str>, workloads: &[WorkloadStatus]) {
    let report = AgentReport {
        health: if degraded.is_some() {
            Health::Degraded
        } else {
            Health::Healthy
        },
        degraded_mode: degraded.is_some(),
        services: workloads
            .iter()
            .map(|w| ServiceReport {
                service: w.service.clone(),
                state: w.observed.clone(),
                version: w.version.to_string(),
                detail: w.detail.clone(),
            })
            .collect(),
        accepted_versions: reader
            .held()
            .iter()
            .map(|(scope, held)| AcceptedVersionReport {
                scope: scope.clone(),
                version: held.version,
                authority_term: held.authority_term,
            })
            .collect(),
    };
    tasks.report.send_if_modified(|current| {
        let changed = *current != report;
        *current = report;
        changed
    });
}

/// One round of reads; the reason the agent is degraded, if it is.
async fn round(reader: &mut Reader, bootstrap: &[Endpoint]) -> Option<String> {
    let own = reader.own_scope();
    if let Err(error) = reader.read(&own).await {
        return Some(error.to_string());
    }
    let Some(shard) = reader.node_shard() else {
        return Some(format!("{own} is held but does not decode"));
    };
    let mut endpoints: Vec<Endpoint> = shard
        .storage_endpoints
        .iter()
        .map(|e| {
            let domain = e.domain.clone().unwrap_or_default();
            Endpoint {
                node_id: e.node_id.clone(),
                address: e.address.clone(),
                region: domain.region,
                zone: domain.zone,
                role: e.role.clone(),
            }
        })
        .collect();
    endpoints.extend(bootstrap.iter().cloned());
    reader.endpoints.replace(endpoints);
    let scopes: Vec<String> = shard
        .readable_scopes
        .iter()
        .take(crate::reads::SCOPES_MAX)
        .cloned()
        .collect();
    let mut degraded = None;
    for scope in scopes.iter().filter(|s| **s != own) {
        if let Err(error) = reader.read(scope).await {
            degraded.get_or_insert(error.to_string());
        }
    }
    reader.retain(&scopes);
    degraded.or_else(|| {
        reader
            .last_answer()
            .filter(|last| last.partition_view == "minority")
            .map(|last| {
                format!(
                    "storage node {} answers from a minority: what it serves is signed but may be stale",
                    last.node_id
                )
            })
    })
}

/// Watches the held scopes on the best endpoint until the node's own
/// scope changes, the watch fails, or [`RESYNC_INTERVAL`] passes.
async fn watch(
    reader: &mut Reader,
    state: &ClusterState,
    cluster: &ClusterId,
    tasks: &Tasks,
    workloads: &[WorkloadStatus],
) {
    let Some(at) = reader.endpoints.ranked().first().copied() else {
        return;
    };
    let mut client = match reader.client_at(at) {
        Ok(client) => client,
        Err(why) => {
            reader.endpoints.failed(at, &why);
            return;
        }
    };
    let known = reader
        .held()
        .iter()
        .map(|(scope, held)| pb::ScopeVersion {
            scope: scope.clone(),
            version: held.version,
        })
        .collect();
    let request = pb::WatchShardsRequest {
        cluster_id: cluster.to_string(),
        known,
    };
    let opened = tokio::time::timeout(crate::reads::READ_TIMEOUT, client.watch_shards(request));
    let mut stream = match opened.await {
        Ok(Ok(stream)) => {
            reader.endpoints.use_endpoint(at);
            stream.into_inner()
        }
        Ok(Err(status)) => {
            reader.endpoints.failed(at, status.message());
            return;
        }
        Err(_) => {
            reader.endpoints.failed(at, "watch: stalled");
            return;
        }
    };
    let own = reader.own_scope();
    let deadline = tokio::time::sleep(RESYNC_INTERVAL);
    tokio::pin!(deadline);
    let mut beats = tasks.heartbeat.clone();
    let mut beats_open = true;
    loop {
        tokio::select! {
            () = &mut deadline => return,
            changed = beats.changed(), if beats_open => match changed {
                // The round that follows stops the node.
                Ok(()) if refused_as_revoked(&beats.borrow()) => return,
                Ok(()) => {}
                Err(_) => beats_open = false,
            },
            item = stream.message() => match item {
                Ok(Some(answer)) if crate::reads::deposed(&answer) => {
                    // A promotion superseded its group: the next round
                    // reads (and watches) elsewhere.
                    reader.endpoints.failed(at, rap_core::codes::FENCED);
                    return;
                }
                Ok(Some(answer)) => match reader.keep_watched(at, answer) {
                    Ok((scope, Outcome::Updated(_))) => {
                        let degraded = degraded_reason(None, tasks);
                        report(tasks, reader, degraded.as_deref(), workloads);
                        write_status(state, reader, cluster, &Standing::of(degraded), tasks, workloads);
                        if scope == own || scope == rap_proto::revocations::REVOCATIONS_SCOPE {
                            return;
                        }
                    }
                    Ok((_, Outcome::Unchanged(_))) => {}
                    Err(error) => {
                        tracing::warn!(cluster_id = %cluster, code = error.code(), "refused a watched envelope: {error}");
                        return;
                    }
                },
                Err(status) => {
                    reader.endpoints.failed(at, status.message());
                    return;
                }
                Ok(None) => {
                    reader.endpoints.failed(at, "watch ended");
                    return;
                }
            },
        }
    }
}

fn write_status(
    state: &ClusterState,
    reader: &Reader,
    cluster: &ClusterId,
    standing: &Standing,
    tasks: &Tasks,
    workloads: &[WorkloadStatus],
) {
    reader.save_health(standing.name(), standing.reason());
    let heartbeat = tasks.heartbeat.borrow().clone();
    let renewal = tasks.renewal.borrow().clone();
    let status = Status {
        cluster_id: cluster.to_string(),
        node_id: reader.own_scope().trim_start_matches("node/").to_string(),
        updated_at_unix_ms: UnixMillis::now().0,
        health: standing.name().to_string(),
        degraded_reason: standing.reason().to_string(),
        scopes: reader.held().clone(),
        endpoints: reader
            .endpoints
            .tiers()
            .into_iter()
            .map(|(at, tier)| EndpointStatus {
                tier,
                scored: reader.endpoints.list[at].clone(),
            })
            .collect(),
        last_answer: reader.last_answer().cloned(),
        peers: reader
            .peers()
            .into_iter()
            .map(|peer| PeerStatus {
                node_id: peer.node_id,
                roles: peer.roles,
                tier: peer.tier,
            })
            .collect(),
        workloads: workloads.to_vec(),
        control_plane: ControlPlaneStatus {
            reachable: heartbeat.reachable(),
            sent: heartbeat.sent,
            failed: heartbeat.failed,
            last_heartbeat_unix_ms: heartbeat.last_success_unix_ms.unwrap_or(0),
            last_error: heartbeat
                .last_error
                .map(|e| format!("{}: {}", e.code, e.message))
                .unwrap_or_default(),
        },
        certificate: CertificateStatus {
            renewals: renewal.renewals,
            serial: renewal
                .last
                .as_ref()
                .map(|r| r.serial.clone())
                .unwrap_or_default(),
            not_after_unix_ms: renewal.last.as_ref().map_or(0, |r| r.not_after_unix_ms),
            last_error: renewal
                .last_error
                .map(|(code, message)| format!("{code}: {message}"))
                .unwrap_or_default(),
        },
    };
    if let Err(e) = state.write_json(STATUS_FILE, &status) {
        tracing::warn!(cluster_id = %cluster, "writing {STATUS_FILE} failed: {e}");
    }
}

/// The status `run` last wrote for `cluster` under `state_dir`.
pub fn read_status(state_dir: &Path, cluster: &ClusterId) -> Result<Option<Status>, ReadError> {
    let state = ClusterState::open(state_dir, cluster)?;
    Ok(state.read_json(STATUS_FILE)?)
}
