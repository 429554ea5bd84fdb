//! `rapctl overview` against the real server, PostgreSQL and authority
//! group.

use crate::Rapctl;
use rap_controlplane::heartbeats::Heartbeats;
use rap_controlplane::overview::NODE_STALE_AFTER;
use rap_proto::pb;
use rap_testkit::platform::{Platform, heartbeat};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Moves the end of `node`'s active certificate to now + `offset`.
async fn set_not_after(p: &Platform, node: &str, offset: &str) {
    sqlx::query(
        "UPDATE node_identities SET certificate_not_after = now() + $2::interval,
                certificate_not_before = now() - interval '30 days'
          WHERE ($1 = '' OR node_id = $1) AND identity_status = 'active'",
    )
    .bind(node)
    .bind(offset)
    .execute(&p.ctx.pool)
    .await
    .unwrap();
}

/// (kind, detail) of every risk of `cluster` in an overview's JSON.
fn risks(overview: &serde_json::Value, cluster: &str) -> Vec<(String, String)> {
    overview["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cluster_id"] == cluster)
        .unwrap_or_else(|| panic!("no {cluster} in {overview}"))["risks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

// Goal: the overview tells an operator what needs looking at, per cluster
// and in total: agents by health (a heartbeat older than the stale window
// is stale, none at all is "never seen"), a role none of whose holders is
// healthy, expired and expiring certificates, a join request waiting
// more than a day, a cluster without an authority group, and the group's
// state from the voters' recorded views; pages of clusters keep the totals of all; an org admin is
// refused and audited. Method: the real platform (c1 bootstrapped, three
// agents enrolled and given roles as in production), heartbeats through
// the control plane's heartbeat writer (one received a minute ago, one
// never), certificate ends and one request's age moved in PostgreSQL, a
// second cluster created and left alone; then the real rapctl and the
// API a cluster at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_names_the_risks() {
    let p = Platform::start().await;
    let server = p.serve().await;
    let caps = ["can_run_vnc_worker", "can_run_rdp_worker"];
    let fresh = p.enroll(&caps).await;
    let stale = p.enroll(&caps).await;
    let silent = p.enroll(&caps).await;
    p.assign_role(&fresh, "vnc-worker").await;
    p.assign_role(&stale, "rdp-worker").await;
    let heartbeats = Heartbeats::start(p.ctx.pool.clone());
    heartbeat(&heartbeats, "c1", &fresh, pb::NodeHealth::Healthy, 0).await;
    let stale_ms = i64::try_from(NODE_STALE_AFTER.as_millis()).unwrap() + 30_000;
    heartbeat(&heartbeats, "c1", &stale, pb::NodeHealth::Healthy, stale_ms).await;
    set_not_after(&p, "", "30 days").await;
    set_not_after(&p, &silent, "-1 hour").await;
    set_not_after(&p, &fresh, "2 days").await;
    let (_, old_request) = p.join(&caps).await;
    p.join(&caps).await;
    sqlx::query(
        "UPDATE node_join_requests SET created_at = now() - interval '2 days'
          WHERE join_request_id = $1",
    )
    .bind(&old_request)
    .execute(&p.ctx.pool)
    .await
    .unwrap();
    let (code, _, err) = server.rapctl(&p, &["cluster", "create", "c2"]).await;
    assert_eq!(code, 0, "{err}");

    // The group's state rests on the newest recorded views: record views
    // (as the server's watcher does every 15 s) until the voters see each
    // other, so a view from while the group was starting is not the last.
    let mut out = String::new();
    for _ in 0..100 {
        let (code, _, err) = server.rapctl(&p, &["authority", "status", "c1"]).await;
        assert_eq!(code, 0, "{err}");
        let (code, listed, err) = server.rapctl(&p, &["overview", "-o", "json"]).await;
        assert_eq!(code, 0, "{err}");
        out = listed;
        if json(&out)["clusters"][0]["authority_state"] == "healthy" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let overview = json(&out);
    assert_eq!(
        overview["clusters"][0]["authority_state"], "healthy",
        "{out}"
    );
    assert_eq!(overview["clusters_total"], 2, "{out}");
    let nodes = &overview["nodes_total"];
    assert_eq!(
        [
            &nodes["active"],
            &nodes["healthy"],
            &nodes["stale"],
            &nodes["never_seen"]
        ],
        [3, 1, 1, 1],
        "{out}"
    );
    assert_eq!(overview["pending_join_requests_total"], 2, "{out}");
    let c1 = &overview["clusters"][0];
    assert_eq!(c1["cluster_id"], "c1");
    assert_eq!(c1["certificates_expired"], 1, "{out}");
    assert_eq!(c1["certificates_expiring"], 1, "{out}");
    let kinds: Vec<String> = risks(&overview, "c1").into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        [
            "NODES_STALE",
            "NODES_NEVER_SEEN",
            "ROLE_UNCOVERED",
            "CERTIFICATES_EXPIRED",
            "CERTIFICATES_EXPIRING",
            "JOIN_REQUESTS_WAITING"
        ],
        "{out}"
    );
    let uncovered = risks(&overview, "c1")
        .into_iter()
        .find(|(k, _)| k == "ROLE_UNCOVERED")
        .unwrap();
    assert!(uncovered.1.starts_with("rdp-worker:"), "{uncovered:?}");
    assert_eq!(
        risks(&overview, "c2"),
        [(
            "NO_AUTHORITY_GROUP".to_string(),
            "not bootstrapped: nothing can be published".to_string()
        )]
    );
    assert_eq!(overview["clusters"][1]["authority_state"], "none");
    assert_eq!(overview["risks_total"], 7, "{out}");

    // The table.
    let (code, out, err) = server.rapctl(&p, &["overview"]).await;
    assert_eq!(code, 0, "{err}");
    let c1_line = out
        .lines()
        .find(|l| l.starts_with("c1 "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(c1_line.contains(" healthy "), "{out}");
    assert!(
        out.contains("ROLE_UNCOVERED") && out.contains("2 cluster(s)"),
        "{out}"
    );

    // A cluster a page: the totals stay those of all.
    let mut token = String::new();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let page = rap_controlplane::overview::overview(
            &p.ctx,
            &p.owner,
            &pb::GetOverviewRequest {
                page: Some(pb::PageRequest {
                    page_size: 1,
                    page_token: token.clone(),
                }),
            },
        )
        .await
        .unwrap();
        assert_eq!(page.clusters_total, 2);
        assert_eq!(page.risks_total, 7);
        seen.extend(page.clusters.into_iter().map(|c| c.cluster_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["c1", "c2"]);

    let org_token = crate::org_admin_token(&server, &p, "acme").await;
    let before = p.audit_events("overview.get").await.len();
    let (code, out, err) = server.rapctl_as(&p, &org_token, &["overview"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert!(!out.contains("c1"), "{out}");
    let refusals = p.audit_events("overview.get").await;
    assert_eq!(refusals.len(), before + 1);
    assert_eq!(refusals[before].0, "refused");
}
