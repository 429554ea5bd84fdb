//! Finding `initdb`, `pg_ctl` and `postgres`.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Environment variable naming the directory that holds the server binaries;
/// it wins over every other place.
pub const BINDIR_ENV: &str = "RAP_PG_BINDIR";

/// Where Debian's `postgresql-N` packages put their binaries, one
/// `N/bin` directory per major version.
pub const DEBIAN_VERSIONS_ROOT: &str = "/usr/lib/postgresql";

/// The three programs the harness runs, all from one directory (pg_ctl finds
/// `postgres` next to itself, so mixing directories would mix versions).
const PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// Absolute paths of the PostgreSQL server programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgBinaries {
    /// Creates a data directory.
    pub initdb: PathBuf,
    /// Starts and stops the server.
    pub pg_ctl: PathBuf,
    /// The server itself (only checked for; pg_ctl runs it).
    pub postgres: PathBuf,
}

/// The inputs of [`find_binaries`], so the search is a pure function of them
/// and a test can run it on made-up directories.
#[derive(Clone, Debug, Default)]
pub struct BinarySearch {
    /// The value of [`BINDIR_ENV`]; when set, the only place searched.
    pub bindir_override: Option<PathBuf>,
    /// The value of `PATH`.
    pub path: Option<OsString>,
    /// The directory holding one `<version>/bin` per installed major version
    /// ([`DEBIAN_VERSIONS_ROOT`] outside tests); the newest version wins.
    pub versions_root: PathBuf,
}

impl BinarySearch {
    /// The search inputs of this process: its environment and the Debian
    /// layout.
    pub fn from_env() -> Self {
        BinarySearch {
            bindir_override: std::env::var_os(BINDIR_ENV)
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from),
            path: std::env::var_os("PATH"),
            versions_root: PathBuf::from(DEBIAN_VERSIONS_ROOT),
        }
    }
}

/// Finds the first directory that holds all three server programs:
/// [`BINDIR_ENV`] if set (and then nowhere else), else each `PATH` entry in
/// order, else the newest `<versions_root>/<version>/bin`.
///
/// Fails with [`Error::BinariesMissing`], whose message holds the install
/// command, when no directory has them.
pub fn find_binaries(search: &BinarySearch) -> Result<PgBinaries> {
    let candidates: Vec<PathBuf> = match &search.bindir_override {
        Some(dir) => vec![dir.clone()],
        None => {
            let mut dirs: Vec<PathBuf> = search
                .path
                .as_ref()
                .map(|path| std::env::split_paths(path).collect())
                .unwrap_or_default();
            dirs.extend(versioned_bindirs(&search.versions_root));
            dirs
        }
    };
    for dir in &candidates {
        if PROGRAMS
            .iter()
            .all(|program| is_executable(&dir.join(program)))
        {
            return Ok(PgBinaries {
                initdb: absolute(dir.join("initdb")),
                pg_ctl: absolute(dir.join("pg_ctl")),
                postgres: absolute(dir.join("postgres")),
            });
        }
    }
    let mut searched: Vec<String> = Vec::new();
    if let Some(dir) = &search.bindir_override {
        searched.push(format!("{BINDIR_ENV}={}", dir.display()));
    } else {
        searched.push("PATH".to_owned());
        searched.push(format!("{}/*/bin", search.versions_root.display()));
    }
    Err(Error::BinariesMissing {
        searched: searched.join(", "),
    })
}

/// `<root>/<version>/bin` for every installed version, newest first.
fn versioned_bindirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u64>, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|part| part.parse::<u64>().ok())
                .collect::<Option<Vec<u64>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Children run with another working directory (and maybe another user), so
/// a relative `PATH` entry must not stay relative.
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::INSTALL_COMMAND;

    fn fake_bindir(dir: &Path, programs: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for program in programs {
            let file = dir.join(program);
            std::fs::write(&file, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    #[test]
    fn missing_binaries_error_names_install_command() {
        // Goal: with no server binaries anywhere, the error tells the reader
        // the exact install command. Method: search an empty PATH directory
        // and a versions root that does not exist; check kind and message.
        let empty = tempfile::tempdir().unwrap();
        let search = BinarySearch {
            bindir_override: None,
            path: Some(empty.path().as_os_str().to_owned()),
            versions_root: empty.path().join("no-such-root"),
        };
        let error = find_binaries(&search).unwrap_err();
        assert!(matches!(error, Error::BinariesMissing { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(INSTALL_COMMAND), "{message}");
        assert!(
            message.contains("apt-get update && apt-get install -y postgresql"),
            "{message}"
        );
    }

    #[test]
    fn incomplete_directory_is_skipped_and_newest_version_wins() {
        // Goal: a PATH directory with only some programs (Debian's /usr/bin
        // has psql but no initdb) is skipped, and among versioned
        // directories the numerically newest wins (16 over 9.6).
        // Method: build fake directories and search them.
        let root = tempfile::tempdir().unwrap();
        let partial = root.path().join("partial");
        fake_bindir(&partial, &["initdb", "pg_ctl"]);
        let versions = root.path().join("versions");
        fake_bindir(&versions.join("9.6/bin"), &PROGRAMS);
        fake_bindir(&versions.join("16/bin"), &PROGRAMS);
        fake_bindir(&versions.join("13/bin"), &PROGRAMS);
        let search = BinarySearch {
            bindir_override: None,
            path: Some(partial.as_os_str().to_owned()),
            versions_root: versions.clone(),
        };
        let found = find_binaries(&search).unwrap();
        assert_eq!(found.initdb, versions.join("16/bin/initdb"));
        assert_eq!(found.pg_ctl, versions.join("16/bin/pg_ctl"));
    }

    #[test]
    fn override_is_the_only_place_searched() {
        // Goal: RAP_PG_BINDIR wins, and a wrong value fails loudly instead
        // of silently falling back. Method: a valid PATH plus first a good,
        // then an empty override directory.
        let root = tempfile::tempdir().unwrap();
        let on_path = root.path().join("on-path");
        let chosen = root.path().join("chosen");
        fake_bindir(&on_path, &PROGRAMS);
        fake_bindir(&chosen, &PROGRAMS);
        let mut search = BinarySearch {
            bindir_override: Some(chosen.clone()),
            path: Some(on_path.as_os_str().to_owned()),
            versions_root: root.path().join("none"),
        };
        assert_eq!(
            find_binaries(&search).unwrap().pg_ctl,
            chosen.join("pg_ctl")
        );
        search.bindir_override = Some(root.path().join("empty"));
        let error = find_binaries(&search).unwrap_err();
        assert!(error.to_string().contains(BINDIR_ENV), "{error}");
    }
}
