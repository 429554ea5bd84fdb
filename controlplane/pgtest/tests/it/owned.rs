//! A test's own server: start, use, stop or drop.

use crate::support::assert_cleaned_up;

#[tokio::test]
async fn owned_server_stop_and_drop_leave_nothing() {
    // Goal: a `PgServer` of its own works and leaves no process or
    // directory after stop() or drop. Method: start two, make a database on
    // each, stop one explicitly and drop the other, then check that both
    // postmasters are gone and both directories removed.
    let servers = tokio::task::spawn_blocking(|| {
        (
            rap_pgtest::PgServer::start().unwrap(),
            rap_pgtest::PgServer::start().unwrap(),
        )
    })
    .await
    .unwrap();
    let (stopped, dropped) = servers;
    assert_ne!(stopped.socket_dir(), dropped.socket_dir());
    let mut left = Vec::new();
    for server in [&stopped, &dropped] {
        let database = server.create_database().await.unwrap();
        let pool = database.pool().await.unwrap();
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(one, 1);
        pool.close().await;
        left.push((
            server.postmaster_pid().unwrap(),
            server.socket_dir().to_owned(),
        ));
    }
    tokio::task::spawn_blocking(move || {
        stopped.stop().unwrap();
        drop(dropped);
    })
    .await
    .unwrap();
    for (pid, dir) in left {
        assert_cleaned_up(pid, &dir);
    }
}
