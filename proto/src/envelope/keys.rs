//! Snapshot-signing keys. The control plane holds them in key files (mode
//! 0600, outside PostgreSQL); they are never sent to nodes.

use super::digest::KeyId;
use crate::error::{Error, Result};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use std::io::Write;
use std::path::Path;

/// An ed25519 snapshot-signing key with its key id.
pub struct SnapshotSigner {
    key: SigningKey,
    key_id: KeyId,
}

impl SnapshotSigner {
    /// A new random key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| Error::InvalidKey {
            reason: format!("read operating-system randomness: {e}"),
        })?;
        Ok(Self::from_secret_bytes(&secret))
    }

    /// A key from its 32 secret bytes.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(secret);
        let key_id = KeyId::of(&key.verifying_key());
        SnapshotSigner { key, key_id }
    }

    /// The key id: blake3 of the public key.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The public half, as published in the trust root.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs `message` (already domain-separated by the caller).
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Writes the secret key as hex to a new file with mode 0600. Refuses
    /// to overwrite an existing file.
    pub fn write_key_file(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |e: std::io::Error| Error::InvalidKey {
            reason: format!("write key file {}: {e}", path.display()),
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        file.write_all(hex::encode(self.key.to_bytes()).as_bytes())
            .map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Reads a key file written by [`SnapshotSigner::write_key_file`].
    /// Refuses a file that group or others may read, like ssh does.
    pub fn read_key_file(path: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let io = |e: std::io::Error| Error::InvalidKey {
            reason: format!("read key file {}: {e}", path.display()),
        };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(Error::InvalidKey {
                reason: format!(
                    "key file {} has mode {:o}; run `chmod 600 {}`",
                    path.display(),
                    mode & 0o777,
                    path.display()
                ),
            });
        }
        // A hex key is 64 characters; read a bounded amount.
        const KEY_FILE_BYTES_MAX: u64 = 256;
        let mut text = String::new();
        use std::io::Read;
        std::fs::File::open(path)
            .map_err(io)?
            .take(KEY_FILE_BYTES_MAX)
            .read_to_string(&mut text)
            .map_err(io)?;
        let bytes = hex::decode(text.trim()).map_err(|e| Error::InvalidKey {
            reason: format!("key file {} is not hex: {e}", path.display()),
        })?;
        let secret: [u8; 32] = bytes.as_slice().try_into().map_err(|_| Error::InvalidKey {
            reason: format!(
                "key file {} holds {} bytes, expected 32",
                path.display(),
                bytes.len()
            ),
        })?;
        Ok(Self::from_secret_bytes(&secret))
    }
}

impl std::fmt::Debug for SnapshotSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("SnapshotSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Parses a 32-byte ed25519 public key from wire bytes.
pub(crate) fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey> {
    let array: [u8; 32] = bytes.try_into().map_err(|_| Error::InvalidKey {
        reason: format!("public key must be 32 bytes, got {}", bytes.len()),
    })?;
    VerifyingKey::from_bytes(&array).map_err(|e| Error::InvalidKey {
        reason: format!("not an ed25519 public key: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a key survives its file, the file is 0600, a world-readable
    // file is refused and an existing file is never overwritten.
    // Method: round trip in a temp dir, then chmod 644.
    #[test]
    fn key_file_round_trip_and_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let signer = SnapshotSigner::generate().unwrap();
        signer.write_key_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            SnapshotSigner::read_key_file(&path).unwrap().key_id(),
            signer.key_id()
        );
        assert!(signer.write_key_file(&path).is_err(), "must not overwrite");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SnapshotSigner::read_key_file(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
