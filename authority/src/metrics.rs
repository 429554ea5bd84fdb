//! Prometheus metrics of one storage node's authority group, rendered in
//! the text exposition format without a metrics library.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the RPC latency histogram buckets.
pub const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Most distinct refusal codes / RPC methods tracked; more are folded into
/// `other` so a hostile client cannot grow the map.
pub const LABEL_VALUES_MAX: usize = 64;

#[derive(Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS_SECONDS.len()],
    count: u64,
    sum_seconds: f64,
}

/// Counters and histograms, shared by the services of one node.
#[derive(Default)]
pub struct AuthorityMetrics {
    fence_grants: AtomicU64,
    shards_published: AtomicU64,
    refusals: Mutex<BTreeMap<String, u64>>,
    latencies: Mutex<BTreeMap<String, Histogram>>,
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
}

fn bounded_key<V: Default>(map: &mut BTreeMap<String, V>, key: &str) -> String {
    if map.contains_key(key) || map.len() < LABEL_VALUES_MAX {
        key.to_string()
    } else {
        "other".to_string()
    }
}

impl AuthorityMetrics {
    /// Counts one granted fence.
    pub fn fence_granted(&self) {
        self.fence_grants.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts published shards.
    pub fn shards_published(&self, count: usize) {
        self.shards_published
            .fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Counts one refusal by its code.
    pub fn refused(&self, code: &str) {
        let mut map = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let key = bounded_key(&mut map, code);
        *map.entry(key).or_default() += 1;
    }

    /// Records the latency of one RPC.
    pub fn observe(&self, method: &str, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let mut map = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        let key = bounded_key(&mut map, method);
        let histogram = map.entry(key).or_default();
        for (bucket, bound) in histogram.buckets.iter_mut().zip(LATENCY_BUCKETS_SECONDS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum_seconds += seconds;
    }

    /// Fence grants so far.
    pub fn fence_grants(&self) -> u64 {
        self.fence_grants.load(Ordering::Relaxed)
    }

    /// The text exposition of every metric, with `gauges` read now.
    pub fn render(&self, cluster_id: &str, node_id: &str, gauges: &Gauges) -> String {
        let labels = format!("cluster_id=\"{cluster_id}\",node_id=\"{node_id}\"");
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {value}"
            );
        };
        gauge("rap_raft_term", "Raft term.", gauges.raft_term);
        gauge(
            "rap_raft_is_leader",
            "1 if this node is the Raft leader.",
            u64::from(gauges.is_leader),
        );
        gauge(
            "rap_raft_last_log_index",
            "Last Raft log index.",
            gauges.last_log_index,
        );
        gauge(
            "rap_raft_applied_index",
            "Last applied Raft log index.",
            gauges.applied_index,
        );
        gauge(
            "rap_authority_term",
            "Authority term of the cluster.",
            gauges.authority_term,
        );
        gauge(
            "rap_fence_last_seq",
            "Last fence sequence granted in the term.",
            gauges.last_fence_seq,
        );
        gauge(
            "rap_voters_reachable",
            "Voters reachable, this node included.",
            gauges.reachable_voters,
        );
        gauge(
            "rap_voters_total",
            "Voters in the group.",
            gauges.total_voters,
        );
        let _ = writeln!(
            out,
            "# HELP rap_partition_view Partition view (1 for the current one).\n# TYPE rap_partition_view gauge"
        );
        for view in ["healthy", "degraded", "minority", "fenced"] {
            let _ = writeln!(
                out,
                "rap_partition_view{{{labels},view=\"{view}\"}} {}",
                u64::from(view == gauges.partition_view)
            );
        }
        let _ = writeln!(
            out,
            "# HELP rap_fence_grants_total Fences granted by this node as leader.\n# TYPE rap_fence_grants_total counter\nrap_fence_grants_total{{{labels}}} {}",
            self.fence_grants()
        );
        let _ = writeln!(
            out,
            "# HELP rap_shards_published_total Shards published through this node.\n# TYPE rap_shards_published_total counter\nrap_shards_published_total{{{labels}}} {}",
            self.shards_published.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP rap_refusals_total Requests refused, by reason.\n# TYPE rap_refusals_total counter"
        );
        for (code, count) in self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "rap_refusals_total{{{labels},reason=\"{code}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP rap_rpc_duration_seconds RPC latency by method.\n# TYPE rap_rpc_duration_seconds histogram"
        );
        for (method, h) in self
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for (bound, count) in LATENCY_BUCKETS_SECONDS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "rap_rpc_duration_seconds_bucket{{{labels},method=\"{method}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "rap_rpc_duration_seconds_bucket{{{labels},method=\"{method}\",le=\"+Inf\"}} {}\nrap_rpc_duration_seconds_sum{{{labels},method=\"{method}\"}} {}\nrap_rpc_duration_seconds_count{{{labels},method=\"{method}\"}} {}",
                h.count, h.sum_seconds, h.count
            );
        }
        out
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
        let metrics = AuthorityMetrics::default();
        metrics.fence_granted();
        metrics.refused("NO_QUORUM");
        metrics.observe("AcquireFence", Duration::from_millis(3));
        for i in 0..(LABEL_VALUES_MAX + 5) {
            metrics.refused(&format!("CODE_{i}"));
        }
        let text = metrics.render(
            "c1",
            "s1",
            &Gauges {
                partition_view: "minority",
                ..Default::default()
            },
        );
        assert!(text.contains("rap_fence_grants_total{cluster_id=\"c1\",node_id=\"s1\"} 1"));
        assert!(text.contains("reason=\"NO_QUORUM\"} 1"));
        assert!(text.contains("method=\"AcquireFence\",le=\"0.005\"} 1"));
        assert!(text.contains("view=\"minority\"} 1"));
        assert!(text.contains("reason=\"other\"}"));
        assert_eq!(
            text.matches("rap_refusals_total{").count(),
            LABEL_VALUES_MAX + 1
        );
    }
}
