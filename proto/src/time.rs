//! Wall-clock instants on the wire: milliseconds since the Unix epoch.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A wall clock other than the system's, for a process that checks times
/// against it (the simulator's skewed clocks); `None` where one is
/// optional means the system's ([`UnixMillis::on`]).
pub type WallClock = Arc<dyn Fn() -> UnixMillis + Send + Sync>;

/// Milliseconds since the Unix epoch, as carried in `*_unix_ms` fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// The current wall-clock time. A clock before 1970 reads as 0.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        UnixMillis(ms)
    }

    /// The time on `clock`, or on the system's wall clock without one.
    pub fn on(clock: Option<&WallClock>) -> Self {
        clock.map_or_else(UnixMillis::now, |clock| clock())
    }

    /// This instant plus `ms` milliseconds, saturating.
    pub fn plus_ms(self, ms: i64) -> Self {
        UnixMillis(self.0.saturating_add(ms))
    }
}

impl std::fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}ms", self.0)
    }
}
