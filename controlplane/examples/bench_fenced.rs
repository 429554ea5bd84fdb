//! Fenced mutation latency (issue "p99 of a fenced mutation"): a real
//! PostgreSQL (rap-pgtest) and a real 3-voter authority group (in-process
//! rap-configstore nodes over mTLS), the same platform the tests use.
//! Each mutation is `service set` (desired state toggled): row lock on the
//! cluster's authority row, AcquireFence committed by Raft (fsync on each
//! voter), conditional fence check, the upsert and its audit event, one
//! transaction. `scripts/bench-fenced.sh` runs it on a durable PostgreSQL
//! (fsync and synchronous commit on, via `RAP_PLATFORM_DATABASE_URL`). Prints p50/p90/p99/max and mutations/s per concurrency;
//! and the bare AcquireFence latency for comparison.
//!
//! Run: `scripts/bench-fenced.sh` (release build) or
//! `cargo run --release -p rap-controlplane --example bench_fenced -- [N] [CONCURRENCY...]`.
#![allow(clippy::unwrap_used, missing_docs)]

use rap_controlplane::workloads;
use rap_proto::pb;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn report(label: &str, mut samples: Vec<Duration>, wall: Duration) {
    samples.sort();
    println!(
        "{label:<28} {:>6} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        samples.len(),
        samples.len() as f64 / wall.as_secs_f64(),
        percentile(&samples, 50.0),
        percentile(&samples, 90.0),
        percentile(&samples, 99.0),
        samples
            .last()
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let per_round: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(400);
    let concurrency: Vec<usize> = if args.len() > 1 {
        args[1..].iter().filter_map(|a| a.parse().ok()).collect()
    } else {
        vec![1, 4, 16]
    };
    eprintln!("starting PostgreSQL and a 3-voter authority group...");
    let p = Arc::new(rap_testkit::platform::Platform::start().await);
    let fsync: String = sqlx::query_scalar("SHOW fsync")
        .fetch_one(&p.ctx.pool)
        .await
        .unwrap();
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&p.ctx.pool)
        .await
        .unwrap();
    eprintln!("PostgreSQL fsync = {fsync}, synchronous_commit = {sync}");
    let nodes: Vec<String> = {
        let mut nodes = Vec::new();
        for _ in 0..16 {
            let node = p.enroll(&["can_run_rdp_worker"]).await;
            // A service runs only where its role is assigned.
            p.assign_role(&node, "rdp-worker").await;
            nodes.push(node);
        }
        nodes
    };
    let peers = p.storage_peers().await;

    println!(
        "{:<28} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "what", "ops", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    // Bare fence (no PostgreSQL) for comparison.
    let mut fences = Vec::new();
    let started = Instant::now();
    for _ in 0..per_round {
        let t = Instant::now();
        p.ctx
            .authority
            .acquire_fence(&p.cluster, &peers, 1, "bench")
            .await
            .unwrap();
        fences.push(t.elapsed());
    }
    report("AcquireFence (1 client)", fences, started.elapsed());

    for &clients in &concurrency {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let p = p.clone();
            let node = nodes[c % nodes.len()].clone();
            let ops = per_round / clients;
            tasks.push(tokio::spawn(async move {
                let mut samples = Vec::with_capacity(ops);
                for i in 0..ops {
                    let request = pb::SetServiceDesiredStateRequest {
                        cluster_id: p.cluster.clone(),
                        node_id: node.clone(),
                        service: "rdp-worker".into(),
                        desired_state: if i % 2 == 0 { "enabled" } else { "disabled" }.into(),
                    };
                    let t = Instant::now();
                    workloads::set_desired_state(&p.ctx, &p.owner, &request)
                        .await
                        .unwrap();
                    samples.push(t.elapsed());
                }
                samples
            }));
        }
        let mut samples = Vec::new();
        for task in tasks {
            samples.extend(task.await.unwrap());
        }
        report(
            &format!("fenced mutation ({clients} clients)"),
            samples,
            started.elapsed(),
        );
    }
    let audited = p.count("SELECT count(*) FROM cluster_audit_events WHERE action = 'service.desired-state' AND result = 'ok' AND fence_seq IS NOT NULL").await;
    println!("audit events with a fence: {audited}");
}
