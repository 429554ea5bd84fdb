//! A private PostgreSQL server for tests: a real database that the test
//! harness starts itself; never a shared server, never a mock.
//!
//! ```no_run
//! # async fn example() -> rap_pgtest::Result<()> {
//! let database = rap_pgtest::fresh_database().await?;
//! let pool = database.pool().await?;
//! sqlx::query("CREATE TABLE t (id int)").execute(&pool).await.ok();
//! # Ok(())
//! # }
//! ```
//!
//! # What do we store?
//!
//! Only throw-away test data. Each test process gets one server
//! ([`shared_server`]), started on first use with `initdb` and `pg_ctl` in a
//! new temp directory `rap-pgtest-*` that holds the data directory, the
//! server log and the unix socket; the server listens on no TCP address.
//! Every test then takes a database of its own ([`fresh_database`]), so
//! parallel tests can use the same table names. Nothing outlives the
//! process: a watchdog child stops the server and removes the directory when
//! the process ends, normally, by panic or by `kill -9`. Durability is
//! switched off (`fsync=off`) because none of it is kept.
//!
//! The binaries come from `RAP_PG_BINDIR`, `PATH` or the newest
//! `/usr/lib/postgresql/*/bin` ([`find_binaries`]); as root, `initdb` and
//! `pg_ctl` run as the `postgres` user through `runuser`.

mod binaries;
mod database;
mod error;
pub mod limits;
mod runas;
mod server;
mod shared;
mod url;
mod watchdog;

pub use binaries::{BINDIR_ENV, BinarySearch, DEBIAN_VERSIONS_ROOT, PgBinaries, find_binaries};
pub use database::TestDatabase;
pub use error::{Error, INSTALL_COMMAND, Result};
pub use runas::RunAs;
pub use server::PgServer;
pub use shared::{fresh_database, shared_server};
pub use url::{SUPERUSER, socket_url};
