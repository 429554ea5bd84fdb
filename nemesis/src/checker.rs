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
//! * `converged-after-heal`: after the final heal every storage node
//!   agreed on one leader and term within the bound.

use crate::history::Op;
use std::collections::BTreeMap;

/// Most examples kept per rule (the count is exact).
pub const EXAMPLES_PER_RULE_MAX: usize = 5;

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

/// Checks the fence rules over `history`; `final_fence` is the fence
/// granted after the final heal (`None`: none could be had).
pub fn check(history: &[Op], final_fence: Option<(u64, u64)>) -> Violations {
    let mut violations = Violations::new();
    let granted: Vec<&Op> = history.iter().filter(|op| op.fence().is_some()).collect();

    let mut seen: BTreeMap<(u64, u64), &Op> = BTreeMap::new();
    for op in &granted {
        let fence = op.fence().unwrap_or_default();
        if let Some(first) = seen.insert(fence, op) {
            note(&mut violations, "fence-unique", || {
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
            note(&mut violations, "fence-linearizable", || {
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
            note(&mut violations, "fence-not-lost", || {
                format!(
                    "after the heal the group granted {last:?}, not above the acknowledged {max:?}"
                )
            });
        }
        (Some(max), None) => {
            note(&mut violations, "fence-not-lost", || {
                format!("no fence could be had after the heal (acknowledged up to {max:?})")
            });
        }
        _ => {}
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Outcome;

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
        assert_eq!(check(&history, Some((2, 2))), Violations::new());
    }

    // Goal: each rule catches its violation and counts it. Method: one
    // history per rule.
    #[test]
    fn each_rule_catches_its_violation() {
        let duplicate = vec![
            op("c1", 0, 10, Some((1, 1))),
            op("c2", 20, 30, Some((1, 1))),
        ];
        let found = check(&duplicate, Some((1, 9)));
        assert_eq!(found["fence-unique"].count, 1);

        let stale = vec![
            op("c1", 0, 10, Some((1, 5))),
            op("c2", 20, 30, Some((1, 4))),
            op("c3", 40, 50, Some((1, 3))),
        ];
        let found = check(&stale, Some((1, 9)));
        assert_eq!(found["fence-linearizable"].count, 2, "{found:?}");
        assert!(!found.contains_key("fence-unique"));

        let lost = vec![op("c1", 0, 10, Some((1, 5)))];
        assert_eq!(check(&lost, Some((1, 5)))["fence-not-lost"].count, 1);
        assert_eq!(check(&lost, None)["fence-not-lost"].count, 1);
        assert!(check(&lost, Some((2, 1))).is_empty(), "a new term is above");
    }
}
