//! An operator drives the control plane with the real rapctl against the
//! real server.

use crate::Rapctl;
use rap_controlplane::enrollment;
use rap_testkit::platform::{AgentKey, Platform};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

// Goal: an operator drives the whole flow with rapctl. Method: real
// server and binary; token, a node's join, approval, node list, a refused
// role, the audit trail with fences, and an org admin refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapctl_drives_enrollment_roles_and_audit() {
    let p = Platform::start().await;
    let server = p.serve().await;

    let (code, out, err) = server.rapctl(&p, &["cluster", "list", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"c1\""), "{out}");

    let (code, out, err) = server
        .rapctl(
            &p,
            &[
                "token",
                "create",
                "--cluster",
                "c1",
                "--ttl",
                "10m",
                "-o",
                "json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let token = json(&out);
    let raw = token["raw_token"].as_str().unwrap().to_string();
    assert!(token["join_command"].as_str().unwrap().contains(&raw));

    let agent = AgentKey::generate();
    enrollment::submit(
        &p.ctx,
        &agent.join_request(&p.cluster, &raw, &["can_run_vnc_worker"]),
    )
    .await
    .unwrap();
    let (code, out, err) = server
        .rapctl(
            &p,
            &["join-request", "list", "--cluster", "c1", "-o", "json"],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let id = out
        .split('"')
        .find(|s| s.starts_with("jr-"))
        .unwrap_or_else(|| panic!("no request id in {out}"))
        .to_string();
    let (code, _, err) = server
        .rapctl(&p, &["join-request", "approve", &id, "--node-id", "vnc-1"])
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = server
        .rapctl(&p, &["node", "list", "--cluster", "c1"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("vnc-1") && out.contains("active"), "{out}");

    // A role the node cannot do: exit 1, the code and what to do next.
    let (code, _, err) = server
        .rapctl(
            &p,
            &[
                "role",
                "assign",
                "--cluster",
                "c1",
                "--node",
                "vnc-1",
                "--role",
                "rdp-worker",
            ],
        )
        .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("MISSING_CAPABILITY") && err.contains("hint:"),
        "{err}"
    );
    let (code, _, err) = server
        .rapctl(
            &p,
            &[
                "role",
                "assign",
                "--cluster",
                "c1",
                "--node",
                "vnc-1",
                "--role",
                "vnc-worker",
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = server
        .rapctl(&p, &["audit", "list", "--cluster", "c1", "-o", "json"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("join-request.approve") && out.contains("role.assign"),
        "{out}"
    );
    assert!(out.contains("refused"), "{out}");

    // An org admin: its own view works, platform objects do not.
    let (code, _, err) = server.rapctl(&p, &["org", "create", "acme"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = server
        .rapctl(
            &p,
            &[
                "principal",
                "create",
                "acme-admin",
                "--kind",
                "org-admin",
                "--org",
                "acme",
                "-o",
                "json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let org_token = json(&out)["raw_token"].as_str().unwrap().to_string();
    let (code, out, err) = server
        .rapctl_as(&p, &org_token, &["org", "view", "acme"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("vnc-1"), "{out}");
    let (code, _, err) = server
        .rapctl_as(&p, &org_token, &["node", "list", "--cluster", "c1"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
}

/// Runs `rapctl migrate -o json` on `database_url`: (exit code, stdout,
/// stderr).
async fn rapctl_migrate(database_url: &str) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rapctl"))
        .args(["migrate", "-o", "json"])
        .env("RAP_DATABASE_URL", database_url)
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

// Goal: `rapctl migrate` applies the schema (the same step as
// `rap-controlplane migrate`), a second run applies nothing, and an
// unreachable database says which setting to check. Method: the real
// binary on a fresh database, twice; then on a port nobody listens on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_the_schema_once() {
    let db = rap_testkit::pg::fresh_database().await.unwrap();
    let known = rap_controlplane::db::known_migrations();
    let (code, out, err) = rapctl_migrate(&db.url).await;
    assert_eq!(code, 0, "{err}");
    let first = json(&out);
    assert_eq!(first["applied"], known, "{out}");
    assert_eq!(first["schema_version"], known, "{out}");
    let (code, out, err) = rapctl_migrate(&db.url).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["applied"], 0, "{out}");
    let (code, _, err) = rapctl_migrate("postgres://nobody@127.0.0.1:1/none").await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect to the database"), "{err}");
    assert!(err.contains("RAP_DATABASE_URL"), "{err}");
}

// Goal (issue 10): an operator publishes, lists, fetches and verifies
// shards, rotates the signing key and reads the placement report with the
// real rapctl; the served control plane's publisher publishes a new node's
// scopes by itself. Method: real server and binary; enroll a node, wait
// for the publisher, then `snapshot list`, `snapshot publish` (nothing
// changed), `snapshot get` into a file and `snapshot show` on it,
// `cluster rotate-signing-key`, `snapshot list` again (generation 2 means
// every scope got a new version), `cluster placement --without`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapctl_publishes_fetches_rotates_and_reports_placement() {
    let p = Platform::start().await;
    let server = p.serve().await;
    let node = p.enroll(&["can_route_mesh"]).await;
    p.wait_for_publisher().await;

    let (code, out, err) = server
        .rapctl(&p, &["snapshot", "list", "--cluster", "c1", "-o", "json"])
        .await;
    assert_eq!(code, 0, "{err}");
    let listed = json(&out);
    let scopes: Vec<&str> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scope"].as_str().unwrap())
        .collect();
    assert!(scopes.contains(&format!("node/{node}").as_str()), "{out}");

    let (code, out, err) = server
        .rapctl(
            &p,
            &["snapshot", "publish", "--cluster", "c1", "-o", "json"],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let published = json(&out);
    // trust/revocations and trust/root were never dirty: published now.
    let names: Vec<&str> = published["published"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scope"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&format!("node/{node}").as_str()),
        "unchanged: {out}"
    );

    let file = p.dir.path().join("node.env");
    let (code, _, err) = server
        .rapctl(
            &p,
            &[
                "snapshot",
                "get",
                "--cluster",
                "c1",
                "--scope",
                &format!("node/{node}"),
                "--out",
                file.to_str().unwrap(),
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    // `snapshot show` is offline: no endpoint.
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_rapctl"))
        .args(["snapshot", "show", file.to_str().unwrap(), "-o", "json"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{out}");
    assert!(out.contains(&format!("node/{node}")), "{out}");

    let (code, out, err) = server
        .rapctl(&p, &["cluster", "rotate-signing-key", "c1", "-o", "json"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["trust_generation"], 2, "{out}");

    let (code, out, err) = server
        .rapctl(
            &p,
            &[
                "cluster",
                "placement",
                "c1",
                "--without",
                "node=s1",
                "-o",
                "json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let report = json(&out);
    assert_eq!(report["voters_left"], 2, "{out}");
    assert_eq!(report["writes_survive"], true, "{out}");
    assert_eq!(report["unreadable_scopes"], 0, "{out}");
    let (code, _, err) = server
        .rapctl(&p, &["cluster", "placement", "c1", "--without", "rack=1"])
        .await;
    assert_eq!(code, 1, "an unknown label is refused: {err}");
    assert!(err.contains("INVALID_ARGUMENT"), "{err}");
}

// Goal: `rapctl node list` without --cluster is the platform-wide list:
// every cluster's nodes, by cluster then node id, each naming its
// cluster; the API's pages put together give each node once; a page
// token it did not give is refused; an org admin is refused. Method: two
// clusters without authority groups, storage nodes enrolled into each as
// `rap-configstore join` does; the real rapctl, then the API a node at a
// time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_list_across_clusters() {
    let p = Platform::without_storage("c1", std::time::Duration::from_secs(3600)).await;
    let server = p.serve().await;
    let (code, _, err) = server.rapctl(&p, &["cluster", "create", "c2"]).await;
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    for (cluster, node) in [("c2", "t1"), ("c1", "s2"), ("c1", "s1")] {
        rap_testkit::platform::enrol_storage(
            &p.ctx,
            &p.owner,
            cluster,
            node,
            &dir.path().join(node),
        )
        .await;
    }
    let listed = |out: &str| -> Vec<(String, String)> {
        json(out)["nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("no nodes in {out}"))
            .iter()
            .map(|n| {
                (
                    n["cluster_id"].as_str().unwrap().to_string(),
                    n["node_id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let all =
        [("c1", "s1"), ("c1", "s2"), ("c2", "t1")].map(|(c, n)| (c.to_string(), n.to_string()));
    let (code, out, err) = server.rapctl(&p, &["node", "list", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(listed(&out), all, "{out}");
    let (code, out, err) = server
        .rapctl(&p, &["node", "list", "--cluster", "c2", "-o", "json"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(listed(&out), all[2..], "{out}");
    let (code, out, err) = server.rapctl(&p, &["node", "list"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("CLUSTER") && out.contains("c2"), "{out}");

    // Every cluster's nodes, one a page.
    let one_page = async |page_token: String| {
        rap_controlplane::nodes::list(
            &p.ctx,
            &p.owner,
            &rap_proto::pb::ListNodesRequest {
                cluster_id: String::new(),
                page: Some(rap_proto::pb::PageRequest {
                    page_size: 1,
                    page_token,
                }),
            },
        )
        .await
    };
    let mut token = String::new();
    let mut paged = Vec::new();
    for _ in 0..10 {
        let (nodes, next) = one_page(token).await.unwrap();
        paged.extend(nodes.into_iter().map(|n| (n.cluster_id, n.node_id)));
        token = next;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(paged, all);
    let refused = one_page("no-slash".into())
        .await
        .expect_err("a token the call did not give");
    assert_eq!(refused.code(), "INVALID_ARGUMENT", "{refused}");

    let org_token = crate::org_admin_token(&server, &p, "acme").await;
    let (code, out, err) = server.rapctl_as(&p, &org_token, &["node", "list"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert!(!out.contains("t1"), "{out}");
}
