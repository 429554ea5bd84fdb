//! One private PostgreSQL server: start, address, databases, stop.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::binaries::{BinarySearch, PgBinaries, find_binaries};
use crate::database::TestDatabase;
use crate::error::{Error, Result};
use crate::limits::{
    COMMAND_OUTPUT_BYTES_MAX, LOG_TAIL_BYTES_MAX, SERVER_CONNECTIONS_MAX, START_WAIT_SECONDS_MAX,
    STOP_WAIT_SECONDS_MAX,
};
use crate::runas::RunAs;
use crate::url::{SUPERUSER, socket_url};
use crate::watchdog::Watchdog;

/// Prefix of the private directory's name in the temp dir, so a stray one is
/// easy to recognise.
const DIR_PREFIX: &str = "rap-pgtest-";

/// Prefix of the databases that [`PgServer::create_database`] makes.
const DATABASE_PREFIX: &str = "rap_test_";

/// The database that always exists; new databases are created from a
/// connection to it.
const MAINTENANCE_DATABASE: &str = "postgres";

/// A private PostgreSQL server in its own temp directory, reachable only
/// through a unix socket in that directory.
///
/// Dropping it (or [`PgServer::stop`]) stops the server and removes the
/// directory. If the process dies first, even by `kill -9`, a watchdog child
/// does the same (see the `watchdog` module). Starting, stopping and
/// dropping block the calling thread (pg_ctl waits); in async code, do them
/// in `tokio::task::spawn_blocking`.
#[derive(Debug)]
pub struct PgServer {
    dir: PathBuf,
    port: u16,
    binaries: PgBinaries,
    run_as: RunAs,
    /// `None` once stopped.
    watchdog: Option<Watchdog>,
}

impl PgServer {
    /// Starts a new server with the binaries found by
    /// [`crate::find_binaries`] from this process's environment. Blocks for
    /// about a second.
    pub fn start() -> Result<PgServer> {
        PgServer::start_with(find_binaries(&BinarySearch::from_env())?)
    }

    /// Starts a new server with the given binaries. Blocks for about a
    /// second.
    ///
    /// The server runs with `fsync=off`, `synchronous_commit=off` and
    /// `full_page_writes=off`: fast, and a crash loses or corrupts data.
    /// That is only acceptable because it holds nothing but test data in a
    /// throw-away directory; never use these settings for a real database.
    pub fn start_with(binaries: PgBinaries) -> Result<PgServer> {
        let run_as = RunAs::detect()?;
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .map_err(Error::io("create the private directory"))?
            .keep();
        let data = dir.join("data");
        let mut stop_argv = run_as.argv(&binaries.pg_ctl);
        stop_argv.extend(pg_ctl_stop_args(&data, "immediate"));
        let watchdog = match Watchdog::spawn(&dir, &data, &stop_argv) {
            Ok(watchdog) => watchdog,
            Err(error) => {
                // Nothing runs in the directory yet; remove it here.
                let _ = std::fs::remove_dir_all(&dir);
                return Err(error);
            }
        };
        let mut server = PgServer {
            dir,
            port: 0,
            binaries,
            run_as,
            watchdog: Some(watchdog),
        };
        // On any error below, dropping `server` stops and removes what there is.
        server.run_as.hand_over(&server.dir)?;
        server.port = free_port()?;
        server.initdb()?;
        server.launch()?;
        tracing::info!(dir = %server.dir.display(), port = server.port, "started private PostgreSQL");
        Ok(server)
    }

    /// The private directory: it holds the data directory, the server log
    /// and the unix socket (`unix_socket_directories`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server log, quoted in errors.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The port; with no TCP listener it only names the socket file
    /// `.s.PGSQL.<port>`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of the `postgres` maintenance database, as the superuser.
    pub fn url(&self) -> String {
        self.database_url(MAINTENANCE_DATABASE)
    }

    /// The URL of `database` on this server, as the superuser.
    pub fn database_url(&self, database: &str) -> String {
        socket_url(&self.dir, self.port, database)
    }

    /// The postmaster's process id: the first line of `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Result<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .map_err(Error::io("read postmaster.pid"))?;
        text.lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .ok_or_else(|| Error::Io {
                action: "parse postmaster.pid",
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no pid on line 1"),
            })
    }

    /// Creates a new, empty, uniquely named database and returns its URL.
    ///
    /// Uses one short-lived connection on the caller's runtime. Creations
    /// are serialised within the process, because `CREATE DATABASE` fails
    /// while another one copies the same template. The database is never
    /// dropped: it goes with the server.
    pub async fn create_database(&self) -> Result<TestDatabase> {
        /// Serialises `CREATE DATABASE` across every test of the process;
        /// a tokio mutex works from any runtime.
        static CREATE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        /// Numbers the databases; one server per process, so unique enough.
        static NEXT_DATABASE: AtomicU64 = AtomicU64::new(1);

        let name = format!(
            "{DATABASE_PREFIX}{}",
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        let _serialised = CREATE_LOCK.lock().await;
        let mut connection = PgConnection::connect(&self.url())
            .await
            .map_err(Error::sql("connect to the maintenance database"))?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\" OWNER {SUPERUSER}"))
            .execute(&mut connection)
            .await
            .map_err(Error::sql("create the test database"))?;
        connection
            .close()
            .await
            .map_err(Error::sql("close the maintenance connection"))?;
        Ok(TestDatabase {
            url: self.database_url(&name),
            name,
        })
    }

    /// Stops the server (fast shutdown) and removes the private directory,
    /// reporting what went wrong; dropping the server does the same quietly.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let Some(watchdog) = self.watchdog.take() else {
            return Ok(());
        };
        let stopped = if self.data_dir().join("postmaster.pid").exists() {
            let mut command = self.run_as.command(&self.binaries.pg_ctl, &self.dir);
            command.args(pg_ctl_stop_args(&self.data_dir(), "fast"));
            self.run("stop the server", &mut command)
        } else {
            Ok(())
        };
        // Whether or not the fast stop worked, the watchdog stops what is
        // left (immediately) and removes the directory.
        let finished = watchdog.finish();
        stopped.and(finished)
    }

    fn initdb(&self) -> Result<()> {
        let mut command = self.run_as.command(&self.binaries.initdb, &self.dir);
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER, "-A", "trust", "--no-sync"])
            // UTF8 and the C locale: the same text semantics on every
            // machine, whatever LANG says (and no SQL_ASCII default).
            .args(["-E", "UTF8", "--locale=C"]);
        self.run("create the data directory with initdb", &mut command)
    }

    fn launch(&self) -> Result<()> {
        let options = format!(
            "-c listen_addresses='' -k {} -p {} -c max_connections={SERVER_CONNECTIONS_MAX} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            shell_quote(&self.dir.to_string_lossy()),
            self.port,
        );
        let mut command = self.run_as.command(&self.binaries.pg_ctl, &self.dir);
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .arg("-w")
            .arg("-t")
            .arg(START_WAIT_SECONDS_MAX.to_string())
            .arg("-o")
            .arg(options)
            .arg("start")
            // Its own process group: the terminal's Ctrl-C reaches the test
            // process, not the server; the watchdog then stops the server.
            .process_group(0);
        self.run("start the server with pg_ctl", &mut command)
    }

    /// Runs `command` to completion; on failure the error holds its output
    /// and the tail of the server log.
    fn run(&self, action: &'static str, command: &mut Command) -> Result<()> {
        let output = command.output().map_err(Error::io(action))?;
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Err(Error::CommandFailed {
            action,
            command: describe(command),
            status: output.status,
            output: tail_of_str(&text, COMMAND_OUTPUT_BYTES_MAX).to_owned(),
            log: self.log_file(),
            log_tail: log_tail(&self.log_file()),
        })
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Err(error) = self.stop_inner() {
            tracing::warn!(%error, dir = %self.dir.display(), "stop private PostgreSQL");
        }
    }
}

/// Arguments of `pg_ctl stop` in the given shutdown mode.
fn pg_ctl_stop_args(data: &Path, mode: &str) -> Vec<OsString> {
    vec![
        OsString::from("-D"),
        data.as_os_str().to_owned(),
        OsString::from("-m"),
        OsString::from(mode),
        OsString::from("-w"),
        OsString::from("-t"),
        OsString::from(STOP_WAIT_SECONDS_MAX.to_string()),
        OsString::from("stop"),
    ]
}

/// A port number nobody listens on now. With `listen_addresses=''` it only
/// names the socket file in the private directory, so a later clash on TCP
/// does not matter.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(Error::io("bind a free port on 127.0.0.1"))?;
    Ok(listener
        .local_addr()
        .map_err(Error::io("read the free port"))?
        .port())
}

/// Quotes `text` as one word for `sh` (pg_ctl passes `-o` through a shell).
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The command line, for error messages.
fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(
        command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    words.join(" ")
}

/// The last [`LOG_TAIL_BYTES_MAX`] bytes of the log, or why there are none.
fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let length = file.metadata()?.len();
        file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES_MAX)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|error| format!("(no log: {error})"))
}

/// The last at most `bytes_max` bytes of `text`, cut at a character boundary.
fn tail_of_str(text: &str, bytes_max: usize) -> &str {
    let mut start = text.len().saturating_sub(bytes_max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_single_quotes() {
        // Goal: a directory name with a quote still reaches postgres as one
        // word. Method: let sh echo the quoted word back.
        let word = "/tmp/it's here";
        let output = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(word)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(output.stdout).unwrap(), word);
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        // Goal: cutting output never splits a character or keeps the head.
        // Method: cut a string with multi-byte characters at every length.
        let text = "ééé-end";
        for bytes_max in 0..=text.len() + 1 {
            let tail = tail_of_str(text, bytes_max);
            assert!(text.ends_with(tail));
            assert!(tail.len() <= bytes_max);
        }
    }
}
