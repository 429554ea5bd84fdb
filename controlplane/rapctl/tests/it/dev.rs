//! `rapctl dev up` / `dev down` with the real binaries: a private
//! PostgreSQL, the control plane with its console, three storage voters
//! and an agent, all left running, then stopped.

use crate::bin_dir;
use std::path::Path;

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
        "--log-format",
        "json",
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

    logs_are_json_without_secrets(&platform);
}

/// Whether `text` holds a token of `prefix` (`rapat.`, `rapjt.`): the
/// prefix, an id, a dot and a secret of 16 or more token characters.
fn holds_token(text: &str, prefix: &str) -> bool {
    let token_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices(prefix).any(|(at, _)| {
        let rest = &text[at + prefix.len()..];
        let id_len = rest.chars().take_while(|c| token_char(*c)).count();
        rest[id_len..]
            .strip_prefix('.')
            .is_some_and(|secret| secret.chars().take_while(|c| token_char(*c)).count() >= 16)
    })
}

/// Every private key file under `dir` (PEM bodies), for the log check.
fn private_key_lines(dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            private_key_lines(&path, found);
        } else if path.extension().is_some_and(|e| e == "key") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            found.extend(
                text.lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                    .map(str::to_string),
            );
        }
    }
}

/// The daemons of a platform started with `--log-format json` wrote one
/// JSON object per line, each storage node's and agent's line with the
/// cluster and node ids; no log of the platform holds an API or join
/// token, the owner's token, or a line of a private key.
fn logs_are_json_without_secrets(platform: &Path) {
    let logs = platform.join("logs");
    let owner_token = std::fs::read_to_string(platform.join("owner.token")).unwrap();
    let owner_token = owner_token.trim();
    let mut keys = Vec::new();
    private_key_lines(platform, &mut keys);
    assert!(!keys.is_empty(), "the platform has private keys");
    let mut daemons = 0;
    for entry in std::fs::read_dir(&logs).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        assert!(
            !text.contains(owner_token),
            "{name} holds the owner's token"
        );
        assert!(!holds_token(&text, "rapat."), "{name} holds an API token");
        assert!(!holds_token(&text, "rapjt."), "{name} holds a join token");
        assert!(!text.contains("PRIVATE KEY"), "{name} holds a private key");
        for line in &keys {
            assert!(
                !text.contains(line.as_str()),
                "{name} holds a line of a private key"
            );
        }
        // The daemons' logs: controlplane.log, s<N>.log, agent-<N>.log
        // (setup and join logs hold the tools' own output).
        let stem = name.strip_suffix(".log").unwrap_or_default();
        let numbered = |prefix: &str| {
            stem.strip_prefix(prefix)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        let ids = match stem {
            "controlplane" => false,
            _ if numbered("s") || numbered("agent-") => true,
            _ => continue,
        };
        daemons += 1;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let object: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: not a JSON line ({e}): {line}"));
            assert!(object["level"].is_string(), "{name}: {line}");
            if ids {
                assert_eq!(object["cluster_id"], "dev", "{name}: {line}");
                assert!(
                    object["node_id"].as_str().is_some_and(|id| !id.is_empty()),
                    "{name}: {line}"
                );
            }
        }
    }
    assert!(
        daemons >= 5,
        "the control plane, 3 voters and the agent logged"
    );
}
