//! Running the server programs as a user they accept.
//!
//! `initdb` and `postgres` refuse to run as root, and CI runs as root; then
//! they run as the `postgres` system user through `runuser`, and the private
//! directory is handed to that user. Public so that `rapctl dev up` runs its
//! long-lived development server the same way.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// The system user the Debian package creates and the server runs as when
/// this process is root.
const SERVER_USER: &str = "postgres";

/// Whom the server programs run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunAs {
    /// This process's own user (not root).
    CurrentUser,
    /// The `postgres` system user, through `runuser`, because this process
    /// is root.
    ServerUser {
        /// Its user id, to own the private directory.
        uid: u32,
        /// Its group id.
        gid: u32,
        /// The `runuser` program (util-linux).
        runuser: PathBuf,
    },
}

impl RunAs {
    /// Decides from this process's effective user id.
    pub fn detect() -> Result<RunAs> {
        // /proc/<pid> is owned by the effective uid of the process.
        let euid = std::fs::metadata("/proc/self")
            .map_err(Error::io("read effective user id from /proc/self"))?
            .uid();
        if euid != 0 {
            return Ok(RunAs::CurrentUser);
        }
        let uid = id_of("-u")?;
        let gid = id_of("-g")?;
        Ok(RunAs::ServerUser {
            uid,
            gid,
            runuser: runuser_program(),
        })
    }

    /// Gives `dir` (the private directory) to the server user, so `initdb`
    /// can create the data directory and `postgres` its socket in it.
    pub fn hand_over(&self, dir: &Path) -> Result<()> {
        match *self {
            RunAs::CurrentUser => Ok(()),
            RunAs::ServerUser { uid, gid, .. } => {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                    .map_err(Error::io("give the private directory to the postgres user"))
            }
        }
    }

    /// The argument vector that runs `program` as the right user (without
    /// its own arguments); the watchdog script runs it too.
    pub fn argv(&self, program: &Path) -> Vec<OsString> {
        match self {
            RunAs::CurrentUser => vec![program.as_os_str().to_owned()],
            RunAs::ServerUser { runuser, .. } => vec![
                runuser.as_os_str().to_owned(),
                OsString::from("-u"),
                OsString::from(SERVER_USER),
                OsString::from("--"),
                program.as_os_str().to_owned(),
            ],
        }
    }

    /// A command that runs `program` as the right user, with no stdin and
    /// `dir` as working directory (the caller's may be unreadable for the
    /// server user).
    pub fn command(&self, program: &Path, dir: &Path) -> Command {
        let argv = self.argv(program);
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .current_dir(dir)
            .stdin(Stdio::null());
        command
    }
}

/// `runuser` from `PATH`, else from the sbin directories a non-login `PATH`
/// may lack; if it is nowhere, the bare name, and spawning it reports that.
fn runuser_program() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join("runuser"))
        .find(|program| program.is_file())
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

/// `id <flag> postgres`, or [`Error::PostgresUserMissing`].
fn id_of(flag: &str) -> Result<u32> {
    let output = Command::new("id")
        .args([flag, SERVER_USER])
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io("look up the postgres user with `id`"))?;
    if !output.status.success() {
        return Err(Error::PostgresUserMissing);
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| Error::PostgresUserMissing)
}
