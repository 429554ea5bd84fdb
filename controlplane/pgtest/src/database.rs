//! A database of its own for one test.

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::error::{Error, Result};
use crate::limits::POOL_CONNECTIONS_MAX;

/// A new, empty database on a private server, made for one test so that
/// tests running in parallel never see each other's tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestDatabase {
    /// Its connection URL (unix socket form, see [`crate::socket_url`]).
    pub url: String,
    /// Its name, as `current_database()` returns it.
    pub name: String,
}

impl TestDatabase {
    /// A pool of at most [`POOL_CONNECTIONS_MAX`] connections to this
    /// database, bound to the caller's tokio runtime (so each
    /// `#[tokio::test]` makes its own).
    pub async fn pool(&self) -> Result<PgPool> {
        PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .connect(&self.url)
            .await
            .map_err(Error::sql("connect a pool to the test database"))
    }
}
