//! Snapshot-signing keys. The control plane holds them in key files (mode
//! 0600, outside PostgreSQL; `rap_core::files` writes and reads them);
//! they are never sent to nodes.

use super::digest::KeyId;
use crate::error::{Error, Result};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

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

    /// The 32 secret bytes, for writing the key file
    /// (`rap_core::files::write_signing_key`). Never log them.
    pub fn to_secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
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
