//! `rapctl` as a user runs it: the real binary, real files, exit codes.

use std::path::Path;
use std::process::{Command, Output};

fn rapctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rapctl"))
        .args(args)
        .output()
        .expect("run rapctl")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// Goal: the demo tour passes end to end and says so. Method: run it, check
// exit 0 and that every JSON step is ok.
#[test]
fn demo_exits_zero_and_every_step_is_ok() {
    let output = rapctl(&["demo", "-o", "json"]);
    assert!(output.status.success(), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["ok"], true);
    let steps = report["steps"].as_array().expect("steps");
    assert!(steps.len() >= 10);
    assert!(steps.iter().all(|s| s["ok"] == true), "{report:#}");
}

// Goal: the offline snapshot tools work as a user chains them, and a
// rollback is refused across separate invocations through --state.
// Method: keygen, sign v1 and v2, verify v2 then v1 with one state dir.
#[test]
fn keygen_sign_verify_and_rollback_across_invocations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |name: &str| dir.path().join(name).display().to_string();
    let ok = |args: &[&str]| {
        let output = rapctl(args);
        assert!(output.status.success(), "{args:?}: {}", text(&output));
        output
    };
    ok(&["snapshot", "keygen", "--cluster", "c1", "--dir", &d("keys")]);
    let key = d("keys/signing.key");
    let root = d("keys/trust-root.bin");
    std::fs::write(dir.path().join("body"), b"roles: [entry-node]").expect("write body");
    let sign = |version: &str, prev: Option<&str>, out: &str| {
        let mut args = vec![
            "snapshot",
            "sign",
            "--key",
            &key,
            "--trust-root",
            &root,
            "--scope",
            "node/n1",
            "--version",
            version,
            "--reader",
            "node:n1",
        ];
        let body = d("body");
        args.extend(["--body", &body, "--out", out]);
        if let Some(prev) = prev {
            args.extend(["--prev", prev]);
        }
        ok(&args);
    };
    let (v1, v2) = (d("v1.env"), d("v2.env"));
    sign("1", None, &v1);
    sign("2", Some(&v1), &v2);

    let show = ok(&["snapshot", "show", &v2, "-o", "json"]);
    let header: serde_json::Value = serde_json::from_slice(&show.stdout).expect("json");
    assert_eq!(header["version"], 2);
    assert_eq!(header["status"], "decoded, NOT verified");

    let state = d("state");
    let verify = |file: &str| {
        rapctl(&[
            "snapshot",
            "verify",
            file,
            "--trust-root",
            &root,
            "--scope",
            "node/n1",
            "--node",
            "n1",
            "--state",
            &state,
            "-o",
            "json",
        ])
    };
    let accepted = verify(&v2);
    assert!(accepted.status.success(), "{}", text(&accepted));
    let refused = verify(&v1);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let report: serde_json::Value = serde_json::from_slice(&refused.stdout).expect("json");
    assert_eq!(report["code"], "ROLLBACK");
    assert!(text(&refused).contains("seen version 2, got 1"));
}

// Goal: usage errors exit 2, operational errors exit 1 with a message that
// says what to do. Method: an unknown command; a missing --prev.
#[test]
fn exit_codes_and_actionable_errors() {
    assert_eq!(rapctl(&["no-such-command"]).status.code(), Some(2));
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("k");
    let keys = keys.to_str().expect("utf-8 path");
    assert!(
        rapctl(&["snapshot", "keygen", "--cluster", "c1", "--dir", keys])
            .status
            .success()
    );
    let body = dir.path().join("body");
    std::fs::write(&body, b"x").expect("write");
    let output = rapctl(&[
        "snapshot",
        "sign",
        "--key",
        &format!("{keys}/signing.key"),
        "--trust-root",
        &format!("{keys}/trust-root.bin"),
        "--scope",
        "node/n1",
        "--version",
        "2",
        "--reader",
        "node:n1",
        "--body",
        body.to_str().expect("utf-8"),
        "--out",
        &Path::new(keys).join("out").display().to_string(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("needs --prev"), "{}", text(&output));
}

/// `rapctl` with no RAP_* variables from the caller's environment.
fn rapctl_clean_env(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rapctl"))
        .args(args)
        .env_remove("RAP_ENDPOINT")
        .env_remove("RAP_TOKEN_FILE")
        .env_remove("RAP_CA")
        .env_remove("RAP_SERVER_NAME")
        .env_remove("RAP_DATABASE_URL")
        .output()
        .expect("run rapctl")
}

/// An endpoint where nothing listens: a port the OS just handed out and
/// that was closed again.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

// Goal: a control-plane command with no control plane to talk to fails
// with exit 1 and says where it looked and what to check. Method: a valid
// token file, an endpoint nobody listens on.
#[test]
fn control_plane_unreachable_exits_one_with_endpoint_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "rapat.op.secret\n").expect("write token");
    let endpoint = dead_endpoint();
    let output = rapctl_clean_env(&[
        "token",
        "create",
        "--cluster",
        "c1",
        "--endpoint",
        &endpoint,
        "--token-file",
        token.to_str().expect("utf-8"),
    ]);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(all.contains("error: CONNECT_FAILED"), "{all}");
    let hint = all
        .lines()
        .find(|l| l.starts_with("hint:"))
        .unwrap_or_else(|| panic!("no hint line: {all}"));
    assert!(hint.contains(&endpoint), "{hint}");
    assert!(hint.contains("rap-controlplane serve"), "{hint}");
    assert!(output.stdout.is_empty(), "nothing on stdout: {all}");
}

// Goal: without a token file the operator is told how to get one. Method:
// point --token-file at a file that does not exist.
#[test]
fn missing_token_file_says_how_to_get_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-token");
    let output = rapctl_clean_env(&[
        "cluster",
        "list",
        "--endpoint",
        &dead_endpoint(),
        "--token-file",
        missing.to_str().expect("utf-8"),
    ]);
    let all = text(&output);
    assert_eq!(output.status.code(), Some(1), "{all}");
    assert!(all.contains("rap-controlplane init"), "{all}");
    assert!(all.contains("RAP_TOKEN_FILE"), "{all}");
}

// Goal: malformed control-plane commands are usage errors (exit 2) before
// anything is read or sent. Method: a reject without --reason, a bad TTL,
// a bad voter spec.
#[test]
fn control_plane_usage_errors_exit_two() {
    for args in [
        &["join-request", "reject", "jr-1"][..],
        &["token", "create", "--cluster", "c1", "--ttl", "1w"],
        &["cluster", "bootstrap", "c1", "--voter", "s1-no-address"],
        &["group", "move", "--cluster", "c1", "--to", "g1"],
    ] {
        let output = rapctl_clean_env(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
    }
}

// Goal: `rapctl --help` shows the control-plane commands. Method: look for
// each in the help text.
#[test]
fn help_lists_control_plane_commands() {
    let output = rapctl_clean_env(&["--help"]);
    assert!(output.status.success(), "{}", text(&output));
    let help = String::from_utf8_lossy(&output.stdout);
    for command in [
        "cluster",
        "token",
        "join-request",
        "node",
        "role",
        "group",
        "service",
        "audit",
        "certs",
        "overview",
        "org",
        "principal",
        "whoami",
        "step-up",
        "migrate",
        "snapshot",
        "demo",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "{command} missing from:\n{help}"
        );
    }
}
