//! `rapctl dev up` / `dev down` with the real binaries: a private
//! PostgreSQL, the control plane with its console, three storage voters
//! and an agent, all left running, then stopped.

use std::path::{Path, PathBuf};

/// The four binaries next to the test's rapctl, or `None` when only part
/// of the workspace was built (`cargo test -p rapctl`): the test then
/// says so and skips; `cargo test --workspace` (scripts/test.sh) builds
/// them all, and under CI a missing one fails.
fn bin_dir() -> Option<PathBuf> {
    let rapctl = Path::new(env!("CARGO_BIN_EXE_rapctl"));
    let dir = rapctl.parent()?.to_path_buf();
    let missing: Vec<&str> = ["rap-controlplane", "rap-configstore", "rap-node-agent"]
        .into_iter()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    match (missing.is_empty(), std::env::var_os("CI").is_some()) {
        (true, _) => Some(dir),
        (false, true) => panic!("missing binaries {missing:?}: run cargo test --workspace"),
        (false, false) => {
            eprintln!("SKIPPED: {missing:?} not built (cargo build --workspace first)");
            None
        }
    }
}

fn rapctl(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rapctl"))
        .args(args)
        .env_remove("RAP_ENDPOINT")
        .env_remove("RAP_TOKEN_FILE")
        .env_remove("RAP_CA")
        .env_remove("RAP_DEV_DIR")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Live (not zombie) processes whose command line names `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
        {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

// Goal: `rapctl dev up` brings up a complete local platform and says
// where everything is (the console's URL and sign-in among it); the
// console answers; `dev up` again resumes without re-creating anything;
// `dev down` stops exactly what it started and leaves no process behind.
// Method: the real binaries on a temporary directory; the platform used
// with rapctl as the final screen says; the console read over HTTPS
// pinned to its certificate; /proc scanned for anything naming the
// directory after `dev down`.
#[test]
fn dev_up_resume_and_down_leave_nothing_behind() {
    let Some(bin) = bin_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let platform = dir.path().join("platform");
    let platform_arg = platform.to_str().unwrap();
    let bin_arg = bin.to_str().unwrap();
    let (code, out, err) = rapctl(&[
        "dev",
        "up",
        "--dir",
        platform_arg,
        "--agents",
        "1",
        "--bin-dir",
        bin_arg,
    ]);
    let cleanup = || {
        let _ = rapctl(&["dev", "down", "--dir", platform_arg]);
    };
    if code != 0 {
        cleanup();
        panic!("dev up failed: {out}\n{err}");
    }
    assert!(out.contains("Web console: https://127.0.0.1:"), "{out}");
    assert!(out.contains("owner.token"), "{out}");
    assert!(out.contains("rapctl overview"), "{out}");

    // rapctl against it, as the final screen says.
    let endpoint = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("export RAP_ENDPOINT="))
        .unwrap()
        .to_string();
    let overview = std::process::Command::new(env!("CARGO_BIN_EXE_rapctl"))
        .args(["overview", "-o", "json"])
        .env("RAP_ENDPOINT", &endpoint)
        .env("RAP_CA", platform.join("keys/platform/ca.pem"))
        .env("RAP_TOKEN_FILE", platform.join("owner.token"))
        .output()
        .unwrap();
    let overview_text = String::from_utf8_lossy(&overview.stdout).into_owned();
    assert!(overview.status.success(), "{overview_text}");
    assert!(
        overview_text.contains("\"clusters_total\": 1"),
        "{overview_text}"
    );

    // The console answers over HTTPS with its own certificate.
    let console: std::net::SocketAddr = out
        .lines()
        .find_map(|l| l.strip_prefix("Web console: https://"))
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let answer = runtime.block_on(rap_testkit::platform::https_get(
        console,
        "/signin",
        &platform.join("keys/platform/console.pem"),
    ));
    let (status, _, body) = answer.expect("the console answers");
    assert!(
        status.contains("200") && body.contains("Sign in"),
        "{status}"
    );

    // Again: everything is up already; nothing is re-created.
    let (code, again, err) = rapctl(&["dev", "up", "--dir", platform_arg, "--bin-dir", bin_arg]);
    assert_eq!(code, 0, "{again}\n{err}");
    assert!(again.contains("already up"), "{again}");
    assert!(!again.contains("enrolled"), "{again}");

    let (code, down, err) = rapctl(&["dev", "down", "--dir", platform_arg]);
    assert_eq!(code, 0, "{down}\n{err}");
    let mut left = processes_under(&platform);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = processes_under(&platform);
    }
    assert!(left.is_empty(), "left behind: {left:?}\n{down}");
}
