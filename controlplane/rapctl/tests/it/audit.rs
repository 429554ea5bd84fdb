//! `rapctl audit list|tail` with filters and paging, against the real
//! server and PostgreSQL.

use crate::Rapctl;
use rap_controlplane::Error;
use rap_controlplane::audit::{self, Action};
use rap_testkit::platform::Platform;
use std::time::Duration;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The ids of the events in `rapctl audit list -o json` output.
fn ids(out: &str) -> Vec<u64> {
    json(out)["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {out}"))
        .iter()
        .map(|e| e["event_id"].as_u64().unwrap())
        .collect()
}

/// Writes one event as the control plane does; returns its id.
async fn record(p: &Platform, actor: &str, action: &'static str, target: &str, ok: bool) -> u64 {
    let action = Action::new(actor, action, Some("c1"), target);
    if ok {
        let mut conn = p.ctx.pool.acquire().await.unwrap();
        let id = audit::record_ok(&mut conn, &action, None, serde_json::json!({}))
            .await
            .unwrap();
        return u64::try_from(id).unwrap();
    }
    audit::record_refusal(
        &p.ctx.pool,
        &action,
        &Error::PermissionDenied("test".into()),
    )
    .await;
    sqlx::query_scalar::<_, i64>("SELECT max(event_id) FROM cluster_audit_events WHERE actor = $1")
        .bind(actor)
        .fetch_one(&p.ctx.pool)
        .await
        .map(|id| u64::try_from(id).unwrap())
        .unwrap()
}

// Goal: an operator finds the events they look for: by actor, by action
// or action prefix (an `_` in a prefix is a character, not a wildcard),
// by target and by result, and pages back through older events with the
// `--before` the listing prints; bad filters are refused with
// INVALID_ARGUMENT before anything is read, and an org admin is refused
// and audited. Method: events written with the control plane's own
// audit writer, then the real rapctl against the real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_list_filters_and_pages_back() {
    let p = Platform::without_storage("c1", Duration::from_secs(3600)).await;
    let server = p.serve().await;
    let mut alice = Vec::new();
    for n in 1..=5 {
        let target = format!("jr-{n}");
        alice.push(record(&p, "alice", "join-request.approve", &target, true).await);
    }
    for _ in 0..3 {
        record(&p, "bob", "join-token.create", "tok-1", true).await;
    }
    let mallory = [
        record(&p, "mallory", "role.assign", "node-9", false).await,
        record(&p, "mallory", "role.remove", "node-9", false).await,
    ];
    let underscore = record(&p, "carol", "node_group.create", "g1", true).await;
    let lookalike = record(&p, "carol", "nodexgroup.create", "g2", true).await;

    let list = |args: &[&str]| {
        let mut all = vec!["audit", "list", "-o", "json"];
        all.extend_from_slice(args);
        all.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let run = async |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        server.rapctl(&p, &args).await
    };

    for (filter, want) in [
        (list(&["--actor", "alice"]), alice.clone()),
        (list(&["--action", "join-request."]), alice.clone()),
        (
            list(&["--action", "join-request.approve", "--target", "jr-3"]),
            vec![alice[2]],
        ),
        (
            list(&["--actor", "mallory", "--result", "refused"]),
            mallory.to_vec(),
        ),
        (list(&["--actor", "mallory", "--result", "ok"]), vec![]),
        (
            list(&["--action", "role.", "--cluster", "c1"]),
            mallory.to_vec(),
        ),
        (list(&["--action", "node_group."]), vec![underscore]),
        (list(&["--action", "nodexgroup."]), vec![lookalike]),
        (list(&["--actor", "alice", "--cluster", "c2"]), vec![]),
    ] {
        let (code, out, err) = run(filter.clone()).await;
        assert_eq!(code, 0, "{filter:?}: {err}");
        assert_eq!(ids(&out), want, "{filter:?}: {out}");
    }
    let (code, out, err) = run(list(&["--actor", "bob"])).await;
    assert_eq!(code, 0, "{err}");
    let bob = json(&out);
    assert!(
        bob["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "bob"
                && e["action"] == "join-token.create"
                && e["target"] == "tok-1"
                && e["result"] == "ok"),
        "{out}"
    );

    // Newest first, two at a time, back to the oldest.
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..5 {
        let mut args = vec!["audit", "list", "--actor", "alice", "--limit", "2"];
        if let Some(before) = &before {
            args.extend_from_slice(&["--before", before]);
        }
        let (code, out, err) = server.rapctl(&p, &args).await;
        assert_eq!(code, 0, "{err}");
        let page: Vec<u64> = out
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next()?.parse().ok())
            .collect();
        seen.splice(0..0, page.iter().copied());
        match err
            .lines()
            .find_map(|l| l.strip_prefix("older events: add --before "))
        {
            Some(next) => {
                assert_eq!(next, page[0].to_string(), "{out}");
                before = Some(next.to_string());
            }
            None => break,
        }
    }
    assert_eq!(seen, alice);

    // `audit tail` takes the same filters.
    let (code, out, err) = server
        .rapctl(&p, &["audit", "tail", "--actor", "mallory", "-o", "json"])
        .await;
    assert_eq!(code, 0, "{err}");
    let tailed: Vec<u64> = out
        .lines()
        .map(|line| json(line)["event_id"].as_u64().unwrap())
        .collect();
    assert_eq!(tailed, mallory.to_vec());

    // Bad filters: refused before anything is read.
    for (args, says) in [
        (list(&["--action", "Join!"]), "action filter"),
        (
            list(&["--actor", &"x".repeat(audit::AUDIT_TARGET_BYTES_MAX + 1)]),
            "actor filter",
        ),
    ] {
        let (code, _, err) = run(args.clone()).await;
        assert_eq!(code, 1, "{args:?}");
        assert!(
            err.contains("INVALID_ARGUMENT") && err.contains(says),
            "{err}"
        );
    }
    let (code, _, _) = run(list(&["--before", "0"])).await;
    assert_eq!(code, 2, "--before 0 is a usage error");
    let (code, _, _) = run(list(&["--result", "maybe"])).await;
    assert_eq!(code, 2, "an unknown result is a usage error");

    // The wrong caller: an org admin may not read the core's audit, and
    // the refusal is itself audited.
    let org_token = crate::org_admin_token(&server, &p, "acme").await;
    let refusals_before = p.audit_events("audit.list").await;
    let (code, out, err) = server
        .rapctl_as(&p, &org_token, &["audit", "list", "--actor", "alice"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert!(!out.contains("jr-"), "{out}");
    let refusals = p.audit_events("audit.list").await;
    assert_eq!(refusals.len(), refusals_before.len() + 1);
    assert_eq!(refusals.last().unwrap().0, "refused");
}
