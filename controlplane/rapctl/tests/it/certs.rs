//! `rapctl certs check-expiration` against the real server, PostgreSQL
//! and keys directory.

use crate::Rapctl;
use rap_controlplane::certificates;
use rap_proto::pb;
use rap_testkit::platform::Platform;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// (kind, subject, state) of each certificate in a report, in its order.
fn entries(out: &str) -> Vec<(String, String, String)> {
    json(out)["certificates"]
        .as_array()
        .unwrap_or_else(|| panic!("no certificates in {out}"))
        .iter()
        .map(|c| {
            let text = |field: &str| c[field].as_str().unwrap().to_string();
            (text("kind"), text("subject"), text("state"))
        })
        .collect()
}

/// Moves the end of `node`'s active certificate to now + `offset`.
async fn set_not_after(p: &Platform, node: &str, offset: &str) {
    let moved = sqlx::query(
        "UPDATE node_identities SET certificate_not_after = now() + $2::interval,
                certificate_not_before = now() - interval '30 days'
          WHERE node_id = $1 AND identity_status = 'active'",
    )
    .bind(node)
    .bind(offset)
    .execute(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!(moved.rows_affected(), 1, "{node}");
}

// Goal: an operator sees which certificates end soon, soonest first and
// expired ones marked, with which of them renew by themselves: the
// storage nodes' (from PostgreSQL), the cluster's and the platform's CA
// and the control plane's own (from the keys directory); one cluster
// leaves the platform's out; pages of the API put together give each
// identity once; a window over the limit is refused; an org admin is
// refused and audited. Method: the real platform (storage nodes enrolled
// as in production), two storage certificates moved to "expired an hour
// ago" and "ends in half an hour" in the database, then the real rapctl and
// the API's pages one row at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_expiration_lists_what_ends_soon() {
    let p = Platform::start().await;
    let server = p.serve().await;
    let storage: Vec<String> = sqlx::query_scalar(
        "SELECT node_id FROM node_identities
          WHERE kind = 'storage' AND identity_status = 'active' ORDER BY node_id",
    )
    .fetch_all(&p.ctx.pool)
    .await
    .unwrap();
    assert!(storage.len() >= 3, "{storage:?}");
    set_not_after(&p, &storage[1], "-1 hour").await;
    set_not_after(&p, &storage[0], "30 minutes").await;

    // An hour: the two moved certificates, the expired one first (the
    // test platform's certificates last a day).
    let (code, out, err) = server
        .rapctl(
            &p,
            &["certs", "check-expiration", "--within", "1h", "-o", "json"],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        entries(&out),
        [
            ("storage".into(), storage[1].clone(), "expired".into()),
            ("storage".into(), storage[0].clone(), "expiring".into()),
        ],
        "{out}"
    );
    let (code, out, err) = server
        .rapctl(&p, &["certs", "check-expiration", "--within", "1h"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&storage[1]) && out.contains("-1h"), "{out}");
    assert!(
        err.contains("1 expired, 1 expiring within 1h, 0 unreadable"),
        "{err}"
    );

    // Everything: every storage node, both CAs (no automatic renewal),
    // the control plane's own certificates, soonest first.
    let (code, out, err) = server
        .rapctl(
            &p,
            &[
                "certs",
                "check-expiration",
                "--within",
                "7300d",
                "-o",
                "json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let report = json(&out);
    let all = report["certificates"].as_array().unwrap();
    let ends: Vec<i64> = all
        .iter()
        .map(|c| c["not_after_unix_ms"].as_i64().unwrap())
        .collect();
    assert!(ends.is_sorted(), "{out}");
    let kinds: Vec<String> = entries(&out).into_iter().map(|(kind, _, _)| kind).collect();
    for kind in [
        "platform-ca",
        "platform-server",
        "cluster-ca",
        "cluster-server",
        "controlplane-client",
    ] {
        assert_eq!(
            kinds.iter().filter(|k| *k == kind).count(),
            1,
            "{kind}: {out}"
        );
    }
    assert_eq!(
        kinds.iter().filter(|k| *k == "storage").count(),
        storage.len(),
        "{out}"
    );
    for c in all {
        let ca = c["kind"].as_str().unwrap().ends_with("-ca");
        assert_eq!(c["renewed_automatically"], !ca, "{c}");
    }
    let (code, out, err) = server
        .rapctl(
            &p,
            &[
                "certs",
                "check-expiration",
                "--cluster",
                "c1",
                "--within",
                "7300d",
                "-o",
                "json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        entries(&out)
            .iter()
            .all(|(kind, _, _)| !kind.starts_with("platform")),
        "{out}"
    );

    // The API a row at a time: each identity once, in order.
    let mut token = String::new();
    let mut paged = Vec::new();
    for _ in 0..100 {
        let page = certificates::expiring(
            &p.ctx,
            &p.owner,
            &pb::ListExpiringCertificatesRequest {
                cluster_id: "c1".into(),
                within_seconds: 7300 * 86_400,
                page: Some(pb::PageRequest {
                    page_size: 1,
                    page_token: token.clone(),
                }),
            },
        )
        .await
        .unwrap();
        paged.extend(
            page.certificates
                .into_iter()
                .filter(|c| c.kind == "storage")
                .map(|c| c.subject),
        );
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let mut expected = storage.clone();
    expected.swap(0, 1);
    assert_eq!(paged[..2], expected[..2]);
    let mut sorted = paged.clone();
    sorted.sort();
    assert_eq!(sorted, storage);

    // Refusals.
    let (code, _, _) = server
        .rapctl(&p, &["certs", "check-expiration", "--within", "30000d"])
        .await;
    assert_eq!(code, 2, "a window over the limit is a usage error");
    let refused = certificates::expiring(
        &p.ctx,
        &p.owner,
        &pb::ListExpiringCertificatesRequest {
            within_seconds: u64::MAX,
            ..Default::default()
        },
    )
    .await
    .expect_err("window over the limit");
    assert_eq!(refused.code(), "INVALID_ARGUMENT", "{refused}");
    let refused = certificates::expiring(
        &p.ctx,
        &p.owner,
        &pb::ListExpiringCertificatesRequest {
            cluster_id: "no-such-cluster".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("unknown cluster");
    assert_eq!(refused.code(), "NOT_FOUND", "{refused}");

    let org_token = crate::org_admin_token(&server, &p, "acme").await;
    let before = p.audit_events("certificate.expiry").await.len();
    let (code, out, err) = server
        .rapctl_as(&p, &org_token, &["certs", "check-expiration"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert!(!out.contains("storage"), "{out}");
    let refusals = p.audit_events("certificate.expiry").await;
    assert_eq!(refusals.len(), before + 1);
    assert_eq!(refusals[before].0, "refused");
}
