//! Seeds: the one number a simulation run is a function of, the small
//! generator every random choice of the harness draws from, and the sweep
//! that runs a scenario over many seeds and prints how to replay a failure.
//!
//! * `RAP_SIM_SEED=N` runs only seed `N` (replay).
//! * `RAP_SIM_SEEDS=K` adds `K` seeds drawn from the clock to a sweep
//!   (exploration; each is printed like any other).
//! * Otherwise a sweep runs the scenario's fixed default seeds, so CI is
//!   repeatable.

use std::fmt;
use std::time::{Duration, Instant};

/// Environment variable naming the single seed to replay.
pub const SEED_ENV: &str = "RAP_SIM_SEED";

/// Environment variable asking a sweep for that many extra, clock-drawn
/// seeds.
pub const EXTRA_SEEDS_ENV: &str = "RAP_SIM_SEEDS";

/// Most extra seeds one sweep accepts from [`EXTRA_SEEDS_ENV`].
pub const EXTRA_SEEDS_MAX: u64 = 10_000;

/// SplitMix64: tiny, fast, good enough to pick partitions and delays, and
/// the same on every platform. Not for cryptography.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SimRng { state: seed }
    }

    /// An independent generator for one purpose (`label`), so adding a
    /// draw for one purpose does not shift the draws of another.
    pub fn fork(&self, label: &str) -> SimRng {
        let mut hash = self.state ^ 0xcbf2_9ce4_8422_2325;
        for byte in label.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut forked = SimRng::new(hash);
        forked.next_u64();
        forked
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`0` when `bound` is `0`).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.next_u64() % bound
    }

    /// An index into a slice of `len` elements (`0` when empty).
    pub fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }

    /// A duration in `[low, high)` at millisecond resolution (`low` when
    /// the range is empty).
    pub fn millis(&mut self, low: Duration, high: Duration) -> Duration {
        let low_ms = low.as_millis() as u64;
        let high_ms = high.as_millis() as u64;
        Duration::from_millis(low_ms + self.below(high_ms.saturating_sub(low_ms)))
    }

    /// `true` with probability `p` (clamped to `[0, 1]`).
    pub fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p.clamp(0.0, 1.0)
    }

    /// `count` distinct indices of `0..len`, in increasing order.
    pub fn subset(&mut self, len: usize, count: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..len).collect();
        for i in (1..all.len()).rev() {
            let j = self.index(i + 1);
            all.swap(i, j);
        }
        let mut chosen: Vec<usize> = all.into_iter().take(count.min(len)).collect();
        chosen.sort_unstable();
        chosen
    }
}

/// The seeds a sweep runs: only `RAP_SIM_SEED` when set, else `defaults`
/// plus `RAP_SIM_SEEDS` clock-drawn ones.
pub fn seeds(defaults: &[u64]) -> Vec<u64> {
    if let Some(seed) = env_u64(SEED_ENV) {
        return vec![seed];
    }
    let mut seeds = defaults.to_vec();
    let extra = env_u64(EXTRA_SEEDS_ENV).unwrap_or(0).min(EXTRA_SEEDS_MAX);
    if extra > 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut rng = SimRng::new(nanos ^ u64::from(std::process::id()));
        seeds.extend((0..extra).map(|_| rng.next_u64() % 1_000_000_000));
    }
    seeds
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(number) => Some(number),
        Err(_) => panic!("{name}={value:?} is not a number"),
    }
}

/// The command that replays `seed` of the test `test` (its path inside
/// the `it` binary, e.g. `partition::symmetric`).
pub fn replay_command(test: &str, seed: u64) -> String {
    format!("{SEED_ENV}={seed} cargo test -p rap-sim --test it {test} -- --exact --nocapture")
}

/// One failed seed of a sweep.
#[derive(Debug)]
pub struct SeedFailure {
    /// The seed.
    pub seed: u64,
    /// What went wrong (violations, or why the run could not finish).
    pub report: String,
}

impl fmt::Display for SeedFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seed={} failed:\n{}", self.seed, self.report)
    }
}

/// Runs `run` once per seed of [`seeds`]`(defaults)`, printing `seed=N`
/// and the wall time of each; panics at the end if any seed failed, with
/// each failure and the command that replays it.
pub fn sweep<F>(test: &str, defaults: &[u64], mut run: F)
where
    F: FnMut(u64) -> Result<String, String>,
{
    let mut failures = Vec::new();
    for seed in seeds(defaults) {
        let started = Instant::now();
        let outcome = run(seed);
        let wall = started.elapsed();
        match outcome {
            Ok(summary) => println!("{test}: seed={seed} ok in {wall:.1?} wall; {summary}"),
            Err(report) => {
                println!(
                    "{test}: seed={seed} FAILED in {wall:.1?} wall; replay: {}",
                    replay_command(test, seed)
                );
                failures.push(SeedFailure { seed, report });
            }
        }
    }
    if !failures.is_empty() {
        let mut message = format!("{} seed(s) of {test} failed\n", failures.len());
        for failure in &failures {
            message.push_str(&format!(
                "\n{failure}\nreplay: {}\n",
                replay_command(test, failure.seed)
            ));
        }
        panic!("{message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the generator is a pure function of its seed, forks are
    // independent of each other, and ranges are respected. Method: draw.
    #[test]
    fn generator_is_deterministic_and_in_range() {
        let mut a = SimRng::new(7);
        let mut b = SimRng::new(7);
        assert_eq!(a.next_u64(), b.next_u64());
        assert_ne!(a.fork("x").next_u64(), a.fork("y").next_u64());
        let low = Duration::from_millis(10);
        let high = Duration::from_millis(20);
        for _ in 0..1_000 {
            let d = a.millis(low, high);
            assert!(d >= low && d < high);
            assert!(a.below(3) < 3);
        }
        let subset = a.subset(5, 2);
        assert_eq!(subset.len(), 2);
        assert!(subset[0] < subset[1] && subset[1] < 5);
    }
}
