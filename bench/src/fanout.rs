//! Bookkeeping of a fan-out run, shared by both systems: when each update
//! was sent, and the notify latency of every delivery.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// When update `i` was sent, in nanoseconds since the run's base instant
/// (0: not sent).
pub struct SendTimes(Vec<AtomicU64>);

impl SendTimes {
    /// Room for updates `0..count`.
    pub fn new(count: u64) -> Self {
        SendTimes((0..=count).map(|_| AtomicU64::new(0)).collect())
    }

    /// Update `i` is sent at `at` since the base.
    pub fn mark(&self, i: u64, at: Duration) {
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| self.0.get(i)) {
            slot.store(
                u64::try_from(at.as_nanos()).unwrap_or(u64::MAX).max(1),
                Ordering::Relaxed,
            );
        }
    }

    fn sent(&self, i: u64) -> Option<Duration> {
        let slot = self.0.get(usize::try_from(i).ok()?)?;
        match slot.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// From every watcher's deliveries ((update, arrival since the base)):
    /// the sorted latencies of the deliveries of `expected`, and how many
    /// (watcher, update) pairs of `expected` were never delivered.
    pub fn collect(
        &self,
        watchers: Vec<Vec<(u64, Duration)>>,
        expected: RangeInclusive<u64>,
    ) -> (Vec<Duration>, u64) {
        let per_watcher = expected.end().saturating_sub(*expected.start()) + 1;
        let mut latencies = Vec::new();
        let mut missing = 0;
        for seen in watchers {
            let mut delivered = 0;
            for (i, at) in seen {
                if !expected.contains(&i) {
                    continue;
                }
                if let Some(sent) = self.sent(i) {
                    latencies.push(at.saturating_sub(sent));
                    delivered += 1;
                }
            }
            missing += per_watcher.saturating_sub(delivered);
        }
        latencies.sort();
        (latencies, missing)
    }
}
