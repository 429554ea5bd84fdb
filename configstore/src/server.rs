//! Starting and serving one storage node.
//!
//! Under mTLS the node's certificate is a [`LiveIdentity`]: the gRPC
//! listener (its own TLS accept loop, so the certificate can change) and
//! every client connection to peers use it, and a background task reloads
//! it when the files change ([`crate::renewal`] renews it before expiry).
//! Every request passes the [`AccessLayer`] first: the caller-kind table of
//! [`rap_authority::access`], group membership and revocations. The node
//! serves `RaftService`, `AuthorityService` and `ShardService` (node
//! agents' shard reads, [`rap_authority::shard`]), and the standard gRPC
//! health (following `/readyz`) and reflection services
//! ([`with_probes`], behind the same layer).

use crate::config::Config;
use anyhow::{Context, Result, bail};
use rap_authority::access::{AccessLayer, GroupView, RefusalCounter};
use rap_authority::network::{PeerAuth, RaftServer};
use rap_authority::node::{AuthorityNode, NodeOptions, Timing};
use rap_authority::service::AuthorityApi;
use rap_authority::shard::ShardApi;
use rap_authority::slot::NodeSlot;
use rap_core::identity::IdentityKind;
use rap_core::tls::TlsFiles;
use rap_core::tls::live::{self, LiveIdentity};
use rap_core::tls::pin::PeerTls;
use rap_proto::ids::{ClusterId, NodeId};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The node's certificate files from a validated config, if it runs mTLS.
pub fn tls_files(config: &Config) -> Option<TlsFiles> {
    config.tls.as_ref().map(|tls| TlsFiles {
        ca: tls.ca.clone(),
        cert: tls.cert.clone(),
        key: tls.key.clone(),
    })
}

/// Loads the node's certificate and checks that it is this node's
/// storage identity in this cluster: a storage node never serves under an
/// agent's, an operator's or another node's certificate.
pub fn load_identity(config: &Config, files: TlsFiles) -> Result<Arc<LiveIdentity>> {
    let identity = LiveIdentity::load(files.clone())
        .with_context(|| format!("load the node certificate {}", files.cert.display()))?;
    let named = identity.identity();
    if named.kind != IdentityKind::Storage
        || named.cluster_id.as_str() != config.cluster_id
        || named.node_id.as_str() != config.node_id
    {
        bail!(
            "{} names {named}, not storage node {} of cluster {}: enrol this node (`rap-configstore join`) or issue it a storage certificate",
            files.cert.display(),
            config.node_id,
            config.cluster_id
        );
    }
    Ok(identity)
}

/// Node options from a validated config and the node's certificate.
pub fn node_options(config: &Config, identity: Option<&Arc<LiveIdentity>>) -> Result<NodeOptions> {
    let t = &config.timing;
    Ok(NodeOptions {
        cluster_id: ClusterId::new(config.cluster_id.as_str())?,
        node_id: NodeId::new(config.node_id.as_str())?,
        advertise: config.advertise(),
        region: config.labels.region.clone(),
        zone: config.labels.zone.clone(),
        host: config.labels.host.clone(),
        data_dir: config.data_dir.clone(),
        timing: Timing {
            heartbeat: Duration::from_millis(t.heartbeat_ms),
            election_timeout_min: Duration::from_millis(t.election_timeout_min_ms),
            election_timeout_max: Duration::from_millis(t.election_timeout_max_ms),
            lease: Duration::from_millis(t.lease_ms()),
            keepalive: Duration::from_millis(t.keepalive_ms),
        },
        tls: match identity {
            Some(identity) => Some(PeerTls::new(identity.clone())?),
            None => None,
        },
        connector: None,
        disk: None,
        clock: None,
        dial_via: config.dial_via()?,
    })
}

/// Starts the node and serves gRPC and HTTP until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    rap_core::tls::install_crypto_provider();
    let identity = match tls_files(&config) {
        Some(files) => Some(load_identity(&config, files)?),
        None => None,
    };
    if let Some(cache) = config.cache.clone() {
        return crate::cache::serve(config, cache, identity, shutdown).await;
    }
    let options = node_options(&config, identity.as_ref())?;
    let node = AuthorityNode::start(options.clone())
        .await
        .context("start the authority node")?;
    let span =
        tracing::info_span!("node", cluster_id = %options.cluster_id, node_id = %options.node_id);
    let _entered = span.enter();
    if config.insecure_plaintext {
        tracing::warn!(
            listen = %config.listen,
            non_loopback_allowed = config.insecure_plaintext_allow_non_loopback,
            "serving WITHOUT TLS: any process that reaches this port can call every RPC (development only)"
        );
    }

    let auth = if identity.is_some() {
        PeerAuth::MutualTls
    } else {
        PeerAuth::Plaintext
    };
    // Promotion and rejoin swap the node inside the slot; the term guard
    // and reachability are carried from one incarnation to the next.
    let slot = NodeSlot::new(node.clone());
    let raft_service = RaftServer::new(
        slot.clone(),
        node.guard().clone(),
        node.reachability().clone(),
        auth,
    )
    .with_metrics(node.metrics().clone())
    .into_service();
    let authority_service = AuthorityApi::with_slot(slot.clone()).into_service();
    let counter: Arc<dyn RefusalCounter> = node.metrics().clone();
    let access = AccessLayer::new(
        slot.clone() as Arc<dyn GroupView>,
        Some(counter),
        identity.is_some(),
    );
    drop(node);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Node agents read their shards here; the access layer admits node
    // certificates only, the service checks each scope's readers. Open
    // watches end when the node stops (a graceful shutdown waits for open
    // streams).
    let shard_service = ShardApi::with_slot(slot.clone())
        .stop_watches_on(stop_rx.clone())
        .into_service();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    if let Some(identity) = &identity {
        tokio::spawn(
            crate::renewal::keep_current(identity.clone(), config.clone(), stop_rx.clone())
                .instrument(span.clone()),
        );
    }

    let (grpc_listener, http_listener) = bind(&config).await?;
    tracing::info!(grpc = %config.listen, http = %config.http_listen, tls = identity.is_some(), "serving");

    let routes = tonic::service::Routes::new(raft_service)
        .add_service(authority_service)
        .add_service(shard_service);
    let routes = {
        let slot = slot.clone();
        with_probes(
            routes,
            &VOTER_SERVICES,
            move || crate::http::readiness(&slot),
            stop_rx.clone(),
        )
        .instrument(span.clone())
        .await?
    };
    let grpc = serve_grpc(
        routes,
        access,
        options.timing.keepalive,
        grpc_listener,
        identity.as_ref(),
        stop_rx.clone(),
    );
    let mut http_stop = stop_rx.clone();
    let http = axum::serve(http_listener, crate::http::router(slot.clone()))
        .with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|stop| *stop).await;
        });
    let (grpc_result, http_result) = tokio::join!(grpc, http);
    grpc_result?;
    http_result.context("serve HTTP")?;
    slot.get().shutdown().await.context("stop raft")?;
    tracing::info!("stopped");
    Ok(())
}

/// The services a voter runs besides health and reflection (their
/// health is reported by name).
pub const VOTER_SERVICES: [&str; 3] = [
    rap_proto::pb::raft_service_server::SERVICE_NAME,
    rap_proto::pb::authority_service_server::SERVICE_NAME,
    rap_proto::pb::shard_service_server::SERVICE_NAME,
];

/// `routes` of a server running `services`, with the gRPC health service
/// (following `readiness`, the function behind `/readyz`, until `stop`
/// turns true) and reflection ([`rap_authority::probes`]). They are served
/// behind the same [`AccessLayer`] as the rest.
pub async fn with_probes(
    routes: tonic::service::Routes,
    services: &[&'static str],
    readiness: impl Fn() -> Result<String, String> + Send + 'static,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tonic::service::Routes> {
    let (health, health_service) = rap_authority::probes::Health::new(services).await;
    tokio::spawn(
        health
            .follow(move || std::future::ready(readiness()), stop)
            .in_current_span(),
    );
    Ok(routes
        .add_service(health_service)
        .add_service(rap_authority::probes::reflection(services)?)
        .add_service(rap_authority::probes::reflection_v1alpha(services)?))
}

/// The gRPC and HTTP listeners of `config`.
pub async fn bind(config: &Config) -> Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    let grpc = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen on {} (gRPC)", config.listen))?;
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("listen on {} (HTTP)", config.http_listen))?;
    Ok((grpc, http))
}

/// Serves `routes` behind `access` on `listener` (under mTLS with
/// `identity`'s live certificate, else plaintext) until `stop` turns true.
pub async fn serve_grpc(
    routes: tonic::service::Routes,
    access: AccessLayer,
    keepalive: Duration,
    listener: tokio::net::TcpListener,
    identity: Option<&Arc<LiveIdentity>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive * 2))
        .tcp_nodelay(true)
        .layer(access)
        .add_routes(routes);
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    match identity {
        Some(identity) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(live::server_config(identity)?);
            router
                .serve_with_incoming_shutdown(
                    rap_core::tls::incoming::tls_incoming(listener, acceptor),
                    stopped,
                )
                .await
                .context("serve gRPC")
        }
        None => router
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                stopped,
            )
            .await
            .context("serve gRPC"),
    }
}
