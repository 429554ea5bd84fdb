//! `nemesis`: chaos on real `rap-configstore` processes (see the
//! library's docs and `scripts/nemesis.sh`). Prints a summary, writes the
//! history, the faults, the timeline and every node's log to the output
//! folder, and exits 1 when the checker found a violation.

use anyhow::{Context, Result, bail};
use clap::Parser;
use rap_core::rng::SeededRng;
use rap_nemesis::checker::{self, Final, Violations};
use rap_nemesis::fabric::{CACHE_ID, Fabric};
use rap_nemesis::history::{Detail, Fault, Op, Outcome};
use rap_nemesis::proxy::LinkMode;
use rap_nemesis::workload::{self, Clock, HISTORY_MAX, Shared};
use rap_proto::pb;
use rap_testkit::cluster::{Client, Cluster};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Longest run asked for.
const MINUTES_MAX: f64 = 24.0 * 60.0;
/// Most fence clients.
const CLIENTS_MAX: usize = 32;
/// How long a fault lasts, at least and at most.
const FAULT_MIN: Duration = Duration::from_secs(2);
const FAULT_MAX: Duration = Duration::from_secs(8);
/// Quiet time between two faults, at least and at most.
const QUIET_MIN: Duration = Duration::from_secs(2);
const QUIET_MAX: Duration = Duration::from_secs(5);
/// How long the group may take to agree again after the final heal.
const CONVERGE_MAX: Duration = Duration::from_secs(30);
/// The fault kinds.
const FAULTS: [&str; 8] = [
    "partition",
    "one-way",
    "bridge",
    "pause",
    "kill",
    "delay",
    "reset",
    "promote",
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
    /// kill, delay, reset, promote.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "partition,one-way,bridge,pause,kill,delay,reset,promote"
    )]
    faults: Vec<String>,
    /// Storage voters (3 or 5).
    #[arg(long, default_value_t = 3)]
    voters: usize,
    /// Fence clients of the workload (each asks random voters).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Agents (each reads and watches its own scope, and has a mutator
    /// that toggles a role on it through the control plane).
    #[arg(long, default_value_t = 2)]
    agents: usize,
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
    if args.agents > rap_nemesis::fabric::AGENTS_MAX {
        bail!(
            "--agents must be in 0..={}",
            rap_nemesis::fabric::AGENTS_MAX
        );
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
    std::fs::create_dir_all(out.join("logs"))
        .with_context(|| format!("create {}/logs", out.display()))?;
    log_control_plane(&out.join("logs").join("controlplane.log"))?;
    let rng = SeededRng::new(args.seed);
    let setup = Instant::now();
    let mut fabric = Fabric::start(&bin, args.voters, args.agents, &mutant_args).await?;
    println!(
        "nemesis: {}seed {}, {} voters + cache replica {CACHE_ID}, {} fence clients, {} agents \
         (each with a mutator), faults {}, {:.1} min; set up in {:.1} s; output in {}",
        args.mutant
            .as_deref()
            .map(|m| format!("MUTANT {m}, "))
            .unwrap_or_default(),
        args.seed,
        args.voters,
        args.clients,
        fabric.agents.len(),
        args.faults.join(","),
        args.minutes,
        setup.elapsed().as_secs_f64(),
        out.display()
    );

    let shared = Shared::new();
    let ids = fabric.ids.clone();
    let mut workers = Vec::new();
    for c in 0..args.clients {
        let mut clients: Vec<Client> = (0..ids.len()).map(|i| fabric.cluster.client(i)).collect();
        let mut pick = rng.fork(&format!("client-{c}"));
        let (ids, shared) = (ids.clone(), shared.clone());
        workers.push(tokio::spawn(async move {
            let process = format!("client-{}", c + 1);
            while !shared.stopped() {
                let node = pick.index(ids.len());
                let term = shared.term.load(Ordering::SeqCst);
                let op =
                    workload::fence(&mut clients[node], &process, &ids[node], term, shared.clock)
                        .await;
                shared.record(op);
                tokio::time::sleep(workload::THINK_TIME).await;
            }
        }));
    }
    let (ctx, owner) = (fabric.platform.ctx.clone(), fabric.platform.owner.clone());
    for (a, agent) in fabric.agents.iter().enumerate() {
        let process = format!("mutator-{}", a + 1);
        workers.push(tokio::spawn(workload::mutator(
            ctx.clone(),
            owner.clone(),
            agent.id.clone(),
            process,
            shared.clone(),
        )));
        let (agent, endpoints, genesis, shared) = (
            agent.clone(),
            fabric.agent_endpoints(),
            fabric.genesis.clone(),
            shared.clone(),
        );
        workers.push(tokio::spawn(async move {
            let process = format!("agent-{}", a + 1);
            if let Err(e) =
                workload::agent(&agent, endpoints, genesis, process.clone(), shared).await
            {
                println!("  {process} ({}) stopped: {e:#}", agent.id);
            }
        }));
    }
    let publications = tokio::spawn(workload::publications(
        ctx.clone(),
        owner.clone(),
        shared.clone(),
    ));

    // The nemesis.
    let clock = shared.clock;
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
        let mut cut_off: Vec<usize> = Vec::new();
        let detail = inject(
            &mut fabric,
            kind,
            &mut schedule,
            &mut killed,
            &mut cut_off,
            &shared,
        )
        .await;
        tokio::time::sleep(hold).await;
        heal(&mut fabric, &mut killed).await;
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
        // After a promotion the old side is rejoined, one node after another.
        for node in cut_off {
            let op = workload::rejoin(&ctx, &owner, &ids[node], &shared).await;
            println!(
                "  {:>7.1}s {:<9} {}: {}",
                op.invoke_ms as f64 / 1000.0,
                "rejoin",
                ids[node],
                match &op.outcome {
                    Outcome::Refused { code } => format!("refused {code}"),
                    other => other.kind().to_string(),
                }
            );
            shared.record(op);
        }
    }
    heal(&mut fabric, &mut killed).await;
    let healed_ms = clock.ms();
    shared.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        let _ = worker.await;
    }
    let scopes = publications.await.unwrap_or_default();

    // After the heal: one leader and term everywhere, a last fence, the
    // group's head of every published scope, and what PostgreSQL accepted.
    let converged = converge(&fabric.cluster).await;
    let term = shared.term.load(Ordering::SeqCst);
    let fence = final_fence(&fabric.cluster, term).await;
    for op in workload::heads(&ctx, &owner, &scopes, clock).await {
        shared.record(op);
    }
    let truth = workload::accepted_fences(&ctx, &owner).await?;
    let end_ms = clock.ms();
    let history = shared.snapshot();
    let mut violations = checker::check(&history, &Final { fence, truth });
    if let Err(why) = &converged {
        violations.entry("converged-after-heal").or_default().count += 1;
        if let Some(broken) = violations.get_mut("converged-after-heal") {
            broken.examples.push(why.clone());
        }
    }
    write_outputs(&out, &history, &faults, end_ms, &fabric)?;
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

/// Sends the control plane's logs (it runs in this process) to `path`.
fn log_control_plane(path: &Path) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init()
        .map_err(|e| anyhow::anyhow!("logging: {e}"))
}

/// Injects one fault of `kind`; returns what it did in words. A node it
/// kills goes to `killed`; a promotion's old side, to be rejoined after
/// the heal, to `cut_off`.
async fn inject(
    fabric: &mut Fabric,
    kind: &str,
    schedule: &mut SeededRng,
    killed: &mut Vec<usize>,
    cut_off: &mut Vec<usize>,
    shared: &Shared,
) -> String {
    let ids = fabric.ids.clone();
    match kind {
        "partition" => {
            // The leader is on the minority side half the time.
            let minority = 1 + schedule.index(ids.len() / 2);
            let mut side = schedule.subset(ids.len(), minority);
            if schedule.chance(0.5) {
                let leader = leader_of(&fabric.cluster).await;
                if let Some(leader) = leader.filter(|l| !side.contains(l)) {
                    side[0] = leader;
                }
            }
            cut_between(fabric, &side);
            let (a, b): (Vec<usize>, Vec<usize>) = (0..ids.len()).partition(|i| side.contains(i));
            format!("{} | {}", names(&ids, &a), names(&ids, &b))
        }
        "promote" => {
            // The majority is cut off from the survivors and from
            // everything outside the group; the operator promotes the
            // survivors, then (after the heal) rejoins the old side.
            let survivors = schedule.subset(ids.len(), (ids.len() - 1) / 2);
            cut_between(fabric, &survivors);
            let old: Vec<usize> = (0..ids.len()).filter(|i| !survivors.contains(i)).collect();
            for node in &old {
                fabric.ingress[*node].set(LinkMode::Cut);
            }
            let (ctx, owner) = (&fabric.platform.ctx, &fabric.platform.owner);
            let names_of: Vec<String> = survivors.iter().map(|i| ids[*i].clone()).collect();
            let op = workload::promote(ctx, owner, names_of, shared).await;
            let done = op.outcome == Outcome::Done;
            let what = format!(
                "{} cut off; promote {}: {}",
                names(&ids, &old),
                names(&ids, &survivors),
                match (&op.outcome, &op.detail) {
                    (Outcome::Done, Detail::Operator { term, .. }) => format!("term {term}"),
                    (Outcome::Refused { code }, _) => format!("refused {code}"),
                    (other, _) => other.kind().to_string(),
                }
            );
            shared.record(op);
            if done {
                cut_off.extend(old);
            }
            what
        }
        "one-way" => {
            let keys: Vec<(usize, usize)> = fabric.links.keys().copied().collect();
            let (from, to) = keys[schedule.index(keys.len())];
            fabric.links[&(from, to)].set(LinkMode::Cut);
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
            for ((from, to), link) in &fabric.links {
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
            for ((from, to), link) in &fabric.links {
                if *from == node || *to == node {
                    link.reset();
                }
            }
            fabric.ingress[node].reset();
            format!("every connection of {} reset", ids[node])
        }
        "delay" => {
            let delay = schedule.millis(Duration::from_millis(50), Duration::from_millis(400));
            for link in fabric.links.values().chain(&fabric.ingress) {
                if schedule.chance(0.5) {
                    link.set(LinkMode::Delay(delay));
                }
            }
            format!("{} ms on about half the links", delay.as_millis())
        }
        "pause" => {
            let node = pick_node(&fabric.cluster, schedule).await;
            let what = format!(
                "SIGSTOP {} ({})",
                ids[node],
                role(&fabric.cluster, node).await
            );
            signal(&fabric.cluster, node, "-STOP").await;
            what
        }
        _ => {
            let node = pick_node(&fabric.cluster, schedule).await;
            let what = format!(
                "kill -9 {} ({})",
                ids[node],
                role(&fabric.cluster, node).await
            );
            fabric.cluster.kill(node);
            killed.push(node);
            what
        }
    }
}

/// Cuts every voter-to-voter link between `side` and the others.
fn cut_between(fabric: &Fabric, side: &[usize]) {
    for ((from, to), link) in &fabric.links {
        if side.contains(from) != side.contains(to) {
            link.set(LinkMode::Cut);
        }
    }
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

/// Every link and ingress passes again, every paused node runs, killed
/// ones restart.
async fn heal(fabric: &mut Fabric, killed: &mut Vec<usize>) {
    fabric.pass_all();
    for node in 0..fabric.cluster.nodes.len() {
        signal(&fabric.cluster, node, "-CONT").await;
    }
    for node in killed.drain(..) {
        fabric.cluster.start(node).await;
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

/// A fence of authority term `term` after the final heal (tried on every
/// node for a while).
async fn final_fence(cluster: &Cluster, term: u64) -> Option<(u64, u64)> {
    let clock = Clock(Instant::now());
    for _ in 0..50 {
        for i in 0..cluster.nodes.len() {
            let mut client = cluster.client(i);
            let op = workload::fence(&mut client, "final", &cluster.nodes[i].id, term, clock).await;
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
    fabric: &Fabric,
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
    for (name, log) in fabric.logs() {
        let _ = std::fs::copy(&log, logs.join(name));
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
    let mut by_kind: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for op in history {
        *by_outcome.entry(op.outcome.kind().to_string()).or_default() += 1;
        *by_kind
            .entry(op.kind.as_str())
            .or_default()
            .entry(op.outcome.kind())
            .or_default() += 1;
        if let Outcome::Refused { code } = &op.outcome {
            *codes.entry(format!("{} {code}", op.kind)).or_default() += 1;
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
    for (kind, outcomes) in &by_kind {
        out.push_str(&format!(
            "    {kind}: {} ({})\n",
            outcomes.values().sum::<u64>(),
            counts(outcomes)
        ));
    }
    if !codes.is_empty() {
        out.push_str(&format!(
            "  refusals by kind and code: {}\n",
            counts(&codes)
        ));
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
