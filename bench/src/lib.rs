//! Benchmark drivers of the workspace (benchmarks are scripts that print
//! figures; no test asserts speed):
//!
//! * `bench` (run by `scripts/bench.sh`): rap side by side with etcd on
//!   127.0.0.1, the same load generator and concurrency for both, one
//!   table with the ratio;
//! * `bench-authority` (run by `scripts/bench-authority.sh`): the
//!   authority group alone, in more detail.
//!
//! The library holds what both share: the load generator ([`load`]), the
//! rap side ([`rap`]: fences, publications, reads, watches, failover and
//! minority on a `rap_testkit::cluster::Cluster`), the etcd side
//! ([`etcd`]: a 3-member etcd cluster of processes and the same
//! measurements) and the machine's floors ([`floors`]).
//!
//! Driver code: it fails with a message (anyhow, or a panic from the test
//! kit) on anything unexpected.

pub mod etcd;
pub mod fanout;
pub mod floors;
pub mod load;
pub mod rap;

/// Generated from `proto/etcd.proto`: the subset of etcd's v3 API used.
#[allow(missing_docs, clippy::all)]
pub mod etcdpb {
    tonic::include_proto!("etcdserverpb");
}

/// Generated from `proto/ping.proto`: an empty unary call.
#[allow(missing_docs, clippy::all)]
pub mod pingpb {
    tonic::include_proto!("bench.ping");
}

use std::time::Duration;

/// Bounds every loop that waits for a cluster.
pub const GUARD: Duration = Duration::from_secs(30);

/// How often a failover probe starts a write on each survivor.
pub const PROBE_EVERY: Duration = Duration::from_millis(10);
/// The deadline of each failover probe's write.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// `d` in milliseconds.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The arguments both drivers take.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Directory for the clusters (certificates, data, logs) and the pid
    /// file `pids` the script's cleanup reads.
    #[arg(long)]
    pub work_dir: std::path::PathBuf,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Concurrent clients of the (small) write rows, comma-separated.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Failover runs (kill -9 of the leader).
    #[arg(long, default_value_t = 5)]
    pub failover_runs: usize,
    /// Minority runs per scenario (isolated leader, isolated follower).
    #[arg(long, default_value_t = 3)]
    pub minority_runs: usize,
}

/// The `rap-configstore` binary: `given`, or the one next to the running
/// driver (target/<profile>/rap-configstore); it must exist.
pub fn rap_configstore(given: Option<&std::path::Path>) -> anyhow::Result<std::path::PathBuf> {
    let bin = match given {
        Some(bin) => bin.to_path_buf(),
        None => std::env::current_exe()?
            .parent()
            .map(|dir| dir.join("rap-configstore"))
            .ok_or_else(|| anyhow::anyhow!("cannot locate rap-configstore; pass its path"))?,
    };
    anyhow::ensure!(bin.exists(), "{} does not exist", bin.display());
    Ok(bin)
}

/// Creates `work_dir` and runs `driver` to completion on a multi-threaded
/// runtime.
pub fn run_driver<T>(
    work_dir: &std::path::Path,
    driver: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    std::fs::create_dir_all(work_dir)?;
    rap_core::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(driver))
}

/// Appends `pid` to the pid file the script's cleanup trap reads.
pub fn record_pid(pid_file: Option<&std::path::Path>, pid: u32) {
    use std::io::Write;
    if let Some(path) = pid_file
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(file, "{pid}");
    }
}
