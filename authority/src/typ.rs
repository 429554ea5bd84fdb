//! The openraft type configuration, spelled once, and aliases for the
//! generic openraft types used across the crate.

use crate::request::{Request, Response};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Raft's node id: a u64 derived from the RAP node id (see
/// [`raft_id_of`]). The RAP node id itself travels in [`Member`].
pub type RaftNodeId = u64;

openraft::declare_raft_types!(
    /// The authority group's openraft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = RaftNodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A voter or learner of the group: its RAP node id, where its Raft and
/// Authority services listen, and its failure-domain labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The RAP node id (a valid `rap_proto::ids::NodeId`).
    pub node_id: String,
    /// `host:port` of its gRPC listener (RaftService + AuthorityService).
    pub address: String,
    /// Failure-domain label: region.
    pub region: String,
    /// Failure-domain label: zone.
    pub zone: String,
    /// Failure-domain label: host.
    pub host: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} ({}/{}/{})",
            self.node_id, self.address, self.region, self.zone, self.host
        )
    }
}

/// The Raft node id of a RAP node id: the first 8 bytes of its blake3
/// hash, so every node derives the same number without coordination.
/// Bootstrap refuses a voter set in which two ids collide.
pub fn raft_id_of(node_id: &str) -> RaftNodeId {
    let digest = rap_proto::envelope::Digest::of(node_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.0[..8]);
    u64::from_be_bytes(first)
}

/// `openraft::LogId` of this config.
pub type LogId = openraft::LogId<RaftNodeId>;
/// `openraft::Vote` of this config.
pub type Vote = openraft::Vote<RaftNodeId>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// Membership as stored with the state machine.
pub type StoredMembership = openraft::StoredMembership<RaftNodeId, Member>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<RaftNodeId, Member>;
/// A snapshot.
pub type Snapshot = openraft::Snapshot<TypeConfig>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<RaftNodeId>;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// Raft metrics.
pub type RaftMetrics = openraft::RaftMetrics<RaftNodeId, Member>;
/// `openraft::error::RaftError<E>` of this config.
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<RaftNodeId, E>;
/// RPC error of this config.
pub type RpcError<E = openraft::error::Infallible> =
    openraft::error::RPCError<RaftNodeId, Member, RaftError<E>>;
