//! The oracle: invariants checked over a run's event log (numbered as in
//! docs/ARCHITECTURE.md, "Numbered invariants").
//!
//! * [`fences_unique_and_increasing`] (invariant 1): no two calls get the
//!   same `(authority_term, seq)`; in log order fences strictly increase
//!   (the fences of one group-commit entry share its log index and
//!   increase within it); a call that started after another ended gets a
//!   larger fence (grants are linearizable).
//! * [`no_minority_grant`] (invariant 2): a call whose node could not
//!   exchange messages with any quorum-holding leader during the whole call
//!   (per the fault [`Timeline`]) must not be granted.
//! * [`one_leader_per_raft_term`]: no two nodes lead, or are named leader,
//!   in one Raft term.
//! * [`minority_refusal`]: such a minority call ends within the node's
//!   write budget (2 × its election timeout) plus network slack, and, once
//!   the partition has settled, is refused with `NO_QUORUM`.
//! * [`minority_view`]: a node answering a settled minority call reports
//!   its partition view as `minority`.
//! * [`no_call_hangs`]: no call, anywhere, runs into the client's own
//!   deadline (writes never hang).
//! * [`acknowledged_fences_survive`]: after heal every node has applied
//!   every acknowledged fence, and all report the same state.
//! * [`one_body_per_version`]: no two bodies for one (scope, version) of
//!   one authority term, over what the group acknowledged and what agents
//!   accepted; no agent accepts two bodies for one (scope, version).
//! * [`agents_never_accept_a_stale_term`]: no agent accepts an envelope
//!   of a lower authority term than one it accepted before.
//! * [`agents_never_roll_back`]: an agent never accepts a version of a
//!   scope lower than one it accepted before, across its restarts.
//! * [`readers_only`]: no storage node serves an agent a scope whose
//!   readers do not admit it, and no agent accepts one.
//! * [`orders_keep_to_node_clocks`]: a storage node whose clock puts a
//!   fresh order outside its window takes no order and refuses it with
//!   `ORDER_OUTSIDE_WINDOW`; a node inside it never refuses so.
//! * [`truth_fences_increase`]: in the source of truth's commit order, the
//!   fences fenced mutations were applied with strictly increase in
//!   `(term, seq)`: no mutation is accepted with a fence older than one
//!   already accepted.
//! * [`truth_current_term`]: every fenced mutation is applied with a fence
//!   of the term the source of truth records as current at its commit
//!   (none of the old term once a promotion is recorded).
//! * [`mutations_as_answered`]: a mutation answered as applied is in the
//!   source of truth at the end; one answered as refused changed nothing
//!   and has its audit row with the code it was refused with.

use crate::events::{
    Event, FenceCall, NodeIndex, Outcome, Role, ShardEvent, TruthEvent, node_name,
};
use crate::faults::{Sides, Timeline};
use crate::harness::ClusterSpec;
use crate::shards::may_read;
use rap_authority::partition::PartitionView;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which check found it.
    pub invariant: &'static str,
    /// Simulated time it concerns.
    pub at: Duration,
    /// What exactly.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] at {}ms: {}",
            self.invariant,
            self.at.as_millis(),
            self.detail
        )
    }
}

/// What the checkers need to know about the cluster.
#[derive(Clone, Copy, Debug)]
pub struct CheckConfig {
    /// Voters.
    pub nodes: usize,
    /// How long after a fault a minority counts as settled (old leases
    /// and contacts expired): then refusals must be `NO_QUORUM`.
    pub settle: Duration,
    /// Network and scheduling allowance added to the refusal bound: the
    /// client's round trip to the node plus a few ticks.
    pub slack: Duration,
    /// Widening of every call's window on each side, for the one-tick
    /// uncertainty between the harness's and a host's clock.
    pub margin: Duration,
}

impl CheckConfig {
    /// The configuration for `spec`: settle = 2 × the largest election
    /// timeout; slack = 2 × the largest latency + 10 ticks; margin = 2
    /// ticks.
    pub fn for_cluster(spec: &ClusterSpec) -> Self {
        CheckConfig {
            nodes: spec.voters,
            settle: spec.write_budget_max(),
            slack: spec.latency_max * 2 + spec.tick * 10,
            margin: spec.tick * 2,
        }
    }
}

/// Runs every check.
pub fn check_all(events: &[Event], config: &CheckConfig) -> Vec<Violation> {
    let timeline = Timeline::from_events(config.nodes, events);
    let mut violations = Vec::new();
    violations.extend(fences_unique_and_increasing(events));
    violations.extend(no_minority_grant(events, &timeline, config));
    violations.extend(one_leader_per_raft_term(events));
    violations.extend(minority_refusal(events, &timeline, config));
    violations.extend(minority_view(events, &timeline, config));
    violations.extend(no_call_hangs(events));
    violations.extend(acknowledged_fences_survive(events));
    violations.extend(no_unproven_term_believed(events));
    violations.extend(fenced_nodes_grant_nothing(events, config));
    violations.extend(old_side_fenced(events));
    violations.extend(one_body_per_version(events));
    violations.extend(agents_never_roll_back(events));
    violations.extend(agents_never_accept_a_stale_term(events));
    violations.extend(readers_only(events));
    violations.extend(readers_keep_to_their_side(events));
    violations.extend(agents_keep_to_their_clocks(events));
    violations.extend(orders_keep_to_node_clocks(events));
    violations.extend(truth_fences_increase(events));
    violations.extend(truth_current_term(events));
    violations.extend(mutations_as_answered(events));
    violations
}

/// Promotion orders against the storage nodes' clocks
/// ([`crate::clocks::order_window_admits`]).
pub fn orders_keep_to_node_clocks(events: &[Event]) -> Vec<Violation> {
    let outside_code = format!("refused {}", rap_core::codes::ORDER_OUTSIDE_WINDOW);
    let mut skews: BTreeMap<NodeIndex, i64> = BTreeMap::new();
    let mut violations = Vec::new();
    for event in events {
        match event {
            Event::Clock { node, skew_ms, .. } => {
                skews.insert(*node, *skew_ms);
            }
            Event::Promote { at, node, outcome } => {
                let skew = skews.get(node).copied().unwrap_or(0);
                let admits = crate::clocks::order_window_admits(skew);
                let refused_outside = outcome.starts_with(&outside_code);
                let problem = if admits && refused_outside {
                    Some("refused an order inside its clock window")
                } else if !admits && !refused_outside && !outcome.starts_with("timed out") {
                    Some(
                        "answered an order outside its clock window other than ORDER_OUTSIDE_WINDOW",
                    )
                } else {
                    None
                };
                if let Some(problem) = problem {
                    violations.push(Violation {
                        invariant: "order-clock-window",
                        at: *at,
                        detail: format!(
                            "{} (clock {skew} ms off) {problem}: {outcome}",
                            node_name(*node)
                        ),
                    });
                }
            }
            _ => {}
        }
    }
    violations
}

fn truth_events(events: &[Event]) -> impl Iterator<Item = (Duration, &TruthEvent)> {
    events.iter().filter_map(|event| match event {
        Event::Truth { at, what } => Some((*at, what)),
        _ => None,
    })
}

/// Fences applied in the source of truth strictly increase in commit
/// order.
pub fn truth_fences_increase(events: &[Event]) -> Vec<Violation> {
    let mut last: Option<(&str, (u64, u64))> = None;
    let mut violations = Vec::new();
    for (at, what) in truth_events(events) {
        if let TruthEvent::Committed {
            target,
            fence: Some(fence),
        } = what
        {
            if let Some((before, newest)) = last
                && *fence <= newest
            {
                violations.push(Violation {
                    invariant: "truth-fences-increase",
                    at,
                    detail: format!(
                        "{target} applied with fence {}/{} after {before} with {}/{}",
                        fence.0, fence.1, newest.0, newest.1
                    ),
                });
            }
            if last.is_none_or(|(_, newest)| *fence > newest) {
                last = Some((target, *fence));
            }
        }
    }
    violations
}

/// Every fenced mutation is applied with a fence of the recorded term.
pub fn truth_current_term(events: &[Event]) -> Vec<Violation> {
    let mut recorded = None;
    let mut violations = Vec::new();
    for (at, what) in truth_events(events) {
        match what {
            TruthEvent::TermRecorded { term } => recorded = Some(*term),
            TruthEvent::Committed {
                target,
                fence: Some((term, seq)),
            } if recorded != Some(*term) => violations.push(Violation {
                invariant: "truth-current-term",
                at,
                detail: format!(
                    "{target} applied with fence {term}/{seq} while term {} is recorded",
                    recorded.map_or_else(|| "none".to_string(), |t| t.to_string())
                ),
            }),
            _ => {}
        }
    }
    violations
}

/// Answers agree with the source of truth's final state and audit.
pub fn mutations_as_answered(events: &[Event]) -> Vec<Violation> {
    let Some((final_at, keys, audit)) = truth_events(events).find_map(|(at, what)| match what {
        TruthEvent::Final { keys, audit } => Some((at, keys, audit)),
        _ => None,
    }) else {
        return Vec::new();
    };
    let mut violations = Vec::new();
    for (at, what) in truth_events(events) {
        let TruthEvent::Mutation { target, answer, .. } = what else {
            continue;
        };
        let problem = match answer {
            Ok(_) if !keys.contains(target) => {
                Some("answered applied, but not in the truth".into())
            }
            Ok(_) => None,
            Err(_) if keys.contains(target) => {
                Some("answered refused, but applied in the truth".to_string())
            }
            Err(code) => (!audit
                .iter()
                .any(|row| &row.target == target && row.result == "refused" && &row.code == code))
            .then(|| format!("refused {code} without its audit row")),
        };
        if let Some(problem) = problem {
            violations.push(Violation {
                invariant: "mutations-as-answered",
                at,
                detail: format!(
                    "{target}: {problem} (final state at {}ms)",
                    final_at.as_millis()
                ),
            });
        }
    }
    violations
}

/// An agent whose wall clock is off by more than the verifier's tolerance
/// behind, or by more than the envelopes' validity plus the tolerance
/// ahead, accepts nothing: every envelope of the run is not yet valid, or
/// has expired, by its clock ([`crate::shards::clock_in_range`]).
pub fn agents_keep_to_their_clocks(events: &[Event]) -> Vec<Violation> {
    let mut out_of_range = BTreeMap::new();
    let mut violations = Vec::new();
    for (at, what) in shard_events(events) {
        match what {
            ShardEvent::Clock { agent, skew_ms } if !crate::shards::clock_in_range(*skew_ms) => {
                out_of_range.insert(agent.as_str(), *skew_ms);
            }
            ShardEvent::Accepted {
                agent,
                scope,
                version,
                ..
            } => {
                if let Some(skew) = out_of_range.get(agent.as_str()) {
                    violations.push(Violation {
                        invariant: "agent-clock-window",
                        at,
                        detail: format!(
                            "{agent} accepted {scope} v{version} although its clock is {skew} ms off"
                        ),
                    });
                }
            }
            _ => {}
        }
    }
    violations
}

/// The harness's own check of [`Sides`]: no agent accepts an envelope
/// served by a storage node or cache it is cut off from (their homes are
/// on two sides of a partition), or the scenarios that put readers on
/// both sides would test nothing.
pub fn readers_keep_to_their_side(events: &[Event]) -> Vec<Violation> {
    let mut sides = Sides::default();
    let mut violations = Vec::new();
    for event in events {
        match event {
            Event::Shard {
                what: ShardEvent::Home { host, node },
                ..
            } => sides.add_home(host.clone(), *node),
            Event::Fault { fault, .. } => {
                sides.apply(fault);
            }
            Event::Shard {
                at,
                what:
                    ShardEvent::Accepted {
                        agent,
                        scope,
                        version,
                        served_by,
                        ..
                    },
            } if sides.is_cut(agent, served_by) => violations.push(Violation {
                invariant: "readers-keep-to-their-side",
                at: *at,
                detail: format!(
                    "{agent} accepted {scope} v{version} from {served_by}, which it is cut off from"
                ),
            }),
            _ => {}
        }
    }
    violations
}

/// The shard events, with their times.
fn shard_events(events: &[Event]) -> impl Iterator<Item = (Duration, &ShardEvent)> {
    events.iter().filter_map(|e| match e {
        Event::Shard { at, what } => Some((*at, what)),
        _ => None,
    })
}

/// No two bodies for one (scope, version) of one authority term: what the
/// group acknowledged (or showed in its heads) and what every agent
/// accepted agree; and no agent accepts two bodies for one (scope,
/// version) whatever their terms. (After a promotion the old side may
/// have published a version that the new group publishes again with
/// another body: two terms, and no agent may take both.)
pub fn one_body_per_version(events: &[Event]) -> Vec<Violation> {
    let mut in_term: BTreeMap<(&str, u64, u64), (&str, String)> = BTreeMap::new();
    let mut at_agent: BTreeMap<(&str, &str, u64), &str> = BTreeMap::new();
    let mut violations = Vec::new();
    for (at, what) in shard_events(events) {
        let (scope, version, term, body, who) = match what {
            ShardEvent::Published {
                scope,
                version,
                term,
                body,
                ..
            } => (scope, *version, *term, body, "the group".to_string()),
            ShardEvent::Accepted {
                agent,
                scope,
                version,
                term,
                body,
                ..
            } => {
                match at_agent.get(&(agent.as_str(), scope.as_str(), *version)) {
                    Some(seen) if *seen != body.as_str() => violations.push(Violation {
                        invariant: "one-body-per-version",
                        at,
                        detail: format!(
                            "{agent} accepted {scope} v{version} twice: body {seen}, then {body}"
                        ),
                    }),
                    Some(_) => {}
                    None => {
                        at_agent.insert((agent, scope, *version), body);
                    }
                }
                (scope, *version, *term, body, agent.clone())
            }
            ShardEvent::Served { .. } | ShardEvent::Home { .. } | ShardEvent::Clock { .. } => {
                continue;
            }
        };
        match in_term.get(&(scope.as_str(), version, term)) {
            None => {
                in_term.insert((scope, version, term), (body, who));
            }
            Some((seen, by)) if *seen != body.as_str() => violations.push(Violation {
                invariant: "one-body-per-version",
                at,
                detail: format!(
                    "{scope} v{version} term {term}: body {body} at {who}, body {seen} at {by} before"
                ),
            }),
            Some(_) => {}
        }
    }
    violations
}

/// No agent accepts an envelope of a lower authority term than one it
/// accepted before (any scope, any incarnation): once it has seen the
/// term a promotion made, the old side's envelopes are refused.
pub fn agents_never_accept_a_stale_term(events: &[Event]) -> Vec<Violation> {
    never_lower(events, "agent-no-stale-term", |agent, _, _, term| {
        (agent, term)
    })
}

/// An agent never accepts a version of a scope lower than one it accepted
/// before, whichever incarnation accepted it.
pub fn agents_never_roll_back(events: &[Event]) -> Vec<Violation> {
    never_lower(events, "agent-no-rollback", |agent, scope, version, _| {
        ((agent, scope), version)
    })
}

/// What an agent accepted, as the checkers name it.
fn acceptance(what: &ShardEvent) -> Option<(&str, &str, u64, u64, String)> {
    match what {
        ShardEvent::Accepted {
            agent,
            incarnation,
            scope,
            version,
            term,
            ..
        } => Some((
            agent,
            scope,
            *version,
            *term,
            format!("{agent}#{incarnation} accepted {scope} v{version} of term {term}"),
        )),
        _ => None,
    }
}

/// Per key that `key` draws from an acceptance (agent, scope, version,
/// term), the value it draws never goes down from one acceptance to a
/// later one.
fn never_lower<'a, K: Ord>(
    events: &'a [Event],
    invariant: &'static str,
    key: impl Fn(&'a str, &'a str, u64, u64) -> (K, u64),
) -> Vec<Violation> {
    let mut highest: BTreeMap<K, (u64, String)> = BTreeMap::new();
    let mut violations = Vec::new();
    for (at, what) in shard_events(events) {
        let Some((agent, scope, version, term, said)) = acceptance(what) else {
            continue;
        };
        let (k, value) = key(agent, scope, version, term);
        match highest.get(&k) {
            Some((before, then)) if value < *before => violations.push(Violation {
                invariant,
                at,
                detail: format!("{said}, after {then}"),
            }),
            Some((before, _)) if value == *before => {}
            _ => {
                highest.insert(k, (value, said));
            }
        }
    }
    violations
}

/// No scope reaches an agent that its readers do not admit: a storage node
/// that serves one (to the agent's own certificate) and an agent that
/// accepts one both break it.
pub fn readers_only(events: &[Event]) -> Vec<Violation> {
    shard_events(events)
        .filter_map(|(at, what)| match what {
            ShardEvent::Served {
                agent,
                scope,
                version,
                served_by,
            } => Some(Violation {
                invariant: "readers-only",
                at,
                detail: format!("{served_by} served {agent} {scope} v{version}; its readers do not admit {agent}"),
            }),
            ShardEvent::Accepted {
                agent,
                scope,
                version,
                ..
            } if !may_read(agent, scope) => Some(Violation {
                invariant: "readers-only",
                at,
                detail: format!("{agent} accepted {scope} v{version}, which it may not read"),
            }),
            _ => None,
        })
        .collect()
}

/// When each node reported `fenced` first, and the authority term it ran
/// at then.
fn fenced_since(events: &[Event]) -> BTreeMap<NodeIndex, (Duration, u64)> {
    let mut term_of: BTreeMap<NodeIndex, u64> = BTreeMap::new();
    let mut since = BTreeMap::new();
    for event in events {
        match event {
            Event::Raft {
                node,
                authority_term,
                ..
            } => {
                term_of.insert(*node, *authority_term);
            }
            Event::View {
                at,
                node,
                view: PartitionView::Fenced,
            } => {
                let term = term_of.get(node).copied().unwrap_or_default();
                since.entry(*node).or_insert((*at, term));
            }
            _ => {}
        }
    }
    since
}

/// A node that knows of a higher authority term (it reports `fenced`)
/// grants nothing more at its old term through itself: a call sent to it
/// after it said so gets no fence of that term or below. (A survivor may
/// be fenced by its own promotion an instant before it carries it out;
/// its fences at the new term are the point.)
pub fn fenced_nodes_grant_nothing(events: &[Event], config: &CheckConfig) -> Vec<Violation> {
    let since = fenced_since(events);
    calls(events)
        .filter_map(|call| {
            let (term, _, _) = call.granted()?;
            let (fenced_at, fenced_term) = since.get(&call.node)?;
            (call.started > *fenced_at + config.margin && term <= *fenced_term).then(|| {
                Violation {
                    invariant: "fenced-grants-nothing",
                    at: call.ended,
                    detail: format!(
                        "{}: granted at term {term} by a node that reported fenced at term {fenced_term} at {}ms",
                        describe(call),
                        fenced_at.as_millis()
                    ),
                }
            })
        })
        .collect()
}

/// A promotion goes through: every survivor carries out the order. Then
/// every voter that was not a survivor has reported `fenced` by the end
/// of the run (the network is healed before the workload ends, so the old
/// side hears of the new term).
pub fn old_side_fenced(events: &[Event]) -> Vec<Violation> {
    let Some((at, survivors)) = events.iter().rev().find_map(|e| match e {
        Event::Promotion { at, survivors, .. } => Some((*at, survivors.clone())),
        _ => None,
    }) else {
        return Vec::new();
    };
    let promoted = promoted_at(events);
    let refused: Vec<String> = survivors
        .iter()
        .filter(|n| !promoted.contains_key(*n))
        .map(|n| node_name(*n))
        .collect();
    if !refused.is_empty() {
        // A promotion the cluster's own key signed, sent to survivors in
        // a settled minority, must go through.
        return vec![Violation {
            invariant: "promotion-completes",
            at,
            detail: format!(
                "the order signed at {}ms was not carried out by {}",
                at.as_millis(),
                refused.join(", ")
            ),
        }];
    }
    let booted: BTreeSet<NodeIndex> = events
        .iter()
        .filter_map(|e| match e {
            Event::Boot { node, .. } => Some(*node),
            _ => None,
        })
        .collect();
    let since = fenced_since(events);
    booted
        .into_iter()
        .filter(|n| !survivors.contains(n) && !since.contains_key(n))
        .map(|n| Violation {
            invariant: "old-side-fenced",
            at,
            detail: format!(
                "{} was not a survivor of the promotion at {}ms and never reported fenced",
                node_name(n),
                at.as_millis()
            ),
        })
        .collect()
}

/// Invariant 9: no node becomes fenced, and no higher authority term is
/// believed, without a verified signed promotion order for it. Only the
/// operator ([`crate::operator`]) signs orders with the cluster's key, so
/// before its order for a term no node may report `fenced` or run at
/// that term, and every forged higher-term RPC must be refused (a refusal
/// code or a transport failure, never an answer).
pub fn no_unproven_term_believed(events: &[Event]) -> Vec<Violation> {
    let mut violations = Vec::new();
    // The highest term an order has been signed for so far.
    let mut signed = crate::workload::INITIAL_TERM;
    for event in events {
        match event {
            Event::Promotion { term, .. } => signed = signed.max(*term),
            Event::View {
                at,
                node,
                view: PartitionView::Fenced,
            } if signed == crate::workload::INITIAL_TERM => violations.push(Violation {
                invariant: "no-unproven-term",
                at: *at,
                detail: format!(
                    "{} reports fenced, but no promotion order was ever signed",
                    node_name(*node)
                ),
            }),
            Event::Raft {
                at,
                node,
                authority_term,
                ..
            } if *authority_term > signed => violations.push(Violation {
                invariant: "no-unproven-term",
                at: *at,
                detail: format!(
                    "{} runs at authority term {authority_term}, but orders were signed up to term {signed} only",
                    node_name(*node)
                ),
            }),
            Event::Forged { at, outcome, .. } if outcome == "accepted" => {
                violations.push(Violation {
                    invariant: "no-unproven-term",
                    at: *at,
                    detail: format!("a forged higher-term RPC was answered: {event}"),
                });
            }
            _ => {}
        }
    }
    violations
}

fn calls(events: &[Event]) -> impl Iterator<Item = &FenceCall> {
    events.iter().filter_map(|e| match e {
        Event::Fence(call) => Some(call),
        _ => None,
    })
}

fn describe(call: &FenceCall) -> String {
    format!(
        "call via {} sent at {}ms, answered at {}ms: {:?}",
        node_name(call.node),
        call.started.as_millis(),
        call.ended.as_millis(),
        call.outcome
    )
}

/// A fence's `(authority_term, seq)`.
type TermSeq = (u64, u64);

/// Invariant 1: fences are unique and strictly increasing, in log order
/// and in real-time order. Each authority term has its own log (a
/// promotion starts a new group), and real-time order holds within a
/// term: the old side may go on granting its old term to stale clients
/// after a promotion until it hears of it (every new-term fence is above
/// them anyway; [`fenced_nodes_grant_nothing`] covers the rest).
pub fn fences_unique_and_increasing(events: &[Event]) -> Vec<Violation> {
    const NAME: &str = "fences-unique-increasing";
    let mut violations = Vec::new();
    let granted: Vec<(&FenceCall, (u64, u64, u64))> = calls(events)
        .filter_map(|c| c.granted().map(|f| (c, f)))
        .collect();

    let mut by_fence: BTreeMap<(u64, u64), &FenceCall> = BTreeMap::new();
    // One entry may grant several fences (group commit): keyed by (term,
    // log index, seq), each fence once.
    let mut by_index: BTreeMap<(u64, u64, u64), (&FenceCall, TermSeq)> = BTreeMap::new();
    for (call, (term, seq, index)) in &granted {
        if let Some(first) = by_fence.insert((*term, *seq), call) {
            violations.push(Violation {
                invariant: NAME,
                at: call.ended,
                detail: format!(
                    "fence (term {term}, seq {seq}) granted twice: {} and {}",
                    describe(first),
                    describe(call)
                ),
            });
        }
        by_index.insert((*term, *index, *seq), (call, (*term, *seq)));
    }
    // In log order, (term, seq) strictly increases: across entries, and
    // within one entry's fences.
    let mut previous: Option<(u64, (u64, u64))> = None;
    for ((_, index, _), (call, fence)) in &by_index {
        if let Some((previous_index, previous_fence)) = previous
            && *fence <= previous_fence
        {
            violations.push(Violation {
                invariant: NAME,
                at: call.ended,
                detail: format!(
                    "fence {fence:?} at log index {index} is not above {previous_fence:?} at index {previous_index}"
                ),
            });
        }
        previous = Some((*index, *fence));
    }
    // Real-time order: a call that started after another was answered
    // gets a larger fence.
    let terms: BTreeSet<u64> = granted.iter().map(|(_, (t, _, _))| *t).collect();
    for term in terms {
        violations.extend(real_time_order(&granted, term));
    }
    violations
}

/// Real-time order among the fences of `term`.
fn real_time_order(granted: &[(&FenceCall, (u64, u64, u64))], term: u64) -> Vec<Violation> {
    const NAME: &str = "fences-unique-increasing";
    let mut violations = Vec::new();
    let of_term: Vec<&(&FenceCall, (u64, u64, u64))> =
        granted.iter().filter(|(_, (t, _, _))| *t == term).collect();
    let mut by_end: Vec<(Duration, (u64, u64))> = of_term
        .iter()
        .map(|(c, (t, s, _))| (c.ended, (*t, *s)))
        .collect();
    by_end.sort();
    let mut by_start = of_term;
    by_start.sort_by_key(|(c, _)| c.started);
    let mut highest_answered: Option<(u64, u64)> = None;
    let mut next = 0;
    for (call, (term, seq, _)) in by_start {
        while next < by_end.len() && by_end[next].0 < call.started {
            highest_answered = highest_answered.max(Some(by_end[next].1));
            next += 1;
        }
        if let Some(highest) = highest_answered
            && (*term, *seq) <= highest
        {
            violations.push(Violation {
                invariant: NAME,
                at: call.ended,
                detail: format!(
                    "{} got (term {term}, seq {seq}), not above {highest:?} answered before it was sent",
                    describe(call)
                ),
            });
        }
    }
    violations
}

/// The calls whose node could not have had a fence granted at any moment
/// of the call: neither it nor any node it exchanged messages with both
/// ways had a two-way quorum.
fn minority_calls<'a>(
    events: &'a [Event],
    timeline: &'a Timeline,
    config: &'a CheckConfig,
) -> impl Iterator<Item = &'a FenceCall> + 'a {
    let promoted = promoted_at(events);
    calls(events).filter(move |call| {
        let from = call.started.saturating_sub(config.margin);
        let to = call.ended + config.margin;
        if timeline.union_over(from, to).can_grant_via(call.node) {
            return false;
        }
        // A promoted survivor belongs to the survivors' group.
        match promoted.get(&call.node) {
            Some((at, group)) if *at <= to => !timeline
                .union_over(from.max(*at), to)
                .can_grant_within(call.node, group),
            _ => true,
        }
    })
}

/// For each survivor that carried out a promotion: when the order was
/// signed (from then on it may be re-forming: stopping its old Raft,
/// refusing the old term, waiting for the seed), and the survivors of
/// that order.
fn promoted_at(events: &[Event]) -> BTreeMap<NodeIndex, (Duration, Vec<NodeIndex>)> {
    let mut order: Option<(Duration, Vec<NodeIndex>)> = None;
    let mut promoted = BTreeMap::new();
    for event in events {
        match event {
            Event::Promotion { at, survivors, .. } => order = Some((*at, survivors.clone())),
            Event::Promote { node, outcome, .. } if outcome.starts_with("promoted") => {
                if let Some(order) = &order {
                    promoted.insert(*node, order.clone());
                }
            }
            _ => {}
        }
    }
    promoted
}

/// Invariant 2: no fence is granted through a minority.
pub fn no_minority_grant(
    events: &[Event],
    timeline: &Timeline,
    config: &CheckConfig,
) -> Vec<Violation> {
    minority_calls(events, timeline, config)
        .filter(|call| call.granted().is_some())
        .map(|call| Violation {
            invariant: "no-minority-grant",
            at: call.ended,
            detail: format!(
                "{}: granted although the node had no quorum-holding leader within reach for the whole call",
                describe(call)
            ),
        })
        .collect()
}

/// At most one leader per Raft term: neither two nodes claiming it, nor
/// nodes naming different leaders for one term.
/// A promotion starts a new Raft group whose terms count from 1 again, so
/// a Raft term is named together with its authority term.
pub fn one_leader_per_raft_term(events: &[Event]) -> Vec<Violation> {
    let mut leaders: BTreeMap<(u64, u64), BTreeSet<NodeIndex>> = BTreeMap::new();
    let mut first_seen: BTreeMap<(u64, u64), Duration> = BTreeMap::new();
    for event in events {
        if let Event::Raft {
            at,
            node,
            authority_term,
            term,
            leader,
            role,
        } = event
        {
            let named = if *role == Role::Leader {
                Some(*node)
            } else {
                *leader
            };
            if let Some(named) = named {
                let key = (*authority_term, *term);
                leaders.entry(key).or_default().insert(named);
                first_seen.entry(key).or_insert(*at);
            }
        }
    }
    leaders
        .into_iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .map(|((authority_term, term), nodes)| Violation {
            invariant: "one-leader-per-raft-term",
            at: first_seen
                .get(&(authority_term, term))
                .copied()
                .unwrap_or_default(),
            detail: format!(
                "raft term {term} (authority term {authority_term}) has leaders {:?}",
                nodes.iter().map(|n| node_name(*n)).collect::<Vec<_>>()
            ),
        })
        .collect()
}

/// The election timeout of the incarnation of `node` running at `at`.
fn election_timeout_at(events: &[Event], node: NodeIndex, at: Duration) -> Option<Duration> {
    events.iter().rev().find_map(|e| match e {
        Event::Boot {
            at: booted,
            node: n,
            election_timeout,
        } if *n == node && *booted <= at => Some(*election_timeout),
        _ => None,
    })
}

fn crashed_during(timeline: &Timeline, node: NodeIndex, from: Duration, to: Duration) -> bool {
    timeline.crashed_at_some_point(node, from, to)
}

fn settled(timeline: &Timeline, config: &CheckConfig, call: &FenceCall) -> bool {
    call.started >= timeline.last_change_before(call.started) + config.settle
        && timeline.last_change_before(call.ended + config.margin)
            == timeline.last_change_before(call.started)
}

/// A minority call ends within the bound; once settled, it is refused
/// with `NO_QUORUM`. Calls to a node that crashed during the call are
/// left out (a dead process answers nothing).
pub fn minority_refusal(
    events: &[Event],
    timeline: &Timeline,
    config: &CheckConfig,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    for call in minority_calls(events, timeline, config) {
        if crashed_during(timeline, call.node, call.started, call.ended) {
            continue;
        }
        let took = call.ended.saturating_sub(call.started);
        let budget = election_timeout_at(events, call.node, call.started)
            .map(|timeout| timeout * 2)
            .unwrap_or_default();
        let bound = budget + config.slack;
        if took > bound || call.outcome == Outcome::TimedOut {
            violations.push(Violation {
                invariant: "minority-refusal-bound",
                at: call.ended,
                detail: format!(
                    "{}: took {}ms, bound is {}ms (2 × election timeout {}ms + slack {}ms)",
                    describe(call),
                    took.as_millis(),
                    bound.as_millis(),
                    (budget / 2).as_millis(),
                    config.slack.as_millis()
                ),
            });
            continue;
        }
        if !settled(timeline, config, call) {
            continue;
        }
        let no_quorum = matches!(
            &call.outcome,
            Outcome::Refused { code, grpc } if code == "NO_QUORUM" && *grpc == tonic::Code::Unavailable
        );
        if !no_quorum && call.granted().is_none() {
            violations.push(Violation {
                invariant: "minority-refusal-code",
                at: call.ended,
                detail: format!(
                    "{}: a settled minority must refuse with NO_QUORUM (UNAVAILABLE)",
                    describe(call)
                ),
            });
        }
    }
    violations
}

/// A node answering a settled minority call says `minority` (or `fenced`)
/// in its partition view.
pub fn minority_view(
    events: &[Event],
    timeline: &Timeline,
    config: &CheckConfig,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    for call in minority_calls(events, timeline, config) {
        if !settled(timeline, config, call)
            || crashed_during(timeline, call.node, call.started, call.ended)
        {
            continue;
        }
        let view = events.iter().rev().find_map(|e| match e {
            Event::View { at, node, view } if *node == call.node && *at <= call.started => {
                Some(*view)
            }
            _ => None,
        });
        if !matches!(view, Some(PartitionView::Minority | PartitionView::Fenced)) {
            violations.push(Violation {
                invariant: "minority-view",
                at: call.started,
                detail: format!(
                    "{} reports view {:?} while in a settled minority",
                    node_name(call.node),
                    view.map(PartitionView::as_str)
                ),
            });
        }
    }
    violations
}

/// No call runs into the client's deadline: a write is answered (granted
/// or refused) in bounded time wherever it is sent.
pub fn no_call_hangs(events: &[Event]) -> Vec<Violation> {
    calls(events)
        .filter(|call| call.outcome == Outcome::TimedOut)
        .map(|call| Violation {
            invariant: "no-call-hangs",
            at: call.ended,
            detail: format!("{}: no answer before the client's deadline", describe(call)),
        })
        .collect()
}

/// After heal, every node has applied every acknowledged fence, and all
/// report the same leader, applied index and last fence (each node's last
/// final status counts).
pub fn acknowledged_fences_survive(events: &[Event]) -> Vec<Violation> {
    // Each node's last word: a rejoin after a promotion converges the
    // whole cluster again, after the survivors did.
    let mut last: BTreeMap<NodeIndex, (Duration, &crate::events::FinalStatus)> = BTreeMap::new();
    for event in events {
        if let Event::Final { at, node, status } = event {
            last.insert(*node, (*at, status));
        }
    }
    let finals: Vec<(Duration, NodeIndex, &crate::events::FinalStatus)> = last
        .into_iter()
        .map(|(node, (at, status))| (at, node, status))
        .collect();
    let Some(highest) = calls(events).filter_map(FenceCall::granted).max() else {
        return Vec::new();
    };
    let mut violations = Vec::new();
    for (at, node, status) in &finals {
        if (status.authority_term, status.last_fence_seq) < (highest.0, highest.1) {
            violations.push(Violation {
                invariant: "acknowledged-fences-survive",
                at: *at,
                detail: format!(
                    "{} ends at (term {}, seq {}) but (term {}, seq {}) was acknowledged",
                    node_name(*node),
                    status.authority_term,
                    status.last_fence_seq,
                    highest.0,
                    highest.1
                ),
            });
        }
    }
    if let Some((at, _, first)) = finals.first()
        && finals.iter().any(|(_, _, s)| s != first)
    {
        violations.push(Violation {
            invariant: "acknowledged-fences-survive",
            at: *at,
            detail: format!(
                "final statuses differ: {:?}",
                finals.iter().map(|(_, _, s)| s).collect::<Vec<_>>()
            ),
        });
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Applied;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn grant(node: NodeIndex, started: u64, ended: u64, seq: u64, index: u64) -> Event {
        Event::Fence(FenceCall {
            worker: 0,
            node,
            started: ms(started),
            ended: ms(ended),
            outcome: Outcome::Granted {
                authority_term: 1,
                seq,
                log_index: index,
            },
        })
    }

    fn config() -> CheckConfig {
        CheckConfig {
            nodes: 3,
            settle: ms(2_000),
            slack: ms(50),
            margin: ms(2),
        }
    }

    fn truth(at: u64, what: TruthEvent) -> Event {
        Event::Truth { at: ms(at), what }
    }

    fn commit(at: u64, target: &str, term: u64, seq: u64) -> Event {
        truth(
            at,
            TruthEvent::Committed {
                target: target.into(),
                fence: Some((term, seq)),
            },
        )
    }

    fn recorded(at: u64, term: u64) -> Event {
        truth(at, TruthEvent::TermRecorded { term })
    }

    // Goal: a node outside the order window that takes an order, or
    // answers otherwise than ORDER_OUTSIDE_WINDOW, and a node inside it
    // that refuses so, are caught; the right answers pass. Method:
    // hand-written histories with clocks 1 min behind and 1 h ahead.
    #[test]
    fn orders_against_node_clocks() {
        let clock = |node, skew_ms| Event::Clock {
            at: ms(0),
            node,
            skew_ms,
        };
        let promote = |node, outcome: &str| Event::Promote {
            at: ms(10),
            node,
            outcome: outcome.into(),
        };
        let outside = "refused ORDER_OUTSIDE_WINDOW: issued outside this node's clock window";
        let good = vec![
            clock(0, -60_000),
            clock(1, 3_600_000),
            promote(0, "promoted term=2"),
            promote(1, outside),
            clock(1, 0),
            promote(1, "promoted term=2"),
        ];
        assert!(orders_keep_to_node_clocks(&good).is_empty());
        for bad in [
            vec![clock(1, 3_600_000), promote(1, "promoted term=2")],
            vec![clock(1, 3_600_000), promote(1, "refused ORDER_REFUSED: x")],
            vec![clock(0, -60_000), promote(0, outside)],
        ] {
            let found = orders_keep_to_node_clocks(&bad);
            assert_eq!(found.len(), 1, "{bad:?}: {found:?}");
            assert_eq!(found[0].invariant, "order-clock-window");
        }
    }

    // Goal: the source of truth's rules catch a fence applied after a
    // newer one and a fence of a term no longer recorded; a clean history
    // passes. Method: hand-written commit histories.
    #[test]
    fn truth_fence_rules() {
        let clean = vec![
            recorded(0, 1),
            commit(10, "a", 1, 3),
            commit(20, "b", 1, 7),
            recorded(30, 2),
            commit(40, "c", 2, 1),
        ];
        assert!(truth_fences_increase(&clean).is_empty());
        assert!(truth_current_term(&clean).is_empty());
        let late = vec![recorded(0, 1), commit(10, "a", 1, 7), commit(20, "b", 1, 3)];
        let found = truth_fences_increase(&late);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].invariant, "truth-fences-increase");
        let old_term = vec![recorded(0, 1), recorded(30, 2), commit(40, "c", 1, 9)];
        let found = truth_current_term(&old_term);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].invariant, "truth-current-term");
        // Across the promotion (1/9 then 2/1) the order still holds.
        assert_eq!(truth_fences_increase(&old_term).len(), 0);
    }

    // Goal: answers must agree with the truth's final state and audit.
    // Method: an applied answer missing from the state, a refusal that
    // changed the state, and a refusal without its audit row are each
    // caught; matching answers pass.
    #[test]
    fn mutations_must_be_as_answered() {
        let answer = |target: &str, answer: Result<(u64, u64), String>| {
            truth(
                10,
                TruthEvent::Mutation {
                    worker: 0,
                    target: target.into(),
                    started: ms(1),
                    answer,
                },
            )
        };
        let row = |target: &str, code: &str| crate::truth::AuditRow {
            target: target.into(),
            result: if code.is_empty() { "ok" } else { "refused" },
            code: code.into(),
        };
        let last = |keys: &[&str], audit: Vec<crate::truth::AuditRow>| {
            truth(
                99,
                TruthEvent::Final {
                    keys: keys.iter().map(|k| k.to_string()).collect(),
                    audit,
                },
            )
        };
        let good = vec![
            answer("a", Ok((1, 1))),
            answer("b", Err("NO_QUORUM".into())),
            last(&["a"], vec![row("a", ""), row("b", "NO_QUORUM")]),
        ];
        assert!(mutations_as_answered(&good).is_empty());
        for bad in [
            vec![answer("a", Ok((1, 1))), last(&[], vec![row("a", "")])],
            vec![
                answer("b", Err("NO_QUORUM".into())),
                last(&["b"], vec![row("b", "NO_QUORUM")]),
            ],
            vec![answer("b", Err("NO_QUORUM".into())), last(&[], vec![])],
        ] {
            let found = mutations_as_answered(&bad);
            assert_eq!(found.len(), 1, "{bad:?}: {found:?}");
            assert_eq!(found[0].invariant, "mutations-as-answered");
        }
    }

    // Goal: duplicate fences, out-of-order fences and real-time inversions
    // are caught; a clean history passes. Method: hand-written histories.
    #[test]
    fn fence_order() {
        let clean = vec![
            grant(0, 0, 10, 1, 5),
            grant(1, 5, 20, 2, 6),
            grant(2, 30, 40, 3, 7),
        ];
        assert!(fences_unique_and_increasing(&clean).is_empty());
        let duplicate = vec![grant(0, 0, 10, 1, 5), grant(1, 20, 30, 1, 6)];
        assert!(!fences_unique_and_increasing(&duplicate).is_empty());
        // One group-commit entry: two fences at one index, in order.
        let batched = vec![
            grant(0, 0, 10, 1, 5),
            grant(1, 0, 10, 2, 5),
            grant(2, 30, 40, 3, 7),
        ];
        assert!(fences_unique_and_increasing(&batched).is_empty());
        let behind = vec![grant(0, 0, 10, 3, 5), grant(1, 20, 30, 2, 7)];
        assert!(!fences_unique_and_increasing(&behind).is_empty());
        let inverted = vec![grant(0, 0, 10, 2, 6), grant(1, 20, 30, 1, 5)];
        let found = fences_unique_and_increasing(&inverted);
        assert!(found.iter().any(|v| v.detail.contains("answered before")));
    }

    // Goal: a grant through an isolated node is a violation, one through
    // the majority is not, and a slow or non-NO_QUORUM refusal in a
    // settled minority is caught. Method: partition node-1 at 1 s.
    #[test]
    fn minority_rules() {
        let partition = Event::Fault {
            at: ms(1_000),
            fault: Applied::Partition {
                a: vec![0],
                b: vec![1, 2],
            },
        };
        let boot = |node| Event::Boot {
            at: ms(0),
            node,
            election_timeout: ms(500),
        };
        let events = vec![
            boot(0),
            boot(1),
            boot(2),
            partition,
            grant(0, 1_500, 1_600, 9, 20),
            grant(1, 1_500, 1_600, 10, 21),
            Event::Fence(FenceCall {
                worker: 0,
                node: 0,
                started: ms(3_500),
                ended: ms(3_510),
                outcome: Outcome::Refused {
                    code: "NOT_LEADER".into(),
                    grpc: tonic::Code::Unavailable,
                },
            }),
            Event::Fence(FenceCall {
                worker: 0,
                node: 0,
                started: ms(4_000),
                ended: ms(6_000),
                outcome: Outcome::Refused {
                    code: "NO_QUORUM".into(),
                    grpc: tonic::Code::Unavailable,
                },
            }),
        ];
        let timeline = Timeline::from_events(3, &events);
        let grants = no_minority_grant(&events, &timeline, &config());
        assert_eq!(grants.len(), 1, "{grants:?}");
        let refusals = minority_refusal(&events, &timeline, &config());
        assert!(
            refusals
                .iter()
                .any(|v| v.invariant == "minority-refusal-code")
        );
        assert!(
            refusals
                .iter()
                .any(|v| v.invariant == "minority-refusal-bound")
        );
        let views = minority_view(&events, &timeline, &config());
        assert!(!views.is_empty(), "no view was ever reported");
    }

    // Goal: two leaders in one raft term are caught. Method: two claims.
    #[test]
    fn two_leaders() {
        let claim = |node, role, leader| Event::Raft {
            at: ms(1),
            node,
            authority_term: 1,
            term: 4,
            leader,
            role,
        };
        let fine = vec![
            claim(0, Role::Leader, Some(0)),
            claim(1, Role::Follower, Some(0)),
        ];
        assert!(one_leader_per_raft_term(&fine).is_empty());
        let split = vec![
            claim(0, Role::Leader, Some(0)),
            claim(1, Role::Leader, Some(1)),
        ];
        assert_eq!(one_leader_per_raft_term(&split).len(), 1);
        // A promoted group's Raft term 4 is another term.
        let mut regrouped = fine.clone();
        regrouped.push(Event::Raft {
            at: ms(9),
            node: 2,
            authority_term: 2,
            term: 4,
            leader: Some(2),
            role: Role::Leader,
        });
        assert!(one_leader_per_raft_term(&regrouped).is_empty());
    }

    // Goal: the sides check sees a reader served across a partition and
    // nothing else. Method: agent-1 stands with node-1 and the cache with
    // node-3; node-1 is cut off from node-2 and node-3; acceptances from
    // node-2 and from the cache then are flagged, one from node-1 is not,
    // and after the heal none is.
    #[test]
    fn a_reader_served_across_a_partition_is_flagged() {
        let home = Event::Shard {
            at: ms(0),
            what: ShardEvent::Home {
                host: "agent-1".into(),
                node: 0,
            },
        };
        let fault = |at, fault| Event::Fault { at: ms(at), fault };
        let accepted = |at, version, from: &str| Event::Shard {
            at: ms(at),
            what: ShardEvent::Accepted {
                agent: "agent-1".into(),
                incarnation: 0,
                scope: "node/agent-1".into(),
                version,
                term: 1,
                body: "b".into(),
                served_by: from.into(),
            },
        };
        let cache_home = Event::Shard {
            at: ms(0),
            what: ShardEvent::Home {
                host: "cache-1".into(),
                node: 2,
            },
        };
        let events = vec![
            home,
            cache_home,
            fault(
                10,
                Applied::Partition {
                    a: vec![0],
                    b: vec![1, 2],
                },
            ),
            accepted(20, 1, "node-1"),
            accepted(30, 2, "node-2"),
            accepted(35, 3, "cache-1"),
            fault(40, Applied::HealNetwork),
            accepted(50, 4, "node-2"),
            accepted(55, 5, "cache-1"),
        ];
        let found = readers_keep_to_their_side(&events);
        let at: Vec<_> = found.iter().map(|v| v.at).collect();
        assert_eq!(at, [ms(30), ms(35)], "{found:?}");
    }

    // Goal: an agent whose clock is out of range (behind past the
    // tolerance, or ahead past validity plus tolerance) accepts nothing;
    // one in range may. Method: three agents' clock events and one
    // acceptance each.
    #[test]
    fn an_agent_out_of_its_clock_window_accepts_nothing() {
        let clock = |agent: &str, skew_ms| Event::Shard {
            at: ms(0),
            what: ShardEvent::Clock {
                agent: agent.into(),
                skew_ms,
            },
        };
        let accepted = |agent: &str| Event::Shard {
            at: ms(10),
            what: ShardEvent::Accepted {
                agent: agent.into(),
                incarnation: 1,
                scope: format!("node/{agent}"),
                version: 1,
                term: 1,
                body: "b".into(),
                served_by: "node-1".into(),
            },
        };
        let events = vec![
            clock("in-range", 20 * 60 * 1000),
            clock("behind", -5 * 60 * 1000),
            clock("ahead", 70 * 60 * 1000),
            accepted("in-range"),
            accepted("behind"),
            accepted("ahead"),
        ];
        let found: Vec<String> = agents_keep_to_their_clocks(&events)
            .into_iter()
            .map(|v| v.detail)
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("behind "), "{found:?}");
        assert!(found[1].starts_with("ahead "), "{found:?}");
    }
}
