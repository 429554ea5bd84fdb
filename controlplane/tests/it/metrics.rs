//! Metrics as an operator's Prometheus sees them: every process's
//! `/metrics` (voters, a cache replica, the control plane) passes
//! `promtool check metrics` after some traffic, the alert rules pass
//! `promtool check rules`, and the dashboard and the rules
//! (`deploy/`) name only metrics some process exposes.
//!
//! promtool comes from Debian's `prometheus` package; scripts/test.sh
//! installs it (`scripts/ensure-promtool.sh`). Without it these tests
//! fail, naming that script.

use rap_controlplane::tls::client_tls_config;
use rap_proto::pb;
use rap_proto::pb::admin_service_client::AdminServiceClient;
use rap_testkit::platform::{Platform, http_get};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;

/// The script that installs promtool.
const ENSURE_PROMTOOL: &str = "scripts/ensure-promtool.sh";
/// Longest wait for the traffic's metrics to show.
const HANG_GUARD: Duration = Duration::from_secs(20);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn dashboard_path() -> PathBuf {
    repo().join("deploy/grafana/rap-cluster.json")
}

fn rules_path() -> PathBuf {
    repo().join("deploy/prometheus/rap-alerts.yml")
}

/// promtool on PATH; without it the test fails, naming the script that
/// installs it.
fn promtool() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool is not on PATH: run {ENSURE_PROMTOOL} (as root it installs Debian's \
                 prometheus package; scripts/test.sh sources it)"
            )
        })
}

/// Runs promtool with `args` and `input` on stdin: (exit code, stdout and
/// stderr).
fn run_promtool(args: &[&str], input: &str) -> (i32, String) {
    let mut child = Command::new(promtool())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(input.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool output");
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The names of the samples of a /metrics text.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `rap_...` metric name in `text` (a dashboard or rules file).
fn names_used(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("rap_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Waits until `addr` serves a `/metrics` with a sample named `name`.
async fn wait_for_sample(addr: SocketAddr, name: &str) -> String {
    let started = Instant::now();
    loop {
        let last = match http_get(addr, "/metrics").await {
            Some((status, text)) if status.contains("200") => {
                if sample_names(&text).contains(name) {
                    return text;
                }
                text
            }
            other => format!("{other:?}"),
        };
        assert!(
            started.elapsed() < HANG_GUARD,
            "hang guard: no {name} on {addr} within {HANG_GUARD:?}:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/metrics` of `addr` as a Prometheus server asks for it (OpenMetrics
/// preferred): (head, body).
async fn scrape_openmetrics(addr: SocketAddr) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /metrics HTTP/1.0\r\nHost: localhost\r\nAccept: \
              application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body.to_string())
}

/// A Prometheus server's scrape of `addr` gets OpenMetrics with the same
/// samples as `classic`.
async fn assert_openmetrics(who: &str, addr: SocketAddr, classic: &str) {
    let (head, body) = scrape_openmetrics(addr).await;
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{who}: {head}"
    );
    assert!(body.ends_with("# EOF\n"), "{who}: {body}");
    let names = sample_names(&body);
    assert!(
        names.is_superset(&sample_names(classic)),
        "{who}: OpenMetrics lacks samples of the classic text:\n{body}"
    );
}

/// `promtool check metrics` finds nothing in `text` (from `who`).
fn assert_lint_clean(who: &str, text: &str) {
    let (code, output) = run_promtool(&["check", "metrics"], text);
    assert!(
        code == 0 && output.trim().is_empty(),
        "promtool check metrics on {who}'s /metrics: exit {code}\n{output}\n--- /metrics ---\n{text}"
    );
}

// Goal: a Prometheus operator's tools accept every process's /metrics,
// and the dashboard and alert rules shipped in deploy/ query only metrics
// that exist. Method: a platform (3 in-process voters, PostgreSQL), the
// real control plane server and a cache replica; traffic: fences and
// publications (the server's publisher), a refused fence on the voters,
// an anonymous admin call refused by the control plane; then promtool
// check metrics on each /metrics (exit 0, no lint), a scrape that asks
// for OpenMetrics gets it with the same samples, and every rap_ name of
// the dashboard and the rules is among the samples seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metrics_endpoint_passes_promtool_and_feeds_the_dashboards() {
    promtool();
    let p = Platform::start().await;
    let server = p.serve().await;
    let (_, cache_http) = p.start_cache("k1", "zone-s1").await;
    p.wait_for_publisher().await;

    // A fence at a term the group does not have: refused by the voters.
    let peers = p.storage_peers().await;
    p.ctx
        .authority
        .acquire_fence(&p.cluster, &peers, 99, "metrics-test")
        .await
        .expect_err("a fence of another term is refused");
    // An admin call without a token: refused by the control plane.
    let platform_ca = std::fs::read_to_string(p.ctx.keys_dir.join("platform/ca.pem")).unwrap();
    let channel = Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(client_tls_config(&platform_ca, "localhost", None))
        .unwrap()
        .connect()
        .await
        .unwrap();
    AdminServiceClient::new(channel)
        .list_clusters(pb::ListClustersRequest::default())
        .await
        .expect_err("no token: refused");

    let mut exposed = BTreeSet::new();
    let control_plane = wait_for_sample(
        server.http_addr,
        "rap_cp_fenced_mutation_duration_seconds_bucket",
    )
    .await;
    let control_plane = if sample_names(&control_plane).contains("rap_cp_refusals_total") {
        control_plane
    } else {
        wait_for_sample(server.http_addr, "rap_cp_refusals_total").await
    };
    assert_lint_clean("the control plane", &control_plane);
    assert_openmetrics("the control plane", server.http_addr, &control_plane).await;
    exposed.extend(sample_names(&control_plane));

    for (node, http) in p.voter_http() {
        let text = wait_for_sample(http, "rap_raft_append_duration_seconds_bucket").await;
        assert_lint_clean(&format!("voter {node}"), &text);
        assert_openmetrics(&format!("voter {node}"), http, &text).await;
        exposed.extend(sample_names(&text));
    }
    assert!(
        exposed.contains("rap_refusals_total"),
        "the refused fence is counted on a voter"
    );
    let cache = wait_for_sample(cache_http, "rap_cache_shards").await;
    assert_lint_clean("cache replica k1", &cache);
    assert_openmetrics("cache replica k1", cache_http, &cache).await;
    exposed.extend(sample_names(&cache));

    let dashboard_text = std::fs::read_to_string(dashboard_path()).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard_text).expect("the dashboard is JSON");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "the dashboard has panels"
    );
    let rules = std::fs::read_to_string(rules_path()).unwrap();
    for (file, used) in [
        (
            "deploy/grafana/rap-cluster.json",
            names_used(&dashboard_text),
        ),
        ("deploy/prometheus/rap-alerts.yml", names_used(&rules)),
    ] {
        assert!(!used.is_empty(), "{file} names no metric");
        // A histogram is named by its family or by its series.
        let missing: Vec<&String> = used
            .iter()
            .filter(|name| !exposed.contains(*name) && !exposed.contains(&format!("{name}_bucket")))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} uses metrics no process exposes: {missing:?}\nexposed: {exposed:?}"
        );
    }
}

// Goal: the alert rules shipped in deploy/ load in Prometheus, and the
// dashboard is a Grafana import file (JSON, the datasource an input, the
// cluster a template variable). Method: promtool check rules; parse the
// dashboard.
#[test]
fn alert_rules_and_dashboard_load() {
    let rules = rules_path();
    let (code, output) = run_promtool(&["check", "rules", &rules.to_string_lossy()], "");
    assert_eq!(
        code,
        0,
        "promtool check rules {}:\n{output}",
        rules.display()
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard_path()).unwrap())
            .expect("the dashboard is JSON");
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dashboard["templating"]["list"][0]["name"], "cluster");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{panel}");
        }
    }
}
