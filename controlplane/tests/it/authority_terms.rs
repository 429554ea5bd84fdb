//! The one writer of `cluster_authority_terms`: a new term is exactly the
//! previous one + 1, each write changes exactly one row, and a fence is
//! accepted once per (term, seq), only for the current term.

use rap_controlplane::Error;
use rap_controlplane::db::{authority_terms, clusters};

async fn database_with_cluster() -> (rap_testkit::pg::TestDatabase, sqlx::PgPool) {
    let db = rap_testkit::pg::fresh_database().await.unwrap();
    let pool = db.pool().await.unwrap();
    rap_controlplane::db::migrate(&pool).await.unwrap();
    let hex = "ab".repeat(32);
    let mut conn = pool.acquire().await.unwrap();
    clusters::insert(
        &mut conn,
        clusters::NewCluster {
            cluster_id: "c1",
            name: "c1",
            ca_fingerprint: &hex,
            ca_cert_pem: "not a real certificate",
            signing_key_id: &hex,
            trust_root: b"not a real trust root",
        },
    )
    .await
    .unwrap();
    (db, pool)
}

// Goal: terms only ever advance by one (the first is 1), and the old term
// must be the current one; a refused write changes nothing. Method: write
// terms directly through the db module, including the wrong ones.
#[tokio::test]
async fn terms_advance_by_exactly_one() {
    let (_db, pool) = database_with_cluster().await;
    let mut conn = pool.acquire().await.unwrap();
    let voters = vec!["s1".to_string(), "s2".to_string(), "s3".to_string()];

    let e = authority_terms::insert_first(&mut conn, "c1", 2, &voters)
        .await
        .expect_err("the first term is 1");
    assert!(matches!(e, Error::Internal(_)), "{e}");
    assert!(
        authority_terms::current(&mut conn, "c1")
            .await
            .unwrap()
            .is_none()
    );

    authority_terms::insert_first(&mut conn, "c1", 1, &voters)
        .await
        .unwrap();
    let e = authority_terms::insert_first(&mut conn, "c1", 1, &voters)
        .await
        .expect_err("bootstrapped already");
    assert_eq!(e.code(), "FAILED_PRECONDITION", "{e}");

    let survivors = vec!["s1".to_string(), "s2".to_string()];
    let e = authority_terms::advance(
        &mut conn,
        "c1",
        1,
        3,
        authority_terms::TermReason::Promotion,
        &survivors,
    )
    .await
    .expect_err("1 -> 3 skips a term");
    assert!(matches!(e, Error::Internal(_)), "{e}");
    let current = authority_terms::current(&mut conn, "c1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (current.authority_term, current.reason.as_str()),
        (1, "bootstrap")
    );

    authority_terms::advance(
        &mut conn,
        "c1",
        1,
        2,
        authority_terms::TermReason::Promotion,
        &survivors,
    )
    .await
    .unwrap();
    let current = authority_terms::current(&mut conn, "c1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.authority_term, 2);
    assert_eq!(current.last_seq, 0);
    assert_eq!(current.reason, "promotion");
    assert_eq!(current.survivors, survivors);

    // Term 1 is not current any more: ending it again changes no row.
    let e = authority_terms::advance(
        &mut conn,
        "c1",
        1,
        2,
        authority_terms::TermReason::Promotion,
        &survivors,
    )
    .await
    .expect_err("term 1 already ended");
    assert_eq!(e.code(), "STALE_FENCE", "{e}");
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM cluster_authority_terms WHERE cluster_id = 'c1'")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(rows, 2);
}

// Goal: a fence is recorded only for the current term and a newer seq;
// anything else is STALE_FENCE and leaves last_seq alone. Method: record
// fences of the old term, a repeated seq, an older seq and a newer one.
#[tokio::test]
async fn fences_are_recorded_once_for_the_current_term() {
    let (_db, pool) = database_with_cluster().await;
    let mut conn = pool.acquire().await.unwrap();
    let voters = vec!["s1".to_string()];
    authority_terms::insert_first(&mut conn, "c1", 1, &voters)
        .await
        .unwrap();
    authority_terms::record_fence(&mut conn, "c1", 1, 5)
        .await
        .unwrap();
    for (term, seq, why) in [
        (1, 5, "already used"),
        (1, 4, "older"),
        (2, 9, "another term"),
    ] {
        let e = authority_terms::record_fence(&mut conn, "c1", term, seq)
            .await
            .expect_err(why);
        assert_eq!(e.code(), "STALE_FENCE", "{why}: {e}");
    }
    authority_terms::record_fence(&mut conn, "c1", 1, 6)
        .await
        .unwrap();
    let current = authority_terms::current(&mut conn, "c1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((current.authority_term, current.last_seq), (1, 6));
    let e = authority_terms::record_fence(&mut conn, "c2", 1, 1)
        .await
        .expect_err("no such cluster");
    assert_eq!(e.code(), "STALE_FENCE", "{e}");
}

// Goal: a fenced mutation that waits for the current term's lock while a
// promotion commits finds the new term, not "no term" (the chaos harness
// saw NOT_BOOTSTRAPPED refusals next to promotions). Method: transaction
// A holds the current row of term 1 and advances it to term 2; B asks for
// the locked current term meanwhile and waits; A commits; B must get term
// 2. The cluster without any term still finds none.
#[tokio::test]
async fn a_lock_taken_across_a_promotion_finds_the_new_term() {
    let (_db, pool) = database_with_cluster().await;
    let voters = vec!["s1".to_string(), "s2".to_string(), "s3".to_string()];
    {
        let mut conn = pool.acquire().await.unwrap();
        assert!(
            authority_terms::lock_current(&mut conn, "c1")
                .await
                .unwrap()
                .is_none(),
            "no term yet"
        );
        authority_terms::insert_first(&mut conn, "c1", 1, &voters)
            .await
            .unwrap();
    }
    let mut promotion = pool.begin().await.unwrap();
    let current = authority_terms::lock_current(&mut promotion, "c1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.term().unwrap(), 1);

    let waiter_pool = pool.clone();
    let waiter = tokio::spawn(async move {
        let mut tx = waiter_pool.begin().await.unwrap();
        let found = authority_terms::lock_current(&mut tx, "c1").await.unwrap();
        found.map(|row| row.term().unwrap())
    });
    // The waiter is blocked on the row lock until the promotion commits.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the waiter waits for the lock");
    authority_terms::advance(
        &mut promotion,
        "c1",
        1,
        2,
        authority_terms::TermReason::Promotion,
        &voters[..1],
    )
    .await
    .unwrap();
    promotion.commit().await.unwrap();
    let found = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is released")
        .unwrap();
    assert_eq!(found, Some(2), "the new term, not none");
}
