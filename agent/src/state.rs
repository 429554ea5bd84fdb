//! The agent's node-local files: one directory per cluster under the state
//! directory, written crash-safely (temporary file, fsync, rename, fsync
//! of the directory), and the node's ed25519 key as PKCS#8 PEM, mode 0600.
//!
//! Layout of `<state-dir>/<cluster_id>/` (mode 0700):
//!
//! * [`NODE_KEY_FILE`]: the node key, generated here, never sent anywhere;
//! * [`JOIN_REQUEST_FILE`]: the pending join request, so a restarted
//!   `join` resumes polling instead of submitting again;
//! * after approval: [`NODE_CERT_FILE`] (node certificate, then the
//!   cluster CA), [`CA_CERT_FILE`], [`IDENTITY_FILE`],
//!   [`TRUST_ROOT_FILE`] (the encoded `SignedTrustRoot`),
//!   [`STORAGE_ENDPOINTS_FILE`] and [`CAPABILITIES_FILE`] (what the join
//!   reported, which heartbeats report again);
//! * while a certificate renewal is under way: [`NEXT_NODE_KEY_FILE`], the
//!   new key, until its certificate is in place (`crate::renewal`).
//!
//! What `run` keeps (verified envelopes, endpoint scores, health) is in
//! the agent's sled store ([`crate::store`]), which imports the join's
//! JSON files on its first open; these files stay for `join`, TLS and
//! renewal.

use ed25519_dalek::SigningKey;
use rap_core::files::Overwrite;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub use rap_core::tls::{CA_CERT_FILE, NODE_CERT_FILE, NODE_KEY_FILE};

/// The pending join request's file name.
pub const JOIN_REQUEST_FILE: &str = "join-request.json";
/// The enrolled identity's file name.
pub const IDENTITY_FILE: &str = "identity.json";
/// The trust root's file name (encoded `SignedTrustRoot`).
pub const TRUST_ROOT_FILE: &str = "trust-root.bin";
/// The bootstrap storage endpoints' file name.
pub const STORAGE_ENDPOINTS_FILE: &str = "storage-endpoints.json";

/// The capabilities reported at join (`capabilities.json`).
pub const CAPABILITIES_FILE: &str = "capabilities.json";
/// The next node key while a renewal is under way (`crate::renewal`).
pub const NEXT_NODE_KEY_FILE: &str = "node.key.next";

/// Mode of state directories.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the private key file.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of every other state file.
pub const PUBLIC_FILE_MODE: u32 = 0o644;

/// Largest key file read: a PKCS#8 PEM ed25519 key is about 120 bytes.
pub const KEY_FILE_BYTES_MAX: u64 = 4 * 1024;
/// Largest JSON state file read.
pub const JSON_FILE_BYTES_MAX: u64 = 64 * 1024;

/// PKCS#8 v1 (RFC 8410) DER of an ed25519 private key, up to the 32 seed
/// bytes: SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 },
/// OCTET STRING { OCTET STRING (32 bytes) } }.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A failure reading or writing node-local state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O operation on a path failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file operation failed; the message names the verb and the path
    /// (`rap_core::files`).
    #[error("{0}")]
    File(std::io::Error),
    /// The private key file may be read by group or others.
    #[error("{message}; it must be readable by its owner only")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// What is wrong, with the `chmod` that fixes it.
        message: String,
    },
    /// A state file's contents are unusable.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error("read operating-system randomness: {0}")]
    Random(String),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError + use<> {
    let path = path.to_path_buf();
    move |source| StateError::Io { op, path, source }
}

/// `n` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], StateError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| StateError::Random(e.to_string()))?;
    Ok(bytes)
}

/// The pending join request, as saved after submission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingJoin {
    /// The control plane's id of the request.
    pub join_request_id: String,
    /// The cluster it was submitted to.
    pub cluster_id: String,
    /// `host:port` it was submitted to.
    pub server: String,
    /// Hex blake3 of the node public key that signed it.
    pub key_fingerprint: String,
    /// When it was submitted.
    pub submitted_at_unix_ms: i64,
}

/// The enrolled identity (`identity.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// The node id the control plane assigned.
    pub node_id: String,
    /// The cluster.
    pub cluster_id: String,
    /// End of the node certificate's validity.
    pub not_after_unix_ms: i64,
    /// `host:port` of the control plane.
    pub server: String,
    /// Hex blake3 of the cluster CA certificate's DER.
    pub ca_fingerprint: String,
    /// Hex blake3 of the node public key.
    pub key_fingerprint: String,
}

/// One capability of this host (`capabilities.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityRecord {
    /// Its name (`[a-z0-9_]{1,63}`).
    pub name: String,
    /// Its detail (may be empty).
    #[serde(default)]
    pub detail: String,
}

/// One bootstrap storage endpoint (`storage-endpoints.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageEndpointRecord {
    /// The storage node.
    pub node_id: String,
    /// `host:port` of its shard service.
    pub address: String,
    /// Failure-domain region.
    pub region: String,
    /// Failure-domain zone.
    pub zone: String,
    /// Failure-domain host.
    pub host: String,
}

/// One cluster's state directory.
#[derive(Clone, Debug)]
pub struct ClusterState {
    dir: PathBuf,
}

impl ClusterState {
    /// `<state_dir>/<cluster_id>`, created (mode 0700, like its parent when
    /// that is created here) when missing. `cluster_id` must already be a
    /// valid id (a DNS label), so it is a safe file name.
    pub fn open(
        state_dir: &Path,
        cluster_id: &rap_proto::ids::ClusterId,
    ) -> Result<Self, StateError> {
        let dir = state_dir.join(cluster_id.as_str());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)
            .map_err(io("create directory", &dir))?;
        Ok(ClusterState { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The node key: loaded when [`NODE_KEY_FILE`] exists (refused when
    /// group or others may read it), otherwise generated from the
    /// operating system's CSPRNG and written with mode 0600. The second
    /// value is true when the key was created now.
    pub fn load_or_create_key(&self) -> Result<(SigningKey, bool), StateError> {
        let path = self.path(NODE_KEY_FILE);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => Ok((read_key_file(&path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SigningKey::from_bytes(&random_bytes::<32>()?);
                write_atomic(&path, key_pem(&key)?.as_bytes(), PRIVATE_FILE_MODE)?;
                Ok((key, true))
            }
            Err(e) => Err(io("stat", &path)(e)),
        }
    }

    /// The saved pending join request, if any.
    pub fn pending(&self) -> Result<Option<PendingJoin>, StateError> {
        self.read_json(JOIN_REQUEST_FILE)
    }

    /// Saves the pending join request.
    pub fn save_pending(&self, pending: &PendingJoin) -> Result<(), StateError> {
        self.write_json(JOIN_REQUEST_FILE, pending)
    }

    /// Forgets the pending join request (after approval or refusal).
    pub fn clear_pending(&self) -> Result<(), StateError> {
        let path = self.path(JOIN_REQUEST_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    /// The enrolled identity, if any.
    pub fn identity(&self) -> Result<Option<IdentityRecord>, StateError> {
        self.read_json(IDENTITY_FILE)
    }

    /// The capabilities reported at join; empty when none were stored.
    pub fn capabilities(&self) -> Result<Vec<CapabilityRecord>, StateError> {
        Ok(self.read_json(CAPABILITIES_FILE)?.unwrap_or_default())
    }

    /// Reads a JSON state file; `None` when it does not exist.
    pub fn read_json<T: for<'de> Deserialize<'de>>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StateError> {
        let path = self.path(name);
        let bytes = match read_bounded(&path, JSON_FILE_BYTES_MAX) {
            Ok(bytes) => bytes,
            Err(StateError::File(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                reason: format!("not valid JSON of the expected shape: {e}"),
            })
    }

    /// Writes a JSON state file crash-safely (mode 0644).
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let path = self.path(name);
        let mut text = serde_json::to_vec_pretty(value).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            reason: format!("encode JSON: {e}"),
        })?;
        text.push(b'\n');
        write_atomic(&path, &text, PUBLIC_FILE_MODE)
    }

    /// Writes a state file crash-safely (mode 0644).
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StateError> {
        write_atomic(&self.path(name), bytes, PUBLIC_FILE_MODE)
    }
}

/// Reads at most `limit` bytes of `path`; a longer file is refused as
/// corrupt.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, StateError> {
    rap_core::files::read_bounded(path, limit).map_err(|e| match e.kind() {
        std::io::ErrorKind::FileTooLarge => StateError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("longer than {limit} bytes"),
        },
        _ => StateError::File(e),
    })
}

/// Writes `bytes` to `path` with `mode`, crash-safely: the old file or the
/// new one, never a mix (`rap_core::files::write_file`).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    rap_core::files::write_file(path, bytes, mode, Overwrite::Replace).map_err(StateError::File)
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    rap_core::files::sync_dir(dir).map_err(StateError::File)
}

/// PKCS#8 v1 PEM of an ed25519 key (what [`read_key_file`] reads, and
/// what TLS libraries take as a client key).
pub fn key_pem(key: &SigningKey) -> Result<String, StateError> {
    let mut der = Vec::with_capacity(ED25519_PKCS8_V1_PREFIX.len() + 32);
    der.extend_from_slice(&ED25519_PKCS8_V1_PREFIX);
    der.extend_from_slice(key.as_bytes());
    let pair = rcgen::KeyPair::try_from(der.as_slice()).map_err(|e| StateError::Corrupt {
        path: PathBuf::from(NODE_KEY_FILE),
        reason: format!("encode the key as PKCS#8: {e}"),
    })?;
    Ok(pair.serialize_pem())
}

/// Reads a node key written by [`ClusterState::load_or_create_key`]:
/// refuses a file that group or others may read (like ssh), and anything
/// but a PKCS#8 v1 ed25519 key.
pub fn read_key_file(path: &Path) -> Result<SigningKey, StateError> {
    rap_core::files::check_private_mode(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => StateError::KeyPermissions {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
        _ => StateError::File(e),
    })?;
    let pem = read_bounded(path, KEY_FILE_BYTES_MAX)?;
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let der = PrivatePkcs8KeyDer::from_pem_slice(&pem)
        .map_err(|e| corrupt(format!("holds no PKCS#8 private key: {e}")))?;
    let seed = der
        .secret_pkcs8_der()
        .strip_prefix(&ED25519_PKCS8_V1_PREFIX[..])
        .and_then(|rest| <[u8; 32]>::try_from(rest).ok())
        .ok_or_else(|| corrupt("is not a PKCS#8 v1 ed25519 private key".into()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Hex blake3 of an ed25519 public key (64 characters), as the control
/// plane names keys.
pub fn key_fingerprint(key: &SigningKey) -> String {
    blake3::hash(key.verifying_key().as_bytes())
        .to_hex()
        .to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rap_proto::ids::ClusterId;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    // Goal: the key is created once with mode 0600 in a 0700 directory,
    // reused afterwards, and refused once group or others may read it.
    #[test]
    fn key_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state =
            ClusterState::open(&dir.path().join("state"), &ClusterId::new("c1").unwrap()).unwrap();
        assert_eq!(mode(state.dir()), DIR_MODE);
        let (key, created) = state.load_or_create_key().unwrap();
        assert!(created);
        let path = state.path(NODE_KEY_FILE);
        assert_eq!(mode(&path), PRIVATE_FILE_MODE);
        let (again, created) = state.load_or_create_key().unwrap();
        assert!(!created);
        assert_eq!(key.to_bytes(), again.to_bytes());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = state.load_or_create_key().unwrap_err();
        assert!(matches!(err, StateError::KeyPermissions { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(
            state.load_or_create_key(),
            Err(StateError::Corrupt { .. })
        ));
    }

    // Goal: the PEM is standard PKCS#8 (rustls loads it as a TLS key).
    #[test]
    fn key_pem_is_pkcs8() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let pem = key_pem(&key).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        rustls::crypto::ring::sign::any_eddsa_type(&der).unwrap();
    }

    // Goal: JSON files round-trip, a missing one is None, no temporary
    // file is left behind.
    #[test]
    fn json_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = ClusterState::open(dir.path(), &ClusterId::new("c1").unwrap()).unwrap();
        assert_eq!(state.pending().unwrap(), None);
        let pending = PendingJoin {
            join_request_id: "jr-1".into(),
            cluster_id: "c1".into(),
            server: "127.0.0.1:7443".into(),
            key_fingerprint: "ab".into(),
            submitted_at_unix_ms: 5,
        };
        state.save_pending(&pending).unwrap();
        assert_eq!(state.pending().unwrap(), Some(pending));
        state.clear_pending().unwrap();
        state.clear_pending().unwrap();
        assert_eq!(state.pending().unwrap(), None);
        let names: Vec<_> = std::fs::read_dir(state.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }
}
