//! The partition view of one storage node and the quorum-lease rule.
//!
//! An isolated openraft 0.9 leader keeps believing it leads; it does not
//! fail writes by itself. So before proposing, a leader checks how long ago
//! a quorum last acknowledged it (`millis_since_quorum_ack`); older than
//! the lease → `NO_QUORUM` at once. A follower that has not heard from a
//! leader within the lease answers `NO_QUORUM` at once too.

use std::time::Duration;

/// How a storage node sees its cluster's authority group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionView {
    /// A quorum is reachable and so is every voter.
    Healthy,
    /// A quorum is reachable, some voters are not.
    Degraded,
    /// No quorum is reachable: writes are refused.
    Minority,
    /// A higher authority term exists: this node is fenced.
    Fenced,
}

impl PartitionView {
    /// The wire enum.
    pub fn to_pb(self) -> rap_proto::pb::PartitionView {
        use rap_proto::pb::PartitionView as Pb;
        match self {
            PartitionView::Healthy => Pb::Healthy,
            PartitionView::Degraded => Pb::Degraded,
            PartitionView::Minority => Pb::Minority,
            PartitionView::Fenced => Pb::Fenced,
        }
    }

    /// Lower-case name, for logs, metrics and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionView::Healthy => "healthy",
            PartitionView::Degraded => "degraded",
            PartitionView::Minority => "minority",
            PartitionView::Fenced => "fenced",
        }
    }
}

/// Votes needed for a quorum of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// The view from the number of voters reachable (this node included).
pub fn view(fenced: bool, voters: usize, reachable: usize) -> PartitionView {
    if fenced {
        PartitionView::Fenced
    } else if voters == 0 || reachable < quorum(voters) {
        PartitionView::Minority
    } else if reachable < voters {
        PartitionView::Degraded
    } else {
        PartitionView::Healthy
    }
}

/// Whether a leader still holds its quorum lease: a quorum acknowledged it
/// within `lease`.
pub fn leader_lease_valid(millis_since_quorum_ack: Option<u64>, lease: Duration) -> bool {
    match millis_since_quorum_ack {
        Some(ms) => u128::from(ms) <= lease.as_millis(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the view follows the quorum arithmetic. Method: table.
    #[test]
    fn view_table() {
        assert_eq!(view(false, 3, 3), PartitionView::Healthy);
        assert_eq!(view(false, 3, 2), PartitionView::Degraded);
        assert_eq!(view(false, 3, 1), PartitionView::Minority);
        assert_eq!(view(false, 5, 3), PartitionView::Degraded);
        assert_eq!(view(false, 5, 2), PartitionView::Minority);
        assert_eq!(view(true, 3, 3), PartitionView::Fenced);
        assert_eq!(view(false, 0, 0), PartitionView::Minority);
    }

    // Goal: the lease expires exactly past its length, and an unknown ack
    // age is no lease. Method: boundary values.
    #[test]
    fn lease_boundaries() {
        let lease = Duration::from_millis(500);
        assert!(leader_lease_valid(Some(500), lease));
        assert!(!leader_lease_valid(Some(501), lease));
        assert!(!leader_lease_valid(None, lease));
    }
}
