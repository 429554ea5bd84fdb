//! Heartbeats: the agent tells its control plane it is alive, how it is
//! and what it holds.
//!
//! [`run_heartbeats`] sends `AgentService/Heartbeat` over mTLS with the
//! node certificate ([`ControlPlane`]) until `stop` turns true: first at
//! once, then every `next_interval_ms` the control plane answers (clamped
//! to [`INTERVAL_MIN`]..=[`INTERVAL_MAX`]; [`INTERVAL_DEFAULT`] when it
//! answers 0). What it reports comes from the caller through a
//! `watch` channel of [`AgentReport`] (health, degraded mode, workload
//! statuses, accepted versions); a change is sent early, but never sooner
//! than [`INTERVAL_MIN`] after the previous heartbeat. Capabilities are
//! those the join reported (`capabilities.json`), the agent version is
//! this crate's. Lists and texts are clipped to the control plane's
//! limits, so one oversized report cannot silence the node.
//!
//! A failure is retried after [`RETRY_MIN`], doubling up to
//! [`RETRY_MAX`]; the channel is dialled again after every failure and
//! whenever the certificate changed (a renewal: the control plane refuses
//! the superseded one on an old connection). Failures are logged once per
//! change of error code, the recovery once. Each attempt is published
//! through a `watch` channel of [`HeartbeatOutcome`] ("control plane
//! reachable, last heartbeat at").

use crate::control::{ControlPlane, ControlPlaneError};
use crate::state::{ClusterState, StateError};
use rap_core::limits::{CAPABILITIES_MAX, CAPABILITY_DETAIL_BYTES_MAX};
use rap_proto::pb;
use rap_proto::pb::agent_service_client::AgentServiceClient;
use rap_proto::time::UnixMillis;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::Instrument;

/// Shortest interval between heartbeats, whatever the control plane asks
/// (and the earliest a changed report is sent after the last heartbeat).
pub const INTERVAL_MIN: Duration = Duration::from_secs(1);
/// Longest interval between heartbeats, whatever the control plane asks.
pub const INTERVAL_MAX: Duration = Duration::from_secs(10 * 60);
/// The interval when the control plane names none (answers 0).
pub const INTERVAL_DEFAULT: Duration = Duration::from_secs(10);
/// First pause after a failed heartbeat.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest pause after failed heartbeats (the backoff doubles up to it).
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// Most workload statuses sent (the control plane's limit).
pub const SERVICES_MAX: usize = 64;
/// Most accepted versions sent (the control plane's limit).
pub const ACCEPTED_VERSIONS_MAX: usize = 256;
/// Longest workload state sent (the control plane's limit).
pub const SERVICE_STATE_BYTES_MAX: usize = 32;
/// Longest workload version sent (the control plane's limit).
pub const SERVICE_VERSION_BYTES_MAX: usize = 128;
/// Longest workload detail sent (the control plane's limit).
pub const SERVICE_DETAIL_BYTES_MAX: usize = 256;
/// Longest scope of an accepted version sent.
pub const ACCEPTED_SCOPE_BYTES_MAX: usize = rap_proto::limits::SCOPE_BYTES_MAX;

/// The version this agent reports.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

const _: () = assert!(INTERVAL_MIN.as_millis() <= INTERVAL_DEFAULT.as_millis());
const _: () = assert!(INTERVAL_DEFAULT.as_millis() <= INTERVAL_MAX.as_millis());
const _: () = assert!(RETRY_MIN.as_millis() <= RETRY_MAX.as_millis());

/// The node's health as the agent sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Health {
    /// Not known yet.
    #[default]
    Unknown,
    /// Everything assigned works.
    Healthy,
    /// Working, with reduced function.
    Degraded,
    /// Not working.
    Unhealthy,
}

impl Health {
    fn to_pb(self) -> pb::NodeHealth {
        match self {
            Health::Unknown => pb::NodeHealth::Unspecified,
            Health::Healthy => pb::NodeHealth::Healthy,
            Health::Degraded => pb::NodeHealth::Degraded,
            Health::Unhealthy => pb::NodeHealth::Unhealthy,
        }
    }
}

/// The reported state of one assigned workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceReport {
    /// The service (an id; others are left out).
    pub service: String,
    /// running, stopped, degraded, failed, unknown.
    pub state: String,
    /// Its version.
    pub version: String,
    /// Free text.
    pub detail: String,
}

/// The newest accepted version of one scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceptedVersionReport {
    /// The scope.
    pub scope: String,
    /// Its version.
    pub version: u64,
    /// The authority term it was published under.
    pub authority_term: u64,
}

/// What the rest of the agent reports through heartbeats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// Overall health.
    pub health: Health,
    /// True while the agent runs on last verified state without a quorum.
    pub degraded_mode: bool,
    /// Per-workload statuses.
    pub services: Vec<ServiceReport>,
    /// Newest accepted version per scope.
    pub accepted_versions: Vec<AcceptedVersionReport>,
}

/// Where and as whom heartbeats are sent.
#[derive(Clone, Debug)]
pub struct HeartbeatOptions {
    /// The control plane and the node's identity.
    pub control_plane: ControlPlane,
    /// Capabilities reported with every heartbeat.
    pub capabilities: Vec<pb::Capability>,
    /// The agent version reported.
    pub agent_version: String,
}

impl HeartbeatOptions {
    /// Heartbeats through `control_plane` with the capabilities the join
    /// stored in `state` (none when none were stored) and [`AGENT_VERSION`].
    pub fn new(control_plane: ControlPlane, state: &ClusterState) -> Result<Self, StateError> {
        let capabilities = state
            .capabilities()?
            .into_iter()
            .take(CAPABILITIES_MAX)
            .map(|c| pb::Capability {
                name: c.name,
                detail: clip(&c.detail, CAPABILITY_DETAIL_BYTES_MAX),
            })
            .collect();
        Ok(HeartbeatOptions {
            control_plane,
            capabilities,
            agent_version: AGENT_VERSION.to_string(),
        })
    }

    /// The request for `report`, clipped to the control plane's limits.
    pub fn request(&self, report: &AgentReport) -> pb::HeartbeatRequest {
        let services = report
            .services
            .iter()
            .filter(|s| rap_proto::ids::validate_id("service", &s.service).is_ok())
            .take(SERVICES_MAX)
            .map(|s| pb::ServiceStatus {
                service: s.service.clone(),
                state: clip(&s.state, SERVICE_STATE_BYTES_MAX),
                version: clip(&s.version, SERVICE_VERSION_BYTES_MAX),
                detail: clip(&s.detail, SERVICE_DETAIL_BYTES_MAX),
            })
            .collect();
        let accepted_versions = report
            .accepted_versions
            .iter()
            .filter(|v| !v.scope.is_empty() && v.scope.len() <= ACCEPTED_SCOPE_BYTES_MAX)
            .take(ACCEPTED_VERSIONS_MAX)
            .map(|v| pb::AcceptedVersion {
                scope: v.scope.clone(),
                version: v.version,
                authority_term: v.authority_term,
            })
            .collect();
        pb::HeartbeatRequest {
            cluster_id: self.control_plane.cluster.to_string(),
            node_id: self.control_plane.node.to_string(),
            health: report.health.to_pb() as i32,
            capabilities: self.capabilities.clone(),
            services,
            accepted_versions,
            agent_version: self.agent_version.clone(),
            sent_at_unix_ms: UnixMillis::now().0,
            degraded_mode: report.degraded_mode,
        }
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// The last failure of a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatFailure {
    /// Its stable code ([`ControlPlaneError::code`]).
    pub code: String,
    /// What happened.
    pub message: String,
    /// Whether it is expected to pass on retry.
    pub retryable: bool,
}

/// What the heartbeats achieved so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    /// Heartbeats the control plane acknowledged.
    pub sent: u64,
    /// Heartbeats that failed.
    pub failed: u64,
    /// Failures since the last acknowledged heartbeat.
    pub consecutive_failures: u32,
    /// When the last acknowledged heartbeat was sent.
    pub last_success_unix_ms: Option<i64>,
    /// When the last heartbeat was attempted.
    pub last_attempt_unix_ms: Option<i64>,
    /// The last failure, until a heartbeat is acknowledged again.
    pub last_error: Option<HeartbeatFailure>,
    /// The interval the control plane asked for, as honoured.
    pub interval: Option<Duration>,
    /// The serial of the certificate the last acknowledged heartbeat was
    /// sent with.
    pub certificate_serial: Option<String>,
}

impl HeartbeatOutcome {
    /// Whether the last heartbeat reached the control plane and was
    /// acknowledged.
    pub fn reachable(&self) -> bool {
        self.last_success_unix_ms.is_some() && self.consecutive_failures == 0
    }
}

/// The pause the control plane's `next_interval_ms` asks for, clamped.
pub fn honoured_interval(next_interval_ms: u32) -> Duration {
    if next_interval_ms == 0 {
        return INTERVAL_DEFAULT;
    }
    Duration::from_millis(u64::from(next_interval_ms)).clamp(INTERVAL_MIN, INTERVAL_MAX)
}

/// The pause after `failures` consecutive failures (1 or more).
pub fn retry_pause(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_MIN.saturating_mul(1u32 << doublings).min(RETRY_MAX)
}

/// An open channel and the serial of the certificate it presented.
struct Connected {
    channel: Channel,
    serial: String,
}

/// One heartbeat: dials when there is no channel or the certificate
/// changed. Returns the honoured interval and the serial used.
async fn send_one(
    options: &HeartbeatOptions,
    connected: &mut Option<Connected>,
    report: &AgentReport,
) -> Result<(Duration, String), ControlPlaneError> {
    let serial = options.control_plane.identity.facts().serial_hex;
    let channel = match connected {
        Some(c) if c.serial == serial => c.channel.clone(),
        _ => {
            let channel = options.control_plane.connect().await?;
            *connected = Some(Connected {
                channel: channel.clone(),
                serial: serial.clone(),
            });
            channel
        }
    };
    let answer = AgentServiceClient::new(channel)
        .heartbeat(options.request(report))
        .await
        .map_err(|s| ControlPlaneError::from_status("Heartbeat", &s))?
        .into_inner();
    Ok((honoured_interval(answer.next_interval_ms), serial))
}

/// Sends heartbeats until `stop` turns true (see the module docs);
/// publishes every attempt's outcome to `outcome` and returns the last.
/// Never fails: errors are retried, logged and published.
pub async fn run_heartbeats(
    options: HeartbeatOptions,
    status: watch::Receiver<AgentReport>,
    stop: watch::Receiver<bool>,
    outcome: watch::Sender<HeartbeatOutcome>,
) -> HeartbeatOutcome {
    let span = tracing::info_span!(
        "heartbeats",
        cluster_id = %options.control_plane.cluster,
        node_id = %options.control_plane.node,
    );
    run(options, status, stop, outcome).instrument(span).await
}

async fn run(
    options: HeartbeatOptions,
    mut status: watch::Receiver<AgentReport>,
    mut stop: watch::Receiver<bool>,
    outcome: watch::Sender<HeartbeatOutcome>,
) -> HeartbeatOutcome {
    let mut state = HeartbeatOutcome::default();
    let mut connected: Option<Connected> = None;
    let mut status_open = true;
    loop {
        if *stop.borrow() {
            return state;
        }
        let report = status.borrow_and_update().clone();
        let started = Instant::now();
        let attempt_at = UnixMillis::now().0;
        let result = tokio::select! {
            result = send_one(&options, &mut connected, &report) => result,
            _ = stop.wait_for(|s| *s) => return state,
        };
        state.last_attempt_unix_ms = Some(attempt_at);
        let pause = match result {
            Ok((interval, serial)) => {
                if state.consecutive_failures > 0 {
                    tracing::info!(
                        failures = state.consecutive_failures,
                        "heartbeats reach the control plane again"
                    );
                } else if state.sent == 0 {
                    tracing::info!(
                        interval_ms = interval.as_millis() as u64,
                        "first heartbeat acknowledged"
                    );
                }
                state.sent += 1;
                state.consecutive_failures = 0;
                state.last_success_unix_ms = Some(attempt_at);
                state.last_error = None;
                state.interval = Some(interval);
                state.certificate_serial = Some(serial);
                interval
            }
            Err(error) => {
                connected = None;
                let code = error.code().to_string();
                let repeated = state.last_error.as_ref().is_some_and(|e| e.code == code);
                state.failed += 1;
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                let pause = retry_pause(state.consecutive_failures);
                if repeated {
                    tracing::debug!(code = %code, %error, retry_in_ms = pause.as_millis() as u64, "heartbeat failed again");
                } else {
                    tracing::warn!(code = %code, %error, retry_in_ms = pause.as_millis() as u64, "heartbeat failed");
                }
                state.last_error = Some(HeartbeatFailure {
                    code,
                    message: error.to_string(),
                    retryable: error.is_retryable(),
                });
                pause
            }
        };
        outcome.send_replace(state.clone());

        // Wait for the pause; a changed report after a success moves the
        // next heartbeat forward, but not sooner than INTERVAL_MIN after
        // this one.
        let mut deadline = started + pause;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                _ = stop.wait_for(|s| *s) => return state,
                changed = status.changed(), if status_open => match changed {
                    Ok(()) if state.consecutive_failures == 0 => {
                        deadline = deadline.min(started + INTERVAL_MIN);
                    }
                    Ok(()) => {}
                    // The reporter is gone: keep sending its last report.
                    Err(_) => status_open = false,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the control plane's interval is honoured within the named
    // bounds; failures back off from RETRY_MIN doubling to RETRY_MAX.
    // Method: arithmetic on the edges.
    #[test]
    fn interval_and_backoff() {
        assert_eq!(honoured_interval(0), INTERVAL_DEFAULT);
        assert_eq!(honoured_interval(1), INTERVAL_MIN);
        assert_eq!(honoured_interval(2_500), Duration::from_millis(2_500));
        assert_eq!(honoured_interval(u32::MAX), INTERVAL_MAX);
        assert_eq!(retry_pause(0), RETRY_MIN);
        assert_eq!(retry_pause(1), RETRY_MIN);
        assert_eq!(retry_pause(2), RETRY_MIN * 2);
        assert_eq!(retry_pause(3), RETRY_MIN * 4);
        assert_eq!(retry_pause(u32::MAX), RETRY_MAX);
    }

    // Goal: texts are clipped at character boundaries, never split one.
    // Method: a multi-byte character across the limit.
    #[test]
    fn clip_keeps_characters_whole() {
        assert_eq!(clip("abc", 8), "abc");
        assert_eq!(clip("abcdef", 3), "abc");
        assert_eq!(clip("aé", 2), "a");
        assert_eq!(clip("", 0), "");
    }
}
