//! The control plane's TLS listener.
//!
//! One port serves (a) admins and joining agents, without client
//! certificates, under the platform server certificate; (b) agents with
//! client certificates from ANY registered cluster CA, including clusters
//! created after start; (c) per-cluster server certificates chosen by SNI
//! `<cluster_id>.cluster.rap`, so an agent that pins only its cluster CA can
//! connect. tonic's `ServerTlsConfig` takes one identity and fixed roots,
//! so the rustls [`ServerConfig`] is built here ([`ControlPlaneTls`]) and
//! the handshakes run in the shared accept loop
//! ([`rap_core::tls::incoming::tls_incoming`]), feeding tonic's
//! `serve_with_incoming_shutdown` ([`serve_tls`]).
//!
//! A client certificate is verified against the set of all registered
//! cluster CAs, so it proves only *some* cluster's node identity: handlers
//! must check that [`peer_identity`]'s cluster is the cluster the request
//! is about. The CA list is not sent to clients (no root hints), so an
//! anonymous client does not learn which clusters exist.

use crate::error::{Error, Result};
use crate::keys::{ClusterKeys, PlatformKeys, load_certified_key};
use rap_core::identity::PeerIdentity;
use rap_core::identity::cluster_server_name;
use rap_core::tls::incoming::tls_incoming;
use rap_core::tls::{ALPN_H2, TLS_HANDSHAKE_TIMEOUT, install_crypto_provider};
use rap_proto::ids::ClusterId;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Router;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The control plane's rustls server configuration, whose server
/// certificates and trusted client CAs change at runtime.
#[derive(Debug)]
pub struct ControlPlaneTls {
    config: Arc<ServerConfig>,
    certs: Arc<SniResolver>,
    clients: Arc<ClusterClientVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ControlPlaneTls {
    /// A configuration serving `platform`'s server certificate to every
    /// client until clusters are added, and accepting no client
    /// certificate yet (anonymous clients are always accepted). ALPN `h2`.
    pub fn new(platform: &PlatformKeys) -> Result<Self> {
        install_crypto_provider();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let platform_key = load_certified_key(&platform.server_cert_files(), &provider)?;
        let certs = Arc::new(SniResolver {
            platform: RwLock::new(platform_key),
            clusters: RwLock::new(HashMap::new()),
        });
        let clients = Arc::new(ClusterClientVerifier {
            provider: Arc::clone(&provider),
            state: RwLock::new(VerifierState::default()),
        });
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Internal(format!("TLS protocol versions: {e}")))?
            .with_client_cert_verifier(Arc::clone(&clients) as Arc<dyn ClientCertVerifier>)
            .with_cert_resolver(Arc::clone(&certs) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(ControlPlaneTls {
            config: Arc::new(config),
            certs,
            clients,
            provider,
        })
    }

    /// Serves `cluster`'s server certificate for SNI
    /// `<cluster_id>.cluster.rap` and accepts client certificates from its
    /// CA, from the next handshake on. Calling it again for the same
    /// cluster replaces both (e.g. after a renewal).
    pub fn add_cluster(&self, cluster: &ClusterKeys) -> Result<()> {
        let certified = load_certified_key(&cluster.server_cert_files(), &self.provider)?;
        self.clients
            .set_root(cluster.cluster_id(), Some(cluster.ca_cert_der().clone()))?;
        write(&self.certs.clusters).insert(cluster.server_name(), certified);
        tracing::info!(cluster_id = %cluster.cluster_id(), "cluster added to the TLS listener");
        Ok(())
    }

    /// Stops serving `cluster_id`'s server certificate and trusting its CA.
    pub fn remove_cluster(&self, cluster_id: &ClusterId) -> Result<()> {
        self.clients.set_root(cluster_id, None)?;
        write(&self.certs.clusters).remove(&cluster_server_name(cluster_id));
        tracing::info!(cluster_id = %cluster_id, "cluster removed from the TLS listener");
        Ok(())
    }

    /// Replaces the default (platform) server certificate, e.g. after
    /// [`PlatformKeys::create_or_load`] renewed it.
    pub fn reload_platform(&self, platform: &PlatformKeys) -> Result<()> {
        let certified = load_certified_key(&platform.server_cert_files(), &self.provider)?;
        *write(&self.certs.platform) = certified;
        Ok(())
    }

    /// The clusters whose CAs are trusted for client certificates.
    pub fn cluster_ids(&self) -> Vec<ClusterId> {
        read(&self.clients.state).roots.keys().cloned().collect()
    }

    /// The rustls server configuration (shared; later
    /// [`ControlPlaneTls::add_cluster`] calls take effect in it).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    /// A tokio-rustls acceptor over [`ControlPlaneTls::server_config`].
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server_config())
    }
}

/// Picks the cluster server certificate by SNI, else the platform one.
#[derive(Debug)]
struct SniResolver {
    platform: RwLock<Arc<CertifiedKey>>,
    /// By server name (`<cluster_id>.cluster.rap`).
    clusters: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = client_hello.server_name() {
            let name = name.to_ascii_lowercase();
            if let Some(certified) = read(&self.clusters).get(&name) {
                return Some(Arc::clone(certified));
            }
        }
        Some(Arc::clone(&read(&self.platform)))
    }
}

/// Offers client authentication without requiring it, and verifies a
/// presented chain against the current set of cluster CAs.
#[derive(Debug)]
struct ClusterClientVerifier {
    provider: Arc<CryptoProvider>,
    state: RwLock<VerifierState>,
}

#[derive(Debug, Default)]
struct VerifierState {
    roots: BTreeMap<ClusterId, CertificateDer<'static>>,
    /// webpki over `roots`; `None` while there is no root.
    inner: Option<Arc<dyn ClientCertVerifier>>,
}

impl ClusterClientVerifier {
    /// Sets (`Some`) or removes (`None`) `cluster_id`'s CA and rebuilds the
    /// inner verifier. Nothing changes when the new set does not build.
    fn set_root(
        &self,
        cluster_id: &ClusterId,
        root: Option<CertificateDer<'static>>,
    ) -> Result<()> {
        // Held across the rebuild so that concurrent updates do not lose
        // each other's roots; verifications wait only for the swap.
        let mut state = write(&self.state);
        let mut roots = state.roots.clone();
        match root {
            Some(root) => roots.insert(cluster_id.clone(), root),
            None => roots.remove(cluster_id),
        };
        let inner = if roots.is_empty() {
            None
        } else {
            let mut store = RootCertStore::empty();
            for (id, der) in &roots {
                store.add(der.clone()).map_err(|e| {
                    Error::Keys(format!("CA of cluster {id} is not a trust anchor: {e}"))
                })?;
            }
            Some(
                WebPkiClientVerifier::builder_with_provider(
                    Arc::new(store),
                    Arc::clone(&self.provider),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::Internal(format!("client certificate verifier: {e}")))?,
            )
        };
        *state = VerifierState { roots, inner };
        Ok(())
    }
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: clients present their one certificate anyway, and the
        // list of clusters is not for anonymous clients to read.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        let inner = read(&self.state).inner.clone();
        match inner {
            Some(inner) => inner.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // The guarded values are replaced whole, never left half-updated, so a
    // panic elsewhere while holding the lock leaves them usable.
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Serves `router` over TLS on `listener`
/// ([`rap_core::tls::incoming::tls_incoming`]) until
/// `shutdown` completes, then waits for open connections to finish.
pub async fn serve_tls<F>(
    listener: TcpListener,
    tls: Arc<ControlPlaneTls>,
    router: Router,
    shutdown: F,
) -> Result<()>
where
    F: Future<Output = ()>,
{
    router
        .serve_with_incoming_shutdown(tls_incoming(listener, tls.acceptor()), shutdown)
        .await
        .map_err(|e| Error::Internal(format!("gRPC server: {e}")))
}

/// The node identity named by the client certificate of the connection
/// `request` came on, if it presented one (already verified against a
/// registered cluster CA during the handshake). Check its cluster.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Option<PeerIdentity> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    PeerIdentity::from_cert_der(leaf.as_ref()).ok()
}

/// A client configuration trusting only `ca_pem`, verifying the server as
/// `server_name` (also sent as SNI: `<cluster_id>.cluster.rap` selects a
/// cluster's server certificate), presenting `identity` (certificate chain
/// PEM, private key PEM) when given.
pub fn client_tls_config(
    ca_pem: &str,
    server_name: &str,
    identity: Option<(&str, &str)>,
) -> ClientTlsConfig {
    install_crypto_provider();
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server_name)
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    match identity {
        Some((cert_pem, key_pem)) => config.identity(Identity::from_pem(cert_pem, key_pem)),
        None => config,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::NODE_CERT_VALIDITY_DEFAULT;
    use rap_proto::ids::NodeId;
    use rap_proto::pb::agent_service_client::AgentServiceClient;
    use rap_proto::pb::agent_service_server::{AgentService, AgentServiceServer};
    use rap_proto::pb::{HeartbeatRequest, HeartbeatResponse};
    use std::time::Duration;
    use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
    use tonic::transport::Endpoint;
    use tonic::{Request, Response, Status};

    /// Reports the caller's identity to the test.
    struct EchoAgent {
        seen: UnboundedSender<Option<PeerIdentity>>,
    }

    #[tonic::async_trait]
    impl AgentService for EchoAgent {
        async fn heartbeat(
            &self,
            request: Request<HeartbeatRequest>,
        ) -> std::result::Result<Response<HeartbeatResponse>, Status> {
            let _ = self.seen.send(peer_identity(&request));
            Ok(Response::new(HeartbeatResponse {
                next_interval_ms: 1,
            }))
        }
    }

    fn cluster(id: &str) -> ClusterId {
        ClusterId::new(id).expect("cluster id")
    }

    fn node(id: &str) -> NodeId {
        NodeId::new(id).expect("node id")
    }

    /// A node key generated "on the node" and its certificate chain from
    /// `keys`, as (chain PEM, key PEM).
    fn node_identity(keys: &ClusterKeys, node_id: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let public: [u8; 32] = key.public_key_raw().try_into().expect("32 bytes");
        let identity = PeerIdentity::node(keys.cluster_id().clone(), node(node_id)).expect("id");
        let issued = keys
            .issue_certificate(&identity, &public, NODE_CERT_VALIDITY_DEFAULT, &[])
            .expect("issue");
        (issued.chain_pem, key.serialize_pem())
    }

    /// One heartbeat over a fresh connection; the handler's view of the
    /// caller on success.
    async fn heartbeat(
        addr: std::net::SocketAddr,
        config: ClientTlsConfig,
        seen: &mut UnboundedReceiver<Option<PeerIdentity>>,
    ) -> std::result::Result<Option<PeerIdentity>, String> {
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| format!("endpoint: {e}"))?
            .tls_config(config)
            .map_err(|e| format!("tls config: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        let response = AgentServiceClient::new(channel)
            .heartbeat(HeartbeatRequest::default())
            .await
            .map_err(|e| format!("call: {e:?}"))?;
        assert_eq!(response.into_inner().next_interval_ms, 1);
        seen.recv().await.ok_or_else(|| "handler gone".to_string())
    }

    /// The attempt failed, and for the expected reason: `UnknownIssuer`
    /// when the client could not verify the server certificate,
    /// `UnknownCA` when the server refused the client certificate.
    fn assert_refused(
        result: std::result::Result<Option<PeerIdentity>, String>,
        reason: &str,
        why: &str,
    ) {
        match result {
            Ok(seen) => panic!("{why}: accepted as {seen:?}"),
            Err(e) => assert!(e.contains(reason), "{why}: expected {reason}, got {e}"),
        }
    }

    // Goal: one listener serves anonymous clients under the platform
    // certificate, picks a cluster's server certificate by SNI, hands the
    // handler the identity of a client certificate from a registered
    // cluster CA, refuses one from an unregistered CA, and trusts a cluster
    // added (and forgets one removed) while running; a stalled handshake
    // does not block others. Method: real tonic server and clients on
    // 127.0.0.1.
    #[tokio::test]
    async fn listener_serves_platform_clusters_and_client_certs() {
        install_crypto_provider();
        let keys_dir = tempfile::tempdir().expect("tempdir");
        let platform = PlatformKeys::create_or_load(keys_dir.path(), &[]).expect("platform");
        let a = ClusterKeys::create(keys_dir.path(), &cluster("a")).expect("a");
        let b = ClusterKeys::create(keys_dir.path(), &cluster("b")).expect("b");
        let unregistered = ClusterKeys::create(keys_dir.path(), &cluster("c")).expect("c");
        let tls = Arc::new(ControlPlaneTls::new(&platform).expect("tls"));
        tls.add_cluster(&a).expect("add a");
        tls.add_cluster(&b).expect("add b");
        assert_eq!(tls.cluster_ids(), vec![cluster("a"), cluster("b")]);
        assert_eq!(
            tls.server_config().alpn_protocols,
            vec![b"h2".to_vec()],
            "tonic needs HTTP/2"
        );

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (seen_tx, mut seen) = unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(EchoAgent { seen: seen_tx }));
        let server = tokio::spawn(serve_tls(listener, Arc::clone(&tls), router, async {
            let _ = stop_rx.await;
        }));

        // A client that opens TCP and never speaks TLS holds one handshake
        // slot, not the accept loop.
        let _stalled = tokio::net::TcpStream::connect(addr).await.expect("connect");

        // (1) No client certificate, platform CA, SNI localhost.
        let anonymous = client_tls_config(platform.ca_cert_pem(), "localhost", None);
        assert_eq!(
            heartbeat(addr, anonymous, &mut seen)
                .await
                .expect("anonymous"),
            None
        );

        // (2) Cluster A's CA with SNI a.cluster.rap; B's CA cannot verify
        // A's server certificate; the platform CA cannot either.
        let pinned_a = client_tls_config(a.ca_cert_pem(), &a.server_name(), None);
        assert_eq!(
            heartbeat(addr, pinned_a, &mut seen).await.expect("pin a"),
            None
        );
        let wrong_pin = client_tls_config(b.ca_cert_pem(), &a.server_name(), None);
        assert_refused(
            heartbeat(addr, wrong_pin, &mut seen).await,
            "UnknownIssuer",
            "B's CA must not verify A's server certificate",
        );
        let platform_pin = client_tls_config(platform.ca_cert_pem(), &a.server_name(), None);
        assert_refused(
            heartbeat(addr, platform_pin, &mut seen).await,
            "UnknownIssuer",
            "the platform CA must not verify A's server certificate",
        );

        // (3) A client certificate from A's CA is seen by the handler.
        let (chain, key) = node_identity(&a, "node-1");
        let with_cert = client_tls_config(a.ca_cert_pem(), &a.server_name(), Some((&chain, &key)));
        assert_eq!(
            heartbeat(addr, with_cert, &mut seen).await.expect("mTLS a"),
            Some(PeerIdentity::node(cluster("a"), node("node-1")).expect("id"))
        );
        // ... also on the platform certificate (SNI localhost).
        let with_cert =
            client_tls_config(platform.ca_cert_pem(), "localhost", Some((&chain, &key)));
        assert_eq!(
            heartbeat(addr, with_cert, &mut seen)
                .await
                .expect("mTLS platform"),
            Some(PeerIdentity::node(cluster("a"), node("node-1")).expect("id"))
        );

        // (4) A client certificate from an unregistered CA is refused.
        let (chain_c, key_c) = node_identity(&unregistered, "node-1");
        let foreign = client_tls_config(
            platform.ca_cert_pem(),
            "localhost",
            Some((&chain_c, &key_c)),
        );
        assert_refused(
            heartbeat(addr, foreign, &mut seen).await,
            "UnknownCA",
            "unregistered CA must be refused",
        );

        // (5) A cluster created after start: unknown SNI falls back to the
        // platform certificate until it is added, then works with mTLS.
        let d = ClusterKeys::create(keys_dir.path(), &cluster("d")).expect("d");
        let (chain_d, key_d) = node_identity(&d, "node-9");
        let pinned_d =
            || client_tls_config(d.ca_cert_pem(), &d.server_name(), Some((&chain_d, &key_d)));
        assert_refused(
            heartbeat(addr, pinned_d(), &mut seen).await,
            "UnknownIssuer",
            "d is not added yet",
        );
        tls.add_cluster(&d).expect("add d");
        assert_eq!(
            heartbeat(addr, pinned_d(), &mut seen)
                .await
                .expect("mTLS d"),
            Some(PeerIdentity::node(cluster("d"), node("node-9")).expect("id"))
        );
        let d_cert_on_platform = client_tls_config(
            platform.ca_cert_pem(),
            "localhost",
            Some((&chain_d, &key_d)),
        );
        tls.remove_cluster(&cluster("d")).expect("remove d");
        assert_refused(
            heartbeat(addr, d_cert_on_platform, &mut seen).await,
            "UnknownCA",
            "d's CA is no longer trusted",
        );

        stop_tx.send(()).expect("stop");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server stops")
            .expect("join")
            .expect("serve");
    }
}
