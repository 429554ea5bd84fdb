//! The `rap-controlplane serve` process: configuration, the gRPC listener
//! (`AdminService`, `EnrollmentService`, `AgentService`; TLS with
//! per-cluster server certificates by SNI and optional client
//! certificates from any cluster CA), and `/metrics`, `/healthz`,
//! `/readyz` on HTTP.

use crate::api::admin::AdminApi;
use crate::api::agent::AgentApi;
use crate::api::enrollment::EnrollmentApi;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::fencing::{AuthorityClients, StorageTransport};
use crate::heartbeats::Heartbeats;
use crate::keys::{ClusterKeys, PlatformKeys};
use crate::tls::ControlPlaneTls;
use rap_proto::ids::ClusterId;
use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Largest config file read.
pub const CONFIG_BYTES_MAX: u64 = 64 * 1024;
/// Default gRPC listen address.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7443";
/// Default HTTP (metrics, health) listen address.
pub const HTTP_LISTEN_DEFAULT: &str = "127.0.0.1:7480";
/// HTTP/2 keepalive of the gRPC server.
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// Log output format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The control plane's configuration (TOML; flags and `RAP_*` variables
/// override it).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// PostgreSQL URL.
    pub database_url: String,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// HTTP listen address (`/metrics`, `/healthz`, `/readyz`).
    pub http_listen: SocketAddr,
    /// Directory of the platform CA, cluster CAs and signing keys.
    pub keys_dir: PathBuf,
    /// `host:port` agents dial (written into join commands; default:
    /// `listen`).
    pub public_endpoint: Option<String>,
    /// DNS names / IPs of the control plane's platform server certificate.
    pub server_names: Vec<String>,
    /// Development only: serve gRPC without TLS (agents cannot
    /// authenticate heartbeats or renewals then).
    pub insecure_plaintext: bool,
    /// Development only: dial storage nodes without TLS.
    pub storage_insecure_plaintext: bool,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: String::new(),
            listen: LISTEN_DEFAULT
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7443))),
            http_listen: HTTP_LISTEN_DEFAULT
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7480))),
            keys_dir: PathBuf::from("rap-keys"),
            public_endpoint: None,
            server_names: vec!["localhost".into()],
            insecure_plaintext: false,
            storage_insecure_plaintext: false,
            log_format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| Error::invalid(format!("config: {e}")))
    }

    /// Checks the settings that have no safe default.
    pub fn validate(&self) -> Result<()> {
        if self.database_url.is_empty() {
            return Err(Error::invalid(
                "no database: set database-url, --database-url or RAP_DATABASE_URL",
            ));
        }
        if self.listen == self.http_listen {
            return Err(Error::invalid("listen and http-listen must differ"));
        }
        Ok(())
    }

    /// The address agents dial.
    pub fn public_endpoint(&self) -> String {
        self.public_endpoint
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }
}

/// Loads the platform keys and every known cluster's keys into a TLS
/// configuration.
async fn tls_for(config: &Config, pool: &sqlx::PgPool) -> Result<Arc<ControlPlaneTls>> {
    rap_authority::tls::install_crypto_provider();
    let platform = PlatformKeys::create_or_load(&config.keys_dir, &config.server_names)?;
    let tls = Arc::new(ControlPlaneTls::new(&platform)?);
    let clusters: Vec<String> =
        sqlx::query_scalar("SELECT cluster_id FROM clusters ORDER BY cluster_id")
            .fetch_all(pool)
            .await?;
    for cluster in clusters {
        let loaded = ClusterId::new(cluster.as_str())
            .map_err(Error::from)
            .and_then(|id| ClusterKeys::load(&config.keys_dir, &id));
        match loaded.and_then(|keys| tls.add_cluster(&keys)) {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(cluster_id = %cluster, error = %e, "cluster keys unusable; its agents cannot connect")
            }
        }
    }
    Ok(tls)
}

/// Runs the control plane until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.validate()?;
    let pool = crate::db::connect(&config.database_url, crate::limits::DB_POOL_CONNECTIONS).await?;
    let applied = crate::db::migrate(&pool).await?;
    tracing::info!(
        applied,
        known = crate::db::known_migrations(),
        "schema migrated"
    );
    let tls = if config.insecure_plaintext {
        tracing::warn!("serving gRPC WITHOUT TLS (development only)");
        None
    } else {
        Some(tls_for(&config, &pool).await?)
    };
    let transport = if config.storage_insecure_plaintext {
        StorageTransport::InsecurePlaintext
    } else {
        StorageTransport::MutualTls {
            keys_dir: config.keys_dir.clone(),
        }
    };
    let heartbeats = Heartbeats::start(pool.clone());
    let agent = AgentApi::new(pool.clone(), heartbeats.clone());
    let ctx = Context {
        pool: pool.clone(),
        keys_dir: config.keys_dir.clone(),
        authority: AuthorityClients::new(transport),
        public_endpoint: config.public_endpoint(),
        tls: tls.clone(),
        agents: Some(agent.clone()),
    };
    // One budget of anonymous audit rows per source for the whole process.
    let refusals = Arc::new(crate::audit::RefusalSampler::default());
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE * 2))
        .tcp_nodelay(true)
        .add_service(
            AdminApi::new(ctx.clone())
                .with_refusal_sampler(Arc::clone(&refusals))
                .into_service(),
        )
        .add_service(
            EnrollmentApi::new(ctx.clone())
                .with_refusal_sampler(Arc::clone(&refusals))
                .into_service(),
        )
        .add_service(agent.into_service());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let grpc_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::invalid(format!("listen on {} (gRPC): {e}", config.listen)))?;
    let http_listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|e| Error::invalid(format!("listen on {} (HTTP): {e}", config.http_listen)))?;
    tracing::info!(grpc = %config.listen, http = %config.http_listen, tls = tls.is_some(), "serving");

    let mut grpc_stop = stop_rx.clone();
    let grpc_shutdown = async move {
        let _ = grpc_stop.wait_for(|stop| *stop).await;
    };
    let grpc = async {
        match tls {
            Some(tls) => crate::tls::serve_tls(grpc_listener, tls, router, grpc_shutdown).await,
            None => router
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(grpc_listener)
                        .with_nodelay(Some(true)),
                    grpc_shutdown,
                )
                .await
                .map_err(|e| Error::Internal(format!("gRPC server: {e}"))),
        }
    };
    let mut http_stop = stop_rx.clone();
    let http = axum::serve(http_listener, http_router(pool.clone(), heartbeats.clone()))
        .with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|stop| *stop).await;
        });
    let (grpc_result, http_result) = tokio::join!(grpc, http);
    heartbeats.shutdown().await;
    grpc_result?;
    http_result.map_err(|e| Error::Internal(format!("HTTP server: {e}")))?;
    tracing::info!("stopped");
    Ok(())
}

fn http_router(pool: sqlx::PgPool, heartbeats: Heartbeats) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    let ready_pool = pool.clone();
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let pool = ready_pool.clone();
                async move {
                    match sqlx::query("SELECT 1").execute(&pool).await {
                        Ok(_) => (StatusCode::OK, "ready\n".to_string()),
                        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let stats = heartbeats.stats();
                let pool = pool.clone();
                async move { metrics_text(&stats, pool.size(), pool.num_idle()) }
            }),
        )
}

fn metrics_text(
    stats: &crate::heartbeats::HeartbeatStats,
    pool_size: u32,
    pool_idle: usize,
) -> String {
    let mut out = String::new();
    let mut line = |name: &str, help: &str, kind: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    line(
        "rap_cp_heartbeats_written_total",
        "Heartbeats committed to PostgreSQL.",
        "counter",
        stats.rows.to_string(),
    );
    line(
        "rap_cp_heartbeat_batches_total",
        "Heartbeat batches committed.",
        "counter",
        stats.batches.to_string(),
    );
    line(
        "rap_cp_heartbeats_failed_total",
        "Heartbeats whose batch failed to commit.",
        "counter",
        stats.failed_rows.to_string(),
    );
    line(
        "rap_cp_heartbeats_refused_total",
        "Heartbeats refused because the queue was full.",
        "counter",
        stats.refused_queue_full.to_string(),
    );
    line(
        "rap_cp_heartbeats_rate_limited_total",
        "Heartbeats refused because their node exceeded its own rate (RATE_LIMITED).",
        "counter",
        stats.rate_limited.to_string(),
    );
    line(
        "rap_cp_heartbeat_log_changes_suppressed_total",
        "Heartbeat changes not logged because their node exceeded its change budget.",
        "counter",
        stats.log_changes_suppressed.to_string(),
    );
    line(
        "rap_cp_heartbeat_limiter_nodes",
        "Nodes tracked by the per-node heartbeat limiter.",
        "gauge",
        stats.limiter_nodes.to_string(),
    );
    line(
        "rap_cp_heartbeat_queue_depth",
        "Heartbeats waiting for their batch.",
        "gauge",
        stats.queue_depth.to_string(),
    );
    line(
        "rap_cp_db_pool_connections",
        "Open PostgreSQL connections.",
        "gauge",
        pool_size.to_string(),
    );
    line(
        "rap_cp_db_pool_idle",
        "Idle PostgreSQL connections.",
        "gauge",
        pool_idle.to_string(),
    );
    line(
        "rap_cp_audit_refusals_suppressed_total",
        "Anonymous refusals counted but not written to the audit log (over their source's budget).",
        "counter",
        crate::audit::suppressed_total().to_string(),
    );
    out.push_str(
        "# HELP rap_cp_refusals_total Refused calls by audit action and error code (every refusal, audited or not).\n\
         # TYPE rap_cp_refusals_total counter\n",
    );
    for refusal in crate::audit::refusal_counts() {
        out.push_str(&format!(
            "rap_cp_refusals_total{{action=\"{}\",code=\"{}\"}} {}\n",
            refusal.action, refusal.code, refusal.count
        ));
    }
    out
}
