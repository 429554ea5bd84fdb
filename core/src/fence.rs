//! Fencing tokens: granted only by a committed `AcquireFence` entry of a
//! cluster's authority group. [`Fence`] is the one type every crate holds;
//! `rap.v1.FencingToken` is only its wire form ([`Fence::to_pb`],
//! [`Fence::from_pb`]).

use rap_proto::ids::{AuthorityTerm, ClusterId, FenceSeq, LogIndex};
use rap_proto::pb;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// A fencing token `{cluster_id, authority_term, seq, log_index}`.
///
/// Fences are ordered by `(authority_term, seq)`: `seq` strictly increases
/// within a term, and any fence of a higher term is newer than every fence
/// of a lower one. `log_index` is the index of the entry that granted it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    /// The cluster whose group granted it.
    pub cluster_id: ClusterId,
    /// The authority term it was granted in.
    pub authority_term: AuthorityTerm,
    /// Its sequence number within the term (≥ 1).
    pub seq: FenceSeq,
    /// Raft log index of the granting entry.
    pub log_index: LogIndex,
}

impl Fence {
    /// Compares two fences of the same cluster by `(authority_term, seq)`.
    pub fn order(&self, other: &Fence) -> Ordering {
        (self.authority_term, self.seq).cmp(&(other.authority_term, other.seq))
    }

    /// The fence on the wire.
    pub fn to_pb(&self) -> pb::FencingToken {
        pb::FencingToken {
            cluster_id: self.cluster_id.to_string(),
            authority_term: self.authority_term.0,
            seq: self.seq.0,
            log_index: self.log_index.0,
        }
    }

    /// A fence from the wire (its cluster id is checked).
    pub fn from_pb(fence: &pb::FencingToken) -> rap_proto::Result<Fence> {
        Ok(Fence {
            cluster_id: ClusterId::new(fence.cluster_id.as_str())?,
            authority_term: AuthorityTerm(fence.authority_term),
            seq: FenceSeq(fence.seq),
            log_index: LogIndex(fence.log_index),
        })
    }
}
