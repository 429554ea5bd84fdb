//! The storage endpoints an agent reads from, and their scores.
//!
//! The list is the bootstrap list written at enrollment, then the one
//! the node's own verified `node/<id>` shard carries (the voters and the
//! node's cache replicas). Each endpoint is ranked by, in order: no recent
//! failure (a failure counts for [`FAILURE_MEMORY`], doubled for each
//! further failure in a row up to [`FAILURE_MEMORY_MAX`], so a node cut
//! off by a silent partition, which costs a whole [`super::READ_TIMEOUT`]
//! to find out, is not asked first again every few seconds), not
//! overloaded (the load it reported last is
//! below [`OVERLOADED`]), same zone, same region, a cache replica before a
//! voter (the caches are placed for this node), and the measured round
//! trip (an exponential moving average) weighted by the reported load. A
//! refused envelope counts as [`BAD_ENVELOPE_WEIGHT`] failures. The
//! endpoint in use keeps its place against one that ranks alike on
//! everything but the round trip until the other is [`SWITCH_MARGIN`]
//! times cheaper, so two equally near nodes do not trade the watch back
//! and forth on noise.
//!
//! The ranking splits the list into tiers ([`Tier`]): the **active**
//! endpoint (reads and the watch go there), up to [`WARM_MAX`] **warm**
//! ones (healthy, next in rank: probed every [`WARM_PROBE_INTERVAL`], so
//! their round trip and load stay current and a failover lands on a
//! measured node), and the **cold** rest (probed one at a time every
//! [`COLD_PROBE_INTERVAL`], so a node that failed earns its way back).

use serde::{Deserialize, Serialize};
use std::time::Duration;
// tokio's clock: the real one in production, the simulated one under the
// simulator (round trips and failure memory in simulated time).
use tokio::time::Instant;

/// How long one failure keeps an endpoint behind the healthy ones; each
/// further failure in a row doubles it ([`failure_memory`]).
pub const FAILURE_MEMORY: Duration = Duration::from_secs(5);
/// The longest failures in a row keep an endpoint behind the healthy
/// ones: the cold probe's interval, so a probe can earn it its place back.
pub const FAILURE_MEMORY_MAX: Duration = COLD_PROBE_INTERVAL;
/// How many failures a refused (bad) envelope counts as.
pub const BAD_ENVELOPE_WEIGHT: u32 = 10;
/// Most endpoints an agent keeps.
pub const ENDPOINTS_MAX: usize = 64;
/// Weight of a new round-trip sample in the moving average.
const RTT_ALPHA: f64 = 0.3;
/// Healthy endpoints kept warm behind the active one.
pub const WARM_MAX: usize = 2;
/// How often each warm endpoint is probed.
pub const WARM_PROBE_INTERVAL: Duration = Duration::from_secs(15);
/// How often one cold endpoint (the least recently seen) is probed.
pub const COLD_PROBE_INTERVAL: Duration = Duration::from_secs(60);
/// Reported load (0 to 1) from which an endpoint ranks behind every
/// endpoint that is not overloaded, near or far.
pub const OVERLOADED: f64 = 0.9;
/// How many times cheaper (round trip weighted by load) an endpoint must
/// be than the one in use, ranking alike otherwise, to take its place.
pub const SWITCH_MARGIN: f64 = 1.5;
/// `GetShard` calls in progress at which a storage node counts as fully
/// loaded (its watches count against the most it serves).
pub const READS_IN_FLIGHT_FULL: u32 = 256;

/// Where an endpoint stands in the ranking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Reads and the watch go here.
    Active,
    /// Healthy and next in rank: probed often, taken over on failure.
    Warm,
    /// The rest: probed now and then.
    Cold,
}

impl Tier {
    /// `active`, `warm` or `cold`.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Active => "active",
            Tier::Warm => "warm",
            Tier::Cold => "cold",
        }
    }
}

/// The load a storage node reported, as a fraction of what it serves at
/// most (0: idle, 1: full).
pub fn load_fraction(load: &rap_proto::pb::ServerLoad) -> f64 {
    let watches = if load.watches_max == 0 {
        0.0
    } else {
        f64::from(load.watches) / f64::from(load.watches_max)
    };
    let reads = f64::from(load.reads_in_flight) / f64::from(READS_IN_FLIGHT_FULL);
    watches.max(reads).clamp(0.0, 1.0)
}

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
    /// The load it reported last (0: idle, 1: full; `None`: not known).
    #[serde(default)]
    pub load: Option<f64>,
    #[serde(skip)]
    last_failure: Option<Instant>,
    /// When it last answered or was probed.
    #[serde(skip)]
    last_seen: Option<Instant>,
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
    /// The node id of the endpoint in use (the last that served a read or
    /// opened the watch).
    #[serde(skip)]
    in_use: Option<String>,
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
                    load: None,
                    last_failure: None,
                    last_seen: None,
                },
            });
        }
        self.list = next;
    }

    /// Indices into `list`, best first.
    pub fn ranked(&self) -> Vec<usize> {
        let now = Instant::now();
        // Everything but the round trip; false sorts first.
        let class = |s: &Scored| {
            let failing = s.failing(now);
            (
                failing,
                if failing { s.failures } else { 0 },
                s.load.is_some_and(|load| load >= OVERLOADED),
                // Same zone, then same region.
                self.zone.is_empty() || s.endpoint.zone != self.zone,
                self.region.is_empty() || s.endpoint.region != self.region,
                s.endpoint.role != "cache",
            )
        };
        // The round trip, longer the busier the node says it is.
        let cost = |s: &Scored| {
            s.rtt_ms
                .map_or(f64::MAX, |rtt| rtt * (1.0 + s.load.unwrap_or(0.0)))
        };
        let mut order: Vec<usize> = (0..self.list.len()).collect();
        order.sort_by(|a, b| {
            let (sa, sb) = (&self.list[*a], &self.list[*b]);
            class(sa)
                .cmp(&class(sb))
                .then_with(|| cost(sa).total_cmp(&cost(sb)))
                .then_with(|| sa.endpoint.node_id.cmp(&sb.endpoint.node_id))
        });
        let in_use = self.in_use.as_ref().and_then(|id| {
            order
                .iter()
                .position(|at| self.list[*at].endpoint.node_id == *id)
        });
        if let (Some(rank), Some(best)) = (in_use, order.first().copied())
            && rank > 0
        {
            let (current, best) = (&self.list[order[rank]], &self.list[best]);
            if class(current) == class(best) && cost(current) <= cost(best) * SWITCH_MARGIN {
                let current = order.remove(rank);
                order.insert(0, current);
            }
        }
        order
    }

    /// `at` is the endpoint in use: it served a read or opened the watch.
    pub fn use_endpoint(&mut self, at: usize) {
        if let Some(s) = self.list.get(at) {
            self.in_use = Some(s.endpoint.node_id.clone());
        }
    }

    /// A read from `at` succeeded in `rtt`; the node reported `load`.
    pub fn succeeded(&mut self, at: usize, rtt: Duration, load: Option<f64>) {
        if let Some(s) = self.list.get_mut(at) {
            let sample = rtt.as_secs_f64() * 1000.0;
            s.rtt_ms = Some(match s.rtt_ms {
                Some(avg) => avg + RTT_ALPHA * (sample - avg),
                None => sample,
            });
            s.failures = 0;
            s.last_seen = Some(Instant::now());
            if load.is_some() {
                s.load = load;
            }
        }
    }

    /// `at` delivered a watched update and reported `load`.
    pub fn reported(&mut self, at: usize, load: Option<f64>) {
        if let Some(s) = self.list.get_mut(at) {
            s.last_seen = Some(Instant::now());
            if load.is_some() {
                s.load = load;
            }
        }
    }

    /// The tier of each endpoint, by index into `list`.
    pub fn tiers(&self) -> Vec<(usize, Tier)> {
        let now = Instant::now();
        let mut warm = 0;
        self.ranked()
            .into_iter()
            .enumerate()
            .map(|(rank, at)| {
                let failing = self.list[at].failing(now);
                let tier = if rank == 0 {
                    Tier::Active
                } else if warm < WARM_MAX && !failing {
                    warm += 1;
                    Tier::Warm
                } else {
                    Tier::Cold
                };
                (at, tier)
            })
            .collect()
    }

    /// The endpoints due for a probe: every warm one not seen for
    /// [`WARM_PROBE_INTERVAL`], and the cold one seen least recently if
    /// none was probed for [`COLD_PROBE_INTERVAL`] (`last_cold_probe`).
    pub fn due_for_probe(&self, last_cold_probe: Option<Instant>) -> Vec<(usize, Tier)> {
        let stale = |s: &Scored, after: Duration| s.last_seen.is_none_or(|t| t.elapsed() >= after);
        let tiers = self.tiers();
        let mut due: Vec<(usize, Tier)> = tiers
            .iter()
            .filter(|(at, tier)| *tier == Tier::Warm && stale(&self.list[*at], WARM_PROBE_INTERVAL))
            .copied()
            .collect();
        if last_cold_probe.is_none_or(|t| t.elapsed() >= COLD_PROBE_INTERVAL)
            && let Some(cold) = tiers
                .iter()
                .filter(|(at, tier)| {
                    *tier == Tier::Cold && stale(&self.list[*at], COLD_PROBE_INTERVAL)
                })
                .min_by_key(|(at, _)| self.list[*at].last_seen)
        {
            due.push(*cold);
        }
        due
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

/// How long `failures` in a row keep an endpoint behind the healthy
/// ones: [`FAILURE_MEMORY`], doubled for each failure after the first, at
/// most [`FAILURE_MEMORY_MAX`].
pub fn failure_memory(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FAILURE_MEMORY
        .saturating_mul(1 << doublings)
        .min(FAILURE_MEMORY_MAX)
}

impl Scored {
    /// Whether a failure still keeps this endpoint behind the healthy
    /// ones at `now`.
    fn failing(&self, now: Instant) -> bool {
        self.failures > 0
            && self
                .last_failure
                .is_some_and(|at| now.duration_since(at) < failure_memory(self.failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node ids of `eps`, best first.
    fn names(eps: &Endpoints) -> Vec<String> {
        eps.ranked()
            .into_iter()
            .map(|i| eps.list[i].endpoint.node_id.clone())
            .collect()
    }

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
        assert_eq!(names(&eps), ["k1", "s2", "k2", "s1"]);
        let k1 = eps.ranked()[0];
        eps.failed(k1, "unreachable");
        assert_eq!(names(&eps), ["s2", "k2", "s1", "k1"]);
        let s2 = eps.ranked()[0];
        eps.bad_envelope(s2, "BAD_SIGNATURE");
        assert_eq!(names(&eps), ["k2", "s1", "k1", "s2"]);
        eps.succeeded(k1, Duration::from_millis(3), None);
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

    // Goal: failures in a row keep an endpoint back longer: 5 s after
    // one, doubled for each further one, at most the cold probe's
    // interval; a success starts over. Method: the memory for 1 to 40
    // failures, and the ranking of an endpoint whose last failure was 7 s
    // and 11 s ago after one and after two failures.
    #[test]
    fn failures_in_a_row_are_remembered_longer() {
        let secs = Duration::from_secs;
        let memory: Vec<_> = [1, 2, 3, 4, 5, 40].map(failure_memory).to_vec();
        assert_eq!(
            memory,
            [secs(5), secs(10), secs(20), secs(40), secs(60), secs(60)]
        );
        assert_eq!(failure_memory(BAD_ENVELOPE_WEIGHT), FAILURE_MEMORY_MAX);
        let mut eps = Endpoints::new(vec![e("a", "z1", "voter"), e("b", "z1", "voter")]);
        let a = eps.ranked()[0];
        let ago = |d: Duration| Instant::now().checked_sub(d);
        eps.failed(a, "stalled");
        eps.list[a].last_failure = ago(secs(7));
        assert_eq!(names(&eps), ["a", "b"], "one failure 7 s ago is forgotten");
        eps.failed(a, "stalled");
        eps.list[a].last_failure = ago(secs(7));
        assert_eq!(names(&eps), ["b", "a"], "two in a row are not, after 7 s");
        eps.list[a].last_failure = ago(secs(11));
        assert_eq!(names(&eps), ["a", "b"], "nor after 11 s");
        eps.failed(a, "stalled");
        eps.succeeded(a, Duration::from_millis(1), None);
        eps.failed(a, "stalled");
        eps.list[a].last_failure = ago(secs(7));
        assert_eq!(names(&eps), ["a", "b"], "a success starts the count over");
    }

    // Goal: reported load counts: between equal neighbours the busier one
    // ranks behind, an overloaded one behind even a farther one; the
    // tiers are one active, at most WARM_MAX healthy warm ones, the rest
    // cold (a failing endpoint is never warm); every endpoint is due for a
    // probe at first (the warm ones, and one cold one), none right after
    // being seen. Method: fixed lists and loads.
    #[test]
    fn load_tiers_and_probes() {
        use rap_proto::pb::ServerLoad;
        let mut eps = Endpoints::new(vec![
            e("k1", "z1", "cache"),
            e("k2", "z1", "cache"),
            e("s1", "z2", "voter"),
            e("s2", "z2", "voter"),
            e("s3", "z3", "voter"),
        ]);
        eps.zone = "z1".into();
        eps.region = "r1".into();
        let busy = load_fraction(&ServerLoad {
            watches: 500,
            watches_max: 1000,
            reads_in_flight: 0,
        });
        assert!((busy - 0.5).abs() < 1e-9);
        let full = load_fraction(&ServerLoad {
            watches: 0,
            watches_max: 1000,
            reads_in_flight: READS_IN_FLIGHT_FULL * 2,
        });
        assert!((full - 1.0).abs() < 1e-9);
        for (at, load) in [(0, Some(busy)), (1, Some(0.0)), (2, Some(0.0))] {
            eps.succeeded(at, Duration::from_millis(2), load);
        }
        assert_eq!(names(&eps)[..3], ["k2", "k1", "s1"], "busier behind");
        eps.succeeded(1, Duration::from_millis(2), Some(full));
        assert_eq!(names(&eps)[..3], ["k1", "s1", "s2"], "overloaded k2 moves");
        assert_eq!(names(&eps)[4], "k2");

        let s2 = eps
            .list
            .iter()
            .position(|s| s.endpoint.node_id == "s2")
            .unwrap();
        eps.failed(s2, "unreachable");
        let tiers: Vec<(String, Tier)> = eps
            .tiers()
            .into_iter()
            .map(|(at, tier)| (eps.list[at].endpoint.node_id.clone(), tier))
            .collect();
        assert_eq!(
            tiers,
            [
                ("k1".to_string(), Tier::Active),
                ("s1".to_string(), Tier::Warm),
                ("s3".to_string(), Tier::Warm),
                ("k2".to_string(), Tier::Cold),
                ("s2".to_string(), Tier::Cold),
            ]
        );
        // s1 was just seen; s3 never: due. Cold: s2 (never seen) before k2.
        let due: Vec<String> = eps
            .due_for_probe(None)
            .into_iter()
            .map(|(at, _)| eps.list[at].endpoint.node_id.clone())
            .collect();
        assert_eq!(due, ["s3", "s2"]);
        let due_soon = eps.due_for_probe(Some(Instant::now()));
        assert_eq!(
            due_soon.len(),
            1,
            "no cold probe within COLD_PROBE_INTERVAL"
        );
    }

    // Goal: the endpoint in use keeps its place against an equally ranked
    // one that is a little faster (no flapping on noise), gives it up to
    // one SWITCH_MARGIN times faster, and never holds on past a failure
    // or against a nearer class. Method: two same-zone voters and one
    // same-zone cache, fixed round trips.
    #[test]
    fn the_endpoint_in_use_holds_until_another_is_clearly_better() {
        let mut eps = Endpoints::new(vec![e("s1", "z1", "voter"), e("s2", "z1", "voter")]);
        eps.zone = "z1".into();
        eps.region = "r1".into();
        let at = |eps: &Endpoints, id: &str| {
            eps.list
                .iter()
                .position(|s| s.endpoint.node_id == id)
                .unwrap()
        };
        let (s1, s2) = (at(&eps, "s1"), at(&eps, "s2"));
        eps.succeeded(s1, Duration::from_millis(10), Some(0.0));
        eps.succeeded(s2, Duration::from_millis(8), Some(0.0));
        assert_eq!(names(&eps)[0], "s2", "nothing in use: the fastest");
        eps.use_endpoint(s1);
        assert_eq!(names(&eps)[0], "s1", "8 ms does not displace 10 ms");
        // s2 down to 5 ms on average: 10 > 5 x 1.5, s2 takes over.
        for _ in 0..10 {
            eps.succeeded(s2, Duration::from_millis(5), Some(0.0));
        }
        assert_eq!(names(&eps)[0], "s2");
        eps.use_endpoint(s2);
        assert_eq!(names(&eps)[0], "s2");
        // A failure of the one in use moves it behind at once.
        eps.failed(s2, "unreachable");
        assert_eq!(names(&eps)[0], "s1");
        // A cache in this zone ranks before the voter in use, however slow.
        eps.succeeded(s2, Duration::from_millis(5), Some(0.0));
        eps.replace(vec![
            e("s1", "z1", "voter"),
            e("s2", "z1", "voter"),
            e("k1", "z1", "cache"),
        ]);
        let k1 = at(&eps, "k1");
        eps.succeeded(k1, Duration::from_millis(50), Some(0.0));
        assert_eq!(names(&eps)[0], "k1");
    }
}
