//! Heartbeat ingestion benchmark, run by `scripts/bench-heartbeats.sh`
//! (benchmarks are scripts that print figures; nothing here asserts
//! speed).
//!
//! Sets up one cluster with `--nodes` members (active memberships, active
//! identities, two service instances each) in a private PostgreSQL
//! (rap_pgtest, or `--database-url`), starts the [`Heartbeats`] batcher and
//! drives it:
//!
//! * `--via grpc` (default): `AgentApi` behind the control plane's real TLS
//!   listener (`tls::serve_tls`), `--connections` mTLS connections, each
//!   with its own node certificate from `ClusterKeys`. A connection can only
//!   speak for its own node, so the heartbeats of the `--nodes` simulated
//!   agents are spread over the `--connections` identities.
//! * `--via direct`: `Heartbeat::from_request` + `Heartbeats` in process,
//!   every simulated agent its own node.
//!
//! Load: by default every agent sends one heartbeat per `--interval-ms`
//! (first one at a random offset, then ±10 % jitter), i.e. nodes/interval
//! heartbeats per second; `--saturate` instead keeps `--concurrency`
//! heartbeats in flight for `--seconds` to find the ceiling. `--no-wait`
//! (direct only) uses `submit` instead of `submit_and_wait`.
//!
//! Prints heartbeats/s, p50/p99/max submit-to-commit latency, batches/s,
//! mean batch size and mean batch write time. Clients, server and
//! PostgreSQL share the machine's cores.
//!
//! Every node has its own rate limit (`--node-burst`, `--node-refill-ms`;
//! defaults: the production limits). Runs that make one identity speak
//! for many simulated agents, or saturate, must raise it.
//!
//! `--flood` (grpc only): every agent is its own node (`--connections`
//! nodes, paced at `--interval-ms`); after `--seconds` quiet, one more
//! node floods for another `--seconds` with `--concurrency` heartbeats in
//! flight from a thread and runtime of its own (its own machine, as far
//! as one host allows). Prints the other nodes' latency "quiet p50/p99"
//! and "during flood p50/p99", their refusals (none expected) and the
//! flooding node's accepted / RATE_LIMITED counts.

use clap::{Parser, ValueEnum};
use rap_controlplane::api::agent::AgentApi;
use rap_controlplane::heartbeats::{
    Heartbeat, HeartbeatStats, Heartbeats, HeartbeatsConfig, NodeLimits,
};
use rap_controlplane::keys::{ClusterKeys, NODE_CERT_VALIDITY_DEFAULT, PlatformKeys};
use rap_controlplane::limits::{
    DB_POOL_CONNECTIONS, HEARTBEAT_BATCH_MAX, HEARTBEAT_FLUSH_INTERVAL, HEARTBEAT_NODE_BURST,
    HEARTBEAT_NODE_REFILL,
};
use rap_controlplane::tls::{ControlPlaneTls, client_tls_config, serve_tls};
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::pb::agent_service_client::AgentServiceClient;
use rap_proto::pb::{AcceptedVersion, Capability, HeartbeatRequest, NodeHealth, ServiceStatus};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// The benchmark's cluster.
const CLUSTER: &str = "bench";
/// Jitter of the heartbeat interval, in percent either way.
const JITTER_PERCENT: u64 = 10;
/// Connections set up at once.
const CONNECT_PARALLELISM: usize = 32;
/// How often batcher stats are sampled during the run.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Pause of a `--no-wait` producer after a queue-full refusal.
const FULL_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Via {
    /// Through AgentApi over real mTLS.
    Grpc,
    /// Straight into the batcher.
    Direct,
}

/// Heartbeat ingestion benchmark (see the module docs).
#[derive(Parser, Debug)]
struct Args {
    /// Simulated agents (and enrolled nodes).
    #[arg(long, default_value_t = 10_000)]
    nodes: usize,
    /// Heartbeat interval of each agent (ms).
    #[arg(long, default_value_t = 10_000)]
    interval_ms: u64,
    /// Measurement length (s).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// How heartbeats reach the batcher.
    #[arg(long, value_enum, default_value_t = Via::Grpc)]
    via: Via,
    /// mTLS connections (grpc), each its own node identity.
    #[arg(long, default_value_t = 200)]
    connections: usize,
    /// Send as fast as possible instead of at the agents' interval.
    #[arg(long)]
    saturate: bool,
    /// Heartbeats in flight in --saturate mode.
    #[arg(long, default_value_t = 2000)]
    concurrency: usize,
    /// Direct only: queue without waiting for the commit.
    #[arg(long)]
    no_wait: bool,
    /// Batch size limit (default: limits::HEARTBEAT_BATCH_MAX).
    #[arg(long)]
    batch_max: Option<usize>,
    /// Flush interval (ms; default: limits::HEARTBEAT_FLUSH_INTERVAL).
    #[arg(long)]
    flush_ms: Option<u64>,
    /// An empty database to use instead of a private rap_pgtest server
    /// (which runs with fsync=off).
    #[arg(long)]
    database_url: Option<String>,
    /// Per-node burst (default: limits::HEARTBEAT_NODE_BURST).
    #[arg(long)]
    node_burst: Option<u32>,
    /// Per-node refill, one heartbeat per this many ms (default:
    /// limits::HEARTBEAT_NODE_REFILL).
    #[arg(long)]
    node_refill_ms: Option<u64>,
    /// Measure the other nodes' latency quiet, then while one node floods
    /// (see the module docs; grpc only).
    #[arg(long)]
    flood: bool,
}

fn node_name(index: usize) -> String {
    format!("n{index:05}")
}

/// The heartbeat of node `index`: 4 capabilities, 3 services (one without
/// an instance row), 3 accepted versions.
fn request(index: usize, sent_at: i64) -> HeartbeatRequest {
    let capability = |name: &str, detail: &str| Capability {
        name: name.into(),
        detail: detail.into(),
    };
    let service = |name: &str| ServiceStatus {
        service: name.into(),
        state: "running".into(),
        version: "1.4.2".into(),
        detail: String::new(),
    };
    let node = node_name(index);
    HeartbeatRequest {
        cluster_id: CLUSTER.into(),
        node_id: node.clone(),
        health: NodeHealth::Healthy as i32,
        capabilities: vec![
            capability("wireguard", "1.0.20210914"),
            capability("nftables", "1.0.6"),
            capability("ipv6", ""),
            capability("quic", "v1"),
        ],
        services: vec![service("web"), service("dns"), service("metrics")],
        accepted_versions: ["node", "peers", "role"]
            .iter()
            .map(|scope| AcceptedVersion {
                scope: format!("{scope}/{node}"),
                version: 42,
                authority_term: 1,
            })
            .collect(),
        agent_version: "0.1.0".into(),
        sent_at_unix_ms: sent_at,
        degraded_mode: false,
    }
}

/// splitmix64: a small deterministic generator for offsets and jitter.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next() % bound }
    }
}

/// Where a simulated agent sends.
#[derive(Clone)]
enum Sink {
    Grpc(Arc<Vec<AgentServiceClient<Channel>>>),
    Direct { heartbeats: Heartbeats, wait: bool },
}

/// Sends the heartbeat of agent `index`; the node is the agent itself
/// (direct) or the identity of its connection (grpc).
async fn send(sink: &Sink, index: usize) -> Result<(), String> {
    let now = rap_controlplane::heartbeats::now_unix_ms();
    match sink {
        Sink::Grpc(clients) => {
            let connection = index % clients.len();
            let mut client = clients[connection].clone();
            client
                .heartbeat(request(connection, now))
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}", s.code()))
        }
        Sink::Direct { heartbeats, wait } => {
            let heartbeat =
                Heartbeat::from_request(&request(index, now), now).map_err(|e| e.to_string())?;
            if *wait {
                heartbeats
                    .submit_and_wait(heartbeat)
                    .await
                    .map_err(|e| e.code().to_string())
            } else {
                loop {
                    match heartbeats.submit(heartbeat.clone()) {
                        Ok(()) => return Ok(()),
                        Err(e) if rap_controlplane::heartbeats::is_overloaded(&e) => {
                            tokio::time::sleep(FULL_BACKOFF).await;
                        }
                        Err(e) => return Err(e.code().to_string()),
                    }
                }
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: Vec<String>,
}

/// One simulated agent: a heartbeat every interval (±jitter) from a
/// random offset until `end`.
async fn paced_agent(
    sink: Sink,
    index: usize,
    interval: Duration,
    start: tokio::time::Instant,
    end: tokio::time::Instant,
    seed: u64,
) -> Tally {
    let mut rng = Rng(seed ^ (index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let jitter_ms = interval_ms * JITTER_PERCENT / 100;
    let mut next = start + Duration::from_millis(rng.below(interval_ms));
    let mut tally = Tally::default();
    while next < end {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        match send(&sink, index).await {
            Ok(()) => tally.latencies_us.push(micros(sent.elapsed())),
            Err(e) => tally.errors.push(e),
        }
        let jitter = rng.below(2 * jitter_ms + 1);
        next += Duration::from_millis(interval_ms - jitter_ms + jitter);
    }
    tally
}

/// One saturating worker: back-to-back heartbeats of agents `first`,
/// `first + stride`, ... until `end`.
async fn saturating_worker(
    sink: Sink,
    first: usize,
    stride: usize,
    agents: usize,
    end: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut index = first;
    while Instant::now() < end {
        let sent = Instant::now();
        match send(&sink, index % agents).await {
            Ok(()) => tally.latencies_us.push(micros(sent.elapsed())),
            Err(e) => tally.errors.push(e),
        }
        index += stride;
    }
    tally
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
}

/// One cluster, `nodes` members with identities and two service instances
/// each; `real` holds (serial, public key) of the first nodes (the gRPC
/// identities).
async fn populate(
    pool: &PgPool,
    keys: &ClusterKeys,
    nodes: usize,
    real: &[IdentityRow],
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO clusters (cluster_id, name, ca_fingerprint, ca_cert_pem, signing_key_id,
                               trust_root)
         VALUES ($1, $1, $2, $3, $4, $5)",
    )
    .bind(CLUSTER)
    .bind(keys.ca_fingerprint())
    .bind(keys.ca_cert_pem())
    .bind(keys.signing_key_id_hex())
    .bind(keys.trust_root_bytes())
    .execute(pool)
    .await?;
    let count = i64::try_from(nodes)?;
    for sql in [
        "INSERT INTO nodes (node_id) SELECT 'n' || lpad(i::text, 5, '0')
           FROM generate_series(0, $1 - 1) AS i",
        "INSERT INTO cluster_memberships (cluster_id, node_id)
         SELECT 'bench', 'n' || lpad(i::text, 5, '0') FROM generate_series(0, $1 - 1) AS i",
        // Placeholder identities: md5-derived serials and keys.
        "INSERT INTO node_identities (cluster_id, node_id, public_key, fingerprint,
              certificate_serial, certificate_not_before, certificate_not_after,
              certificate_pem)
         SELECT 'bench', 'n' || lpad(i::text, 5, '0'),
                decode(md5('k' || i) || md5('K' || i), 'hex'),
                md5('f' || i) || md5('F' || i), md5('s' || i),
                now() - interval '1 hour', now() + interval '1 day', 'placeholder'
           FROM generate_series(0, $1 - 1) AS i",
        "INSERT INTO node_service_instances (cluster_id, node_id, service, desired_state)
         SELECT 'bench', 'n' || lpad(i::text, 5, '0'), s, 'enabled'
           FROM generate_series(0, $1 - 1) AS i, unnest(ARRAY['web', 'dns']) AS s",
    ] {
        sqlx::query(sql).bind(count).execute(pool).await?;
    }
    let names: Vec<String> = (0..real.len()).map(node_name).collect();
    let serials: Vec<&str> = real.iter().map(|(s, _)| s.as_str()).collect();
    let keys: Vec<String> = real.iter().map(|(_, k)| hex::encode(k)).collect();
    sqlx::query(
        "UPDATE node_identities AS i SET certificate_serial = t.s,
                public_key = decode(t.k, 'hex')
           FROM UNNEST($1::text[], $2::text[], $3::text[]) AS t(n, s, k)
          WHERE i.cluster_id = 'bench' AND i.node_id = t.n",
    )
    .bind(&names)
    .bind(&serials)
    .bind(&keys)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}

/// A client's certificate chain and key (PEM).
type ClientTls = (String, String);
/// A node identity's certificate serial and raw public key.
type IdentityRow = (String, Vec<u8>);

/// Issues `count` node certificates (a key generated "on the node" each)
/// and returns the client TLS material and (serial, public key) pairs.
fn identities(
    keys: &ClusterKeys,
    count: usize,
) -> anyhow::Result<(Vec<ClientTls>, Vec<IdentityRow>)> {
    let mut tls = Vec::with_capacity(count);
    let mut rows = Vec::with_capacity(count);
    for index in 0..count {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let public: [u8; 32] = key
            .public_key_raw()
            .try_into()
            .map_err(|_| anyhow::anyhow!("ed25519 key is not 32 bytes"))?;
        let identity = rap_core::identity::PeerIdentity::node(
            keys.cluster_id().clone(),
            NodeId::new(node_name(index))?,
        )?;
        let issued = keys.issue_certificate(&identity, &public, NODE_CERT_VALIDITY_DEFAULT, &[])?;
        let leaf = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .next()
            .ok_or_else(|| anyhow::anyhow!("empty chain"))??;
        let serial = rap_controlplane::api::agent::certificate_serial(leaf.as_ref())?;
        rows.push((serial, public.to_vec()));
        tls.push((issued.chain_pem, key.serialize_pem()));
    }
    Ok((tls, rows))
}

/// One quiet node: a heartbeat every interval (±jitter) from a random
/// offset until `end`; (sent during the flood, latency or refusal code).
async fn quiet_node(
    mut client: AgentServiceClient<Channel>,
    index: usize,
    interval: Duration,
    (start, flood_start, end): (
        tokio::time::Instant,
        tokio::time::Instant,
        tokio::time::Instant,
    ),
    seed: u64,
) -> Vec<(bool, Result<u32, String>)> {
    let mut rng = Rng(seed ^ (index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let jitter_ms = interval_ms * JITTER_PERCENT / 100;
    let mut next = start + Duration::from_millis(rng.below(interval_ms));
    let mut results = Vec::new();
    while next < end {
        tokio::time::sleep_until(next).await;
        let during = tokio::time::Instant::now() >= flood_start;
        let sent = Instant::now();
        let now = rap_controlplane::heartbeats::now_unix_ms();
        let result = client
            .heartbeat(request(index, now))
            .await
            .map(|_| micros(sent.elapsed()))
            .map_err(|s| {
                rap_core::codes::error_detail(&s)
                    .map(|d| d.code)
                    .unwrap_or_else(|| format!("{:?}", s.code()))
            });
        results.push((during, result));
        let jitter = rng.below(2 * jitter_ms + 1);
        next += Duration::from_millis(interval_ms - jitter_ms + jitter);
    }
    results
}

/// `--flood`: the quiet nodes for 2 × `--seconds`, the last identity
/// flooding during the second half from its own thread and runtime.
async fn flood_run(
    args: &Args,
    clients: &[AgentServiceClient<Channel>],
    flooder: Endpoint,
    heartbeats: &Heartbeats,
) -> anyhow::Result<()> {
    let seconds = Duration::from_secs(args.seconds);
    let interval = Duration::from_millis(args.interval_ms);
    println!(
        "heartbeat flood bench: {} quiet nodes (each its own mTLS identity) at 1 per {} ms \
         ±{JITTER_PERCENT} %; {} s quiet, then {} s while one node floods with {} in flight; \
         per-node limit: burst {}, one per {} ms",
        clients.len(),
        args.interval_ms,
        args.seconds,
        args.seconds,
        args.concurrency,
        args.node_burst.unwrap_or(HEARTBEAT_NODE_BURST),
        args.node_refill_ms
            .unwrap_or(u64::try_from(HEARTBEAT_NODE_REFILL.as_millis()).unwrap_or(u64::MAX)),
    );
    let seed = getrandom::u64().map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    let start = tokio::time::Instant::now();
    let flood_start = start + seconds;
    let end = flood_start + seconds;
    let quiet: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(index, client)| {
            tokio::spawn(quiet_node(
                client.clone(),
                index,
                interval,
                (start, flood_start, end),
                seed,
            ))
        })
        .collect();
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let concurrency = args.concurrency.max(1);
    let flood_node = clients.len();
    let flood = {
        let flooding = Arc::clone(&flooding);
        let wait = seconds;
        std::thread::spawn(move || -> anyhow::Result<(u64, u64, u64)> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let client = AgentServiceClient::new(flooder.connect().await?);
                tokio::time::sleep(wait).await;
                let calls = (0..concurrency).map(|_| {
                    let mut client = client.clone();
                    let flooding = Arc::clone(&flooding);
                    async move {
                        let (mut ok, mut limited, mut other) = (0u64, 0u64, 0u64);
                        while flooding.load(Ordering::Relaxed) {
                            let now = rap_controlplane::heartbeats::now_unix_ms();
                            match client.heartbeat(request(flood_node, now)).await {
                                Ok(_) => ok += 1,
                                Err(s) => {
                                    let code = rap_core::codes::error_detail(&s)
                                        .map(|d| d.code)
                                        .unwrap_or_default();
                                    if code == "RATE_LIMITED" {
                                        limited += 1;
                                    } else {
                                        other += 1;
                                    }
                                }
                            }
                        }
                        (ok, limited, other)
                    }
                });
                let tallies = futures::future::join_all(calls).await;
                Ok(tallies
                    .into_iter()
                    .fold((0, 0, 0), |acc, t| (acc.0 + t.0, acc.1 + t.1, acc.2 + t.2)))
            })
        })
    };
    let mut phases: [(Vec<u32>, std::collections::BTreeMap<String, u64>); 2] = Default::default();
    for task in quiet {
        for (during, result) in task.await? {
            let phase = &mut phases[usize::from(during)];
            match result {
                Ok(us) => phase.0.push(us),
                Err(code) => *phase.1.entry(code).or_default() += 1,
            }
        }
    }
    flooding.store(false, Ordering::Relaxed);
    let (ok, limited, other) = flood
        .join()
        .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
    for (name, (latencies, refused)) in ["quiet", "during flood"].iter().zip(phases.iter_mut()) {
        latencies.sort_unstable();
        println!(
            "  other nodes, {name:<12}  p50 {:.1} ms, p99 {:.1} ms ({} heartbeats, refused: {:?})",
            percentile(latencies, 0.50),
            percentile(latencies, 0.99),
            latencies.len(),
            refused
        );
    }
    let stats = heartbeats.stats();
    println!(
        "  flooding node: {ok} accepted, {limited} RATE_LIMITED, {other} other refusals; \
         queue-full refusals: {}",
        stats.refused_queue_full
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(args.interval_ms >= 1, "--interval-ms must be at least 1");
    let connections = args.connections.clamp(1, args.nodes);
    if args.no_wait && args.via == Via::Grpc {
        anyhow::bail!("--no-wait applies to --via direct only (the handler always waits)");
    }
    if args.flood && (args.via != Via::Grpc || args.saturate) {
        anyhow::bail!("--flood needs --via grpc and no --saturate");
    }
    // --flood: one node per connection, plus the flooding node.
    let (nodes, connections) = if args.flood {
        (connections + 1, connections + 1)
    } else {
        (args.nodes, connections)
    };

    let (_database, url, postgres) = match &args.database_url {
        Some(url) => (None, url.clone(), "given --database-url"),
        None => {
            let database = rap_testkit::pg::fresh_database().await?;
            let url = database.url.clone();
            (
                Some(database),
                url,
                "rap_pgtest (fsync=off, synchronous_commit=off)",
            )
        }
    };
    let pool = rap_controlplane::db::connect(&url, DB_POOL_CONNECTIONS).await?;
    rap_controlplane::db::migrate(&pool).await?;

    let keys_dir = tempfile::tempdir()?;
    let cluster_id = ClusterId::new(CLUSTER)?;
    let keys = ClusterKeys::create(keys_dir.path(), &cluster_id)?;
    let started = Instant::now();
    let (client_tls, real) = if args.via == Via::Grpc {
        identities(&keys, connections)?
    } else {
        (Vec::new(), Vec::new())
    };
    populate(&pool, &keys, nodes, &real).await?;
    eprintln!(
        "setup: {} nodes, {} certificates in {:.1} s",
        nodes,
        real.len(),
        started.elapsed().as_secs_f64()
    );

    let config = HeartbeatsConfig {
        batch_max: args.batch_max.unwrap_or(HEARTBEAT_BATCH_MAX),
        flush_interval: args
            .flush_ms
            .map(Duration::from_millis)
            .unwrap_or(HEARTBEAT_FLUSH_INTERVAL),
        prune_interval: None,
        node_limits: NodeLimits {
            burst: args.node_burst.unwrap_or(HEARTBEAT_NODE_BURST),
            refill: args
                .node_refill_ms
                .map(Duration::from_millis)
                .unwrap_or(HEARTBEAT_NODE_REFILL),
            ..NodeLimits::default()
        },
        ..HeartbeatsConfig::default()
    };
    let heartbeats = Heartbeats::start_with(pool.clone(), config.clone());

    let (sink, server) = match args.via {
        Via::Direct => (
            Sink::Direct {
                heartbeats: heartbeats.clone(),
                wait: !args.no_wait,
            },
            None,
        ),
        Via::Grpc => {
            let platform = PlatformKeys::create_or_load(keys_dir.path(), &[])?;
            let tls = Arc::new(ControlPlaneTls::new(&platform)?);
            tls.add_cluster(&keys)?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let api = AgentApi::new(pool.clone(), heartbeats.clone());
            let router = tonic::transport::Server::builder().add_service(api.into_service());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(serve_tls(listener, tls, router, async {
                let _ = stopped.await;
            }));
            let started = Instant::now();
            let ca = keys.ca_cert_pem().to_string();
            let server_name = keys.server_name();
            use futures::StreamExt;
            let mut client_tls = client_tls;
            let flooder = if args.flood {
                let (chain, key) = client_tls
                    .pop()
                    .ok_or_else(|| anyhow::anyhow!("no flooding identity"))?;
                let config = client_tls_config(&ca, &server_name, Some((&chain, &key)));
                Some(Endpoint::from_shared(format!("https://{addr}"))?.tls_config(config)?)
            } else {
                None
            };
            let clients: Vec<anyhow::Result<AgentServiceClient<Channel>>> =
                futures::stream::iter(client_tls.into_iter().map(|(chain, key)| {
                    let config = client_tls_config(&ca, &server_name, Some((&chain, &key)));
                    async move {
                        let channel = Endpoint::from_shared(format!("https://{addr}"))?
                            .tls_config(config)?
                            .connect()
                            .await?;
                        Ok(AgentServiceClient::new(channel))
                    }
                }))
                .buffered(CONNECT_PARALLELISM)
                .collect()
                .await;
            let clients = clients.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
            eprintln!(
                "connected {} mTLS clients in {:.1} s",
                clients.len(),
                started.elapsed().as_secs_f64()
            );
            if let Some(flooder) = flooder {
                let result = flood_run(&args, &clients, flooder, &heartbeats).await;
                heartbeats.shutdown().await;
                let _ = stop.send(());
                server.abort();
                return result;
            }
            (Sink::Grpc(Arc::new(clients)), Some((stop, server)))
        }
    };

    let seconds = Duration::from_secs(args.seconds);
    let interval = Duration::from_millis(args.interval_ms);
    let mode = if args.saturate {
        format!("saturate, {} in flight", args.concurrency)
    } else {
        format!(
            "paced, 1 per {} ms ±{JITTER_PERCENT} % per agent = {:.0}/s target",
            args.interval_ms,
            args.nodes as f64 * 1000.0 / args.interval_ms as f64
        )
    };
    println!(
        "heartbeat bench: via {:?}{}, {} agents, {}, {} s; batch_max {}, flush {} ms; \
         PostgreSQL: {postgres}",
        args.via,
        if args.via == Via::Grpc {
            format!(" ({connections} mTLS connections = node identities)")
        } else if args.no_wait {
            " (submit, no wait)".to_string()
        } else {
            " (submit_and_wait)".to_string()
        },
        args.nodes,
        mode,
        args.seconds,
        config.batch_max,
        config.flush_interval.as_millis(),
    );

    // Sample the batcher while the load runs.
    let sampled_batch_us = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let max_queue = Arc::new(AtomicU64::new(0));
    let sampler = {
        let heartbeats = heartbeats.clone();
        let (sampled_batch_us, samples, max_queue) = (
            Arc::clone(&sampled_batch_us),
            Arc::clone(&samples),
            Arc::clone(&max_queue),
        );
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SAMPLE_EVERY);
            loop {
                ticks.tick().await;
                let stats = heartbeats.stats();
                sampled_batch_us.fetch_add(stats.last_batch_micros, Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
                max_queue.fetch_max(stats.queue_depth, Ordering::Relaxed);
            }
        })
    };

    let before: HeartbeatStats = heartbeats.stats();
    let start = Instant::now();
    let seed = getrandom::u64().map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    let tasks: Vec<tokio::task::JoinHandle<Tally>> = if args.saturate {
        let workers = args.concurrency.max(1);
        let end = start + seconds;
        (0..workers)
            .map(|w| tokio::spawn(saturating_worker(sink.clone(), w, workers, args.nodes, end)))
            .collect()
    } else {
        let start = tokio::time::Instant::from_std(start);
        let end = start + seconds;
        (0..args.nodes)
            .map(|index| tokio::spawn(paced_agent(sink.clone(), index, interval, start, end, seed)))
            .collect()
    };
    let mut latencies = Vec::new();
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    for task in tasks {
        let tally = task.await?;
        latencies.extend(tally.latencies_us);
        for e in tally.errors {
            *errors.entry(e).or_default() += 1;
        }
    }
    let elapsed = start.elapsed();
    let at_end = heartbeats.stats();
    sampler.abort();
    heartbeats.shutdown().await;
    let after = heartbeats.stats();
    if let Some((stop, server)) = server {
        let _ = stop.send(());
        server.abort();
    }

    latencies.sort_unstable();
    let secs = elapsed.as_secs_f64();
    let ok = latencies.len() as f64;
    let batches = (at_end.batches - before.batches) as f64;
    let rows = (at_end.rows - before.rows) as f64;
    println!(
        "  acknowledged:   {:.0} heartbeats in {secs:.1} s = {:.0}/s",
        ok,
        ok / secs
    );
    println!(
        "  committed:      {:.0} rows in the window = {:.0}/s ({} more written at shutdown)",
        rows,
        rows / secs,
        after.rows - at_end.rows
    );
    if !args.no_wait {
        println!(
            "  latency (send to commit ack): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0)
        );
    } else {
        println!(
            "  latency (send to queued): p50 {:.3} ms, p99 {:.3} ms",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99)
        );
    }
    let sample_count = samples.load(Ordering::Relaxed).max(1);
    println!(
        "  batches:        {:.1}/s, mean {:.0} rows/batch, mean write {:.1} ms (sampled), \
         max queue {}",
        batches / secs,
        if batches > 0.0 { rows / batches } else { 0.0 },
        sampled_batch_us.load(Ordering::Relaxed) as f64 / sample_count as f64 / 1000.0,
        max_queue.load(Ordering::Relaxed)
    );
    println!(
        "  refused (queue full): {}, failed rows: {}, errors: {:?}",
        after.refused_queue_full, after.failed_rows, errors
    );
    Ok(())
}
