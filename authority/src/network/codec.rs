//! The `payload` bytes of `RaftRequest` and `RaftResponse`: openraft's own
//! types as MessagePack with field names (`rmp_serde::to_vec_named`).
//!
//! Field names, because openraft's types use `skip_serializing_if`: a
//! positional encoding would shift every later field when one is skipped.
//! A reply is `Result<Resp, RaftError>`, so a Raft error on the receiver
//! (fatal, shutting down) reaches the sender typed, not as text.
//! Snapshot chunks travel as [`SnapshotChunk`] so their data is one
//! MessagePack `bin`, not an array of integers.

use crate::error::{Error, Result};
use crate::limits::RAFT_RPC_BYTES_MAX;
use crate::typ::{RaftError, RaftNodeId, SnapshotMeta, TypeConfig, Vote};
use openraft::error::InstallSnapshotError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// An AppendEntries request of this config.
pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
/// What the receiver answers to AppendEntries.
pub type AppendEntriesReply =
    std::result::Result<openraft::raft::AppendEntriesResponse<RaftNodeId>, RaftError>;
/// A Vote request of this config.
pub type VoteRequest = openraft::raft::VoteRequest<RaftNodeId>;
/// What the receiver answers to Vote.
pub type VoteReply = std::result::Result<openraft::raft::VoteResponse<RaftNodeId>, RaftError>;
/// One chunk of a snapshot (openraft 0.9's chunked transfer).
pub type InstallSnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
/// What the receiver answers to one snapshot chunk.
pub type InstallSnapshotReply = std::result::Result<
    openraft::raft::InstallSnapshotResponse<RaftNodeId>,
    RaftError<InstallSnapshotError>,
>;

/// The wire form of an [`InstallSnapshotRequest`]: the same fields, with
/// the data as bytes.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The leader's vote.
    pub vote: Vote,
    /// The snapshot this chunk belongs to.
    pub meta: SnapshotMeta,
    /// Byte offset of this chunk in the snapshot.
    pub offset: u64,
    /// The chunk.
    pub data: ByteBuf,
    /// Whether this is the last chunk.
    pub done: bool,
}

impl From<InstallSnapshotRequest> for SnapshotChunk {
    fn from(request: InstallSnapshotRequest) -> Self {
        SnapshotChunk {
            vote: request.vote,
            meta: request.meta,
            offset: request.offset,
            data: ByteBuf::from(request.data),
            done: request.done,
        }
    }
}

impl From<SnapshotChunk> for InstallSnapshotRequest {
    fn from(chunk: SnapshotChunk) -> Self {
        InstallSnapshotRequest {
            vote: chunk.vote,
            meta: chunk.meta,
            offset: chunk.offset,
            data: chunk.data.into_vec(),
            done: chunk.done,
        }
    }
}

/// Encodes `value` as named-field MessagePack. `what` names it in errors.
/// Refuses a result over [`RAFT_RPC_BYTES_MAX`] with [`Error::Oversize`]:
/// the receiver would refuse it anyway.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>> {
    let bytes = rmp_serde::to_vec_named(value)
        .map_err(|e| Error::InvalidRequest(format!("encode {what}: {e}")))?;
    if bytes.len() > RAFT_RPC_BYTES_MAX {
        return Err(Error::Oversize {
            what,
            limit: RAFT_RPC_BYTES_MAX,
            got: bytes.len(),
        });
    }
    Ok(bytes)
}

/// Decodes what [`encode`] wrote. The size is checked before decoding;
/// malformed input is an [`Error::InvalidRequest`], never a panic.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T> {
    if bytes.len() > RAFT_RPC_BYTES_MAX {
        return Err(Error::Oversize {
            what,
            limit: RAFT_RPC_BYTES_MAX,
            got: bytes.len(),
        });
    }
    rmp_serde::from_slice(bytes).map_err(|e| Error::InvalidRequest(format!("decode {what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Request;
    use crate::typ::{Entry, LogId, Member};
    use openraft::{CommittedLeaderId, EntryPayload, Membership};
    use std::collections::{BTreeMap, BTreeSet};

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    // Goal: an AppendEntries request with a normal entry, a membership entry
    // and the optional fields left out survives the codec field for field.
    // Method: encode, decode, compare the debug renderings (openraft's
    // request type has no PartialEq).
    #[test]
    fn append_entries_round_trip() {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            7,
            Member {
                node_id: "s1".into(),
                address: "127.0.0.1:7001".into(),
                ..Default::default()
            },
        );
        let membership = Membership::new(vec![BTreeSet::from([7])], nodes);
        let request = AppendEntriesRequest {
            vote: Vote::new_committed(3, 7),
            prev_log_id: None,
            leader_commit: Some(log_id(3, 4)),
            entries: vec![
                Entry {
                    log_id: log_id(3, 5),
                    payload: EntryPayload::Normal(Request::AcquireFence {
                        purpose: "approve join".into(),
                        expected_term: rap_proto::ids::AuthorityTerm(2),
                    }),
                },
                Entry {
                    log_id: log_id(3, 6),
                    payload: EntryPayload::Membership(membership),
                },
                Entry {
                    log_id: log_id(3, 7),
                    payload: EntryPayload::Blank,
                },
            ],
        };
        let bytes = encode("append entries", &request).expect("encode");
        let back: AppendEntriesRequest = decode("append entries", &bytes).expect("decode");
        assert_eq!(format!("{back:?}"), format!("{request:?}"));
    }

    // Goal: a remote Raft error comes back as the same typed error.
    // Method: encode an `Err(Fatal::Stopped)` reply and decode it.
    #[test]
    fn error_reply_round_trip() {
        let reply: VoteReply = Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
        let bytes = encode("vote reply", &reply).expect("encode");
        let back: VoteReply = decode("vote reply", &bytes).expect("decode");
        assert_eq!(back, reply);
    }

    // Goal: snapshot data travels as bytes (about its own size), and the
    // chunk converts back to the same request. Method: a 64 KiB chunk of
    // high bytes (which an integer array would spend two bytes each on).
    #[test]
    fn snapshot_chunk_is_compact() {
        let request = InstallSnapshotRequest {
            vote: Vote::new_committed(2, 1),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(2, 9)),
                snapshot_id: "s-9".into(),
                ..Default::default()
            },
            offset: 128,
            data: vec![0xff; 64 * 1024],
            done: true,
        };
        let bytes =
            encode("snapshot chunk", &SnapshotChunk::from(request.clone())).expect("encode");
        assert!(bytes.len() < 64 * 1024 + 512, "{} bytes", bytes.len());
        let back: SnapshotChunk = decode("snapshot chunk", &bytes).expect("decode");
        assert_eq!(InstallSnapshotRequest::from(back), request);
    }

    // Goal: garbage and oversize input are typed errors, not panics.
    // Method: decode random bytes and a buffer one byte over the limit.
    #[test]
    fn refuses_garbage_and_oversize() {
        let garbage = decode::<VoteRequest>("vote", &[0xc1, 0x00, 0x17]);
        assert!(
            matches!(garbage, Err(Error::InvalidRequest(_))),
            "{garbage:?}"
        );
        let big = vec![0u8; RAFT_RPC_BYTES_MAX + 1];
        let oversize = decode::<VoteRequest>("vote", &big);
        assert!(
            matches!(oversize, Err(Error::Oversize { .. })),
            "{oversize:?}"
        );
    }
}
