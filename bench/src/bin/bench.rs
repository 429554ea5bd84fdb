//! rap side by side with etcd, run by `scripts/bench.sh` (benchmarks are
//! scripts that print figures; no test asserts speed).
//!
//! One system runs at a time on 127.0.0.1, driven by the same load
//! generator (`rap_bench::load`) at the same concurrency, each client on
//! its own connection:
//!
//! * rap: 3 `rap-configstore` voters, mTLS, redb with an fsync per log append;
//! * etcd: 3 members, plaintext, then 3 members with mutual TLS on client
//!   and peer URLs (rap's set-up), so the cost of TLS is its own column.
//!
//! It prints the machine's floors, then one table: each measurement for
//! both systems and the ratio rap / etcd (mTLS) with which direction is
//! better. Clients and servers share the machine's cores: the figures are
//! for this loopback set-up, not for a deployment.

use clap::Parser;
use rap_bench::etcd::{EtcdCluster, Tls};
use rap_bench::floors;
use rap_bench::load::{self, Row, percentile};
use rap_bench::rap::{self as rap_side, Agents, FenceOp, PublishOp};
use rap_bench::{CommonArgs, millis};
use rap_testkit::cluster::Timing;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// rap vs etcd benchmark (see the module docs).
#[derive(Parser, Debug)]
struct Args {
    /// The rap-configstore binary (default: next to this driver).
    #[arg(long)]
    rap_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
    /// Concurrent writers of 64 KiB values, comma-separated.
    #[arg(long, default_value = "1,16", value_delimiter = ',')]
    big_clients: Vec<usize>,
    /// Concurrent readers, comma-separated.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    readers: Vec<usize>,
    /// Watchers of the fan-out.
    #[arg(long, default_value_t = 200)]
    watchers: usize,
    /// Updates of the fan-out.
    #[arg(long, default_value_t = 1000)]
    updates: u64,
    /// Client deadline of a put in an etcd minority (seconds).
    #[arg(long, default_value_t = 10)]
    etcd_deadline_s: u64,
    /// Samples of each floor.
    #[arg(long, default_value_t = 2000)]
    floor_samples: usize,
}

/// Size of a small value (etcd) and of the shard bodies read and watched.
const SMALL: usize = 256;
/// Size of a big value and of a big shard's body.
const BIG: usize = 64 * 1024;
/// Watch streams per connection (etcd) and per node identity (rap).
const STREAMS_PER_CONNECTION: usize = 10;
/// Heartbeat of both systems (ms).
const HEARTBEAT_MS: u64 = 100;
/// Election timeout of etcd (ms; it draws from [T, 2T)).
const ETCD_ELECTION_MS: u64 = 1000;
/// Election timeout range of rap (ms).
const RAP_ELECTION_MS: (u64, u64) = (500, 1000);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rap_bin = rap_bench::rap_configstore(args.rap_bin.as_deref())?;
    anyhow::ensure!(
        args.etcd_bin.exists(),
        "{} does not exist",
        args.etcd_bin.display()
    );
    let work_dir = args.common.work_dir.clone();
    rap_bench::run_driver(&work_dir, bench(args, rap_bin))?
}

/// One system's figures.
#[derive(Default)]
struct Figures {
    /// fsync latencies sampled while the write rows ran (sorted at the end).
    fsync_during_writes: Vec<Duration>,
    small: Vec<(usize, Row)>,
    big: Vec<(usize, Row)>,
    reads: Vec<(usize, Row)>,
    fanout: Option<(Vec<Duration>, u64)>,
    failover: Vec<Duration>,
    /// (isolated leader?, duration, outcome) per run: the first write.
    minority: Vec<(bool, Duration, String)>,
    /// rap only: every run's calls in full (first, next, typed NO_QUORUM).
    minority_detail: Vec<(bool, Vec<(Duration, String)>)>,
}

async fn bench(args: Args, rap_bin: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    let pids = args.common.work_dir.join("pids");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "rap vs etcd on 127.0.0.1: 3 voters/members each, one system at a time; {cpus} CPU(s) shared by servers and clients"
    );
    println!(
        "rap: rap-configstore, mTLS, redb (an fsync per log append; fences group-committed), heartbeat {HEARTBEAT_MS} ms, election {}-{} ms",
        RAP_ELECTION_MS.0, RAP_ELECTION_MS.1
    );
    println!(
        "etcd: {}, heartbeat {HEARTBEAT_MS} ms, election {ETCD_ELECTION_MS} ms; plaintext, and mutual TLS on client and peer URLs",
        etcd_version(&args.etcd_bin)
    );
    println!(
        "{} s per throughput row; each client its own connection; writes go to the leader, reads round-robin over the 3 members\n",
        args.common.seconds
    );

    let tls = Tls::create(&args.common.work_dir.join("etcd-tls"))?;
    let mut loads = Vec::new();

    section(&started, "floors", &args.common.work_dir, &mut loads);
    let floor = Floors::measure(&args, &tls).await?;

    section(&started, "rap", &args.common.work_dir, &mut loads);
    let rap = rap_figures(&args, &rap_bin, &pids).await?;

    section(
        &started,
        "etcd (plaintext)",
        &args.common.work_dir,
        &mut loads,
    );
    let etcd_plain = etcd_figures(&args, None, &pids, false).await?;

    section(&started, "etcd (mTLS)", &args.common.work_dir, &mut loads);
    let etcd_tls = etcd_figures(&args, Some(tls), &pids, true).await?;

    print_table(&args, &floor, &rap, &etcd_tls, &etcd_plain);
    println!(
        "* at the start of each part (1-min load average, fsync of 4 KiB p50 over 200 samples): {}",
        loads.join(", ")
    );
    println!("\nwhole run: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Says on stderr which part starts, and notes the load average and a
/// short fsync sample (the disk is shared with whatever else runs).
fn section(started: &Instant, name: &str, work_dir: &Path, loads: &mut Vec<String>) {
    let load = floors::load_average();
    let fsync = floors::fsync_4k(work_dir, 200)
        .map(|l| format!("{:.2} ms", millis(percentile(&l, 50))))
        .unwrap_or_else(|e| format!("? ({e})"));
    eprintln!(
        "[{:>5.0} s] {name} (load average {load}, fsync 4 KiB p50 {fsync})",
        started.elapsed().as_secs_f64()
    );
    loads.push(format!("{name}: load {load}, fsync p50 {fsync}"));
}

fn etcd_version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "etcd".to_string())
}

/// The machine's floors.
struct Floors {
    fsync: Vec<Duration>,
    tcp: Vec<Duration>,
    grpc: Vec<Duration>,
    grpc_tls: Vec<Duration>,
}

impl Floors {
    async fn measure(args: &Args, tls: &Tls) -> anyhow::Result<Floors> {
        let samples = args.floor_samples;
        let fsync = floors::fsync_4k(&args.common.work_dir, samples / 2)?;
        let tcp = floors::tcp_rtt(samples).await?;
        let grpc = floors::grpc_rtt(samples, None).await?;
        let server = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &tls.server_pem.0,
                &tls.server_pem.1,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(&tls.ca_pem));
        let grpc_tls = floors::grpc_rtt(samples, Some((server, tls.client_config()))).await?;
        Ok(Floors {
            fsync,
            tcp,
            grpc,
            grpc_tls,
        })
    }
}

async fn rap_figures(args: &Args, bin: &Path, pids: &Path) -> anyhow::Result<Figures> {
    let timing = Timing {
        heartbeat_ms: HEARTBEAT_MS,
        election_min_ms: RAP_ELECTION_MS.0,
        election_max_ms: RAP_ELECTION_MS.1,
    };
    let (mut cluster, leader, term) =
        rap_side::start(bin, &args.common.work_dir, pids, timing).await;
    let duration = Duration::from_secs(args.common.seconds);
    let mut figures = Figures::default();
    rap_side::warm_up(&cluster, leader, term).await;

    for &n in &args.common.clients {
        let ops = (0..n)
            .map(|_| FenceOp::new(&cluster, leader, term))
            .collect();
        let probe = floors::FsyncProbe::start(&args.common.work_dir)?;
        let row = load::run(ops, duration).await;
        figures.fsync_during_writes.extend(probe.finish());
        figures.small.push((n, row));
    }

    let sealer = Arc::new(cluster.sealer());
    let fence = rap_side::fence(&cluster, leader, term).await;
    let body = vec![0x42; BIG];
    for &n in &args.big_clients {
        let ops: Vec<PublishOp> = (0..n)
            .map(|k| {
                PublishOp::new(
                    &cluster,
                    sealer.clone(),
                    leader,
                    fence.clone(),
                    format!("role/bench-big-{n}-{k}"),
                    body.clone(),
                )
            })
            .collect();
        let probe = floors::FsyncProbe::start(&args.common.work_dir)?;
        let row = load::run(ops, duration).await;
        figures.fsync_during_writes.extend(probe.finish());
        figures.big.push((n, row));
    }

    let mut publisher = PublishOp::new(
        &cluster,
        sealer,
        leader,
        fence,
        "role/bench-read".into(),
        vec![0x42; SMALL],
    );
    publisher
        .publish_next()
        .await
        .expect("publish the read shard");
    let agents = Agents::new(&cluster);
    // Every node has applied it before the readers start.
    for index in cluster.all() {
        let mut op = agents.read_op(&cluster, "reader", index, "role/bench-read");
        let since = Instant::now();
        while let Err(e) = load::repeat(&mut op, 1).await {
            assert!(
                since.elapsed() < rap_bench::GUARD,
                "the read shard is not applied on node {index}: {e}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for &n in &args.readers {
        let ops = (0..n)
            .map(|k| agents.read_op(&cluster, "reader", k % 3, "role/bench-read"))
            .collect();
        figures.reads.push((n, load::run(ops, duration).await));
    }

    figures.fanout = Some(
        rap_side::fanout(
            &cluster,
            leader,
            term,
            args.watchers,
            STREAMS_PER_CONNECTION,
            args.updates,
            &[0x42; SMALL],
        )
        .await,
    );

    for run in 1..=args.common.failover_runs {
        let (window, _elected, (old, new)) = rap_side::failover(&mut cluster, term).await;
        eprintln!(
            "  rap failover {run}: {:.0} ms ({old} -> {new})",
            millis(window)
        );
        figures.failover.push(window);
    }
    for isolated_leader in [true, false] {
        for _ in 0..args.common.minority_runs {
            let calls = rap_side::minority(&mut cluster, term, isolated_leader).await;
            let (took, outcome) = calls[0].clone();
            figures.minority.push((isolated_leader, took, outcome));
            figures.minority_detail.push((isolated_leader, calls));
        }
    }
    cluster.kill_all();
    Ok(figures)
}

async fn etcd_figures(
    args: &Args,
    tls: Option<Tls>,
    pids: &Path,
    scenarios: bool,
) -> anyhow::Result<Figures> {
    let name = if tls.is_some() {
        "etcd-tls"
    } else {
        "etcd-plain"
    };
    let mut cluster = EtcdCluster::new(
        &args.etcd_bin,
        &args.common.work_dir.join(name),
        tls,
        pids,
        HEARTBEAT_MS,
        ETCD_ELECTION_MS,
    )?;
    let leader = cluster.heal().await?;
    let duration = Duration::from_secs(args.common.seconds);
    let mut figures = Figures::default();
    let mut warm = cluster.put_op(leader, "small", vec![0x42; SMALL]);
    load::repeat(&mut warm, 100)
        .await
        .map_err(anyhow::Error::msg)?;

    for &n in &args.common.clients {
        let ops = (0..n)
            .map(|_| cluster.put_op(leader, "small", vec![0x42; SMALL]))
            .collect();
        let probe = floors::FsyncProbe::start(&args.common.work_dir)?;
        let row = load::run(ops, duration).await;
        figures.fsync_during_writes.extend(probe.finish());
        figures.small.push((n, row));
    }
    for &n in &args.big_clients {
        let ops = (0..n)
            .map(|k| cluster.put_op(leader, &format!("big-{k}"), vec![0x42; BIG]))
            .collect();
        let probe = floors::FsyncProbe::start(&args.common.work_dir)?;
        let row = load::run(ops, duration).await;
        figures.fsync_during_writes.extend(probe.finish());
        figures.big.push((n, row));
    }
    let mut put = cluster.put_op(leader, "read", vec![0x42; SMALL]);
    load::repeat(&mut put, 1)
        .await
        .map_err(anyhow::Error::msg)?;
    // Every member has applied it before the readers start (a
    // serializable get answers from the member's own state).
    for index in 0..3 {
        let mut op = cluster.get_op(index, "read");
        load::repeat(&mut op, 1).await.map_err(anyhow::Error::msg)?;
    }
    for &n in &args.readers {
        let ops = (0..n).map(|k| cluster.get_op(k % 3, "read")).collect();
        figures.reads.push((n, load::run(ops, duration).await));
    }
    figures.fanout = Some(
        cluster
            .fanout(
                leader,
                args.watchers,
                STREAMS_PER_CONNECTION,
                args.updates,
                SMALL,
            )
            .await?,
    );

    if scenarios {
        for run in 1..=args.common.failover_runs {
            let (window, _elected, (old, new)) = cluster.failover().await?;
            eprintln!(
                "  etcd failover {run}: {:.0} ms ({old} -> {new})",
                millis(window)
            );
            figures.failover.push(window);
        }
        let deadline = Duration::from_secs(args.etcd_deadline_s);
        for isolated_leader in [true, false] {
            for _ in 0..args.common.minority_runs {
                let (took, outcome) = cluster.minority(isolated_leader, deadline).await?;
                eprintln!(
                    "  etcd minority (isolated {}): {:.0} ms {outcome}",
                    if isolated_leader {
                        "leader"
                    } else {
                        "follower"
                    },
                    millis(took)
                );
                figures.minority.push((isolated_leader, took, outcome));
            }
        }
    }
    cluster.kill_all();
    Ok(figures)
}

/// Which direction of a figure is better.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

/// One line of the table: the figure of rap, etcd (mTLS) and etcd
/// (plaintext), `None` where not measured.
struct Line {
    label: String,
    rap: Option<f64>,
    etcd_tls: Option<f64>,
    etcd_plain: Option<f64>,
    better: Better,
    decimals: usize,
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

fn print_line(line: &Line) {
    let (ratio, verdict) = match (line.rap, line.etcd_tls) {
        (Some(r), Some(e)) if e > 0.0 => {
            let ratio = r / e;
            let rap_wins = match line.better {
                Better::Higher => ratio > 1.0,
                Better::Lower => ratio < 1.0,
            };
            let direction = match line.better {
                Better::Higher => "higher",
                Better::Lower => "lower",
            };
            let winner = if (ratio - 1.0).abs() < 0.05 {
                "even"
            } else if rap_wins {
                "rap"
            } else {
                "etcd"
            };
            (format!("{ratio:.2}x"), format!("{direction}: {winner}"))
        }
        _ => ("-".to_string(), String::new()),
    };
    println!(
        "{:<38} {:>10} {:>10} {:>10} {:>9}  {}",
        line.label,
        cell(line.rap, line.decimals),
        cell(line.etcd_tls, line.decimals),
        cell(line.etcd_plain, line.decimals),
        ratio,
        verdict
    );
}

/// Lines for rows measured at several concurrencies: ops/s, p50, p99.
fn load_lines(
    what: &str,
    rap: &[(usize, Row)],
    etcd_tls: &[(usize, Row)],
    etcd_plain: &[(usize, Row)],
) -> Vec<Line> {
    let find = |rows: &[(usize, Row)], n: usize| -> Option<Row> {
        rows.iter().find(|(k, _)| *k == n).map(|(_, r)| r.clone())
    };
    let mut lines = Vec::new();
    for (n, _) in rap {
        let rows = [find(rap, *n), find(etcd_tls, *n), find(etcd_plain, *n)];
        let metric = |f: &dyn Fn(&Row) -> f64| -> [Option<f64>; 3] {
            [
                rows[0].as_ref().map(f),
                rows[1].as_ref().map(f),
                rows[2].as_ref().map(f),
            ]
        };
        for (suffix, values, better, decimals) in [
            ("ops/s", metric(&|r| r.per_sec()), Better::Higher, 0),
            ("p50 ms", metric(&|r| millis(r.p(50))), Better::Lower, 2),
            ("p99 ms", metric(&|r| millis(r.p(99))), Better::Lower, 2),
        ] {
            lines.push(Line {
                label: format!("{what}, {n:>2} cl: {suffix}"),
                rap: values[0],
                etcd_tls: values[1],
                etcd_plain: values[2],
                better,
                decimals,
            });
        }
    }
    lines
}

fn print_table(
    args: &Args,
    floor: &Floors,
    rap: &Figures,
    etcd_tls: &Figures,
    etcd_plain: &Figures,
) {
    let (f50, f99) = floors::p50_p99(&floor.fsync);
    let (t50, t99) = floors::p50_p99(&floor.tcp);
    let (g50, g99) = floors::p50_p99(&floor.grpc);
    let (s50, s99) = floors::p50_p99(&floor.grpc_tls);
    println!("== Machine floors (same run) ==");
    println!(
        "fsync of 4 KiB (write + fdatasync, {} samples): p50 {:.3} ms, p99 {:.3} ms",
        floor.fsync.len(),
        millis(f50),
        millis(f99)
    );
    println!(
        "loopback TCP round trip (1 byte):             p50 {:.3} ms, p99 {:.3} ms",
        millis(t50),
        millis(t99)
    );
    println!(
        "empty gRPC round trip, plaintext:             p50 {:.3} ms, p99 {:.3} ms",
        millis(g50),
        millis(g99)
    );
    println!(
        "empty gRPC round trip, mutual TLS:            p50 {:.3} ms, p99 {:.3} ms",
        millis(s50),
        millis(s99)
    );

    println!("\n== rap vs etcd ==");
    println!(
        "{:<38} {:>10} {:>10} {:>10} {:>9}  better",
        "measurement", "rap mTLS", "etcd mTLS", "etcd plain", "rap/etcd"
    );
    println!("{}", "-".repeat(100));
    let mut lines = Vec::new();
    lines.extend(load_lines(
        "write 256B  (put | AcquireFence)",
        &rap.small,
        &etcd_tls.small,
        &etcd_plain.small,
    ));
    lines.extend(load_lines(
        "write 64KiB (put | PublishShards)",
        &rap.big,
        &etcd_tls.big,
        &etcd_plain.big,
    ));
    lines.extend(load_lines(
        "read 256B   (serial. get | GetShard)",
        &rap.reads,
        &etcd_tls.reads,
        &etcd_plain.reads,
    ));
    let fan = |f: &Figures, p: usize| f.fanout.as_ref().map(|(l, _)| millis(percentile(l, p)));
    let missing = |f: &Figures| f.fanout.as_ref().map(|(_, m)| *m as f64);
    let fan_label = format!("fan-out {}w x {}u", args.watchers, args.updates);
    for (suffix, p) in [("notify p50 ms", 50), ("notify p99 ms", 99)] {
        lines.push(Line {
            label: format!("{fan_label}: {suffix}"),
            rap: fan(rap, p),
            etcd_tls: fan(etcd_tls, p),
            etcd_plain: fan(etcd_plain, p),
            better: Better::Lower,
            decimals: 2,
        });
    }
    lines.push(Line {
        label: format!("{fan_label}: not delivered"),
        rap: missing(rap),
        etcd_tls: missing(etcd_tls),
        etcd_plain: missing(etcd_plain),
        better: Better::Lower,
        decimals: 0,
    });
    let sorted = |f: &Figures| {
        let mut v = f.failover.clone();
        v.sort();
        v
    };
    let (rap_fo, etcd_fo) = (sorted(rap), sorted(etcd_tls));
    let runs = args.common.failover_runs;
    for (suffix, pick) in [("median ms", 0usize), ("min ms", 1), ("max ms", 2)] {
        let at = |v: &[Duration]| -> Option<f64> {
            if v.is_empty() {
                return None;
            }
            let d = match pick {
                0 => v[v.len() / 2],
                1 => v[0],
                _ => v[v.len() - 1],
            };
            Some(millis(d))
        };
        lines.push(Line {
            label: format!("failover, kill -9 leader ({runs} runs): {suffix}"),
            rap: at(&rap_fo),
            etcd_tls: at(&etcd_fo),
            etcd_plain: None,
            better: Better::Lower,
            decimals: 0,
        });
    }
    for isolated_leader in [true, false] {
        let median = |f: &Figures| -> Option<f64> {
            let mut v: Vec<Duration> = f
                .minority
                .iter()
                .filter(|(l, _, _)| *l == isolated_leader)
                .map(|(_, d, _)| *d)
                .collect();
            v.sort();
            v.get(v.len() / 2).map(|d| millis(*d))
        };
        lines.push(Line {
            label: format!(
                "minority write -> error, {}: ms",
                if isolated_leader {
                    "isol. leader"
                } else {
                    "isol. follower"
                }
            ),
            rap: median(rap),
            etcd_tls: median(etcd_tls),
            etcd_plain: None,
            better: Better::Lower,
            decimals: 0,
        });
    }
    for line in &lines {
        print_line(line);
    }

    println!("\nnotes:");
    println!(
        "* rap/etcd compares rap with etcd under mutual TLS (both encrypt and authenticate clients and peers); 'higher: rap' means the higher figure is better and rap has it"
    );
    println!(
        "* rap writes: AcquireFence = one durable Raft entry; PublishShards = one 64 KiB envelope sealed (ed25519) by the client and published under a fence acquired once"
    );
    println!(
        "* failover: from kill -9 of the leader until a write succeeds on a survivor; minority: median of {} run(s), the first write on the survivor after kill -9 of the other two (etcd with a {} s client deadline)",
        args.common.minority_runs, args.etcd_deadline_s
    );
    let during: Vec<String> = [
        ("rap", rap),
        ("etcd mTLS", etcd_tls),
        ("etcd plain", etcd_plain),
    ]
    .iter()
    .map(|(name, figures)| {
        let mut samples = figures.fsync_during_writes.clone();
        samples.sort();
        let (p50, p99) = floors::p50_p99(&samples);
        format!(
            "{name} p50 {:.2} ms, p99 {:.2} ms ({} samples)",
            millis(p50),
            millis(p99),
            samples.len()
        )
    })
    .collect();
    println!(
        "* fsync of 4 KiB every 20 ms beside the write rows (the disk as the system saw it): {}",
        during.join("; ")
    );
    for (name, figures) in [("rap", rap), ("etcd mTLS", etcd_tls)] {
        let outcomes: Vec<String> = figures
            .minority
            .iter()
            .map(|(l, d, o)| {
                format!(
                    "{} {:.0} ms: {o}",
                    if *l { "leader" } else { "follower" },
                    millis(*d)
                )
            })
            .collect();
        println!("* minority, {name} said: {}", outcomes.join(" | "));
    }
    for (isolated_leader, calls) in &rap.minority_detail {
        let shown: Vec<String> = calls
            .iter()
            .map(|(took, outcome)| format!("{:.0} ms {outcome}", millis(*took)))
            .collect();
        println!(
            "* minority, rap isolated {}: first {} | next {} | typed NO_QUORUM {}",
            if *isolated_leader {
                "leader"
            } else {
                "follower"
            },
            shown.first().map_or("-", String::as_str),
            shown.get(1).map_or("-", String::as_str),
            shown.get(2).map_or("-", String::as_str),
        );
    }
    for (name, figures) in [
        ("rap", rap),
        ("etcd mTLS", etcd_tls),
        ("etcd plain", etcd_plain),
    ] {
        for (what, rows) in [
            ("write 256B", &figures.small),
            ("write 64KiB", &figures.big),
            ("read", &figures.reads),
        ] {
            for (n, row) in rows {
                for (error, count) in &row.errors {
                    println!("* {name} {what} at {n} clients: error x{count}: {error}");
                }
            }
        }
    }
}
