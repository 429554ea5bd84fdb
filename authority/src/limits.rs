//! Every size and count limit of the authority group, named once.

use rap_proto::limits::{ENVELOPE_BYTES_MAX, SCOPE_BYTES_MAX};

/// Most envelopes in one `PublishShards` call: a publication touches the
/// scopes of one change, rarely more than a few dozen.
pub const PUBLISH_ENVELOPES_MAX: usize = 256;

/// Most bytes of envelopes in one `PublishShards` call (one Raft entry).
pub const PUBLISH_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Longest `purpose` of a fence request.
pub const FENCE_PURPOSE_BYTES_MAX: usize = 128;

/// Most fences one Raft entry grants (group commit at the leader).
pub const FENCE_BATCH_MAX: usize = 256;

/// Most `AcquireFence` calls waiting on one node for their entry; more
/// are refused `OVERLOADED`.
pub const FENCE_QUEUE_MAX: usize = 16 * FENCE_BATCH_MAX;

/// Most shards (scopes) one cluster's state machine holds.
pub const SHARDS_MAX: usize = rap_proto::limits::MARKED_SCOPES_MAX;

/// Largest Raft RPC message (append-entries batches, snapshot chunks) and
/// largest gRPC message any authority listener accepts.
pub const RAFT_RPC_BYTES_MAX: usize = PUBLISH_BYTES_MAX + 4 * 1024 * 1024;

/// Most voters in one group (3 or 5 in practice; 7 still works).
pub const VOTERS_MAX: usize = 7;

/// Most scopes one `ShardService/WatchShards` stream watches: a node reads
/// its own `node/` and `peers/` scopes, one `role/` per role, one
/// `org/../services` per organization and the `trust/` scopes.
pub const WATCH_SCOPES_MAX: usize = 256;

/// Most scopes in one `ShardService/ListOwnScopes` answer (the rest is
/// flagged `truncated`).
pub const OWN_SCOPES_MAX: usize = 1024;

/// Most `WatchShards` streams one storage node keeps open at once; one
/// more is refused `OVERLOADED`.
pub const WATCH_STREAMS_MAX: usize = 8192;

/// Largest request a `ShardService` accepts: a watch of
/// [`WATCH_SCOPES_MAX`] scopes with their versions, and some room.
pub const SHARD_REQUEST_BYTES_MAX: usize = WATCH_SCOPES_MAX * (SCOPE_BYTES_MAX + 16) + 1024;

/// Largest answer a `ShardService` sends: one envelope with its staleness,
/// or a list of [`OWN_SCOPES_MAX`] scopes.
pub const SHARD_RESPONSE_BYTES_MAX: usize = ENVELOPE_BYTES_MAX + 64 * 1024;

const _: () = assert!(PUBLISH_BYTES_MAX >= ENVELOPE_BYTES_MAX);
const _: () = assert!(SHARD_RESPONSE_BYTES_MAX > OWN_SCOPES_MAX * (SCOPE_BYTES_MAX + 16));
const _: () = assert!(RAFT_RPC_BYTES_MAX > PUBLISH_BYTES_MAX);

/// Most scopes one `ShardHeads` request may name (an empty list asks for
/// every scope, at most [`SHARDS_MAX`]).
pub const HEADS_SCOPES_MAX: usize = SHARDS_MAX;

/// Most heads one `ShardHeads` answer carries with their envelopes, so an
/// answer stays well under the message limit.
pub const HEADS_ENVELOPES_MAX: usize = PUBLISH_ENVELOPES_MAX;
