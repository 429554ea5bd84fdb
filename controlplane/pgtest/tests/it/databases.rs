//! Each test gets a database of its own on the shared server.

use sqlx::Row;

/// Creates the same table as every other test in this module, writes one
/// row and checks that it sees exactly its own row in its own database.
async fn own_database_sees_only_its_own_row(label: &str) {
    let database = rap_pgtest::fresh_database()
        .await
        .expect("create a fresh database");
    let pool = database.pool().await.expect("connect a pool");
    sqlx::query("CREATE TABLE items (label text NOT NULL)")
        .execute(&pool)
        .await
        .expect("create table items");
    sqlx::query("INSERT INTO items (label) VALUES ($1)")
        .bind(label)
        .execute(&pool)
        .await
        .expect("insert one row");
    let row = sqlx::query(
        "SELECT count(*) AS n, min(label) AS label, current_database() AS db FROM items",
    )
    .fetch_one(&pool)
    .await
    .expect("count the rows");
    assert_eq!(row.get::<i64, _>("n"), 1);
    assert_eq!(row.get::<String, _>("label"), label);
    assert_eq!(row.get::<String, _>("db"), database.name);
    pool.close().await;
}

// Goal (all four): tests running in parallel on the one shared server never
// see each other's data. Method: each creates the SAME table name in a fresh
// database, inserts one row, and checks count == 1, its own label, and that
// current_database() is the name it was given; a shared database would fail
// on CREATE TABLE or on the count.

#[tokio::test]
async fn parallel_database_one() {
    // Goal and method: see above; copy "one" of four running in parallel.
    own_database_sees_only_its_own_row("one").await;
}

#[tokio::test]
async fn parallel_database_two() {
    // Goal and method: see above; copy "two" of four running in parallel.
    own_database_sees_only_its_own_row("two").await;
}

#[tokio::test]
async fn parallel_database_three() {
    // Goal and method: see above; copy "three" of four running in parallel.
    own_database_sees_only_its_own_row("three").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_database_four() {
    // Goal and method: see above; copy "four" of four running in parallel.
    own_database_sees_only_its_own_row("four").await;
}

#[tokio::test]
async fn database_names_are_unique() {
    // Goal: two calls never hand out the same database. Method: create two
    // and compare names and URLs.
    let first = rap_pgtest::fresh_database().await.unwrap();
    let second = rap_pgtest::fresh_database().await.unwrap();
    assert_ne!(first.name, second.name);
    assert_ne!(first.url, second.url);
}
