//! This crate's error type. Its codes are the authority group's codes for
//! the same refusals ([`crate::codes`]), so a caller that converts it keeps
//! the code a client sees.

use crate::codes;
use rap_proto::ids::ClusterId;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What reading, issuing or checking identities and files can refuse.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed or out-of-range input (a certificate, a name, a file).
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
    /// A certificate or CA of another cluster.
    #[error("wrong cluster: expected {expected}, got {got:?}")]
    WrongCluster {
        /// The cluster expected.
        expected: ClusterId,
        /// The one found, shortened.
        got: String,
    },
    /// Durable storage failed (a key or certificate file).
    #[error("storage: {0}")]
    Storage(String),
    /// A wire-contract error (ids, keys).
    #[error(transparent)]
    Proto(#[from] rap_proto::Error),
}

impl Error {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            Error::InvalidRequest(_) => codes::INVALID_REQUEST,
            Error::Oversize { .. } => codes::OVERSIZE,
            Error::WrongCluster { .. } => codes::WRONG_CLUSTER,
            Error::Storage(_) => codes::STORAGE,
            Error::Proto(e) => e.code(),
        }
    }

    /// Whether the same call may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Storage(_) => true,
            Error::InvalidRequest(_) | Error::Oversize { .. } | Error::WrongCluster { .. } => false,
            Error::Proto(e) => e.is_retryable(),
        }
    }
}
