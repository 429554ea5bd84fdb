//! The node agent's command line, whole: `src/main.rs` only calls
//! [`main`], so the end-to-end tests (package `rap-node-agent-e2e`) run
//! exactly what ships without this package depending on the control plane.
//!
//! Exit codes: 0 enrolled (now or before), 1 failed, rejected or expired,
//! 2 usage error, 3 still pending when `--wait` ran out (run the same
//! command again to resume), 4 `run` ended because the node was revoked
//! (restarting does not help: join again), 130 interrupted (likewise
//! resumable).

/// `println!` that ignores a closed stdout (`rap-node-agent status | head`
/// must not panic on the broken pipe).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

use crate::enroll::{
    self, Enrolled, Event, JoinOptions, JoinOutcome, POLL_INTERVAL_DEFAULT, parse_duration,
};
use crate::state::IdentityRecord;
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use rap_core::logging::LogFormat;
use rap_core::tls::ca_pin::CaFingerprint;
use rap_proto::ids::ClusterId;
use rap_proto::pb;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

/// Where node-local state lives unless `--state-dir` or
/// `RAP_AGENT_STATE_DIR` says otherwise.
const STATE_DIR_DEFAULT: &str = "/var/lib/rap-node-agent";

/// Exit code: a join request still pending when `--wait` ran out.
const EXIT_PENDING: u8 = 3;
/// Exit code: `run` ended because this node was revoked.
const EXIT_REVOKED: u8 = 4;
/// Exit code: interrupted (SIGINT or SIGTERM).
const EXIT_INTERRUPTED: u8 = 130;

/// The RAP node agent.
#[derive(Parser, Debug)]
#[command(name = "rap-node-agent", version = rap_core::VERSION, about, long_about)]
struct Cli {
    /// Output format: `text` for people, `json` for scripts (progress then
    /// goes to stderr).
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "text"
    )]
    output: Output,

    /// Log format (stderr): text, or json (one object per line, with the
    /// cluster and, once enrolled, the node id).
    #[arg(long, global = true, env = "RAP_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Human-readable lines.
    Text,
    /// One JSON object on stdout.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enroll this host as a node: pin the cluster CA, generate the node
    /// key here, submit a join request with the token, and wait for a
    /// platform admin to approve it. Running it again resumes a pending
    /// request and does nothing once enrolled.
    Join(Box<JoinArgs>),
    /// Keep this node's verified scopes current: read them from the
    /// nearest healthy storage node, verify every envelope, fail over to
    /// the next one on error, and watch for new versions. Runs until
    /// interrupted; writes what it knows for `status`.
    Run(RunArgs),
    /// Print what `run` last knew: each scope's version, term and age,
    /// the storage endpoints with their scores, health and why it is
    /// degraded.
    Status(ClusterArgs),
    #[command(flatten)]
    Docs(rap_core::cli_docs::DocsCommand),
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Where the built-in `synthetic-echo` workload listens when it runs
    /// (a loopback address; port 0 picks a free one, shown by `status`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    echo_listen: std::net::SocketAddr,
}

#[derive(Args, Debug)]
struct ClusterArgs {
    /// The cluster (this node's membership in it).
    #[arg(long, value_name = "CLUSTER_ID")]
    cluster: String,
    /// Node-local state; the cluster's files are in <DIR>/<CLUSTER_ID>.
    #[arg(long, value_name = "DIR", env = "RAP_AGENT_STATE_DIR", default_value = STATE_DIR_DEFAULT)]
    state_dir: PathBuf,
}

#[derive(Args, Debug)]
struct JoinArgs {
    /// The control plane, host:port (from `rapctl token create`).
    #[arg(long, value_name = "HOST:PORT")]
    server: String,
    /// The cluster to join.
    #[arg(long, value_name = "CLUSTER_ID")]
    cluster: String,
    /// The join token, rapjt.<id>.<secret>.
    #[arg(long, env = "RAP_JOIN_TOKEN", hide_env_values = true)]
    token: String,
    /// blake3 of the cluster CA certificate (64 hex characters, from
    /// `rapctl token create`): the only server accepted presents that CA.
    #[arg(long, value_name = "HEX")]
    ca_fingerprint: String,
    /// Node-local state; the cluster's files go to <DIR>/<CLUSTER_ID>.
    #[arg(long, value_name = "DIR", env = "RAP_AGENT_STATE_DIR", default_value = STATE_DIR_DEFAULT)]
    state_dir: PathBuf,
    /// A capability of this host, NAME or NAME=DETAIL (repeatable).
    /// Capabilities are reported facts, never permissions.
    #[arg(long = "capability", value_name = "NAME[=DETAIL]")]
    capabilities: Vec<String>,
    /// A role to ask for (repeatable); a platform admin decides.
    #[arg(long = "role", value_name = "NAME")]
    roles: Vec<String>,
    /// The host name reported (default: the kernel's host name).
    #[arg(long)]
    hostname: Option<String>,
    /// Failure-domain region label.
    #[arg(long, default_value = "")]
    region: String,
    /// Failure-domain zone label.
    #[arg(long, default_value = "")]
    zone: String,
    /// Failure-domain host label (e.g. the physical host of a VM).
    #[arg(long, default_value = "")]
    host: String,
    /// Time between approval polls, e.g. 500ms, 5s [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    poll_interval: Option<Duration>,
    /// How long to wait for approval, e.g. 10m; 0 waits until interrupted.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0")]
    wait: Duration,
}

/// The agent's default log filter (`RUST_LOG` overrides it).
const LOG_FILTER_DEFAULT: &str = "warn";

/// This host's node id in `cluster`, when it is enrolled there (for the
/// logs; any failure to tell is `None`, and the command itself reports it).
fn enrolled_node_id(state_dir: &std::path::Path, cluster: &str) -> Option<String> {
    let cluster = ClusterId::new(cluster).ok()?;
    // Reads `identity.json` only, and only where the cluster's state is:
    // nothing is created, and no lock `run` holds is waited for.
    if !state_dir.join(cluster.as_str()).is_dir() {
        return None;
    }
    let state = crate::state::ClusterState::open(state_dir, &cluster).ok()?;
    state.identity().ok()?.map(|record| record.node_id)
}

/// Parses the command line, runs the command, and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let (cluster, state_dir) = match &cli.command {
        Command::Join(args) => (args.cluster.as_str(), None),
        Command::Run(args) => (args.cluster.cluster.as_str(), Some(&args.cluster.state_dir)),
        Command::Status(args) => (args.cluster.as_str(), Some(&args.state_dir)),
        Command::Docs(_) => ("", None),
    };
    let node = state_dir
        .and_then(|dir| enrolled_node_id(dir, cluster))
        .unwrap_or_default();
    rap_core::logging::init(
        cli.log_format,
        LOG_FILTER_DEFAULT,
        &[("cluster_id", cluster), ("node_id", node.as_str())],
    );
    let output = cli.output;
    rap_core::process::run_main(async move {
        match cli.command {
            Command::Join(args) => join(*args, output).await,
            Command::Run(args) => run(args).await,
            Command::Status(args) => status(args, output),
            Command::Docs(docs) => {
                docs.run(<Cli as clap::CommandFactory>::command())?;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if !args.echo_listen.ip().is_loopback() {
        anyhow::bail!(
            "--echo-listen {}: the synthetic echo listens on loopback only",
            args.echo_listen
        );
    }
    let echo_listen = args.echo_listen;
    let args = args.cluster;
    let cluster = ClusterId::new(args.cluster.as_str()).context("--cluster")?;
    let stop = async {
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    };
    match crate::run::run(&args.state_dir, &cluster, echo_listen, stop).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error @ crate::reads::ReadError::Revoked(_)) => {
            eprintln!(
                "error: [{}] {error}; every workload was stopped. Join again to come back.",
                error.code()
            );
            Ok(ExitCode::from(EXIT_REVOKED))
        }
        Err(error) => Err(error.into()),
    }
}

fn status(args: ClusterArgs, output: Output) -> anyhow::Result<ExitCode> {
    let cluster = ClusterId::new(args.cluster.as_str()).context("--cluster")?;
    let Some(status) = crate::run::read_status(&args.state_dir, &cluster)? else {
        anyhow::bail!(
            "no status for cluster {cluster} under {}: is `rap-node-agent run` running?",
            args.state_dir.display()
        );
    };
    if output == Output::Json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = rap_proto::time::UnixMillis::now().0;
    let age = |at: i64| {
        if at <= 0 {
            "-".to_string()
        } else {
            format!("{:.1}s", (now - at).max(0) as f64 / 1000.0)
        }
    };
    outln!("node {} in cluster {}", status.node_id, status.cluster_id);
    outln!(
        "health: {}{} (written {} ago)",
        status.health,
        if status.degraded_reason.is_empty() {
            String::new()
        } else {
            format!(": {}", status.degraded_reason)
        },
        age(status.updated_at_unix_ms)
    );
    let cp = &status.control_plane;
    outln!(
        "control plane: {} ({} heartbeats, {} failed, last at {} ago){}",
        if cp.reachable {
            "reachable"
        } else {
            "unreachable"
        },
        cp.sent,
        cp.failed,
        age(cp.last_heartbeat_unix_ms),
        if cp.last_error.is_empty() {
            String::new()
        } else {
            format!("; last error: {}", cp.last_error)
        }
    );
    let cert = &status.certificate;
    outln!(
        "certificate: {} renewals by this run{}{}",
        cert.renewals,
        if cert.serial.is_empty() {
            String::new()
        } else {
            format!(", serial {} valid {} more", cert.serial, {
                let left = (cert.not_after_unix_ms - now).max(0) as f64 / 1000.0;
                format!("{left:.0}s")
            })
        },
        if cert.last_error.is_empty() {
            String::new()
        } else {
            format!("; last error: {}", cert.last_error)
        }
    );
    outln!("scopes:");
    for (scope, held) in &status.scopes {
        outln!(
            "  {scope:<32} v{:<6} term {:<3} age {:<8} from {}{} ({})",
            held.version,
            held.authority_term,
            age(held.accepted_at_unix_ms),
            if held.served_by.is_empty() {
                "disk"
            } else {
                &held.served_by
            },
            if held.from_cache_replica {
                " (cache)"
            } else {
                ""
            },
            if held.partition_view.is_empty() {
                "-"
            } else {
                &held.partition_view
            },
        );
    }
    if !status.workloads.is_empty() {
        outln!("workloads:");
        for w in &status.workloads {
            outln!(
                "  {:<20} desired {:<9} observed {:<9} v{} {}",
                w.service,
                w.desired,
                w.observed,
                w.version,
                w.detail
            );
        }
    }
    if !status.peers.is_empty() {
        outln!("mesh peers (peer cache):");
        for peer in &status.peers {
            outln!(
                "  {:<20} {:<6} {}",
                peer.node_id,
                peer.tier,
                peer.roles.join(",")
            );
        }
    }
    outln!("storage endpoints, best first:");
    for shown in &status.endpoints {
        let scored = &shown.scored;
        outln!(
            "  {:<6} {:<16} {:<22} {:<9} zone {:<10} rtt {:<9} load {:<5} failures {:<3} bad envelopes {}{}",
            shown.tier.name(),
            scored.endpoint.node_id,
            scored.endpoint.address,
            scored.endpoint.role,
            if scored.endpoint.zone.is_empty() {
                "-"
            } else {
                &scored.endpoint.zone
            },
            scored
                .rtt_ms
                .map(|r| format!("{r:.2}ms"))
                .unwrap_or_else(|| "-".to_string()),
            scored
                .load
                .map(|l| format!("{:.0}%", l * 100.0))
                .unwrap_or_else(|| "-".to_string()),
            scored.failures,
            scored.bad_envelopes,
            if scored.last_error.is_empty() {
                String::new()
            } else {
                format!(" (last: {})", scored.last_error)
            },
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints progress: stdout for text output, stderr when stdout is JSON.
fn progress(output: Output, line: &str) {
    match output {
        Output::Text => outln!("{line}"),
        Output::Json => eprintln!("{line}"),
    }
}

fn options(args: JoinArgs) -> anyhow::Result<JoinOptions> {
    let cluster = ClusterId::new(args.cluster.as_str()).context("--cluster")?;
    let ca_fingerprint = CaFingerprint::parse(&args.ca_fingerprint)
        .map_err(|e| anyhow::anyhow!("--ca-fingerprint: {e}"))?;
    let capabilities = args
        .capabilities
        .iter()
        .map(|c| enroll::parse_capability(c))
        .collect::<Result<Vec<_>, _>>()?;
    if capabilities.len() > enroll::CAPABILITIES_MAX {
        anyhow::bail!(
            "{} capabilities; at most {}",
            capabilities.len(),
            enroll::CAPABILITIES_MAX
        );
    }
    let facts = enroll::local_facts(
        args.hostname.as_deref(),
        pb::FailureDomain {
            region: args.region,
            zone: args.zone,
            host: args.host,
        },
    )?;
    Ok(JoinOptions {
        server: enroll::parse_server(&args.server)?,
        cluster,
        token: args.token.trim().to_string(),
        ca_fingerprint,
        state_dir: args.state_dir,
        capabilities,
        roles: enroll::parse_roles(&args.roles)?,
        facts,
        poll_interval: enroll::check_poll_interval(
            args.poll_interval.unwrap_or(POLL_INTERVAL_DEFAULT),
        )?,
        wait: enroll::check_wait(args.wait)?,
    })
}

async fn join(args: JoinArgs, output: Output) -> anyhow::Result<ExitCode> {
    let options = options(args)?;
    enroll::check_token(&options.token)?;
    let mut on_event = move |event: Event| match event {
        Event::KeyCreated(path) => {
            progress(output, &format!("generated node key {}", path.display()))
        }
        Event::KeyReused(path) => progress(output, &format!("using node key {}", path.display())),
        Event::Pinned { server } => progress(
            output,
            &format!("control plane at {server} presented the pinned cluster CA"),
        ),
        Event::Submitted { join_request_id } => {
            progress(output, &format!("join request {join_request_id} submitted"))
        }
        Event::Resumed { join_request_id } => progress(
            output,
            &format!("resuming join request {join_request_id} (not submitting again)"),
        ),
        Event::WaitingForApproval { join_request_id } => progress(
            output,
            &format!("waiting for approval: rapctl join-request approve {join_request_id}"),
        ),
        Event::Retrying { error } => eprintln!("warning: {error}; polling again"),
    };
    // Registered before anything is sent, so a signal during a submission
    // waits until its id is saved instead of killing the process.
    let mut interrupt = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    let interrupted = async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    };
    let outcome = enroll::join(&options, &mut on_event, interrupted).await?;
    Ok(report(&outcome, output))
}

fn identity_json(identity: &IdentityRecord, dir: &std::path::Path) -> serde_json::Value {
    serde_json::json!({
        "node_id": identity.node_id,
        "cluster_id": identity.cluster_id,
        "not_after_unix_ms": identity.not_after_unix_ms,
        "state_dir": dir.display().to_string(),
    })
}

/// Prints the outcome and picks the exit code.
fn report(outcome: &JoinOutcome, output: Output) -> ExitCode {
    let (json, text, code) = match outcome {
        JoinOutcome::Approved(Enrolled {
            identity,
            dir,
            trust_generation,
            storage_endpoints,
        }) => {
            let mut json = identity_json(identity, dir);
            json["status"] = "approved".into();
            json["trust_generation"] = (*trust_generation).into();
            json["storage_endpoints"] = (*storage_endpoints).into();
            (
                json,
                format!(
                    "approved: this host is node {} of cluster {} (files in {})",
                    identity.node_id,
                    identity.cluster_id,
                    dir.display()
                ),
                ExitCode::SUCCESS,
            )
        }
        JoinOutcome::AlreadyEnrolled { identity, dir } => {
            let mut json = identity_json(identity, dir);
            json["status"] = "already-enrolled".into();
            (
                json,
                format!(
                    "already enrolled: this host is node {} of cluster {} (files in {})",
                    identity.node_id,
                    identity.cluster_id,
                    dir.display()
                ),
                ExitCode::SUCCESS,
            )
        }
        JoinOutcome::Rejected {
            join_request_id,
            reason,
        } => (
            serde_json::json!({"status": "rejected", "join_request_id": join_request_id, "reason": reason}),
            format!("join request {join_request_id} was rejected: {reason}"),
            ExitCode::FAILURE,
        ),
        JoinOutcome::Expired { join_request_id } => (
            serde_json::json!({"status": "expired", "join_request_id": join_request_id}),
            format!(
                "join request {join_request_id} expired before review; ask for a new token and join again"
            ),
            ExitCode::FAILURE,
        ),
        JoinOutcome::Interrupted { join_request_id } => (
            serde_json::json!({"status": "interrupted", "join_request_id": join_request_id}),
            match join_request_id {
                Some(id) => format!(
                    "interrupted while join request {id} is pending; run the same command again to resume"
                ),
                None => "interrupted before a join request was submitted".to_string(),
            },
            ExitCode::from(EXIT_INTERRUPTED),
        ),
        JoinOutcome::StillPending { join_request_id } => (
            serde_json::json!({"status": "pending", "join_request_id": join_request_id}),
            format!(
                "join request {join_request_id} is still pending; run the same command again to keep waiting"
            ),
            ExitCode::from(EXIT_PENDING),
        ),
    };
    match output {
        Output::Json => outln!("{json}"),
        Output::Text if code == ExitCode::SUCCESS => outln!("{text}"),
        Output::Text => eprintln!("{text}"),
    }
    code
}
