//! The one server per test process that all its tests share.

use std::sync::{Mutex, OnceLock, PoisonError};

use crate::database::TestDatabase;
use crate::error::Result;
use crate::server::PgServer;

/// The shared server once started. Statics are never dropped: the
/// watchdog stops the server when the process ends.
static SHARED: OnceLock<PgServer> = OnceLock::new();

/// Held while the shared server starts, so parallel first users start one.
static START_LOCK: Mutex<()> = Mutex::new(());

/// The server shared by every test of this process, started on first use
/// (which blocks about a second; later calls return at once).
///
/// If starting fails, the error is returned and the next call tries again.
/// The server is stopped and its directory removed when the process ends,
/// whether it exits, panics or is killed.
pub fn shared_server() -> Result<&'static PgServer> {
    if let Some(server) = SHARED.get() {
        return Ok(server);
    }
    let _starting = START_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(server) = SHARED.get() {
        return Ok(server);
    }
    let server = PgServer::start()?;
    Ok(SHARED.get_or_init(|| server))
}

/// A new, empty database of its own on the shared server: what each
/// PostgreSQL test starts with.
///
/// The first call in a process starts the server synchronously (about a
/// second, blocking the calling thread); the database itself is created on
/// the caller's runtime.
pub async fn fresh_database() -> Result<TestDatabase> {
    shared_server()?.create_database().await
}
