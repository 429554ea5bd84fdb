//! Partitions: symmetric (3 and 5 voters), one-way, and the isolated
//! leader.

use crate::sweep;
use rap_sim::scenarios::{self, OneWay};

// Goal: a 1-of-3 minority never grants a fence, refuses with NO_QUORUM
// within 2 × its election timeout and says `minority`; the majority keeps
// one leader per term and granting unique, increasing fences; after heal
// all nodes converge with every acknowledged fence. Method: the
// `symmetric-3` scenario (random minority, 4–6 s) over six seeds, judged
// by every checker.
#[test]
fn symmetric_partition_3_voters() {
    sweep(
        "partition::symmetric_partition_3_voters",
        &[1, 2, 3, 4, 5, 6],
        |seed| scenarios::symmetric_partition(seed, 3),
    );
}

// Goal: the same with five voters and a 2-node minority (a minority with
// a peer still has no quorum). Method: the `symmetric-5` scenario over two
// seeds.
#[test]
fn symmetric_partition_5_voters() {
    sweep("partition::symmetric_partition_5_voters", &[1, 2], |seed| {
        scenarios::symmetric_partition(seed, 5)
    });
}

// Goal: a node that still sends but hears nothing (leader or not) cannot
// grant, refuses with NO_QUORUM, and does not split the majority's terms.
// Method: the `asymmetric-deaf` scenario over four seeds.
#[test]
fn asymmetric_partition_deaf() {
    sweep(
        "partition::asymmetric_partition_deaf",
        &[1, 2, 3, 4],
        |seed| scenarios::asymmetric_partition(seed, OneWay::Deaf),
    );
}

// Goal: a node that still hears but cannot send (leader or not) cannot
// grant and refuses with NO_QUORUM: hearing the new leader must not make
// it forward writes it cannot deliver. Method: the `asymmetric-mute`
// scenario over four seeds (seed 3 is pinned in `regressions`).
#[test]
fn asymmetric_partition_mute() {
    sweep(
        "partition::asymmetric_partition_mute",
        &[1, 2, 3, 4],
        |seed| scenarios::asymmetric_partition(seed, OneWay::Mute),
    );
}

// Goal: an isolated leader (openraft 0.9 keeps believing it leads) stops
// granting once its quorum lease runs out, its in-flight writes end within
// the write budget, and the majority elects a new leader and goes on.
// Method: the `isolated-leader` scenario over four seeds.
#[test]
fn isolated_leader() {
    sweep(
        "partition::isolated_leader",
        &[1, 2, 3, 4],
        scenarios::isolated_leader,
    );
}

// Goal: swizzle (nodes cut off one by one until all are alone, then
// reconnected one by one in another order) keeps every invariant: no
// grant while a side has no quorum, one leader per term, unique and
// increasing fences, convergence once the last node is back. Method: the
// schedule cuts and repairs every node but the last of each pass; the
// `swizzle-3` and `swizzle-5` scenarios over three seeds each.
#[test]
fn swizzle_3_and_5_voters() {
    use rap_sim::faults::{Applied, Fault};
    for voters in [3, 5] {
        let schedule = scenarios::swizzle(1, voters).schedule;
        let cuts = schedule
            .iter()
            .filter(|(_, f)| matches!(f, Fault::Apply(Applied::Partition { .. })))
            .count();
        let repairs = schedule
            .iter()
            .filter(|(_, f)| matches!(f, Fault::Apply(Applied::Repair { .. })))
            .count();
        assert_eq!((cuts, repairs), (voters - 1, voters - 1), "{schedule:?}");
        sweep(
            &format!("partition::swizzle_3_and_5_voters ({voters})"),
            &[1, 2, 3],
            |seed| scenarios::swizzle(seed, voters),
        );
    }
}
