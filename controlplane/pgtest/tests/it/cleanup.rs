//! No server is left behind when a test process dies.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::support::{assert_cleaned_up, process_alive};

/// Starts the probe in `mode` and reads the private directory and the
/// postmaster pid it prints.
fn start_probe(mode: &str) -> (Child, PathBuf, u32) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgtest-probe"))
        .arg(mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pgtest-probe");
    let mut lines = BufReader::new(child.stdout.take().expect("probe stdout is piped")).lines();
    let mut stderr = child.stderr.take().expect("probe stderr is piped");
    let mut next = |key: &str| {
        let Some(line) = lines.next() else {
            // The probe ended early: show why.
            let mut why = String::new();
            let _ = stderr.read_to_string(&mut why);
            panic!("probe output ended before {key}=; its stderr:\n{why}");
        };
        let line = line.expect("read probe output");
        line.strip_prefix(&format!("{key}="))
            .unwrap_or_else(|| panic!("expected {key}=, got {line:?}"))
            .to_owned()
    };
    let dir = PathBuf::from(next("dir"));
    let pid: u32 = next("pid").parse().expect("pid is a number");
    assert!(
        dir.is_dir(),
        "{} missing while the probe runs",
        dir.display()
    );
    assert!(
        process_alive(pid),
        "postmaster {pid} not running while the probe runs"
    );
    (child, dir, pid)
}

#[test]
fn panicking_process_leaves_no_server() {
    // Goal: a test process that panics leaves no postmaster and no
    // directory. Method: run the probe binary, which starts the shared
    // server, prints its directory and postmaster pid, and panics; then
    // poll (bounded) until the pid is gone and the directory removed.
    let (mut child, dir, pid) = start_probe("panic");
    let status = child.wait().unwrap();
    assert!(!status.success(), "probe should have panicked: {status}");
    assert_cleaned_up(pid, &dir);
}

#[test]
fn killed_process_leaves_no_server() {
    // Goal: even `kill -9` of the test process leaves no postmaster and no
    // directory (no code of the process runs; only the watchdog can act).
    // Method: run the probe in sleep mode, SIGKILL it once the server is
    // up, then poll (bounded) until the pid is gone and the directory
    // removed.
    let (mut child, dir, pid) = start_probe("sleep");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_cleaned_up(pid, &dir);
}
