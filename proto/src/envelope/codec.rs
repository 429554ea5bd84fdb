//! Envelope encoding: building and signing ([`seal`]) and parsing
//! ([`decode`]). Both sides use one canonical encoding: prost writes fields
//! in field-number order and omits defaults, and a decoder re-encodes what
//! it read and refuses any difference (unknown fields, explicit defaults,
//! non-minimal varints, reordered fields).

use super::digest::{Digest, KeyId};
use super::keys::SnapshotSigner;
use super::scope::{ReaderSelector, Scope};
use crate::error::{Error, Result};
use crate::ids::{AuthorityTerm, ClusterId, SnapshotVersion, TrustGeneration};
use crate::limits::{
    BODY_BYTES_MAX, ENVELOPE_BYTES_MAX, ENVELOPE_VALIDITY_MS_MAX, HEADER_BYTES_MAX, READERS_MAX,
    SIGNATURE_BYTES,
};
use crate::pb;
use crate::time::UnixMillis;
use prost::Message;

/// The envelope format this code writes and accepts.
pub const ENVELOPE_FORMAT: u32 = 1;

/// Domain separation: a signature over an envelope can never be taken for a
/// signature over a trust root, a join proof or a promotion order.
const SIGNING_DOMAIN: &[u8] = b"rap.v1.snapshot-envelope\0";

/// The decoded, validated header of an envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// The cluster whose control plane signed it.
    pub cluster_id: ClusterId,
    /// What the shard is about.
    pub scope: Scope,
    /// Version of the scope, ≥ 1, strictly increasing per scope.
    pub version: SnapshotVersion,
    /// Authority term of the group that published it.
    pub authority_term: AuthorityTerm,
    /// Trust generation of the signing key.
    pub trust_generation: TrustGeneration,
    /// Not valid before this instant (minus clock skew).
    pub issued_at: UnixMillis,
    /// Not valid after this instant (plus clock skew).
    pub expires_at: UnixMillis,
    /// blake3 of the body.
    pub content_hash: Digest,
    /// blake3 of the previous version's header bytes; `None` exactly for
    /// version 1.
    pub prev_hash: Option<Digest>,
    /// Id of the signing key.
    pub key_id: KeyId,
    /// Who may read it.
    pub readers: Vec<ReaderSelector>,
}

/// Everything needed to publish one version of one scope.
#[derive(Clone, Debug)]
pub struct ShardDraft {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// The scope.
    pub scope: Scope,
    /// The new version (previous + 1 in normal operation).
    pub version: SnapshotVersion,
    /// The current authority term.
    pub authority_term: AuthorityTerm,
    /// Start of validity.
    pub issued_at: UnixMillis,
    /// End of validity; at most [`ENVELOPE_VALIDITY_MS_MAX`] after `issued_at`.
    pub expires_at: UnixMillis,
    /// Header hash of the previous version; `None` for version 1.
    pub prev_hash: Option<Digest>,
    /// Who may read it.
    pub readers: Vec<ReaderSelector>,
    /// The shard's content (opaque to the envelope).
    pub body: Vec<u8>,
}

/// A freshly signed envelope.
#[derive(Clone, Debug)]
pub struct SealedEnvelope {
    /// The encoded `SignedEnvelope`, as stored, replicated and served.
    pub bytes: Vec<u8>,
    /// Its header.
    pub header: EnvelopeHeader,
    /// blake3 of its header bytes: the next version's `prev_hash`.
    pub header_hash: Digest,
}

/// A parsed envelope: structurally valid, *not yet verified*. Only the
/// [`super::Verifier`] turns it into an accepted shard.
#[derive(Clone, Debug)]
pub struct DecodedEnvelope {
    /// The validated header.
    pub header: EnvelopeHeader,
    /// The exact header bytes that were signed.
    pub header_bytes: Vec<u8>,
    /// The body.
    pub body: Vec<u8>,
    /// The ed25519 signature.
    pub signature: [u8; SIGNATURE_BYTES],
}

impl DecodedEnvelope {
    /// blake3 of the header bytes (what the next version chains to).
    pub fn header_hash(&self) -> Digest {
        Digest::of(&self.header_bytes)
    }

    /// The exact bytes the signature covers.
    pub(crate) fn signing_message(&self) -> Vec<u8> {
        signing_message(&self.header_bytes, &self.body)
    }
}

/// Builds the header from `draft`, signs header and body with `signer`
/// under `trust_generation`, and encodes the envelope. Refuses a draft that
/// no verifier would accept for structural reasons (limits, validity window,
/// version/prev-hash rules).
pub fn seal(
    draft: ShardDraft,
    signer: &SnapshotSigner,
    trust_generation: TrustGeneration,
) -> Result<SealedEnvelope> {
    if draft.body.len() > BODY_BYTES_MAX {
        return Err(Error::Oversize {
            what: "envelope body",
            limit: BODY_BYTES_MAX,
            got: draft.body.len(),
        });
    }
    let mut readers = draft.readers;
    readers.sort();
    readers.dedup();
    let header = EnvelopeHeader {
        cluster_id: draft.cluster_id,
        scope: draft.scope,
        version: draft.version,
        authority_term: draft.authority_term,
        trust_generation,
        issued_at: draft.issued_at,
        expires_at: draft.expires_at,
        content_hash: Digest::of(&draft.body),
        prev_hash: draft.prev_hash,
        key_id: signer.key_id(),
        readers,
    };
    validate_header(&header)?;
    let header_bytes = pb::EnvelopeHeader::from(&header).encode_to_vec();
    if header_bytes.len() > HEADER_BYTES_MAX {
        return Err(Error::Oversize {
            what: "envelope header",
            limit: HEADER_BYTES_MAX,
            got: header_bytes.len(),
        });
    }
    let signature = signer.sign(&signing_message(&header_bytes, &draft.body));
    let header_hash = Digest::of(&header_bytes);
    let bytes = pb::SignedEnvelope {
        header: header_bytes,
        body: draft.body,
        signature: signature.to_vec(),
    }
    .encode_to_vec();
    Ok(SealedEnvelope {
        bytes,
        header,
        header_hash,
    })
}

/// Parses an encoded `SignedEnvelope`. The length is checked before any
/// decoding ("endless data"); both the envelope and its header must be
/// canonically encoded; every field is validated. Says nothing about the
/// signature, the key or freshness: that is the verifier's job.
pub fn decode(bytes: &[u8]) -> Result<DecodedEnvelope> {
    if bytes.len() > ENVELOPE_BYTES_MAX {
        return Err(Error::Oversize {
            what: "envelope",
            limit: ENVELOPE_BYTES_MAX,
            got: bytes.len(),
        });
    }
    let envelope = pb::SignedEnvelope::decode(bytes).map_err(|e| Error::Malformed {
        what: "envelope",
        reason: e.to_string(),
    })?;
    if envelope.encoded_len() != bytes.len() || envelope.encode_to_vec() != bytes {
        return Err(Error::NonCanonical { what: "envelope" });
    }
    if envelope.header.len() > HEADER_BYTES_MAX {
        return Err(Error::Oversize {
            what: "envelope header",
            limit: HEADER_BYTES_MAX,
            got: envelope.header.len(),
        });
    }
    if envelope.body.len() > BODY_BYTES_MAX {
        return Err(Error::Oversize {
            what: "envelope body",
            limit: BODY_BYTES_MAX,
            got: envelope.body.len(),
        });
    }
    let signature: [u8; SIGNATURE_BYTES] =
        envelope
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| Error::Malformed {
                what: "envelope signature",
                reason: format!(
                    "expected {SIGNATURE_BYTES} bytes, got {}",
                    envelope.signature.len()
                ),
            })?;
    let header_pb =
        pb::EnvelopeHeader::decode(envelope.header.as_slice()).map_err(|e| Error::Malformed {
            what: "envelope header",
            reason: e.to_string(),
        })?;
    if header_pb.encode_to_vec() != envelope.header {
        return Err(Error::NonCanonical {
            what: "envelope header",
        });
    }
    let header = EnvelopeHeader::try_from(header_pb)?;
    validate_header(&header)?;
    Ok(DecodedEnvelope {
        header,
        header_bytes: envelope.header,
        body: envelope.body,
        signature,
    })
}

/// Structural rules every header obeys, on both the signing and the
/// verifying side.
fn validate_header(header: &EnvelopeHeader) -> Result<()> {
    let malformed = |reason: String| Error::Malformed {
        what: "envelope header",
        reason,
    };
    if header.version.0 == 0 {
        return Err(malformed("version must be at least 1".to_string()));
    }
    match (header.version.0, header.prev_hash) {
        (1, Some(_)) => return Err(malformed("version 1 must not carry prev_hash".to_string())),
        (v, None) if v > 1 => {
            return Err(malformed(format!("version {v} must carry prev_hash")));
        }
        _ => {}
    }
    if header.trust_generation.0 == 0 {
        return Err(malformed("trust generation must be at least 1".to_string()));
    }
    if header.readers.len() > READERS_MAX {
        return Err(Error::Oversize {
            what: "envelope readers",
            limit: READERS_MAX,
            got: header.readers.len(),
        });
    }
    let window = header.expires_at.0.saturating_sub(header.issued_at.0);
    if window <= 0 {
        return Err(malformed(format!(
            "expires_at {} is not after issued_at {}",
            header.expires_at, header.issued_at
        )));
    }
    if window > ENVELOPE_VALIDITY_MS_MAX {
        return Err(malformed(format!(
            "validity window {window} ms exceeds the limit {ENVELOPE_VALIDITY_MS_MAX} ms"
        )));
    }
    Ok(())
}

/// `domain ‖ u64be(len(header)) ‖ header ‖ body`: the length prefix makes
/// the split between header and body unambiguous.
fn signing_message(header_bytes: &[u8], body: &[u8]) -> Vec<u8> {
    let mut message =
        Vec::with_capacity(SIGNING_DOMAIN.len() + 8 + header_bytes.len() + body.len());
    message.extend_from_slice(SIGNING_DOMAIN);
    message.extend_from_slice(&(header_bytes.len() as u64).to_be_bytes());
    message.extend_from_slice(header_bytes);
    message.extend_from_slice(body);
    message
}
