//! Test helper: starts the shared private server, prints where it is, then
//! ends badly, so the integration tests can check that nothing is left.
//!
//! Usage: `pgtest-probe panic|sleep`. It prints `dir=<private dir>` and
//! `pid=<postmaster pid>` on stdout, then panics (`panic`) or sleeps until
//! it is killed (`sleep`).

use std::io::Write;
use std::time::Duration;

/// How long one sleep of `sleep` mode lasts; it loops until killed.
const SLEEP_STEP: Duration = Duration::from_secs(60);

fn main() -> std::process::ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode != "panic" && mode != "sleep" {
        eprintln!("usage: pgtest-probe panic|sleep");
        return std::process::ExitCode::from(2);
    }
    if let Err(error) = run(&mode) {
        eprintln!("pgtest-probe: {error}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

/// Starts the server, reports it and ends as `mode` says; returns only on
/// error.
fn run(mode: &str) -> Result<(), Box<dyn std::error::Error>> {
    let server = rap_pgtest::shared_server()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "dir={}", server.socket_dir().display())?;
    writeln!(stdout, "pid={}", server.postmaster_pid()?)?;
    stdout.flush()?;
    drop(stdout);
    if mode == "panic" {
        panic!("pgtest-probe: panicking on purpose with the server running");
    }
    loop {
        std::thread::sleep(SLEEP_STEP);
    }
}
