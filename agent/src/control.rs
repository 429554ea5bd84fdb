//! The enrolled agent's mTLS link to its control plane, shared by
//! [`crate::heartbeat`] and [`crate::renewal`].
//!
//! [`ControlPlane::open`] reads `identity.json` (which control plane,
//! cluster and node), first finishes or discards a key rotation a crash
//! interrupted ([`crate::renewal::recover`]), then loads `ca.pem`,
//! `node.pem` and `node.key` as a [`LiveIdentity`]: a renewal swaps the
//! pair in place and the next connection presents the new certificate.
//! [`ControlPlane::connect`] dials the control plane presenting the node
//! certificate and accepting only a server certificate that chains to the
//! cluster CA and names `<cluster>.cluster.rap`
//! ([`PeerTls::control_plane_connector`]).

use crate::enroll::{CONNECT_TIMEOUT, RPC_TIMEOUT, error_chain, is_transient, shorten_message};
use crate::state::{ClusterState, StateError};
use rap_core::identity::PeerIdentity;
use rap_core::tls::TlsFiles;
use rap_core::tls::live::LiveIdentity;
use rap_core::tls::pin::PeerTls;
use rap_proto::ids::{ClusterId, NodeId};
use std::sync::Arc;
use tonic::transport::{Channel, Endpoint};

/// Why the control plane could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// Node-local state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The state directory holds no enrolled identity.
    #[error("not enrolled: {dir} holds no identity (run `rap-node-agent join` first)")]
    NotEnrolled {
        /// The cluster's state directory.
        dir: String,
    },
    /// The stored identity or certificate files are unusable.
    #[error("the node identity is unusable: {0}")]
    Identity(String),
    /// The control plane could not be reached (TCP, TLS).
    #[error("cannot reach the control plane at {server}: {reason}")]
    Connect {
        /// `host:port`.
        server: String,
        /// The transport error chain.
        reason: String,
    },
    /// A call failed in a way worth repeating soon (unavailable, timeout,
    /// overload, rate limit).
    #[error("{call} failed for now: {code}: {message}")]
    Unavailable {
        /// The RPC.
        call: &'static str,
        /// The stable error code (or the gRPC code).
        code: String,
        /// The control plane's message.
        message: String,
    },
    /// The control plane refused a call (its decision, e.g. a revoked or
    /// superseded certificate: `PERMISSION_DENIED`).
    #[error("{call} refused: {code}: {message}")]
    Refused {
        /// The RPC.
        call: &'static str,
        /// The stable error code (or the gRPC code).
        code: String,
        /// The control plane's message.
        message: String,
    },
}

impl ControlPlaneError {
    /// A stable code: the control plane's own for [`Self::Refused`] and
    /// [`Self::Unavailable`], else one of the agent's.
    pub fn code(&self) -> &str {
        match self {
            ControlPlaneError::State(_) => "STATE",
            ControlPlaneError::NotEnrolled { .. } => "NOT_ENROLLED",
            ControlPlaneError::Identity(_) => "BAD_IDENTITY",
            ControlPlaneError::Connect { .. } => "UNREACHABLE",
            ControlPlaneError::Unavailable { code, .. }
            | ControlPlaneError::Refused { code, .. } => code,
        }
    }

    /// Whether the same call may succeed soon without anything changing
    /// here or on the control plane.
    pub fn is_retryable(&self) -> bool {
        match self {
            ControlPlaneError::Connect { .. } | ControlPlaneError::Unavailable { .. } => true,
            ControlPlaneError::State(_)
            | ControlPlaneError::NotEnrolled { .. }
            | ControlPlaneError::Identity(_)
            | ControlPlaneError::Refused { .. } => false,
        }
    }

    /// A failed call, classified by [`is_transient`].
    pub fn from_status(call: &'static str, status: &tonic::Status) -> Self {
        let code = crate::enroll::status_code(status);
        let message = shorten_message(status.message());
        if is_transient(status) {
            ControlPlaneError::Unavailable {
                call,
                code,
                message,
            }
        } else {
            ControlPlaneError::Refused {
                call,
                code,
                message,
            }
        }
    }
}

/// The enrolled node's link to its control plane (see the module docs).
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// `host:port` of the control plane (from `identity.json`).
    pub server: String,
    /// The cluster.
    pub cluster: ClusterId,
    /// This node.
    pub node: NodeId,
    /// The node certificate and key, reloaded in place by a renewal.
    pub identity: Arc<LiveIdentity>,
}

impl ControlPlane {
    /// Opens the enrolled identity of `state` (see the module docs): the
    /// certificate must name the node and cluster `identity.json` names.
    /// It may finish or discard a key rotation, so only the process that
    /// runs [`crate::renewal::keep_renewed`] may call it (a read-only
    /// `status` reads the files instead): a second process could discard
    /// the next key of a renewal under way.
    pub fn open(state: &ClusterState) -> Result<Self, ControlPlaneError> {
        let record = state
            .identity()?
            .ok_or_else(|| ControlPlaneError::NotEnrolled {
                dir: state.dir().display().to_string(),
            })?;
        let bad = |e: String| ControlPlaneError::Identity(e);
        let cluster = ClusterId::new(record.cluster_id.as_str()).map_err(|e| bad(e.to_string()))?;
        let node = NodeId::new(record.node_id.as_str()).map_err(|e| bad(e.to_string()))?;
        crate::renewal::recover(state).map_err(|e| bad(e.to_string()))?;
        let identity =
            LiveIdentity::load(TlsFiles::in_dir(state.dir())).map_err(|e| bad(e.to_string()))?;
        let expected =
            PeerIdentity::node(cluster.clone(), node.clone()).map_err(|e| bad(e.to_string()))?;
        if identity.identity() != expected {
            return Err(bad(format!(
                "the certificate names {}, but identity.json names {expected}",
                identity.identity()
            )));
        }
        Ok(ControlPlane {
            server: record.server,
            cluster,
            node,
            identity,
        })
    }

    /// A new mTLS channel to the control plane, presenting the current
    /// certificate; the handshake runs here.
    pub async fn connect(&self) -> Result<Channel, ControlPlaneError> {
        let connect_error = |reason: String| ControlPlaneError::Connect {
            server: self.server.clone(),
            reason,
        };
        let tls = PeerTls::new(self.identity.clone())
            .map_err(|e| ControlPlaneError::Identity(e.to_string()))?;
        let connector = tls
            .control_plane_connector()
            .map_err(|e| ControlPlaneError::Identity(e.to_string()))?;
        Endpoint::from_shared(format!("http://{}", self.server))
            .map_err(|e| connect_error(error_chain(&e)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(RPC_TIMEOUT)
            .connect_with_connector(connector)
            .await
            .map_err(|e| connect_error(error_chain(&e)))
    }
}
