//! The load generator: `n` concurrent loops of one operation for a fixed
//! time, each loop on its own task with its own client, and the latency of
//! every completed call.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

/// One client's operation, called in a loop.
pub trait Op: Send + 'static {
    /// One call: `Ok` when it completed, or a short description of the
    /// failure (errors are counted by description).
    fn call(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// A call's result as an [`Op`] reports it: `Ok` whatever it answered,
/// or the failure described by `describe`.
pub fn settle<T>(
    result: Result<T, tonic::Status>,
    describe: impl Fn(&tonic::Status) -> String,
) -> Result<(), String> {
    result.map(|_| ()).map_err(|status| describe(&status))
}

/// The outcome of one load run.
#[derive(Debug, Default, Clone)]
pub struct Row {
    /// Latencies of the completed calls, sorted.
    pub latencies: Vec<Duration>,
    /// Failed calls by description.
    pub errors: BTreeMap<String, usize>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Row {
    /// Completed calls per second.
    pub fn per_sec(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`th percentile latency (zero without calls).
    pub fn p(&self, p: usize) -> Duration {
        percentile(&self.latencies, p)
    }

    /// Failed calls.
    pub fn error_count(&self) -> usize {
        self.errors.values().sum()
    }
}

/// The `p`th percentile of sorted `values` (nearest rank; zero if empty).
pub fn percentile(values: &[Duration], p: usize) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let rank = (values.len() * p).div_ceil(100).max(1);
    values[rank.min(values.len()) - 1]
}

/// Runs every op of `ops` in its own loop for `duration`; a call started
/// before the deadline is awaited.
pub async fn run<O: Op>(ops: Vec<O>, duration: Duration) -> Row {
    let started = Instant::now();
    let deadline = started + duration;
    let handles: Vec<_> = ops
        .into_iter()
        .map(|mut op| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = Vec::new();
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    match op.call().await {
                        Ok(()) => latencies.push(t0.elapsed()),
                        Err(e) => errors.push(e),
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut row = Row::default();
    for (latencies, errors) in rap_testkit::cluster::join_all(handles).await {
        row.latencies.extend(latencies);
        for e in errors {
            *row.errors.entry(e).or_default() += 1;
        }
    }
    row.elapsed = started.elapsed();
    row.latencies.sort();
    row
}

/// Runs `op` `count` times, one after another (a warm-up).
pub async fn repeat<O: Op>(op: &mut O, count: usize) -> Result<(), String> {
    for _ in 0..count {
        op.call().await?;
    }
    Ok(())
}

/// Starts one call of every op of `probes` every `every`, each on its own
/// task and with the deadline `deadline`, until a call succeeds or
/// `guard` has passed since `since`. Returns when the first successful
/// call completed, measured from `since` (`None` if none did). The
/// failover runs of both systems probe with it, so a call that hangs does
/// not hide a group that is writable again.
pub async fn first_success<O: Op + Clone>(
    probes: &[O],
    since: Instant,
    every: Duration,
    deadline: Duration,
    guard: Duration,
) -> Option<Duration> {
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let mut ticker = tokio::time::interval(every);
    while since.elapsed() < guard {
        tokio::select! {
            at = done_rx.recv() => return at,
            _ = ticker.tick() => {
                for op in probes {
                    let mut op = op.clone();
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        if let Ok(Ok(())) = tokio::time::timeout(deadline, op.call()).await {
                            let _ = done.send(since.elapsed());
                        }
                    });
                }
            }
        }
    }
    None
}

/// Polls `check` every `every` until it is true or `guard` has passed
/// since `since`; returns when it was first true, measured from `since`.
pub async fn first_true<F, Fut>(
    since: Instant,
    every: Duration,
    guard: Duration,
    mut check: F,
) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    while since.elapsed() < guard {
        if check().await {
            return Some(since.elapsed());
        }
        tokio::time::sleep(every).await;
    }
    None
}
