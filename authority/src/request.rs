//! What the Raft log carries (`Request`) and what applying it returns
//! (`Response`). Application-level refusals are deterministic results, not
//! storage errors: every replica refuses the same entry the same way.

use crate::state::AuthorityState;
use rap_core::fence::Fence;
use rap_proto::ids::{AuthorityTerm, ClusterId};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// A command of the authority group's log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// First entry of a bootstrapped group: cluster identity, authority
    /// term 1, and the cluster's genesis trust root (encoded
    /// `SignedTrustRoot`) that published shards are verified against.
    Genesis {
        /// The cluster.
        cluster_id: ClusterId,
        /// Encoded genesis `SignedTrustRoot`.
        trust_root: ByteBuf,
    },
    /// Grant the next fence of the current term, if the caller's view of
    /// the term is current.
    AcquireFence {
        /// Why (recorded in the log, shown in audit).
        purpose: String,
        /// The authority term the caller believes current.
        expected_term: AuthorityTerm,
    },
    /// Grant one fence per ask, in order (group commit: the `AcquireFence`
    /// calls a leader received while the previous entry was in flight);
    /// each ask is decided exactly as an `AcquireFence` entry of its own.
    AcquireFences {
        /// At most `limits::FENCE_BATCH_MAX`.
        asks: Vec<FenceAsk>,
    },
    /// Publish signed envelopes under a granted fence. All or nothing.
    PublishShards {
        /// A fence of the current term, granted by this group.
        fence: Fence,
        /// Encoded `SignedEnvelope`s, exactly as signed.
        envelopes: Vec<ByteBuf>,
        /// The leader's clock when it proposed the entry: "now" for the
        /// expiry check, so every replica decides alike.
        proposed_at_ms: i64,
    },
    /// First entry of a group re-formed by promotion: the seed survivor's
    /// whole state, moved to `new_term` with the fence sequence restarted.
    Reseed {
        /// The survivor's state.
        state: Box<AuthorityState>,
        /// The new authority term (old + 1).
        new_term: AuthorityTerm,
        /// The signed promotion order for `new_term` (an encoded
        /// `PromoteRequest`), verified by the seed before it proposed.
        #[serde(default)]
        proof: ByteBuf,
    },
}

/// One fence asked for in an `AcquireFences` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceAsk {
    /// Why (recorded in the log, shown in audit).
    pub purpose: String,
    /// The authority term the caller believes current.
    pub expected_term: AuthorityTerm,
}

/// One shard accepted by a `PublishShards` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedShard {
    /// Its scope.
    pub scope: String,
    /// Its version.
    pub version: u64,
    /// blake3 of its body.
    pub content_hash: [u8; 32],
    /// Index of the entry that applied it.
    pub log_index: u64,
}

/// A deterministic refusal by the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Stable machine-readable code (e.g. `STALE_FENCE`, `ROLLBACK`).
    pub code: String,
    /// Human-readable detail with the numbers.
    pub message: String,
}

/// The result of applying one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Applied; nothing to return (blank, membership, genesis, reseed).
    Done,
    /// A fence was granted.
    Fence(Fence),
    /// The answers to an `AcquireFences` entry, one per ask in order:
    /// `Fence` or `Refused`.
    Fences(Vec<Response>),
    /// Shards were published.
    Published(Vec<PublishedShard>),
    /// The entry was refused; the state is unchanged.
    Refused(Refusal),
}
