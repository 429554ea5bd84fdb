//! The registry of stable error codes that cross a crate or a process
//! boundary: a server returns one in `ErrorDetail.code` (and at the start
//! of the gRPC message), a client decides on it. Both sides name the
//! constant here, never a string literal, so a renamed code fails to
//! compile instead of silently never matching.
//!
//! Codes that only one crate produces and nobody matches stay with their
//! error type. [`error_detail`] reads a code (and its numbers) back out of
//! a gRPC status.

/// Reads the machine-readable detail back out of a status (client side):
/// `None` when the status carries none (a transport error, another
/// server).
pub fn error_detail(status: &tonic::Status) -> Option<rap_proto::pb::ErrorDetail> {
    use prost::Message;
    if status.details().is_empty() {
        return None;
    }
    rap_proto::pb::ErrorDetail::decode(status.details()).ok()
}

// --- the authority group (storage nodes) ---

/// This node reaches fewer than a majority of voters: writes refused.
pub const NO_QUORUM: &str = "NO_QUORUM";
/// Not the leader and the request could not be forwarded.
pub const NOT_LEADER: &str = "NOT_LEADER";
/// A request or RPC for another cluster.
pub const WRONG_CLUSTER: &str = "WRONG_CLUSTER";
/// An RPC from a lower authority term: its sender is fenced.
pub const STALE_TERM: &str = "STALE_TERM";
/// This node saw a higher authority term and is fenced.
pub const FENCED: &str = "FENCED";
/// A higher authority term claimed without its signed order.
pub const UNPROVEN_TERM: &str = "UNPROVEN_TERM";
/// A fence of an older term, or a fence sequence already used.
pub const STALE_FENCE: &str = "STALE_FENCE";
/// A fence request expected another authority term.
pub const TERM_MISMATCH: &str = "TERM_MISMATCH";
/// The group is already initialized (bootstrap is idempotent).
pub const ALREADY_INITIALIZED: &str = "ALREADY_INITIALIZED";
/// The group is not initialized yet.
pub const NOT_INITIALIZED: &str = "NOT_INITIALIZED";
/// A promotion or rejoin order that is forged, stale or not for us.
pub const ORDER_REFUSED: &str = "ORDER_REFUSED";
/// A signed order issued outside this node's clock window: too old, or
/// from its future (check the clocks of the operator and the node).
pub const ORDER_OUTSIDE_WINDOW: &str = "ORDER_OUTSIDE_WINDOW";
/// A learner that did not catch up, so it was not made a voter.
pub const LEARNER_BEHIND: &str = "LEARNER_BEHIND";
/// The caller's kind or membership does not admit this call.
pub const CALLER_NOT_ADMITTED: &str = "CALLER_NOT_ADMITTED";
/// The caller is not a member of this node's group.
pub const NOT_A_MEMBER: &str = "NOT_A_MEMBER";
/// The caller's certificate is revoked.
pub const CERTIFICATE_REVOKED: &str = "CERTIFICATE_REVOKED";
/// Durable storage failed or is corrupt.
pub const STORAGE: &str = "STORAGE";
/// Raft failed in a way that is not a refusal.
pub const RAFT: &str = "RAFT";
/// A shard read (`ShardService`) of a scope whose envelope readers do not
/// admit the calling node.
pub const NOT_A_READER: &str = "NOT_A_READER";
/// A shard read asking for a version newer than the serving node holds:
/// retry later or ask another storage node.
pub const NOT_YET: &str = "NOT_YET";

// --- shared by both servers ---

/// The call needs a credential and came without a valid one.
pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
/// Malformed or out-of-range input (authority group, identities).
pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
/// Input over a named limit.
pub const OVERSIZE: &str = "OVERSIZE";
/// The named object does not exist (control-plane objects; on storage
/// nodes, a scope that holds no shard).
pub const NOT_FOUND: &str = "NOT_FOUND";
/// The server sheds load (on storage nodes: too many open shard watches).
pub const OVERLOADED: &str = "OVERLOADED";

// --- the control plane ---

/// The cluster has no authority group yet.
pub const NOT_BOOTSTRAPPED: &str = "NOT_BOOTSTRAPPED";
/// The cluster's group refused the control plane's request.
pub const AUTHORITY_REFUSED: &str = "AUTHORITY_REFUSED";
/// No storage node of the cluster answered.
pub const AUTHORITY_UNREACHABLE: &str = "AUTHORITY_UNREACHABLE";
/// Malformed input to the control plane.
pub const INVALID_ARGUMENT: &str = "INVALID_ARGUMENT";
/// The object exists already.
pub const ALREADY_EXISTS: &str = "ALREADY_EXISTS";
/// The object is not in a state that allows this.
pub const FAILED_PRECONDITION: &str = "FAILED_PRECONDITION";
/// The caller's principal kind may not do this.
pub const PERMISSION_DENIED: &str = "PERMISSION_DENIED";
/// An API token past its expiry.
pub const API_TOKEN_EXPIRED: &str = "API_TOKEN_EXPIRED";
/// A revoked API token.
pub const API_TOKEN_REVOKED: &str = "API_TOKEN_REVOKED";
/// A high-risk action by a principal with TOTP, without a fresh step-up
/// (`rapctl step-up`).
pub const STEP_UP_REQUIRED: &str = "STEP_UP_REQUIRED";
/// A TOTP code that is wrong, outside the clock window, or already used.
pub const TOTP_INVALID: &str = "TOTP_INVALID";
/// A step-up or confirmation by a principal without (pending) TOTP.
pub const TOTP_NOT_ENROLLED: &str = "TOTP_NOT_ENROLLED";
/// A disabled principal.
pub const PRINCIPAL_DISABLED: &str = "PRINCIPAL_DISABLED";
/// The caller sends faster than its limit (`retry_after_ms` says when).
pub const RATE_LIMITED: &str = "RATE_LIMITED";
/// A feature that does not exist yet.
pub const NOT_IMPLEMENTED: &str = "NOT_IMPLEMENTED";
/// A join token that does not parse.
pub const TOKEN_MALFORMED: &str = "TOKEN_MALFORMED";
/// A join token nobody issued.
pub const TOKEN_UNKNOWN: &str = "TOKEN_UNKNOWN";
/// A join token past its expiry.
pub const TOKEN_EXPIRED: &str = "TOKEN_EXPIRED";
/// A revoked join token.
pub const TOKEN_REVOKED: &str = "TOKEN_REVOKED";
/// A join token with no uses left.
pub const TOKEN_EXHAUSTED: &str = "TOKEN_EXHAUSTED";
/// A join token of another cluster.
pub const TOKEN_WRONG_CLUSTER: &str = "TOKEN_WRONG_CLUSTER";
/// A join token of another scope (node vs storage).
pub const TOKEN_WRONG_SCOPE: &str = "TOKEN_WRONG_SCOPE";
/// A capability the node has not reported.
pub const MISSING_CAPABILITY: &str = "MISSING_CAPABILITY";
/// The node is not an active member of the cluster.
pub const NO_MEMBERSHIP: &str = "NO_MEMBERSHIP";
/// A group move that would make a cycle.
pub const GROUP_CYCLE: &str = "GROUP_CYCLE";
/// A storage node holds another role than the call needs (a voter or
/// learner named as a cache replica).
pub const STORAGE_ROLE: &str = "STORAGE_ROLE";
/// A desired service whose role the node does not hold (or a service not
/// in the catalog, `rap_proto::services`).
pub const SERVICE_NOT_ALLOWED: &str = "SERVICE_NOT_ALLOWED";
/// A signing key or CA that was revoked.
pub const KEY_REVOKED: &str = "KEY_REVOKED";
/// The control plane's key files failed.
pub const KEYS: &str = "KEYS";
/// The database failed.
pub const DATABASE: &str = "DATABASE";
/// A schema migration failed.
pub const MIGRATION: &str = "MIGRATION";
/// Anything else that is the server's fault.
pub const INTERNAL: &str = "INTERNAL";
