//! Bearer secrets of the form `<prefix>.<id>.<secret>` (join tokens
//! `rapjt.…`, admin API tokens `rapat.…`). Only `blake3(secret)` is ever
//! stored; lookups go by id and compare hashes in constant time
//! (`blake3::Hash` equality is constant-time).

use crate::error::{Error, Result};

/// Length of a generated token id in bytes (hex-encoded: 16 characters).
pub const TOKEN_ID_BYTES: usize = 8;
/// Longest raw token accepted for parsing.
pub const RAW_TOKEN_BYTES_MAX: usize = 256;

/// A freshly generated secret token.
#[derive(Debug)]
pub struct NewToken {
    /// Public id (stored, used for lookup).
    pub id: String,
    /// blake3 of the secret (stored).
    pub hash: [u8; 32],
    /// `<prefix>.<id>.<secret>`: shown once, never stored.
    pub raw: String,
}

/// Random bytes from the OS.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("OS random source: {e}")))?;
    Ok(bytes)
}

/// A random id of [`TOKEN_ID_BYTES`] bytes, hex: a valid rap id.
pub fn random_id() -> Result<String> {
    Ok(hex::encode(random_bytes::<TOKEN_ID_BYTES>()?))
}

/// Generates a token with a `SECRET_BYTES`-byte secret.
pub fn generate<const SECRET_BYTES: usize>(prefix: &str) -> Result<NewToken> {
    let id = random_id()?;
    let secret = hex::encode(random_bytes::<SECRET_BYTES>()?);
    let hash = *blake3::hash(secret.as_bytes()).as_bytes();
    Ok(NewToken {
        raw: format!("{prefix}.{id}.{secret}"),
        id,
        hash,
    })
}

/// Splits `<prefix>.<id>.<secret>` into (id, blake3(secret)); `None` when
/// the shape is wrong. The secret itself is never returned.
pub fn parse(prefix: &str, raw: &str) -> Option<(String, blake3::Hash)> {
    let raw = raw.trim();
    if raw.len() > RAW_TOKEN_BYTES_MAX {
        return None;
    }
    let mut parts = raw.split('.');
    let (p, id, secret) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || p != prefix || secret.is_empty() {
        return None;
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        || id.is_empty()
    {
        return None;
    }
    if !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some((id.to_string(), blake3::hash(secret.as_bytes())))
}

/// Constant-time comparison of a presented hash with a stored one.
pub fn hash_matches(presented: &blake3::Hash, stored: &[u8]) -> bool {
    match <[u8; 32]>::try_from(stored) {
        Ok(stored) => *presented == blake3::Hash::from_bytes(stored),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let token = generate::<32>("rapjt").expect("generate");
        let (id, hash) = parse("rapjt", &token.raw).expect("parse");
        assert_eq!(id, token.id);
        assert!(hash_matches(&hash, &token.hash));
        assert!(parse("rapat", &token.raw).is_none());
        assert!(parse("rapjt", "rapjt.abc").is_none());
        assert!(parse("rapjt", "rapjt.ABC.x").is_none());
        assert!(parse("rapjt", "rapjt.abc.x.y").is_none());
        assert!(parse("rapjt", &format!("rapjt.ab.{}", "x".repeat(300))).is_none());
        let other = generate::<32>("rapjt").expect("generate");
        assert!(!hash_matches(&hash, &other.hash));
        assert!(!hash_matches(&hash, &[0u8; 31]));
        // 32 secret bytes = 64 hex characters.
        assert_eq!(token.raw.rsplit('.').next().map(str::len), Some(64));
    }
}
