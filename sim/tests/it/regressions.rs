//! Every seed that ever failed, pinned: the scenario (a name of
//! `rap_sim::scenarios::NAMES`), the seed, and what it found. A pinned
//! seed runs on every CI run, after the bug it found is fixed, so the bug
//! stays fixed. A seed whose bug is still open is listed with
//! `open_bug` and runs only in the ignored test below, which is the
//! bug's reproduction.

use rap_sim::{run, scenarios, seed};

/// One pinned seed.
struct Pinned {
    scenario: &'static str,
    seed: u64,
    /// What the seed found, and where.
    found: &'static str,
    /// `Some(where the bug is)` while it is unfixed.
    open_bug: Option<&'static str>,
}

const PINNED: &[Pinned] = &[
    Pinned {
        scenario: "asymmetric-mute",
        seed: 3,
        found: "the muted leader (hears node-3's AppendEntries, reaches nobody) refused \
                AcquireFence with the forward's raw transport error (UNAVAILABLE, no \
                ErrorDetail) instead of NO_QUORUM, while its Status said minority; fixed \
                by commit 4862d09 (fresh_leader() ignores a leader whose latest contact \
                failed; a failed forward hop is recorded and typed)",
        open_bug: None,
    },
    Pinned {
        scenario: "loss-and-delay",
        seed: 63,
        found: "raft term 4 has two leaders: node-1 at 6332 ms and node-3 at 6459 ms \
                (node-2 and then node-3 follow node-1); fixed by enabling openraft's single-term-leader",
        open_bug: None,
    },
    Pinned {
        scenario: "symmetric-5",
        seed: 644_132_594,
        found: "raft term 9 has two leaders: node-3 at 8863 ms and node-2 at 8868 ms, \
                after the healed 2-node minority (terms 2..9 while cut off) forced \
                elections in the majority; fixed by enabling openraft's single-term-leader",
        open_bug: None,
    },
    Pinned {
        scenario: "loss-and-delay",
        seed: 5,
        found: "raft term 5 has two leaders: node-3 at 7070 ms and node-1 at 7086 ms \
                (node-2 then follows node-1); fixed by enabling openraft's single-term-leader",
        open_bug: None,
    },
    Pinned {
        scenario: "promotion-5",
        seed: 1,
        found: "a promotion of 2 survivors never formed its group: node-3 (sent the order \
                first) restarted at term 2 and answered the seed's vote requests with the \
                order as proof, so the seed node-1 was fenced 1 ms before its own order \
                arrived and refused it (\"fenced by a higher term; rejoin it instead\"); \
                fixed in promotion.rs: a survivor fenced by exactly the order's new term \
                carries the order out",
        open_bug: None,
    },
    Pinned {
        scenario: "promotion-5",
        seed: 20_436,
        found: "old-side-fenced flagged node-4, which did report fenced: the client saw it \
                in node-4's Status and the run ended 13 ms later, before node-4's observer \
                sampled its view again (every 50 ms); a checker gap, fixed by logging the \
                view the client saw (10,000-run sweep of 2026-12-05)",
        open_bug: None,
    },
    Pinned {
        scenario: "shards-promotion-3",
        seed: 1,
        found: "after a promotion the agents never caught up with the new group: the cache \
                replica kept following an old-side voter that reported fenced, and agents \
                kept reading its old versions from the cache (and from fenced voters); \
                fixed: a cache replica leaves a voter that reports fenced \
                (replica/follow.rs), an agent scores a fenced answer as a failure and \
                reads elsewhere (agent reads/mod.rs, run.rs)",
        open_bug: None,
    },
    Pinned {
        scenario: "shards-promotion-3",
        seed: 40_036,
        found: "after a promotion agent-1 never caught up: during the split the old side \
                (still the authority then) took cache/cache-1 v2, the new group started \
                from the survivor's v1 and nothing republished that scope under term 2, so \
                the cache refuses the survivor's v1 as a rollback and serves the old state; \
                agent-1 took the cache's node/agent-1 v4 as current and never asked node-1, \
                which holds v5 and v6 of term 2 (chaos sweep of 2026-12-06). Fixed on the \
                agent's side: an answer from a node in a minority is set aside while the \
                others are asked (agent reads/mod.rs), and a cache replica times its last \
                confirmation on tokio's clock, so it reports MINORITY after \
                CONFIRM_STALE_AFTER in the simulator too (it never aged there). The cache \
                itself kept the old side's assignment until the control plane published \
                past it; fixed since in the control plane too: a promotion marks every \
                published scope dirty and a publication numbers above PostgreSQL's record \
                (snapshots/publish.rs)",
        open_bug: None,
    },
    Pinned {
        scenario: "shards-promotion-3",
        seed: 40_026,
        found: "the same: the old side took cache/cache-1 v5 during the split, the new group \
                holds an older one and no republish follows; both agents kept v1 of scopes \
                the new group has at v4, read from the stuck cache; fixed as seed 40036",
        open_bug: None,
    },
    Pinned {
        scenario: "loss-and-delay",
        seed: 50_010,
        found: "no leader after the heal: from 4200 ms on all three voters campaign in \
                lockstep every 750 ms (terms 5, 6, 7, ... 39), each votes for itself and no \
                election is won, although their election timeouts differ (633, 645 and \
                670 ms); the run ends non-recoverable (chaos sweep of 2026-12-06 over every \
                scenario, 460 runs; older than the work that found it). Cause: openraft \
                0.9 draws its election timeout once per process and checks it only on a \
                tick of 1.5 heartbeats (150 ms), so 633, 645 and 670 ms all fire on the \
                fifth tick, and the voters' ticks line up because they started together. \
                Fixed in authority node/failover.rs: a candidate without a leader campaigns \
                again after a delay drawn afresh per term from [lease / 2, lease)",
        open_bug: None,
    },
    Pinned {
        scenario: "promotion-rejoin-5",
        seed: 80_062,
        found: "the operator could not bring node-4 back: 18 ms after node-3 rejoined, the \
                group's status (asked of a survivor that had not probed the two members just \
                added) said 2 of 4 voters reachable, and rejoin_member refused NO_QUORUM \
                (chaos sweep of 2026-12-06, 400 runs); fixed in authority \
                client/orders.rs: a rejoin waits up to REJOIN_QUORUM_WAIT for the group to \
                show its quorum before it refuses",
        open_bug: None,
    },
    Pinned {
        scenario: "crash-storm-5",
        seed: 100_033,
        found: "three of five voters up and no leader for good: node-1, the old leader, \
                restarted with the longest log and refused node-2's shorter one, while node-2 \
                retried every 300-600 ms and node-1's own timer fired every 1050 ms, so each \
                of node-1's campaigns came a term behind (terms 2..55; chaos sweep of \
                2026-12-06, about 3,300 runs). The early campaign after refusing a shorter \
                log needed a leader contact, which a restarted node has none of; fixed in \
                authority node/failover.rs: with none, silence counts from the start",
        open_bug: None,
    },
];

// Why the two-leaders seeds failed, and what fixed them: openraft 0.9
// without the `single-term-leader` feature identifies a leader by (term,
// node id) and orders votes by that pair, so a voter that voted for (t, a)
// still granted (t, b) when b > a and the lease ran out; both won term t.
// The workspace now enables `single-term-leader` (root Cargo.toml).

fn check(pinned: &Pinned) -> Result<(), String> {
    let scenario = scenarios::by_name(pinned.scenario, pinned.seed)
        .ok_or_else(|| format!("unknown scenario {:?}", pinned.scenario))?;
    let report = run(pinned.seed, &scenario);
    println!(
        "regression {} seed={}: {}",
        pinned.scenario,
        pinned.seed,
        report.summary()
    );
    report.into_result().map(|_| ()).map_err(|failure| {
        format!(
            "pinned seed {} of {} fails again (it found: {})\n{failure}",
            pinned.seed, pinned.scenario, pinned.found
        )
    })
}

// Goal: no fixed bug comes back. Method: run every pinned seed whose bug
// is fixed; all must pass.
#[test]
fn pinned_seeds() {
    let failures: Vec<String> = PINNED
        .iter()
        .filter(|p| p.open_bug.is_none())
        .filter_map(|p| check(p).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// Goal: reproduce each open bug. Method: run the pinned seeds whose bug is
// still open; they fail until it is fixed (then move them to
// `open_bug: None`).
#[test]
#[ignore = "reproduces open bugs (see PINNED): fails until they are fixed"]
fn pinned_seeds_of_open_bugs() {
    let failures: Vec<String> = PINNED
        .iter()
        .filter(|p| p.open_bug.is_some())
        .filter_map(|p| {
            check(p)
                .err()
                .map(|f| format!("open bug: {}\n{f}", p.open_bug.unwrap_or_default()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// Goal: every pinned scenario name still exists and the replay command
// names this binary. Method: look each name up.
#[test]
fn pinned_names_are_known() {
    for pinned in PINNED {
        assert!(
            scenarios::NAMES.contains(&pinned.scenario),
            "{} is not a scenario",
            pinned.scenario
        );
    }
    assert!(seed::replay_command("x", 1).contains("--test it x"));
}
