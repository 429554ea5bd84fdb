//! Small file helpers shared by the crates that keep key material and
//! configuration on disk (this crate's [`crate::tls`], the control plane's
//! keys directory, the binaries' configuration files).
//!
//! Every function returns a [`std::io::Result`] whose message names the
//! verb and the path (`open /x/ca.pem: No such file or directory`) and
//! keeps the [`std::io::ErrorKind`] of the failure, so a caller maps it
//! into its own error type with one `map_err`:
//!
//! * [`ErrorKind::FileTooLarge`]: a file over the caller's limit
//!   ([`read_bounded`]);
//! * [`ErrorKind::PermissionDenied`]: also a private key that group or
//!   others may read ([`check_private_mode`]);
//! * [`ErrorKind::InvalidData`]: content that does not parse (not UTF-8,
//!   no certificate);
//! * anything else: the operating system's error.
//!
//! Writes are durable ([`write_file`]: data and directory entry are
//! synced); replacing a file is atomic ([`Overwrite::Replace`]).

use rap_proto::envelope::SnapshotSigner;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::io::{ErrorKind, Read, Write};
use std::path::Path;

/// What [`write_file`] does when the file exists already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overwrite {
    /// Refuse ([`ErrorKind::AlreadyExists`]): the file is created once.
    Never,
    /// Replace it atomically: a temporary file `<name>.tmp` is written and
    /// renamed over the old one, so a reader sees the old or the new file,
    /// never half of one.
    Replace,
}

/// Writes `bytes` to `path` with `mode` (for a new file), durably: the
/// file is synced, then its directory. See [`Overwrite`] for an existing
/// file.
pub fn write_file(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    overwrite: Overwrite,
) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let target = match overwrite {
        Overwrite::Never => path.to_path_buf(),
        Overwrite::Replace => {
            let mut name = path.file_name().unwrap_or_default().to_os_string();
            name.push(".tmp");
            path.with_file_name(name)
        }
    };
    if overwrite == Overwrite::Replace {
        // A temporary file left by a crash is ours to discard.
        let _ = std::fs::remove_file(&target);
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&target)
        .map_err(context("create", &target))?;
    let written = (|| -> std::io::Result<()> {
        // The umask may have narrowed the mode; a key must never be wider,
        // and a public file must be as readable as asked.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(context("chmod", &target))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(context("write", &target))?;
        if overwrite == Overwrite::Replace {
            std::fs::rename(&target, path).map_err(context("rename", &target))?;
        }
        Ok(())
    })();
    if written.is_err() {
        // Never leave half a file behind: the one created above, new or
        // temporary, is ours to remove.
        let _ = std::fs::remove_file(&target);
    }
    written?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Syncs directory `dir`, so entries created, renamed or removed in it
/// survive a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(context("sync", dir))
}

/// Reads all of `path` if it holds at most `limit` bytes; a longer file
/// is refused ([`ErrorKind::FileTooLarge`]) after reading `limit + 1`
/// bytes of it.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(context("open", path))?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(context("read", path))?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            ErrorKind::FileTooLarge,
            format!("{} is larger than {limit} bytes", path.display()),
        ));
    }
    Ok(bytes)
}

/// Reads a UTF-8 text file (a configuration file) of at most `limit`
/// bytes ([`read_bounded`]).
pub fn read_config_file(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_bounded(path, limit)?).map_err(|e| {
        std::io::Error::new(
            ErrorKind::InvalidData,
            format!("read {}: not UTF-8: {e}", path.display()),
        )
    })
}

/// Refuses a private key file that group or others may read, as ssh does
/// ([`ErrorKind::PermissionDenied`], with a `chmod 600` hint).
pub fn check_private_mode(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(context("stat", path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "key file {} has mode {:o}; run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Reads a private key file of at most `limit` bytes, refusing one that
/// group or others may read ([`check_private_mode`]).
pub fn read_private_key(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    check_private_mode(path)?;
    read_bounded(path, limit)
}

/// The first certificate of a PEM buffer read from `path`
/// ([`ErrorKind::InvalidData`] when there is none or it does not parse).
pub fn first_cert(path: &Path, pem: &[u8]) -> std::io::Result<CertificateDer<'static>> {
    let invalid = |message: String| std::io::Error::new(ErrorKind::InvalidData, message);
    CertificateDer::pem_slice_iter(pem)
        .next()
        .ok_or_else(|| invalid(format!("{} holds no certificate", path.display())))?
        .map_err(|e| {
            invalid(format!(
                "{} holds no valid certificate: {e}",
                path.display()
            ))
        })
}

/// Mode of every private key file: owner read/write only.
pub const PRIVATE_KEY_MODE: u32 = 0o600;

/// Largest snapshot-signing key file read (a hex key is 64 characters).
pub const SIGNING_KEY_FILE_BYTES_MAX: u64 = 256;

/// Writes a snapshot-signing key as hex to a new file, mode 0600,
/// durably; refuses to overwrite an existing file.
pub fn write_signing_key(path: &Path, signer: &SnapshotSigner) -> rap_proto::Result<()> {
    let mut text = hex::encode(signer.to_secret_bytes());
    text.push('\n');
    write_file(path, text.as_bytes(), PRIVATE_KEY_MODE, Overwrite::Never).map_err(|e| {
        rap_proto::Error::InvalidKey {
            reason: e.to_string(),
        }
    })
}

/// Reads a key file written by [`write_signing_key`], refusing one that
/// group or others may read ([`check_private_mode`]).
pub fn read_signing_key(path: &Path) -> rap_proto::Result<SnapshotSigner> {
    let invalid = |reason: String| rap_proto::Error::InvalidKey { reason };
    let text =
        read_private_key(path, SIGNING_KEY_FILE_BYTES_MAX).map_err(|e| invalid(e.to_string()))?;
    let text = String::from_utf8(text)
        .map_err(|_| invalid(format!("key file {} is not text", path.display())))?;
    let bytes = hex::decode(text.trim())
        .map_err(|e| invalid(format!("key file {} is not hex: {e}", path.display())))?;
    let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        invalid(format!(
            "key file {} holds {} bytes, expected 32",
            path.display(),
            bytes.len()
        ))
    })?;
    Ok(SnapshotSigner::from_secret_bytes(&secret))
}

/// Adds `<verb> <path>: ` to an error's message, keeping its kind.
fn context<'a>(
    verb: &'a str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> std::io::Error + 'a {
    move |e| std::io::Error::new(e.kind(), format!("{verb} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a signing key survives its file, the file is 0600, a
    // world-readable file is refused and an existing file is never
    // overwritten.
    // Method: round trip in a temp dir, then chmod 644.
    #[test]
    fn signing_key_file_round_trip_and_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let signer = SnapshotSigner::generate().unwrap();
        write_signing_key(&path, &signer).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_signing_key(&path).unwrap().key_id(), signer.key_id());
        assert!(
            write_signing_key(&path, &signer).is_err(),
            "must not overwrite"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_signing_key(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    // Goal: `Never` creates with the mode and refuses an existing file;
    // `Replace` swaps the content, keeps no temporary file, and discards
    // one left by a crash. Method: write, rewrite, list.
    #[test]
    fn write_file_overwrite_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.key");
        write_file(&path, b"one", 0o600, Overwrite::Never).expect("create");
        assert_eq!(mode(&path), 0o600);
        let again = write_file(&path, b"two", 0o600, Overwrite::Never).expect_err("exists");
        assert_eq!(again.kind(), ErrorKind::AlreadyExists);
        assert!(again.to_string().contains("k.key"), "{again}");
        assert_eq!(std::fs::read(&path).expect("read"), b"one");

        std::fs::write(dir.path().join("k.key.tmp"), b"stale").expect("stale tmp");
        write_file(&path, b"three", 0o600, Overwrite::Replace).expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"three");
        assert_eq!(mode(&path), 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("k.key")]);
    }

    // Goal: the limit is inclusive, one byte more is FileTooLarge, and a
    // missing file keeps NotFound with the path in the message.
    #[test]
    fn read_bounded_limit_and_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"1234").expect("write");
        assert_eq!(read_bounded(&path, 4).expect("at limit"), b"1234");
        let big = read_bounded(&path, 3).expect_err("over limit");
        assert_eq!(big.kind(), ErrorKind::FileTooLarge);
        assert_eq!(read_config_file(&path, 4).expect("text"), "1234");
        std::fs::write(&path, [0xff, 0xfe]).expect("write");
        assert_eq!(
            read_config_file(&path, 4).expect_err("not UTF-8").kind(),
            ErrorKind::InvalidData
        );
        let missing = read_bounded(&dir.path().join("none"), 4).expect_err("missing");
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        assert!(missing.to_string().starts_with("open "), "{missing}");
    }

    // Goal: a key readable by group or others is refused with a chmod
    // hint; 0600 reads. Method: chmod.
    #[test]
    fn private_key_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.key");
        write_file(&path, b"key", 0o640, Overwrite::Never).expect("create");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let open = read_private_key(&path, 64).expect_err("group-readable");
        assert_eq!(open.kind(), ErrorKind::PermissionDenied);
        assert!(open.to_string().contains("chmod 600"), "{open}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_private_key(&path, 64).expect("private"), b"key");
    }

    // Goal: a buffer without a certificate is InvalidData naming the path.
    #[test]
    fn first_cert_refuses_garbage() {
        let err = first_cert(Path::new("/x/ca.pem"), b"garbage").expect_err("no cert");
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(err.to_string().contains("/x/ca.pem"), "{err}");
    }
}
