//! The crate's error type. Every refusal of the verifier is its own variant
//! and carries the numbers that explain it (`Rollback { seen: 7, got: 5 }`),
//! a stable machine-readable [`Error::code`], and a gRPC mapping.

use crate::envelope::{Digest, KeyId, Scope};
use crate::ids::{AuthorityTerm, ClusterId, SnapshotVersion, TrustGeneration};
use crate::time::UnixMillis;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything rap-proto can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An id does not follow the id grammar (see [`crate::ids`]).
    #[error("invalid {kind} {value:?}: {reason}")]
    InvalidId {
        /// Which id ("node id", ...).
        kind: &'static str,
        /// The offending input, shortened.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A scope string is not one of the scope forms.
    #[error("invalid scope {value:?}: {reason}")]
    InvalidScope {
        /// The offending input, shortened.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A reader selector is not `node:<id>`, `role:<role>` or `all-nodes`.
    #[error("invalid reader {value:?}: {reason}")]
    InvalidReader {
        /// The offending input, shortened.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Input larger than its limit; refused before it is decoded or walked.
    #[error("{what} too large: {got} > limit {limit}")]
    Oversize {
        /// What was too large.
        what: &'static str,
        /// The limit (bytes or count).
        limit: usize,
        /// The size seen.
        got: usize,
    },
    /// Input that does not decode, or decodes to something impossible.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was malformed.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Input that decodes but is not in canonical form (re-encoding it
    /// gives other bytes): refused so that one message has one encoding.
    #[error("{what} is not canonically encoded")]
    NonCanonical {
        /// Which message.
        what: &'static str,
    },
    /// A format version this code does not speak.
    #[error("unsupported {what} format {got} (supported: {supported})")]
    UnsupportedFormat {
        /// Which message.
        what: &'static str,
        /// The format in the input.
        got: u32,
        /// The format this code speaks.
        supported: u32,
    },
    /// The input belongs to another cluster.
    #[error("wrong cluster: expected {expected}, got {got:?}")]
    WrongCluster {
        /// The cluster of this verifier.
        expected: ClusterId,
        /// The cluster named in the input, shortened.
        got: String,
    },
    /// An envelope for another scope than the one asked for (mix-and-match).
    #[error("scope mismatch: asked for {expected}, got {got}")]
    ScopeMismatch {
        /// The scope the reader asked for.
        expected: Scope,
        /// The scope in the envelope.
        got: Scope,
    },
    /// The signing key is not in the current trust root.
    #[error("unknown signing key {key_id} under trust generation {generation}")]
    UnknownKey {
        /// Key id in the header.
        key_id: KeyId,
        /// The verifier's current trust generation.
        generation: TrustGeneration,
    },
    /// The envelope was signed under a trust generation newer than the
    /// verifier knows: fetch and apply the trust-root rotation first.
    #[error("envelope signed under trust generation {got}, verifier knows only {current}")]
    UnknownTrustGeneration {
        /// The verifier's current trust generation.
        current: TrustGeneration,
        /// The generation in the header.
        got: TrustGeneration,
    },
    /// The envelope was signed under a trust generation that has been
    /// rotated away.
    #[error("envelope signed under trust generation {got}, current is {current}")]
    StaleTrustGeneration {
        /// The verifier's current trust generation.
        current: TrustGeneration,
        /// The generation in the header.
        got: TrustGeneration,
    },
    /// The body does not hash to the header's `content_hash`.
    #[error("content hash mismatch for {scope} version {version}")]
    ContentHashMismatch {
        /// Scope in the header.
        scope: Scope,
        /// Version in the header.
        version: SnapshotVersion,
    },
    /// The signature does not verify under the named key.
    #[error("bad signature on {scope} version {version} (key {key_id})")]
    BadSignature {
        /// Scope in the header.
        scope: Scope,
        /// Version in the header.
        version: SnapshotVersion,
        /// Key id in the header.
        key_id: KeyId,
    },
    /// The envelope's authority term is lower than one already seen: it
    /// comes from a fenced (old) side of the cluster.
    #[error("stale authority term: seen {seen}, got {got}")]
    StaleTerm {
        /// Highest term accepted so far.
        seen: AuthorityTerm,
        /// Term in the header.
        got: AuthorityTerm,
    },
    /// A lower version than one already accepted for this scope.
    #[error("rollback of {scope}: seen version {seen}, got {got}")]
    Rollback {
        /// The scope.
        scope: Scope,
        /// Highest version accepted so far.
        seen: SnapshotVersion,
        /// Version in the header.
        got: SnapshotVersion,
    },
    /// The very envelope already accepted, offered again.
    #[error("replay of {scope} version {version}")]
    Replay {
        /// The scope.
        scope: Scope,
        /// The version, already accepted.
        version: SnapshotVersion,
    },
    /// Two different contents for the same (scope, version), or a next
    /// version that does not chain to the accepted one.
    #[error("fork of {scope} at version {version}: {reason}")]
    Fork {
        /// The scope.
        scope: Scope,
        /// The version at which histories diverge.
        version: SnapshotVersion,
        /// Which check found it.
        reason: &'static str,
    },
    /// Past `expires_at` by more than the clock-skew allowance.
    #[error("{scope} expired at {expires_at}, now {now} (skew allowance {skew_ms} ms)")]
    Expired {
        /// The scope.
        scope: Scope,
        /// `expires_at` of the header.
        expires_at: UnixMillis,
        /// The verifier's clock.
        now: UnixMillis,
        /// The skew allowance used.
        skew_ms: u64,
    },
    /// `issued_at` is in the future by more than the skew allowance.
    #[error("{scope} not valid before {issued_at}, now {now} (skew allowance {skew_ms} ms)")]
    NotYetValid {
        /// The scope.
        scope: Scope,
        /// `issued_at` of the header.
        issued_at: UnixMillis,
        /// The verifier's clock.
        now: UnixMillis,
        /// The skew allowance used.
        skew_ms: u64,
    },
    /// The envelope's readers do not admit this reader (need-to-know).
    #[error("reader {reader} is not admitted to {scope}")]
    ReaderNotAdmitted {
        /// The scope.
        scope: Scope,
        /// The reader, as text.
        reader: String,
    },
    /// A trust root of an unexpected generation was offered for rotation.
    #[error("trust root rotation must go from generation {current} to {expected}, got {got}")]
    TrustRootGeneration {
        /// The current generation.
        current: TrustGeneration,
        /// The only acceptable next generation.
        expected: TrustGeneration,
        /// The generation offered.
        got: TrustGeneration,
    },
    /// The offered root's `prev_root_hash` does not name the current root.
    #[error("trust root generation {generation} does not chain to the current root")]
    TrustRootChain {
        /// The generation offered.
        generation: TrustGeneration,
    },
    /// The offered root lacks a required valid signature.
    #[error("trust root generation {generation} lacks a valid signature by {by}")]
    TrustRootUnsigned {
        /// The generation offered.
        generation: TrustGeneration,
        /// "the previous generation's keys" or "its own keys".
        by: &'static str,
    },
    /// The genesis root does not match the pinned hash.
    #[error("trust root hash {got} does not match the pinned {expected}")]
    TrustRootNotPinned {
        /// The pinned hash.
        expected: Digest,
        /// The offered root's hash.
        got: Digest,
    },
    /// A key that is not a valid ed25519 key, or a key file that is unsafe.
    #[error("invalid key: {reason}")]
    InvalidKey {
        /// What is wrong.
        reason: String,
    },
    /// A bad verifier or signer option.
    #[error("invalid option {what}: {reason}")]
    InvalidOption {
        /// Which option.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The high-water store failed; nothing was accepted.
    #[error("{context}: {source}")]
    Store {
        /// What was being done ("persist high-water mark").
        context: String,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// A stable, machine-readable code for logs, metrics and gRPC details.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidId { .. } => "INVALID_ID",
            Error::InvalidScope { .. } => "INVALID_SCOPE",
            Error::InvalidReader { .. } => "INVALID_READER",
            Error::Oversize { .. } => "OVERSIZE",
            Error::Malformed { .. } => "MALFORMED",
            Error::NonCanonical { .. } => "NON_CANONICAL",
            Error::UnsupportedFormat { .. } => "UNSUPPORTED_FORMAT",
            Error::WrongCluster { .. } => "WRONG_CLUSTER",
            Error::ScopeMismatch { .. } => "SCOPE_MISMATCH",
            Error::UnknownKey { .. } => "UNKNOWN_KEY",
            Error::UnknownTrustGeneration { .. } => "UNKNOWN_TRUST_GENERATION",
            Error::StaleTrustGeneration { .. } => "STALE_TRUST_GENERATION",
            Error::ContentHashMismatch { .. } => "CONTENT_HASH_MISMATCH",
            Error::BadSignature { .. } => "BAD_SIGNATURE",
            Error::StaleTerm { .. } => "STALE_TERM",
            Error::Rollback { .. } => "ROLLBACK",
            Error::Replay { .. } => "REPLAY",
            Error::Fork { .. } => "FORK",
            Error::Expired { .. } => "EXPIRED",
            Error::NotYetValid { .. } => "NOT_YET_VALID",
            Error::ReaderNotAdmitted { .. } => "READER_NOT_ADMITTED",
            Error::TrustRootGeneration { .. } => "TRUST_ROOT_GENERATION",
            Error::TrustRootChain { .. } => "TRUST_ROOT_CHAIN",
            Error::TrustRootUnsigned { .. } => "TRUST_ROOT_UNSIGNED",
            Error::TrustRootNotPinned { .. } => "TRUST_ROOT_NOT_PINNED",
            Error::InvalidKey { .. } => "INVALID_KEY",
            Error::InvalidOption { .. } => "INVALID_OPTION",
            Error::Store { .. } => "STORE",
        }
    }

    /// Whether the same call may succeed if simply tried again. Every
    /// refusal of bad input is final; only a store failure is transient.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store { .. } => true,
            Error::InvalidId { .. }
            | Error::InvalidScope { .. }
            | Error::InvalidReader { .. }
            | Error::Oversize { .. }
            | Error::Malformed { .. }
            | Error::NonCanonical { .. }
            | Error::UnsupportedFormat { .. }
            | Error::WrongCluster { .. }
            | Error::ScopeMismatch { .. }
            | Error::UnknownKey { .. }
            | Error::UnknownTrustGeneration { .. }
            | Error::StaleTrustGeneration { .. }
            | Error::ContentHashMismatch { .. }
            | Error::BadSignature { .. }
            | Error::StaleTerm { .. }
            | Error::Rollback { .. }
            | Error::Replay { .. }
            | Error::Fork { .. }
            | Error::Expired { .. }
            | Error::NotYetValid { .. }
            | Error::ReaderNotAdmitted { .. }
            | Error::TrustRootGeneration { .. }
            | Error::TrustRootChain { .. }
            | Error::TrustRootUnsigned { .. }
            | Error::TrustRootNotPinned { .. }
            | Error::InvalidKey { .. }
            | Error::InvalidOption { .. } => false,
        }
    }

    /// The gRPC status code this error maps to at a service edge.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidId { .. }
            | Error::InvalidScope { .. }
            | Error::InvalidReader { .. }
            | Error::Malformed { .. }
            | Error::NonCanonical { .. }
            | Error::UnsupportedFormat { .. }
            | Error::WrongCluster { .. }
            | Error::ScopeMismatch { .. }
            | Error::InvalidKey { .. }
            | Error::InvalidOption { .. } => Code::InvalidArgument,
            Error::Oversize { .. } => Code::OutOfRange,
            Error::UnknownKey { .. }
            | Error::ContentHashMismatch { .. }
            | Error::BadSignature { .. }
            | Error::ReaderNotAdmitted { .. }
            | Error::TrustRootChain { .. }
            | Error::TrustRootUnsigned { .. }
            | Error::TrustRootNotPinned { .. } => Code::PermissionDenied,
            Error::UnknownTrustGeneration { .. }
            | Error::StaleTrustGeneration { .. }
            | Error::StaleTerm { .. }
            | Error::Rollback { .. }
            | Error::Replay { .. }
            | Error::Fork { .. }
            | Error::Expired { .. }
            | Error::NotYetValid { .. }
            | Error::TrustRootGeneration { .. } => Code::FailedPrecondition,
            Error::Store { .. } => Code::Unavailable,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        use prost::Message;
        let detail = crate::pb::ErrorDetail {
            code: error.code().to_string(),
            message: error.to_string(),
            ..Default::default()
        };
        tonic::Status::with_details(
            error.grpc_code(),
            format!("{}: {}", error.code(), error),
            detail.encode_to_vec().into(),
        )
    }
}
