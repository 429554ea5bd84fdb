//! Every size and count limit of the authority group, named once.

use rap_proto::limits::ENVELOPE_BYTES_MAX;

/// Most envelopes in one `PublishShards` call: a publication touches the
/// scopes of one change, rarely more than a few dozen.
pub const PUBLISH_ENVELOPES_MAX: usize = 256;

/// Most bytes of envelopes in one `PublishShards` call (one Raft entry).
pub const PUBLISH_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Longest `purpose` of a fence request.
pub const FENCE_PURPOSE_BYTES_MAX: usize = 128;

/// Most shards (scopes) one cluster's state machine holds.
pub const SHARDS_MAX: usize = rap_proto::limits::MARKED_SCOPES_MAX;

/// Largest Raft RPC message (append-entries batches, snapshot chunks) and
/// largest gRPC message any authority listener accepts.
pub const RAFT_RPC_BYTES_MAX: usize = PUBLISH_BYTES_MAX + 4 * 1024 * 1024;

/// Most voters in one group (3 or 5 in practice; 7 still works).
pub const VOTERS_MAX: usize = 7;

const _: () = assert!(PUBLISH_BYTES_MAX >= ENVELOPE_BYTES_MAX);
const _: () = assert!(RAFT_RPC_BYTES_MAX > PUBLISH_BYTES_MAX);

/// Most scopes one `ShardHeads` request may name (an empty list asks for
/// every scope, at most [`SHARDS_MAX`]).
pub const HEADS_SCOPES_MAX: usize = SHARDS_MAX;

/// Most heads one `ShardHeads` answer carries with their envelopes, so an
/// answer stays well under the message limit.
pub const HEADS_ENVELOPES_MAX: usize = PUBLISH_ENVELOPES_MAX;
