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
    first_caught_within(TEETH_SEEDS, mutant, invariant, make)
}

/// [`first_caught`] over seeds 1..=`seeds`.
fn first_caught_within(
    seeds: u64,
    mutant: Mutant,
    invariant: &str,
    make: impl Fn(u64) -> Scenario,
) -> (Option<u64>, Vec<(u64, Vec<&'static str>)>) {
    let mut seen = Vec::new();
    for seed in 1..=seeds {
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

// Goal: a storage node that serves a shard to an agent its readers do not
// admit is caught. Method: the crash-restart scenario with shards (each
// agent asks, with its own certificate, for a scope it may not read) with
// `LeakToNonReaders`; some seed of the first three must break
// `readers-only`.
#[test]
fn serving_non_readers_is_caught() {
    let (caught, seen) = first_caught(Mutant::LeakToNonReaders, "readers-only", |seed| {
        scenarios::with_shards(scenarios::crash_restart(seed, 3))
    });
    assert!(
        caught.is_some(),
        "not caught in {TEETH_SEEDS} seeds: {seen:?}"
    );
}

// Goal: an agent that keeps no state across a restart accepts a rollback
// and is caught. Method: the promotion scenario with shards and
// `AgentForgetsState`. A rollback needs a stale server that does not say
// so (the agent sets minority answers aside and leaves fenced nodes):
// the cache replica fills itself from node-1 first; when node-1 is the
// survivor, the cache keeps the state node-1 had when it was cut off
// while the old side goes on, and an agent that restarted with nothing
// takes the cache's older versions (the real agent refuses them: its
// marks survive the restart). The survivor is drawn per seed: some seed
// of the first eight must break `agent-no-rollback`.
#[test]
fn an_agent_without_its_marks_is_caught() {
    let (caught, seen) =
        first_caught_within(8, Mutant::AgentForgetsState, "agent-no-rollback", |seed| {
            scenarios::with_shards(scenarios::promotion(seed, 3))
        });
    assert!(caught.is_some(), "not caught in 8 seeds: {seen:?}");
}

// Goal: an agent that loses its authority-term mark on a restart (its
// version marks stay) accepts the old side's envelope after it accepted
// the new term's, and is caught. Method: `shards-sides-promotion-3` with
// `AgentForgetsTerm`, seed 11: agent-1 stands with the survivor, the cache
// with the old side, which took node/agent-1 v2 at term 1 during the
// split; after the heal agent-1 has accepted role/relay-node of term 2,
// restarts, and the cache (still holding the old side's scope, newer
// than what the agent holds of it) serves it. The real agent refuses it
// (`STALE_TERM`, its term mark survives the restart), see below. The
// versions of one scope go up across terms in this model (the publisher
// numbers above what it published), so only another scope's newer old
// envelope reaches the term rule: seeds that do so are rare (2 of 40 in a
// sweep of this scenario).
#[test]
fn an_agent_without_its_term_mark_is_caught() {
    let mut scenario = scenarios::by_name("shards-sides-promotion-3", 11).expect("a scenario");
    scenario.mutant = Mutant::AgentForgetsTerm;
    let report = run(11, &scenario);
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.invariant == "agent-no-stale-term"),
        "not caught: {}",
        report.failure_report()
    );
}

// Goal: the real system passes the same runs, so the failures above come
// from the mutants. Method: the first seed of each scenario, no mutant
// (and, for the agent's rollback and term mark, the seeds that catch
// the mutants).
#[test]
fn the_real_system_passes_the_same_runs() {
    for scenario in [
        scenarios::isolated_leader(1),
        scenarios::forged_terms(1),
        scenarios::promotion(1, 3),
        scenarios::with_shards(scenarios::crash_restart(1, 3)),
    ] {
        assert_eq!(scenario.mutant, Mutant::None);
        let report = run(1, &scenario);
        assert!(report.passed(), "{}", report.failure_report());
    }
    for (seed, scenario) in [
        (6, scenarios::with_shards(scenarios::promotion(6, 3))),
        (7, scenarios::with_shards(scenarios::promotion(7, 3))),
        (
            11,
            scenarios::by_name("shards-sides-promotion-3", 11).expect("a scenario"),
        ),
    ] {
        let report = run(seed, &scenario);
        assert!(report.passed(), "{}", report.failure_report());
    }
}

// Goal: a control plane that applies a mutation with whatever fence it got
// (no authority row held, no conditional check) is caught, both ways: a
// fence older than one already applied, and an old-term fence after the
// promotion is recorded. Method: `control-plane-crash-3` must break
// `truth-fences-increase`, and `control-plane-promotion-5` must break
// `truth-current-term`, within the first three seeds.
#[test]
fn an_unchecked_control_plane_is_caught() {
    for (name, invariant) in [
        ("control-plane-crash-3", "truth-fences-increase"),
        ("control-plane-promotion-5", "truth-current-term"),
    ] {
        let (caught, seen) = first_caught(Mutant::ControlPlaneUnchecked, invariant, |seed| {
            scenarios::by_name(name, seed).unwrap_or_else(|| unreachable!("a named scenario"))
        });
        assert!(
            caught.is_some(),
            "{name}: not caught in {TEETH_SEEDS} seeds: {seen:?}"
        );
    }
}
