//! The `rap-controlplane serve` process: configuration, the gRPC listener
//! (`AdminService`, `EnrollmentService`, `AgentService`, and the standard
//! health and reflection services, [`crate::api::probes`]; TLS with
//! per-cluster server certificates by SNI and optional client
//! certificates from any cluster CA), and `/metrics`, `/healthz`,
//! `/readyz` on HTTP.

use crate::api::admin::AdminApi;
use crate::api::agent::AgentApi;
use crate::api::enrollment::EnrollmentApi;
use crate::api::probes::ProbeGate;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::fencing::{AuthorityClients, StorageTransport};
use crate::heartbeats::Heartbeats;
use crate::keys::PlatformKeys;
use crate::tls::ControlPlaneTls;
use rap_proto::ids::ClusterId;
use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::Instrument;

/// Largest config file read.
pub const CONFIG_BYTES_MAX: u64 = 64 * 1024;
/// Default gRPC listen address.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7443";
/// Default HTTP (metrics, health) listen address.
pub const HTTP_LISTEN_DEFAULT: &str = "127.0.0.1:7480";
/// HTTP/2 keepalive of the gRPC server.
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// Log output format (one owner: `rap_core::logging`).
pub use rap_core::logging::LogFormat;

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
    /// HTTPS listen address of the web console ([`crate::console`]); off
    /// when unset. Its certificate is `platform/console.pem` in the keys
    /// directory, made on first start for `server-names`.
    pub console_listen: Option<SocketAddr>,
    /// Directory of the platform CA, cluster CAs and signing keys.
    pub keys_dir: PathBuf,
    /// `host:port` agents dial (written into join commands; default:
    /// `listen`).
    pub public_endpoint: Option<String>,
    /// DNS names / IPs of the control plane's platform server certificate.
    pub server_names: Vec<String>,
    /// Development only: serve gRPC without TLS (agents cannot
    /// authenticate heartbeats or renewals then). Refused unless `listen`
    /// is a loopback address or
    /// `insecure-plaintext-allow-non-loopback` is set.
    pub insecure_plaintext: bool,
    /// Lets `insecure-plaintext` listen on a non-loopback address: bearer
    /// tokens and join tokens then cross the network in clear text.
    /// Logged at WARN on every start.
    pub insecure_plaintext_allow_non_loopback: bool,
    /// Development only: dial storage nodes without TLS.
    pub storage_insecure_plaintext: bool,
    /// Lifetime in seconds of the agent and storage node certificates this
    /// control plane issues (default 24 h; nodes renew at about 2/3).
    pub node_cert_validity_s: u64,
    /// Log format.
    pub log_format: LogFormat,
    /// High-risk admin calls need a TOTP step-up from every principal,
    /// not only from those that enrolled one (a principal without TOTP
    /// may only enrol).
    pub require_step_up: bool,
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
            console_listen: None,
            keys_dir: PathBuf::from("rap-keys"),
            public_endpoint: None,
            server_names: vec!["localhost".into()],
            insecure_plaintext: false,
            insecure_plaintext_allow_non_loopback: false,
            storage_insecure_plaintext: false,
            node_cert_validity_s: rap_core::tls::NODE_CERT_VALIDITY_DEFAULT.as_secs(),
            log_format: LogFormat::Text,
            require_step_up: false,
        }
    }
}

impl Config {
    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| Error::invalid(format!("config: {e}")))
    }

    /// Checks the settings that have no safe default; a refusal is
    /// [`Error::Config`] naming the key to change.
    pub fn validate(&self) -> Result<()> {
        if self.database_url.is_empty() {
            return Err(Error::Config {
                key: "database-url",
                message: "no database: set database-url, --database-url or RAP_DATABASE_URL".into(),
            });
        }
        if self.listen == self.http_listen {
            return Err(Error::Config {
                key: "http-listen",
                message: format!("listen and http-listen must differ (both {})", self.listen),
            });
        }
        if let Some(console) = self.console_listen
            && (console == self.listen || console == self.http_listen)
        {
            return Err(Error::Config {
                key: "console-listen",
                message: format!(
                    "console-listen must differ from listen and http-listen ({console})"
                ),
            });
        }
        if self.insecure_plaintext
            && !self.listen.ip().is_loopback()
            && !self.insecure_plaintext_allow_non_loopback
        {
            return Err(Error::Config {
                key: "insecure-plaintext",
                message: format!(
                    "plaintext gRPC on the non-loopback address {} would send API and join \
                     tokens in clear text: remove insecure-plaintext (--insecure-plaintext) to \
                     serve TLS, or listen on 127.0.0.1 / [::1]; only if you really mean it, set \
                     insecure-plaintext-allow-non-loopback = true \
                     (--insecure-plaintext-allow-non-loopback)",
                    self.listen
                ),
            });
        }
        let validity = std::time::Duration::from_secs(self.node_cert_validity_s);
        if validity < rap_core::tls::NODE_CERT_VALIDITY_MIN
            || validity > rap_core::tls::NODE_CERT_VALIDITY_MAX
        {
            return Err(Error::invalid(format!(
                "node-cert-validity-s {} is outside [{}, {}]",
                self.node_cert_validity_s,
                rap_core::tls::NODE_CERT_VALIDITY_MIN.as_secs(),
                rap_core::tls::NODE_CERT_VALIDITY_MAX.as_secs()
            )));
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
    rap_core::tls::install_crypto_provider();
    let (keys_dir, names) = (config.keys_dir.clone(), config.server_names.clone());
    let platform =
        tokio::task::spawn_blocking(move || PlatformKeys::create_or_load(&keys_dir, &names))
            .await
            .map_err(|e| Error::Internal(format!("loading the platform keys: {e}")))??;
    let tls = Arc::new(ControlPlaneTls::new(&platform)?);
    add_new_clusters(&tls, pool, &config.keys_dir).await?;
    Ok(tls)
}

/// How often a serving process looks for clusters that another control
/// plane process created (their server certificates and client CAs are
/// then served here too).
pub const CLUSTER_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Adds to `tls` every cluster in PostgreSQL that it does not serve yet
/// (keys read on a blocking thread); returns how many were added. A
/// cluster whose keys are unusable is logged and skipped.
async fn add_new_clusters(
    tls: &Arc<ControlPlaneTls>,
    pool: &sqlx::PgPool,
    keys_dir: &std::path::Path,
) -> Result<usize> {
    let known = tls.cluster_ids();
    let clusters = crate::db::clusters::all_ids(&mut *pool.acquire().await?).await?;
    let mut added = 0;
    for cluster in clusters {
        if known.iter().any(|id| id.as_str() == cluster) {
            continue;
        }
        let loaded = match ClusterId::new(cluster.as_str()) {
            Ok(id) => crate::clusters::load_keys(keys_dir, &id).await,
            Err(e) => Err(e.into()),
        };
        match loaded.and_then(|keys| tls.add_cluster(&keys)) {
            Ok(()) => added += 1,
            Err(e) => {
                tracing::error!(cluster_id = %cluster, error = %e, "cluster keys unusable; its agents cannot connect")
            }
        }
    }
    Ok(added)
}

/// Keeps `tls` serving every cluster, also those created through another
/// control plane process on the same PostgreSQL, until `stop` turns true.
async fn refresh_clusters(
    tls: Arc<ControlPlaneTls>,
    pool: sqlx::PgPool,
    keys_dir: std::path::PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(CLUSTER_REFRESH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = ticker.tick() => {}
        }
        match add_new_clusters(&tls, &pool, &keys_dir).await {
            Ok(0) => {}
            Ok(added) => tracing::info!(added, "clusters created elsewhere are served now"),
            Err(e) => tracing::warn!(error = %e, "cannot look for new clusters"),
        }
    }
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
        tracing::warn!(listen = %config.listen, "serving gRPC WITHOUT TLS (development only)");
        if !config.listen.ip().is_loopback() {
            tracing::warn!(
                listen = %config.listen,
                "insecure-plaintext-allow-non-loopback is set: API and join tokens cross the \
                 network IN CLEAR TEXT on a non-loopback address; do not run this in production"
            );
        }
        None
    } else {
        Some(tls_for(&config, &pool).await?)
    };
    let transport = if config.storage_insecure_plaintext {
        tracing::warn!("dialing storage nodes WITHOUT TLS (development only)");
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
        identities: Some(Arc::new(agent.clone())),
        node_cert_validity: std::time::Duration::from_secs(config.node_cert_validity_s),
        require_step_up: config.require_step_up,
    };
    // One metrics registry for the whole process.
    let metrics = Arc::new(crate::metrics::ControlPlaneMetrics::new(
        crate::metrics::Sources {
            heartbeats: heartbeats.clone(),
            pool: pool.clone(),
            agents: Some(agent.clone()),
            tls: tls.clone(),
            keys_dir: config.keys_dir.clone(),
        },
        &ctx.authority,
    ));
    // One budget of anonymous audit rows per source for the whole process.
    let refusals = Arc::new(crate::audit::RefusalSampler::default());
    // gRPC health follows /readyz; health and reflection answer the
    // callers the access table admits.
    let services = &crate::api::probes::CONTROL_PLANE_SERVICES;
    let (health, health_service) = rap_authority::probes::Health::new(services).await;
    let probe_refusals = crate::api::probes::Refusals {
        pool: pool.clone(),
        sampler: Arc::clone(&refusals),
    };
    let reflection =
        rap_authority::probes::reflection(services).map_err(|e| Error::Internal(e.to_string()))?;
    let reflection_v1alpha = rap_authority::probes::reflection_v1alpha(services)
        .map_err(|e| Error::Internal(e.to_string()))?;
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
        .add_service(agent.clone().into_service())
        .add_service(ProbeGate::new(health_service, probe_refusals.clone()))
        .add_service(ProbeGate::new(reflection, probe_refusals.clone()))
        .add_service(ProbeGate::new(reflection_v1alpha, probe_refusals));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let ready_pool = pool.clone();
    tokio::spawn(
        health
            .follow(
                move || {
                    let pool = ready_pool.clone();
                    async move { ready(&pool).await.map(|()| "ready".to_string()) }
                },
                stop_rx.clone(),
            )
            .instrument(tracing::info_span!("task", task = "grpc_health")),
    );
    // Other control plane processes revoke too: their changes reach this
    // process's identity cache through PostgreSQL.
    let identity_listener = agent.start_identity_listener(stop_rx.clone());
    // Dirty scopes are compiled and published as mutations commit.
    tokio::spawn(
        crate::snapshots::run_publisher(ctx.clone(), stop_rx.clone())
            .instrument(tracing::info_span!("task", task = "snapshot_publisher")),
    );
    // Partitions and node health are watched and announced in the audit
    // trail (once across control planes).
    tokio::spawn(
        crate::watch::run_watcher(ctx.clone(), stop_rx.clone())
            .instrument(tracing::info_span!("task", task = "watcher")),
    );
    // Clusters created through another process are served here too.
    if let Some(tls) = &tls {
        tokio::spawn(
            refresh_clusters(
                Arc::clone(tls),
                pool.clone(),
                config.keys_dir.clone(),
                stop_rx.clone(),
            )
            .instrument(tracing::info_span!("task", task = "refresh_clusters")),
        );
    }
    let console = match config.console_listen {
        Some(addr) => Some(
            start_console(
                &config,
                addr,
                ctx.clone(),
                Arc::clone(&refusals),
                stop_rx.clone(),
            )
            .await?,
        ),
        None => None,
    };
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
    let http = axum::serve(http_listener, http_router(pool.clone(), metrics))
        .with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|stop| *stop).await;
        });
    let (grpc_result, http_result) = tokio::join!(grpc, http);
    if let Some(console) = console {
        match console.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "console stopped"),
            Err(e) => tracing::error!(error = %e, "console task failed"),
        }
    }
    heartbeats.shutdown().await;
    let _ = identity_listener.await;
    grpc_result?;
    http_result.map_err(|e| Error::Internal(format!("HTTP server: {e}")))?;
    tracing::info!("stopped");
    Ok(())
}

/// Binds the console's listener (failing the start when it cannot),
/// loads or makes its certificate and serves it until `stop`.
async fn start_console(
    config: &Config,
    addr: SocketAddr,
    ctx: Context,
    refusals: Arc<crate::audit::RefusalSampler>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<()>>> {
    let (keys_dir, names) = (config.keys_dir.clone(), config.server_names.clone());
    let cert =
        tokio::task::spawn_blocking(move || crate::keys::console::console_cert(&keys_dir, &names))
            .await
            .map_err(|e| Error::Internal(format!("loading the console certificate: {e}")))??;
    let tls = crate::console::tls_config(&cert)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::invalid(format!("listen on {addr} (console): {e}")))?;
    let console = crate::console::Console::new(ctx, refusals)?;
    tracing::info!(
        url = %format!("https://{addr}/"),
        certificate = %cert.files.cert.display(),
        sha256 = %cert.fingerprint,
        "web console"
    );
    Ok(tokio::spawn(
        crate::console::serve(console, listener, tls, async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .instrument(tracing::info_span!("task", task = "console")),
    ))
}

/// The answer of `/readyz` when the database does not answer: fixed and
/// short, so nothing about the database (host, user, error text) is
/// served; the detail goes to the log at WARN.
pub const READYZ_DATABASE_UNAVAILABLE: &str = "database unavailable\n";
/// How long `/readyz` waits for the database.
pub const READYZ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the control plane is ready (`/readyz` and the gRPC health
/// service): the database answers within [`READYZ_TIMEOUT`]. The error is
/// the detail, for the log only (never served).
pub async fn ready(pool: &sqlx::PgPool) -> std::result::Result<(), String> {
    match tokio::time::timeout(READYZ_TIMEOUT, crate::db::ping(pool)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("the database refused the readiness check: {e}")),
        Err(_) => Err(format!(
            "the database did not answer the readiness check within {} ms",
            READYZ_TIMEOUT.as_millis()
        )),
    }
}

/// `/readyz`: 200 when [`ready`], else 503 with
/// [`READYZ_DATABASE_UNAVAILABLE`] (the detail goes to the log at WARN).
async fn readiness(pool: &sqlx::PgPool) -> (axum::http::StatusCode, &'static str) {
    use axum::http::StatusCode;
    match ready(pool).await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, READYZ_DATABASE_UNAVAILABLE)
        }
    }
}

fn http_router(
    pool: sqlx::PgPool,
    metrics: Arc<crate::metrics::ControlPlaneMetrics>,
) -> axum::Router {
    use axum::http::{HeaderMap, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let ready_pool = pool.clone();
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let pool = ready_pool.clone();
                async move { readiness(&pool).await }
            }),
        )
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let metrics = Arc::clone(&metrics);
                async move {
                    let format = rap_authority::metrics::Format::from_accept(
                        headers
                            .get(header::ACCEPT)
                            .and_then(|value| value.to_str().ok()),
                    );
                    // The certificates' expiry is read from their files.
                    match tokio::task::spawn_blocking(move || metrics.render(format)).await {
                        Ok(body) => {
                            ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "metrics: rendering failed");
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
                        }
                    }
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str) -> Config {
        Config {
            database_url: "postgres://localhost/rap".into(),
            listen: listen.parse().expect("address"),
            http_listen: "127.0.0.1:7480".parse().expect("address"),
            ..Config::default()
        }
    }

    // Goal: plaintext gRPC is refused on a non-loopback address unless
    // the loud flag is set, with a typed error naming the key. Method:
    // validate() on loopback v4/v6, wildcard and a LAN address, with and
    // without TLS and the flag.
    #[test]
    fn validate_refuses_plaintext_off_loopback() {
        for listen in ["127.0.0.1:7443", "[::1]:7443"] {
            let mut c = config(listen);
            c.insecure_plaintext = true;
            c.validate().expect("plaintext on loopback is allowed");
        }
        for listen in ["0.0.0.0:7443", "10.1.2.3:7443", "[::]:7443"] {
            let mut c = config(listen);
            c.validate().expect("TLS anywhere is allowed");
            c.insecure_plaintext = true;
            match c.validate() {
                Err(Error::Config { key, message }) => {
                    assert_eq!(key, "insecure-plaintext");
                    assert!(message.contains(listen), "{message}");
                    assert!(
                        message.contains("insecure-plaintext-allow-non-loopback"),
                        "{message}"
                    );
                }
                other => panic!("{listen}: {other:?}"),
            }
            c.insecure_plaintext_allow_non_loopback = true;
            c.validate().expect("the explicit flag allows it");
        }
    }

    // Goal: the config file spells the new key in kebab case. Method:
    // parse TOML with it.
    #[test]
    fn toml_key_for_the_non_loopback_flag() {
        let c = Config::from_toml(
            "database-url = \"postgres://x\"\nlisten = \"0.0.0.0:7443\"\n\
             insecure-plaintext = true\ninsecure-plaintext-allow-non-loopback = true\n",
        )
        .expect("parse");
        assert!(c.insecure_plaintext_allow_non_loopback);
        c.validate().expect("allowed explicitly");
    }

    // Goal: other missing settings are typed too, naming their keys.
    // Method: validate() without a database and with equal listeners.
    #[test]
    fn validate_names_the_key() {
        let mut c = config("127.0.0.1:7443");
        c.database_url.clear();
        assert!(matches!(
            c.validate(),
            Err(Error::Config {
                key: "database-url",
                ..
            })
        ));
        let mut c = config("127.0.0.1:7480");
        c.http_listen = c.listen;
        assert!(matches!(
            c.validate(),
            Err(Error::Config {
                key: "http-listen",
                ..
            })
        ));
    }
}
