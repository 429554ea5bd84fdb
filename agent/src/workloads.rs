//! Workload supervision: the agent runs exactly the workloads its own
//! verified `node/<id>` shard asks for (`desired_state = enabled`) and
//! whose role that shard assigns ([`rap_proto::services`]), and stops the
//! rest. Each desired workload is reported with what is observed:
//!
//! * `running`: only for a workload this agent really runs; today that is
//!   the built-in `synthetic-echo` (a TCP echo on loopback);
//! * `stopped`: disabled, or its role is not assigned (the detail says
//!   which);
//! * `degraded`: wanted and allowed, but this agent has no adapter for it
//!   (`adapter not available`), or the adapter failed to start. Never
//!   `running` for something that does not run.

use rap_proto::pb;
use rap_proto::services::{self, SYNTHETIC_ECHO};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Most workloads supervised for one node.
pub const WORKLOADS_MAX: usize = 64;
/// Most connections one `synthetic-echo` serves at once.
pub const ECHO_CONNECTIONS_MAX: usize = 64;
/// Read buffer of one echo connection.
const ECHO_BUFFER_BYTES: usize = 4096;

/// What is observed of one desired workload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    /// The service.
    pub service: String,
    /// What the node shard asks for (`enabled`, `disabled`).
    pub desired: String,
    /// `running`, `stopped` or `degraded`.
    pub observed: String,
    /// Why, or where it listens.
    pub detail: String,
    /// The desired state's version.
    pub version: u64,
}

/// One running workload.
struct Running {
    task: JoinHandle<()>,
    detail: String,
}

/// The agent's workloads.
pub struct Supervisor {
    echo_listen: std::net::SocketAddr,
    running: BTreeMap<String, Running>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("running", &self.running.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for running in self.running.values() {
            running.task.abort();
        }
    }
}

impl Supervisor {
    /// A supervisor whose `synthetic-echo` listens on `echo_listen` (a
    /// loopback address; port 0 picks a free one, shown in the status).
    pub fn new(echo_listen: std::net::SocketAddr) -> Supervisor {
        Supervisor {
            echo_listen,
            running: BTreeMap::new(),
        }
    }

    /// Starts and stops workloads to match `shard` (the node's own
    /// verified shard); returns what is observed of each desired one.
    pub async fn apply(&mut self, shard: &pb::NodeShard) -> Vec<WorkloadStatus> {
        let roles = || shard.roles.iter().map(|r| r.role.as_str());
        let mut statuses = Vec::new();
        let mut keep = Vec::new();
        for desired in shard.workloads.iter().take(WORKLOADS_MAX) {
            let service = desired.service.as_str();
            let mut status = WorkloadStatus {
                service: service.to_string(),
                desired: desired.desired_state.clone(),
                version: desired.version,
                ..Default::default()
            };
            if desired.desired_state != "enabled" {
                status.observed = "stopped".into();
                status.detail = "disabled".into();
            } else if services::roles_for(service).is_none() {
                status.observed = "degraded".into();
                status.detail = "not in this agent's service catalog".into();
            } else if !services::allowed(service, roles()) {
                status.observed = "stopped".into();
                status.detail = format!(
                    "its role is not assigned (needs one of {})",
                    services::roles_for(service).unwrap_or_default().join(", ")
                );
            } else if service == SYNTHETIC_ECHO {
                keep.push(service.to_string());
                match self.ensure_echo().await {
                    Ok(detail) => {
                        status.observed = "running".into();
                        status.detail = detail;
                    }
                    Err(detail) => {
                        status.observed = "degraded".into();
                        status.detail = detail;
                    }
                }
            } else {
                status.observed = "degraded".into();
                status.detail = "adapter not available".into();
            }
            statuses.push(status);
        }
        let stale: Vec<String> = self
            .running
            .keys()
            .filter(|s| !keep.contains(s))
            .cloned()
            .collect();
        for service in stale {
            if let Some(running) = self.running.remove(&service) {
                running.task.abort();
                tracing::info!(service, "workload stopped");
            }
        }
        statuses
    }

    /// Stops every workload (the node was revoked: `why`); returns the
    /// desired ones of `shard` as now observed, all `stopped`.
    pub fn stop_all(&mut self, shard: Option<&pb::NodeShard>, why: &str) -> Vec<WorkloadStatus> {
        for (service, running) in std::mem::take(&mut self.running) {
            running.task.abort();
            tracing::info!(service, "workload stopped: {why}");
        }
        shard
            .map(|shard| {
                shard
                    .workloads
                    .iter()
                    .take(WORKLOADS_MAX)
                    .map(|desired| WorkloadStatus {
                        service: desired.service.clone(),
                        desired: desired.desired_state.clone(),
                        observed: "stopped".into(),
                        detail: why.to_string(),
                        version: desired.version,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts `synthetic-echo` unless it runs; its detail.
    async fn ensure_echo(&mut self) -> Result<String, String> {
        if let Some(running) = self.running.get(SYNTHETIC_ECHO)
            && !running.task.is_finished()
        {
            return Ok(running.detail.clone());
        }
        let listener = TcpListener::bind(self.echo_listen)
            .await
            .map_err(|e| format!("listen on {}: {e}", self.echo_listen))?;
        let address = listener
            .local_addr()
            .map_err(|e| format!("listen address: {e}"))?;
        let task = tokio::spawn(echo(listener));
        let detail = format!("listening on {address}");
        tracing::info!(service = SYNTHETIC_ECHO, %address, "workload started");
        self.running.insert(
            SYNTHETIC_ECHO.to_string(),
            Running {
                task,
                detail: detail.clone(),
            },
        );
        Ok(detail)
    }
}

/// Echoes every connection's bytes back, at most
/// [`ECHO_CONNECTIONS_MAX`] at once. The connections are this task's own:
/// stopping the workload (aborting the task) ends them too.
async fn echo(listener: TcpListener) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else {
                    continue;
                };
                if connections.len() >= ECHO_CONNECTIONS_MAX {
                    continue;
                }
                connections.spawn(async move {
                    let mut buffer = [0u8; ECHO_BUFFER_BYTES];
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 || stream.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(roles: &[&str], workloads: &[(&str, &str)]) -> pb::NodeShard {
        pb::NodeShard {
            roles: roles
                .iter()
                .map(|r| pb::NodeRole {
                    role: r.to_string(),
                    org_id: String::new(),
                })
                .collect(),
            workloads: workloads
                .iter()
                .map(|(s, d)| pb::DesiredWorkload {
                    service: s.to_string(),
                    desired_state: d.to_string(),
                    version: 1,
                })
                .collect(),
            ..Default::default()
        }
    }

    async fn echoes(detail: &str) -> bool {
        let Some(address) = detail.strip_prefix("listening on ") else {
            return false;
        };
        let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
            return false;
        };
        stream.write_all(b"ping").await.unwrap();
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).await.is_ok() && &answer == b"ping"
    }

    // Goal: only an enabled, role-assigned workload runs; synthetic-echo
    // really echoes; a workload without adapter is degraded, never
    // running; removing the role (or disabling) stops it: the port goes
    // quiet and a connection opened before ends. Method: apply shards in
    // turn; talk to the echo port.
    #[tokio::test]
    async fn runs_only_what_its_role_allows() {
        let mut supervisor = Supervisor::new("127.0.0.1:0".parse().unwrap());
        let wanted = [(SYNTHETIC_ECHO, "enabled"), ("rdp-worker", "enabled")];

        let without = supervisor.apply(&shard(&[], &wanted)).await;
        assert!(
            without.iter().all(|s| s.observed == "stopped"),
            "{without:?}"
        );

        let with = supervisor
            .apply(&shard(&["relay-node", "rdp-worker"], &wanted))
            .await;
        assert_eq!(with[0].observed, "running", "{with:?}");
        assert!(echoes(&with[0].detail).await, "{with:?}");
        assert_eq!(
            (with[1].observed.as_str(), with[1].detail.as_str()),
            ("degraded", "adapter not available")
        );
        let again = supervisor
            .apply(&shard(&["relay-node", "rdp-worker"], &wanted))
            .await;
        assert_eq!(again[0].detail, with[0].detail, "not restarted");

        let address = with[0].detail.trim_start_matches("listening on ");
        let mut open = tokio::net::TcpStream::connect(address).await.unwrap();
        let removed = supervisor.apply(&shard(&["rdp-worker"], &wanted)).await;
        assert_eq!(removed[0].observed, "stopped", "{removed:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!echoes(&with[0].detail).await, "the echo port is closed");
        // A connection opened before the stop ends with it.
        let _ = open.write_all(b"ping").await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            open.read_to_end(&mut rest),
        )
        .await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the open connection was closed, not echoed: {read:?} {rest:?}"
        );

        let unknown = supervisor
            .apply(&shard(&["relay-node"], &[("web", "enabled")]))
            .await;
        assert_eq!(unknown[0].observed, "degraded");
    }
}
