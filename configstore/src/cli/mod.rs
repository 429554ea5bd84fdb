//! `rap-configstore`'s command line, whole: `src/main.rs` only calls
//! [`main`], so end-to-end tests elsewhere (the node agent's) run exactly
//! the storage node that ships, as a process they can `kill -9`.
//!
//! `rap-configstore`: run a storage/config node, or talk to one.
//!
//! `serve` runs the node. `dev-ca` makes a development CA with storage
//! node and operator certificates (and renews them). `bootstrap`,
//! `status`, `fence`, `add-voter`, `remove-voter`, `promote` and `rejoin`
//! are small operator clients of the nodes' `AuthorityService`; they
//! present an operator (or control plane) certificate and pin the storage
//! node they dial.

use crate::config::{CONFIG_BYTES_MAX, Config, LogFormat};
use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use rap_authority::client::authority_client;
use rap_authority::client::orders;
use rap_authority::network::NetworkConfig;
use rap_core::tls::live::LiveIdentity;
use rap_core::tls::pin::{ExpectedPeer, PeerTls};
use rap_core::tls::{ClusterCa, TlsFiles};
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::pb;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

mod admin;

/// `println!` that does not panic when stdout is closed (`... | head`).
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// RAP storage/config node: hosts its cluster's authority group.
#[derive(Parser, Debug)]
#[command(name = "rap-configstore", version = rap_core::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node (Raft + AuthorityService on gRPC, metrics/health on HTTP).
    Serve(Box<ServeArgs>),
    /// Enrol this storage node through the control plane: its key is made
    /// here and never leaves it; the certificate it gets is renewed by
    /// `serve` before it expires.
    Join(JoinArgs),
    /// Development without a control plane: create a CA and certificates
    /// for storage nodes and operators, or renew them (`--renew`).
    DevCa(DevCaArgs),
    /// Initialize a new group on running nodes (send to one of the voters).
    Bootstrap(BootstrapArgs),
    /// Show a node's view of its group.
    Status(ClientArgs),
    /// Acquire a fencing token (for tests and benchmarks).
    Fence(FenceArgs),
    /// Add a voter (learner first, then promoted).
    AddVoter(AddVoterArgs),
    /// Remove a voter.
    RemoveVoter(RemoveVoterArgs),
    /// Choose voters across failure domains and report the tolerance.
    Place(PlaceArgs),
    /// Loss-of-quorum recovery: re-form the group from the survivors at the
    /// next authority term (signed with the cluster's signing key).
    Promote(PromoteArgs),
    /// Bring an old (fenced) member back: wipe its Raft state and add it to
    /// the current group as a learner, then a voter.
    Rejoin(RejoinArgs),
    #[command(flatten)]
    Docs(rap_core::cli_docs::DocsCommand),
}

#[derive(Args, Debug)]
struct PlaceArgs {
    /// A candidate: <node-id>=<host:port>,region=..,zone=..,host=.. (repeatable).
    #[arg(long = "candidate", required = true)]
    candidates: Vec<String>,
    /// How many voters to choose (3 or 5).
    #[arg(long, default_value_t = 3)]
    voters: usize,
}

#[derive(Args, Debug)]
struct PromoteArgs {
    /// The cluster.
    #[arg(long, env = "RAP_CLUSTER_ID")]
    cluster: String,
    /// A surviving voter: <node-id>=<host:port> (repeatable; every survivor).
    #[arg(long = "survivor", required = true)]
    survivors: Vec<String>,
    /// The cluster's snapshot-signing key file (signs the order).
    #[arg(long)]
    key: PathBuf,
    /// Directory with ca.pem, node.pem, node.key for mTLS.
    #[arg(long, env = "RAP_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Development only: no TLS.
    #[arg(long, env = "RAP_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
}

#[derive(Args, Debug)]
struct RejoinArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The old member: <node-id>=<host:port>[,region=..][,zone=..][,host=..]
    #[arg(long)]
    node: String,
    /// The cluster's snapshot-signing key file (signs the order).
    #[arg(long)]
    key: PathBuf,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML config file; flags and RAP_* environment variables override it.
    #[arg(long, env = "RAP_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id.
    #[arg(long, env = "RAP_NODE_ID")]
    node_id: Option<String>,
    /// The cluster this node serves.
    #[arg(long, env = "RAP_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// gRPC listen address (RaftService + AuthorityService).
    #[arg(long, env = "RAP_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address other nodes dial (default: --listen).
    #[arg(long, env = "RAP_ADVERTISE")]
    advertise: Option<String>,
    /// HTTP listen address for /metrics, /healthz, /readyz.
    #[arg(long, env = "RAP_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Directory of the Raft log and state machine.
    #[arg(long, env = "RAP_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Failure-domain label: region.
    #[arg(long, env = "RAP_REGION")]
    region: Option<String>,
    /// Failure-domain label: zone.
    #[arg(long, env = "RAP_ZONE")]
    zone: Option<String>,
    /// Failure-domain label: host.
    #[arg(long, env = "RAP_HOST")]
    host: Option<String>,
    /// Directory with ca.pem, node.pem, node.key (as `dev-ca` writes them).
    #[arg(long, env = "RAP_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Development only: no TLS.
    #[arg(long, env = "RAP_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// With --insecure-plaintext: allow a non-loopback --listen address
    /// (anyone who reaches it can call every RPC).
    #[arg(long, env = "RAP_INSECURE_PLAINTEXT_ALLOW_NON_LOOPBACK")]
    insecure_plaintext_allow_non_loopback: bool,
    /// Leader heartbeat interval in milliseconds.
    #[arg(long, env = "RAP_HEARTBEAT_MS")]
    heartbeat_ms: Option<u64>,
    /// Minimum election timeout in milliseconds (> 3 × heartbeat).
    #[arg(long, env = "RAP_ELECTION_TIMEOUT_MIN_MS")]
    election_timeout_min_ms: Option<u64>,
    /// Maximum election timeout in milliseconds.
    #[arg(long, env = "RAP_ELECTION_TIMEOUT_MAX_MS")]
    election_timeout_max_ms: Option<u64>,
    /// Log format: text, or json (one object per line, with the
    /// cluster and node ids).
    #[arg(long, env = "RAP_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Run as a cache replica (no Raft) filled from this voter:
    /// <node-id>=<host:port> (repeatable; with --cache-trust-root).
    #[arg(long = "cache-voter", env = "RAP_CACHE_VOTERS", value_delimiter = ',')]
    cache_voters: Vec<String>,
    /// A cache replica's copy of the cluster's genesis trust root.
    #[arg(long, env = "RAP_CACHE_TRUST_ROOT")]
    cache_trust_root: Option<PathBuf>,
    /// Fault-injection tests only: dial peer <node-id> at <host:port>
    /// (a proxy of that link) instead of its member address (repeatable).
    #[arg(long = "dial-via", value_name = "NODE=HOST:PORT")]
    dial_via: Vec<String>,
    /// Debug builds only, the teeth of scripts/nemesis.sh: break a rule
    /// on purpose (`minority-grants`: a leader that lost its quorum keeps
    /// granting fences). Release builds have no such flag.
    #[cfg(debug_assertions)]
    #[arg(long, hide = true)]
    nemesis_mutant: Option<String>,
}

#[derive(Args, Debug)]
struct JoinArgs {
    /// The control plane's gRPC address (host:port), from the join command.
    #[arg(long, env = "RAP_CONTROL_PLANE")]
    control_plane: String,
    /// The cluster.
    #[arg(long, env = "RAP_CLUSTER_ID")]
    cluster: String,
    /// This storage node's id (the storage token was made for it).
    #[arg(long, env = "RAP_NODE_ID")]
    node_id: String,
    /// The single-use storage token (rapjt.<id>.<secret>) from
    /// `rapctl token create --storage-node <id>`.
    #[arg(long, env = "RAP_JOIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The cluster CA fingerprint from the join command (64 hex).
    #[arg(long)]
    ca_fingerprint: String,
    /// Where to keep the key and certificates (ca.pem, node.pem, node.key):
    /// the directory `serve --tls-dir` reads.
    #[arg(long, env = "RAP_TLS_DIR")]
    tls_dir: PathBuf,
    /// The address other nodes and the control plane dial (host:port):
    /// its host goes into the certificate.
    #[arg(long, env = "RAP_ADVERTISE")]
    advertise: String,
    /// Further DNS names or IP addresses to put in the certificate
    /// (repeatable).
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// How long to wait for an operator's approval, in seconds.
    #[arg(long, default_value_t = crate::enroll::WAIT_DEFAULT.as_secs())]
    wait_s: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct DevCaArgs {
    /// The cluster (for a new CA; `--renew` reads it from the CA).
    #[arg(long)]
    cluster: Option<String>,
    /// Directory for the CA (ca.pem, ca.key) and one sub-directory per
    /// node or operator.
    #[arg(long)]
    dir: PathBuf,
    /// A storage node to issue a certificate for: <node-id> or
    /// <node-id>=<name>[,<name>...] with the DNS names or IP addresses
    /// others dial it by (localhost and 127.0.0.1 are always included).
    /// Repeatable.
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// An operator client certificate to issue (for the client commands'
    /// --tls-dir). Repeatable.
    #[arg(long = "operator")]
    operators: Vec<String>,
    /// Certificate lifetime in seconds (default 24 h).
    #[arg(long, default_value_t = rap_core::tls::NODE_CERT_VALIDITY_DEFAULT.as_secs())]
    validity_s: u64,
    /// Reissue the named certificates from the existing CA in --dir
    /// (running nodes reload them without a restart).
    #[arg(long)]
    renew: bool,
}

#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// A node's gRPC address (host:port).
    #[arg(long, env = "RAP_ENDPOINT")]
    endpoint: String,
    /// The storage node expected at --endpoint; its certificate must name
    /// it (default: any storage node of the cluster).
    #[arg(long, env = "RAP_ENDPOINT_NODE")]
    endpoint_node: Option<String>,
    /// The cluster.
    #[arg(long, env = "RAP_CLUSTER_ID")]
    cluster: String,
    /// Directory with ca.pem, node.pem, node.key of an operator (or the
    /// control plane) for mTLS.
    #[arg(long, env = "RAP_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Development only: no TLS.
    #[arg(long, env = "RAP_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct BootstrapArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// A voter: <node-id>=<host:port>[,region=..][,zone=..][,host=..] (repeatable).
    #[arg(long = "voter", required = true)]
    voters: Vec<String>,
    /// The cluster's genesis trust root (`rapctl snapshot keygen` writes it).
    #[arg(long)]
    trust_root: PathBuf,
    /// Development only: permit fewer than 3 voters.
    #[arg(long)]
    allow_single_voter: bool,
}

#[derive(Args, Debug)]
struct FenceArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Why the fence is taken.
    #[arg(long, default_value = "manual")]
    purpose: String,
    /// The authority term you expect (default: ask the node).
    #[arg(long)]
    expected_term: Option<u64>,
}

#[derive(Args, Debug)]
struct AddVoterArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// <node-id>=<host:port>[,region=..][,zone=..][,host=..]
    #[arg(long)]
    voter: String,
}

#[derive(Args, Debug)]
struct RemoveVoterArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The voter's node id.
    #[arg(long)]
    node: String,
}

/// Parses the command line, runs the command, and returns its exit code.
pub fn main() -> ExitCode {
    rap_core::process::run_main(run(Cli::parse()))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Join(args) => join(args).await,
        Command::DevCa(args) => dev_ca(args),
        Command::Bootstrap(args) => admin::bootstrap(args).await,
        Command::Status(args) => admin::status(args).await,
        Command::Fence(args) => admin::fence(args).await,
        Command::AddVoter(args) => admin::add_voter(args).await,
        Command::RemoveVoter(args) => admin::remove_voter(args).await,
        Command::Place(args) => admin::place(args),
        Command::Promote(args) => admin::promote(args).await,
        Command::Rejoin(args) => admin::rejoin(args).await,
        Command::Docs(docs) => Ok(docs.run(<Cli as clap::CommandFactory>::command())?),
    }
}

fn load_config(args: &ServeArgs) -> Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            let text = rap_core::files::read_config_file(path, CONFIG_BYTES_MAX)?;
            Config::from_toml(&text).with_context(|| format!("parse {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(v) = &args.node_id {
        config.node_id = v.clone();
    }
    if let Some(v) = &args.cluster_id {
        config.cluster_id = v.clone();
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = &args.advertise {
        config.advertise = Some(v.clone());
    }
    if let Some(v) = args.http_listen {
        config.http_listen = v;
    }
    if let Some(v) = &args.data_dir {
        config.data_dir = v.clone();
    }
    if let Some(v) = &args.region {
        config.labels.region = v.clone();
    }
    if let Some(v) = &args.zone {
        config.labels.zone = v.clone();
    }
    if let Some(v) = &args.host {
        config.labels.host = v.clone();
    }
    if let Some(dir) = &args.tls_dir {
        config.tls = Some(crate::config::Tls {
            ca: dir.join("ca.pem"),
            cert: dir.join("node.pem"),
            key: dir.join("node.key"),
        });
    }
    if args.insecure_plaintext {
        config.insecure_plaintext = true;
    }
    if args.insecure_plaintext_allow_non_loopback {
        config.insecure_plaintext_allow_non_loopback = true;
    }
    if let Some(v) = args.heartbeat_ms {
        config.timing.heartbeat_ms = v;
    }
    if let Some(v) = args.election_timeout_min_ms {
        config.timing.election_timeout_min_ms = v;
    }
    if let Some(v) = args.election_timeout_max_ms {
        config.timing.election_timeout_max_ms = v;
    }
    if let Some(v) = args.log_format {
        config.log_format = v;
    }
    if !args.dial_via.is_empty() {
        config.dial_via = args.dial_via.clone();
    }
    if !args.cache_voters.is_empty() || args.cache_trust_root.is_some() {
        let cache = config.cache.get_or_insert_with(Default::default);
        if !args.cache_voters.is_empty() {
            cache.voters = args.cache_voters.clone();
        }
        if let Some(root) = &args.cache_trust_root {
            cache.trust_root = root.clone();
        }
    }
    config.validate()?;
    Ok(config)
}

/// The storage node's default log filter (`RUST_LOG` overrides it).
const LOG_FILTER_DEFAULT: &str = "info,openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off";

async fn serve(args: ServeArgs) -> Result<()> {
    let config = load_config(&args)?;
    rap_core::logging::init(
        config.log_format,
        LOG_FILTER_DEFAULT,
        &[
            ("cluster_id", config.cluster_id.as_str()),
            ("node_id", config.node_id.as_str()),
        ],
    );
    #[cfg(debug_assertions)]
    match args.nemesis_mutant.as_deref() {
        None => {}
        Some("minority-grants") => {
            tracing::warn!(
                node_id = %config.node_id,
                cluster_id = %config.cluster_id,
                "MUTANT minority-grants: this node grants fences without its quorum (fault-injection teeth; never in production)"
            );
            rap_authority::node::mutant::enable_minority_grants_mutant();
        }
        Some(other) => anyhow::bail!("--nemesis-mutant {other:?}: minority-grants"),
    }
    crate::server::serve(config, rap_core::process::shutdown_signal()).await
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
fn host_of(address: &str) -> Result<String> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("{address:?} is not host:port"))?;
    port.parse::<u16>()
        .with_context(|| format!("{address:?}: bad port"))?;
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string())
}

async fn join(args: JoinArgs) -> Result<()> {
    use crate::enroll::{self, JoinOptions, JoinOutcome};
    let mut server_names = vec![host_of(&args.advertise)?];
    for name in &args.server_names {
        if !server_names.contains(name) {
            server_names.push(name.clone());
        }
    }
    let options = JoinOptions {
        control_plane: args.control_plane.clone(),
        cluster: ClusterId::new(args.cluster.as_str())?,
        node_id: NodeId::new(args.node_id.as_str())?,
        token: args.token.clone(),
        fingerprint: rap_core::tls::ca_pin::CaFingerprint::parse(&args.ca_fingerprint)
            .map_err(|e| anyhow::anyhow!("--ca-fingerprint: {e}"))?,
        tls_dir: args.tls_dir.clone(),
        server_names,
        wait: std::time::Duration::from_secs(args.wait_s),
        poll_interval: enroll::POLL_INTERVAL_DEFAULT,
    };
    match enroll::join(&options).await? {
        JoinOutcome::Enrolled {
            serial,
            valid_for_s,
        } => {
            if args.json {
                println!(
                    "{:#}",
                    serde_json::json!({"status": "enrolled", "cluster_id": args.cluster, "node_id": args.node_id,
                        "certificate_serial": serial, "valid_for_s": valid_for_s, "tls_dir": args.tls_dir})
                );
            } else {
                println!(
                    "enrolled storage node {} of cluster {}: certificate {serial}, valid for {valid_for_s} s (renewed by `serve` before it expires)",
                    args.node_id, args.cluster
                );
                println!(
                    "next: rap-configstore serve --cluster-id {} --node-id {} --tls-dir {} --advertise {} --data-dir <dir>",
                    args.cluster,
                    args.node_id,
                    args.tls_dir.display(),
                    args.advertise
                );
            }
            Ok(())
        }
        JoinOutcome::Pending { join_request_id } => bail!(
            "join request {join_request_id} is still pending: ask an operator to run `rapctl join-request approve {join_request_id}`, then run the same command again"
        ),
    }
}

fn dev_ca(args: DevCaArgs) -> Result<()> {
    rap_core::tls::install_crypto_provider();
    let ca = if args.renew {
        ClusterCa::load(&args.dir).context("load the development CA to renew from")?
    } else {
        let cluster = args
            .cluster
            .as_deref()
            .context("--cluster is required for a new CA (or --renew from an existing one)")?;
        ClusterCa::create(&args.dir, &ClusterId::new(cluster)?)?
    };
    if let Some(cluster) = &args.cluster
        && cluster != ca.cluster_id().as_str()
    {
        bail!(
            "{} holds the CA of cluster {}, not {cluster}",
            args.dir.display(),
            ca.cluster_id()
        );
    }
    let validity = std::time::Duration::from_secs(args.validity_s);
    let mut expires = None;
    for node in &args.nodes {
        let (id, names) = match node.split_once('=') {
            Some((id, names)) => (id, names.split(',').map(str::to_string).collect()),
            None => (node.as_str(), Vec::new()),
        };
        let identity =
            rap_core::identity::PeerIdentity::storage(ca.cluster_id().clone(), NodeId::new(id)?)?;
        let files = ca.issue(&args.dir.join(id), &identity, validity, &names)?;
        expires = Some(files.facts()?.not_after);
        println!("storage {id}: {}", files.cert.display());
    }
    for operator in &args.operators {
        let identity = rap_core::identity::PeerIdentity::operator(
            ca.cluster_id().clone(),
            NodeId::new(operator.as_str())?,
        )?;
        let files = ca.issue(&args.dir.join(operator), &identity, validity, &[])?;
        expires = Some(files.facts()?.not_after);
        println!("operator {operator}: {}", files.cert.display());
    }
    println!("CA: {}", args.dir.join("ca.pem").display());
    if let Some(not_after) = expires {
        let left = not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        println!(
            "WARNING: these development certificates expire in {} s and nothing renews them: run `rap-configstore dev-ca --renew --dir {} --node ... --operator ...` before then (running nodes reload the new files without a restart). Clusters enrolled through a control plane renew by themselves.",
            left.as_secs(),
            args.dir.display()
        );
    }
    Ok(())
}
