//! Replays one seed of one named scenario, as `rap-chaos` prints it:
//! `[RAP_SIM_MUTANT=<mutant>] RAP_SIM_SCENARIO=<name> RAP_SIM_SEED=<n>
//! cargo test -p rap-sim --test it replay -- --exact --nocapture`.

use rap_sim::chaos::{MUTANT_ENV, SCENARIO_ENV};
use rap_sim::mutants::Mutant;
use rap_sim::scenarios;

// Goal: any seed of any named scenario replays alone, with its event log
// on failure. Method: the scenario from RAP_SIM_SCENARIO (default
// isolated-leader), with the mutant from RAP_SIM_MUTANT (default none),
// over the sweep's seeds (RAP_SIM_SEED alone when set, else seed 1).
#[test]
fn replay() {
    let name = std::env::var(SCENARIO_ENV).unwrap_or_else(|_| "isolated-leader".into());
    assert!(
        scenarios::NAMES.contains(&name.as_str()),
        "{SCENARIO_ENV}={name:?} is not one of {:?}",
        scenarios::NAMES
    );
    let mutant = match std::env::var(MUTANT_ENV) {
        Ok(mutant) => Mutant::by_name(&mutant)
            .unwrap_or_else(|| panic!("{MUTANT_ENV}={mutant:?} is not a known mutant")),
        Err(_) => Mutant::None,
    };
    crate::sweep("replay", &[1], |seed| {
        let mut scenario =
            scenarios::by_name(&name, seed).unwrap_or_else(|| unreachable!("checked above"));
        scenario.mutant = mutant;
        scenario
    });
}
