//! Domain ⇄ protobuf conversions. Parsing from protobuf validates every
//! field and returns typed errors; encoding is infallible.

use crate::envelope::{Digest, ENVELOPE_FORMAT, EnvelopeHeader, KeyId, ReaderSelector, Scope};
use crate::error::{Error, Result};
use crate::ids::{AuthorityTerm, ClusterId, SnapshotVersion, TrustGeneration, truncate_for_error};
use crate::limits::READERS_MAX;
use crate::pb;
use crate::time::UnixMillis;

impl From<&EnvelopeHeader> for pb::EnvelopeHeader {
    fn from(header: &EnvelopeHeader) -> Self {
        pb::EnvelopeHeader {
            format: ENVELOPE_FORMAT,
            cluster_id: header.cluster_id.to_string(),
            scope: header.scope.to_string(),
            version: header.version.0,
            authority_term: header.authority_term.0,
            trust_generation: header.trust_generation.0,
            issued_at_unix_ms: header.issued_at.0,
            expires_at_unix_ms: header.expires_at.0,
            content_hash: header.content_hash.0.to_vec(),
            prev_hash: header.prev_hash.map(|h| h.0.to_vec()).unwrap_or_default(),
            key_id: header.key_id.0.0.to_vec(),
            readers: header.readers.iter().map(ToString::to_string).collect(),
        }
    }
}

impl TryFrom<pb::EnvelopeHeader> for EnvelopeHeader {
    type Error = Error;

    fn try_from(header: pb::EnvelopeHeader) -> Result<Self> {
        if header.format != ENVELOPE_FORMAT {
            return Err(Error::UnsupportedFormat {
                what: "envelope",
                got: header.format,
                supported: ENVELOPE_FORMAT,
            });
        }
        if header.readers.len() > READERS_MAX {
            return Err(Error::Oversize {
                what: "envelope readers",
                limit: READERS_MAX,
                got: header.readers.len(),
            });
        }
        let cluster_id =
            ClusterId::new(header.cluster_id.as_str()).map_err(|_| Error::Malformed {
                what: "envelope header",
                reason: format!(
                    "invalid cluster id {:?}",
                    truncate_for_error(&header.cluster_id)
                ),
            })?;
        let prev_hash = if header.prev_hash.is_empty() {
            None
        } else {
            Some(Digest::from_slice("prev_hash", &header.prev_hash)?)
        };
        Ok(EnvelopeHeader {
            cluster_id,
            scope: header.scope.parse::<Scope>()?,
            version: SnapshotVersion(header.version),
            authority_term: AuthorityTerm(header.authority_term),
            trust_generation: TrustGeneration(header.trust_generation),
            issued_at: UnixMillis(header.issued_at_unix_ms),
            expires_at: UnixMillis(header.expires_at_unix_ms),
            content_hash: Digest::from_slice("content_hash", &header.content_hash)?,
            prev_hash,
            key_id: KeyId(Digest::from_slice("key_id", &header.key_id)?),
            readers: header
                .readers
                .iter()
                .map(|r| r.parse::<ReaderSelector>())
                .collect::<Result<Vec<_>>>()?,
        })
    }
}
