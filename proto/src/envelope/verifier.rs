//! The verifier: the only way an envelope is *accepted*.
//!
//! Checks, in order (each refusal is its own [`Error`] variant): size and
//! canonical form (in [`decode`]), cluster, scope asked for, trust
//! generation, known key, content hash, signature, readers, authority term,
//! version (rollback, replay, fork), validity window. Then the new marks are
//! made durable, and only then is the body returned.
//!
//! Ordering: per scope, accepted envelopes strictly increase in
//! `(trust_generation, version)`; per cluster, `(trust_generation,
//! authority_term)` never decreases. A trust-root rotation therefore
//! recovers from a fast-forward attack: whatever a removed key signed, the
//! first envelope under the next generation supersedes it.

use super::codec::{EnvelopeHeader, decode};
use super::digest::Digest;
use super::scope::{Reader, Scope};
use super::store::{HighWaterStore, ScopeMark, TermMark};
use super::trust::VerifiedTrustRoot;
use crate::error::{Error, Result};
use crate::ids::{ClusterId, TrustGeneration, truncate_for_error};
use crate::limits::{CLOCK_SKEW_MS_DEFAULT, CLOCK_SKEW_MS_MAX};
use crate::time::UnixMillis;
use ed25519_dalek::Signature;

/// Tunables of a [`Verifier`].
#[derive(Clone, Debug)]
pub struct VerifierOptions {
    /// How far `issued_at` may lie in the future and `expires_at` in the
    /// past, in milliseconds. At most [`CLOCK_SKEW_MS_MAX`].
    pub clock_skew_ms: u64,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        VerifierOptions {
            clock_skew_ms: CLOCK_SKEW_MS_DEFAULT,
        }
    }
}

impl VerifierOptions {
    /// Refuses out-of-range options.
    pub fn validate(&self) -> Result<()> {
        if self.clock_skew_ms > CLOCK_SKEW_MS_MAX {
            return Err(Error::InvalidOption {
                what: "clock_skew_ms",
                reason: format!(
                    "{} exceeds the limit {CLOCK_SKEW_MS_MAX}",
                    self.clock_skew_ms
                ),
            });
        }
        Ok(())
    }
}

/// An envelope that passed every check and whose marks are durable.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// Its header.
    pub header: EnvelopeHeader,
    /// Its body, safe to apply.
    pub body: Vec<u8>,
    /// blake3 of its header bytes.
    pub header_hash: Digest,
}

/// Verifies envelopes of one cluster against its current trust root and
/// the reader's durable high-water marks.
#[derive(Debug)]
pub struct Verifier<S> {
    cluster_id: ClusterId,
    trust: VerifiedTrustRoot,
    store: S,
    options: VerifierOptions,
}

impl<S: HighWaterStore> Verifier<S> {
    /// Opens a verifier for `cluster_id`. `genesis` is the generation-1
    /// trust root, checked against `pinned` (its hash, as carried by the
    /// join command) when given. If the store already holds a newer root
    /// (after rotations), that one is used.
    pub fn open(
        cluster_id: ClusterId,
        genesis: &[u8],
        pinned: Option<Digest>,
        mut store: S,
        options: VerifierOptions,
    ) -> Result<Self> {
        options.validate()?;
        let genesis = VerifiedTrustRoot::verify_genesis(genesis, &cluster_id, pinned)?;
        let trust = match store.trust_root(&cluster_id)? {
            Some(bytes) => {
                let stored = VerifiedTrustRoot::reload(&bytes, &cluster_id)?;
                if stored.generation() == TrustGeneration(1)
                    && !stored.root_hash().ct_eq(&genesis.root_hash())
                {
                    return Err(Error::TrustRootNotPinned {
                        expected: genesis.root_hash(),
                        got: stored.root_hash(),
                    });
                }
                stored
            }
            None => {
                store.record_trust_root(&cluster_id, genesis.bytes())?;
                genesis
            }
        };
        Ok(Verifier {
            cluster_id,
            trust,
            store,
            options,
        })
    }

    /// The current trust root.
    pub fn trust_root(&self) -> &VerifiedTrustRoot {
        &self.trust
    }

    /// The mark of `scope`, if an envelope of it was accepted.
    pub fn scope_mark(&self, scope: &Scope) -> Result<Option<ScopeMark>> {
        self.store.scope_mark(&self.cluster_id, scope)
    }

    /// Gives the store back (e.g. to reopen the verifier after a restart).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Moves to the next trust generation: `signed_root` must chain to the
    /// current root and be signed by it and by its own keys. Durable before
    /// it returns.
    pub fn rotate_trust_root(&mut self, signed_root: &[u8]) -> Result<TrustGeneration> {
        let next = self.trust.verify_rotation(signed_root)?;
        self.store
            .record_trust_root(&self.cluster_id, next.bytes())?;
        self.trust = next;
        Ok(self.trust.generation())
    }

    /// Verifies `bytes` as the envelope of `scope` for `reader` at `now`,
    /// records its marks durably, and returns its body. On any error
    /// nothing is recorded.
    pub fn verify(
        &mut self,
        bytes: &[u8],
        scope: &Scope,
        reader: &Reader,
        now: UnixMillis,
    ) -> Result<Accepted> {
        let envelope = decode(bytes)?;
        let header = &envelope.header;
        if header.cluster_id != self.cluster_id {
            return Err(Error::WrongCluster {
                expected: self.cluster_id.clone(),
                got: truncate_for_error(header.cluster_id.as_str()),
            });
        }
        if &header.scope != scope {
            return Err(Error::ScopeMismatch {
                expected: scope.clone(),
                got: header.scope.clone(),
            });
        }
        let current = self.trust.generation();
        if header.trust_generation > current {
            return Err(Error::UnknownTrustGeneration {
                current,
                got: header.trust_generation,
            });
        }
        if header.trust_generation < current {
            return Err(Error::StaleTrustGeneration {
                current,
                got: header.trust_generation,
            });
        }
        let Some(key) = self.trust.key(&header.key_id) else {
            return Err(Error::UnknownKey {
                key_id: header.key_id,
                generation: current,
            });
        };
        if !Digest::of(&envelope.body).ct_eq(&header.content_hash) {
            return Err(Error::ContentHashMismatch {
                scope: header.scope.clone(),
                version: header.version,
            });
        }
        let signature = Signature::from_bytes(&envelope.signature);
        if key
            .verify_strict(&envelope.signing_message(), &signature)
            .is_err()
        {
            return Err(Error::BadSignature {
                scope: header.scope.clone(),
                version: header.version,
                key_id: header.key_id,
            });
        }
        if !reader.is_admitted(&header.readers) {
            return Err(Error::ReaderNotAdmitted {
                scope: header.scope.clone(),
                reader: reader.to_string(),
            });
        }

        let header_hash = envelope.header_hash();
        let term_mark = self.check_term(header)?;
        let scope_mark = self.check_version(header, header_hash)?;
        self.check_validity(header, now)?;

        self.store
            .record_accept(&self.cluster_id, scope, scope_mark, term_mark)?;
        Ok(Accepted {
            header: envelope.header,
            body: envelope.body,
            header_hash,
        })
    }

    /// The term mark after accepting `header`, or `StaleTerm`.
    fn check_term(&self, header: &EnvelopeHeader) -> Result<TermMark> {
        let offered = TermMark {
            trust_generation: header.trust_generation,
            authority_term: header.authority_term,
        };
        match self.store.term_mark(&self.cluster_id)? {
            None => Ok(offered),
            Some(seen) if seen.trust_generation < offered.trust_generation => Ok(offered),
            Some(seen) if seen.trust_generation > offered.trust_generation => Err(corrupt_mark(
                "term mark",
                seen.trust_generation,
                offered.trust_generation,
            )),
            Some(seen) if offered.authority_term < seen.authority_term => Err(Error::StaleTerm {
                seen: seen.authority_term,
                got: offered.authority_term,
            }),
            Some(_) => Ok(offered),
        }
    }

    /// The scope mark after accepting `header`, or a rollback, replay or
    /// fork refusal.
    fn check_version(&self, header: &EnvelopeHeader, header_hash: Digest) -> Result<ScopeMark> {
        let offered = ScopeMark {
            trust_generation: header.trust_generation,
            version: header.version,
            header_hash,
        };
        let Some(seen) = self.store.scope_mark(&self.cluster_id, &header.scope)? else {
            return Ok(offered);
        };
        if seen.trust_generation < offered.trust_generation {
            // First envelope of this scope under a new trust generation.
            return Ok(offered);
        }
        if seen.trust_generation > offered.trust_generation {
            return Err(corrupt_mark(
                "scope mark",
                seen.trust_generation,
                offered.trust_generation,
            ));
        }
        let scope = header.scope.clone();
        if offered.version < seen.version {
            return Err(Error::Rollback {
                scope,
                seen: seen.version,
                got: offered.version,
            });
        }
        if offered.version == seen.version {
            return Err(if header_hash.ct_eq(&seen.header_hash) {
                Error::Replay {
                    scope,
                    version: offered.version,
                }
            } else {
                Error::Fork {
                    scope,
                    version: offered.version,
                    reason: "a different envelope was already accepted for this version",
                }
            });
        }
        if offered.version.0 == seen.version.0 + 1 && header.prev_hash != Some(seen.header_hash) {
            return Err(Error::Fork {
                scope,
                version: offered.version,
                reason: "prev_hash does not name the accepted previous version",
            });
        }
        Ok(offered)
    }

    fn check_validity(&self, header: &EnvelopeHeader, now: UnixMillis) -> Result<()> {
        let skew_ms = self.options.clock_skew_ms;
        let skew = i64::try_from(skew_ms).unwrap_or(i64::MAX);
        if now > header.expires_at.plus_ms(skew) {
            return Err(Error::Expired {
                scope: header.scope.clone(),
                expires_at: header.expires_at,
                now,
                skew_ms,
            });
        }
        if header.issued_at > now.plus_ms(skew) {
            return Err(Error::NotYetValid {
                scope: header.scope.clone(),
                issued_at: header.issued_at,
                now,
                skew_ms,
            });
        }
        Ok(())
    }
}

/// A stored mark from a trust generation newer than the verifier's root:
/// the store and the root disagree, so nothing is accepted.
fn corrupt_mark(what: &str, stored: TrustGeneration, current: TrustGeneration) -> Error {
    Error::Store {
        context: format!("check {what}"),
        source: format!(
            "stored mark is from trust generation {stored}, newer than the current {current}; the store is inconsistent"
        )
        .into(),
    }
}
