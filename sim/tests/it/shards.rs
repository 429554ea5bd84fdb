//! Shards under faults: publication with fences, `ShardService` under
//! mutual TLS, and node agents reading with the real agent reader.

use crate::sweep_named;

// Goal: while storage nodes crash (losing unsynced writes) and restart, a
// minority is cut off (the cache replica may follow it and fall behind),
// or nodes are cut off one by one and reconnected (swizzle), the control
// plane's signed publications and the agents that read them keep the
// shard rules: one body per (scope, version), no agent ever accepts a
// lower version than before (across its restarts), no storage node
// serves a scope to an agent its readers do not admit; and after heal
// every agent holds the newest version of each of its scopes; after a
// promotion, no agent accepts the old side's term once it has seen the
// new one, and every agent reaches the new group's versions. Method:
// `shards-crash-3`, `shards-partition-3`, `shards-swizzle-5` and
// `shards-promotion-3` over four seeds each, judged by every checker.
#[test]
fn shard_rules_hold_under_crashes_partitions_and_swizzle() {
    sweep_named(
        "shards::shard_rules_hold_under_crashes_partitions_and_swizzle",
        &[
            "shards-crash-3",
            "shards-partition-3",
            "shards-swizzle-5",
            "shards-promotion-3",
        ],
    );
}

// Goal: the same rules hold when the readers take sides: the cache
// replica and each agent stand with one storage node and are cut off
// from the other side of every partition, so an agent in the minority
// reads only what the minority holds, and after a promotion an agent or
// the cache may be left with the fenced old side until the heal; after
// the heal every agent still reaches the newest versions, and again
// after the old side has rejoined the new group. Method:
// `shards-sides-3` and `shards-sides-promotion-3` (with the rejoin) over
// four seeds each (the homes are drawn from the seed and logged), judged
// by every checker, `readers-keep-to-their-side` among them (no agent is
// served across a cut).
#[test]
fn shard_rules_hold_with_readers_on_both_sides() {
    sweep_named(
        "shards::shard_rules_hold_with_readers_on_both_sides",
        &["shards-sides-3", "shards-sides-promotion-3"],
    );
}

// Goal: agents whose wall clocks are off keep the validity rules: one
// within the verifier's tolerance, or ahead but inside the envelopes'
// validity, reads and catches up as usual; one behind past the tolerance
// (every fresh envelope is not yet valid to it) or ahead past the
// validity (every envelope has expired) accepts nothing
// (`agent-clock-window`), and is not expected to catch up. Method:
// `shards-skew-3` (crash and restart with shards; each agent's skew drawn
// from the seed among the four kinds and logged) over four seeds, judged
// by every checker.
#[test]
fn agents_with_skewed_clocks_keep_the_validity_window() {
    sweep_named(
        "shards::agents_with_skewed_clocks_keep_the_validity_window",
        &["shards-skew-3"],
    );
}
