//! Prometheus metrics of one storage node (a voter or a cache replica),
//! kept in one `prometheus_client` registry per node. Every series carries
//! the node's `cluster_id` and `node_id`; the label values of the
//! refusal counter and the RPC histogram are bounded
//! ([`LABEL_VALUES_MAX`]).
//!
//! [`expose`] renders any registry for a scrape: the OpenMetrics text a
//! Prometheus server asks for, or the classic text format (version 0.0.4)
//! for every other client (`curl`, `promtool check metrics`). The control
//! plane renders its own registry with it too.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds (seconds) of the buckets of every latency histogram of a
/// storage node (RPCs, fence grants, Raft appends and applies, watch
/// deliveries).
pub const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Most distinct refusal codes / RPC methods tracked; more are folded into
/// `other` so a hostile client cannot grow the label set.
pub const LABEL_VALUES_MAX: usize = 64;

/// The partition views, one series each in `rap_partition_view{view}`.
pub const PARTITION_VIEWS: [&str; 4] = ["healthy", "degraded", "minority", "fenced"];

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition format of a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (counter families named without `_total`).
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4.
    Text,
}

impl Format {
    /// The format a scrape's `Accept` header asks for: OpenMetrics when it
    /// names it (a Prometheus server does), else the classic text.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Text => TEXT_CONTENT_TYPE,
        }
    }
}

/// `registry` rendered in `format`.
pub fn expose(registry: &Registry, format: Format) -> String {
    let mut open = String::new();
    if let Err(error) = encode(&mut open, registry) {
        // Writing into a String fails only if a metric's encoder does;
        // what was written so far is still served.
        tracing::warn!(error = %error, "metrics: encoding the registry failed");
    }
    match format {
        Format::OpenMetrics => open,
        Format::Text => classic_text(&open),
    }
}

/// The classic text format of an OpenMetrics exposition written by
/// `prometheus_client`: a counter family's `# HELP` and `# TYPE` name its
/// `_total` series (OpenMetrics names the family without the suffix),
/// `# UNIT` and `# EOF` are left out; every sample line is the same.
fn classic_text(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut lines = open.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let counter = format!("# TYPE {name} counter");
            if lines.peek() == Some(&counter.as_str()) {
                lines.next();
                out.push_str(&format!(
                    "# HELP {name}_total {help}\n# TYPE {name}_total counter\n"
                ));
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A latency histogram with [`LATENCY_BUCKETS_SECONDS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_SECONDS)
}

/// Seconds since the Unix epoch of `at` (0 before it).
pub fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The labels of one series beyond the node's own.
type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// What kind of storage node a registry is for: a cache replica runs no
/// Raft, so it has no Raft or voter gauges, and has its cache gauges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A voter of the authority group.
    Voter,
    /// A cache replica.
    Cache,
}

/// The gauges of a node, set from its state when it is scraped.
#[derive(Debug, Default)]
struct NodeGauges {
    raft_term: Gauge,
    is_leader: Gauge,
    last_log_index: Gauge,
    applied_index: Gauge,
    authority_term: Gauge,
    last_fence_seq: Gauge,
    reachable_voters: Gauge,
    voters: Gauge,
    partition_view: Family<Labels, Gauge>,
    certificate_expiry: Gauge,
    last_apply_age: Gauge<f64, AtomicU64>,
    shards_held: Gauge,
    cache_confirm_age: Gauge<f64, AtomicU64>,
}

/// The metrics of one storage node: its registry and the handles the
/// services count and time with.
pub struct AuthorityMetrics {
    registry: Registry,
    fence_grants: Counter,
    shards_published: Counter,
    refusals: Family<Labels, Counter>,
    refusal_codes: Mutex<BTreeSet<String>>,
    rpc: HistogramFamily,
    rpc_methods: Mutex<BTreeSet<String>>,
    fence_grant: Histogram,
    raft_append: Histogram,
    raft_apply: Histogram,
    watch_delivery: Histogram,
    gauges: NodeGauges,
}

impl std::fmt::Debug for AuthorityMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityMetrics").finish_non_exhaustive()
    }
}

/// Gauges read from Raft and the node at render time.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    /// Raft term.
    pub raft_term: u64,
    /// 1 when this node leads.
    pub is_leader: bool,
    /// Last log index.
    pub last_log_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Authority term.
    pub authority_term: u64,
    /// Last fence sequence granted.
    pub last_fence_seq: u64,
    /// Voters reachable (including this node).
    pub reachable_voters: u64,
    /// Voters in the group.
    pub total_voters: u64,
    /// Partition view name (healthy, degraded, minority, fenced).
    pub partition_view: &'static str,
    /// Time since this node last applied an entry (a voter) or a voter
    /// last confirmed its assignment (a cache replica).
    pub last_apply_age: Duration,
    /// When the node's own certificate ends (`None`: no TLS).
    pub certificate_not_after: Option<SystemTime>,
    /// Shards held (a voter: in its applied state; a cache replica: kept).
    pub shards_held: u64,
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `key` itself while fewer than [`LABEL_VALUES_MAX`] distinct values are
/// tracked (or it is one of them), else `other`.
fn bounded(seen: &Mutex<BTreeSet<String>>, key: &str) -> String {
    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    if seen.contains(key) {
        return key.to_string();
    }
    if seen.len() < LABEL_VALUES_MAX {
        seen.insert(key.to_string());
        return key.to_string();
    }
    "other".to_string()
}

impl AuthorityMetrics {
    /// The metrics of storage node `node_id` of `cluster_id`.
    pub fn new(cluster_id: &str, node_id: &str, kind: NodeKind) -> AuthorityMetrics {
        let labels: [(Cow<'static, str>, Cow<'static, str>); 2] = [
            (
                Cow::Borrowed("cluster_id"),
                Cow::Owned(cluster_id.to_string()),
            ),
            (Cow::Borrowed("node_id"), Cow::Owned(node_id.to_string())),
        ];
        let mut registry = Registry::with_labels(labels.into_iter());
        let metrics = AuthorityMetrics {
            registry: Registry::default(),
            fence_grants: Counter::default(),
            shards_published: Counter::default(),
            refusals: Family::default(),
            refusal_codes: Mutex::new(BTreeSet::new()),
            rpc: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            rpc_methods: Mutex::new(BTreeSet::new()),
            fence_grant: latency_histogram(),
            raft_append: latency_histogram(),
            raft_apply: latency_histogram(),
            watch_delivery: latency_histogram(),
            gauges: NodeGauges::default(),
        };
        let g = &metrics.gauges;
        if kind == NodeKind::Voter {
            registry.register("rap_raft_term", "Raft term", g.raft_term.clone());
            registry.register(
                "rap_raft_is_leader",
                "1 if this node is the Raft leader",
                g.is_leader.clone(),
            );
            registry.register(
                "rap_raft_last_log_index",
                "Last Raft log index",
                g.last_log_index.clone(),
            );
            registry.register(
                "rap_raft_applied_index",
                "Last applied Raft log index",
                g.applied_index.clone(),
            );
            registry.register(
                "rap_fence_last_seq",
                "Last fence sequence granted in the term",
                g.last_fence_seq.clone(),
            );
            registry.register(
                "rap_voters_reachable",
                "Voters reachable, this node included",
                g.reachable_voters.clone(),
            );
            registry.register("rap_voters", "Voters in the group", g.voters.clone());
            registry.register(
                "rap_shards_held",
                "Shards in this voter's applied state",
                g.shards_held.clone(),
            );
            registry.register(
                "rap_last_apply_age_seconds",
                "Seconds since this node last applied a Raft entry (what shard answers report as their staleness)",
                g.last_apply_age.clone(),
            );
            registry.register(
                "rap_fence_grants",
                "Fences granted by this node as leader",
                metrics.fence_grants.clone(),
            );
            registry.register(
                "rap_shards_published",
                "Shards published through this node",
                metrics.shards_published.clone(),
            );
            registry.register(
                "rap_fence_grant_duration_seconds",
                "Time from a fence request reaching the leader to its grant (queue, Raft commit and apply)",
                metrics.fence_grant.clone(),
            );
            registry.register(
                "rap_raft_append_duration_seconds",
                "Time to append a batch of entries to the durable Raft log (one fsynced commit)",
                metrics.raft_append.clone(),
            );
            registry.register(
                "rap_raft_apply_duration_seconds",
                "Time to apply a batch of committed entries to the state machine and persist it",
                metrics.raft_apply.clone(),
            );
        }
        registry.register(
            "rap_authority_term",
            "Authority term of the cluster",
            g.authority_term.clone(),
        );
        registry.register(
            "rap_partition_view",
            "Partition view (1 for the current one)",
            g.partition_view.clone(),
        );
        registry.register(
            "rap_certificate_expiry_timestamp_seconds",
            "When this node's own TLS certificate ends, in seconds since the Unix epoch (0 without TLS)",
            g.certificate_expiry.clone(),
        );
        registry.register(
            "rap_refusals",
            "Requests refused, by reason",
            metrics.refusals.clone(),
        );
        registry.register(
            "rap_rpc_duration_seconds",
            "RPC latency by method",
            metrics.rpc.clone(),
        );
        registry.register(
            "rap_watch_delivery_duration_seconds",
            "Time from a change becoming visible on this node to its answer handed to an open WatchShards stream",
            metrics.watch_delivery.clone(),
        );
        if kind == NodeKind::Cache {
            registry.register(
                "rap_cache_shards",
                "Shards this cache replica holds",
                g.shards_held.clone(),
            );
            registry.register(
                "rap_cache_confirm_age_seconds",
                "Seconds since a voter last confirmed this cache's assignment",
                g.cache_confirm_age.clone(),
            );
        }
        AuthorityMetrics {
            registry,
            ..metrics
        }
    }

    /// Counts one granted fence.
    pub fn fence_granted(&self) {
        self.fence_grants.inc();
    }

    /// Records how long one fence took from its request to its grant.
    pub fn observe_fence_grant(&self, elapsed: Duration) {
        self.fence_grant.observe(elapsed.as_secs_f64());
    }

    /// The histogram of Raft log appends, handed to the log store.
    pub fn raft_append(&self) -> Histogram {
        self.raft_append.clone()
    }

    /// The histogram of state-machine applies, handed to the store.
    pub fn raft_apply(&self) -> Histogram {
        self.raft_apply.clone()
    }

    /// Records how long a watched change took to reach its stream.
    pub fn observe_watch_delivery(&self, elapsed: Duration) {
        self.watch_delivery.observe(elapsed.as_secs_f64());
    }

    /// Counts published shards.
    pub fn shards_published(&self, count: usize) {
        self.shards_published
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// Counts one refusal by its code.
    pub fn refused(&self, code: &str) {
        let reason = bounded(&self.refusal_codes, code);
        self.refusals.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Records the latency of one RPC.
    pub fn observe(&self, method: &str, elapsed: Duration) {
        let method = bounded(&self.rpc_methods, method);
        self.rpc
            .get_or_create(&vec![("method", method)])
            .observe(elapsed.as_secs_f64());
    }

    /// Fence grants so far.
    pub fn fence_grants(&self) -> u64 {
        self.fence_grants.get()
    }

    /// The exposition of every metric in `format`, with `gauges` read now.
    pub fn render(&self, gauges: &Gauges, format: Format) -> String {
        let g = &self.gauges;
        g.raft_term.set(gauge_value(gauges.raft_term));
        g.is_leader.set(i64::from(gauges.is_leader));
        g.last_log_index.set(gauge_value(gauges.last_log_index));
        g.applied_index.set(gauge_value(gauges.applied_index));
        g.authority_term.set(gauge_value(gauges.authority_term));
        g.last_fence_seq.set(gauge_value(gauges.last_fence_seq));
        g.reachable_voters.set(gauge_value(gauges.reachable_voters));
        g.voters.set(gauge_value(gauges.total_voters));
        for view in PARTITION_VIEWS {
            g.partition_view
                .get_or_create(&vec![("view", view.to_string())])
                .set(i64::from(view == gauges.partition_view));
        }
        g.certificate_expiry
            .set(gauges.certificate_not_after.map_or(0, unix_seconds));
        g.last_apply_age.set(gauges.last_apply_age.as_secs_f64());
        g.shards_held.set(gauge_value(gauges.shards_held));
        g.cache_confirm_age.set(gauges.last_apply_age.as_secs_f64());
        expose(&self.registry, format)
    }
}

/// The access layer counts its refusals here, with the other refusals.
impl crate::access::RefusalCounter for AuthorityMetrics {
    fn refused(&self, code: &str) {
        AuthorityMetrics::refused(self, code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the exposition carries the counters and histogram lines, and
    // label values are bounded. Method: record, render, look for lines.
    #[test]
    fn renders_and_bounds_labels() {
        let metrics = AuthorityMetrics::new("c1", "s1", NodeKind::Voter);
        metrics.fence_granted();
        metrics.refused("NO_QUORUM");
        metrics.observe("AcquireFence", Duration::from_millis(3));
        for i in 0..(LABEL_VALUES_MAX + 5) {
            metrics.refused(&format!("CODE_{i}"));
        }
        let text = metrics.render(
            &Gauges {
                partition_view: "minority",
                ..Default::default()
            },
            Format::Text,
        );
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} line in\n{text}"))
                .to_string()
        };
        let grants = line("rap_fence_grants_total{");
        assert!(grants.contains("cluster_id=\"c1\"") && grants.contains("node_id=\"s1\""));
        assert!(grants.ends_with(" 1"), "{grants}");
        assert!(text.contains("# TYPE rap_fence_grants_total counter"));
        assert!(text.contains("# TYPE rap_voters gauge"));
        assert!(!text.contains("rap_voters_total"));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        assert!(text.lines().any(|l| l.starts_with("rap_refusals_total{")
            && l.contains("reason=\"NO_QUORUM\"")
            && l.ends_with(" 1")));
        assert!(
            text.lines()
                .any(|l| l.starts_with("rap_rpc_duration_seconds_bucket{")
                    && l.contains("method=\"AcquireFence\"")
                    && l.contains("le=\"0.005\"")
                    && l.ends_with(" 1"))
        );
        assert!(text.lines().any(|l| l.starts_with("rap_partition_view{")
            && l.contains("view=\"minority\"")
            && l.ends_with(" 1")));
        assert!(text.contains("reason=\"other\""));
        assert_eq!(
            text.matches("rap_refusals_total{").count(),
            LABEL_VALUES_MAX + 1
        );
        assert!(!text.contains("rap_cache_shards"));
    }

    // Goal: a Prometheus server (which asks for OpenMetrics) gets the same
    // samples as the classic text, with the family names OpenMetrics
    // wants. Method: render both, compare the sample lines.
    #[test]
    fn both_formats_carry_the_same_samples() {
        let metrics = AuthorityMetrics::new("c1", "k1", NodeKind::Cache);
        metrics.refused("NOT_FOUND");
        let gauges = Gauges {
            partition_view: "healthy",
            shards_held: 4,
            ..Default::default()
        };
        let open = metrics.render(&gauges, Format::OpenMetrics);
        let text = metrics.render(&gauges, Format::Text);
        assert!(open.ends_with("# EOF\n"));
        assert!(open.contains("# TYPE rap_refusals counter"));
        assert!(text.contains("# TYPE rap_refusals_total counter"));
        let samples = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(samples(&open), samples(&text));
        assert!(text.contains("rap_cache_shards{"));
        assert!(!text.contains("rap_raft_term"));
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::from_accept(Some("*/*")), Format::Text);
        assert_eq!(Format::from_accept(None), Format::Text);
    }
}
