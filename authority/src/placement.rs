//! Voter placement across failure domains, and the failure tolerance of a
//! chosen voter set ("survives loss of 1 zone").
//!
//! Voters are picked greedily to maximise distinct regions, then zones,
//! then hosts; ties break by node id, so the choice is deterministic.
//!
//! Cache replicas are assigned per reader ([`caches_for`]): each node
//! agent's scopes go to `replicas` caches over distinct zones (then hosts),
//! its own zone first and its own region next; ties break by a hash of
//! (reader, cache), so the readers of one zone spread over its caches and
//! the same inputs always give the same assignment.

use crate::error::{Error, Result};
use crate::limits::VOTERS_MAX;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A storage node that could be a voter, with its failure-domain labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Candidate {
    /// RAP node id.
    pub node_id: String,
    /// Region label.
    pub region: String,
    /// Zone label (zones are unique within a region).
    pub zone: String,
    /// Host label (hosts are unique within a zone).
    pub host: String,
}

impl Candidate {
    fn zone_key(&self) -> (String, String) {
        (self.region.clone(), self.zone.clone())
    }

    fn host_key(&self) -> (String, String, String) {
        (self.region.clone(), self.zone.clone(), self.host.clone())
    }
}

/// Picks `count` voters (3 or 5 in practice) from `candidates`, maximising
/// distinct regions, then zones, then hosts.
pub fn choose_voters(candidates: &[Candidate], count: usize) -> Result<Vec<Candidate>> {
    if count == 0 || count > VOTERS_MAX {
        return Err(Error::InvalidRequest(format!(
            "voter count must be 1..={VOTERS_MAX}, got {count}"
        )));
    }
    if candidates.len() < count {
        return Err(Error::InvalidRequest(format!(
            "{count} voters wanted, only {} candidates",
            candidates.len()
        )));
    }
    let mut pool: Vec<&Candidate> = candidates.iter().collect();
    pool.sort();
    let mut chosen: Vec<Candidate> = Vec::with_capacity(count);
    while chosen.len() < count {
        let regions: BTreeSet<&str> = chosen.iter().map(|c| c.region.as_str()).collect();
        let zones: BTreeSet<(String, String)> = chosen.iter().map(Candidate::zone_key).collect();
        let hosts: BTreeSet<(String, String, String)> =
            chosen.iter().map(Candidate::host_key).collect();
        // Highest score wins; `pool` is sorted, so the first best is the
        // smallest node id among equals.
        let score = |c: &Candidate| {
            (
                !regions.contains(c.region.as_str()),
                !zones.contains(&c.zone_key()),
                !hosts.contains(&c.host_key()),
            )
        };
        let Some((index, _)) = pool
            .iter()
            .enumerate()
            .max_by(|(ia, a), (ib, b)| score(a).cmp(&score(b)).then(ib.cmp(ia)))
        else {
            break;
        };
        chosen.push(pool.remove(index).clone());
    }
    Ok(chosen)
}

/// Most cache replicas a cluster's policy may ask for per reader.
pub const CACHE_REPLICAS_MAX: usize = 5;
/// Cache replicas per reader when the cluster's policy does not say.
pub const CACHE_REPLICAS_DEFAULT: usize = 2;

/// Where a node agent (a reader of shards) lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaderSite<'a> {
    /// Its node id.
    pub node_id: &'a str,
    /// Region label ('' when unknown).
    pub region: &'a str,
    /// Zone label ('' when unknown).
    pub zone: &'a str,
}

/// The caches (indices into `caches`) that hold the scopes of `reader`:
/// `replicas` of them, or every cache when there are fewer. Each pick
/// prefers, in order: a zone not chosen yet, the reader's own zone, the
/// reader's own region, a host not chosen yet, then the highest hash of
/// (reader, cache). Deterministic for the same inputs, whatever their
/// order.
pub fn caches_for(caches: &[Candidate], reader: &ReaderSite<'_>, replicas: usize) -> Vec<usize> {
    let want = replicas.min(CACHE_REPLICAS_MAX).min(caches.len());
    let mut chosen: Vec<usize> = Vec::with_capacity(want);
    let mut zones: BTreeSet<(String, String)> = BTreeSet::new();
    let mut hosts: BTreeSet<(String, String, String)> = BTreeSet::new();
    while chosen.len() < want {
        let score = |c: &Candidate| {
            let known_zone = !reader.zone.is_empty();
            (
                !zones.contains(&c.zone_key()),
                known_zone && c.zone == reader.zone && c.region == reader.region,
                !reader.region.is_empty() && c.region == reader.region,
                !hosts.contains(&c.host_key()),
                rendezvous(reader.node_id, &c.node_id),
                // Equal hashes (practically never): the smaller node id.
                std::cmp::Reverse(c.node_id.clone()),
            )
        };
        let Some(best) = (0..caches.len())
            .filter(|i| !chosen.contains(i))
            .max_by_key(|i| score(&caches[*i]))
        else {
            break;
        };
        zones.insert(caches[best].zone_key());
        hosts.insert(caches[best].host_key());
        chosen.push(best);
    }
    chosen
}

/// The rendezvous weight of `cache` for `reader`.
fn rendezvous(reader: &str, cache: &str) -> u64 {
    let hash = blake3::hash(format!("{reader}\0{cache}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// How many whole failure domains a voter set can lose and keep a quorum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tolerance {
    /// Voters in the set.
    pub voters: usize,
    /// Votes needed for a quorum.
    pub quorum: usize,
    /// Voters that may be lost (any of them).
    pub voter_losses: usize,
    /// Whole regions that may be lost (worst case: the largest ones).
    pub regions: usize,
    /// Whole zones that may be lost.
    pub zones: usize,
    /// Whole hosts that may be lost.
    pub hosts: usize,
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: usize, word: &str| {
            if n == 1 {
                format!("1 {word}")
            } else {
                format!("{n} {word}s")
            }
        };
        if self.regions > 0 {
            write!(f, "survives loss of {}", plural(self.regions, "region"))
        } else if self.zones > 0 {
            write!(f, "survives loss of {}", plural(self.zones, "zone"))
        } else if self.hosts > 0 {
            write!(f, "survives loss of {}", plural(self.hosts, "host"))
        } else {
            f.write_str("survives no failure (no quorum after losing any voter)")
        }
    }
}

/// The failure tolerance of `voters`.
pub fn failure_tolerance(voters: &[Candidate]) -> Tolerance {
    let n = voters.len();
    let quorum = n / 2 + 1;
    let voter_losses = n.saturating_sub(quorum);
    let domains_lost = |key: &dyn Fn(&Candidate) -> String| {
        let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
        for voter in voters {
            *sizes.entry(key(voter)).or_default() += 1;
        }
        let mut sizes: Vec<usize> = sizes.into_values().collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let mut lost = 0;
        let mut domains = 0;
        for size in sizes {
            if lost + size > voter_losses {
                break;
            }
            lost += size;
            domains += 1;
        }
        domains
    };
    Tolerance {
        voters: n,
        quorum,
        voter_losses,
        regions: domains_lost(&|c| c.region.clone()),
        zones: domains_lost(&|c| format!("{}/{}", c.region, c.zone)),
        hosts: domains_lost(&|c| format!("{}/{}/{}", c.region, c.zone, c.host)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, region: &str, zone: &str, host: &str) -> Candidate {
        Candidate {
            node_id: id.into(),
            region: region.into(),
            zone: zone.into(),
            host: host.into(),
        }
    }

    // Goal: placement spreads voters over regions first, then zones, then
    // hosts. Method: a pool where the naive first-three would share a zone.
    #[test]
    fn spreads_across_failure_domains() {
        let pool = vec![
            c("a1", "eu", "eu-1", "h1"),
            c("a2", "eu", "eu-1", "h2"),
            c("a3", "eu", "eu-1", "h3"),
            c("b1", "eu", "eu-2", "h4"),
            c("c1", "us", "us-1", "h5"),
        ];
        let chosen = choose_voters(&pool, 3).unwrap();
        let ids: Vec<&str> = chosen.iter().map(|c| c.node_id.as_str()).collect();
        assert_eq!(ids, ["a1", "c1", "b1"]);
        let tolerance = failure_tolerance(&chosen);
        assert_eq!(tolerance.zones, 1);
        assert_eq!(tolerance.to_string(), "survives loss of 1 zone");
        assert!(choose_voters(&pool, 6).is_err());
    }

    // Goal: a reader's caches span distinct zones, its own zone first;
    // losing any one zone leaves each reader at least one cache; the
    // assignment does not depend on input order; readers of one zone
    // spread over that zone's caches. Method: three zones with two caches
    // each, 60 readers, replicas = 2.
    #[test]
    fn caches_span_zones_and_prefer_the_readers_zone() {
        let caches = vec![
            c("k1", "r", "z1", "h1"),
            c("k2", "r", "z1", "h2"),
            c("k3", "r", "z2", "h3"),
            c("k4", "r", "z2", "h4"),
            c("k5", "r", "z3", "h5"),
            c("k6", "r", "z3", "h6"),
        ];
        let mut reversed = caches.clone();
        reversed.reverse();
        let mut load = BTreeMap::new();
        for i in 0..60 {
            let zone = format!("z{}", i % 3 + 1);
            let id = format!("n{i}");
            let reader = ReaderSite {
                node_id: &id,
                region: "r",
                zone: &zone,
            };
            let picked = caches_for(&caches, &reader, 2);
            assert_eq!(picked.len(), 2);
            let names: Vec<&str> = picked.iter().map(|i| caches[*i].node_id.as_str()).collect();
            assert_eq!(caches[picked[0]].zone, zone, "{id}: own zone first");
            assert_ne!(caches[picked[0]].zone, caches[picked[1]].zone, "{id}");
            let again: Vec<&str> = caches_for(&reversed, &reader, 2)
                .iter()
                .map(|i| reversed[*i].node_id.as_str())
                .collect();
            assert_eq!(names, again, "{id}: order of the input does not matter");
            for name in names {
                *load.entry(name.to_string()).or_insert(0) += 1;
            }
        }
        assert_eq!(load.len(), 6, "every cache serves someone: {load:?}");
        assert!(load.values().all(|n| *n >= 8), "{load:?}");
        // Fewer caches than replicas: all of them; none: nothing.
        let reader = ReaderSite {
            node_id: "n1",
            region: "",
            zone: "",
        };
        assert_eq!(caches_for(&caches[..1], &reader, 3), vec![0]);
        assert!(caches_for(&[], &reader, 2).is_empty());
        assert_eq!(caches_for(&caches, &reader, 99).len(), CACHE_REPLICAS_MAX);
    }

    // Goal: the tolerance is computed from the worst case. Method: three
    // voters over three regions survive a region; three voters on one host
    // survive one voter but no host.
    #[test]
    fn tolerance_worst_case() {
        let spread = [
            c("a", "r1", "z1", "h1"),
            c("b", "r2", "z2", "h2"),
            c("d", "r3", "z3", "h3"),
        ];
        assert_eq!(
            failure_tolerance(&spread).to_string(),
            "survives loss of 1 region"
        );
        let stacked = [
            c("a", "r1", "z1", "h1"),
            c("b", "r1", "z1", "h1"),
            c("d", "r1", "z1", "h1"),
        ];
        let t = failure_tolerance(&stacked);
        assert_eq!(t.voter_losses, 1);
        assert_eq!(t.hosts, 0);
        assert!(t.to_string().starts_with("survives no failure"));
        // Five voters: losing the 3-voter zone would break the quorum, so
        // no zone is survivable, but any two hosts are.
        let lopsided = [
            c("a", "r", "z1", "h1"),
            c("b", "r", "z1", "h2"),
            c("d", "r", "z1", "h3"),
            c("e", "r", "z2", "h4"),
            c("f", "r", "z2", "h5"),
        ];
        let t = failure_tolerance(&lopsided);
        assert_eq!((t.zones, t.hosts), (0, 2), "{t:?}");
        assert_eq!(t.to_string(), "survives loss of 2 hosts");
        let balanced = [
            c("a", "r", "z1", "h1"),
            c("b", "r", "z1", "h2"),
            c("d", "r", "z2", "h3"),
            c("e", "r", "z2", "h4"),
            c("f", "r", "z3", "h5"),
        ];
        assert_eq!(failure_tolerance(&balanced).zones, 1);
    }
}
