//! The oracle's teeth: with a rule broken on purpose ([`Mutant`]), a short
//! sweep of the scenario that exercises that rule must fail, and on the
//! invariant that guards it.

use rap_sim::mutants::Mutant;
use rap_sim::{Scenario, run, scenarios};

/// Seeds tried per mutant: "within a few seeds".
const TEETH_SEEDS: u64 = 3;

/// The first seed (of 1..=TEETH_SEEDS) whose run with `mutant` breaks
/// `invariant`, with the invariants each run broke.
fn first_caught(
    mutant: Mutant,
    invariant: &str,
    make: impl Fn(u64) -> Scenario,
) -> (Option<u64>, Vec<(u64, Vec<&'static str>)>) {
    let mut seen = Vec::new();
    for seed in 1..=TEETH_SEEDS {
        let mut scenario = make(seed);
        scenario.mutant = mutant;
        let report = run(seed, &scenario);
        let mut broken: Vec<&'static str> = report.violations.iter().map(|v| v.invariant).collect();
        broken.dedup();
        println!("{} seed={seed}: broke {broken:?}", mutant.name());
        let caught = broken.contains(&invariant);
        seen.push((seed, broken));
        if caught {
            return (Some(seed), seen);
        }
    }
    (None, seen)
}

// Goal: a node that grants fences without a quorum is caught. Method: the
// isolated-leader scenario (the leader is cut off from both followers)
// with `GrantWithoutQuorum`; some seed of the first three must break
// `no-minority-grant`.
#[test]
fn granting_without_quorum_is_caught() {
    let (caught, seen) = first_caught(
        Mutant::GrantWithoutQuorum,
        "no-minority-grant",
        scenarios::isolated_leader,
    );
    assert!(
        caught.is_some(),
        "not caught in {TEETH_SEEDS} seeds: {seen:?}"
    );
}

// Goal: a node that believes an unproven higher authority term is caught.
// Method: the forged-terms scenario (a non-member host sends higher-term
// RPCs without a valid order) with `BelieveUnprovenTerm`; some seed of the
// first three must break `no-unproven-term`.
#[test]
fn believing_an_unproven_term_is_caught() {
    let (caught, seen) = first_caught(
        Mutant::BelieveUnprovenTerm,
        "no-unproven-term",
        scenarios::forged_terms,
    );
    assert!(
        caught.is_some(),
        "not caught in {TEETH_SEEDS} seeds: {seen:?}"
    );
}

// Goal: a node that grants its old term after learning that it is fenced
// is caught. Method: the promotion scenario for 3 voters (the old
// majority's stale clients keep asking for the old term after the heal)
// with `GrantWhenFenced`; some seed of the first three must break
// `fenced-grants-nothing`.
#[test]
fn granting_when_fenced_is_caught() {
    let (caught, seen) = first_caught(Mutant::GrantWhenFenced, "fenced-grants-nothing", |seed| {
        scenarios::promotion(seed, 3)
    });
    assert!(
        caught.is_some(),
        "not caught in {TEETH_SEEDS} seeds: {seen:?}"
    );
}

// Goal: the real system passes the same runs, so the failures above come
// from the mutants. Method: the first seed of each scenario, no mutant.
#[test]
fn the_real_system_passes_the_same_runs() {
    for scenario in [
        scenarios::isolated_leader(1),
        scenarios::forged_terms(1),
        scenarios::promotion(1, 3),
    ] {
        assert_eq!(scenario.mutant, Mutant::None);
        let report = run(1, &scenario);
        assert!(report.passed(), "{}", report.failure_report());
    }
}
