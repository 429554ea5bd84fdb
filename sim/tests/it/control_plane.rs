//! The control plane's side: fenced mutations through its real fenced path
//! (`rap_controlplane::fencing::run`) over the simulator's in-memory
//! source of truth.

use crate::sweep_named;
use rap_sim::events::{Event, TruthEvent};
use rap_sim::mutants::Mutant;
use rap_sim::{run, scenarios};

/// The refusal codes of the control plane's mutations in `events`.
fn refusals(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Truth {
                what:
                    TruthEvent::Mutation {
                        answer: Err(code), ..
                    },
                ..
            } => Some(code.as_str()),
            _ => None,
        })
        .collect()
}

// Goal: while nodes are cut off one by one (swizzle), crash and restart,
// or a minority is promoted while the old majority lives (and later
// rejoins), the control plane's fenced mutations keep the source-of-truth
// rules: no mutation is accepted with a fence older than one already
// accepted, none of the old term once the promotion is recorded, every
// answer agrees with what the truth holds and every refusal has its audit
// row; after the heal a fenced mutation is applied. Method: the three
// control-plane scenarios over seeds 1–4, judged by every checker.
#[test]
fn fenced_mutations_keep_the_source_of_truth_rules() {
    sweep_named(
        "control_plane::fenced_mutations_keep_the_source_of_truth_rules",
        &[
            "control-plane-swizzle-5",
            "control-plane-crash-3",
            "control-plane-promotion-5",
        ],
    );
}

// Goal: the conditional fence check (the product's `admit_fence`, which
// PostgreSQL applies in its `UPDATE ... WHERE`) refuses what a broken
// group grants. Method: `control-plane-swizzle-5` seed 1 with
// `GrantWithoutQuorum` (cut-off nodes make up fences of their own count):
// the truth must refuse some mutations `STALE_FENCE`, and no rule of the
// truth may break (the group's own rules do, as they should).
#[test]
fn the_conditional_check_refuses_a_broken_groups_fences() {
    let mut scenario = scenarios::by_name("control-plane-swizzle-5", 1)
        .unwrap_or_else(|| unreachable!("a named scenario"));
    scenario.mutant = Mutant::GrantWithoutQuorum;
    let report = run(1, &scenario);
    let stale = refusals(&report.events)
        .into_iter()
        .filter(|code| *code == "STALE_FENCE")
        .count();
    assert!(stale > 0, "no mutation was refused STALE_FENCE");
    let broken: Vec<_> = report
        .violations
        .iter()
        .filter(|v| v.invariant.starts_with("truth-") || v.invariant == "mutations-as-answered")
        .collect();
    assert!(broken.is_empty(), "{broken:?}");
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.invariant == "no-minority-grant"),
        "the mutant did not act"
    );
}

// Goal: the control plane reaches the majority past a storage node that is
// cut off in a minority. Regression: the authority client took the first
// recorded node's minority `NO_QUORUM` as final, so while node-1 was cut
// off every fenced mutation was refused though the old majority was
// reachable and granting (34 of the run's mutations here). Method:
// `control-plane-promotion-5` seed 1 (survivors node-1 and node-3 are cut
// off from the other three until the promotion); no mutation of the run
// may be refused `NO_QUORUM`.
#[test]
fn the_control_plane_asks_past_a_minority_node() {
    let scenario = scenarios::by_name("control-plane-promotion-5", 1)
        .unwrap_or_else(|| unreachable!("a named scenario"));
    let report = run(1, &scenario);
    assert!(
        report.passed(),
        "{:?} {:?}",
        report.aborted,
        report.violations
    );
    let no_quorum = refusals(&report.events)
        .into_iter()
        .filter(|code| *code == "NO_QUORUM")
        .count();
    assert_eq!(no_quorum, 0, "mutations refused NO_QUORUM");
}
