//! The control plane's error type: every refusal is its own variant with a
//! stable [`Error::code`], a gRPC mapping and, for `NO_QUORUM`, the reachable
//! voter count in the `rap.v1.ErrorDetail`. Codes that clients match are
//! named in `rap_core::codes`.

use rap_core::codes;

/// gRPC response metadata carrying how many milliseconds to wait before
/// retrying a `RATE_LIMITED` refusal.
pub const RETRY_AFTER_MS_HEADER: &str = "retry-after-ms";

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a join token was refused. One variant per cause so that tests and
/// operators can tell them apart; the agent sees the same code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Not of the form `rapjt.<id>.<secret>`.
    Malformed,
    /// No token with that id, or the secret does not match.
    Unknown,
    /// Past its `expires_at`.
    Expired,
    /// Revoked by an operator.
    Revoked,
    /// `used_count` reached `max_uses`.
    Exhausted,
    /// Scoped to another cluster than the request names.
    WrongCluster,
    /// Made for another kind of node, or for another storage node id.
    WrongScope,
}

impl TokenRefusal {
    /// Stable code.
    pub fn code(self) -> &'static str {
        match self {
            TokenRefusal::Malformed => codes::TOKEN_MALFORMED,
            TokenRefusal::Unknown => codes::TOKEN_UNKNOWN,
            TokenRefusal::Expired => codes::TOKEN_EXPIRED,
            TokenRefusal::Revoked => codes::TOKEN_REVOKED,
            TokenRefusal::Exhausted => codes::TOKEN_EXHAUSTED,
            TokenRefusal::WrongCluster => codes::TOKEN_WRONG_CLUSTER,
            TokenRefusal::WrongScope => codes::TOKEN_WRONG_SCOPE,
        }
    }
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenRefusal::Malformed => "join token is malformed (expected rapjt.<id>.<secret>)",
            TokenRefusal::Unknown => "join token is not known",
            TokenRefusal::Expired => "join token has expired",
            TokenRefusal::Revoked => "join token was revoked",
            TokenRefusal::Exhausted => "join token has no uses left",
            TokenRefusal::WrongCluster => "join token belongs to another cluster",
            TokenRefusal::WrongScope => {
                "join token is for another kind of node or another storage node id"
            }
        })
    }
}

/// Everything the control plane can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed or out-of-range input.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Input larger than its named limit.
    #[error("{what} too large: {got} > limit {limit}")]
    Oversize {
        /// What was too large.
        what: &'static str,
        /// The limit.
        limit: usize,
        /// The size seen.
        got: usize,
    },
    /// The named object does not exist (or is not visible to the caller).
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// What kind of object.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The object exists already.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists {
        /// What kind of object.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// A join token was refused.
    #[error("{0}")]
    Token(TokenRefusal),
    /// A proof of possession does not verify against the key it names.
    #[error("proof of possession does not verify: {0}")]
    BadProof(String),
    /// A signed request was seen before (same key and nonce), or its
    /// timestamp is outside the allowed window.
    #[error("replayed or stale request: {0}")]
    Replay(String),
    /// The object is not in the state the operation needs (e.g. approving a
    /// request that is no longer pending).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A role was asked for without the matching reported capability.
    #[error("node {node} has not reported capability {capability} needed for role {role}")]
    MissingCapability {
        /// The node.
        node: String,
        /// The role asked for.
        role: String,
        /// The capability it needs.
        capability: String,
    },
    /// The node has no active membership in the cluster.
    #[error("node {node} has no active membership in cluster {cluster}")]
    NoMembership {
        /// The cluster.
        cluster: String,
        /// The node.
        node: String,
    },
    /// A service may not be enabled on the node: its role is not
    /// assigned there, or the service is not in the catalog.
    #[error("service {service} may not run on node {node}: {why}")]
    ServiceNotAllowed {
        /// The service.
        service: String,
        /// The node.
        node: String,
        /// Why, with what would allow it.
        why: String,
    },
    /// Moving a group would make the group tree cyclic.
    #[error("{0}")]
    GroupCycle(String),
    /// The storage node holds another role than the call needs (a voter
    /// or learner named as a cache replica).
    #[error("storage node {node} is a {role} of cluster {cluster}: {why}")]
    StorageRole {
        /// The cluster.
        cluster: String,
        /// The storage node.
        node: String,
        /// Its role (`voter`, `learner`, `cache`, `retired`).
        role: String,
        /// Why that role does not do.
        why: &'static str,
    },
    /// No, missing or unknown bearer token / client certificate.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The API token's secret matched, but the token is past its expiry
    /// (the token id; never the secret).
    #[error("API token {0} has expired")]
    ApiTokenExpired(String),
    /// The API token's secret matched, but the token was revoked.
    #[error("API token {0} was revoked")]
    ApiTokenRevoked(String),
    /// The API token's secret matched, but its principal is disabled.
    #[error("principal {0} is disabled")]
    PrincipalDisabled(String),
    /// The caller may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// A high-risk action (the action name) by a principal with TOTP,
    /// without a step-up within the last minutes.
    #[error("{0} needs a fresh step-up: run `rapctl step-up` with a code from your authenticator")]
    StepUpRequired(String),
    /// A TOTP code that is wrong, outside the clock window or already
    /// used (never the code itself).
    #[error("TOTP code refused: {0}")]
    TotpInvalid(String),
    /// No TOTP to check a code against.
    #[error("no TOTP enrolled: {0}")]
    TotpNotEnrolled(String),
    /// The caller's node identity was revoked: nothing it asks of the
    /// agent API is done any more (join again to come back).
    #[error("certificate revoked: {0}")]
    CertificateRevoked(String),
    /// The cluster's authority group has no quorum: the mutation was refused.
    #[error(
        "no quorum: {reachable_voters}/{total_voters} voters reachable; the mutation was refused and nothing changed"
    )]
    NoQuorum {
        /// Voters the answering storage node could reach.
        reachable_voters: u32,
        /// Voters in the group.
        total_voters: u32,
    },
    /// The fence is older than one already used, or of another term: a
    /// newer authority exists. Nothing changed.
    #[error("stale fence: {0}")]
    StaleFence(String),
    /// The cluster has no authority group yet (`rapctl cluster bootstrap`).
    #[error(
        "cluster {0} has no authority group yet: run `rapctl cluster bootstrap {0} --voter ...`"
    )]
    NotBootstrapped(String),
    /// The authority group answered with another refusal.
    #[error("authority group refused: {code}: {message}")]
    Authority {
        /// Its stable code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The authority group could not be reached at all.
    #[error("authority group unreachable: {0}")]
    AuthorityUnreachable(String),
    /// Key material on disk is missing or unusable.
    #[error("keys: {0}")]
    Keys(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The key's certificate was revoked; it may join again only with a
    /// platform owner's override (`rapctl join-request allow-revoked-key`).
    #[error("key revoked: {0}")]
    KeyRevoked(String),
    /// The node id is reserved (the control plane's, a storage node's for
    /// an agent, an agent's for a storage node).
    #[error("reserved id: {0}")]
    ReservedId(String),
    /// The feature is not built yet; the message says what to use instead.
    #[error("not implemented: {0}")]
    NotImplemented(String),
    /// Too much load right now; retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// This caller sends faster than its own limit; retry after
    /// `retry_after`. Other callers are not affected.
    #[error("rate limited: {what}; retry in {} ms", retry_after.as_millis())]
    RateLimited {
        /// What is limited, e.g. "heartbeats of node c1/n1".
        what: String,
        /// When a retry will be accepted at the earliest.
        retry_after: std::time::Duration,
    },
    /// A configuration setting is refused; `key` is the setting to change.
    #[error("config: {key}: {message}")]
    Config {
        /// The config key (TOML name) to change.
        key: &'static str,
        /// Why it is refused and what to set instead.
        message: String,
    },
    /// Something that should not happen (a bug or corrupt state).
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => codes::INVALID_ARGUMENT,
            Error::Oversize { .. } => codes::OVERSIZE,
            Error::NotFound { .. } => codes::NOT_FOUND,
            Error::AlreadyExists { .. } => codes::ALREADY_EXISTS,
            Error::Token(refusal) => refusal.code(),
            Error::BadProof(_) => "BAD_PROOF",
            Error::Replay(_) => "REPLAY",
            Error::FailedPrecondition(_) => codes::FAILED_PRECONDITION,
            Error::MissingCapability { .. } => codes::MISSING_CAPABILITY,
            Error::NoMembership { .. } => codes::NO_MEMBERSHIP,
            Error::ServiceNotAllowed { .. } => codes::SERVICE_NOT_ALLOWED,
            Error::GroupCycle(_) => codes::GROUP_CYCLE,
            Error::StorageRole { .. } => codes::STORAGE_ROLE,
            Error::Unauthenticated(_) => codes::UNAUTHENTICATED,
            Error::ApiTokenExpired(_) => codes::API_TOKEN_EXPIRED,
            Error::ApiTokenRevoked(_) => codes::API_TOKEN_REVOKED,
            Error::PrincipalDisabled(_) => codes::PRINCIPAL_DISABLED,
            Error::PermissionDenied(_) => codes::PERMISSION_DENIED,
            Error::StepUpRequired(_) => codes::STEP_UP_REQUIRED,
            Error::TotpInvalid(_) => codes::TOTP_INVALID,
            Error::TotpNotEnrolled(_) => codes::TOTP_NOT_ENROLLED,
            Error::CertificateRevoked(_) => codes::CERTIFICATE_REVOKED,
            Error::NoQuorum { .. } => codes::NO_QUORUM,
            Error::StaleFence(_) => codes::STALE_FENCE,
            Error::NotBootstrapped(_) => codes::NOT_BOOTSTRAPPED,
            Error::Authority { .. } => codes::AUTHORITY_REFUSED,
            Error::AuthorityUnreachable(_) => codes::AUTHORITY_UNREACHABLE,
            Error::Keys(_) => codes::KEYS,
            Error::Database(_) => codes::DATABASE,
            Error::Migrate(_) => codes::MIGRATION,
            Error::KeyRevoked(_) => codes::KEY_REVOKED,
            Error::ReservedId(_) => "RESERVED_ID",
            Error::NotImplemented(_) => codes::NOT_IMPLEMENTED,
            Error::Overloaded(_) => codes::OVERLOADED,
            Error::RateLimited { .. } => codes::RATE_LIMITED,
            Error::Config { .. } => "CONFIG",
            Error::Internal(_) => codes::INTERNAL,
        }
    }

    /// The gRPC status code.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidArgument(_) | Error::Oversize { .. } | Error::Config { .. } => {
                Code::InvalidArgument
            }
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::Token(_) | Error::BadProof(_) | Error::KeyRevoked(_) => Code::PermissionDenied,
            Error::ReservedId(_) => Code::FailedPrecondition,
            Error::Replay(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_)
            | Error::MissingCapability { .. }
            | Error::NoMembership { .. }
            | Error::ServiceNotAllowed { .. }
            | Error::GroupCycle(_)
            | Error::StorageRole { .. }
            | Error::StaleFence(_)
            | Error::NotBootstrapped(_)
            | Error::Authority { .. } => Code::FailedPrecondition,
            Error::Unauthenticated(_)
            | Error::ApiTokenExpired(_)
            | Error::ApiTokenRevoked(_)
            | Error::PrincipalDisabled(_) => Code::Unauthenticated,
            Error::PermissionDenied(_)
            | Error::CertificateRevoked(_)
            | Error::StepUpRequired(_)
            | Error::TotpInvalid(_) => Code::PermissionDenied,
            Error::TotpNotEnrolled(_) => Code::FailedPrecondition,
            Error::NoQuorum { .. } | Error::AuthorityUnreachable(_) | Error::Database(_) => {
                Code::Unavailable
            }
            Error::Keys(_) | Error::Migrate(_) | Error::Internal(_) => Code::Internal,
            Error::NotImplemented(_) => Code::Unimplemented,
            Error::Overloaded(_) | Error::RateLimited { .. } => Code::ResourceExhausted,
        }
    }

    /// Whether the same call may succeed if sent again later unchanged
    /// (load, rate, quorum, an unreachable authority group, a database
    /// that is down or out of connections); the caller should back off
    /// first. Refusals (bad input, permissions, state, stale fences) are
    /// not retryable: sending the same call again gets the same answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Overloaded(_)
            | Error::RateLimited { .. }
            | Error::NoQuorum { .. }
            | Error::AuthorityUnreachable(_) => true,
            Error::Database(e) => is_transient_database_error(e),
            Error::InvalidArgument(_)
            | Error::Oversize { .. }
            | Error::NotFound { .. }
            | Error::AlreadyExists { .. }
            | Error::Token(_)
            | Error::BadProof(_)
            | Error::Replay(_)
            | Error::FailedPrecondition(_)
            | Error::MissingCapability { .. }
            | Error::NoMembership { .. }
            | Error::ServiceNotAllowed { .. }
            | Error::GroupCycle(_)
            | Error::StorageRole { .. }
            | Error::Unauthenticated(_)
            | Error::ApiTokenExpired(_)
            | Error::ApiTokenRevoked(_)
            | Error::PrincipalDisabled(_)
            | Error::PermissionDenied(_)
            | Error::StepUpRequired(_)
            | Error::TotpInvalid(_)
            | Error::TotpNotEnrolled(_)
            | Error::CertificateRevoked(_)
            | Error::StaleFence(_)
            | Error::NotBootstrapped(_)
            | Error::Authority { .. }
            | Error::Keys(_)
            | Error::Migrate(_)
            | Error::KeyRevoked(_)
            | Error::ReservedId(_)
            | Error::NotImplemented(_)
            | Error::Config { .. }
            | Error::Internal(_) => false,
        }
    }

    /// How long to wait before a retry, when the refusal says.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Error::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// Shortcut for [`Error::NotFound`].
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            id: id.into(),
        }
    }

    /// Shortcut for [`Error::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }
}

/// Whether a database failure is transient: the server or the network is
/// down, or no pooled connection was free in time. A statement the database
/// refused (constraint, syntax, missing row, decoding) is not.
fn is_transient_database_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        // Serialization failures and deadlocks (SQLSTATE class 40) may
        // succeed when the transaction is run again.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("40")),
        _ => false,
    }
}

impl From<rap_proto::Error> for Error {
    fn from(error: rap_proto::Error) -> Self {
        match error {
            rap_proto::Error::Oversize { what, limit, got } => Error::Oversize { what, limit, got },
            other => Error::InvalidArgument(other.to_string()),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        use prost::Message;
        let (reachable_voters, total_voters) = match &error {
            Error::NoQuorum {
                reachable_voters,
                total_voters,
            } => (*reachable_voters, *total_voters),
            _ => (0, 0),
        };
        // Database and internal failures are logged in full, not sent.
        let message = match &error {
            Error::Database(e) => {
                tracing::error!(error = %e, "database error");
                "database error (see the control plane log)".to_string()
            }
            Error::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                error.to_string()
            }
            _ => error.to_string(),
        };
        // Messages may quote caller input (ids, names): cut, so a 10 KiB
        // id cannot blow the HTTP/2 header list of the answer.
        let message =
            crate::audit::cut(&message, crate::limits::STATUS_MESSAGE_BYTES_MAX).to_string();
        let detail = rap_proto::pb::ErrorDetail {
            code: error.code().to_string(),
            message: message.clone(),
            reachable_voters,
            total_voters,
            ..Default::default()
        };
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Some(after) = error.retry_after() {
            let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            metadata.insert(RETRY_AFTER_MS_HEADER, ms.into());
        }
        tonic::Status::with_details_and_metadata(
            error.grpc_code(),
            format!("{}: {}", error.code(), message),
            detail.encode_to_vec().into(),
            metadata,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: transient failures are retryable and refusals are not.
    // Method: classify one error of each kind, including two database
    // failures (an exhausted pool and a missing row).
    #[test]
    fn retryable_means_transient() {
        let transient = [
            Error::NoQuorum {
                reachable_voters: 1,
                total_voters: 3,
            },
            Error::AuthorityUnreachable("down".into()),
            Error::Overloaded("busy".into()),
            Error::Database(sqlx::Error::PoolTimedOut),
        ];
        for error in &transient {
            assert!(error.is_retryable(), "{} should be retryable", error.code());
        }
        let refusals = [
            Error::StaleFence("old".into()),
            Error::NotBootstrapped("c1".into()),
            Error::PermissionDenied("no".into()),
            Error::Internal("bug".into()),
            Error::Database(sqlx::Error::RowNotFound),
        ];
        for error in &refusals {
            assert!(
                !error.is_retryable(),
                "{} should not be retryable",
                error.code()
            );
        }
    }
}
