//! The watchdog that stops the server and removes its directory when the
//! process that started it ends, however it ends.
//!
//! Statics are never dropped, and `kill -9` runs no code at all, so cleanup
//! cannot live in this process. It lives in a tiny `sh` child instead: its
//! stdin is a pipe whose only write end this process holds (std opens pipes
//! close-on-exec, so no other child inherits it). When this process exits,
//! panics or is killed, the kernel closes that end, the child's `read` sees
//! end-of-file, and it runs `pg_ctl stop -m immediate` and `rm -rf`.
//! The child ignores the terminal's signals and has its own process group, so
//! Ctrl-C or a group kill of the test run does not take it down first.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::error::{Error, Result};

/// `$1` is the private directory, `$2` the data directory, the rest the
/// command that stops the server. After the stop, a postmaster that is still
/// there (its pid file remains and the pid is a `postgres` process) is killed.
const SCRIPT: &str = r#"
trap '' HUP INT TERM QUIT PIPE
root=$1
data=$2
shift 2
while read -r _; do :; done
"$@" >/dev/null 2>&1
if [ -f "$data/postmaster.pid" ]; then
    pid=$(head -n 1 "$data/postmaster.pid")
    case "$(cat "/proc/$pid/comm" 2>/dev/null)" in
        postgres*) kill -9 "$pid" 2>/dev/null ;;
    esac
fi
rm -rf "$root"
"#;

/// A running watchdog; holding it keeps the pipe open.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    /// The write end of the pipe; never written, only held and closed.
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts a watchdog that, once this process lets go of it, runs
    /// `stop_argv` and removes `root` (which holds `data`).
    pub(crate) fn spawn(root: &Path, data: &Path, stop_argv: &[OsString]) -> Result<Watchdog> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("rap-pgtest-watchdog")
            .arg(root)
            .arg(data)
            .args(stop_argv)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(Error::io("spawn the cleanup watchdog"))?;
        let stdin = child.stdin.take();
        Ok(Watchdog { child, stdin })
    }

    /// Lets the watchdog run its cleanup now and waits until it is done.
    pub(crate) fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        self.child
            .wait()
            .map_err(Error::io("wait for the cleanup watchdog"))?;
        Ok(())
    }
}
