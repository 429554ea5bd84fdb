//! Node enrollment: what
//! `rap-node-agent join` does.
//!
//! 1. Load the node's ed25519 key, or generate it here (it never leaves
//!    the node; [`crate::state`]).
//! 2. Connect to the control plane over TLS with server name
//!    `<cluster_id>.cluster.rap`, pinning the cluster CA by the
//!    fingerprint from the join command ([`rap_core::tls::ca_pin`]). Nothing is sent
//!    before the pin holds.
//! 3. Submit a join request with the token and a proof of possession
//!    (signature over the prost encoding of `JoinProofPayload`), and save
//!    its id, so that a restarted `join` resumes polling.
//! 4. Poll `GetJoinStatus` with a fresh proof until the request is
//!    approved (then check and store identity, certificate chain, CA,
//!    trust root and storage endpoints), rejected, expired, or the wait
//!    is over.

use crate::state::{
    CA_CERT_FILE, CAPABILITIES_FILE, CapabilityRecord, ClusterState, IdentityRecord,
    NODE_CERT_FILE, PendingJoin, STORAGE_ENDPOINTS_FILE, StateError, StorageEndpointRecord,
    TRUST_ROOT_FILE, key_fingerprint,
};
use ed25519_dalek::{Signer, SigningKey};
use prost::Message;
use rap_core::identity::PeerIdentity;
use rap_core::identity::cluster_server_name;
use rap_core::tls::ca_pin::{CaFingerprint, PinOutcome, PinnedCaVerifier};
use rap_core::tls::{check_issued_chain, pem_certificate};
use rap_proto::ids::{ClusterId, NodeId, RoleName};
use rap_proto::pb;
use rap_proto::pb::enrollment_service_client::EnrollmentServiceClient;
use rap_proto::time::UnixMillis;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

mod input;
mod session;
#[cfg(test)]
mod tests;

use input::shorten;
pub use input::{
    check_poll_interval, check_token, check_wait, local_facts, parse_capability, parse_duration,
    parse_roles, parse_server,
};
pub use session::{connect, join};
pub(crate) use session::{error_chain, is_transient, shorten_message, status_code};

pub use rap_proto::proof::PURPOSE_JOIN;
pub use rap_proto::proof::PURPOSE_STATUS;
/// Random bytes in a proof's nonce (the control plane takes 16..=64).
pub const PROOF_NONCE_BYTES: usize = 16;
pub use rap_core::limits::JOIN_TOKEN_PREFIX;

/// Default time between status polls.
pub const POLL_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
/// Shortest poll interval accepted.
pub const POLL_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Longest poll interval accepted.
pub const POLL_INTERVAL_MAX: Duration = Duration::from_secs(10 * 60);
/// Longest `--wait` accepted (0 means "until interrupted").
pub const WAIT_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Longest TCP connect to the control plane.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest TLS handshake with the control plane.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest single RPC.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest join token accepted (the control plane's limit).
pub const TOKEN_BYTES_MAX: usize = 256;
/// Longest `host:port` accepted (a DNS name is at most 253 bytes).
pub const SERVER_BYTES_MAX: usize = 260;
pub use rap_core::limits::{
    CAPABILITIES_MAX, CAPABILITY_DETAIL_BYTES_MAX, CAPABILITY_NAME_BYTES_MAX,
};
/// Most requested roles (the control plane's limit).
pub const REQUESTED_ROLES_MAX: usize = 16;
/// Longest fact text: hostname, failure-domain labels (the control
/// plane's limit).
pub const FACT_TEXT_BYTES_MAX: usize = 200;
/// Most bootstrap storage endpoints stored.
pub const STORAGE_ENDPOINTS_MAX: usize = 1024;
/// Largest hostname file read.
const HOSTNAME_FILE_BYTES_MAX: u64 = 1024;
/// Where Linux publishes the host name.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

const _: () = assert!(POLL_INTERVAL_MIN.as_millis() <= POLL_INTERVAL_DEFAULT.as_millis());
const _: () = assert!(POLL_INTERVAL_DEFAULT.as_millis() <= POLL_INTERVAL_MAX.as_millis());
const _: () = assert!(PROOF_NONCE_BYTES >= 16 && PROOF_NONCE_BYTES <= 64);

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// A command-line value is unusable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which value.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// Node-local state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The server is not the pinned cluster's control plane.
    #[error("refusing the server at {server}: {reason}")]
    Pinning {
        /// `host:port`.
        server: String,
        /// What the verifier saw.
        reason: String,
    },
    /// The control plane could not be reached.
    #[error("cannot reach the control plane at {server}: {reason}")]
    Connect {
        /// `host:port`.
        server: String,
        /// The transport error chain.
        reason: String,
    },
    /// The control plane refused or failed a call.
    #[error("{call} failed: {code}: {message}")]
    Rpc {
        /// The RPC.
        call: &'static str,
        /// The stable error code (or the gRPC code).
        code: String,
        /// The control plane's message.
        message: String,
    },
    /// The saved join request is unknown to the control plane.
    #[error(
        "the control plane does not know join request {join_request_id} for this key; \
         remove {} to submit a new one",
        path.display()
    )]
    UnknownRequest {
        /// The saved id.
        join_request_id: String,
        /// The saved request's file.
        path: PathBuf,
    },
    /// The saved join request belongs to another key or cluster.
    #[error("{}: {reason}; remove it to submit a new join request", path.display())]
    StalePending {
        /// The saved request's file.
        path: PathBuf,
        /// The mismatch.
        reason: String,
    },
    /// The approved identity does not match this node.
    #[error("the control plane's answer is unusable: {0}")]
    BadIdentity(String),
}

/// A join, as `rap-node-agent join` was asked for it.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// `host:port` of the control plane.
    pub server: String,
    /// The cluster to join.
    pub cluster: ClusterId,
    /// `rapjt.<id>.<secret>`.
    pub token: String,
    /// blake3 of the cluster CA certificate's DER.
    pub ca_fingerprint: CaFingerprint,
    /// The state directory (the cluster's files go to `<dir>/<cluster>`).
    pub state_dir: PathBuf,
    /// Capabilities reported to the control plane.
    pub capabilities: Vec<pb::Capability>,
    /// Roles asked for (a platform admin decides).
    pub roles: Vec<RoleName>,
    /// Facts about this host.
    pub facts: pb::NodeFacts,
    /// Time between status polls.
    pub poll_interval: Duration,
    /// How long to poll for approval; `None` polls until interrupted.
    pub wait: Option<Duration>,
}

/// Progress reported while joining.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The node key was generated now, at this path.
    KeyCreated(PathBuf),
    /// An existing node key is reused.
    KeyReused(PathBuf),
    /// The server proved it holds a certificate from the pinned CA.
    Pinned {
        /// `host:port`.
        server: String,
    },
    /// A new join request was submitted.
    Submitted {
        /// Its id.
        join_request_id: String,
    },
    /// A saved join request is polled again (no new submission).
    Resumed {
        /// Its id.
        join_request_id: String,
    },
    /// The request waits for a platform admin (reported once).
    WaitingForApproval {
        /// Its id.
        join_request_id: String,
    },
    /// A poll failed transiently; polling goes on.
    Retrying {
        /// What failed.
        error: String,
    },
}

/// An approved enrollment, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    /// What `identity.json` holds.
    pub identity: IdentityRecord,
    /// The cluster's state directory.
    pub dir: PathBuf,
    /// The trust root's generation.
    pub trust_generation: u64,
    /// How many bootstrap storage endpoints were stored.
    pub storage_endpoints: usize,
}

/// How a join ended (other than with an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Approved now; everything is stored.
    Approved(Enrolled),
    /// This state directory already holds an identity for the cluster;
    /// nothing was sent.
    AlreadyEnrolled {
        /// The stored identity.
        identity: IdentityRecord,
        /// The cluster's state directory.
        dir: PathBuf,
    },
    /// A platform admin rejected the request.
    Rejected {
        /// The request.
        join_request_id: String,
        /// The admin's reason.
        reason: String,
    },
    /// The request expired before review.
    Expired {
        /// The request.
        join_request_id: String,
    },
    /// Still pending when the wait was over; running `join` again resumes.
    StillPending {
        /// The request.
        join_request_id: String,
    },
    /// Interrupted (the `interrupt` future of [`join`] completed); running
    /// `join` again resumes.
    Interrupted {
        /// The request, when one was submitted.
        join_request_id: Option<String>,
    },
}

pub use rap_proto::proof::proof_message;

/// A fresh proof for `purpose`: (timestamp, nonce, signature).
pub(crate) fn prove(
    key: &SigningKey,
    purpose: &str,
    cluster: &ClusterId,
) -> Result<(i64, Vec<u8>, Vec<u8>), EnrollError> {
    let now = UnixMillis::now().0;
    let nonce = crate::state::random_bytes::<PROOF_NONCE_BYTES>()?.to_vec();
    let public = key.verifying_key().to_bytes();
    let message = proof_message(purpose, cluster.as_str(), &public, now, &nonce);
    Ok((now, nonce, key.sign(&message).to_bytes().to_vec()))
}
