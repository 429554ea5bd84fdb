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
use std::time::Instant;

/// Environment variable naming the single seed to replay.
pub const SEED_ENV: &str = "RAP_SIM_SEED";

/// Environment variable asking a sweep for that many extra, clock-drawn
/// seeds.
pub const EXTRA_SEEDS_ENV: &str = "RAP_SIM_SEEDS";

/// Most extra seeds one sweep accepts from [`EXTRA_SEEDS_ENV`].
pub const EXTRA_SEEDS_MAX: u64 = 10_000;

/// The harness's seeded generator ([`rap_core::rng::SeededRng`], shared
/// with the fault-injection harness on real processes).
pub use rap_core::rng::SeededRng as SimRng;

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
