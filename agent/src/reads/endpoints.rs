//! The storage endpoints an agent reads from, and their scores.
//!
//! The list is the bootstrap list written at enrollment, then the one
//! the node's own verified `node/<id>` shard carries (the voters and the
//! node's cache replicas). Each endpoint is ranked by, in order: no recent
//! failure (a failure or a refused envelope counts for
//! [`FAILURE_MEMORY`]), same zone, same region, a cache replica before a
//! voter (the caches are placed for this node), and the measured round
//! trip (an exponential moving average). A refused envelope counts as
//! [`BAD_ENVELOPE_WEIGHT`] failures.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// How long a failure keeps an endpoint behind the healthy ones.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(5);
/// How many failures a refused (bad) envelope counts as.
pub const BAD_ENVELOPE_WEIGHT: u32 = 10;
/// Most endpoints an agent keeps.
pub const ENDPOINTS_MAX: usize = 64;
/// Weight of a new round-trip sample in the moving average.
const RTT_ALPHA: f64 = 0.3;

/// One storage node to read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its storage node id (its certificate must name it).
    pub node_id: String,
    /// `host:port` of its `ShardService`.
    pub address: String,
    /// Region label ('' when unknown).
    pub region: String,
    /// Zone label ('' when unknown).
    pub zone: String,
    /// `voter`, `cache` or `bootstrap`.
    pub role: String,
}

/// What the agent knows of one endpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scored {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Moving average of successful reads' round trips, milliseconds.
    pub rtt_ms: Option<f64>,
    /// Failures since the last success (a bad envelope counts
    /// [`BAD_ENVELOPE_WEIGHT`]).
    pub failures: u32,
    /// Envelopes it served that did not verify, ever.
    pub bad_envelopes: u32,
    /// The last failure's reason.
    pub last_error: String,
    #[serde(skip)]
    last_failure: Option<Instant>,
}

/// The endpoints of one agent, ranked on demand.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Endpoints {
    /// Every endpoint, in no particular order.
    pub list: Vec<Scored>,
    /// This node's region ('' when unknown).
    pub region: String,
    /// This node's zone ('' when unknown).
    pub zone: String,
}

impl Endpoints {
    /// Endpoints from `list` (at most [`ENDPOINTS_MAX`]), none scored yet.
    pub fn new(list: Vec<Endpoint>) -> Endpoints {
        let mut endpoints = Endpoints::default();
        endpoints.replace(list);
        endpoints
    }

    /// Replaces the list with `list`, keeping the scores of the endpoints
    /// that stay (by node id).
    pub fn replace(&mut self, list: Vec<Endpoint>) {
        let mut next = Vec::with_capacity(list.len().min(ENDPOINTS_MAX));
        for endpoint in list.into_iter().take(ENDPOINTS_MAX) {
            if next
                .iter()
                .any(|s: &Scored| s.endpoint.node_id == endpoint.node_id)
            {
                continue;
            }
            let kept = self
                .list
                .iter()
                .find(|s| s.endpoint.node_id == endpoint.node_id)
                .cloned();
            next.push(match kept {
                Some(mut scored) => {
                    scored.endpoint = endpoint;
                    scored
                }
                None => Scored {
                    endpoint,
                    rtt_ms: None,
                    failures: 0,
                    bad_envelopes: 0,
                    last_error: String::new(),
                    last_failure: None,
                },
            });
        }
        self.list = next;
    }

    /// Indices into `list`, best first.
    pub fn ranked(&self) -> Vec<usize> {
        let now = Instant::now();
        let mut order: Vec<usize> = (0..self.list.len()).collect();
        order.sort_by(|a, b| {
            let key = |s: &Scored| {
                let failing = s.failures > 0
                    && s.last_failure
                        .is_some_and(|at| now.duration_since(at) < FAILURE_MEMORY);
                (
                    failing,
                    if failing { s.failures } else { 0 },
                    // false sorts first: same zone, then same region.
                    self.zone.is_empty() || s.endpoint.zone != self.zone,
                    self.region.is_empty() || s.endpoint.region != self.region,
                    s.endpoint.role != "cache",
                )
            };
            let (sa, sb) = (&self.list[*a], &self.list[*b]);
            key(sa)
                .cmp(&key(sb))
                .then_with(|| {
                    let rtt = |s: &Scored| s.rtt_ms.unwrap_or(f64::MAX);
                    rtt(sa).total_cmp(&rtt(sb))
                })
                .then_with(|| sa.endpoint.node_id.cmp(&sb.endpoint.node_id))
        });
        order
    }

    /// A read from `at` succeeded in `rtt`.
    pub fn succeeded(&mut self, at: usize, rtt: Duration) {
        if let Some(s) = self.list.get_mut(at) {
            let sample = rtt.as_secs_f64() * 1000.0;
            s.rtt_ms = Some(match s.rtt_ms {
                Some(avg) => avg + RTT_ALPHA * (sample - avg),
                None => sample,
            });
            s.failures = 0;
        }
    }

    /// A read from `at` failed (unreachable, stalled, refused).
    pub fn failed(&mut self, at: usize, why: &str) {
        self.penalize(at, 1, why);
    }

    /// `at` served an envelope that did not verify.
    pub fn bad_envelope(&mut self, at: usize, why: &str) {
        if let Some(s) = self.list.get_mut(at) {
            s.bad_envelopes = s.bad_envelopes.saturating_add(1);
        }
        self.penalize(at, BAD_ENVELOPE_WEIGHT, why);
    }

    fn penalize(&mut self, at: usize, weight: u32, why: &str) {
        if let Some(s) = self.list.get_mut(at) {
            s.failures = s.failures.saturating_add(weight);
            s.last_failure = Some(Instant::now());
            s.last_error = why.chars().take(200).collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, zone: &str, role: &str) -> Endpoint {
        Endpoint {
            node_id: id.into(),
            address: format!("{id}:1"),
            region: "r1".into(),
            zone: zone.into(),
            role: role.into(),
        }
    }

    // Goal: the ranking prefers healthy, same-zone, cache, fast endpoints,
    // in that order; a failure moves an endpoint behind the healthy ones,
    // a bad envelope further than a plain failure; a success clears it;
    // replacing the list keeps known scores. Method: fixed lists.
    #[test]
    fn ranks_by_health_then_nearness_then_speed() {
        let mut eps = Endpoints::new(vec![
            e("s1", "z2", "voter"),
            e("k2", "z2", "cache"),
            e("k1", "z1", "cache"),
            e("s2", "z1", "voter"),
        ]);
        eps.zone = "z1".into();
        eps.region = "r1".into();
        let names = |eps: &Endpoints| -> Vec<String> {
            eps.ranked()
                .into_iter()
                .map(|i| eps.list[i].endpoint.node_id.clone())
                .collect()
        };
        assert_eq!(names(&eps), ["k1", "s2", "k2", "s1"]);
        let k1 = eps.ranked()[0];
        eps.failed(k1, "unreachable");
        assert_eq!(names(&eps), ["s2", "k2", "s1", "k1"]);
        let s2 = eps.ranked()[0];
        eps.bad_envelope(s2, "BAD_SIGNATURE");
        assert_eq!(names(&eps), ["k2", "s1", "k1", "s2"]);
        eps.succeeded(k1, Duration::from_millis(3));
        assert_eq!(names(&eps)[0], "k1");
        eps.replace(vec![e("s2", "z1", "voter"), e("k1", "z1", "cache")]);
        assert_eq!(names(&eps), ["k1", "s2"]);
        let s2 = eps
            .list
            .iter()
            .find(|s| s.endpoint.node_id == "s2")
            .unwrap();
        assert_eq!(s2.bad_envelopes, 1, "scores survive a new list");
    }
}
