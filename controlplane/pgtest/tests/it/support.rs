//! Helpers shared by the integration tests.

use std::path::Path;
use std::time::{Duration, Instant};

/// How long a test waits for the watchdog to stop a server and remove its
/// directory: normally well under a second.
pub const CLEANUP_WAIT_MAX: Duration = Duration::from_secs(10);

/// Pause between two looks while waiting.
const POLL_STEP: Duration = Duration::from_millis(50);

/// Whether `pid` is a live process (a zombie, dead but not yet reaped by
/// its new parent, counts as gone).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the ")" that ends the name.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z" | "X")
        ),
        Err(_) => false,
    }
}

/// Waits up to [`CLEANUP_WAIT_MAX`] until `pid` is gone and `dir` does not
/// exist; panics with what is left otherwise.
pub fn assert_cleaned_up(pid: u32, dir: &Path) {
    let deadline = Instant::now() + CLEANUP_WAIT_MAX;
    loop {
        let alive = process_alive(pid);
        let exists = dir.exists();
        if !alive && !exists {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {CLEANUP_WAIT_MAX:?}: postmaster {pid} alive={alive}, {} exists={exists}",
            dir.display()
        );
        std::thread::sleep(POLL_STEP);
    }
}
