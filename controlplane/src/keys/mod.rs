//! Key material the control plane holds, in files under a keys directory
//! and never in PostgreSQL.
//!
//! Layout under `<keys_dir>` (directories mode 0700, private keys 0600):
//!
//! * `platform/`: `ca.pem`, `ca.key` (the platform CA) and `server.pem`,
//!   `server.key` (the control plane's default TLS server certificate, for
//!   admins and joining agents): [`PlatformKeys`].
//! * `clusters/<cluster_id>/`: [`ClusterKeys`]
//!   * `ca.pem`, `ca.key`: the cluster CA, in the format of
//!     [`rap_core::tls::ClusterCa`] (which loads it);
//!   * `signing.key`: the snapshot-signing key ([`SnapshotSigner`]);
//!   * `trust-root.bin`: the genesis `SignedTrustRoot` naming that key;
//!   * `server.pem`, `server.key`: the control plane's TLS server
//!     certificate from the cluster CA, for the name
//!     [`cluster_server_name`] (`<cluster_id>.cluster.rap`) and
//!     `localhost`, so an agent that pins the cluster CA reaches the
//!     control plane with that SNI;
//!   * `controlplane/`: `ca.pem`, `node.pem`, `node.key`: the control
//!     plane's client certificate (identity
//!     `rap://cluster/<c>/controlplane`) for mTLS to the cluster's storage
//!     nodes.
//!
//! Agent and storage node certificates are issued only for keys generated
//! on their node ([`ClusterKeys::issue_certificate`]: only the public key
//! travels), each naming its kind.

use crate::error::{Error, Result};
use rap_core::files::{
    Overwrite, check_private_mode, read_bounded, read_private_key, sync_dir, write_file,
};
use rap_core::identity::{IdentityKind, PeerIdentity, cluster_server_name};
use rap_core::tls::{
    CA_CERT_FILE, CA_KEY_FILE, ClusterCa, LoadedCa, SERVER_NAME_BYTES_MAX, SERVER_NAMES_MAX,
    TlsFiles, ca_cert_params, distinguished_name, identity_cert_params, server_sans, set_validity,
};
use rap_proto::envelope::{SnapshotSigner, TrustRoot, VerifiedTrustRoot};
use rap_proto::ids::ClusterId;
use rap_proto::time::UnixMillis;
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod certs;
mod cluster;
pub mod console;
pub mod expiry;
mod generations;
mod platform;
#[cfg(test)]
mod tests;

pub(crate) use certs::load_certified_key;
use certs::{
    CertCheck, ServerNames, cert_is_current, current_pair, issue_server_cert, random_serial,
    server_cert_params, write_pair,
};
pub use cluster::ClusterKeys;
pub use generations::KEY_GENERATIONS_MAX;
pub use platform::{PlatformKeys, TOTP_KEY_FILE, totp_key};

/// Largest PEM file (certificate, chain or private key) read from the keys
/// directory: a few certificates, as everywhere.
pub use rap_core::tls::PEM_FILE_BYTES_MAX;

/// Largest `trust-root.bin` read: the wire limit of a signed trust root.
pub const TRUST_ROOT_FILE_BYTES_MAX: u64 = rap_proto::limits::TRUST_ROOT_BYTES_MAX as u64;

/// Default lifetime of a node certificate: short, renewed by its node.
pub use rap_core::tls::NODE_CERT_VALIDITY_DEFAULT;

/// Longest node certificate lifetime issued.
pub use rap_core::tls::NODE_CERT_VALIDITY_MAX;

/// Shortest node certificate lifetime issued.
pub use rap_core::tls::NODE_CERT_VALIDITY_MIN;

/// How far `not_before` is set into the past, so a peer whose clock is a
/// little behind accepts a fresh certificate (the backdate
/// [`rap_core::tls::set_validity`] applies).
pub const NOT_BEFORE_BACKDATE: Duration = rap_core::tls::NOT_BEFORE_BACKDATE;

/// Lifetime of the platform CA.
pub const PLATFORM_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Lifetime of a control plane TLS server certificate (platform or cluster).
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A server certificate that expires sooner than this is replaced when the
/// keys are loaded (or [`ClusterKeys::renew_expiring`] runs).
pub const SERVER_CERT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Lifetime of the control plane's client certificate for a cluster's
/// storage nodes.
pub const CONTROLPLANE_CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The control plane's client certificate is replaced when it expires
/// sooner than this.
pub const CONTROLPLANE_CLIENT_CERT_RENEW_BEFORE: Duration = Duration::from_secs(2 * 24 * 3600);

/// Length of a random certificate serial number in bytes (RFC 5280 allows
/// up to 20; at least 64 random bits are asked for).
pub const CERT_SERIAL_BYTES: usize = 16;

/// The platform keys' directory under the keys directory.
pub const PLATFORM_DIR: &str = "platform";
/// The directory of all clusters' keys under the keys directory.
pub const CLUSTERS_DIR: &str = "clusters";
/// The snapshot-signing key's file name.
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// The genesis trust root's file name.
pub const TRUST_ROOT_FILE: &str = "trust-root.bin";
/// A server certificate's file name.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// A server key's file name.
pub const SERVER_KEY_FILE: &str = "server.key";
/// The directory of the control plane's client certificate in a cluster's
/// keys directory.
pub const CONTROLPLANE_TLS_DIR: &str = "controlplane";

/// The name every control plane server certificate carries besides its own.
const LOCALHOST: &str = "localhost";

/// DER SubjectPublicKeyInfo of an ed25519 key, up to the 32 key bytes:
/// SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

const _: () = assert!(NODE_CERT_VALIDITY_DEFAULT.as_secs() <= NODE_CERT_VALIDITY_MAX.as_secs());
const _: () = assert!(NODE_CERT_VALIDITY_MAX.as_secs() <= SERVER_CERT_VALIDITY.as_secs());
const _: () = assert!(SERVER_CERT_RENEW_BEFORE.as_secs() < SERVER_CERT_VALIDITY.as_secs());
const _: () = assert!(SERVER_CERT_VALIDITY.as_secs() < PLATFORM_CA_VALIDITY.as_secs());
const _: () = assert!(
    CONTROLPLANE_CLIENT_CERT_VALIDITY.as_secs() <= rap_core::tls::NODE_CERT_VALIDITY_MAX.as_secs()
);
const _: () = assert!(
    CONTROLPLANE_CLIENT_CERT_RENEW_BEFORE.as_secs() < CONTROLPLANE_CLIENT_CERT_VALIDITY.as_secs()
);
const _: () = assert!(CERT_SERIAL_BYTES >= 8 && CERT_SERIAL_BYTES <= 20);

/// Hex blake3 of an ed25519 public key (64 characters).
pub fn public_key_fingerprint(key: &[u8; 32]) -> String {
    blake3::hash(key).to_hex().to_string()
}

/// Hex blake3 of a DER certificate (64 characters).
pub fn certificate_fingerprint(der: &[u8]) -> String {
    blake3::hash(der).to_hex().to_string()
}

/// A server certificate and its key on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerCertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
}

impl ServerCertFiles {
    /// The standard names in `dir`: `server.pem`, `server.key`.
    pub fn in_dir(dir: &Path) -> Self {
        ServerCertFiles {
            cert: dir.join(SERVER_CERT_FILE),
            key: dir.join(SERVER_KEY_FILE),
        }
    }
}

/// A certificate issued for a key that never left its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The node certificate, then the cluster CA certificate (PEM).
    pub chain_pem: String,
    /// The serial number, lowercase hex without separators (positive,
    /// [`CERT_SERIAL_BYTES`] bytes, so 2 × that many characters).
    pub serial_hex: String,
    /// Start of validity (now − [`NOT_BEFORE_BACKDATE`]), whole seconds.
    pub not_before: SystemTime,
    /// End of validity, whole seconds.
    pub not_after: SystemTime,
}

fn rcgen_error(what: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |e| Error::Internal(format!("{what}: {e}"))
}

fn core_error(path: &Path) -> impl FnOnce(rap_core::Error) -> Error + '_ {
    move |e| Error::Keys(format!("{}: {e}", path.display()))
}

fn io_error(verb: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Keys(format!("{verb} {}: {e}", path.display()))
}

/// A [`rap_core::files`] error (its message names the path).
fn file_error(e: std::io::Error) -> Error {
    Error::Keys(e.to_string())
}

/// A certificate-building error from [`rap_core::tls`].
fn cert_error(e: rap_core::Error) -> Error {
    Error::Internal(e.to_string())
}

/// The lock file of a keys directory ([`KeysDirLock`]).
pub const KEYS_LOCK_FILE: &str = ".lock";

/// An exclusive lock on one keys directory (`platform/` or a cluster's),
/// held while its certificates are checked and replaced: a key and then
/// its certificate are written, and two writers at once could leave a
/// mismatched pair. It is an advisory file lock (`flock`), so it orders
/// threads of one process and every control plane process that shares
/// the keys directory; it goes away when dropped or when its holder dies.
#[derive(Debug)]
pub(crate) struct KeysDirLock(std::fs::File);

impl KeysDirLock {
    /// Waits for and takes the lock of `dir`.
    pub(crate) fn take(dir: &Path) -> Result<KeysDirLock> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(KEYS_LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error("open", &path, e))?;
        file.lock().map_err(|e| io_error("lock", &path, e))?;
        Ok(KeysDirLock(file))
    }
}

impl Drop for KeysDirLock {
    fn drop(&mut self) {
        // Closing the file would release it too; say so explicitly.
        let _ = self.0.unlock();
    }
}

/// Whether `dir` exists and has any entry.
fn dir_has_entries(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("list", dir, e)),
    }
}

/// Creates `dir` and missing parents with mode 0700.
fn create_private_dir_all(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error("create", dir, e))
}

/// Creates the new directory `dir` with mode 0700.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error("create", dir, e))
}
