//! Crash and restart of a minority of voters.

use crate::sweep;
use rap_sim::scenarios;

// Goal: crashing a voter's host (the leader's for half the seeds) and
// restarting it on its redb files loses no acknowledged fence, keeps one
// leader per term, and the restarted node catches up. Method: the
// `crash-restart-3` scenario over three seeds (turmoil drops the host's
// tasks, which closes redb and releases its file lock; the restart opens
// the same directory).
#[test]
fn crash_restart_3_voters() {
    sweep("crash::crash_restart_3_voters", &[1, 2, 3], |seed| {
        scenarios::crash_restart(seed, 3)
    });
}

// Goal: the same with two of five voters down at once: the remaining three
// keep granting, and both restarted nodes catch up. Method: the
// `crash-restart-5` scenario over two seeds.
#[test]
fn crash_restart_5_voters() {
    sweep("crash::crash_restart_5_voters", &[1, 2], |seed| {
        scenarios::crash_restart(seed, 5)
    });
}

// Goal: a storm of crashes (1 to 4 of 5 voters, each back with a chance
// of 2 in 3 or down for good) keeps every invariant; a run whose faults
// leave a majority down for good is reported as "recovery impossible"
// (judged for safety only), and exactly those: every other run must
// converge among the nodes that are up. Method: `crash-storm-5` over six
// seeds, run directly; seed 1 leaves a majority down, so both kinds are
// seen (the classification is checked against the schedule).
#[test]
fn a_crash_storm_is_safe_and_says_when_recovery_was_impossible() {
    let mut kinds = (0, 0);
    for seed in 1..=6 {
        let scenario = scenarios::by_name("crash-storm-5", seed).expect("a named scenario");
        let majority_down = scenario.workload.down_for_good.len() * 2 > scenario.cluster.voters;
        let report = rap_sim::run(seed, &scenario);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {}",
            report.failure_report()
        );
        assert_eq!(
            report.recovery_impossible,
            majority_down,
            "seed {seed} (down for good: {:?}): {}",
            scenario.workload.down_for_good,
            report.failure_report()
        );
        assert!(
            report.acceptable(),
            "seed {seed}: {}",
            report.failure_report()
        );
        if majority_down {
            kinds.0 += 1;
        } else {
            assert!(report.passed(), "seed {seed}: {}", report.failure_report());
            kinds.1 += 1;
        }
        println!("crash storm seed={seed}: {}", report.summary());
    }
    assert!(
        kinds.0 > 0 && kinds.1 > 0,
        "impossible, recovered: {kinds:?}"
    );
}
