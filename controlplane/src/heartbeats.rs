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

/// Largest encoded heartbeat accepted (also the `AgentService` decoding
/// limit): bounds the memory a full queue can hold.
pub const HEARTBEAT_BYTES_MAX: usize = 64 * 1024;
/// Longest agent version string.
pub const AGENT_VERSION_BYTES_MAX: usize = 128;
/// Longest capability name (the schema checks `^[a-z0-9_]{1,63}$`).
pub const CAPABILITY_NAME_BYTES_MAX: usize = 63;
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

/// Per-node limits of a [`Heartbeats`] batcher (see the module docs);
/// [`NodeLimits::default`] uses the limits of [`crate::limits`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLimits {
    /// Heartbeats a node may send back to back.
    pub burst: u32,
    /// One more heartbeat is allowed every this long.
    pub refill: Duration,
    /// Nodes tracked at once.
    pub nodes_max: usize,
    /// Changes of one node logged per `log_interval`.
    pub log_changes_max: u32,
    /// The interval of `log_changes_max` (and of the periodic samples).
    pub log_interval: Duration,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            burst: HEARTBEAT_NODE_BURST,
            refill: HEARTBEAT_NODE_REFILL,
            nodes_max: HEARTBEAT_NODES_TRACKED_MAX,
            log_changes_max: HEARTBEAT_LOG_CHANGES_MAX,
            log_interval: HEARTBEAT_LOG_INTERVAL,
        }
    }
}

/// Generic cell rate algorithm: a token bucket of `burst` refilled one per
/// `every`, kept as the "theoretical arrival time" `tat` (the bucket is
/// full when `tat <= now`). Takes one token, or says how long until one is
/// there.
fn take_token(
    tat: &mut Instant,
    now: Instant,
    every: Duration,
    burst: u32,
) -> Result<(), Duration> {
    let start = (*tat).max(now);
    let next = start.checked_add(every).unwrap_or(start);
    let tolerance = every.checked_mul(burst).unwrap_or(Duration::MAX);
    let ahead = next.saturating_duration_since(now);
    if ahead > tolerance {
        Err(ahead - tolerance)
    } else {
        *tat = next;
        Ok(())
    }
}

/// One node's limiter state.
#[derive(Debug)]
struct NodeState {
    /// The rate bucket ([`take_token`]).
    rate_tat: Instant,
    /// The change-log budget ([`take_token`]).
    log_tat: Instant,
    /// Health, degraded mode and agent version hash of its last admitted
    /// heartbeat.
    last: Option<(Health, bool, u64)>,
    /// Refused since its bucket was last full (warned once per episode).
    limited: bool,
}

impl NodeState {
    fn new(now: Instant) -> Self {
        NodeState {
            rate_tat: now,
            log_tat: now,
            last: None,
            limited: false,
        }
    }

    /// Both buckets full: forgetting the node loses nothing.
    fn idle(&self, now: Instant) -> bool {
        self.rate_tat <= now && self.log_tat <= now
    }
}

/// The per-node limiter (see the module docs). One mutex over a map: a
/// few hundred nanoseconds per heartbeat, far below the write path.
#[derive(Debug)]
struct NodeLimiter {
    limits: NodeLimits,
    /// `log_interval / log_changes_max`.
    log_every: Duration,
    nodes: Mutex<HashMap<String, NodeState>>,
    /// Set while the table is full of busy nodes (warned once).
    full: AtomicBool,
}

impl NodeLimiter {
    fn new(limits: NodeLimits) -> Self {
        let limits = NodeLimits {
            burst: limits.burst.max(1),
            nodes_max: limits.nodes_max.max(1),
            log_changes_max: limits.log_changes_max.max(1),
            ..limits
        };
        NodeLimiter {
            log_every: limits.log_interval / limits.log_changes_max,
            limits,
            nodes: Mutex::new(HashMap::new()),
            full: AtomicBool::new(false),
        }
    }

    fn tracked(&self) -> usize {
        self.nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether node `cluster_id`/`node_id` has a token at `now`, without
    /// taking it: lets a caller refuse before validating the heartbeat.
    fn peek(&self, cluster_id: &str, node_id: &str, now: Instant) -> Result<()> {
        let key = format!("{cluster_id}/{node_id}");
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(state) = nodes.get_mut(&key) else {
            return Ok(());
        };
        let mut tat = state.rate_tat;
        match take_token(&mut tat, now, self.limits.refill, self.limits.burst) {
            Ok(()) => Ok(()),
            Err(wait) => {
                self.note_limited(state, cluster_id, node_id);
                Err(self.refusal(cluster_id, node_id, wait))
            }
        }
    }

    /// Logs the first refusal of an episode (it ends when the node's
    /// bucket is full again, i.e. it slowed down).
    fn note_limited(&self, state: &mut NodeState, cluster_id: &str, node_id: &str) {
        if !state.limited {
            state.limited = true;
            tracing::warn!(
                cluster_id,
                node_id,
                burst = self.limits.burst,
                refill_ms = u64::try_from(self.limits.refill.as_millis()).unwrap_or(u64::MAX),
                "node exceeds its heartbeat rate: refusing its excess (RATE_LIMITED) \
                 until it slows down"
            );
        }
    }

    fn refusal(&self, cluster_id: &str, node_id: &str, retry_after: Duration) -> Error {
        Error::RateLimited {
            what: format!(
                "heartbeats of node {cluster_id}/{node_id} (at most {} at once, one more every {} ms)",
                self.limits.burst,
                self.limits.refill.as_millis()
            ),
            retry_after,
        }
    }

    /// Admits `heartbeat` at `now` or refuses it with
    /// [`Error::RateLimited`]. `Ok(log_change)`: false when it changes its
    /// node's state but the node's change budget is spent.
    fn admit(&self, heartbeat: &Heartbeat, now: Instant) -> Result<bool> {
        let key = format!("{}/{}", heartbeat.cluster_id, heartbeat.node_id);
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        if !nodes.contains_key(&key) && nodes.len() >= self.limits.nodes_max {
            nodes.retain(|_, state| !state.idle(now));
            if nodes.len() >= self.limits.nodes_max {
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        nodes_max = self.limits.nodes_max,
                        cluster_id = %heartbeat.cluster_id,
                        node_id = %heartbeat.node_id,
                        "heartbeat limiter tracks its maximum of busy nodes: refusing new nodes \
                         as rate limited until some go idle"
                    );
                }
                return Err(Error::RateLimited {
                    what: format!(
                        "heartbeats: the control plane tracks {} busy nodes already",
                        self.limits.nodes_max
                    ),
                    retry_after: self.limits.refill,
                });
            }
            self.full.store(false, Ordering::Relaxed);
        }
        let state = nodes.entry(key).or_insert_with(|| NodeState::new(now));
        if state.rate_tat <= now {
            // A full bucket: the node slowed down; a new episode may start.
            state.limited = false;
        }
        if let Err(wait) = take_token(
            &mut state.rate_tat,
            now,
            self.limits.refill,
            self.limits.burst,
        ) {
            self.note_limited(
                state,
                heartbeat.cluster_id.as_str(),
                heartbeat.node_id.as_str(),
            );
            return Err(self.refusal(
                heartbeat.cluster_id.as_str(),
                heartbeat.node_id.as_str(),
                wait,
            ));
        }
        let current = (
            heartbeat.health,
            heartbeat.degraded_mode,
            version_hash(&heartbeat.agent_version),
        );
        let changed = state.last != Some(current);
        state.last = Some(current);
        let log_change = !changed
            || take_token(
                &mut state.log_tat,
                now,
                self.log_every,
                self.limits.log_changes_max,
            )
            .is_ok();
        Ok(log_change)
    }
}

fn version_hash(version: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    version.hash(&mut hasher);
    hasher.finish()
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
        }
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

/// Deletes log rows older than `older_than` in bounded chunks.
async fn prune_log(pool: &PgPool, older_than: Duration) -> Result<u64> {
    let age_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    let cutoff_ms = now_unix_ms().saturating_sub(age_ms);
    let mut total = 0u64;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM node_heartbeats WHERE heartbeat_id IN (
                 SELECT heartbeat_id FROM node_heartbeats
                  WHERE received_at < to_timestamp($1::double precision / 1000)
                  LIMIT $2)",
        )
        .bind(cutoff_ms)
        .bind(HEARTBEAT_PRUNE_CHUNK)
        .execute(pool)
        .await?
        .rows_affected();
        total += deleted;
        if deleted < u64::try_from(HEARTBEAT_PRUNE_CHUNK).unwrap_or(u64::MAX) {
            return Ok(total);
        }
    }
}

async fn pruner(
    pool: PgPool,
    counters: Arc<Counters>,
    every: Duration,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            // Stop asked, or every handle dropped.
            _ = stop.wait_for(|stop| *stop) => return,
        }
        match prune_log(&pool, retention).await {
            Ok(deleted) => {
                counters.pruned_rows.fetch_add(deleted, Ordering::Relaxed);
                if deleted > 0 {
                    tracing::info!(deleted, "heartbeat log pruned");
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning the heartbeat log failed"),
        }
    }
}

async fn flusher(
    mut receiver: mpsc::Receiver<Queued>,
    pool: PgPool,
    counters: Arc<Counters>,
    config: HeartbeatsConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(config.batch_max);
    let mut stopping = false;
    loop {
        // Wait for the first heartbeat of a batch. On stop (asked, or
        // every handle dropped) refuse new heartbeats and write the queued
        // ones: once closed and empty, `recv_many` returns 0.
        tokio::select! {
            got = receiver.recv_many(&mut batch, config.batch_max) => {
                if got == 0 {
                    return;
                }
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                receiver.close();
                continue;
            }
        }
        // Fill the batch until it is full or the oldest heartbeat in it
        // has waited the flush interval (at once when stopping).
        let deadline = batch
            .first()
            .map(|q| q.enqueued + config.flush_interval)
            .unwrap_or_else(Instant::now);
        let deadline = tokio::time::Instant::from_std(deadline);
        while batch.len() < config.batch_max {
            let room = config.batch_max - batch.len();
            tokio::select! {
                got = receiver.recv_many(&mut batch, room) => {
                    if got == 0 {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline), if !stopping => break,
                _ = stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    receiver.close();
                }
            }
        }
        flush(&pool, &counters, std::mem::take(&mut batch)).await;
        batch.reserve(config.batch_max);
    }
}

/// Writes one batch and answers its waiters.
async fn flush(pool: &PgPool, counters: &Counters, batch: Vec<Queued>) {
    let started = Instant::now();
    let heartbeats: Vec<&Heartbeat> = batch.iter().map(|q| &q.heartbeat).collect();
    let result = write_with_retries(pool, &heartbeats).await;
    drop(heartbeats);
    match result {
        Ok(()) => {
            committed(counters, batch.len(), started);
            for item in batch {
                if let Some(done) = item.done {
                    // The waiter may have gone (the call was cancelled).
                    let _ = done.send(Ok(()));
                }
            }
        }
        Err(e) if is_data_error(&e) && batch.len() > 1 => {
            tracing::warn!(
                error = %e,
                rows = batch.len(),
                "heartbeat batch refused by the database; writing it one heartbeat at a time"
            );
            for item in batch {
                let started = Instant::now();
                let result = write_with_retries(pool, &[&item.heartbeat]).await;
                match &result {
                    Ok(()) => committed(counters, 1, started),
                    Err(e) => {
                        counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                        counters.failed_rows.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            cluster_id = %item.heartbeat.cluster_id,
                            node_id = %item.heartbeat.node_id,
                            error = %e,
                            "heartbeat refused by the database"
                        );
                    }
                }
                if let Some(done) = item.done {
                    let _ = done.send(result.map_err(Error::Database));
                }
            }
        }
        Err(e) => {
            counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            counters
                .failed_rows
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            tracing::error!(error = %e, rows = batch.len(), "heartbeat batch not written");
            let message = format!("heartbeat batch not written: {e}");
            for item in batch {
                if let Some(done) = item.done {
                    let _ = done.send(Err(Error::Database(sqlx::Error::Io(
                        std::io::Error::other(message.clone()),
                    ))));
                }
            }
        }
    }
}

fn committed(counters: &Counters, rows: usize, started: Instant) {
    let rows = rows as u64;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    counters.batches.fetch_add(1, Ordering::Relaxed);
    counters.rows.fetch_add(rows, Ordering::Relaxed);
    counters.last_batch_rows.store(rows, Ordering::Relaxed);
    counters.last_batch_micros.store(micros, Ordering::Relaxed);
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Deadlock or serialization failure: the same batch may succeed again.
fn is_conflict(error: &sqlx::Error) -> bool {
    matches!(sqlstate(error).as_deref(), Some("40P01" | "40001"))
}

/// The database refused the data itself (class 22 data exception, class
/// 23 integrity constraint): retrying the rows one by one isolates it.
fn is_data_error(error: &sqlx::Error) -> bool {
    sqlstate(error).is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
}

async fn write_with_retries(pool: &PgPool, heartbeats: &[&Heartbeat]) -> Result<(), sqlx::Error> {
    let mut attempt = 0;
    loop {
        match write_batch(pool, heartbeats).await {
            Err(e) if is_conflict(&e) && attempt < HEARTBEAT_BATCH_RETRIES => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "heartbeat batch conflicted; retrying");
            }
            other => return other,
        }
    }
}

/// The five set-based statements of one batch, in one transaction.
async fn write_batch(pool: &PgPool, heartbeats: &[&Heartbeat]) -> Result<(), sqlx::Error> {
    let log_interval_secs = HEARTBEAT_LOG_INTERVAL.as_secs_f64();
    // The newest heartbeat of each node, with how many the batch holds,
    // in (cluster, node) order so that concurrent writers lock rows in the
    // same order.
    let mut newest: HashMap<(&str, &str), (usize, i64)> = HashMap::new();
    for (index, hb) in heartbeats.iter().enumerate() {
        let entry = newest
            .entry((hb.cluster_id.as_str(), hb.node_id.as_str()))
            .or_insert((index, 0));
        if hb.received_at_ms >= heartbeats[entry.0].received_at_ms {
            entry.0 = index;
        }
        entry.1 += 1;
    }
    let mut latest: Vec<_> = newest.into_iter().collect();
    latest.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let latest: Vec<(&Heartbeat, i64)> = latest
        .into_iter()
        .map(|(_, (index, count))| (heartbeats[index], count))
        .collect();

    let mut tx = pool.begin().await?;

    // 1. The log: changes (within the node's change budget) and one
    //    sample per log interval. Returns what it logged, so that 2.
    //    records when each node was last logged.
    let cluster: Vec<&str> = heartbeats.iter().map(|h| h.cluster_id.as_str()).collect();
    let node: Vec<&str> = heartbeats.iter().map(|h| h.node_id.as_str()).collect();
    let received: Vec<i64> = heartbeats.iter().map(|h| h.received_at_ms).collect();
    let sent: Vec<Option<i64>> = heartbeats.iter().map(|h| h.sent_at_ms).collect();
    let health: Vec<&str> = heartbeats.iter().map(|h| h.health.as_str()).collect();
    let degraded: Vec<bool> = heartbeats.iter().map(|h| h.degraded_mode).collect();
    let version: Vec<&str> = heartbeats
        .iter()
        .map(|h| h.agent_version.as_str())
        .collect();
    let payload: Vec<&str> = heartbeats.iter().map(|h| h.payload_json.as_str()).collect();
    let log_change: Vec<bool> = heartbeats.iter().map(|h| h.log_change).collect();
    let logged: Vec<(String, String, i64)> = sqlx::query_as(
        "INSERT INTO node_heartbeats
             (cluster_id, node_id, received_at, sent_at, health, degraded_mode,
              agent_version, payload)
         SELECT t.c, t.n, to_timestamp(t.r::double precision / 1000),
                to_timestamp(t.s::double precision / 1000), t.h, t.d, t.v, t.p::jsonb
           FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[],
                       $6::boolean[], $7::text[], $8::text[], $10::boolean[])
                AS t(c, n, r, s, h, d, v, p, lc)
           LEFT JOIN node_heartbeat_latest l ON l.cluster_id = t.c AND l.node_id = t.n
          WHERE l.node_id IS NULL OR l.last_logged_at IS NULL
             OR (t.lc AND (l.health <> t.h OR l.degraded_mode <> t.d OR l.agent_version <> t.v))
             OR l.last_logged_at <= to_timestamp(t.r::double precision / 1000)
                                    - make_interval(secs => $9)
         RETURNING cluster_id::text, node_id::text,
                   round(extract(epoch FROM received_at) * 1000)::bigint",
    )
    .bind(&cluster)
    .bind(&node)
    .bind(&received)
    .bind(&sent)
    .bind(&health)
    .bind(&degraded)
    .bind(&version)
    .bind(&payload)
    .bind(log_interval_secs)
    .bind(&log_change)
    .fetch_all(&mut *tx)
    .await?;
    let mut last_logged: HashMap<(String, String), i64> = HashMap::with_capacity(logged.len());
    for (c, n, at) in logged {
        let entry = last_logged.entry((c, n)).or_insert(at);
        *entry = (*entry).max(at);
    }

    // 2. The latest state: one row per node.
    let cluster: Vec<&str> = latest.iter().map(|(h, _)| h.cluster_id.as_str()).collect();
    let node: Vec<&str> = latest.iter().map(|(h, _)| h.node_id.as_str()).collect();
    let received: Vec<i64> = latest.iter().map(|(h, _)| h.received_at_ms).collect();
    let sent: Vec<Option<i64>> = latest.iter().map(|(h, _)| h.sent_at_ms).collect();
    let health: Vec<&str> = latest.iter().map(|(h, _)| h.health.as_str()).collect();
    let degraded: Vec<bool> = latest.iter().map(|(h, _)| h.degraded_mode).collect();
    let version: Vec<&str> = latest
        .iter()
        .map(|(h, _)| h.agent_version.as_str())
        .collect();
    let capabilities: Vec<&str> = latest
        .iter()
        .map(|(h, _)| h.capabilities_json.as_str())
        .collect();
    let services: Vec<&str> = latest
        .iter()
        .map(|(h, _)| h.services_json.as_str())
        .collect();
    let versions: Vec<&str> = latest
        .iter()
        .map(|(h, _)| h.versions_json.as_str())
        .collect();
    let counts: Vec<i64> = latest.iter().map(|(_, count)| *count).collect();
    let logged_at: Vec<Option<i64>> = latest
        .iter()
        .map(|(h, _)| {
            last_logged
                .get(&(h.cluster_id.to_string(), h.node_id.to_string()))
                .copied()
        })
        .collect();
    sqlx::query(
        "INSERT INTO node_heartbeat_latest AS l
             (cluster_id, node_id, received_at, sent_at, health, degraded_mode, agent_version,
              capabilities, services, accepted_versions, heartbeat_count, last_logged_at)
         SELECT t.c, t.n, to_timestamp(t.r::double precision / 1000),
                to_timestamp(t.s::double precision / 1000), t.h, t.d, t.v,
                t.caps::jsonb, t.svcs::jsonb, t.avs::jsonb, t.k,
                to_timestamp(t.lg::double precision / 1000)
           FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[],
                       $6::boolean[], $7::text[], $8::text[], $9::text[], $10::text[],
                       $11::bigint[], $12::bigint[])
                AS t(c, n, r, s, h, d, v, caps, svcs, avs, k, lg)
         ON CONFLICT (cluster_id, node_id) DO UPDATE SET
             received_at = EXCLUDED.received_at,
             sent_at = EXCLUDED.sent_at,
             health = EXCLUDED.health,
             degraded_mode = EXCLUDED.degraded_mode,
             agent_version = EXCLUDED.agent_version,
             capabilities = EXCLUDED.capabilities,
             services = EXCLUDED.services,
             accepted_versions = EXCLUDED.accepted_versions,
             heartbeat_count = l.heartbeat_count + EXCLUDED.heartbeat_count,
             -- When 1. logged this node in this batch; else unchanged.
             last_logged_at = coalesce(EXCLUDED.last_logged_at, l.last_logged_at)",
    )
    .bind(&cluster)
    .bind(&node)
    .bind(&received)
    .bind(&sent)
    .bind(&health)
    .bind(&degraded)
    .bind(&version)
    .bind(&capabilities)
    .bind(&services)
    .bind(&versions)
    .bind(&counts)
    .bind(&logged_at)
    .execute(&mut *tx)
    .await?;

    // 3. last_seen_at of the active membership, never backwards.
    sqlx::query(
        "UPDATE cluster_memberships AS m
            SET last_seen_at = to_timestamp(t.r::double precision / 1000)
           FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS t(c, n, r)
          WHERE m.cluster_id = t.c AND m.node_id = t.n AND m.membership_status = 'active'
            AND (m.last_seen_at IS NULL
                 OR m.last_seen_at < to_timestamp(t.r::double precision / 1000))",
    )
    .bind(&cluster)
    .bind(&node)
    .bind(&received)
    .execute(&mut *tx)
    .await?;

    // 4. Reported service state, only where a service instance exists.
    let mut svc_cluster = Vec::new();
    let mut svc_node = Vec::new();
    let mut svc_name = Vec::new();
    let mut svc_state = Vec::new();
    let mut svc_version = Vec::new();
    let mut svc_received = Vec::new();
    for (hb, _) in &latest {
        for service in &hb.services {
            svc_cluster.push(hb.cluster_id.as_str());
            svc_node.push(hb.node_id.as_str());
            svc_name.push(service.service.as_str());
            svc_state.push(service.state.as_str());
            svc_version.push(service.version.as_str());
            svc_received.push(hb.received_at_ms);
        }
    }
    if !svc_name.is_empty() {
        sqlx::query(
            "UPDATE node_service_instances AS s
                SET reported_state = t.st,
                    reported_version = t.v,
                    last_heartbeat_at = to_timestamp(t.r::double precision / 1000)
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                           $6::bigint[]) AS t(c, n, svc, st, v, r)
              WHERE s.cluster_id = t.c AND s.node_id = t.n AND s.service = t.svc",
        )
        .bind(&svc_cluster)
        .bind(&svc_node)
        .bind(&svc_name)
        .bind(&svc_state)
        .bind(&svc_version)
        .bind(&svc_received)
        .execute(&mut *tx)
        .await?;
    }

    // 5. Capabilities of active members; unchanged rows are left alone.
    let mut cap_cluster = Vec::new();
    let mut cap_node = Vec::new();
    let mut cap_name = Vec::new();
    let mut cap_detail = Vec::new();
    let mut cap_received = Vec::new();
    for (hb, _) in &latest {
        for capability in &hb.capabilities {
            cap_cluster.push(hb.cluster_id.as_str());
            cap_node.push(hb.node_id.as_str());
            cap_name.push(capability.name.as_str());
            cap_detail.push(capability.detail.as_str());
            cap_received.push(hb.received_at_ms);
        }
    }
    if !cap_name.is_empty() {
        sqlx::query(
            "INSERT INTO node_capabilities AS nc
                 (cluster_id, node_id, capability, detail, source, reported_at)
             SELECT t.c, t.n, t.cap, t.d, 'heartbeat',
                    to_timestamp(t.r::double precision / 1000)
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
                    AS t(c, n, cap, d, r)
              WHERE EXISTS (SELECT 1 FROM cluster_memberships m
                             WHERE m.cluster_id = t.c AND m.node_id = t.n
                               AND m.membership_status = 'active')
                AND NOT EXISTS (SELECT 1 FROM node_capabilities o
                                 WHERE o.cluster_id = t.c AND o.node_id = t.n
                                   AND o.capability = t.cap AND o.detail = t.d
                                   AND o.source = 'heartbeat')
             ON CONFLICT (cluster_id, node_id, capability) DO UPDATE SET
                 detail = EXCLUDED.detail,
                 source = EXCLUDED.source,
                 reported_at = EXCLUDED.reported_at
              WHERE nc.detail IS DISTINCT FROM EXCLUDED.detail
                 OR nc.source IS DISTINCT FROM EXCLUDED.source",
        )
        .bind(&cap_cluster)
        .bind(&cap_node)
        .bind(&cap_name)
        .bind(&cap_detail)
        .bind(&cap_received)
        .execute(&mut *tx)
        .await?;
    }

    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(node: &str, health: NodeHealth) -> Heartbeat {
        let request = HeartbeatRequest {
            cluster_id: "c1".into(),
            node_id: node.into(),
            health: health as i32,
            ..Default::default()
        };
        Heartbeat::from_request(&request, now_unix_ms()).expect("valid")
    }

    // Goal: the bucket allows a burst, then one per refill, and says how
    // long to wait. Method: take_token at explicit instants.
    #[test]
    fn token_bucket_burst_refill_and_wait() {
        let t0 = Instant::now();
        let every = Duration::from_millis(100);
        let mut tat = t0;
        for _ in 0..3 {
            take_token(&mut tat, t0, every, 3).expect("burst");
        }
        let wait = take_token(&mut tat, t0, every, 3).expect_err("over the burst");
        assert_eq!(wait, every);
        take_token(&mut tat, t0 + every, every, 3).expect("one refilled");
        assert!(take_token(&mut tat, t0 + every, every, 3).is_err());
        // Long idle: full again, never more than the burst.
        let later = t0 + every * 100;
        for _ in 0..3 {
            take_token(&mut tat, later, every, 3).expect("full again");
        }
        assert!(take_token(&mut tat, later, every, 3).is_err());
    }

    // Goal: one node over its limit is refused as RATE_LIMITED with a
    // retry hint, another node is not affected; a flapping node spends
    // its change budget; idle nodes are forgotten when the table is full
    // and busy ones are never dropped for a newcomer. Method: a limiter
    // with small limits at explicit instants.
    #[test]
    fn limiter_is_per_node_bounded_and_budgets_changes() {
        let limiter = NodeLimiter::new(NodeLimits {
            burst: 2,
            refill: Duration::from_secs(1),
            nodes_max: 2,
            log_changes_max: 3,
            log_interval: Duration::from_secs(300),
        });
        let t0 = Instant::now();
        let a = heartbeat("a", NodeHealth::Healthy);
        assert!(limiter.admit(&a, t0).expect("first"));
        assert!(limiter.admit(&a, t0).expect("second: unchanged, logs"));
        let refused = limiter.admit(&a, t0).expect_err("third");
        assert_eq!(refused.code(), "RATE_LIMITED");
        assert!(refused.is_retryable());
        assert_eq!(refused.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(
            tonic::Status::from(refused).code(),
            tonic::Code::ResourceExhausted
        );
        let b = heartbeat("b", NodeHealth::Healthy);
        assert!(limiter.admit(&b, t0).is_ok(), "another node is not limited");

        // Flapping: the first state counts as a change; three changes per
        // interval are logged, the next are not.
        let mut logged = Vec::new();
        for i in 0..6u32 {
            let at = t0 + Duration::from_secs(10 + u64::from(i) * 2);
            let health = if i % 2 == 0 {
                NodeHealth::Degraded
            } else {
                NodeHealth::Healthy
            };
            logged.push(
                limiter
                    .admit(&heartbeat("b", health), at)
                    .expect("within rate"),
            );
        }
        assert_eq!(logged, [true, true, false, false, false, false]);

        // The table is full (a, b); a newcomer while both are busy is
        // refused; once a is idle it takes a's place, and b (busy) stays.
        let c = heartbeat("c", NodeHealth::Healthy);
        let busy = t0 + Duration::from_secs(20);
        assert_eq!(
            limiter.admit(&c, busy).expect_err("table full").code(),
            "RATE_LIMITED"
        );
        let b_again = t0 + Duration::from_secs(300);
        assert!(limiter.admit(&b, b_again).is_ok());
        let a_idle = b_again + Duration::from_millis(500);
        assert!(limiter.admit(&c, a_idle).is_ok());
        assert_eq!(limiter.tracked(), 2);
        // b kept its state: its bucket is not full again.
        assert!(limiter.admit(&b, a_idle).is_ok());
        assert!(limiter.admit(&b, a_idle).is_err());
    }
}
