//! The scenarios the test binary sweeps, each a function of its seed: the
//! seed picks which nodes, when, for how long, how lossy.
//!
//! Every scenario starts faults 0.5–1.5 s into the workload, heals them
//! (and restarts crashed hosts) a few seconds later, and lets the workers
//! run 2 s more, so each run sees before, during and after.
//!
//! The term rule both ways: a promotion signed with the cluster's key
//! fences the old side even when the old majority comes back
//! ([`promotion`]); forged higher-term RPCs from a non-member host
//! ([`forged_terms`]) fence nobody.

use crate::echo::EchoPlan;
use crate::events::NodeIndex;
use crate::faults::{Applied, Fault};
use crate::forger::ForgerPlan;
use crate::harness::{ClusterSpec, Scenario};
use crate::mutants::Mutant;
use crate::operator::PromotionPlan;
use crate::seed::SimRng;
use crate::shards::ShardPlan;
use crate::workload::Workload;
use std::time::Duration;

/// How long the workers run after the last fault is healed.
pub const AFTER_HEAL: Duration = Duration::from_secs(2);

fn s(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

fn scenario(
    name: &str,
    voters: usize,
    schedule: Vec<(Duration, Fault)>,
    healed_at: Duration,
) -> Scenario {
    let cluster = ClusterSpec {
        voters,
        ..ClusterSpec::default()
    };
    Scenario {
        name: name.into(),
        cluster,
        workload: Workload {
            workers: voters,
            duration: healed_at + AFTER_HEAL,
            ..Workload::default()
        },
        schedule,
        forger: ForgerPlan::default(),
        mutant: Mutant::None,
        promotion: None,
        echo: None,
        shards: None,
        node_clocks: false,
    }
}

fn others(nodes: usize, of: &[NodeIndex]) -> Vec<NodeIndex> {
    (0..nodes).filter(|n| !of.contains(n)).collect()
}

/// A minority (1 of 3, or 2 of 5) is cut off from the majority both ways
/// for 4–6 s, then healed. The minority is drawn at random, so sometimes
/// it holds the leader and sometimes not.
pub fn symmetric_partition(seed: u64, voters: usize) -> Scenario {
    let mut rng = SimRng::new(seed).fork("symmetric-partition");
    let minority = rng.subset(voters, (voters - 1) / 2);
    let majority = others(voters, &minority);
    let start = rng.millis(ms(500), ms(1_500));
    let heal = start + rng.millis(s(4), s(6));
    scenario(
        &format!("symmetric partition ({voters} voters)"),
        voters,
        vec![
            (start, Fault::partition(minority, majority)),
            (heal, Fault::HealNetwork),
        ],
        heal,
    )
}

/// Which way a one-way partition cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OneWay {
    /// The node's messages to the others are dropped; it still hears them.
    Mute,
    /// The others' messages to the node are dropped; it still sends.
    Deaf,
}

/// One node is made [`OneWay::Mute`] or [`OneWay::Deaf`] towards the
/// others for 4–6 s. Half the seeds pick the leader, half a random node.
pub fn asymmetric_partition(seed: u64, way: OneWay) -> Scenario {
    let voters = 3;
    let mut rng = SimRng::new(seed).fork("asymmetric-partition");
    let start = rng.millis(ms(500), ms(1_500));
    let heal = start + rng.millis(s(4), s(6));
    let fault = if rng.chance(0.5) {
        match way {
            OneWay::Mute => Fault::MuteLeader,
            OneWay::Deaf => Fault::DeafenLeader,
        }
    } else {
        let node = rng.index(voters);
        let rest = others(voters, &[node]);
        Fault::Apply(match way {
            OneWay::Mute => Applied::PartitionOneway {
                from: vec![node],
                to: rest,
            },
            OneWay::Deaf => Applied::PartitionOneway {
                from: rest,
                to: vec![node],
            },
        })
    };
    scenario(
        &format!("asymmetric partition ({way:?})"),
        voters,
        vec![(start, fault), (heal, Fault::HealNetwork)],
        heal,
    )
}

/// The leader is cut off from every other node for 4–6 s while its
/// clients keep asking it for fences.
pub fn isolated_leader(seed: u64) -> Scenario {
    let mut rng = SimRng::new(seed).fork("isolated-leader");
    let start = rng.millis(ms(500), ms(1_500));
    let heal = start + rng.millis(s(4), s(6));
    scenario(
        "isolated leader",
        3,
        vec![(start, Fault::IsolateLeader), (heal, Fault::HealNetwork)],
        heal,
    )
}

/// For 6 s, messages between storage nodes are lost at random (0.2–2 %
/// per message, each loss stalling a TCP connection until keepalive drops
/// it) and delayed up to 100–400 ms; in the middle, everything between
/// one node and the others is held for 1.5 s and then delivered at once.
pub fn loss_and_delay(seed: u64) -> Scenario {
    let voters = 3;
    let mut rng = SimRng::new(seed).fork("loss-and-delay");
    let start = rng.millis(ms(500), ms(1_500));
    let fail_rate = (2 + rng.below(19)) as f64 / 1_000.0;
    let max = rng.millis(ms(100), ms(400));
    let held = rng.index(voters);
    let hold_at = start + rng.millis(s(2), s(3));
    let heal = start + s(6);
    scenario(
        "loss and delay",
        voters,
        vec![
            (start, Fault::Apply(Applied::Loss { fail_rate })),
            (start, Fault::Apply(Applied::Latency { max })),
            (
                hold_at,
                Fault::Apply(Applied::Hold {
                    a: vec![held],
                    b: others(voters, &[held]),
                }),
            ),
            (
                hold_at + ms(1_500),
                Fault::Apply(Applied::Release {
                    a: vec![held],
                    b: others(voters, &[held]),
                }),
            ),
            (heal, Fault::HealNetwork),
        ],
        heal,
    )
}

/// A minority of hosts (1 of 3, 2 of 5) crashes and restarts 2–4 s later
/// on its data directories, under load. For half the seeds the current
/// leader is among them.
pub fn crash_restart(seed: u64, voters: usize) -> Scenario {
    let mut rng = SimRng::new(seed).fork("crash-restart");
    let start = rng.millis(ms(500), ms(1_500));
    let restart = start + rng.millis(s(2), s(4));
    let minority = (voters - 1) / 2;
    let mut schedule = Vec::new();
    let mut random = minority;
    if rng.chance(0.5) {
        schedule.push((start, Fault::CrashLeader));
        random -= 1;
    }
    // A random pick may be the leader crashed above: then fewer hosts go
    // down, never more than a minority.
    for node in rng.subset(voters, random) {
        schedule.push((start, Fault::Apply(Applied::Crash(node))));
    }
    schedule.push((restart, Fault::RestartCrashed));
    scenario(
        &format!("crash and restart ({voters} voters)"),
        voters,
        schedule,
        restart,
    )
}

/// A storm of crashes, with seeds whose faults make recovery impossible
/// (as VOPR has): 1 to all but one of the voters crash one after another,
/// 200–800 ms apart, each losing its unsynced writes; each comes back
/// 1–3 s later with a chance of 2 in 3, or stays down for good. When a
/// majority stays down no group can form again: such a run is judged for
/// safety only and reported as "recovery impossible"
/// ([`crate::harness::RunReport::recovery_impossible`]); every other run
/// must converge as usual.
pub fn crash_storm(seed: u64, voters: usize) -> Scenario {
    let mut rng = SimRng::new(seed).fork("crash-storm");
    let count = 1 + rng.index(voters - 1);
    let mut at = rng.millis(ms(500), ms(1_500));
    let mut schedule = Vec::new();
    let mut down_for_good = Vec::new();
    for node in rng.subset(voters, count) {
        schedule.push((at, Fault::Apply(Applied::Crash(node))));
        if rng.chance(2.0 / 3.0) {
            let back = at + rng.millis(s(1), s(3));
            schedule.push((back, Fault::Apply(Applied::Restart(node))));
        } else {
            down_for_good.push(node);
        }
        at += rng.millis(ms(200), ms(800));
    }
    schedule.sort_by_key(|(offset, _)| *offset);
    let end = schedule.last().map_or(at, |(offset, _)| *offset);
    let mut scenario = scenario(
        &format!("crash storm ({voters} voters)"),
        voters,
        schedule,
        end,
    );
    down_for_good.sort_unstable();
    scenario.workload.down_for_good = down_for_good;
    scenario
}

/// Swizzle (after FoundationDB's swizzle-clogging): the nodes are cut
/// off one by one, every 200–600 ms, each from every node still
/// connected, until all are alone (the majority is lost on the way); then
/// they are reconnected one by one in another random order (a node comes
/// back to the nodes already back), so the majority returns before the
/// last node does.
pub fn swizzle(seed: u64, voters: usize) -> Scenario {
    let mut rng = SimRng::new(seed).fork("swizzle");
    let mut cut_order: Vec<NodeIndex> = (0..voters).collect();
    shuffle(&mut rng, &mut cut_order);
    let mut back_order = cut_order.clone();
    shuffle(&mut rng, &mut back_order);
    let mut at = rng.millis(ms(500), ms(1_500));
    let mut schedule = Vec::new();
    let mut connected: Vec<NodeIndex> = (0..voters).collect();
    for node in cut_order {
        connected.retain(|n| *n != node);
        if !connected.is_empty() {
            schedule.push((at, Fault::partition(vec![node], connected.clone())));
        }
        at += rng.millis(ms(200), ms(600));
    }
    let mut back: Vec<NodeIndex> = Vec::new();
    for node in back_order {
        if !back.is_empty() {
            schedule.push((
                at,
                Fault::Apply(Applied::Repair {
                    a: vec![node],
                    b: back.clone(),
                }),
            ));
        }
        back.push(node);
        at += rng.millis(ms(200), ms(600));
    }
    schedule.push((at, Fault::HealNetwork));
    scenario(&format!("swizzle ({voters} voters)"), voters, schedule, at)
}

/// Promotion while the old majority lives: a random minority (1 of 3, 2
/// of 5) is cut off from the rest 0.5–1.5 s in; once it has settled in
/// its minority (2.5–3 s later) the operator promotes it with a signed
/// order; 2–4 s later the network heals, and the old majority, which
/// kept granting fences at the old term to its stale clients meanwhile,
/// must learn that it is fenced and grant nothing more.
pub fn promotion(seed: u64, voters: usize) -> Scenario {
    let mut rng = SimRng::new(seed).fork("promotion");
    let mut nodes: Vec<NodeIndex> = (0..voters).collect();
    shuffle(&mut rng, &mut nodes);
    let mut survivors: Vec<NodeIndex> = nodes[..(voters - 1) / 2].to_vec();
    survivors.sort_unstable();
    let cut = rng.millis(ms(500), ms(1_500));
    let promote = cut + rng.millis(ms(2_500), ms(3_000));
    let heal = promote + rng.millis(s(2), s(4));
    let schedule = vec![
        (
            cut,
            Fault::partition(survivors.clone(), others(voters, &survivors)),
        ),
        (heal, Fault::HealNetwork),
    ];
    let mut scenario = scenario(
        &format!("promotion ({voters} voters)"),
        voters,
        schedule,
        heal,
    );
    scenario.promotion = Some(PromotionPlan {
        at: promote,
        survivors,
        rejoin: false,
    });
    scenario
}

/// [`promotion`], and after the heal the operator brings the old side
/// back: once each old member reports `fenced`, a signed rejoin order
/// (`rapctl authority rejoin`) makes it retire its storage and join the
/// new group empty; then every node must agree on the new term, grant
/// fences of it, and (with shards) serve the new group's versions.
pub fn with_rejoin(mut scenario: Scenario) -> Scenario {
    if let Some(promotion) = &mut scenario.promotion {
        promotion.rejoin = true;
        scenario.name = format!("{} and rejoin", scenario.name);
    }
    scenario
}

/// Duplicated and reordered Raft messages (5–15 % of them delivered a
/// second time, 1–300 ms later) through a symmetric partition of a
/// minority and its heal: stale `AppendEntries` from an old leader and
/// repeated votes from old elections arrive after newer ones.
pub fn echoes(seed: u64, voters: usize) -> Scenario {
    let mut scenario = symmetric_partition(seed, voters);
    let mut rng = SimRng::new(seed).fork("echoes");
    scenario.name = format!("duplicates and reordering ({voters} voters)");
    scenario.echo = Some(EchoPlan {
        rate: (5 + rng.below(11)) as f64 / 100.0,
        delay_max: ms(300),
    });
    scenario
}

/// Shards under faults: `base` with the publisher and two agents
/// ([`crate::shards`]): the control plane publishes signed versions of
/// three scopes with fences, agents read, verify and keep them from
/// whichever storage node ranks best, restarting every few seconds, and
/// ask for a scope they may not read. After heal every agent must hold
/// the newest version of its scopes.
pub fn with_shards(scenario: Scenario) -> Scenario {
    with_shard_plan(scenario, "", ShardPlan::default())
}

/// `scenario` with the shard part `plan`, named with `what` after "with
/// shards" when not empty.
fn with_shard_plan(mut scenario: Scenario, what: &str, plan: ShardPlan) -> Scenario {
    scenario.name = if what.is_empty() {
        format!("{} with shards", scenario.name)
    } else {
        format!("{} with shards, {what}", scenario.name)
    };
    scenario.shards = Some(plan);
    scenario
}

/// Control-plane workers beside the fence workers of `scenario`: fenced
/// mutations through the control plane's real fenced path over the
/// in-memory source of truth ([`crate::truth`]).
pub fn with_control_plane(mut scenario: Scenario) -> Scenario {
    scenario.name = format!("{}, control-plane mutations", scenario.name);
    scenario.workload.mutators = CONTROL_PLANE_MUTATORS;
    scenario
}

/// `scenario` with the storage nodes' wall clocks skewed, inside or
/// outside the signed orders' window ([`crate::clocks`]).
pub fn with_node_clocks(mut scenario: Scenario) -> Scenario {
    scenario.name = format!("{}, skewed node clocks", scenario.name);
    scenario.node_clocks = true;
    scenario
}

/// Control-plane workers of [`with_control_plane`].
pub const CONTROL_PLANE_MUTATORS: usize = 2;

/// Shards with sides: as [`with_shards`], and the cache replica and each
/// agent stand with a storage node drawn from the seed, so a partition
/// cuts them off from the other side ([`ShardPlan::sides`]): a reader
/// in the minority reads what the minority holds, and after a promotion
/// one may be left with the fenced old side until the heal.
pub fn with_shards_on_sides(scenario: Scenario) -> Scenario {
    let plan = ShardPlan {
        sides: true,
        ..ShardPlan::default()
    };
    with_shard_plan(scenario, "readers on both sides", plan)
}

/// Shards with skewed clocks: as [`with_shards`], and each agent's wall
/// clock is off by an amount drawn from the seed
/// ([`crate::shards::clock_skew`]): within the verifier's tolerance, ahead
/// inside the envelopes' validity, or so far behind or ahead that every
/// envelope is not yet valid or has expired to it. Agents in range must
/// catch up as usual; the others must accept nothing
/// (`agent-clock-window`).
pub fn with_skewed_clocks(scenario: Scenario) -> Scenario {
    let plan = ShardPlan {
        skews: true,
        ..ShardPlan::default()
    };
    with_shard_plan(scenario, "skewed clocks", plan)
}

/// Fisher–Yates with the seed's generator.
fn shuffle(rng: &mut SimRng, items: &mut [NodeIndex]) {
    for i in (1..items.len()).rev() {
        let j = rng.index(i + 1);
        items.swap(i, j);
    }
}

/// A non-member host sends 12–24 forged `Vote`s claiming a higher
/// authority term (no proof, garbage, or an order signed by a key the
/// cluster does not trust; as itself or claiming to be a member) to
/// random nodes, while a random minority node crashes and restarts.
pub fn forged_terms(seed: u64) -> Scenario {
    let voters = 3;
    let mut rng = SimRng::new(seed).fork("forged-terms");
    let start = rng.millis(ms(500), ms(1_500));
    let restart = start + rng.millis(s(2), s(3));
    let victim = rng.index(voters);
    let count = 12 + rng.below(13);
    let mut at: Vec<Duration> = (0..count)
        .map(|_| rng.millis(ms(100), restart + s(1)))
        .collect();
    at.sort();
    let mut forged = scenario(
        "forged higher terms",
        voters,
        vec![
            (start, Fault::Apply(Applied::Crash(victim))),
            (restart, Fault::RestartCrashed),
        ],
        restart,
    );
    forged.forger = ForgerPlan { at };
    forged
}

/// Largest one-way latency between hosts of the WAN topology: voters in
/// different regions.
pub const WAN_LATENCY_MAX: Duration = Duration::from_millis(80);

/// `scenario` on a WAN: every message takes up to [`WAN_LATENCY_MAX`]
/// instead of the LAN's 20 ms, with the same Raft timing.
pub fn over_wan(mut scenario: Scenario) -> Scenario {
    scenario.cluster.latency_max = WAN_LATENCY_MAX;
    scenario.name = format!("{} over a WAN", scenario.name);
    scenario
}

/// Names of the scenarios [`by_name`] knows: what `regressions` pins and
/// `scripts/chaos.sh` sweeps. Four topologies: 3, 5 and 7 voters on a
/// LAN, and 5 voters on a WAN.
pub const NAMES: &[&str] = &[
    "symmetric-3",
    "symmetric-5",
    "symmetric-7",
    "wan-symmetric-5",
    "asymmetric-mute",
    "asymmetric-deaf",
    "isolated-leader",
    "loss-and-delay",
    "crash-restart-3",
    "crash-restart-5",
    "crash-restart-7",
    "wan-crash-restart-5",
    "forged-terms",
    "swizzle-3",
    "swizzle-5",
    "promotion-3",
    "promotion-5",
    "echoes-3",
    "echoes-5",
    "shards-crash-3",
    "shards-partition-3",
    "shards-swizzle-5",
    "shards-promotion-3",
    "shards-sides-3",
    "shards-sides-promotion-3",
    "promotion-rejoin-5",
    "crash-storm-5",
    "shards-skew-3",
    "control-plane-swizzle-5",
    "control-plane-promotion-5",
    "control-plane-crash-3",
    "promotion-skew-5",
];

/// The scenario called `name` (one of [`NAMES`]) for `seed`.
pub fn by_name(name: &str, seed: u64) -> Option<Scenario> {
    Some(match name {
        "symmetric-3" => symmetric_partition(seed, 3),
        "symmetric-5" => symmetric_partition(seed, 5),
        "symmetric-7" => symmetric_partition(seed, 7),
        "wan-symmetric-5" => over_wan(symmetric_partition(seed, 5)),
        "asymmetric-mute" => asymmetric_partition(seed, OneWay::Mute),
        "asymmetric-deaf" => asymmetric_partition(seed, OneWay::Deaf),
        "isolated-leader" => isolated_leader(seed),
        "loss-and-delay" => loss_and_delay(seed),
        "crash-restart-3" => crash_restart(seed, 3),
        "crash-restart-5" => crash_restart(seed, 5),
        "crash-restart-7" => crash_restart(seed, 7),
        "wan-crash-restart-5" => over_wan(crash_restart(seed, 5)),
        "forged-terms" => forged_terms(seed),
        "swizzle-3" => swizzle(seed, 3),
        "swizzle-5" => swizzle(seed, 5),
        "promotion-3" => promotion(seed, 3),
        "promotion-5" => promotion(seed, 5),
        "echoes-3" => echoes(seed, 3),
        "echoes-5" => echoes(seed, 5),
        "shards-crash-3" => with_shards(crash_restart(seed, 3)),
        "shards-partition-3" => with_shards(symmetric_partition(seed, 3)),
        "shards-swizzle-5" => with_shards(swizzle(seed, 5)),
        "shards-promotion-3" => with_shards(promotion(seed, 3)),
        "shards-sides-3" => with_shards_on_sides(symmetric_partition(seed, 3)),
        "shards-sides-promotion-3" => with_rejoin(with_shards_on_sides(promotion(seed, 3))),
        "promotion-rejoin-5" => with_rejoin(promotion(seed, 5)),
        "crash-storm-5" => crash_storm(seed, 5),
        "shards-skew-3" => with_skewed_clocks(crash_restart(seed, 3)),
        "control-plane-swizzle-5" => with_control_plane(swizzle(seed, 5)),
        "control-plane-promotion-5" => with_rejoin(with_control_plane(promotion(seed, 5))),
        "control-plane-crash-3" => with_control_plane(crash_restart(seed, 3)),
        "promotion-skew-5" => with_node_clocks(promotion(seed, 5)),
        _ => return None,
    })
}
