//! The audit log as evidence: append-only in the schema, bounded against
//! anonymous floods (sampled per source, every refusal counted in
//! metrics), attacker-sized text cut before it is stored.

use rap_controlplane::audit::{self, AUDIT_REASON_BYTES_MAX, AUDIT_TARGET_BYTES_MAX, Action};
use rap_controlplane::limits::{AUDIT_ANONYMOUS_PER_SOURCE, AUDIT_ANONYMOUS_WINDOW};
use rap_controlplane::tls::client_tls_config;
use rap_proto::pb;
use rap_proto::pb::admin_service_client::AdminServiceClient;
use rap_proto::pb::enrollment_service_client::EnrollmentServiceClient;
use rap_testkit::platform::{AgentKey, Platform, http_get};
use tonic::transport::{Channel, Endpoint};

fn code_of(status: &tonic::Status) -> String {
    rap_core::codes::error_detail(status)
        .map(|d| d.code)
        .unwrap_or_default()
}

// Goal: audit rows cannot be changed or removed through the control
// plane's own pool: UPDATE, DELETE (even of no row) and TRUNCATE are
// refused by the schema with a clear error and the row is unchanged.
// Method: write one event as the code does, then try each statement.
#[tokio::test]
async fn audit_rows_are_append_only_in_the_schema() {
    let db = rap_testkit::pg::fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    rap_controlplane::db::migrate(&pool).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let id = audit::record_ok(
        &mut tx,
        &Action::new("owner", "org.create", None, "acme"),
        None,
        serde_json::json!({"name": "Acme"}),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let row = || async {
        sqlx::query_as::<_, (String, String, String, String)>(
            "SELECT actor, action, target, result FROM cluster_audit_events WHERE event_id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = row().await;
    for sql in [
        "UPDATE cluster_audit_events SET actor = 'someone-else', result = 'refused'",
        "DELETE FROM cluster_audit_events",
        "DELETE FROM cluster_audit_events WHERE event_id < 0",
        "TRUNCATE cluster_audit_events",
    ] {
        let error = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        assert!(error.to_string().contains("append-only"), "{sql}: {error}");
    }
    assert_eq!(row().await, before);
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cluster_audit_events")
            .fetch_one(&pool)
            .await
            .unwrap(),
        1
    );
    // Appending still works.
    let mut tx = pool.begin().await.unwrap();
    audit::record_ok(
        &mut tx,
        &Action::new("owner", "org.create", None, "beta"),
        None,
        serde_json::json!({}),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

async fn admin_channel(p: &Platform, addr: std::net::SocketAddr) -> Channel {
    let platform_ca = std::fs::read_to_string(p.ctx.keys_dir.join("platform/ca.pem")).unwrap();
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(client_tls_config(&platform_ca, "localhost", None))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The value of the series `name{labels}` in a /metrics text (0 when
/// absent).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

const UNAUTHENTICATED_LIST: &str =
    "rap_cp_refusals_total{action=\"cluster.list\",code=\"UNAUTHENTICATED\"}";

// Goal: anonymous callers cannot decide how fast the audit log grows or
// what size its rows are: a refusal with a 10 KiB target is stored cut;
// 1000 anonymous refusals from one source write at most the per-source
// budget of rows, and every one of them is counted in /metrics; refusals
// of an authenticated principal are all written. Method: the real server;
// a status poll for a 10 KiB request id; 1000 calls without a token from
// 127.0.0.1; 20 refused calls by the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_refusals_are_sampled_per_source_and_all_counted() {
    let p = Platform::start().await;
    let server = p.serve().await;
    let channel = admin_channel(&p, server.addr).await;

    // A 10 KiB target: refused, stored cut.
    let key = AgentKey::generate();
    let huge = "x".repeat(10 * 1024);
    let mut enrollment = EnrollmentServiceClient::new(channel.clone());
    let refused = enrollment
        .get_join_status(key.status_request(&p.cluster, &huge))
        .await
        .unwrap_err();
    // The id is checked before anything is read: longer than an id may be.
    assert_eq!(code_of(&refused), "INVALID_ARGUMENT", "{refused:?}");
    let (target, reason, source): (String, String, Option<String>) = sqlx::query_as(
        "SELECT target, reason, details->>'source' FROM cluster_audit_events
          WHERE action = 'join-request.status' ORDER BY event_id DESC LIMIT 1",
    )
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap();
    assert!(target.len() <= AUDIT_TARGET_BYTES_MAX, "{}", target.len());
    assert!(reason.len() <= AUDIT_REASON_BYTES_MAX, "{}", reason.len());
    assert!(target.starts_with("xxxx"));
    assert_eq!(source.as_deref(), Some("127.0.0.1"));

    // 1000 anonymous refusals from one source.
    let (_, before) = http_get(server.http_addr, "/metrics").await.unwrap();
    let started = std::time::Instant::now();
    let admin = AdminServiceClient::new(channel.clone());
    use futures::StreamExt;
    let codes: Vec<tonic::Code> = futures::stream::iter(0..1000)
        .map(|_| {
            let mut admin = admin.clone();
            async move {
                admin
                    .list_clusters(pb::ListClustersRequest::default())
                    .await
                    .unwrap_err()
                    .code()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let elapsed = started.elapsed();
    assert!(codes.iter().all(|c| *c == tonic::Code::Unauthenticated));
    let rows = p
        .count(
            "SELECT count(*) FROM cluster_audit_events
              WHERE action = 'cluster.list' AND actor = 'anonymous'",
        )
        .await;
    // One window per AUDIT_ANONYMOUS_WINDOW started (the flood takes a
    // few seconds, so one window; the 10 KiB refusal used one row of it).
    let windows = 1 + elapsed.as_secs() / AUDIT_ANONYMOUS_WINDOW.as_secs();
    let budget = i64::from(AUDIT_ANONYMOUS_PER_SOURCE) * i64::try_from(windows).unwrap();
    assert!(
        (1..=budget).contains(&rows),
        "{rows} audit rows for 1000 anonymous refusals (budget {budget})"
    );
    let (_, after) = http_get(server.http_addr, "/metrics").await.unwrap();
    let counted = metric(&after, UNAUTHENTICATED_LIST) - metric(&before, UNAUTHENTICATED_LIST);
    assert!(counted >= 1000, "counted {counted}:\n{after}");
    assert!(metric(&after, "rap_cp_audit_refusals_suppressed_total") >= 1000 - 10);

    // A principal's refusals are trust actions by a known actor: all
    // written.
    let mut admin = AdminServiceClient::new(channel);
    for _ in 0..20 {
        let mut request = tonic::Request::new(pb::RevokeJoinTokenRequest {
            token_id: "no-such-token".into(),
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", p.owner_token).parse().unwrap(),
        );
        let refused = admin.revoke_join_token(request).await.unwrap_err();
        assert_eq!(code_of(&refused), "NOT_FOUND");
    }
    assert_eq!(
        p.count(
            "SELECT count(*) FROM cluster_audit_events
              WHERE action = 'join-token.revoke' AND actor = 'owner' AND result = 'refused'"
        )
        .await,
        20
    );
}
