//! `nemesis`: chaos on real `rap-configstore` processes (see the
//! library's docs and `scripts/nemesis.sh`). Prints a summary, writes the
//! history, the faults, the timeline and every node's log to the output
//! folder, and exits 1 when the checker found a violation.

use anyhow::{Context, Result, bail};
use clap::Parser;
use rap_core::rng::SeededRng;
use rap_nemesis::checker::{self, Violations};
use rap_nemesis::history::{Fault, Op, Outcome};
use rap_nemesis::proxy::{LinkMode, LinkProxy};
use rap_proto::pb;
use rap_testkit::cluster::{Client, Cluster};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest run asked for.
const MINUTES_MAX: f64 = 24.0 * 60.0;
/// Most client processes.
const CLIENTS_MAX: usize = 32;
/// How long one operation may take before it counts as unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause of a client between two operations.
const THINK_TIME: Duration = Duration::from_millis(20);
/// How long a fault lasts, at least and at most.
const FAULT_MIN: Duration = Duration::from_secs(2);
const FAULT_MAX: Duration = Duration::from_secs(8);
/// Quiet time between two faults, at least and at most.
const QUIET_MIN: Duration = Duration::from_secs(2);
const QUIET_MAX: Duration = Duration::from_secs(5);
/// How long the group may take to agree again after the final heal.
const CONVERGE_MAX: Duration = Duration::from_secs(30);
/// Most operations kept in one history (a bound on memory).
const HISTORY_MAX: usize = 2_000_000;
/// The fault kinds.
const FAULTS: [&str; 7] = [
    "partition",
    "one-way",
    "bridge",
    "pause",
    "kill",
    "delay",
    "reset",
];

/// Chaos on real processes: partitions, pauses, kills and slow links
/// against rap-configstore storage nodes, with a workload of fences, and
/// a check of the whole history.
#[derive(Parser, Debug)]
struct Args {
    /// How long the faults run (then everything heals and is checked).
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// The seed of the fault schedule and of the workload's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fault kinds, comma-separated: partition, one-way, bridge, pause,
    /// kill, delay, reset.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "partition,one-way,bridge,pause,kill,delay,reset"
    )]
    faults: Vec<String>,
    /// Storage voters (3 or 5).
    #[arg(long, default_value_t = 3)]
    voters: usize,
    /// Client processes of the workload.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Directory holding rap-configstore (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Output folder (history, faults, timeline, logs, summary).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run the storage nodes with a rule broken on purpose (debug builds
    /// only; `minority-grants`: a leader that keeps granting fences
    /// without its quorum).
    #[arg(long)]
    mutant: Option<String>,
    /// Teeth: succeed only when the checker finds this rule broken (with
    /// --mutant: the checker must catch the broken build).
    #[arg(long)]
    expect_violation: Option<String>,
    /// Start nothing: draw DIR/timeline.svg again from the DIR/history.jsonl
    /// and DIR/faults.json of an earlier run.
    #[arg(long, value_name = "DIR")]
    replot: Option<PathBuf>,
}

/// Milliseconds since the run began.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.replot {
        return replot(dir);
    }
    if !(args.minutes > 0.0 && args.minutes <= MINUTES_MAX) {
        bail!("--minutes must be in (0, {MINUTES_MAX}]");
    }
    if !(args.voters == 3 || args.voters == 5) {
        bail!("--voters must be 3 or 5");
    }
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        bail!("--clients must be in 1..={CLIENTS_MAX}");
    }
    for fault in &args.faults {
        if !FAULTS.contains(&fault.as_str()) {
            bail!("unknown fault {fault:?}: {}", FAULTS.join(", "));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let expected = args.expect_violation.clone();
    // Interrupted: the run's future is dropped, and with it the cluster
    // (every process it started is killed) and the proxies.
    let violations = runtime.block_on(async {
        tokio::select! {
            result = run(args) => result,
            () = rap_core::process::shutdown_signal() => bail!("interrupted; every process it started is stopped"),
        }
    })?;
    match expected {
        Some(rule) if violations.contains_key(rule.as_str()) => {
            println!("teeth: the checker caught {rule}, as it must");
            Ok(())
        }
        Some(rule) => {
            println!("TEETH FAILED: the checker did not report {rule}");
            std::process::exit(1)
        }
        None if violations.is_empty() => Ok(()),
        None => std::process::exit(1),
    }
}

async fn run(args: Args) -> Result<Violations> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the binary's directory")?
            .to_path_buf(),
    };
    let mutant_args: Vec<String> = match args.mutant.as_deref() {
        None => Vec::new(),
        Some("minority-grants") => vec!["--nemesis-mutant".into(), "minority-grants".into()],
        Some(other) => bail!("unknown mutant {other:?}: minority-grants"),
    };
    let bin = bin_dir.join("rap-configstore");
    if !bin.is_file() {
        bail!(
            "{} is missing: cargo build -p rap-configstore (or --bin-dir)",
            bin.display()
        );
    }
    let out = match &args.out {
        Some(out) => out.clone(),
        None => PathBuf::from(format!("nemesis-seed{}", args.seed)),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let rng = SeededRng::new(args.seed);
    let mut cluster = Cluster::new(&bin, args.voters);
    let cluster_id = cluster.cluster_id.to_string();
    let ids: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();

    // One proxy per directed link; each node dials its peers through them.
    let mut links: BTreeMap<(usize, usize), LinkProxy> = BTreeMap::new();
    for from in 0..ids.len() {
        for to in 0..ids.len() {
            if from != to {
                let proxy = LinkProxy::start(&ids[from], &ids[to], cluster.nodes[to].grpc).await?;
                links.insert((from, to), proxy);
            }
        }
    }
    for from in 0..ids.len() {
        let mut extra = mutant_args.clone();
        for to in (0..ids.len()).filter(|to| *to != from) {
            extra.push("--dial-via".to_string());
            extra.push(format!("{}={}", ids[to], links[&(from, to)].listen));
        }
        cluster.nodes[from].extra_args = extra;
    }
    cluster.start_all().await;
    cluster
        .bootstrap()
        .await
        .map_err(|s| anyhow::anyhow!("bootstrap: {s}"))?;
    println!(
        "nemesis: {}seed {}, {} voters, {} clients, faults {}, {:.1} min; output in {}",
        args.mutant
            .as_deref()
            .map(|m| format!("MUTANT {m}, "))
            .unwrap_or_default(),
        args.seed,
        args.voters,
        args.clients,
        args.faults.join(","),
        args.minutes,
        out.display()
    );

    let clock = Clock(Instant::now());
    let history: Arc<Mutex<Vec<Op>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for c in 0..args.clients {
        let clients: Vec<Client> = (0..ids.len()).map(|i| cluster.client(i)).collect();
        let mut pick = rng.fork(&format!("client-{c}"));
        let (ids, cluster_id, history, stop) = (
            ids.clone(),
            cluster_id.clone(),
            Arc::clone(&history),
            Arc::clone(&stop),
        );
        workers.push(tokio::spawn(async move {
            let process = format!("client-{}", c + 1);
            let mut clients = clients;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let node = pick.index(ids.len());
                let op = fence(&mut clients[node], &cluster_id, &process, &ids[node], clock).await;
                if let Ok(mut h) = history.lock()
                    && h.len() < HISTORY_MAX
                {
                    h.push(op);
                }
                tokio::time::sleep(THINK_TIME).await;
            }
        }));
    }

    // The nemesis.
    let deadline = Duration::from_secs_f64(args.minutes * 60.0);
    let mut faults: Vec<Fault> = Vec::new();
    let mut schedule = rng.fork("nemesis");
    let mut killed: Vec<usize> = Vec::new();
    while clock.0.elapsed() < deadline {
        tokio::time::sleep(schedule.millis(QUIET_MIN, QUIET_MAX)).await;
        if clock.0.elapsed() >= deadline {
            break;
        }
        let kind = args.faults[schedule.index(args.faults.len())].as_str();
        let hold = schedule.millis(FAULT_MIN, FAULT_MAX);
        let start_ms = clock.ms();
        let detail = match kind {
            "partition" => {
                // The leader is on the minority side half the time.
                let minority = 1 + schedule.index(ids.len() / 2);
                let mut side = schedule.subset(ids.len(), minority);
                if schedule.chance(0.5) {
                    let leader = leader_of(&cluster).await;
                    if let Some(leader) = leader.filter(|l| !side.contains(l)) {
                        side[0] = leader;
                    }
                }
                for ((from, to), link) in &links {
                    if side.contains(from) != side.contains(to) {
                        link.set(LinkMode::Cut);
                    }
                }
                let (a, b): (Vec<usize>, Vec<usize>) =
                    (0..ids.len()).partition(|i| side.contains(i));
                format!("{} | {}", names(&ids, &a), names(&ids, &b))
            }
            "one-way" => {
                let keys: Vec<(usize, usize)> = links.keys().copied().collect();
                let (from, to) = keys[schedule.index(keys.len())];
                links[&(from, to)].set(LinkMode::Cut);
                format!("{} -/-> {}", ids[from], ids[to])
            }
            "bridge" => {
                // Two halves that reach each other only through one node.
                let mut shuffled: Vec<usize> = (0..ids.len()).collect();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, schedule.index(i + 1));
                }
                let bridge = shuffled[0];
                let half: Vec<usize> = shuffled[1..].iter().copied().step_by(2).collect();
                for ((from, to), link) in &links {
                    let crossing = half.contains(from) != half.contains(to);
                    if crossing && *from != bridge && *to != bridge {
                        link.set(LinkMode::Cut);
                    }
                }
                let other: Vec<usize> = (0..ids.len())
                    .filter(|i| *i != bridge && !half.contains(i))
                    .collect();
                format!(
                    "{} | {} bridged by {}",
                    names(&ids, &half),
                    names(&ids, &other),
                    ids[bridge]
                )
            }
            "reset" => {
                let node = schedule.index(ids.len());
                for ((from, to), link) in &links {
                    if *from == node || *to == node {
                        link.reset();
                    }
                }
                format!("every connection of {} reset", ids[node])
            }
            "delay" => {
                let delay = schedule.millis(Duration::from_millis(50), Duration::from_millis(400));
                for link in links.values() {
                    if schedule.chance(0.5) {
                        link.set(LinkMode::Delay(delay));
                    }
                }
                format!("{} ms on about half the links", delay.as_millis())
            }
            "pause" => {
                let node = pick_node(&cluster, &mut schedule).await;
                let what = format!("SIGSTOP {} ({})", ids[node], role(&cluster, node).await);
                signal(&cluster, node, "-STOP").await;
                what
            }
            _ => {
                let node = pick_node(&cluster, &mut schedule).await;
                let what = format!("kill -9 {} ({})", ids[node], role(&cluster, node).await);
                cluster.kill(node);
                killed.push(node);
                what
            }
        };
        tokio::time::sleep(hold).await;
        heal(&mut cluster, &links, &mut killed).await;
        faults.push(Fault {
            kind: kind.to_string(),
            detail,
            start_ms,
            end_ms: clock.ms(),
        });
        println!(
            "  {:>7.1}s {:<9} {}",
            start_ms as f64 / 1000.0,
            kind,
            faults.last().map(|f| f.detail.as_str()).unwrap_or_default()
        );
    }
    heal(&mut cluster, &links, &mut killed).await;
    let healed_ms = clock.ms();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }

    // After the heal: one leader and term everywhere, then a last fence.
    let converged = converge(&cluster).await;
    let final_fence = final_fence(&cluster, &cluster_id).await;
    let end_ms = clock.ms();
    let history = history.lock().map(|h| h.clone()).unwrap_or_default();
    let mut violations = checker::check(&history, final_fence);
    if let Err(why) = &converged {
        violations.entry("converged-after-heal").or_default().count += 1;
        if let Some(broken) = violations.get_mut("converged-after-heal") {
            broken.examples.push(why.clone());
        }
    }
    write_outputs(&out, &history, &faults, end_ms, &cluster)?;
    let summary = summary(
        &history,
        &faults,
        &violations,
        healed_ms,
        end_ms,
        &converged,
    );
    std::fs::write(out.join("summary.txt"), &summary)?;
    print!("{summary}");
    Ok(violations)
}

/// Draws `dir/timeline.svg` again from the run's history and faults.
fn replot(dir: &Path) -> Result<()> {
    let text = std::fs::read_to_string(dir.join("history.jsonl"))
        .with_context(|| format!("read {}/history.jsonl", dir.display()))?;
    let history = text
        .lines()
        .take(HISTORY_MAX)
        .map(serde_json::from_str)
        .collect::<std::result::Result<Vec<Op>, _>>()
        .context("history.jsonl")?;
    let faults: Vec<Fault> = serde_json::from_str(
        &std::fs::read_to_string(dir.join("faults.json"))
            .with_context(|| format!("read {}/faults.json", dir.display()))?,
    )
    .context("faults.json")?;
    let end_ms = history
        .iter()
        .map(|op| op.complete_ms)
        .chain(faults.iter().map(|f| f.end_ms))
        .max()
        .unwrap_or(0);
    std::fs::write(
        dir.join("timeline.svg"),
        rap_nemesis::timeline::svg(&history, &faults, end_ms),
    )?;
    println!("wrote {}", dir.join("timeline.svg").display());
    Ok(())
}

fn names(ids: &[String], of: &[usize]) -> String {
    format!(
        "{{{}}}",
        of.iter()
            .map(|i| ids[*i].as_str())
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// One `AcquireFence` through `client`, logged as an operation.
async fn fence(client: &mut Client, cluster: &str, process: &str, node: &str, clock: Clock) -> Op {
    let invoke_ms = clock.ms();
    let request = pb::AcquireFenceRequest {
        cluster_id: cluster.to_string(),
        purpose: format!("nemesis {process}"),
        expected_term: 1,
    };
    let outcome = match tokio::time::timeout(OP_TIMEOUT, client.acquire_fence(request)).await {
        Err(_) => Outcome::Unknown {
            reason: "timeout".into(),
        },
        Ok(Ok(response)) => match response.into_inner().fence {
            Some(token) => Outcome::Ok {
                term: token.authority_term,
                seq: token.seq,
            },
            None => Outcome::Unknown {
                reason: "an answer without a token".into(),
            },
        },
        Ok(Err(status)) => {
            let code = rap_testkit::cluster::code_of(&status);
            match status.code() {
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
                    if code.is_empty() || code == "UNKNOWN" =>
                {
                    Outcome::Unknown {
                        reason: format!("{:?}: {}", status.code(), status.message()),
                    }
                }
                _ => Outcome::Refused {
                    code: if code.is_empty() {
                        format!("{:?}", status.code())
                    } else {
                        code
                    },
                },
            }
        }
    };
    Op {
        process: process.to_string(),
        kind: "fence".into(),
        node: node.to_string(),
        invoke_ms,
        complete_ms: clock.ms(),
        outcome,
    }
}

/// The leader's index, as the first running node that names one says.
async fn leader_of(cluster: &Cluster) -> Option<usize> {
    for i in cluster.running() {
        if let Ok(status) = cluster.status(i).await
            && let Some(found) = cluster.nodes.iter().position(|n| n.id == status.leader_id)
        {
            return Some(found);
        }
    }
    None
}

/// The leader half the time (when one is known), else any running node.
async fn pick_node(cluster: &Cluster, rng: &mut SeededRng) -> usize {
    let running = cluster.running();
    if rng.chance(0.5)
        && let Some(leader) = leader_of(cluster).await
    {
        return leader;
    }
    running
        .get(rng.index(running.len()))
        .copied()
        .unwrap_or_default()
}

async fn role(cluster: &Cluster, node: usize) -> &'static str {
    match cluster.status(node).await {
        Ok(status) if status.leader_id == cluster.nodes[node].id => "leader",
        Ok(_) => "follower",
        Err(_) => "unreachable",
    }
}

/// `kill <flag> <pid>` of node `node` (SIGSTOP / SIGCONT).
async fn signal(cluster: &Cluster, node: usize, flag: &str) {
    if let Some(pid) = cluster.nodes[node].pid() {
        let _ = tokio::process::Command::new("kill")
            .args([flag, &pid.to_string()])
            .status()
            .await;
    }
}

/// Every link passes again, every paused node runs, killed ones restart.
async fn heal(
    cluster: &mut Cluster,
    links: &BTreeMap<(usize, usize), LinkProxy>,
    killed: &mut Vec<usize>,
) {
    for link in links.values() {
        link.set(LinkMode::Pass);
    }
    for node in 0..cluster.nodes.len() {
        signal(cluster, node, "-CONT").await;
    }
    for node in killed.drain(..) {
        cluster.start(node).await;
    }
}

/// Waits until every node names the same leader and term and sees a
/// healthy group; the reason when it does not within [`CONVERGE_MAX`].
async fn converge(cluster: &Cluster) -> std::result::Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < CONVERGE_MAX {
        let mut seen = Vec::new();
        for i in 0..cluster.nodes.len() {
            match cluster.status(i).await {
                Ok(s) => {
                    seen.push((
                        s.leader_id.clone(),
                        s.raft_term,
                        s.partition_view == pb::PartitionView::Healthy as i32,
                    ));
                }
                Err(e) => seen.push((format!("error {}", e.code()), 0, false)),
            }
        }
        let agreed = seen
            .windows(2)
            .all(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1)
            && seen
                .iter()
                .all(|(leader, _, healthy)| !leader.is_empty() && *healthy);
        if agreed {
            return Ok(started.elapsed());
        }
        last = format!("{seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "no agreement within {} s: (leader, raft term, healthy) per node {last}",
        CONVERGE_MAX.as_secs()
    ))
}

/// A fence after the final heal (tried on every node for a while).
async fn final_fence(cluster: &Cluster, cluster_id: &str) -> Option<(u64, u64)> {
    let clock = Clock(Instant::now());
    for _ in 0..50 {
        for i in 0..cluster.nodes.len() {
            let mut client = cluster.client(i);
            let op = fence(
                &mut client,
                cluster_id,
                "final",
                &cluster.nodes[i].id,
                clock,
            )
            .await;
            if let Some(fence) = op.fence() {
                return Some(fence);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

fn write_outputs(
    out: &Path,
    history: &[Op],
    faults: &[Fault],
    end_ms: u64,
    cluster: &Cluster,
) -> Result<()> {
    let mut lines = String::new();
    for op in history {
        lines.push_str(&serde_json::to_string(op)?);
        lines.push('\n');
    }
    std::fs::write(out.join("history.jsonl"), lines)?;
    std::fs::write(
        out.join("faults.json"),
        serde_json::to_string_pretty(faults)?,
    )?;
    std::fs::write(
        out.join("timeline.svg"),
        rap_nemesis::timeline::svg(history, faults, end_ms),
    )?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs)?;
    for node in &cluster.nodes {
        let _ = std::fs::copy(&node.log, logs.join(format!("{}.log", node.id)));
    }
    Ok(())
}

/// The longest stretch without a granted fence that overlaps a fault of
/// each kind, in ms.
fn unavailability(history: &[Op], faults: &[Fault]) -> BTreeMap<String, u64> {
    let mut grants: Vec<u64> = history
        .iter()
        .filter(|op| op.fence().is_some())
        .map(|op| op.complete_ms)
        .collect();
    grants.sort_unstable();
    let mut longest: BTreeMap<String, u64> = BTreeMap::new();
    for pair in grants.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        for fault in faults {
            if fault.start_ms < b && a < fault.end_ms {
                let entry = longest.entry(fault.kind.clone()).or_default();
                *entry = (*entry).max(b - a);
            }
        }
    }
    longest
}

/// `name count, name count` of a tally.
fn counts<K: std::fmt::Display, V: std::fmt::Display>(tally: &BTreeMap<K, V>) -> String {
    tally
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn summary(
    history: &[Op],
    faults: &[Fault],
    violations: &Violations,
    healed_ms: u64,
    end_ms: u64,
    converged: &std::result::Result<Duration, String>,
) -> String {
    let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    for op in history {
        *by_outcome.entry(op.outcome.kind().to_string()).or_default() += 1;
        if let Outcome::Refused { code } = &op.outcome {
            *codes.entry(code.clone()).or_default() += 1;
        }
    }
    let mut by_fault: BTreeMap<&str, u64> = BTreeMap::new();
    for fault in faults {
        *by_fault.entry(fault.kind.as_str()).or_default() += 1;
    }
    let seconds = (healed_ms.max(1)) as f64 / 1000.0;
    let mut out = String::from("\nsummary\n");
    out.push_str(&format!(
        "  operations: {} in {:.1} s ({:.1}/s): {}\n",
        history.len(),
        seconds,
        history.len() as f64 / seconds,
        counts(&by_outcome)
    ));
    if !codes.is_empty() {
        out.push_str(&format!("  refusals by code: {}\n", counts(&codes)));
    }
    out.push_str(&format!(
        "  faults injected: {} ({})\n",
        faults.len(),
        counts(&by_fault)
    ));
    let windows = unavailability(history, faults);
    out.push_str(&format!(
        "  longest window without a grant, by fault kind: {}\n",
        windows
            .iter()
            .map(|(k, v)| format!("{k} {:.1} s", *v as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.push_str(&match converged {
        Ok(took) => format!(
            "  converged after the final heal in {:.1} s (run ended at {:.1} s)\n",
            took.as_secs_f64(),
            end_ms as f64 / 1000.0
        ),
        Err(why) => format!("  NOT converged after the final heal: {why}\n"),
    });
    if violations.is_empty() {
        out.push_str("  violations: 0\n");
    } else {
        for (rule, broken) in violations {
            out.push_str(&format!("  VIOLATION {rule}: {}\n", broken.count));
            for example in &broken.examples {
                out.push_str(&format!("    {example}\n"));
            }
        }
    }
    out
}
