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

/// A unix-ms instant as RFC 3339 UTC with second precision; `-` for 0.
pub fn rfc3339_utc(unix_ms: i64) -> String {
    if unix_ms == 0 {
        return "-".to_string();
    }
    let secs = unix_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "-");
        assert_eq!(rfc3339_utc(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_735_787_045_999), "2025-01-02T03:04:05Z");
        assert_eq!(rfc3339_utc(-1_000), "1969-12-31T23:59:59Z");
    }
}
