//! Heartbeats: observations from node agents, batched into PostgreSQL
//! (observations need no fence; 10,000 agents at one heartbeat
//! per 10 s on a 2-core machine).
//!
//! A heartbeat is validated when it arrives ([`Heartbeat::from_request`]),
//! admitted by its node's own limit, and queued on a bounded queue shared
//! by all nodes ([`Heartbeats::submit`], [`Heartbeats::submit_and_wait`]).
//!
//! Per-node limit ([`NodeLimits`]): a token bucket per (cluster, node) of
//! [`HEARTBEAT_NODE_BURST`] heartbeats refilled one per
//! [`HEARTBEAT_NODE_REFILL`]. A node over it gets
//! [`Error::RateLimited`] (`RATE_LIMITED`, gRPC `RESOURCE_EXHAUSTED`, a
//! `retry-after-ms` hint) and its excess never enters the shared queue, so
//! one node cannot fill the queue and make other nodes' heartbeats wait or
//! be refused. At most [`HEARTBEAT_NODES_TRACKED_MAX`] nodes are tracked;
//! idle ones are forgotten first. The same state gives each node a budget
//! of [`HEARTBEAT_LOG_CHANGES_MAX`] logged changes per
//! [`HEARTBEAT_LOG_INTERVAL`]: a node flapping its health writes that many
//! change rows, not one per heartbeat. One background flusher takes up to
//! [`HEARTBEAT_BATCH_MAX`] heartbeats, or what arrived within
//! [`HEARTBEAT_FLUSH_INTERVAL`] of the oldest queued one, and writes the
//! whole batch in ONE transaction of five set-based statements, each
//! binding one array per column and reading them back with `UNNEST`:
//!
//! 1. heartbeats are appended to `node_heartbeats` (the log) when they
//!    change health, degraded mode or agent version (within the node's
//!    change budget), and otherwise once per [`HEARTBEAT_LOG_INTERVAL`];
//! 2. `node_heartbeat_latest` is upserted with the newest heartbeat of each
//!    node in the batch (duplicates of one node are collapsed first, since
//!    `ON CONFLICT` may not touch a row twice in one statement;
//!    `heartbeat_count` grows by the number collapsed);
//! 3. `cluster_memberships.last_seen_at` of the active membership moves
//!    forward;
//! 4. the reported state of services that already have a
//!    `node_service_instances` row is updated; a heartbeat never creates
//!    desired state;
//! 5. capabilities are upserted into `node_capabilities` (source
//!    `heartbeat`) for nodes with an active membership; capabilities
//!    already stored with the same detail are filtered out by an anti-join
//!    first, so the steady state costs one index probe per capability and
//!    no row lock or write (`reported_at` is when the detail last changed).
//!
//! A batch the database refuses for its data (a constraint, class 22/23)
//! is retried one heartbeat at a time, so one bad row cannot sink the
//! others; deadlocks and serialization failures are retried
//! ([`HEARTBEAT_BATCH_RETRIES`]); any other failure fails the batch and its
//! waiters get `UNAVAILABLE` (the agent sends again next interval).
//!
//! A second task prunes the log every [`HEARTBEAT_PRUNE_INTERVAL`], in
//! chunks of [`HEARTBEAT_PRUNE_CHUNK`] rows, keeping
//! [`HEARTBEAT_RETENTION_DEFAULT`].

use crate::error::{Error, Result};
use crate::limits::{
    CAPABILITIES_MAX, CAPABILITY_DETAIL_BYTES_MAX, HEARTBEAT_BATCH_MAX, HEARTBEAT_FLUSH_INTERVAL,
    HEARTBEAT_LOG_CHANGES_MAX, HEARTBEAT_NODE_BURST, HEARTBEAT_NODE_REFILL,
    HEARTBEAT_NODES_TRACKED_MAX, HEARTBEAT_QUEUE_MAX, HEARTBEAT_RETENTION_DEFAULT,
    HEARTBEAT_SERVICES_MAX, HEARTBEAT_VERSIONS_MAX,
};
use rap_proto::ids::{ClusterId, NodeId, validate_id};
use rap_proto::pb::{HeartbeatRequest, NodeHealth};
use serde_json::json;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

mod limiter;
#[cfg(test)]
mod tests;
mod writer;

use limiter::NodeLimiter;
pub use limiter::NodeLimits;
use writer::{flusher, prune_log, pruner};

/// Largest encoded heartbeat accepted (also the `AgentService` decoding
/// limit): bounds the memory a full queue can hold.
pub const HEARTBEAT_BYTES_MAX: usize = 64 * 1024;
/// Longest agent version string.
pub const AGENT_VERSION_BYTES_MAX: usize = 128;
/// Longest capability name (the schema checks `^[a-z0-9_]{1,63}$`).
pub use rap_core::limits::CAPABILITY_NAME_BYTES_MAX;
/// Longest reported service state string (mapped to a known state).
pub const SERVICE_STATE_BYTES_MAX: usize = 32;
/// Longest reported service version string.
pub const SERVICE_VERSION_BYTES_MAX: usize = 128;
/// Longest reported service detail.
pub const SERVICE_DETAIL_BYTES_MAX: usize = 256;
/// Longest accepted-version scope (same as snapshot scopes).
pub const ACCEPTED_SCOPE_BYTES_MAX: usize = rap_proto::limits::SCOPE_BYTES_MAX;
/// Latest `sent_at_unix_ms` accepted (9999-12-31T23:59:59.999Z, the end of
/// PostgreSQL's `to_timestamp` range as written by humans).
pub const SENT_AT_UNIX_MS_MAX: i64 = 253_402_300_799_999;
/// A node's heartbeats go into the log (`node_heartbeats`) when its
/// health, degraded mode or agent version changed, and otherwise at most
/// once per this interval; `node_heartbeat_latest` has every heartbeat.
/// At 10,000 agents every 10 s that is ~33 log rows/s instead of 1,000
/// (24 h retention: ~2.9 M rows instead of ~86 M).
pub const HEARTBEAT_LOG_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// How often a batch is retried after a deadlock or serialization failure.
pub const HEARTBEAT_BATCH_RETRIES: u32 = 3;
/// Rows deleted per statement when pruning the log: keeps each delete
/// short so it never holds locks for long.
pub const HEARTBEAT_PRUNE_CHUNK: i64 = 10_000;
/// How often the background task prunes the log.
pub const HEARTBEAT_PRUNE_INTERVAL: Duration = Duration::from_secs(5 * 60);

const _: () = assert!(HEARTBEAT_BATCH_MAX >= 1);
const _: () = assert!(HEARTBEAT_PRUNE_CHUNK >= 1);

/// The message of the refusal when the queue is full (see
/// [`is_overloaded`]).
pub const QUEUE_FULL_MESSAGE: &str = "heartbeat queue is full: retry later";
/// The message of the refusal after [`Heartbeats::shutdown`].
pub const STOPPED_MESSAGE: &str = "heartbeat writer is stopped: retry later";

/// True when `error` is the queue-full refusal of [`Heartbeats::submit`]
/// (an expected overload answer, logged once per episode, not per call).
pub fn is_overloaded(error: &Error) -> bool {
    matches!(error, Error::Overloaded(message) if message == QUEUE_FULL_MESSAGE)
}

/// True when `error` is the per-node refusal of [`Heartbeats::submit`]
/// (logged once per episode and node by the limiter, not per call).
pub fn is_rate_limited(error: &Error) -> bool {
    matches!(error, Error::RateLimited { .. })
}

/// The control plane clock in unix milliseconds (0 before 1970).
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A node's health as stored (`node_heartbeats.health`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Unspecified or unknown value.
    Unknown,
    /// Healthy.
    Healthy,
    /// Degraded.
    Degraded,
    /// Unhealthy.
    Unhealthy,
}

impl Health {
    /// From the wire enum; unknown values are [`Health::Unknown`].
    pub fn from_wire(value: i32) -> Self {
        match NodeHealth::try_from(value) {
            Ok(NodeHealth::Healthy) => Health::Healthy,
            Ok(NodeHealth::Degraded) => Health::Degraded,
            Ok(NodeHealth::Unhealthy) => Health::Unhealthy,
            Ok(NodeHealth::Unspecified) | Err(_) => Health::Unknown,
        }
    }

    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// A service's reported state as stored
/// (`node_service_instances.reported_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceState {
    /// Anything the control plane does not know.
    Unknown,
    /// Running.
    Running,
    /// Stopped.
    Stopped,
    /// Degraded.
    Degraded,
    /// Failed.
    Failed,
}

impl ServiceState {
    /// Parses an agent's state string; anything unknown is
    /// [`ServiceState::Unknown`].
    pub fn parse(value: &str) -> Self {
        match value {
            "running" => ServiceState::Running,
            "stopped" => ServiceState::Stopped,
            "degraded" => ServiceState::Degraded,
            "failed" => ServiceState::Failed,
            _ => ServiceState::Unknown,
        }
    }

    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Unknown => "unknown",
            ServiceState::Running => "running",
            ServiceState::Stopped => "stopped",
            ServiceState::Degraded => "degraded",
            ServiceState::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug)]
struct ServiceReport {
    service: String,
    state: ServiceState,
    version: String,
}

#[derive(Clone, Debug)]
struct CapabilityReport {
    name: String,
    detail: String,
}

/// One validated heartbeat, ready to be queued. Only
/// [`Heartbeat::from_request`] makes one, so everything queued satisfies
/// the schema's checks and cannot fail a batch.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    cluster_id: ClusterId,
    node_id: NodeId,
    received_at_ms: i64,
    sent_at_ms: Option<i64>,
    health: Health,
    degraded_mode: bool,
    agent_version: String,
    capabilities: Vec<CapabilityReport>,
    services: Vec<ServiceReport>,
    /// `node_heartbeats.payload`: services and accepted versions.
    payload_json: String,
    /// `node_heartbeat_latest.capabilities`.
    capabilities_json: String,
    /// `node_heartbeat_latest.services`.
    services_json: String,
    /// `node_heartbeat_latest.accepted_versions`.
    versions_json: String,
    /// May go into the log as a change (false when its node's change
    /// budget is spent; set at admission).
    log_change: bool,
}

impl Heartbeat {
    /// Validates `request` (received at `received_at_ms`, the control
    /// plane clock): valid ids, counts and lengths within their limits, no
    /// NUL characters, capability names of `[a-z0-9_]`, service names that
    /// are ids, no duplicate capability or service. Unknown health values
    /// and service states are stored as `unknown`; `sent_at_unix_ms` 0
    /// means "not sent".
    pub fn from_request(request: &HeartbeatRequest, received_at_ms: i64) -> Result<Self> {
        use prost::Message;
        let encoded = request.encoded_len();
        if encoded > HEARTBEAT_BYTES_MAX {
            return Err(Error::Oversize {
                what: "heartbeat",
                limit: HEARTBEAT_BYTES_MAX,
                got: encoded,
            });
        }
        let cluster_id = ClusterId::new(request.cluster_id.as_str())?;
        let node_id = NodeId::new(request.node_id.as_str())?;
        count("capabilities", request.capabilities.len(), CAPABILITIES_MAX)?;
        count("services", request.services.len(), HEARTBEAT_SERVICES_MAX)?;
        count(
            "accepted versions",
            request.accepted_versions.len(),
            HEARTBEAT_VERSIONS_MAX,
        )?;
        text(
            "agent version",
            &request.agent_version,
            AGENT_VERSION_BYTES_MAX,
        )?;
        let sent_at_ms = match request.sent_at_unix_ms {
            0 => None,
            ms if (1..=SENT_AT_UNIX_MS_MAX).contains(&ms) => Some(ms),
            ms => {
                return Err(Error::invalid(format!(
                    "sent_at_unix_ms {ms} is outside 1..={SENT_AT_UNIX_MS_MAX}"
                )));
            }
        };

        let mut seen = HashSet::with_capacity(request.capabilities.len());
        let mut capabilities = Vec::with_capacity(request.capabilities.len());
        for capability in &request.capabilities {
            capability_name(&capability.name)?;
            text(
                "capability detail",
                &capability.detail,
                CAPABILITY_DETAIL_BYTES_MAX,
            )?;
            if !seen.insert(capability.name.as_str()) {
                return Err(Error::invalid(format!(
                    "capability {:?} is reported twice",
                    capability.name
                )));
            }
            capabilities.push(CapabilityReport {
                name: capability.name.clone(),
                detail: capability.detail.clone(),
            });
        }

        let mut seen = HashSet::with_capacity(request.services.len());
        let mut services = Vec::with_capacity(request.services.len());
        let mut services_json = Vec::with_capacity(request.services.len());
        for status in &request.services {
            validate_id("service", &status.service)?;
            text("service state", &status.state, SERVICE_STATE_BYTES_MAX)?;
            text(
                "service version",
                &status.version,
                SERVICE_VERSION_BYTES_MAX,
            )?;
            text("service detail", &status.detail, SERVICE_DETAIL_BYTES_MAX)?;
            if !seen.insert(status.service.as_str()) {
                return Err(Error::invalid(format!(
                    "service {:?} is reported twice",
                    status.service
                )));
            }
            let state = ServiceState::parse(&status.state);
            services_json.push(json!({
                "service": status.service,
                "state": state.as_str(),
                "version": status.version,
                "detail": status.detail,
            }));
            services.push(ServiceReport {
                service: status.service.clone(),
                state,
                version: status.version.clone(),
            });
        }

        let mut versions_json = Vec::with_capacity(request.accepted_versions.len());
        for accepted in &request.accepted_versions {
            text("accepted scope", &accepted.scope, ACCEPTED_SCOPE_BYTES_MAX)?;
            versions_json.push(json!({
                "scope": accepted.scope,
                "version": accepted.version,
                "authority_term": accepted.authority_term,
            }));
        }

        let capabilities_json = serde_json::Value::Array(
            capabilities
                .iter()
                .map(|c| json!({ "name": c.name, "detail": c.detail }))
                .collect(),
        );
        let services_json = serde_json::Value::Array(services_json);
        let versions_json = serde_json::Value::Array(versions_json);
        let payload_json = json!({
            "services": services_json,
            "accepted_versions": versions_json,
        });
        Ok(Heartbeat {
            cluster_id,
            node_id,
            received_at_ms,
            sent_at_ms,
            health: Health::from_wire(request.health),
            degraded_mode: request.degraded_mode,
            agent_version: request.agent_version.clone(),
            capabilities,
            services,
            payload_json: payload_json.to_string(),
            capabilities_json: capabilities_json.to_string(),
            services_json: services_json.to_string(),
            versions_json: versions_json.to_string(),
            log_change: true,
        })
    }

    /// The reporting node's cluster.
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }

    /// The reporting node.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// When the control plane received it (unix ms).
    pub fn received_at_ms(&self) -> i64 {
        self.received_at_ms
    }

    /// The reported health.
    pub fn health(&self) -> Health {
        self.health
    }
}

fn count(what: &'static str, got: usize, limit: usize) -> Result<()> {
    if got > limit {
        return Err(Error::Oversize { what, limit, got });
    }
    Ok(())
}

/// A bounded string without NUL (PostgreSQL text and jsonb refuse it).
fn text(what: &'static str, value: &str, limit: usize) -> Result<()> {
    count(what, value.len(), limit)?;
    if value.contains('\0') {
        return Err(Error::invalid(format!("{what} contains a NUL character")));
    }
    Ok(())
}

fn capability_name(name: &str) -> Result<()> {
    count("capability name", name.len(), CAPABILITY_NAME_BYTES_MAX)?;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(Error::invalid(format!(
            "capability name {:?} must be 1..={CAPABILITY_NAME_BYTES_MAX} of a-z, 0-9, '_'",
            name.chars()
                .take(CAPABILITY_NAME_BYTES_MAX)
                .collect::<String>()
        )));
    }
    Ok(())
}

/// Tuning of a [`Heartbeats`] batcher; [`HeartbeatsConfig::default`] uses
/// the limits of [`crate::limits`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatsConfig {
    /// Most heartbeats per batch (transaction).
    pub batch_max: usize,
    /// Longest the oldest queued heartbeat waits before its batch is
    /// written.
    pub flush_interval: Duration,
    /// Queue capacity; beyond it [`Heartbeats::submit`] refuses.
    pub queue_max: usize,
    /// How long the log keeps entries.
    pub retention: Duration,
    /// How often the log is pruned; `None` disables the pruning task
    /// ([`Heartbeats::prune`] still works).
    pub prune_interval: Option<Duration>,
    /// Each node's own limits.
    pub node_limits: NodeLimits,
}

impl Default for HeartbeatsConfig {
    fn default() -> Self {
        HeartbeatsConfig {
            batch_max: HEARTBEAT_BATCH_MAX,
            flush_interval: HEARTBEAT_FLUSH_INTERVAL,
            queue_max: HEARTBEAT_QUEUE_MAX,
            retention: HEARTBEAT_RETENTION_DEFAULT,
            prune_interval: Some(HEARTBEAT_PRUNE_INTERVAL),
            node_limits: NodeLimits::default(),
        }
    }
}

/// Counters of a [`Heartbeats`] batcher, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatStats {
    /// Batches committed.
    pub batches: u64,
    /// Heartbeats committed (log rows written).
    pub rows: u64,
    /// Batches that failed (their heartbeats were not written).
    pub failed_batches: u64,
    /// Heartbeats that could not be written.
    pub failed_rows: u64,
    /// Heartbeats refused because the queue was full.
    pub refused_queue_full: u64,
    /// Heartbeats refused because their node exceeded its own rate.
    pub rate_limited: u64,
    /// Changes not logged because their node's change budget was spent.
    pub log_changes_suppressed: u64,
    /// Nodes the limiter tracks now.
    pub limiter_nodes: u64,
    /// Log rows deleted by pruning.
    pub pruned_rows: u64,
    /// Heartbeats queued now.
    pub queue_depth: u64,
    /// Heartbeats in the last committed batch.
    pub last_batch_rows: u64,
    /// How long the last committed batch took to write, in microseconds.
    pub last_batch_micros: u64,
    /// Heartbeats the queue holds before [`Heartbeats::submit`] refuses.
    pub queue_capacity: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    rows: AtomicU64,
    failed_batches: AtomicU64,
    failed_rows: AtomicU64,
    refused_queue_full: AtomicU64,
    rate_limited: AtomicU64,
    log_changes_suppressed: AtomicU64,
    pruned_rows: AtomicU64,
    last_batch_rows: AtomicU64,
    last_batch_micros: AtomicU64,
    /// Set while the queue is full, so that an overload is logged once.
    overloaded: AtomicBool,
    /// How long each committed batch took to write.
    batch_seconds: BatchDurations,
}

/// The histogram of committed batches' write times.
#[derive(Debug, Clone)]
struct BatchDurations(prometheus_client::metrics::histogram::Histogram);

impl Default for BatchDurations {
    fn default() -> Self {
        BatchDurations(crate::metrics::database_histogram())
    }
}

type Done = oneshot::Sender<Result<()>>;

struct Queued {
    heartbeat: Heartbeat,
    enqueued: Instant,
    done: Option<Done>,
}

struct Shared {
    counters: Arc<Counters>,
    limiter: NodeLimiter,
    pool: PgPool,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The heartbeat batcher: a cloneable handle on a bounded queue and the
/// background flusher and pruner tasks. Dropping every handle lets the
/// flusher write what is queued and stop; [`Heartbeats::shutdown`] does
/// the same and waits for it.
#[derive(Clone)]
pub struct Heartbeats {
    sender: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Heartbeats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heartbeats")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Heartbeats {
    /// Starts a batcher with the default configuration. Needs a tokio
    /// runtime.
    pub fn start(pool: PgPool) -> Self {
        Self::start_with(pool, HeartbeatsConfig::default())
    }

    /// Starts a batcher with `config` (sizes of 0 are raised to 1).
    pub fn start_with(pool: PgPool, config: HeartbeatsConfig) -> Self {
        let config = HeartbeatsConfig {
            batch_max: config.batch_max.max(1),
            queue_max: config.queue_max.max(1),
            ..config
        };
        let (sender, receiver) = mpsc::channel(config.queue_max);
        let (stop, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let mut tasks = vec![tokio::spawn(flusher(
            receiver,
            pool.clone(),
            Arc::clone(&counters),
            config.clone(),
            stop_rx.clone(),
        ))];
        if let Some(every) = config.prune_interval {
            tasks.push(tokio::spawn(pruner(
                pool.clone(),
                Arc::clone(&counters),
                every,
                config.retention,
                stop_rx,
            )));
        }
        Heartbeats {
            sender,
            shared: Arc::new(Shared {
                limiter: NodeLimiter::new(config.node_limits.clone()),
                counters,
                pool,
                stop,
                tasks: Mutex::new(tasks),
            }),
        }
    }

    /// Queues `heartbeat` and returns at once; it is written within
    /// about one flush interval. Refuses with [`Error::RateLimited`] when
    /// its node is over its own limit (nothing is queued), and with
    /// [`Error::Overloaded`] ([`QUEUE_FULL_MESSAGE`]) when the queue is
    /// full, so the agent retries later.
    pub fn submit(&self, heartbeat: Heartbeat) -> Result<()> {
        self.enqueue(heartbeat, None)
    }

    /// Refuses at once with [`Error::RateLimited`] (counted) when node
    /// `node_id` of `cluster_id` has no heartbeat left in its bucket now,
    /// so a caller can shed a flooding node before validating its
    /// heartbeat. Takes nothing: [`Heartbeats::submit`] still admits.
    pub fn check_rate(&self, cluster_id: &str, node_id: &str) -> Result<()> {
        let checked = self
            .shared
            .limiter
            .peek(cluster_id, node_id, Instant::now());
        if checked.is_err() {
            self.shared
                .counters
                .rate_limited
                .fetch_add(1, Ordering::Relaxed);
        }
        checked
    }

    /// Queues `heartbeat` and waits until its batch is committed: an
    /// acknowledged heartbeat is durable. Refuses like
    /// [`Heartbeats::submit`]; a failed write is [`Error::Database`]
    /// (gRPC `UNAVAILABLE`).
    pub async fn submit_and_wait(&self, heartbeat: Heartbeat) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.enqueue(heartbeat, Some(done))?;
        match wait.await {
            Ok(result) => result,
            Err(_) => Err(Error::Overloaded(STOPPED_MESSAGE.to_string())),
        }
    }

    fn enqueue(&self, mut heartbeat: Heartbeat, done: Option<Done>) -> Result<()> {
        let counters = &self.shared.counters;
        match self.shared.limiter.admit(&heartbeat, Instant::now()) {
            Ok(log_change) => {
                if !log_change {
                    counters
                        .log_changes_suppressed
                        .fetch_add(1, Ordering::Relaxed);
                }
                heartbeat.log_change = log_change;
            }
            Err(e) => {
                counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        let item = Queued {
            heartbeat,
            enqueued: Instant::now(),
            done,
        };
        match self.sender.try_send(item) {
            Ok(()) => {
                if counters.overloaded.swap(false, Ordering::Relaxed) {
                    tracing::info!("heartbeat queue accepts again");
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(item)) => {
                counters.refused_queue_full.fetch_add(1, Ordering::Relaxed);
                if !counters.overloaded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        cluster_id = %item.heartbeat.cluster_id,
                        node_id = %item.heartbeat.node_id,
                        queue_max = self.sender.max_capacity(),
                        "heartbeat queue is full: refusing heartbeats until it drains"
                    );
                } else {
                    tracing::debug!(
                        cluster_id = %item.heartbeat.cluster_id,
                        node_id = %item.heartbeat.node_id,
                        "heartbeat refused: queue full"
                    );
                }
                Err(Error::Overloaded(QUEUE_FULL_MESSAGE.to_string()))
            }
            Err(mpsc::error::TrySendError::Closed(item)) => {
                tracing::debug!(
                    cluster_id = %item.heartbeat.cluster_id,
                    node_id = %item.heartbeat.node_id,
                    "heartbeat refused: writer stopped"
                );
                Err(Error::Overloaded(STOPPED_MESSAGE.to_string()))
            }
        }
    }

    /// The counters now.
    pub fn stats(&self) -> HeartbeatStats {
        let c = &self.shared.counters;
        let queued = self
            .sender
            .max_capacity()
            .saturating_sub(self.sender.capacity());
        HeartbeatStats {
            batches: c.batches.load(Ordering::Relaxed),
            rows: c.rows.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            failed_rows: c.failed_rows.load(Ordering::Relaxed),
            refused_queue_full: c.refused_queue_full.load(Ordering::Relaxed),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            log_changes_suppressed: c.log_changes_suppressed.load(Ordering::Relaxed),
            limiter_nodes: u64::try_from(self.shared.limiter.tracked()).unwrap_or(u64::MAX),
            pruned_rows: c.pruned_rows.load(Ordering::Relaxed),
            queue_depth: u64::try_from(queued).unwrap_or(u64::MAX),
            last_batch_rows: c.last_batch_rows.load(Ordering::Relaxed),
            last_batch_micros: c.last_batch_micros.load(Ordering::Relaxed),
            queue_capacity: u64::try_from(self.sender.max_capacity()).unwrap_or(u64::MAX),
        }
    }

    /// The histogram of committed batches' write times (shared: what is
    /// observed later shows in it).
    pub fn batch_durations(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.shared.counters.batch_seconds.0.clone()
    }

    /// Deletes log entries received more than `older_than` ago, in chunks
    /// of [`HEARTBEAT_PRUNE_CHUNK`]; returns how many. The latest-state
    /// table is never pruned.
    pub async fn prune(&self, older_than: Duration) -> Result<u64> {
        let deleted = prune_log(&self.shared.pool, older_than).await?;
        self.shared
            .counters
            .pruned_rows
            .fetch_add(deleted, Ordering::Relaxed);
        Ok(deleted)
    }

    /// Stops accepting heartbeats, writes what is queued and waits for
    /// the background tasks to end. Later submits are refused.
    pub async fn shutdown(&self) {
        self.shared.stop.send_replace(true);
        let tasks = std::mem::take(
            &mut *self
                .shared
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "heartbeat task failed");
            }
        }
    }
}
