//! The checker: reads a whole history and names every broken rule.
//!
//! * `fence-unique`: no two granted fences are equal.
//! * `fence-linearizable`: the fence counter is linearizable: when one
//!   grant completed before another was invoked, its fence is the
//!   smaller. (Granted fences strictly increase in real-time order;
//!   with unique values that is exactly a linearization of a counter
//!   whose refused and unknown increments may or may not have happened.)
//! * `fence-not-lost`: the fence granted after the final heal is above
//!   every fence acknowledged before, so no acknowledged grant was lost
//!   across kills and restarts.
//! * `truth-fences-increase`: the fences of the mutations PostgreSQL
//!   accepted strictly increase along its event ids, so no mutation was
//!   accepted with a fence not newer than one accepted before it.
//! * `mutation-as-answered`: a mutation answered done left its register
//!   in the state it asked for.
//! * `refused-write-no-effect`: a mutation answered refused left its
//!   register in the state it had before (a refused write never took
//!   effect); unknown answers and failed read-backs constrain nothing.
//! * `one-body-per-version`: every envelope seen (read, watched,
//!   published, served as head) of one scope and version has one content
//!   hash.
//! * `agent-versions-increase`: each agent's accepted envelopes of a
//!   scope, in invoke order, go strictly up when fresh, and a not-fresh
//!   one is the version the agent held.
//! * `publication-not-lost`: after the final heal the group serves, for
//!   every scope, a head at or above every version PostgreSQL recorded as
//!   published.
//! * `converged-after-heal`: after the final heal every storage node
//!   agreed on one leader and term within the bound.

use crate::history::{Detail, Op, Outcome};
use std::collections::BTreeMap;

/// Most examples kept per rule (the count is exact).
pub const EXAMPLES_PER_RULE_MAX: usize = 5;

/// The kind of a fenced control-plane mutation.
const KIND_MUTATION: &str = "mutation";
/// The kinds of an envelope accepted by an agent's verifier.
const KINDS_AGENT: [&str; 2] = ["read", "watch"];
/// The kind of an envelope PostgreSQL recorded as published.
const KIND_PUBLICATION: &str = "publication";
/// The kind of an envelope served by the group after the final heal.
const KIND_HEAD: &str = "head";

/// What the harness learned after the final heal.
#[derive(Clone, Debug, Default)]
pub struct Final {
    /// The fence granted after the final heal (`None`: none could be had).
    pub fence: Option<(u64, u64)>,
    /// Every fenced mutation PostgreSQL accepted (audit rows with result ok and a fence), in event-id order: (event id, action, (term, seq)).
    pub truth: Vec<(u64, String, (u64, u64))>,
}

/// A broken rule, with examples.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Broken {
    /// How many times.
    pub count: u64,
    /// The first few, in words.
    pub examples: Vec<String>,
}

/// Violations by rule.
pub type Violations = BTreeMap<&'static str, Broken>;

fn note(violations: &mut Violations, rule: &'static str, example: impl FnOnce() -> String) {
    let broken = violations.entry(rule).or_default();
    broken.count += 1;
    if broken.examples.len() < EXAMPLES_PER_RULE_MAX {
        broken.examples.push(example());
    }
}

fn describe(op: &Op) -> String {
    let (term, seq) = op.fence().unwrap_or_default();
    format!(
        "{} via {} [{}..{} ms] fence ({term}, {seq})",
        op.process, op.node, op.invoke_ms, op.complete_ms
    )
}

/// One envelope an operation saw (its detail is a shard and it is done).
struct Envelope<'a> {
    op: &'a Op,
    scope: &'a str,
    version: u64,
    hash: &'a str,
    fresh: bool,
}

impl<'a> Envelope<'a> {
    fn of(op: &'a Op) -> Option<Self> {
        match (&op.outcome, &op.detail) {
            (
                Outcome::Done,
                Detail::Shard {
                    scope,
                    version,
                    hash,
                    fresh,
                    ..
                },
            ) => Some(Envelope {
                op,
                scope,
                version: *version,
                hash,
                fresh: *fresh,
            }),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        let held = if !KINDS_AGENT.contains(&self.op.kind.as_str()) {
            ""
        } else if self.fresh {
            " (fresh)"
        } else {
            " (held)"
        };
        format!(
            "{}{held} by {} via {} [{}..{} ms] of {} version {} hash {}",
            self.op.kind,
            self.op.process,
            self.op.node,
            self.op.invoke_ms,
            self.op.complete_ms,
            self.scope,
            self.version,
            self.hash,
        )
    }
}

fn describe_mutation(op: &Op, key: &str, before: bool, asked: bool, after: bool) -> String {
    format!(
        "{} via {} [{}..{} ms] {} {key}: before {before}, asked {asked}, read back {after}",
        op.process,
        op.node,
        op.invoke_ms,
        op.complete_ms,
        op.outcome.kind(),
    )
}

/// Checks every rule over `history`; `end` is what the harness learned
/// after the final heal.
pub fn check(history: &[Op], end: &Final) -> Violations {
    let mut violations = Violations::new();
    check_fences(history, end.fence, &mut violations);
    check_truth(&end.truth, &mut violations);
    check_mutations(history, &mut violations);
    let envelopes: Vec<Envelope> = history.iter().filter_map(Envelope::of).collect();
    check_one_body(&envelopes, &mut violations);
    check_agents(&envelopes, &mut violations);
    check_publications(&envelopes, &mut violations);
    violations
}

/// `fence-unique`, `fence-linearizable` and `fence-not-lost`.
fn check_fences(history: &[Op], final_fence: Option<(u64, u64)>, violations: &mut Violations) {
    let granted: Vec<&Op> = history.iter().filter(|op| op.fence().is_some()).collect();

    let mut seen: BTreeMap<(u64, u64), &Op> = BTreeMap::new();
    for op in &granted {
        let fence = op.fence().unwrap_or_default();
        if let Some(first) = seen.insert(fence, op) {
            note(violations, "fence-unique", || {
                format!("{} and {}", describe(first), describe(op))
            });
        }
    }

    // Sweep the grants by invoke time; `done` holds those completed
    // before the current invoke, with the largest fence among them.
    let mut by_complete = granted.clone();
    by_complete.sort_by_key(|op| op.complete_ms);
    let mut by_invoke = granted.clone();
    by_invoke.sort_by_key(|op| op.invoke_ms);
    let mut done = 0;
    let mut largest: Option<&Op> = None;
    for op in by_invoke {
        while done < by_complete.len() && by_complete[done].complete_ms < op.invoke_ms {
            let candidate = by_complete[done];
            if largest.is_none_or(|l| candidate.fence() > l.fence()) {
                largest = Some(candidate);
            }
            done += 1;
        }
        if let Some(before) = largest
            && before.fence() >= op.fence()
        {
            note(violations, "fence-linearizable", || {
                format!(
                    "{} completed before {} began",
                    describe(before),
                    describe(op)
                )
            });
        }
    }

    let acknowledged = granted.iter().filter_map(|op| op.fence()).max();
    match (acknowledged, final_fence) {
        (Some(max), Some(last)) if last <= max => {
            note(violations, "fence-not-lost", || {
                format!(
                    "after the heal the group granted {last:?}, not above the acknowledged {max:?}"
                )
            });
        }
        (Some(max), None) => {
            note(violations, "fence-not-lost", || {
                format!("no fence could be had after the heal (acknowledged up to {max:?})")
            });
        }
        _ => {}
    }
}

/// `truth-fences-increase`: each accepted fence is above the largest
/// accepted at a smaller event id.
fn check_truth(truth: &[(u64, String, (u64, u64))], violations: &mut Violations) {
    let mut rows: Vec<&(u64, String, (u64, u64))> = truth.iter().collect();
    rows.sort_by_key(|row| row.0);
    let mut largest: Option<&(u64, String, (u64, u64))> = None;
    for row in rows {
        let (id, action, fence) = row;
        match largest {
            Some(before) if before.2 >= *fence => {
                let (before_id, before_action, before_fence) = before;
                note(violations, "truth-fences-increase", || {
                    format!(
                        "event {id} ({action}) was accepted with fence {fence:?}, not above \
                         event {before_id} ({before_action}) with fence {before_fence:?}"
                    )
                });
            }
            _ => largest = Some(row),
        }
    }
}

/// `mutation-as-answered` and `refused-write-no-effect`.
fn check_mutations(history: &[Op], violations: &mut Violations) {
    for op in history.iter().filter(|op| op.kind == KIND_MUTATION) {
        let &Detail::Mutation {
            ref key,
            before,
            asked,
            after: Some(after),
        } = &op.detail
        else {
            continue;
        };
        let describe = || describe_mutation(op, key, before, asked, after);
        match &op.outcome {
            Outcome::Done if after != asked => {
                note(violations, "mutation-as-answered", describe);
            }
            Outcome::Refused { code } if after != before => {
                note(violations, "refused-write-no-effect", || {
                    format!("{} (refused {code})", describe())
                });
            }
            _ => {}
        }
    }
}

/// `one-body-per-version`: the first envelope seen of a (scope,
/// version) fixes its hash; every other hash is a violation.
fn check_one_body(envelopes: &[Envelope], violations: &mut Violations) {
    let mut first: BTreeMap<(&str, u64), &Envelope> = BTreeMap::new();
    for envelope in envelopes {
        let known = *first
            .entry((envelope.scope, envelope.version))
            .or_insert(envelope);
        if known.hash != envelope.hash {
            note(violations, "one-body-per-version", || {
                format!("{} and {}", known.describe(), envelope.describe())
            });
        }
    }
}

/// `agent-versions-increase`: per (process, scope), in invoke order.
fn check_agents(envelopes: &[Envelope], violations: &mut Violations) {
    let mut accepted: Vec<&Envelope> = envelopes
        .iter()
        .filter(|e| KINDS_AGENT.contains(&e.op.kind.as_str()))
        .collect();
    // Stable: ties keep history order.
    accepted.sort_by_key(|e| e.op.invoke_ms);
    // (process, scope) -> (largest version seen, last one seen).
    let mut held: BTreeMap<(&str, &str), (&Envelope, &Envelope)> = BTreeMap::new();
    for envelope in accepted {
        let key = (envelope.op.process.as_str(), envelope.scope);
        match held.get_mut(&key) {
            None => {
                held.insert(key, (envelope, envelope));
            }
            Some((largest, last)) => {
                if envelope.fresh && envelope.version <= largest.version {
                    let largest = *largest;
                    note(violations, "agent-versions-increase", || {
                        format!(
                            "{} is not above {} seen before",
                            envelope.describe(),
                            largest.describe()
                        )
                    });
                } else if !envelope.fresh && envelope.version != last.version {
                    let last = *last;
                    note(violations, "agent-versions-increase", || {
                        format!(
                            "{} is not the {} held",
                            envelope.describe(),
                            last.describe()
                        )
                    });
                }
                if envelope.version > largest.version {
                    *largest = envelope;
                }
                *last = envelope;
            }
        }
    }
}

/// `publication-not-lost`: every published version is at or below the
/// largest head served for its scope.
fn check_publications(envelopes: &[Envelope], violations: &mut Violations) {
    let mut heads: BTreeMap<&str, u64> = BTreeMap::new();
    for head in envelopes.iter().filter(|e| e.op.kind == KIND_HEAD) {
        let largest = heads.entry(head.scope).or_insert(head.version);
        *largest = (*largest).max(head.version);
    }
    for published in envelopes.iter().filter(|e| e.op.kind == KIND_PUBLICATION) {
        match heads.get(published.scope) {
            Some(&head) if head >= published.version => {}
            Some(&head) => note(violations, "publication-not-lost", || {
                format!(
                    "{} but after the heal the group served version {head}",
                    published.describe()
                )
            }),
            None => note(violations, "publication-not-lost", || {
                format!(
                    "{} but the group served no head of scope {} after the heal",
                    published.describe(),
                    published.scope
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: &str, invoke: u64, complete: u64, fence: Option<(u64, u64)>) -> Op {
        Op {
            process: process.into(),
            kind: "fence".into(),
            node: "s1".into(),
            invoke_ms: invoke,
            complete_ms: complete,
            outcome: match fence {
                Some((term, seq)) => Outcome::Ok { term, seq },
                None => Outcome::Unknown {
                    reason: "timeout".into(),
                },
            },
            detail: Detail::None,
        }
    }

    fn refused() -> Outcome {
        Outcome::Refused {
            code: "STALE_FENCE".into(),
        }
    }

    fn unknown() -> Outcome {
        Outcome::Unknown {
            reason: "timeout".into(),
        }
    }

    /// A mutation of `s1/gateway` at `invoke`.
    fn mutation(
        invoke: u64,
        outcome: Outcome,
        before: bool,
        asked: bool,
        after: Option<bool>,
    ) -> Op {
        Op {
            process: "mutator-1".into(),
            kind: KIND_MUTATION.into(),
            node: "controlplane".into(),
            invoke_ms: invoke,
            complete_ms: invoke + 5,
            outcome,
            detail: Detail::Mutation {
                key: "s1/gateway".into(),
                before,
                asked,
                after,
            },
        }
    }

    /// A done envelope op of `kind` by `process` at `invoke`; the hash
    /// is `h<version>` unless given.
    fn shard(kind: &str, process: &str, invoke: u64, scope: &str, version: u64, fresh: bool) -> Op {
        shard_hash(
            kind,
            process,
            invoke,
            scope,
            version,
            &format!("h{version}"),
            fresh,
        )
    }

    fn shard_hash(
        kind: &str,
        process: &str,
        invoke: u64,
        scope: &str,
        version: u64,
        hash: &str,
        fresh: bool,
    ) -> Op {
        Op {
            process: process.into(),
            kind: kind.into(),
            node: "s1".into(),
            invoke_ms: invoke,
            complete_ms: invoke + 1,
            outcome: Outcome::Done,
            detail: Detail::Shard {
                scope: scope.into(),
                version,
                term: 1,
                hash: hash.into(),
                fresh,
            },
        }
    }

    fn fenced(fence: (u64, u64)) -> Final {
        Final {
            fence: Some(fence),
            truth: Vec::new(),
        }
    }

    fn truth(rows: &[(u64, &str, (u64, u64))]) -> Final {
        Final {
            fence: None,
            truth: rows
                .iter()
                .map(|&(id, action, fence)| (id, action.to_string(), fence))
                .collect(),
        }
    }

    // Goal: a good history passes, overlapping grants may come in any
    // order, and unknown operations constrain nothing. Method: a history
    // by hand.
    #[test]
    fn a_good_history_passes() {
        let history = vec![
            op("c1", 0, 10, Some((1, 1))),
            op("c2", 5, 30, Some((1, 3))),
            op("c3", 6, 20, Some((1, 2))),
            op("c1", 11, 500, None),
            op("c1", 40, 50, Some((1, 5))),
            op("c2", 60, 70, Some((2, 1))),
        ];
        assert_eq!(check(&history, &fenced((2, 2))), Violations::new());
    }

    // Goal: a good history with every kind of operation passes: done,
    // refused and unknown mutations, fresh and held envelopes of two
    // agents, publications below or at their heads, operator actions,
    // and increasing accepted fences. Method: a history by hand.
    #[test]
    fn a_good_history_with_all_kinds_passes() {
        let history = vec![
            op("c1", 0, 10, Some((1, 1))),
            mutation(1, Outcome::Done, false, true, Some(true)),
            mutation(2, refused(), true, false, Some(true)),
            mutation(3, unknown(), true, false, Some(false)),
            mutation(4, Outcome::Done, false, true, None),
            shard("publication", "publications", 5, "node/s1", 1, false),
            shard("publication", "publications", 6, "node/s1", 2, false),
            shard("publication", "publications", 6, "role/gateway", 1, false),
            shard("read", "agent-1", 7, "node/s1", 1, true),
            shard("watch", "agent-1", 8, "node/s1", 1, false),
            shard("watch", "agent-1", 9, "node/s1", 2, true),
            shard("read", "agent-2", 9, "node/s1", 2, true),
            shard("read", "agent-1", 9, "role/gateway", 1, true),
            shard("read", "agent-2", 10, "node/s1", 2, false),
            Op {
                process: "operator".into(),
                kind: "promote".into(),
                node: "controlplane".into(),
                invoke_ms: 11,
                complete_ms: 12,
                outcome: Outcome::Done,
                detail: Detail::Operator {
                    nodes: vec!["s2".into(), "s3".into()],
                    term: 2,
                },
            },
            op("c1", 20, 30, Some((2, 1))),
            shard("head", "heads", 40, "node/s1", 3, false),
            shard("head", "heads", 40, "role/gateway", 1, false),
        ];
        let end = Final {
            fence: Some((2, 2)),
            truth: truth(&[
                (1, "assign", (1, 1)),
                (4, "unassign", (1, 2)),
                (9, "assign", (2, 1)),
            ])
            .truth,
        };
        assert_eq!(check(&history, &end), Violations::new());
    }

    // Goal: each fence rule catches its violation and counts it. Method:
    // one history per rule.
    #[test]
    fn each_rule_catches_its_violation() {
        let duplicate = vec![
            op("c1", 0, 10, Some((1, 1))),
            op("c2", 20, 30, Some((1, 1))),
        ];
        let found = check(&duplicate, &fenced((1, 9)));
        assert_eq!(found["fence-unique"].count, 1);

        let stale = vec![
            op("c1", 0, 10, Some((1, 5))),
            op("c2", 20, 30, Some((1, 4))),
            op("c3", 40, 50, Some((1, 3))),
        ];
        let found = check(&stale, &fenced((1, 9)));
        assert_eq!(found["fence-linearizable"].count, 2, "{found:?}");
        assert!(!found.contains_key("fence-unique"));

        let lost = vec![op("c1", 0, 10, Some((1, 5)))];
        assert_eq!(check(&lost, &fenced((1, 5)))["fence-not-lost"].count, 1);
        assert_eq!(check(&lost, &Final::default())["fence-not-lost"].count, 1);
        assert!(
            check(&lost, &fenced((2, 1))).is_empty(),
            "a new term is above"
        );
    }

    // Goal: an accepted fence not above every one accepted at a smaller
    // event id is caught, each time, with both events named; a new term
    // with a small seq is above. Method: audit rows by hand.
    #[test]
    fn truth_fences_must_increase() {
        let good = truth(&[(1, "assign", (1, 7)), (2, "assign", (2, 1))]);
        assert!(check(&[], &good).is_empty());

        let bad = truth(&[
            (1, "assign", (1, 5)),
            (2, "unassign", (1, 5)),
            (3, "assign", (1, 4)),
            (4, "assign", (1, 6)),
        ]);
        let found = check(&[], &bad);
        assert_eq!(found.len(), 1, "{found:?}");
        let broken = &found["truth-fences-increase"];
        assert_eq!(broken.count, 2);
        assert!(
            broken.examples[0].contains("event 2 (unassign)"),
            "{broken:?}"
        );
        assert!(
            broken.examples[0].contains("event 1 (assign)"),
            "{broken:?}"
        );
        assert!(
            broken.examples[1].contains("event 3 (assign)"),
            "{broken:?}"
        );
    }

    // Goal: a done mutation whose read-back is not what it asked for is
    // caught; one with a failed read-back, an unknown one, or one read
    // back as asked is not. Method: mutations by hand.
    #[test]
    fn a_done_mutation_took_effect() {
        let history = vec![
            mutation(0, Outcome::Done, false, true, Some(false)),
            mutation(1, Outcome::Done, true, false, Some(true)),
            mutation(2, Outcome::Done, false, true, Some(true)),
            mutation(3, Outcome::Done, false, true, None),
            mutation(4, unknown(), false, true, Some(false)),
        ];
        let found = check(&history, &Final::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found["mutation-as-answered"].count, 2);
    }

    // Goal: a refused mutation whose read-back differs from the state
    // before is caught; a failed read-back, an unknown answer, or the
    // state before read back is not. Method: mutations by hand.
    #[test]
    fn a_refused_mutation_had_no_effect() {
        let history = vec![
            mutation(0, refused(), false, true, Some(true)),
            mutation(1, refused(), false, true, Some(false)),
            mutation(2, refused(), false, true, None),
            mutation(3, unknown(), false, true, Some(true)),
            mutation(4, unknown(), false, true, Some(false)),
        ];
        let found = check(&history, &Final::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found["refused-write-no-effect"].count, 1);
    }

    // Goal: two hashes for one (scope, version) are caught across kinds,
    // once per envelope that differs from the first; the same hash seen
    // many times, other versions or scopes, and not-done operations are
    // not. Method: envelopes by hand.
    #[test]
    fn one_body_per_version() {
        let mut unknown_read = shard_hash("read", "agent-2", 9, "node/s1", 1, "other", true);
        unknown_read.outcome = unknown();
        let history = vec![
            shard_hash("publication", "publications", 0, "node/s1", 1, "aa", false),
            shard_hash("read", "agent-1", 1, "node/s1", 1, "aa", true),
            shard_hash("watch", "agent-2", 2, "node/s1", 1, "bb", true),
            shard_hash("read", "agent-3", 2, "node/s1", 2, "bb", true),
            shard_hash("read", "agent-3", 2, "node/s2", 1, "bb", true),
            unknown_read,
            shard_hash("head", "heads", 3, "node/s1", 1, "cc", false),
            shard_hash("head", "heads", 3, "node/s2", 1, "bb", false),
        ];
        let found = check(&history, &Final::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found["one-body-per-version"].count, 2);
    }

    // Goal: per agent and scope in invoke order, a fresh envelope not
    // above every one seen before, and a held one that is not the last
    // seen, are caught; a held one equal to the last, other agents and
    // scopes, and a first held one are not; ties in invoke time keep
    // history order. Method: envelopes by hand, out of invoke order.
    #[test]
    fn agent_versions_increase() {
        let good = vec![
            shard("read", "agent-1", 5, "node/s1", 3, false),
            shard("watch", "agent-1", 6, "node/s1", 4, true),
            shard("read", "agent-1", 7, "node/s1", 4, false),
            shard("read", "agent-1", 7, "node/s1", 5, true),
            shard("read", "agent-2", 1, "node/s1", 1, true),
            shard("read", "agent-1", 2, "role/gateway", 1, true),
        ];
        let found = check(&good, &Final::default());
        assert!(found.is_empty(), "{found:?}");

        let bad = vec![
            shard("read", "agent-1", 10, "node/s1", 4, true),
            shard("read", "agent-1", 20, "node/s1", 4, true),
            shard("watch", "agent-1", 30, "node/s1", 3, true),
            shard("read", "agent-1", 40, "node/s1", 5, false),
            shard("read", "agent-1", 0, "node/s1", 1, true),
            shard("read", "agent-2", 0, "node/s1", 1, true),
        ];
        let found = check(&bad, &Final::default());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found["agent-versions-increase"].count, 3);
    }

    // Goal: a publication above the largest head of its scope, or of a
    // scope with no head at all, is caught; one at or below a head is
    // not, and not-done heads do not count. Method: envelopes by hand.
    #[test]
    fn publication_not_lost() {
        let good = vec![
            shard("publication", "publications", 0, "node/s1", 2, false),
            shard("publication", "publications", 1, "node/s1", 3, false),
            shard("head", "heads", 9, "node/s1", 3, false),
            shard("head", "heads", 9, "node/s1", 2, false),
        ];
        assert!(check(&good, &Final::default()).is_empty());

        let mut lost_head = shard("head", "heads", 9, "node/s2", 1, false);
        lost_head.outcome = unknown();
        let bad = vec![
            shard("publication", "publications", 0, "node/s1", 4, false),
            shard("publication", "publications", 1, "node/s2", 1, false),
            shard("head", "heads", 9, "node/s1", 3, false),
            lost_head,
        ];
        let found = check(&bad, &Final::default());
        assert_eq!(found.len(), 1, "{found:?}");
        let broken = &found["publication-not-lost"];
        assert_eq!(broken.count, 2);
        assert!(
            broken.examples[1].contains("no head of scope node/s2"),
            "{broken:?}"
        );
    }
}
