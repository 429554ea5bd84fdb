//! 32-byte blake3 digests and key ids.

use crate::error::{Error, Result};
use crate::limits::DIGEST_BYTES;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A blake3 digest: content hashes, header hashes, trust-root hashes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(pub [u8; DIGEST_BYTES]);

impl Digest {
    /// blake3 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// Parses a digest from wire bytes; `what` names the field in errors.
    pub fn from_slice(what: &'static str, bytes: &[u8]) -> Result<Self> {
        let array: [u8; DIGEST_BYTES] = bytes.try_into().map_err(|_| Error::Malformed {
            what,
            reason: format!("expected {DIGEST_BYTES} bytes, got {}", bytes.len()),
        })?;
        Ok(Digest(array))
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses lower- or upper-case hex.
    pub fn from_hex(text: &str) -> Result<Self> {
        let bytes = hex::decode(text.trim()).map_err(|e| Error::Malformed {
            what: "hex digest",
            reason: e.to_string(),
        })?;
        Digest::from_slice("hex digest", &bytes)
    }

    /// Compares in constant time (for secrets and hashes of secrets).
    pub fn ct_eq(&self, other: &Digest) -> bool {
        // blake3::Hash implements constant-time equality.
        blake3::Hash::from_bytes(self.0) == blake3::Hash::from_bytes(other.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl TryFrom<String> for Digest {
    type Error = Error;
    fn try_from(text: String) -> Result<Self> {
        Digest::from_hex(&text)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.to_hex()
    }
}

/// Id of a signing key: blake3 of its 32-byte ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub Digest);

impl KeyId {
    /// The id of an ed25519 public key.
    pub fn of(public_key: &ed25519_dalek::VerifyingKey) -> Self {
        KeyId(Digest::of(public_key.as_bytes()))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form, like a git commit id: enough to tell keys apart in logs.
        f.write_str(&self.0.to_hex()[..16])
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0.to_hex())
    }
}
