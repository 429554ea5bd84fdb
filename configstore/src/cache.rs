//! Serving a cache replica: a storage node that holds no Raft state, only
//! the shards its placement (`cache/<id>`) assigns it, filled from the
//! voters and served to node agents ([`rap_authority::replica`]).
//!
//! It serves `ShardService` only (behind the same access layer as a
//! voter: node agents of this cluster with a certificate that is not
//! revoked), the gRPC health and reflection services, and HTTP
//! `/metrics`, `/healthz`, `/readyz` (ready once a voter confirmed its
//! assignment recently; gRPC health follows the same
//! `CacheReplica::readiness`).

use crate::config::{Cache, Config};
use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use rap_authority::access::{AccessLayer, GroupView, RefusalCounter};
use rap_authority::cache::CacheStore;
use rap_authority::network::NetworkConfig;
use rap_authority::replica::CacheReplica;
use rap_authority::replica::follow;
use rap_authority::shard::ShardApi;
use rap_core::tls::live::LiveIdentity;
use rap_core::tls::pin::PeerTls;
use rap_proto::envelope::VerifierOptions;
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::limits::TRUST_ROOT_BYTES_MAX;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Runs the cache replica until `shutdown` resolves.
pub async fn serve(
    config: Config,
    cache: Cache,
    identity: Option<Arc<LiveIdentity>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let cluster_id = ClusterId::new(config.cluster_id.as_str())?;
    let node_id = NodeId::new(config.node_id.as_str())?;
    let sources = cache.sources()?;
    let genesis = rap_core::files::read_bounded(&cache.trust_root, TRUST_ROOT_BYTES_MAX as u64)
        .with_context(|| format!("read the trust root {}", cache.trust_root.display()))?;
    let store = CacheStore::open(
        &config.data_dir,
        cluster_id.clone(),
        node_id.clone(),
        &genesis,
        VerifierOptions::default(),
    )
    .with_context(|| format!("open the cache store in {}", config.data_dir.display()))?;
    let replica = Arc::new(CacheReplica::open(store).context("load the cache store")?);
    let span = tracing::info_span!("cache", cluster_id = %cluster_id, node_id = %node_id);
    let _entered = span.enter();
    tracing::info!(
        held = replica.read(|held| held.len()),
        voters = sources.len(),
        "cache replica starting"
    );

    let keepalive = Duration::from_millis(config.timing.keepalive_ms);
    let network = NetworkConfig {
        keepalive_interval: keepalive,
        keepalive_timeout: keepalive * 2,
        tls: match &identity {
            Some(identity) => Some(PeerTls::new(identity.clone())?),
            None => None,
        },
        ..NetworkConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let filling = tokio::spawn(
        follow::follow(replica.clone(), sources, network, stop_rx.clone()).instrument(span.clone()),
    );
    if let Some(identity) = &identity {
        tokio::spawn(
            crate::renewal::keep_current(identity.clone(), config.clone(), stop_rx.clone())
                .instrument(span.clone()),
        );
    }

    let counter: Arc<dyn RefusalCounter> = replica.metrics().clone();
    let access = AccessLayer::new(
        replica.clone() as Arc<dyn GroupView>,
        Some(counter),
        identity.is_some(),
    );
    let shard_service = ShardApi::cache(replica.clone())
        .stop_watches_on(stop_rx.clone())
        .into_service();
    let (grpc_listener, http_listener) = crate::server::bind(&config).await?;
    tracing::info!(grpc = %config.listen, http = %config.http_listen, tls = identity.is_some(), "serving as a cache replica");
    let routes = {
        let replica = replica.clone();
        crate::server::with_probes(
            tonic::service::Routes::new(shard_service),
            &CACHE_SERVICES,
            move || replica.readiness(),
            stop_rx.clone(),
        )
        .instrument(span.clone())
        .await?
    };
    let grpc = crate::server::serve_grpc(
        routes,
        access,
        keepalive,
        grpc_listener,
        identity.as_ref(),
        stop_rx.clone(),
    );
    let mut http_stop = stop_rx.clone();
    let http = axum::serve(http_listener, router(replica.clone(), identity.clone()))
        .with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|stop| *stop).await;
        });
    let (grpc_result, http_result) = tokio::join!(grpc, http);
    grpc_result?;
    http_result.context("serve HTTP")?;
    match filling.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(error).context("fill the cache"),
        Err(error) => return Err(anyhow::anyhow!("the cache fill task failed: {error}")),
    }
    tracing::info!("stopped");
    Ok(())
}

/// The services a cache replica runs besides health and reflection.
pub const CACHE_SERVICES: [&str; 1] = [rap_proto::pb::shard_service_server::SERVICE_NAME];

/// The HTTP routes of a cache replica; its metrics report when
/// `identity`'s certificate ends.
fn router(replica: Arc<CacheReplica>, identity: Option<Arc<LiveIdentity>>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(
                move |State(r): State<Arc<CacheReplica>>, headers: axum::http::HeaderMap| {
                    let not_after = identity.as_ref().map(|i| i.facts().not_after);
                    async move {
                        crate::http::metrics_answer(&headers, |format| {
                            r.render_metrics(not_after, format)
                        })
                    }
                },
            ),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(replica)
}

async fn ready(State(replica): State<Arc<CacheReplica>>) -> (StatusCode, String) {
    match replica.readiness() {
        Ok(line) => (StatusCode::OK, format!("{line}\n")),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}
