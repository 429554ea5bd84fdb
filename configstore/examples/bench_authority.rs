//! Benchmark driver of the authority group, run by
//! `scripts/bench-authority.sh` (benchmarks are scripts that print
//! figures; no test asserts speed).
//!
//! It starts a 3-voter `rap-configstore` cluster on 127.0.0.1 with mTLS
//! (the integration tests' harness, `rap_testkit::cluster`) and prints:
//!
//! 1. fence grants/s and p50/p99 `AcquireFence` latency at 1, 16 and 64
//!    concurrent clients talking to the leader (and 16 through the
//!    followers, which forward);
//! 2. the failover window after `kill -9` of the leader: time from the
//!    kill until a fence is granted again (clients probe both survivors),
//!    over several runs: median and range;
//! 3. how long a write takes to be refused in a minority (kill 2 of 3):
//!    the first call right after the kill and a following one, for an
//!    isolated leader and an isolated follower.
//!
//! Clients and servers share the machine's cores: the figures are for
//! this loopback set-up, not for a deployment.

use clap::Parser;
use rap_testkit::cluster::{Client, Cluster, Timing, acquire, code_of, join_all};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Authority group benchmark (see the module docs).
#[derive(Parser, Debug)]
struct Args {
    /// The rap-configstore binary (default: next to this example's
    /// directory, i.e. target/<profile>/rap-configstore).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Directory for the cluster (CA, data, logs) and the pid file.
    #[arg(long)]
    work_dir: PathBuf,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent client counts, comma-separated.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Failover runs (kill -9 of the leader).
    #[arg(long, default_value_t = 5)]
    failover_runs: usize,
    /// Minority runs per scenario (isolated leader, isolated follower).
    #[arg(long, default_value_t = 3)]
    minority_runs: usize,
    /// Leader heartbeat interval (ms).
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Minimum election timeout (ms).
    #[arg(long, default_value_t = 500)]
    election_timeout_min_ms: u64,
    /// Maximum election timeout (ms).
    #[arg(long, default_value_t = 1000)]
    election_timeout_max_ms: u64,
}

/// Bounds every loop that waits for the cluster.
const GUARD: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(|examples| examples.parent())
            .map(|dir| dir.join("rap-configstore"))
            .ok_or_else(|| anyhow::anyhow!("cannot locate rap-configstore; pass --bin"))?,
    };
    anyhow::ensure!(bin.exists(), "{} does not exist", bin.display());
    std::fs::create_dir_all(&args.work_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(args, bin));
    Ok(())
}

async fn bench(args: Args, bin: PathBuf) {
    let mut cluster = Cluster::new_in(&bin, 3, Some(&args.work_dir));
    cluster.timing = Timing {
        heartbeat_ms: args.heartbeat_ms,
        election_min_ms: args.election_timeout_min_ms,
        election_max_ms: args.election_timeout_max_ms,
    };
    cluster.pid_file = Some(args.work_dir.join("pids"));
    let leader = cluster.up().await;
    let term = cluster.authority_term(leader).await;
    println!(
        "rap-configstore authority benchmark: 3 voters on 127.0.0.1, mTLS, redb (fsync per commit)"
    );
    println!(
        "timing: heartbeat {} ms, election timeout {}-{} ms (write budget {} ms); {} CPU(s) shared by servers and clients",
        args.heartbeat_ms,
        args.election_timeout_min_ms,
        args.election_timeout_max_ms,
        2 * args.election_timeout_min_ms,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    println!(
        "\n== AcquireFence throughput ({} s per row) ==",
        args.seconds
    );
    println!(
        "{:<8} {:<10} {:>9} {:>11} {:>9} {:>9} {:>7}",
        "clients", "target", "grants", "grants/s", "p50 ms", "p99 ms", "errors"
    );
    let mut rows: Vec<(usize, bool)> = args.clients.iter().map(|&n| (n, false)).collect();
    rows.push((16, true));
    warm_up(&cluster, leader, term).await;
    for (clients, via_followers) in rows {
        let targets: Vec<usize> = if via_followers {
            cluster.all().into_iter().filter(|&i| i != leader).collect()
        } else {
            vec![leader]
        };
        let row = throughput(
            &cluster,
            &targets,
            clients,
            term,
            Duration::from_secs(args.seconds),
        )
        .await;
        println!(
            "{:<8} {:<10} {:>9} {:>11.0} {:>9.2} {:>9.2} {:>7}",
            clients,
            if via_followers { "followers" } else { "leader" },
            row.grants,
            row.grants as f64 / row.elapsed.as_secs_f64(),
            millis(row.p50),
            millis(row.p99),
            row.errors.values().sum::<usize>()
        );
        for (outcome, count) in &row.errors {
            println!("         error x{count}: {outcome}");
        }
    }

    println!(
        "\n== Failover: kill -9 of the leader until a fence is granted again ({} runs) ==",
        args.failover_runs
    );
    let mut windows = Vec::new();
    for run in 1..=args.failover_runs {
        let (window, elected, (old, new)) = failover(&mut cluster, term).await;
        println!(
            "run {run}: fence again after {:>7.1} ms (a survivor said it leads after {:>7.1} ms; {old} -> {new})",
            millis(window),
            millis(elected)
        );
        windows.push(window);
    }
    if !windows.is_empty() {
        windows.sort();
        println!(
            "median {:.1} ms, range {:.1}-{:.1} ms",
            millis(windows[windows.len() / 2]),
            millis(windows[0]),
            millis(windows[windows.len() - 1])
        );
    }

    println!("\n== Minority write refusal: kill -9 2 of 3, then AcquireFence on the survivor ==");
    for isolated_leader in [true, false] {
        for run in 1..=args.minority_runs {
            let calls = minority(&mut cluster, term, isolated_leader).await;
            let shown: Vec<String> = calls
                .iter()
                .map(|(took, outcome)| format!("{:>7.1} ms {outcome}", millis(*took)))
                .collect();
            println!(
                "{} run {run}: first {} | next {} | typed NO_QUORUM {}",
                if isolated_leader {
                    "isolated leader  "
                } else {
                    "isolated follower"
                },
                shown[0],
                shown[1],
                shown[2]
            );
        }
    }
    cluster.kill_all();
}

/// A refusal in one short line: its ErrorDetail code (with k/n for
/// NO_QUORUM), or the gRPC code and message when it has no detail.
fn outcome_of(status: &tonic::Status) -> String {
    match rap_core::codes::error_detail(status) {
        Some(d) if d.code == "NO_QUORUM" => {
            format!("NO_QUORUM {}/{}", d.reachable_voters, d.total_voters)
        }
        Some(d) => d.code,
        None => format!("{:?} untyped: {}", status.code(), status.message()),
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn warm_up(cluster: &Cluster, leader: usize, term: u64) {
    let mut client = cluster.client(leader);
    for _ in 0..100 {
        acquire(&mut client, cluster.cluster_id.as_str(), term, "warm-up")
            .await
            .expect("warm-up fence");
    }
}

struct Row {
    grants: usize,
    errors: BTreeMap<String, usize>,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

/// `clients` concurrent loops of AcquireFence against `targets` (client k
/// talks to `targets[k % len]`) for `duration`.
async fn throughput(
    cluster: &Cluster,
    targets: &[usize],
    clients: usize,
    term: u64,
    duration: Duration,
) -> Row {
    let started = Instant::now();
    let deadline = started + duration;
    let mut handles = Vec::new();
    for k in 0..clients {
        let mut client = cluster.client(targets[k % targets.len()]);
        let cluster_id = cluster.cluster_id.to_string();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match acquire(&mut client, &cluster_id, term, "bench").await {
                    Ok(_) => latencies.push(t0.elapsed()),
                    Err(status) => errors.push(outcome_of(&status)),
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for (l, e) in join_all(handles).await {
        latencies.extend(l);
        for outcome in e {
            *errors.entry(outcome).or_default() += 1;
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |p: usize| -> Duration {
        if latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = (latencies.len() * p).div_ceil(100).max(1);
        latencies[rank - 1]
    };
    Row {
        grants: latencies.len(),
        errors,
        elapsed,
        p50: at(50),
        p99: at(99),
    }
}

/// Brings every node up and waits for a leader every node follows.
async fn heal(cluster: &mut Cluster) -> usize {
    cluster.start_all().await;
    cluster.wait_leader(&cluster.all()).await
}

/// One failover run: the window from kill -9 of the leader until a fence
/// is granted by a survivor, the time until a survivor reported itself
/// leader, and (old leader, new leader).
async fn failover(cluster: &mut Cluster, term: u64) -> (Duration, Duration, (String, String)) {
    let leader = heal(cluster).await;
    let old = cluster.nodes[leader].id.clone();
    let survivors: Vec<usize> = cluster.all().into_iter().filter(|&i| i != leader).collect();
    // Warm connections to the survivors, so the window is the group's.
    let mut clients: Vec<Client> = Vec::new();
    for &i in &survivors {
        let mut client = cluster.client(i);
        acquire(&mut client, cluster.cluster_id.as_str(), term, "warm-up")
            .await
            .expect("fence before the kill");
        clients.push(client);
    }
    let done = Arc::new(AtomicBool::new(false));
    let status_clients: Vec<(String, Client)> = survivors
        .iter()
        .map(|&i| (cluster.nodes[i].id.clone(), cluster.client(i)))
        .collect();
    cluster.kill(leader);
    let killed = Instant::now();
    // When a survivor first reports itself leader (Status every 5 ms).
    let cluster_id = cluster.cluster_id.to_string();
    let elected = tokio::spawn(async move {
        while killed.elapsed() < GUARD {
            for (id, client) in &status_clients {
                let mut client = client.clone();
                let request = rap_proto::pb::AuthorityStatusRequest {
                    cluster_id: cluster_id.clone(),
                };
                if let Ok(Ok(s)) =
                    tokio::time::timeout(Duration::from_secs(1), client.status(request)).await
                    && s.get_ref().leader_id == *id
                {
                    return Some(killed.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    });
    let mut handles = Vec::new();
    for mut client in clients {
        let cluster_id = cluster.cluster_id.to_string();
        let done = done.clone();
        handles.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) && killed.elapsed() < GUARD {
                let call = tokio::time::timeout(
                    Duration::from_secs(5),
                    acquire(&mut client, &cluster_id, term, "failover-probe"),
                );
                if let Ok(Ok(_)) = call.await {
                    done.store(true, Ordering::Relaxed);
                    return Some(killed.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            None
        }));
    }
    let window = join_all(handles)
        .await
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| panic!("no fence granted within {GUARD:?} of the kill"));
    let elected = join_all(vec![elected])
        .await
        .into_iter()
        .flatten()
        .next()
        .unwrap_or(GUARD);
    let new_leader = cluster.wait_leader(&survivors).await;
    (window, elected, (old, cluster.nodes[new_leader].id.clone()))
}

/// Kills 2 of 3 (both followers, or the leader and one follower) and times
/// two AcquireFence calls on the survivor: (duration, outcome) each.
async fn minority(
    cluster: &mut Cluster,
    term: u64,
    isolated_leader: bool,
) -> Vec<(Duration, String)> {
    let leader = heal(cluster).await;
    let survivor = if isolated_leader {
        leader
    } else {
        (leader + 1) % cluster.nodes.len()
    };
    let mut client = cluster.client(survivor);
    acquire(&mut client, cluster.cluster_id.as_str(), term, "warm-up")
        .await
        .expect("fence before the kill");
    for index in cluster.all() {
        if index != survivor {
            cluster.kill(index);
        }
    }
    let killed = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..2 {
        let t0 = Instant::now();
        let result = acquire(&mut client, cluster.cluster_id.as_str(), term, "minority").await;
        let took = t0.elapsed();
        let outcome = match result {
            Ok(fence) => format!("GRANTED seq {} (!)", fence.seq),
            Err(status) => outcome_of(&status),
        };
        calls.push((took, outcome));
    }
    // When the survivor's refusals become NO_QUORUM (typed).
    loop {
        let result = acquire(&mut client, cluster.cluster_id.as_str(), term, "minority").await;
        if let Err(status) = &result
            && code_of(status) == "NO_QUORUM"
        {
            calls.push((killed.elapsed(), "since the kill".to_string()));
            break;
        }
        assert!(killed.elapsed() < GUARD, "no NO_QUORUM within {GUARD:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    calls
}
