//! `rap-node-agent run` and `status`: the real binary, enrolled through
//! the real control plane, reading its scopes from the platform's storage
//! nodes and cache replicas.

use crate::join::{Agent, cluster_keys, pending_requests};
use rap_controlplane::enrollment;
use rap_proto::pb;
use rap_testkit::platform::{Platform, StorageMode};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Hang guard for the agent to reach a state.
const REACHES_MAX: Duration = Duration::from_secs(45);

/// A running `rap-node-agent run`.
struct Running {
    child: tokio::process::Child,
}

impl Running {
    fn start(state_dir: &Path, cluster: &str) -> Running {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rap-node-agent-under-test"))
            .args(["run", "--cluster", cluster])
            .env("RAP_AGENT_STATE_DIR", state_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Running { child }
    }

    /// `kill -9`.
    async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }

    /// Its exit code, once it ended by itself (hang guard [`REACHES_MAX`]).
    async fn exited(mut self) -> Option<i32> {
        tokio::time::timeout(REACHES_MAX, self.child.wait())
            .await
            .expect("hang guard: the agent did not end")
            .unwrap()
            .code()
    }
}

/// Joins with the real binary (standard arguments plus `extra`) and
/// approves the request as `node_id`.
async fn enrolled(
    p: &Platform,
    server: &rap_testkit::platform::ControlPlane,
    state_dir: &Path,
    node_id: &str,
    extra: &[&str],
) {
    let fingerprint = cluster_keys(p).ca_fingerprint();
    let token = p.token(1).await;
    let join = Agent::join(server, &p.cluster, &token, &fingerprint, state_dir, extra);
    let request = pending_requests(p, 1).await.remove(0);
    enrollment::approve(
        &p.ctx,
        &p.owner,
        &pb::ReviewJoinRequestRequest {
            join_request_id: request.join_request_id.clone(),
            node_id: node_id.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(join.finish().await.code(), Some(0));
}

/// `rap-node-agent status -o json`, parsed (None before `run` wrote one).
async fn status(state_dir: &Path, cluster: &str) -> Option<serde_json::Value> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rap-node-agent-under-test"))
        .args(["status", "--cluster", cluster, "-o", "json"])
        .env("RAP_AGENT_STATE_DIR", state_dir)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// Polls `status` until `check` holds (hang guard [`REACHES_MAX`]).
async fn reaches(
    state_dir: &Path,
    cluster: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + REACHES_MAX;
    let mut last = None;
    loop {
        if let Some(status) = status(state_dir, cluster).await {
            if check(&status) {
                return status;
            }
            last = Some(status);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hang guard: {what} within {REACHES_MAX:?}; last status: {last:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status of workload `service`.
fn workload<'a>(status: &'a serde_json::Value, service: &str) -> &'a serde_json::Value {
    status["workloads"]
        .as_array()
        .and_then(|all| all.iter().find(|w| w["service"] == service))
        .unwrap_or(&serde_json::Value::Null)
}

/// Whether `address` echoes what it is sent.
async fn echoes(address: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
        return false;
    };
    if stream.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut answer = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut answer)).await,
        Ok(Ok(_))
    ) && &answer == b"ping"
}

/// Waits until `sql` counts at least one row (hang guard [`REACHES_MAX`]).
async fn wait_for_count(p: &Platform, sql: &str) {
    let deadline = tokio::time::Instant::now() + REACHES_MAX;
    while p.count(sql).await < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hang guard: {sql} within {REACHES_MAX:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn version(status: &serde_json::Value, scope: &str) -> u64 {
    status["scopes"][scope]["version"].as_u64().unwrap_or(0)
}

// Goal (issue 11 "nearby reads", "workload supervision", "kill -9 keeps
// high-water marks"): an
// enrolled agent that runs holds exactly its verified scopes (its node
// shard, the all-nodes scopes; a role's scope once the role is assigned),
// runs synthetic-echo once it is desired and its role assigned (it echoes,
// and the heartbeat reports it running) and stops it when the role goes,
// prefers the cache replica placed for it, fails over to a voter when
// that cache is stopped and still receives new versions, and after kill
// -9 and a restart starts from what it had kept (same versions, from
// disk) and catches up. `status` says healthy, shows the endpoints
// with their scores and that heartbeats reach the control plane; with two voters of three gone it keeps its scopes
// and says it is degraded, and why.
// Method: the platform's 3 voters, its served control plane (publisher
// on), the real join then `run` binaries; one cache replica registered
// and started through the control plane; a role assigned and removed
// through the control plane's functions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reads_its_scopes_fails_over_and_restarts() {
    let p = Platform::start().await;
    let server = p.serve().await;
    let state = tempfile::tempdir().unwrap();
    let cluster = p.cluster.clone();

    enrolled(
        &p,
        &server,
        state.path(),
        "node-a",
        &["--capability", "can_route_mesh", "--wait", "30s"],
    )
    .await;
    p.wait_for_publisher().await;

    let agent = Running::start(state.path(), &cluster);
    let first = reaches(state.path(), &cluster, "the agent holds its scopes", |s| {
        version(s, "node/node-a") >= 1
            && version(s, "trust/revocations") >= 1
            && version(s, "trust/root") >= 1
    })
    .await;
    assert_eq!(first["health"], "healthy", "{first:#}");
    // Heartbeats run beside the reads and reach the control plane.
    reaches(state.path(), &cluster, "a heartbeat got through", |s| {
        s["control_plane"]["reachable"] == true && s["control_plane"]["sent"].as_u64() >= Some(1)
    })
    .await;
    assert!(
        p.count("SELECT count(*) FROM node_heartbeats WHERE node_id = 'node-a'")
            .await
            >= 1,
        "the control plane holds its heartbeats"
    );
    assert!(first["scopes"].get("role/relay-node").is_none());

    // A role: its scope arrives, through the watch.
    p.assign_role("node-a", "relay-node").await;
    reaches(state.path(), &cluster, "role/relay-node and peers", |s| {
        version(s, "role/relay-node") >= 1 && version(s, "peers/node-a") >= 1
    })
    .await;

    // The built-in synthetic-echo, desired and allowed by the role: it
    // runs, echoes, and the heartbeat reports it running.
    p.set_service("node-a", "synthetic-echo", "enabled").await;
    let running = reaches(state.path(), &cluster, "synthetic-echo running", |s| {
        workload(s, "synthetic-echo")["observed"] == "running"
    })
    .await;
    let detail = workload(&running, "synthetic-echo")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    let echo_at = detail.strip_prefix("listening on ").unwrap().to_string();
    assert!(echoes(&echo_at).await, "{detail}");
    wait_for_count(
        &p,
        "SELECT count(*) FROM node_service_instances
          WHERE node_id = 'node-a' AND service = 'synthetic-echo' AND reported_state = 'running'",
    )
    .await;

    // A cache replica placed for it: the agent reads from it.
    p.start_cache("k1", "zone-s1").await;
    let cached = reaches(state.path(), &cluster, "reads from the cache", |s| {
        s["endpoints"][0]["endpoint"]["node_id"] == "k1"
            && s["endpoints"][0]["endpoint"]["role"] == "cache"
            && s["endpoints"][0]["rtt_ms"].is_number()
    })
    .await;
    assert_eq!(cached["health"], "healthy", "{cached:#}");

    // The cache stops: reads go on from a voter, new versions arrive.
    p.stop_cache("k1").await;
    let node_version = version(&cached, "node/node-a");
    p.remove_role("node-a", "relay-node").await;
    let failed_over = reaches(
        state.path(),
        &cluster,
        "a newer node shard from a voter",
        |s| {
            version(s, "node/node-a") > node_version
                && s["scopes"]["node/node-a"]["served_by"]
                    .as_str()
                    .is_some_and(|by| by.starts_with('s'))
                // A round after the new node shard drops what it no
                // longer reads.
                && s["scopes"].get("role/relay-node").is_none()
        },
    )
    .await;
    // The role is gone: synthetic-echo stops and its port closes.
    let stopped = reaches(state.path(), &cluster, "synthetic-echo stopped", |s| {
        workload(s, "synthetic-echo")["observed"] == "stopped"
    })
    .await;
    assert!(
        workload(&stopped, "synthetic-echo")["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("role"),
        "{stopped:#}"
    );
    assert!(!echoes(&echo_at).await, "the echo port is closed");
    let k1 = failed_over["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"]["node_id"] == "k1");
    if let Some(k1) = k1 {
        assert!(k1["failures"].as_u64().unwrap_or(0) >= 1, "{k1:#}");
    }

    // kill -9, restart: what it kept is there at once, then current.
    agent.kill().await;
    let kept = version(&failed_over, "node/node-a");
    let _agent = Running::start(state.path(), &cluster);
    let restarted = reaches(state.path(), &cluster, "running again", |s| {
        version(s, "node/node-a") >= kept && s["health"] == "healthy"
    })
    .await;
    assert_eq!(version(&restarted, "node/node-a"), kept);

    // Two voters of three stop: the survivor answers from a minority;
    // the agent keeps what it holds and says it is degraded, and why.
    p.stop_voters(2).await;
    let degraded = reaches(state.path(), &cluster, "degraded in a minority", |s| {
        s["health"] == "degraded"
    })
    .await;
    let reason = degraded["degraded_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("minority") || reason.contains("no storage endpoint"),
        "{degraded:#}"
    );
    assert_eq!(
        version(&degraded, "node/node-a"),
        kept,
        "it keeps its state"
    );
}

// Goal (issue 11 "control plane down → degraded → back to healthy without
// a restart"): with the control plane stopped the running agent keeps its
// verified scopes and its workload, says it is degraded because the
// control plane is unreachable, and is healthy again by itself once the
// control plane is back at the same address, its heartbeats getting
// through again.
// Method: the real join and run binaries against the served control
// plane; stop the server, wait for `degraded`; serve again on the same
// addresses, wait for `healthy` and a new heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_outlives_the_control_plane_and_recovers() {
    let p = Platform::start().await;
    let server = p.serve().await;
    let state = tempfile::tempdir().unwrap();
    let cluster = p.cluster.clone();
    enrolled(&p, &server, state.path(), "node-b", &["--wait", "30s"]).await;
    p.wait_for_publisher().await;
    let _agent = Running::start(state.path(), &cluster);
    let healthy = reaches(state.path(), &cluster, "healthy with heartbeats", |s| {
        s["health"] == "healthy" && s["control_plane"]["reachable"] == true
    })
    .await;
    let held = version(&healthy, "node/node-b");
    assert!(held >= 1);

    let (addr, http_addr) = (server.addr, server.http_addr);
    drop(server);
    let degraded = reaches(
        state.path(),
        &cluster,
        "degraded without the control plane",
        |s| s["health"] == "degraded",
    )
    .await;
    assert!(
        degraded["degraded_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("control plane"),
        "{degraded:#}"
    );
    assert_eq!(
        version(&degraded, "node/node-b"),
        held,
        "it keeps its state"
    );

    let _server = p.serve_at(addr, http_addr).await;
    let sent = degraded["control_plane"]["sent"].as_u64().unwrap_or(0);
    reaches(state.path(), &cluster, "healthy again", |s| {
        s["health"] == "healthy"
            && s["control_plane"]["reachable"] == true
            && s["control_plane"]["sent"].as_u64().unwrap_or(0) > sent
    })
    .await;
}

// Goal (issue 11 "certificate renewal across at least two lifetimes",
// "revoked nodes"): a running agent on short-lived certificates renews
// twice with a new key each time and stays healthy: its heartbeats get
// through and it still reads new versions from the storage nodes (over
// connections made with the renewed certificate; the first one has
// expired by then). Revoked, it stops its workload (the echo port
// closes), writes `health: revoked` with the reason, and `run` ends with
// exit code 4 by itself.
// Method: the platform's control plane issuing 12 s node certificates;
// the real join and run binaries; `status -o json` polled; a role and
// synthetic-echo enabled after the second renewal; RevokeNode through the
// control plane's function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_renews_across_lifetimes_and_stops_when_revoked() {
    const VALIDITY: Duration = Duration::from_secs(12);
    let mut p = Platform::start().await;
    // Storage nodes keep their long certificates; the agent gets 12 s ones.
    p.ctx.node_cert_validity = VALIDITY;
    let server = p.serve().await;
    let state = tempfile::tempdir().unwrap();
    let cluster = p.cluster.clone();
    enrolled(
        &p,
        &server,
        state.path(),
        "node-r",
        &["--capability", "can_route_mesh", "--wait", "30s"],
    )
    .await;
    p.wait_for_publisher().await;
    let agent = Running::start(state.path(), &cluster);

    let renewed = reaches(state.path(), &cluster, "two renewals", |s| {
        s["certificate"]["renewals"].as_u64() >= Some(2)
    })
    .await;
    assert_eq!(renewed["certificate"]["last_error"], "", "{renewed:#}");
    assert_eq!(
        p.count(
            "SELECT count(*) FROM node_identities WHERE node_id = 'node-r'
               AND identity_status = 'rotated'"
        )
        .await,
        2
    );
    let serial = renewed["certificate"]["serial"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        p.count(&format!(
            "SELECT count(*) FROM node_identities WHERE node_id = 'node-r'
               AND identity_status = 'active' AND certificate_serial = '{serial}'"
        ))
        .await,
        1,
        "the serial status shows is the active identity"
    );
    let beats = renewed["control_plane"]["sent"].as_u64().unwrap_or(0);
    let node_version = version(&renewed, "node/node-r");

    // Still reading and heartbeating with the renewed certificates.
    p.assign_role("node-r", "relay-node").await;
    p.set_service("node-r", "synthetic-echo", "enabled").await;
    let running = reaches(state.path(), &cluster, "new versions after renewals", |s| {
        version(s, "node/node-r") > node_version
            && workload(s, "synthetic-echo")["observed"] == "running"
            && s["health"] == "healthy"
            && s["control_plane"]["sent"].as_u64().unwrap_or(0) > beats
    })
    .await;
    let detail = workload(&running, "synthetic-echo")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    let echo_at = detail.strip_prefix("listening on ").unwrap().to_string();
    assert!(echoes(&echo_at).await, "{detail}");

    // Revoked: workloads stop, the status says why, run ends with 4.
    rap_controlplane::nodes::revoke(
        &p.ctx,
        &p.owner,
        &pb::RevokeNodeRequest {
            cluster_id: cluster.clone(),
            node_id: "node-r".into(),
            reason: "decommissioned".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(agent.exited().await, Some(4));
    let last = status(state.path(), &cluster).await.unwrap();
    assert_eq!(last["health"], "revoked", "{last:#}");
    assert!(
        last["degraded_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{last:#}"
    );
    assert_eq!(workload(&last, "synthetic-echo")["observed"], "stopped");
    assert!(!echoes(&echo_at).await, "the echo port is closed");
}

// Goal (issue 11 "storage node killed → reads continue from the next
// endpoint"): `kill -9` of the storage node whose watch the agent is on
// (a voter process, mid-watch) costs the agent nothing but a failover:
// the next change reaches it from another voter, its workload follows,
// and the killed node is scored down; the agent stays healthy.
// Method: the platform's 3 voters as processes of the shipped
// rap-configstore; the real join and run binaries. The watch is proven
// open on a voter X by a change of a scope that does not end it
// (peers/node-v, when a second node gets a mesh role) arriving from X;
// then SIGKILL to X, and a change of the node's own shard (synthetic-echo
// enabled) must arrive from another voter. The time from the kill to the
// new version is printed (figures come from scripts/bench-agent.sh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_after_the_serving_voter_is_killed() {
    let bin = env!("CARGO_BIN_EXE_rap-configstore-under-test");
    let p = Platform::start_with("c1", StorageMode::Processes(bin.into())).await;
    let server = p.serve().await;
    let state = tempfile::tempdir().unwrap();
    let cluster = p.cluster.clone();
    enrolled(
        &p,
        &server,
        state.path(),
        "node-v",
        &["--capability", "can_route_mesh", "--wait", "30s"],
    )
    .await;
    p.assign_role("node-v", "relay-node").await;
    p.wait_for_publisher().await;
    let _agent = Running::start(state.path(), &cluster);
    let settled = reaches(state.path(), &cluster, "watching with the role", |s| {
        s["health"] == "healthy"
            && version(s, "peers/node-v") >= 1
            && s["endpoints"][0]["tier"] == "active"
            && s["endpoints"][0]["rtt_ms"].is_number()
    })
    .await;

    // A second relay node: the node's peers change, and the open watch
    // delivers them (the watch goes on: it is not the node's own scope).
    // The voter that delivered them is X, the one the watch is on.
    let peers_version = version(&settled, "peers/node-v");
    let other = p.enroll(&["can_route_mesh"]).await;
    p.assign_role(&other, "relay-node").await;
    let watched = reaches(state.path(), &cluster, "the peers change from X", |s| {
        version(s, "peers/node-v") > peers_version
    })
    .await;
    let serving = watched["scopes"]["peers/node-v"]["served_by"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(serving.starts_with('s'), "a voter: {watched:#}");
    // The peer cache names the new peer.
    assert!(
        watched["peers"]
            .as_array()
            .is_some_and(|peers| peers.iter().any(|peer| peer["node_id"] == other.as_str())),
        "{watched:#}"
    );

    // kill -9 of X, mid-watch; then a change of the node's own shard.
    p.kill_storage(&serving).await;
    let killed_at = std::time::Instant::now();
    let node_version = version(&watched, "node/node-v");
    p.set_service("node-v", "synthetic-echo", "enabled").await;
    let after = reaches(
        state.path(),
        &cluster,
        "the change from another voter",
        |s| {
            version(s, "node/node-v") > node_version
                && workload(s, "synthetic-echo")["observed"] == "running"
        },
    )
    .await;
    eprintln!(
        "kill -9 of {serving} to the next node shard applied: {} ms",
        killed_at.elapsed().as_millis()
    );
    let served_by = after["scopes"]["node/node-v"]["served_by"]
        .as_str()
        .unwrap_or_default();
    assert!(
        served_by.starts_with('s') && served_by != serving,
        "{after:#}"
    );
    let x = after["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"]["node_id"] == serving.as_str())
        .unwrap();
    assert!(x["failures"].as_u64().unwrap_or(0) >= 1, "{x:#}");
    let detail = workload(&after, "synthetic-echo")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(echoes(detail.strip_prefix("listening on ").unwrap()).await);
    assert_eq!(after["health"], "healthy", "{after:#}");
}
