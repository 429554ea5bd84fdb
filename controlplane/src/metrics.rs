//! The control plane's Prometheus metrics: one `prometheus_client`
//! registry per serving process ([`ControlPlaneMetrics`]), rendered by
//! `rap_authority::metrics::expose` like a storage node's.
//!
//! Counters the services keep themselves (heartbeats, audit refusals) are
//! read at scrape time by [`Collected`]; latencies are histograms the
//! services observe into: fenced mutations ([`crate::fencing::run`],
//! through [`crate::fencing::AuthorityClients`]) and heartbeat batches
//! ([`crate::heartbeats`]). Label values are bounded: refusals by audit
//! action and error code (both static strings), certificates by cluster
//! and kind, mutations by outcome.

use crate::api::agent::AgentApi;
use crate::heartbeats::Heartbeats;
use crate::keys::expiry::{CertFile, cluster_cert_files, platform_cert_files, read_cert_expiry};
use crate::tls::ControlPlaneTls;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rap_authority::metrics::{Format, expose};
use std::path::PathBuf;
use std::sync::Arc;

/// Upper bounds (seconds) of the buckets of the control plane's latency
/// histograms: each is one or more PostgreSQL transactions, some with a
/// round trip to an authority group.
pub const DATABASE_LATENCY_BUCKETS_SECONDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram with [`DATABASE_LATENCY_BUCKETS_SECONDS`].
pub fn database_histogram() -> Histogram {
    Histogram::new(DATABASE_LATENCY_BUCKETS_SECONDS)
}

/// What a serving process's metrics read at scrape time.
#[derive(Clone)]
pub struct Sources {
    /// The heartbeat batcher.
    pub heartbeats: Heartbeats,
    /// The database pool.
    pub pool: sqlx::PgPool,
    /// The agent API (its identity cache), when served.
    pub agents: Option<AgentApi>,
    /// The TLS listener (the clusters it serves), when TLS is on.
    pub tls: Option<Arc<ControlPlaneTls>>,
    /// The keys directory (its certificates' expiry).
    pub keys_dir: PathBuf,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("keys_dir", &self.keys_dir)
            .finish_non_exhaustive()
    }
}

/// The registry of one control plane process.
pub struct ControlPlaneMetrics {
    registry: Registry,
}

impl std::fmt::Debug for ControlPlaneMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneMetrics")
            .finish_non_exhaustive()
    }
}

impl ControlPlaneMetrics {
    /// The registry over `sources`, with the fenced mutations timed by
    /// `authority`.
    pub fn new(sources: Sources, authority: &crate::fencing::AuthorityClients) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "rap_cp_heartbeat_batch_duration_seconds",
            "Time to commit one heartbeat batch to PostgreSQL",
            sources.heartbeats.batch_durations(),
        );
        registry.register(
            "rap_cp_fenced_mutation_duration_seconds",
            "Time of a fenced mutation from its fence request to its commit or refusal, by outcome",
            authority.mutation_durations(),
        );
        registry.register_collector(Box::new(Collected(sources)));
        ControlPlaneMetrics { registry }
    }

    /// The exposition in `format`. Reads certificate files: call it off
    /// the async runtime's worker threads.
    pub fn render(&self, format: Format) -> String {
        expose(&self.registry, format)
    }
}

/// The values the services keep, read at each scrape.
#[derive(Debug)]
struct Collected(Sources);

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for Collected {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sources = &self.0;
        let stats = sources.heartbeats.stats();
        let e = &mut encoder;
        counter(
            e,
            "rap_cp_heartbeats_written",
            "Heartbeats committed to PostgreSQL.",
            stats.rows,
        )?;
        counter(
            e,
            "rap_cp_heartbeat_batches",
            "Heartbeat batches committed.",
            stats.batches,
        )?;
        counter(
            e,
            "rap_cp_heartbeats_failed",
            "Heartbeats whose batch failed to commit.",
            stats.failed_rows,
        )?;
        counter(
            e,
            "rap_cp_heartbeats_refused",
            "Heartbeats refused because the queue was full.",
            stats.refused_queue_full,
        )?;
        counter(
            e,
            "rap_cp_heartbeats_rate_limited",
            "Heartbeats refused because their node exceeded its own rate (RATE_LIMITED).",
            stats.rate_limited,
        )?;
        counter(
            e,
            "rap_cp_heartbeat_log_changes_suppressed",
            "Heartbeat changes not logged because their node exceeded its change budget.",
            stats.log_changes_suppressed,
        )?;
        gauge(
            e,
            "rap_cp_heartbeat_limiter_nodes",
            "Nodes tracked by the per-node heartbeat limiter.",
            gauge_value(stats.limiter_nodes),
        )?;
        gauge(
            e,
            "rap_cp_heartbeat_queue_depth",
            "Heartbeats waiting for their batch.",
            gauge_value(stats.queue_depth),
        )?;
        gauge(
            e,
            "rap_cp_heartbeat_queue_capacity",
            "Heartbeats the queue holds before agents get OVERLOADED.",
            gauge_value(stats.queue_capacity),
        )?;
        gauge(
            e,
            "rap_cp_db_pool_connections",
            "Open PostgreSQL connections.",
            i64::from(sources.pool.size()),
        )?;
        gauge(
            e,
            "rap_cp_db_pool_idle",
            "Idle PostgreSQL connections.",
            i64::try_from(sources.pool.num_idle()).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "rap_cp_identity_cache_in_use",
            "1 while this process's identity listener hears every identity change (cached agent identity answers are used); 0 while every heartbeat's identity is read from PostgreSQL.",
            i64::from(
                sources
                    .agents
                    .as_ref()
                    .is_some_and(AgentApi::identity_cache_in_use),
            ),
        )?;
        counter(
            e,
            "rap_cp_audit_refusals_suppressed",
            "Anonymous refusals counted but not written to the audit log (over their source's budget).",
            crate::audit::suppressed_total(),
        )?;
        {
            let mut family = e.encode_descriptor(
                "rap_cp_refusals",
                "Refused calls by audit action and error code (every refusal, audited or not).",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for refusal in crate::audit::refusal_counts() {
                let labels = [("action", refusal.action), ("code", refusal.code)];
                ConstCounter::new(refusal.count).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = e.encode_descriptor(
            "rap_cp_certificate_expiry_timestamp_seconds",
            "When each certificate of the keys directory ends, in seconds since the Unix epoch, by cluster and kind.",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (file, not_after_s) in certificate_expiries(sources) {
            let kind = file.role.name();
            match &file.cluster_id {
                Some(cluster) => {
                    let labels = [("cluster_id", cluster.as_str()), ("kind", kind)];
                    ConstGauge::new(not_after_s).encode(family.encode_family(&labels)?)?;
                }
                None => {
                    let labels = [("kind", kind)];
                    ConstGauge::new(not_after_s).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// The certificate files of the platform and of every cluster this
/// process serves, with their ends in Unix seconds; a file that is
/// missing is left out, one that cannot be read is logged and left out.
fn certificate_expiries(sources: &Sources) -> Vec<(CertFile, i64)> {
    let mut files = platform_cert_files(&sources.keys_dir);
    if let Some(tls) = &sources.tls {
        for cluster in tls.cluster_ids() {
            files.extend(cluster_cert_files(&sources.keys_dir, &cluster));
        }
    }
    files
        .into_iter()
        .filter_map(|file| match read_cert_expiry(&file.path) {
            Ok(Some(expiry)) => Some((file, expiry.not_after_unix_ms / 1000)),
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(
                    cluster_id = file.cluster_id.as_deref().unwrap_or(""),
                    kind = file.role.name(),
                    error = %error,
                    "metrics: a certificate of the keys directory cannot be read"
                );
                None
            }
        })
        .collect()
}
