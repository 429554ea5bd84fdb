//! The audit log as evidence: append-only in the schema.

use rap_controlplane::audit::{self, Action};

// Goal: audit rows cannot be changed or removed through the control
// plane's own pool: UPDATE, DELETE (even of no row) and TRUNCATE are
// refused by the schema with a clear error and the row is unchanged.
// Method: write one event as the code does, then try each statement.
#[tokio::test]
async fn audit_rows_are_append_only_in_the_schema() {
    let db = rap_pgtest::fresh_database().await.unwrap();
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
