//! The agent's figures (issue "rap-node-agent run"), printed, never
//! asserted: `scripts/bench-agent.sh`.
//!
//! The real `rap-node-agent` binary, joined to the platform the tests use
//! (PostgreSQL, the served control plane with its publisher, 3 voters and
//! the cache replicas as `rap-configstore` processes), then:
//!
//! 1. steady state: the agent's RSS (`VmRSS`) and CPU over
//!    [`STEADY_SECONDS`] while it holds its scopes, watches and heartbeats;
//! 2. role → workload: [`ROLE_RUNS`] times, the `relay-node` role removed
//!    (synthetic-echo stops), then assigned again (fenced call) and the
//!    time until the echo port answers;
//! 3. read failover: [`FAILOVER_RUNS`] times a cache replica is started
//!    for the node, the agent reads from it, the cache process gets
//!    SIGKILL (`kill -9`), and the time until the agent's next successful
//!    read from another node (then the cache is retired, so the next run's
//!    cache is the only one).
#![allow(clippy::unwrap_used, missing_docs)]

use rap_controlplane::enrollment;
use rap_controlplane::keys::ClusterKeys;
use rap_proto::ids::ClusterId;
use rap_proto::pb;
use rap_testkit::platform::{Platform, StorageMode};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEADY_SECONDS: u64 = 10;
const ROLE_RUNS: usize = 20;
const FAILOVER_RUNS: usize = 5;
const GUARD: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_rap-node-agent-under-test");
const STORAGE_BIN: &str = env!("CARGO_BIN_EXE_rap-configstore-under-test");

fn status(state: &Path) -> serde_json::Value {
    std::fs::read(state.join("c1").join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

async fn until(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    until_in(None, what, &mut check).await
}

/// [`until`], printing `state`'s status if it hangs.
async fn until_in(state: Option<&Path>, what: &str, check: &mut dyn FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        if started.elapsed() >= GUARD {
            if let Some(state) = state {
                eprintln!("{:#}", status(state));
            }
            panic!("hang guard: {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

async fn echoes(address: &str) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
        return false;
    };
    if stream.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer).await.is_ok() && &answer == b"ping"
}

/// (utime + stime) clock ticks and VmRSS kB of `pid`.
fn usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[at].as_secs_f64() * 1000.0
}

fn echo_observed(state: &Path) -> String {
    status(state)["workloads"]
        .as_array()
        .and_then(|all| all.iter().find(|w| w["service"] == "synthetic-echo"))
        .map(|w| format!("{}|{}", w["observed"], w["detail"]))
        .unwrap_or_default()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    eprintln!("starting PostgreSQL, the control plane and 3 voters...");
    let p = Platform::start_with("c1", StorageMode::Processes(STORAGE_BIN.into())).await;
    let server = p.serve().await;
    let keys = ClusterKeys::load(&p.ctx.keys_dir, &ClusterId::new("c1").unwrap()).unwrap();
    let token = p.token(1).await;
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path();
    let mut join = tokio::process::Command::new(BIN)
        .args([
            "join",
            "--server",
            &server.addr.to_string(),
            "--cluster",
            "c1",
            "--token",
            &token,
            "--ca-fingerprint",
            &keys.ca_fingerprint(),
            "--capability",
            "can_route_mesh",
            "--poll-interval",
            "100ms",
            "--wait",
            "60s",
        ])
        .env("RAP_AGENT_STATE_DIR", state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let request = loop {
        let (requests, _) = enrollment::list(
            &p.ctx,
            &p.owner,
            &pb::ListJoinRequestsRequest {
                cluster_id: "c1".into(),
                status: pb::JoinRequestStatus::Pending as i32,
                page: None,
            },
        )
        .await
        .unwrap();
        if let Some(r) = requests.into_iter().next() {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    enrollment::approve(
        &p.ctx,
        &p.owner,
        &pb::ReviewJoinRequestRequest {
            join_request_id: request.join_request_id,
            node_id: "node-a".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(join.wait().await.unwrap().success());
    p.assign_role("node-a", "relay-node").await;
    p.set_service("node-a", "synthetic-echo", "enabled").await;
    p.wait_for_publisher().await;

    let agent = tokio::process::Command::new(BIN)
        .args(["run", "--cluster", "c1"])
        .env("RAP_AGENT_STATE_DIR", state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = agent.id().unwrap();
    until("the agent runs synthetic-echo", || {
        echo_observed(state).starts_with("\"running\"")
    })
    .await;

    // 1. Steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks_per_s = 100.0; // Linux USER_HZ
    let (t0, _) = usage(pid);
    let started = Instant::now();
    let mut rss_max = 0;
    while started.elapsed() < Duration::from_secs(STEADY_SECONDS) {
        rss_max = rss_max.max(usage(pid).1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (t1, rss) = usage(pid);
    let cpu = (t1 - t0) as f64 / ticks_per_s / started.elapsed().as_secs_f64() * 100.0;
    println!(
        "agent at steady state ({} scopes, watching, heartbeats, synthetic-echo running): RSS {:.1} MiB (max {:.1} MiB), CPU {cpu:.2}% over {STEADY_SECONDS} s",
        status(state)["scopes"].as_object().map_or(0, |s| s.len()),
        rss as f64 / 1024.0,
        rss_max as f64 / 1024.0,
    );

    // 2. Role → workload answering.
    let mut samples = Vec::with_capacity(ROLE_RUNS);
    for _ in 0..ROLE_RUNS {
        p.remove_role("node-a", "relay-node").await;
        until("synthetic-echo stops", || {
            echo_observed(state).starts_with("\"stopped\"")
        })
        .await;
        let started = Instant::now();
        p.assign_role("node-a", "relay-node").await;
        loop {
            let observed = echo_observed(state);
            if let Some(address) = observed
                .split_once("listening on ")
                .map(|(_, a)| a.trim_end_matches('"').to_string())
                && observed.starts_with("\"running\"")
                && echoes(&address).await
            {
                break;
            }
            assert!(
                started.elapsed() < GUARD,
                "hang guard: synthetic-echo answers"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    println!(
        "role assigned → synthetic-echo answering, {ROLE_RUNS} runs: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (fenced assign, publisher pass, watch, apply, listen)",
        quantile(&samples, 0.5),
        quantile(&samples, 0.99),
        quantile(&samples, 1.0)
    );

    // 3. Read failover.
    let mut failovers = Vec::with_capacity(FAILOVER_RUNS);
    for run in 0..FAILOVER_RUNS {
        let cache = format!("k{run}");
        p.start_cache(&cache, "zone-s1").await;
        until_in(Some(state), "the agent reads from the cache", &mut || {
            let s = status(state);
            s["endpoints"][0]["endpoint"]["node_id"] == cache.as_str()
                && s["endpoints"][0]["rtt_ms"].is_number()
                && s["endpoints"][0]["failures"] == 0
        })
        .await;
        let stopped_at = rap_proto::time::UnixMillis::now().0;
        let started = Instant::now();
        p.kill_storage(&cache).await;
        until("a read from another node", || {
            let s = status(state);
            s["last_answer"]["node_id"] != cache.as_str()
                && s["last_answer"]["at_unix_ms"].as_i64().unwrap_or(0) >= stopped_at
        })
        .await;
        failovers.push(started.elapsed());
        // Retired, so that the next run's cache is the node's only one.
        rap_controlplane::caches::remove(
            &p.ctx,
            &p.owner,
            &pb::RemoveCacheReplicaRequest {
                cluster_id: "c1".into(),
                node_id: cache.clone(),
            },
        )
        .await
        .unwrap();
        p.wait_for_publisher().await;
    }
    failovers.sort();
    println!(
        "read failover after kill -9 of the serving cache replica, {FAILOVER_RUNS} runs: p50 {:.0} ms, max {:.0} ms (to the next successful read from another storage node)",
        quantile(&failovers, 0.5),
        quantile(&failovers, 1.0)
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average: {}", load.trim());
}
