//! Connections go over the private unix socket, never TCP.

use sqlx::Row;

#[tokio::test]
async fn url_connects_over_the_private_unix_socket() {
    // Goal: the URL the harness hands out reaches the private server through
    // the socket in its own directory, and the server has no TCP listener.
    // Method: connect through the URL and ask the server where it listens
    // (unix_socket_directories, listen_addresses) and how we came in
    // (inet_server_addr() is NULL on a unix socket).
    let database = rap_pgtest::fresh_database().await.unwrap();
    let server = rap_pgtest::shared_server().unwrap();
    let socket_dir = server.socket_dir().to_str().unwrap().to_owned();
    assert!(
        database.url.contains(&format!("host={socket_dir}")),
        "{}",
        database.url
    );

    let pool = database.pool().await.unwrap();
    let directories: String = sqlx::query("SHOW unix_socket_directories")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(directories, socket_dir);
    let listen: String = sqlx::query("SHOW listen_addresses")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(listen, "");
    let over_tcp: bool = sqlx::query("SELECT inet_server_addr() IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert!(!over_tcp, "connection did not use the unix socket");
    let port: String = sqlx::query("SHOW port")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(port, server.port().to_string());
    pool.close().await;
}
