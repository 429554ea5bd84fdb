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
