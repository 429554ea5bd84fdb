//! The schema's own rules, checked with direct SQL.

// Goal: the schema enforces its rules itself, not only the code. Method:
// direct SQL that breaks each rule must fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_what_the_rules_forbid() {
    let db = rap_testkit::pg::fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    rap_controlplane::db::migrate(&pool).await.unwrap();
    let ok = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(sql)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }
    };
    let refused = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let error = sqlx::query(sql).execute(&pool).await.expect_err(sql);
            error.to_string()
        }
    };
    let fp = "a".repeat(64);
    let cluster = format!(
        "INSERT INTO clusters (cluster_id, name, ca_fingerprint, ca_cert_pem, signing_key_id, trust_root)
         VALUES ('c1', 'c1', '{fp}', 'pem', '{fp}', '\\x00')"
    );
    sqlx::query(&cluster).execute(&pool).await.unwrap();
    ok("INSERT INTO nodes (node_id) VALUES ('n1')").await;
    ok("INSERT INTO cluster_memberships (cluster_id, node_id) VALUES ('c1', 'n1')").await;
    assert!(
        refused("INSERT INTO cluster_memberships (cluster_id, node_id) VALUES ('c1', 'n1')")
            .await
            .contains("cluster_memberships_one_active")
    );
    ok("UPDATE cluster_memberships SET membership_status = 'revoked'").await;
    ok("INSERT INTO cluster_memberships (cluster_id, node_id) VALUES ('c1', 'n1')").await;
    assert!(
        refused("UPDATE cluster_memberships SET membership_status = 'sleeping'")
            .await
            .contains("check")
    );
    assert!(
        refused("INSERT INTO nodes (node_id) VALUES ('Not_An_Id')")
            .await
            .contains("rap_id")
    );

    ok("INSERT INTO node_join_tokens (token_id, cluster_id, token_hash, expires_at, max_uses, created_by)
        VALUES ('t1', 'c1', '\\x0000000000000000000000000000000000000000000000000000000000000000', now() + interval '1 hour', 1, 'x')").await;
    ok("UPDATE node_join_tokens SET used_count = 1").await;
    assert!(
        refused("UPDATE node_join_tokens SET used_count = 2")
            .await
            .contains("check")
    );

    ok("INSERT INTO node_groups (cluster_id, group_id, name) VALUES ('c1', 'a', 'a')").await;
    ok("INSERT INTO node_groups (cluster_id, group_id, name, parent_group_id) VALUES ('c1', 'b', 'b', 'a')").await;
    assert!(
        refused("UPDATE node_groups SET parent_group_id = 'b' WHERE group_id = 'a'")
            .await
            .contains("cycle")
    );

    ok("INSERT INTO cluster_authority_terms (cluster_id, authority_term, reason) VALUES ('c1', 1, 'bootstrap')").await;
    assert!(refused("INSERT INTO cluster_authority_terms (cluster_id, authority_term, reason) VALUES ('c1', 2, 'promotion')").await.contains("one_current"));
    assert!(
        refused("INSERT INTO admin_principals (principal_id, kind) VALUES ('x', 'org-admin')")
            .await
            .contains("check")
    );
    assert!(
        refused(
            "INSERT INTO cluster_audit_events (actor, action, result) VALUES ('a', 'x', 'maybe')"
        )
        .await
        .contains("check")
    );
}
