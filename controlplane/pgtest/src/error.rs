//! The one error type of the harness.

use std::path::PathBuf;
use std::process::ExitStatus;

/// The command that installs the PostgreSQL server binaries (and the
/// `postgres` system user) on Debian. Every "missing" error quotes it, so the
/// person reading a failed test knows what to run next.
pub const INSTALL_COMMAND: &str = "apt-get update && apt-get install -y postgresql";

/// Result of every fallible harness call.
pub type Result<T> = std::result::Result<T, Error>;

/// Why the private PostgreSQL could not be found, started, stopped or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `initdb`, `pg_ctl` and `postgres` were not found together in any
    /// searched directory.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; searched: {searched}. \
         Install them with `{INSTALL_COMMAND}` (Debian), or point RAP_PG_BINDIR at their directory"
    )]
    BinariesMissing {
        /// The directories that were searched, in order, for the message.
        searched: String,
    },

    /// The process runs as root, where `initdb` refuses to run, and there is
    /// no `postgres` system user to run it as.
    #[error(
        "running as root: initdb and pg_ctl must run as the `postgres` system user, which does \
         not exist; the Debian package creates it: `{INSTALL_COMMAND}`"
    )]
    PostgresUserMissing,

    /// An operating-system call failed.
    #[error("{action}: {source}")]
    Io {
        /// What the harness was doing (a verb phrase).
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// `initdb`, `pg_ctl` or another helper ran and exited unsuccessfully.
    #[error(
        "{action}: `{command}` failed ({status})\n--- output ---\n{output}\n--- server log tail ({log}) ---\n{log_tail}"
    )]
    CommandFailed {
        /// What the harness was doing (a verb phrase).
        action: &'static str,
        /// The command line, for the reader to run by hand.
        command: String,
        /// How the command ended.
        status: ExitStatus,
        /// Its stdout and stderr.
        output: String,
        /// The server log file the tail comes from.
        log: PathBuf,
        /// The last bytes of the server log, or why they could not be read.
        log_tail: String,
    },

    /// A SQL statement or connection to the private server failed.
    #[error("{action}: {source}")]
    Sql {
        /// What the harness was doing (a verb phrase).
        action: &'static str,
        /// The underlying error.
        #[source]
        source: sqlx::Error,
    },
}

impl Error {
    /// Whether trying the same call again may succeed without a person acting.
    ///
    /// Missing binaries or users and failed `initdb`/`pg_ctl` runs need a
    /// person; a SQL error may be a transient connection problem.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::BinariesMissing { .. } => false,
            Error::PostgresUserMissing => false,
            Error::Io { .. } => false,
            Error::CommandFailed { .. } => false,
            Error::Sql { .. } => true,
        }
    }

    /// A stable, machine-readable code for the error kind.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BinariesMissing { .. } => "PGTEST_BINARIES_MISSING",
            Error::PostgresUserMissing => "PGTEST_POSTGRES_USER_MISSING",
            Error::Io { .. } => "PGTEST_IO",
            Error::CommandFailed { .. } => "PGTEST_COMMAND_FAILED",
            Error::Sql { .. } => "PGTEST_SQL",
        }
    }

    pub(crate) fn io(action: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { action, source }
    }

    pub(crate) fn sql(action: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| Error::Sql { action, source }
    }
}
