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
use rap_bench::rap::{failover, minority, print_row, throughput, warm_up};
use rap_bench::{CommonArgs, millis};
use rap_testkit::cluster::Timing;
use std::path::PathBuf;
use std::time::Duration;

/// Authority group benchmark (see the module docs).
#[derive(Parser, Debug)]
struct Args {
    /// The rap-configstore binary (default: next to this driver, i.e.
    /// target/<profile>/rap-configstore).
    #[arg(long)]
    bin: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = rap_bench::rap_configstore(args.bin.as_deref())?;
    let work_dir = args.common.work_dir.clone();
    rap_bench::run_driver(&work_dir, bench(args, bin))
}

async fn bench(args: Args, bin: PathBuf) {
    let timing = Timing {
        heartbeat_ms: args.heartbeat_ms,
        election_min_ms: args.election_timeout_min_ms,
        election_max_ms: args.election_timeout_max_ms,
    };
    let (mut cluster, leader, term) = rap_bench::rap::start(
        &bin,
        &args.common.work_dir,
        &args.common.work_dir.join("pids"),
        timing,
    )
    .await;
    println!(
        "rap-configstore authority benchmark: 3 voters on 127.0.0.1, mTLS, redb (an fsync per log append; fences group-committed)"
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
        args.common.seconds
    );
    println!(
        "{:<8} {:<10} {:>9} {:>11} {:>9} {:>9} {:>7}",
        "clients", "target", "grants", "grants/s", "p50 ms", "p99 ms", "errors"
    );
    let mut rows: Vec<(usize, bool)> = args.common.clients.iter().map(|&n| (n, false)).collect();
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
            Duration::from_secs(args.common.seconds),
        )
        .await;
        let target = if via_followers { "followers" } else { "leader" };
        print_row(clients, target, &row);
    }

    println!(
        "\n== Failover: kill -9 of the leader until a fence is granted again ({} runs) ==",
        args.common.failover_runs
    );
    let mut windows = Vec::new();
    for run in 1..=args.common.failover_runs {
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
        for run in 1..=args.common.minority_runs {
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
