//! The authority crate's error type: typed refusals with stable codes and
//! their gRPC mapping (`NO_QUORUM` is `UNAVAILABLE` with the reachable
//! voter count in the details).

use rap_core::codes;
use rap_proto::ids::{AuthorityTerm, ClusterId};

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the authority group can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node cannot reach a quorum of voters: writes are refused.
    #[error("no quorum: {reachable_voters}/{total_voters} voters reachable")]
    NoQuorum {
        /// Voters this node can reach (itself included).
        reachable_voters: u32,
        /// Voters in the group.
        total_voters: u32,
    },
    /// This node is not the leader and could not forward the request.
    #[error("not the leader; leader is {}", leader.as_deref().unwrap_or("unknown"))]
    NotLeader {
        /// The leader's RAP node id, when known.
        leader: Option<String>,
    },
    /// The state machine refused the entry (deterministically).
    #[error("{code}: {message}")]
    Refused {
        /// Stable code from the state machine (e.g. `STALE_FENCE`).
        code: String,
        /// Detail.
        message: String,
    },
    /// A request or RPC for another cluster.
    #[error("wrong cluster: this group serves {expected}, got {got:?}")]
    WrongCluster {
        /// Our cluster.
        expected: ClusterId,
        /// Theirs, shortened.
        got: String,
    },
    /// An RPC from a lower authority term: the sender is fenced.
    #[error("stale authority term: ours is {ours}, the request carries {theirs}")]
    StaleTerm {
        /// Our term.
        ours: AuthorityTerm,
        /// The sender's.
        theirs: AuthorityTerm,
    },
    /// An RPC from a higher authority term than ours: we are fenced until
    /// an operator rejoins us.
    #[error("fenced: authority term {theirs} exists, this node is at {ours}")]
    Fenced {
        /// Our term.
        ours: AuthorityTerm,
        /// The higher term seen.
        theirs: AuthorityTerm,
    },
    /// An RPC whose header claims a higher authority term than ours
    /// without a valid signed promotion order for it: refused, counted,
    /// and nobody is fenced.
    #[error(
        "unproven authority term: ours is {ours}, the request claims {theirs} without a valid signed order ({reason})"
    )]
    UnprovenTerm {
        /// Our term.
        ours: AuthorityTerm,
        /// The claimed term.
        theirs: AuthorityTerm,
        /// Why the proof did not hold.
        reason: String,
    },
    /// The caller is known but not admitted for this call (its kind, its
    /// membership, a revoked certificate); see [`crate::access`].
    #[error("permission denied ({code}): {message}")]
    PermissionDenied {
        /// Stable code, e.g. `CALLER_NOT_ADMITTED`, `NOT_A_MEMBER`.
        code: &'static str,
        /// Detail.
        message: String,
    },
    /// The call needs a client certificate and came without one.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Malformed or out-of-range input.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Input over a named limit.
    #[error("{what} too large: {got} > limit {limit}")]
    Oversize {
        /// What.
        what: &'static str,
        /// Limit.
        limit: usize,
        /// Seen.
        got: usize,
    },
    /// A promotion or rejoin order that is forged, stale or not for us.
    #[error("order refused: {0}")]
    OrderRefused(String),
    /// A signed order issued outside this node's clock window.
    #[error("order outside this node's clock window: {0}")]
    OrderOutsideWindow(String),
    /// Durable storage failed or is corrupt.
    #[error("storage: {0}")]
    Storage(String),
    /// Raft failed in a way that is not a refusal (shutdown, fatal).
    #[error("raft: {0}")]
    Raft(String),
    /// A client reached no storage node of the group that could answer
    /// (client side only: [`crate::client`]).
    #[error("no storage node answered: {0}")]
    Unreachable(String),
    /// A shard read of a scope this node holds no shard of.
    #[error("not found: {0}")]
    NotFound(String),
    /// A shard read asking for a newer version than this node holds.
    #[error(
        "not yet: this node holds version {held} of {scope}, the caller asks for at least {wanted}"
    )]
    NotYet {
        /// The scope.
        scope: String,
        /// The version held here.
        held: u64,
        /// The version asked for.
        wanted: u64,
    },
    /// This node sheds load (too many open shard watches).
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// A wire-contract error (ids, envelopes, trust roots).
    #[error(transparent)]
    Proto(#[from] rap_proto::Error),
}

impl Error {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            Error::NoQuorum { .. } => codes::NO_QUORUM,
            Error::NotLeader { .. } => codes::NOT_LEADER,
            Error::Refused { code, .. } => code,
            Error::WrongCluster { .. } => codes::WRONG_CLUSTER,
            Error::StaleTerm { .. } => codes::STALE_TERM,
            Error::Fenced { .. } => codes::FENCED,
            Error::UnprovenTerm { .. } => codes::UNPROVEN_TERM,
            Error::PermissionDenied { code, .. } => code,
            Error::Unauthenticated(_) => codes::UNAUTHENTICATED,
            Error::InvalidRequest(_) => codes::INVALID_REQUEST,
            Error::Oversize { .. } => codes::OVERSIZE,
            Error::OrderRefused(_) => codes::ORDER_REFUSED,
            Error::OrderOutsideWindow(_) => codes::ORDER_OUTSIDE_WINDOW,
            Error::Storage(_) => codes::STORAGE,
            Error::Raft(_) => codes::RAFT,
            Error::Unreachable(_) => codes::AUTHORITY_UNREACHABLE,
            Error::NotFound(_) => codes::NOT_FOUND,
            Error::NotYet { .. } => codes::NOT_YET,
            Error::Overloaded(_) => codes::OVERLOADED,
            Error::Proto(e) => e.code(),
        }
    }

    /// Whether the same call may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::NoQuorum { .. } | Error::NotLeader { .. } | Error::Raft(_) => true,
            Error::Storage(_) | Error::Unreachable(_) => true,
            Error::NotYet { .. } | Error::Overloaded(_) => true,
            Error::Refused { .. }
            | Error::WrongCluster { .. }
            | Error::StaleTerm { .. }
            | Error::Fenced { .. }
            | Error::UnprovenTerm { .. }
            | Error::PermissionDenied { .. }
            | Error::Unauthenticated(_)
            | Error::InvalidRequest(_)
            | Error::Oversize { .. }
            | Error::OrderRefused(_)
            | Error::OrderOutsideWindow(_)
            | Error::NotFound(_) => false,
            Error::Proto(e) => e.is_retryable(),
        }
    }

    fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::NoQuorum { .. }
            | Error::NotLeader { .. }
            | Error::Raft(_)
            | Error::Unreachable(_) => Code::Unavailable,
            Error::Refused { .. } | Error::StaleTerm { .. } | Error::Fenced { .. } => {
                Code::FailedPrecondition
            }
            Error::WrongCluster { .. } | Error::InvalidRequest(_) => Code::InvalidArgument,
            Error::Oversize { .. } => Code::OutOfRange,
            Error::OrderRefused(_)
            | Error::OrderOutsideWindow(_)
            | Error::UnprovenTerm { .. }
            | Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Storage(_) => Code::Internal,
            Error::NotFound(_) => Code::NotFound,
            Error::NotYet { .. } => Code::Unavailable,
            Error::Overloaded(_) => Code::ResourceExhausted,
            Error::Proto(e) => e.grpc_code(),
        }
    }
}

/// An identity, certificate or file refusal keeps its code: each
/// `rap-core` refusal is the same refusal here.
impl From<rap_core::Error> for Error {
    fn from(error: rap_core::Error) -> Self {
        match error {
            rap_core::Error::InvalidRequest(message) => Error::InvalidRequest(message),
            rap_core::Error::Oversize { what, limit, got } => Error::Oversize { what, limit, got },
            rap_core::Error::WrongCluster { expected, got } => {
                Error::WrongCluster { expected, got }
            }
            rap_core::Error::Storage(message) => Error::Storage(message),
            rap_core::Error::Proto(e) => Error::Proto(e),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        use prost::Message;
        let mut detail = rap_proto::pb::ErrorDetail {
            code: error.code().to_string(),
            message: error.to_string(),
            ..Default::default()
        };
        match &error {
            Error::NoQuorum {
                reachable_voters,
                total_voters,
            } => {
                detail.reachable_voters = *reachable_voters;
                detail.total_voters = *total_voters;
            }
            Error::StaleTerm { ours, .. }
            | Error::Fenced { ours, .. }
            | Error::UnprovenTerm { ours, .. } => {
                detail.authority_term = ours.0;
            }
            _ => {}
        }
        tonic::Status::with_details(
            error.grpc_code(),
            format!("{}: {}", error.code(), error),
            detail.encode_to_vec().into(),
        )
    }
}
