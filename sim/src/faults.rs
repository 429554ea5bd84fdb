//! Faults: what a scenario schedules ([`Fault`], possibly naming "the
//! leader"), what the harness actually did ([`Applied`], concrete nodes,
//! logged), and the model of who could talk to whom that the checkers
//! rebuild from the applied faults ([`Links`], [`Timeline`]).
//!
//! Partitions, holds and loss act only on links between storage nodes;
//! the client reaches every node at all times, so a refusal is always the
//! node's answer, never the client's own isolation.

use crate::events::{Event, NodeIndex, node_name};
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

/// A fault as a scenario schedules it.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// A concrete fault.
    Apply(Applied),
    /// Cut the current leader off from every other node, both ways.
    IsolateLeader,
    /// Block what the current leader sends to every other node (it still
    /// hears them).
    MuteLeader,
    /// Block what the current leader receives from every other node (it
    /// still sends).
    DeafenLeader,
    /// Crash the current leader's host.
    CrashLeader,
    /// Restart every crashed host.
    RestartCrashed,
    /// Undo every network fault: release held messages, repair every link,
    /// stop loss and extra latency. Crashed hosts stay down.
    HealNetwork,
}

impl Fault {
    /// Symmetric partition between two sets of nodes.
    pub fn partition(a: Vec<NodeIndex>, b: Vec<NodeIndex>) -> Fault {
        Fault::Apply(Applied::Partition { a, b })
    }

    /// The concrete faults this one is, given the current `leader` (or a
    /// stand-in when none is known), `crashed` hosts and `nodes` voters.
    pub fn resolve(
        &self,
        leader: Option<NodeIndex>,
        crashed: &[NodeIndex],
        nodes: usize,
    ) -> Vec<Applied> {
        let leader = leader.unwrap_or(0);
        let others: Vec<NodeIndex> = (0..nodes).filter(|n| *n != leader).collect();
        match self {
            // A host already down cannot crash again.
            Fault::Apply(Applied::Crash(node)) if crashed.contains(node) => Vec::new(),
            Fault::Apply(applied) => vec![applied.clone()],
            Fault::IsolateLeader => vec![Applied::Partition {
                a: vec![leader],
                b: others,
            }],
            Fault::MuteLeader => vec![Applied::PartitionOneway {
                from: vec![leader],
                to: others,
            }],
            Fault::DeafenLeader => vec![Applied::PartitionOneway {
                from: others,
                to: vec![leader],
            }],
            Fault::CrashLeader => vec![Applied::Crash(leader)],
            Fault::RestartCrashed => crashed.iter().map(|n| Applied::Restart(*n)).collect(),
            Fault::HealNetwork => vec![Applied::HealNetwork],
        }
    }
}

/// A fault as applied: concrete nodes only. Logged as [`Event::Fault`].
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// Drop every message between `a` and `b`, both ways.
    Partition {
        /// One side.
        a: Vec<NodeIndex>,
        /// The other side.
        b: Vec<NodeIndex>,
    },
    /// Drop every message from `from` to `to` (not the other way).
    PartitionOneway {
        /// Senders cut off.
        from: Vec<NodeIndex>,
        /// Receivers.
        to: Vec<NodeIndex>,
    },
    /// Hold every message between `a` and `b` until released.
    Hold {
        /// One side.
        a: Vec<NodeIndex>,
        /// The other side.
        b: Vec<NodeIndex>,
    },
    /// Deliver what was held between `a` and `b`; the links work again.
    Release {
        /// One side.
        a: Vec<NodeIndex>,
        /// The other side.
        b: Vec<NodeIndex>,
    },
    /// The links between `a` and `b` work again, both ways (what a
    /// `Partition` of them cut).
    Repair {
        /// One side.
        a: Vec<NodeIndex>,
        /// The other side.
        b: Vec<NodeIndex>,
    },
    /// Messages between storage nodes are lost at random: each message
    /// breaks its link with chance `fail_rate` (the link mends at the next
    /// message). Over TCP a lost segment stalls the connection until
    /// HTTP/2 keepalive drops it and the channel redials.
    Loss {
        /// Chance per message that it is lost.
        fail_rate: f64,
    },
    /// Message latency between storage nodes ranges up to `max`
    /// (exponentially distributed, as turmoil draws it).
    Latency {
        /// Most latency.
        max: Duration,
    },
    /// Repair, release and calm every link between storage nodes.
    HealNetwork,
    /// Stop a node's host: every task dropped, storage files closed.
    Crash(NodeIndex),
    /// Start a crashed node's host again on its data directory.
    Restart(NodeIndex),
}

/// Two hosts by name, in order.
pub type HostPair = (String, String);

/// Where the cache replica and the agents stand when the storage nodes
/// are partitioned (`ShardPlan::sides` in [`crate::shards`]): each host
/// with its home node, cut off from the nodes on the other side of a
/// `Partition`, and from the sided hosts whose homes are there, until that
/// is repaired or the network heals. Held links (the swizzle) and one-way
/// cuts leave them alone. The harness applies what [`Sides::apply`]
/// returns to the simulated network; the checkers replay it from the log.
#[derive(Clone, Debug, Default)]
pub struct Sides {
    /// Each sided host and its home node.
    homes: Vec<(String, NodeIndex)>,
    /// The links cut now, by host names (each pair once, in order).
    cut: BTreeSet<HostPair>,
}

impl Sides {
    /// `host` stands with `node` from now on.
    pub fn add_home(&mut self, host: String, node: NodeIndex) {
        self.homes.push((host, node));
    }

    /// Whether hosts `x` and `y` (storage nodes by [`node_name`]) are cut
    /// off from each other now.
    pub fn is_cut(&self, x: &str, y: &str) -> bool {
        self.cut.contains(&ordered(x, y))
    }

    /// Follows `fault`: the links (by host names) it cuts, and those it
    /// mends.
    pub fn apply(&mut self, fault: &Applied) -> (Vec<HostPair>, Vec<HostPair>) {
        let (a, b, up) = match fault {
            Applied::Partition { a, b } => (a, b, false),
            Applied::Repair { a, b } => (a, b, true),
            Applied::HealNetwork => {
                return (
                    Vec::new(),
                    std::mem::take(&mut self.cut).into_iter().collect(),
                );
            }
            _ => return (Vec::new(), Vec::new()),
        };
        let across = |x: NodeIndex, y: NodeIndex| {
            (a.contains(&x) && b.contains(&y)) || (b.contains(&x) && a.contains(&y))
        };
        // Every sided host against every storage node of the fault and
        // every other sided host, each by its home.
        let mut pairs = Vec::new();
        for (i, (host, home)) in self.homes.iter().enumerate() {
            for node in a.iter().chain(b) {
                if across(*home, *node) {
                    pairs.push(ordered(host, &node_name(*node)));
                }
            }
            for (other, other_home) in &self.homes[i + 1..] {
                if across(*home, *other_home) {
                    pairs.push(ordered(host, other));
                }
            }
        }
        let mut changed = Vec::new();
        for pair in pairs {
            let done = if up {
                self.cut.remove(&pair)
            } else {
                self.cut.insert(pair.clone())
            };
            if done {
                changed.push(pair);
            }
        }
        if up {
            (Vec::new(), changed)
        } else {
            (changed, Vec::new())
        }
    }
}

/// `(x, y)` in order.
fn ordered(x: &str, y: &str) -> HostPair {
    if x <= y {
        (x.to_string(), y.to_string())
    } else {
        (y.to_string(), x.to_string())
    }
}

fn names(nodes: &[NodeIndex]) -> String {
    let names: Vec<String> = nodes.iter().map(|n| node_name(*n)).collect();
    format!("{{{}}}", names.join(","))
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Applied::Partition { a, b } => write!(f, "partition {} | {}", names(a), names(b)),
            Applied::PartitionOneway { from, to } => {
                write!(f, "partition {} -/-> {}", names(from), names(to))
            }
            Applied::Hold { a, b } => write!(f, "hold {} | {}", names(a), names(b)),
            Applied::Release { a, b } => write!(f, "release {} | {}", names(a), names(b)),
            Applied::Repair { a, b } => write!(f, "repair {} | {}", names(a), names(b)),
            Applied::Loss { fail_rate } => write!(f, "loss fail_rate={fail_rate}"),
            Applied::Latency { max } => write!(f, "latency max={}ms", max.as_millis()),
            Applied::HealNetwork => write!(f, "heal network"),
            Applied::Crash(node) => write!(f, "crash {}", node_name(*node)),
            Applied::Restart(node) => write!(f, "restart {}", node_name(*node)),
        }
    }
}

/// Who can send to whom at one moment, as far as explicit faults go.
/// Random loss is not modelled (it only takes links away, so treating
/// lossy links as up keeps every conclusion drawn from the model sound).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Links {
    /// `up[a][b]`: messages from `a` reach `b`.
    up: Vec<Vec<bool>>,
    /// Crashed hosts: no links at all.
    crashed: Vec<bool>,
}

impl Links {
    /// Every link up, no host crashed.
    pub fn healthy(nodes: usize) -> Self {
        Links {
            up: vec![vec![true; nodes]; nodes],
            crashed: vec![false; nodes],
        }
    }

    /// Whether the link from `from` to `to` is up, whether or not either
    /// host is crashed (a crashed host's links keep their state).
    pub fn is_up(&self, from: NodeIndex, to: NodeIndex) -> bool {
        self.up[from][to]
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.crashed.len()
    }

    /// Whether `from` can send to `to` now.
    pub fn can_send(&self, from: NodeIndex, to: NodeIndex) -> bool {
        from == to || (!self.crashed[from] && !self.crashed[to] && self.up[from][to])
    }

    /// Whether `node` is crashed.
    pub fn is_crashed(&self, node: NodeIndex) -> bool {
        self.crashed[node]
    }

    /// The crashed nodes.
    pub fn crashed(&self) -> Vec<NodeIndex> {
        (0..self.nodes()).filter(|n| self.crashed[*n]).collect()
    }

    fn set(&mut self, from: &[NodeIndex], to: &[NodeIndex], up: bool) {
        for a in from {
            for b in to {
                if a != b {
                    self.up[*a][*b] = up;
                }
            }
        }
    }

    /// The links after `fault`.
    pub fn apply(&mut self, fault: &Applied) {
        match fault {
            Applied::Partition { a, b } | Applied::Hold { a, b } => {
                self.set(a, b, false);
                self.set(b, a, false);
            }
            Applied::Release { a, b } | Applied::Repair { a, b } => {
                self.set(a, b, true);
                self.set(b, a, true);
            }
            Applied::PartitionOneway { from, to } => self.set(from, to, false),
            Applied::HealNetwork => {
                let all: Vec<NodeIndex> = (0..self.nodes()).collect();
                self.set(&all, &all, true);
            }
            Applied::Loss { .. } | Applied::Latency { .. } => {}
            Applied::Crash(node) => self.crashed[*node] = true,
            Applied::Restart(node) => self.crashed[*node] = false,
        }
    }

    /// Merges `other` in: a link is up if it is up in either.
    fn union(&mut self, other: &Links) {
        for a in 0..self.nodes() {
            for b in 0..self.nodes() {
                self.up[a][b] = self.can_send(a, b) || other.can_send(a, b);
            }
        }
        for n in 0..self.nodes() {
            self.crashed[n] = self.crashed[n] && other.crashed[n];
        }
    }

    /// Whether a fence asked of `node` could possibly be granted under
    /// these links: some leader `L` (the node itself, or a node it
    /// exchanges messages with both ways, since a follower forwards once)
    /// exchanges messages both ways with enough nodes to form a quorum.
    pub fn can_grant_via(&self, node: NodeIndex) -> bool {
        if self.crashed[node] {
            return false;
        }
        let all: Vec<NodeIndex> = (0..self.nodes()).collect();
        self.can_grant_within(node, &all)
    }

    /// [`Links::can_grant_via`] for a group of `members` only (the
    /// survivors after a promotion form a group of their own): `node` is
    /// a member or exchanges messages both ways with one that leads, and
    /// that one exchanges messages both ways with a majority of `members`.
    pub fn can_grant_within(&self, node: NodeIndex, members: &[NodeIndex]) -> bool {
        if self.crashed[node] {
            return false;
        }
        let quorum = members.len() / 2 + 1;
        let both = |a: NodeIndex, b: NodeIndex| self.can_send(a, b) && self.can_send(b, a);
        members
            .iter()
            .filter(|leader| **leader == node || both(node, **leader))
            .filter(|leader| !self.crashed[**leader])
            .any(|leader| members.iter().filter(|f| both(*leader, **f)).count() >= quorum)
    }
}

impl Links {
    /// Whether some quorum can form under these links: a host that is up
    /// exchanges messages both ways with a majority of the voters (itself
    /// among them). Without one no group can recover, whatever the code.
    pub fn has_quorum_core(&self) -> bool {
        (0..self.nodes()).any(|node| self.can_grant_via(node))
    }
}

/// The links over a whole run: the state after each applied fault.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// `(from, links)`: the links in force from that time on.
    states: Vec<(Duration, Links)>,
}

impl Timeline {
    /// Rebuilds the timeline from the log's fault events.
    pub fn from_events(nodes: usize, events: &[Event]) -> Self {
        let mut links = Links::healthy(nodes);
        let mut states = vec![(Duration::ZERO, links.clone())];
        for event in events {
            if let Event::Fault { at, fault } = event {
                links.apply(fault);
                states.push((*at, links.clone()));
            }
        }
        Timeline { states }
    }

    /// Every link that was up at some moment of `[from, to]`, merged.
    /// Any message exchange that happened within the window used only
    /// links of this union.
    pub fn union_over(&self, from: Duration, to: Duration) -> Links {
        let mut merged: Option<Links> = None;
        for links in self.overlapping(from, to) {
            match &mut merged {
                Some(merged) => merged.union(links),
                None => merged = Some(links.clone()),
            }
        }
        merged.unwrap_or_else(|| self.states[0].1.clone())
    }

    /// Whether `node` was crashed at some moment of `[from, to]`.
    pub fn crashed_at_some_point(&self, node: NodeIndex, from: Duration, to: Duration) -> bool {
        self.overlapping(from, to)
            .any(|links| links.is_crashed(node))
    }

    fn overlapping(&self, from: Duration, to: Duration) -> impl Iterator<Item = &Links> {
        self.states
            .iter()
            .enumerate()
            .filter_map(move |(i, (start, links))| {
                let end = self.states.get(i + 1).map(|(next, _)| *next);
                let overlaps = *start <= to && end.is_none_or(|end| end >= from);
                overlaps.then_some(links)
            })
    }

    /// The links after the last fault (`None` only for a timeline with
    /// no state, which `from_events` never builds).
    pub fn last(&self) -> Option<&Links> {
        self.states.last().map(|(_, links)| links)
    }

    /// The time of the last fault applied at or before `at`.
    pub fn last_change_before(&self, at: Duration) -> Duration {
        self.states
            .iter()
            .map(|(start, _)| *start)
            .filter(|start| *start <= at)
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the grant model says "impossible" exactly when no leader with
    // a two-way quorum is two-way reachable from the node. Method: a
    // 3-node cluster under a symmetric partition, a one-way cut and a
    // crash.
    #[test]
    fn grant_model() {
        let mut links = Links::healthy(3);
        assert!((0..3).all(|n| links.can_grant_via(n)));
        links.apply(&Applied::Partition {
            a: vec![0],
            b: vec![1, 2],
        });
        assert!(!links.can_grant_via(0));
        assert!(links.can_grant_via(1) && links.can_grant_via(2));
        let mut oneway = Links::healthy(3);
        oneway.apply(&Applied::PartitionOneway {
            from: vec![0],
            to: vec![1, 2],
        });
        assert!(!oneway.can_grant_via(0));
        assert!(oneway.can_grant_via(1));
        let mut crashed = Links::healthy(3);
        crashed.apply(&Applied::Crash(1));
        assert!(crashed.can_grant_via(0));
        crashed.apply(&Applied::Crash(2));
        assert!(!crashed.can_grant_via(0));
    }

    // Goal: a window that spans a heal sees the healed links. Method:
    // partition at 1 s, heal at 3 s; windows before, inside and across.
    #[test]
    fn union_over_window() {
        let events = vec![
            Event::Fault {
                at: Duration::from_secs(1),
                fault: Applied::Partition {
                    a: vec![0],
                    b: vec![1, 2],
                },
            },
            Event::Fault {
                at: Duration::from_secs(3),
                fault: Applied::HealNetwork,
            },
        ];
        let timeline = Timeline::from_events(3, &events);
        let s = Duration::from_secs;
        assert!(timeline.union_over(s(0), s(0)).can_grant_via(0));
        assert!(
            !timeline
                .union_over(Duration::from_millis(1500), Duration::from_millis(2500))
                .can_grant_via(0)
        );
        assert!(timeline.union_over(s(2), s(4)).can_grant_via(0));
        assert_eq!(timeline.last_change_before(s(2)), s(1));
    }
}
