//! The simulation test binary: every
//! scenario of `rap_sim::scenarios` swept over a few fixed seeds, the
//! determinism check, and the pinned regression seeds.
//!
//! Every run prints `seed=N`; a failing seed prints the command that
//! replays it alone (`RAP_SIM_SEED=N cargo test -p rap-sim --test it
//! <test> -- --exact --nocapture`), and the failure message carries the
//! violations and the whole event log. `RAP_SIM_SEEDS=K` adds K
//! clock-drawn seeds to every sweep (exploration); every seed that ever
//! failed goes into `regressions`.

mod breadth;
mod control_plane;
mod crash;
mod determinism;
mod echoes;
mod forged;
mod loss;
mod partition;
mod promotion;
mod regressions;
mod replay;
mod shards;
mod teeth;

use rap_sim::{Scenario, scenarios};

/// Runs `make(seed)` for every seed of the sweep and judges each run.
/// `test` is the test's path in this binary (for the replay command).
pub fn sweep(test: &str, defaults: &[u64], make: impl Fn(u64) -> Scenario) {
    rap_sim::sweep(test, defaults, |seed| {
        rap_sim::run(seed, &make(seed)).into_result()
    });
}

/// Sweeps each named scenario of `names` over seeds 1–4 (as `test`).
pub fn sweep_named(test: &str, names: &[&str]) {
    for name in names {
        sweep(&format!("{test} ({name})"), &[1, 2, 3, 4], |seed| {
            scenarios::by_name(name, seed).unwrap_or_else(|| panic!("unknown {name}"))
        });
    }
}
