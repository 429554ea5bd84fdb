//! Trust roots: the snapshot-signing keys of one cluster, by generation.
//!
//! Generation 1 (genesis) is signed by its own keys and pinned out of band:
//! its hash travels with the join command, as kubeadm pins the CA. Each
//! rotation to generation g+1 must name the hash of generation g and carry
//! a valid signature by a key of generation g (continuity) and one by a key
//! of its own (possession). A verifier only ever moves forward one
//! generation at a time.

use super::digest::{Digest, KeyId};
use super::keys::{SnapshotSigner, parse_public_key};
use crate::error::{Error, Result};
use crate::ids::{ClusterId, TrustGeneration, truncate_for_error};
use crate::limits::{TRUST_ROOT_BYTES_MAX, TRUST_ROOT_KEYS_MAX, TRUST_ROOT_SIGNATURES_MAX};
use crate::pb;
use crate::time::UnixMillis;
use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message;
use std::collections::BTreeMap;

/// The trust-root format this code writes and accepts.
pub const TRUST_ROOT_FORMAT: u32 = 1;

/// Domain separation for trust-root signatures.
const ROOT_SIGNING_DOMAIN: &[u8] = b"rap.v1.trust-root\0";

/// Builds signed trust roots (the control plane's side).
#[derive(Debug)]
pub struct TrustRoot;

impl TrustRoot {
    /// Generation 1 of `cluster_id`, holding and signed by `keys`.
    pub fn genesis(
        cluster_id: &ClusterId,
        keys: &[&SnapshotSigner],
        issued_at: UnixMillis,
    ) -> Result<VerifiedTrustRoot> {
        let bytes = build_signed(cluster_id, TrustGeneration(1), keys, None, issued_at, keys)?;
        VerifiedTrustRoot::verify_genesis(&bytes, cluster_id, None)
    }

    /// The next generation after `current`, holding `new_keys`, signed by
    /// `previous_keys` (keys of `current`) and by `new_keys`.
    pub fn rotate(
        current: &VerifiedTrustRoot,
        new_keys: &[&SnapshotSigner],
        previous_keys: &[&SnapshotSigner],
        issued_at: UnixMillis,
    ) -> Result<VerifiedTrustRoot> {
        let signers: Vec<&SnapshotSigner> = previous_keys
            .iter()
            .chain(new_keys.iter())
            .copied()
            .collect();
        let bytes = build_signed(
            &current.cluster_id,
            TrustGeneration(current.generation.0 + 1),
            new_keys,
            Some(current.root_hash),
            issued_at,
            &signers,
        )?;
        current.verify_rotation(&bytes)
    }
}

/// A trust root whose structure and signatures have been checked.
#[derive(Clone, Debug)]
pub struct VerifiedTrustRoot {
    bytes: Vec<u8>,
    root_hash: Digest,
    cluster_id: ClusterId,
    generation: TrustGeneration,
    keys: BTreeMap<KeyId, VerifyingKey>,
}

impl VerifiedTrustRoot {
    /// Checks a genesis root (generation 1, signed by its own keys) for
    /// `cluster_id`, and that its hash equals `pinned` when one is given.
    pub fn verify_genesis(
        bytes: &[u8],
        cluster_id: &ClusterId,
        pinned: Option<Digest>,
    ) -> Result<Self> {
        let parsed = parse(bytes, cluster_id)?;
        if parsed.root.generation != TrustGeneration(1) {
            return Err(Error::TrustRootGeneration {
                current: TrustGeneration(0),
                expected: TrustGeneration(1),
                got: parsed.root.generation,
            });
        }
        if let Some(expected) = pinned
            && !expected.ct_eq(&parsed.root.root_hash)
        {
            return Err(Error::TrustRootNotPinned {
                expected,
                got: parsed.root.root_hash,
            });
        }
        if !parsed.signed_by_any(&parsed.root.keys) {
            return Err(Error::TrustRootUnsigned {
                generation: parsed.root.generation,
                by: "its own keys",
            });
        }
        Ok(parsed.root)
    }

    /// Checks `bytes` as the rotation that follows this root and returns it.
    pub fn verify_rotation(&self, bytes: &[u8]) -> Result<Self> {
        let parsed = parse(bytes, &self.cluster_id)?;
        let expected = TrustGeneration(self.generation.0 + 1);
        if parsed.root.generation != expected {
            return Err(Error::TrustRootGeneration {
                current: self.generation,
                expected,
                got: parsed.root.generation,
            });
        }
        if parsed.prev_root_hash != Some(self.root_hash) {
            return Err(Error::TrustRootChain {
                generation: parsed.root.generation,
            });
        }
        if !parsed.signed_by_any(&self.keys) {
            return Err(Error::TrustRootUnsigned {
                generation: parsed.root.generation,
                by: "the previous generation's keys",
            });
        }
        if !parsed.signed_by_any(&parsed.root.keys) {
            return Err(Error::TrustRootUnsigned {
                generation: parsed.root.generation,
                by: "its own keys",
            });
        }
        Ok(parsed.root)
    }

    /// Re-checks a root read back from the verifier's own durable store:
    /// structure, cluster, and a valid signature by its own keys. (Its chain
    /// was checked when it was stored.)
    pub fn reload(bytes: &[u8], cluster_id: &ClusterId) -> Result<Self> {
        let parsed = parse(bytes, cluster_id)?;
        if !parsed.signed_by_any(&parsed.root.keys) {
            return Err(Error::TrustRootUnsigned {
                generation: parsed.root.generation,
                by: "its own keys",
            });
        }
        Ok(parsed.root)
    }

    /// The encoded `SignedTrustRoot`, as distributed and stored.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// blake3 of the root's signed bytes: what genesis pinning compares
    /// and what the next generation's `prev_root_hash` names.
    pub fn root_hash(&self) -> Digest {
        self.root_hash
    }

    /// The cluster.
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }

    /// The generation.
    pub fn generation(&self) -> TrustGeneration {
        self.generation
    }

    /// The public key with this id, if it belongs to this generation.
    pub fn key(&self, key_id: &KeyId) -> Option<&VerifyingKey> {
        self.keys.get(key_id)
    }

    /// Ids of this generation's keys.
    pub fn key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }
}

struct Parsed {
    root: VerifiedTrustRoot,
    prev_root_hash: Option<Digest>,
    root_bytes: Vec<u8>,
    signatures: Vec<pb::RootSignature>,
}

impl Parsed {
    /// Whether some signature verifies under some key of `keys`.
    fn signed_by_any(&self, keys: &BTreeMap<KeyId, VerifyingKey>) -> bool {
        let message = root_signing_message(&self.root_bytes);
        self.signatures.iter().any(|sig| {
            let Ok(key_id) = Digest::from_slice("key_id", &sig.key_id) else {
                return false;
            };
            let Some(key) = keys.get(&KeyId(key_id)) else {
                return false;
            };
            let Ok(signature) = Signature::from_slice(&sig.signature) else {
                return false;
            };
            key.verify_strict(&message, &signature).is_ok()
        })
    }
}

fn parse(bytes: &[u8], cluster_id: &ClusterId) -> Result<Parsed> {
    if bytes.len() > TRUST_ROOT_BYTES_MAX {
        return Err(Error::Oversize {
            what: "trust root",
            limit: TRUST_ROOT_BYTES_MAX,
            got: bytes.len(),
        });
    }
    let malformed = |reason: String| Error::Malformed {
        what: "trust root",
        reason,
    };
    let signed = pb::SignedTrustRoot::decode(bytes).map_err(|e| malformed(e.to_string()))?;
    if signed.encode_to_vec() != bytes {
        return Err(Error::NonCanonical { what: "trust root" });
    }
    if signed.signatures.len() > TRUST_ROOT_SIGNATURES_MAX {
        return Err(Error::Oversize {
            what: "trust root signatures",
            limit: TRUST_ROOT_SIGNATURES_MAX,
            got: signed.signatures.len(),
        });
    }
    let root =
        pb::TrustRoot::decode(signed.root.as_slice()).map_err(|e| malformed(e.to_string()))?;
    if root.encode_to_vec() != signed.root {
        return Err(Error::NonCanonical {
            what: "trust root body",
        });
    }
    if root.format != TRUST_ROOT_FORMAT {
        return Err(Error::UnsupportedFormat {
            what: "trust root",
            got: root.format,
            supported: TRUST_ROOT_FORMAT,
        });
    }
    if root.cluster_id != cluster_id.as_str() {
        return Err(Error::WrongCluster {
            expected: cluster_id.clone(),
            got: truncate_for_error(&root.cluster_id),
        });
    }
    if root.signing_keys.is_empty() {
        return Err(malformed("no signing keys".to_string()));
    }
    if root.signing_keys.len() > TRUST_ROOT_KEYS_MAX {
        return Err(Error::Oversize {
            what: "trust root keys",
            limit: TRUST_ROOT_KEYS_MAX,
            got: root.signing_keys.len(),
        });
    }
    let mut keys = BTreeMap::new();
    for raw in &root.signing_keys {
        let key = parse_public_key(raw)?;
        if keys.insert(KeyId::of(&key), key).is_some() {
            return Err(malformed("duplicate signing key".to_string()));
        }
    }
    let generation = TrustGeneration(root.generation);
    let prev_root_hash = match (generation.0, root.prev_root_hash.is_empty()) {
        (0, _) => return Err(malformed("generation must be at least 1".to_string())),
        (1, true) => None,
        (1, false) => return Err(malformed("generation 1 must not chain".to_string())),
        (_, true) => return Err(malformed("missing prev_root_hash".to_string())),
        (_, false) => Some(Digest::from_slice("prev_root_hash", &root.prev_root_hash)?),
    };
    Ok(Parsed {
        root: VerifiedTrustRoot {
            bytes: bytes.to_vec(),
            root_hash: Digest::of(&signed.root),
            cluster_id: cluster_id.clone(),
            generation,
            keys,
        },
        prev_root_hash,
        root_bytes: signed.root,
        signatures: signed.signatures,
    })
}

fn build_signed(
    cluster_id: &ClusterId,
    generation: TrustGeneration,
    keys: &[&SnapshotSigner],
    prev_root_hash: Option<Digest>,
    issued_at: UnixMillis,
    signers: &[&SnapshotSigner],
) -> Result<Vec<u8>> {
    let root_bytes = pb::TrustRoot {
        format: TRUST_ROOT_FORMAT,
        cluster_id: cluster_id.to_string(),
        generation: generation.0,
        signing_keys: keys
            .iter()
            .map(|k| k.verifying_key().as_bytes().to_vec())
            .collect(),
        prev_root_hash: prev_root_hash.map(|h| h.0.to_vec()).unwrap_or_default(),
        issued_at_unix_ms: issued_at.0,
    }
    .encode_to_vec();
    let message = root_signing_message(&root_bytes);
    let signatures = signers
        .iter()
        .map(|signer| pb::RootSignature {
            key_id: signer.key_id().0.0.to_vec(),
            signature: signer.sign(&message).to_vec(),
        })
        .collect();
    Ok(pb::SignedTrustRoot {
        root: root_bytes,
        signatures,
    }
    .encode_to_vec())
}

fn root_signing_message(root_bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(ROOT_SIGNING_DOMAIN.len() + root_bytes.len());
    message.extend_from_slice(ROOT_SIGNING_DOMAIN);
    message.extend_from_slice(root_bytes);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterId {
        ClusterId::new("c1").unwrap()
    }

    // Goal: genesis verifies, pins by hash, and refuses another cluster or
    // a wrong pin. Method: build a root, check it three ways.
    #[test]
    fn genesis_pinning() {
        let key = SnapshotSigner::generate().unwrap();
        let root = TrustRoot::genesis(&cluster(), &[&key], UnixMillis(1)).unwrap();
        assert_eq!(root.generation(), TrustGeneration(1));
        assert!(root.key(&key.key_id()).is_some());
        VerifiedTrustRoot::verify_genesis(root.bytes(), &cluster(), Some(root.root_hash()))
            .unwrap();
        let err = VerifiedTrustRoot::verify_genesis(
            root.bytes(),
            &cluster(),
            Some(Digest::of(b"something else")),
        )
        .unwrap_err();
        assert!(matches!(err, Error::TrustRootNotPinned { .. }), "{err:?}");
        let other = ClusterId::new("c2").unwrap();
        let err = VerifiedTrustRoot::verify_genesis(root.bytes(), &other, None).unwrap_err();
        assert!(matches!(err, Error::WrongCluster { .. }), "{err:?}");
    }

    // Goal: a rotation is accepted only when signed by the previous
    // generation AND by its own keys, chains by hash, and advances by
    // exactly one. Method: build good and bad rotations by hand.
    #[test]
    fn rotation_rules() {
        let old = SnapshotSigner::generate().unwrap();
        let new = SnapshotSigner::generate().unwrap();
        let attacker = SnapshotSigner::generate().unwrap();
        let g1 = TrustRoot::genesis(&cluster(), &[&old], UnixMillis(1)).unwrap();
        let g2 = TrustRoot::rotate(&g1, &[&new], &[&old], UnixMillis(2)).unwrap();
        assert_eq!(g2.generation(), TrustGeneration(2));
        assert!(g2.key(&old.key_id()).is_none());

        // Not signed by the previous generation.
        let forged = build_signed(
            &cluster(),
            TrustGeneration(2),
            &[&attacker],
            Some(g1.root_hash()),
            UnixMillis(2),
            &[&attacker],
        )
        .unwrap();
        let err = g1.verify_rotation(&forged).unwrap_err();
        assert!(
            matches!(err, Error::TrustRootUnsigned { by, .. } if by.contains("previous")),
            "{err:?}"
        );
        // Signed by the old key but not by its own (no proof of possession).
        let unowned = build_signed(
            &cluster(),
            TrustGeneration(2),
            &[&new],
            Some(g1.root_hash()),
            UnixMillis(2),
            &[&old],
        )
        .unwrap();
        let err = g1.verify_rotation(&unowned).unwrap_err();
        assert!(
            matches!(err, Error::TrustRootUnsigned { by, .. } if by.contains("own")),
            "{err:?}"
        );
        // Skipping a generation.
        let skip = build_signed(
            &cluster(),
            TrustGeneration(3),
            &[&new],
            Some(g1.root_hash()),
            UnixMillis(2),
            &[&old, &new],
        )
        .unwrap();
        assert!(matches!(
            g1.verify_rotation(&skip).unwrap_err(),
            Error::TrustRootGeneration { .. }
        ));
        // Not chained to the current root.
        let unchained = build_signed(
            &cluster(),
            TrustGeneration(2),
            &[&new],
            Some(Digest::of(b"other")),
            UnixMillis(2),
            &[&old, &new],
        )
        .unwrap();
        assert!(matches!(
            g1.verify_rotation(&unchained).unwrap_err(),
            Error::TrustRootChain { .. }
        ));
    }
}
