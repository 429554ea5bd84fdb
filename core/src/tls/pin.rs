//! The client side of mTLS towards storage nodes, with the peer pinned.
//!
//! A certificate from the cluster CA is not enough for a server either:
//! every connection a party opens to a storage node checks that the
//! server's certificate (1) chains to the cluster CA and names the address
//! dialled (DNS name or IP SAN, as any TLS client does), and (2) names the
//! expected party: a storage node of this cluster and, when the caller
//! knows it, the very node id it meant to reach ([`ExpectedPeer`]). An
//! agent's certificate, the control plane's, or another storage node's
//! cannot impersonate `sN`.
//!
//! [`PeerTls`] builds one rustls client configuration per expected peer on
//! top of the caller's [`LiveIdentity`] (so a renewed certificate is
//! presented from the next connection on), and [`PinnedConnector`] dials
//! TCP + TLS for tonic's `Endpoint::connect_with_connector_lazy`.

use super::live::LiveIdentity;
use super::{ALPN_H2, TLS_HANDSHAKE_TIMEOUT};
use crate::error::{Error, Result};
use crate::identity::{CertificateFacts, IdentityKind};
use hyper_util::rt::TokioIo;
use rap_proto::ids::{ClusterId, NodeId};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;

/// Whom a client expects at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedPeer {
    /// The kind the server's certificate must name.
    pub kind: IdentityKind,
    /// The id it must name; `None` accepts any holder of that kind in the
    /// cluster (an operator's tool given only an address).
    pub node_id: Option<NodeId>,
}

impl ExpectedPeer {
    /// Storage node `node_id` of the cluster.
    pub fn storage(node_id: NodeId) -> Self {
        ExpectedPeer {
            kind: IdentityKind::Storage,
            node_id: Some(node_id),
        }
    }

    /// Any storage node of the cluster.
    pub fn any_storage() -> Self {
        ExpectedPeer {
            kind: IdentityKind::Storage,
            node_id: None,
        }
    }

    /// Storage node `id` when it is a valid node id, else any storage node
    /// (ids come from configuration and the wire).
    pub fn storage_named(id: &str) -> Self {
        match NodeId::new(id) {
            Ok(node_id) => Self::storage(node_id),
            Err(_) => Self::any_storage(),
        }
    }
}

impl fmt::Display for ExpectedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node_id {
            Some(id) => write!(f, "{} {id}", self.kind),
            None => write!(f, "any {} node", self.kind),
        }
    }
}

/// A party's client TLS towards the storage nodes of its cluster.
pub struct PeerTls {
    identity: Arc<LiveIdentity>,
    cluster_id: ClusterId,
    webpki: Arc<WebPkiServerVerifier>,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls")
            .field("cluster_id", &self.cluster_id)
            .field("identity", &self.identity.identity())
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Client TLS presenting `identity` and trusting only its cluster CA.
    pub fn new(identity: Arc<LiveIdentity>) -> Result<Arc<Self>> {
        let webpki = WebPkiServerVerifier::builder_with_provider(
            identity.roots()?,
            identity.provider().clone(),
        )
        .build()
        .map_err(|e| Error::InvalidRequest(format!("server certificate verifier: {e}")))?;
        let cluster_id = identity.identity().cluster_id;
        Ok(Arc::new(PeerTls {
            identity,
            cluster_id,
            webpki,
        }))
    }

    /// The identity this client presents.
    pub fn identity(&self) -> &Arc<LiveIdentity> {
        &self.identity
    }

    /// A rustls client configuration that accepts only `expected`.
    pub fn client_config(&self, expected: &ExpectedPeer) -> Result<Arc<ClientConfig>> {
        let verifier = Arc::new(PinnedVerifier {
            inner: self.webpki.clone(),
            cluster_id: self.cluster_id.clone(),
            expected: expected.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(self.identity.provider().clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InvalidRequest(format!("TLS protocol versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.identity.resolver());
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    /// A connector for tonic that dials TCP and TLS to `expected`.
    pub fn connector(&self, expected: &ExpectedPeer) -> Result<PinnedConnector> {
        Ok(PinnedConnector {
            config: self.client_config(expected)?,
            server_name: None,
        })
    }

    /// A connector to this cluster's control plane (renewal): the server's
    /// certificate must chain to the cluster CA and name
    /// `<cluster>.cluster.rap`, which is also sent as SNI so the control
    /// plane picks this cluster's certificate; this party presents its own.
    pub fn control_plane_connector(&self) -> Result<PinnedConnector> {
        let mut config = ClientConfig::builder_with_provider(self.identity.provider().clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::InvalidRequest(format!("TLS protocol versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(self.webpki.clone())
            .with_client_cert_resolver(self.identity.resolver());
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        let name = crate::identity::cluster_server_name(&self.cluster_id);
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| Error::InvalidRequest(format!("server name {name:?}: {e}")))?;
        Ok(PinnedConnector {
            config: Arc::new(config),
            server_name: Some(server_name),
        })
    }
}

/// Checks the chain and address (webpki), then the identity.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    cluster_id: ClusterId,
    expected: ExpectedPeer,
}

/// Why a server certificate that chains to the CA is still not the peer.
#[derive(Debug)]
struct NotThePeer(String);

impl fmt::Display for NotThePeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotThePeer {}

fn not_the_peer(message: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(NotThePeer(
        message,
    )))))
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let facts = CertificateFacts::from_der(end_entity.as_ref())
            .map_err(|e| not_the_peer(format!("server certificate: {e}")))?;
        let identity = &facts.identity;
        let id_matches = self
            .expected
            .node_id
            .as_ref()
            .is_none_or(|id| *id == identity.node_id);
        if identity.cluster_id != self.cluster_id
            || identity.kind != self.expected.kind
            || !id_matches
        {
            return Err(not_the_peer(format!(
                "the server is {identity}, not {} of cluster {}",
                self.expected, self.cluster_id
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Makes a lazily connected channel to an endpoint through a
/// [`PinnedConnector`] over a transport of its own: the simulator dials
/// through its simulated network and calls [`PinnedConnector::handshake`].
/// Production passes none and the connector dials TCP itself.
pub type TlsDialer = Arc<
    dyn Fn(tonic::transport::Endpoint, PinnedConnector) -> tonic::transport::Channel + Send + Sync,
>;

/// Connects `endpoint` through `connector`: with `dialer` when given,
/// else over TCP.
pub fn dial(
    endpoint: tonic::transport::Endpoint,
    connector: PinnedConnector,
    dialer: Option<&TlsDialer>,
) -> tonic::transport::Channel {
    match dialer {
        Some(dial) => dial(endpoint, connector),
        None => endpoint.connect_with_connector_lazy(connector),
    }
}

/// tonic's connector: `Uri` → TCP → TLS with a [`PinnedVerifier`] (or,
/// towards the control plane, webpki for its cluster server name). The
/// endpoint it serves uses the `http` scheme: TLS is done here.
#[derive(Clone)]
pub struct PinnedConnector {
    config: Arc<ClientConfig>,
    /// The name to verify and send as SNI; `None`: the host dialled.
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for PinnedConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedConnector").finish_non_exhaustive()
    }
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tonic::codegen::Service<Uri> for PinnedConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let invalid =
                |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let tcp = TcpStream::connect((bare, port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(connector.handshake(bare, tcp).await?))
        })
    }
}

impl PinnedConnector {
    /// The TLS handshake over `stream`, already connected to `host` (a
    /// DNS name or an IP address): what [`PinnedConnector`] does after
    /// dialling TCP, for a caller that brings its own transport (the
    /// simulator's network). Bounded by [`TLS_HANDSHAKE_TIMEOUT`].
    pub async fn handshake<S>(&self, host: &str, stream: S) -> io::Result<TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let server_name = match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.to_string()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{host}: not a server name: {e}"),
                )
            })?,
        };
        tokio::time::timeout(
            TLS_HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsConnector::from(self.config.clone()).connect(server_name, stream),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }
}
