//! Starting and serving one storage node.

use crate::config::Config;
use anyhow::{Context, Result};
use rap_authority::network::{PeerAuth, RaftServer};
use rap_authority::node::{AuthorityNode, NodeOptions, Timing};
use rap_authority::service::AuthorityApi;
use rap_authority::slot::NodeSlot;
use rap_authority::tls::TlsFiles;
use rap_proto::ids::{ClusterId, NodeId};
use std::future::Future;
use std::time::Duration;

/// Node options from a validated config.
pub fn node_options(config: &Config) -> Result<NodeOptions> {
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
        tls: config.tls.as_ref().map(|tls| TlsFiles {
            ca: tls.ca.clone(),
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        }),
        connector: None,
    })
}

/// Starts the node and serves gRPC and HTTP until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let options = node_options(&config)?;
    let node = AuthorityNode::start(options.clone())
        .await
        .context("start the authority node")?;
    let span =
        tracing::info_span!("node", cluster_id = %options.cluster_id, node_id = %options.node_id);
    let _entered = span.enter();

    let auth = if options.tls.is_some() {
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
    drop(node);

    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(options.timing.keepalive))
        .http2_keepalive_timeout(Some(options.timing.keepalive * 2))
        .tcp_nodelay(true);
    if let Some(files) = &options.tls {
        builder = builder
            .tls_config(files.server_config()?)
            .context("configure TLS")?;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let grpc_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen on {} (gRPC)", config.listen))?;
    let http_listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("listen on {} (HTTP)", config.http_listen))?;
    tracing::info!(grpc = %config.listen, http = %config.http_listen, "serving");

    let mut grpc_stop = stop_rx.clone();
    let grpc = builder
        .add_service(raft_service)
        .add_service(authority_service)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            async move {
                let _ = grpc_stop.wait_for(|stop| *stop).await;
            },
        );
    let mut http_stop = stop_rx.clone();
    let http = axum::serve(http_listener, crate::http::router(slot.clone()))
        .with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|stop| *stop).await;
        });
    let (grpc_result, http_result) = tokio::join!(grpc, http);
    grpc_result.context("serve gRPC")?;
    http_result.context("serve HTTP")?;
    slot.get().shutdown().await.context("stop raft")?;
    tracing::info!("stopped");
    Ok(())
}
