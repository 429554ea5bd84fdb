//! The connection URL of a server that listens on a unix socket only.

use std::path::Path;

/// The user every harness connection logs in as (`initdb -U postgres`, trust
/// authentication, so no password).
pub const SUPERUSER: &str = "postgres";

/// `postgres://postgres@localhost/<database>?host=<socket_dir>&port=<port>`.
///
/// sqlx 0.8 (`PgConnectOptions`) and libpq (`psql`) both read a `host` query
/// parameter that starts with `/` as the directory of the unix socket
/// `.s.PGSQL.<port>`, and it overrides the `localhost` in the authority; the
/// port only names the socket file. The directory is percent-encoded, so
/// unusual temp paths survive.
pub fn socket_url(socket_dir: &Path, port: u16, database: &str) -> String {
    format!(
        "postgres://{SUPERUSER}@localhost/{}?host={}&port={port}",
        percent_encode(database),
        percent_encode(&socket_dir.to_string_lossy()),
    )
}

/// Encodes every byte but unreserved URL characters and `/`.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                encoded.push(char::from(byte));
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::PgConnectOptions;

    #[test]
    fn sqlx_reads_socket_directory_from_url() {
        // Goal: the URL form really selects the unix socket in sqlx, also for
        // a directory with characters that need encoding. Method: parse the
        // URL with PgConnectOptions and read back the host, port, database
        // and the socket directory.
        let dir = Path::new("/tmp/rap pgtest&x=1");
        let url = socket_url(dir, 54321, "db_1");
        let options: PgConnectOptions = url.parse().unwrap();
        assert_eq!(options.get_port(), 54321);
        assert_eq!(options.get_database(), Some("db_1"));
        assert_eq!(options.get_username(), "postgres");
        assert_eq!(
            options.get_socket().map(|socket| socket.as_path()),
            Some(dir)
        );
    }
}
