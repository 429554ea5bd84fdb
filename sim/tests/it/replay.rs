//! Replays one seed of one named scenario, as `rap-chaos` prints it:
//! `RAP_SIM_SCENARIO=<name> RAP_SIM_SEED=<n> cargo test -p rap-sim --test it
//! replay -- --exact --nocapture`.

use rap_sim::chaos::SCENARIO_ENV;
use rap_sim::scenarios;

// Goal: any seed of any named scenario replays alone, with its event log
// on failure. Method: the scenario from RAP_SIM_SCENARIO (default
// isolated-leader) over the sweep's seeds (RAP_SIM_SEED alone when set,
// else seed 1).
#[test]
fn replay() {
    let name = std::env::var(SCENARIO_ENV).unwrap_or_else(|_| "isolated-leader".into());
    assert!(
        scenarios::NAMES.contains(&name.as_str()),
        "{SCENARIO_ENV}={name:?} is not one of {:?}",
        scenarios::NAMES
    );
    crate::sweep("replay", &[1], |seed| {
        scenarios::by_name(&name, seed).unwrap_or_else(|| unreachable!("checked above"))
    });
}
