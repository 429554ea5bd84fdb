//! The signed snapshot shard envelope.
//!
//! An envelope is `header ‖ body ‖ signature`: the header names the cluster,
//! scope, version, authority term, trust generation, validity window,
//! blake3 content hash of the body, the hash of the previous version's
//! header, the signing key id and the readers; the ed25519 signature covers
//! the exact header bytes and the body. Encodings are canonical: a decoder
//! re-encodes what it read and refuses anything that differs.
//!
//! * [`seal`] builds and signs an envelope ([`ShardDraft`] + [`SnapshotSigner`]).
//! * [`decode`] parses one, checking every limit first.
//! * [`TrustRoot`] and [`VerifiedTrustRoot`]: the signing keys of one trust
//!   generation; a rotation is signed by the previous generation.
//! * [`Verifier`]: the only way to *accept* an envelope. It refuses every
//!   bad envelope with its own [`crate::Error`] variant and persists the
//!   per-scope high-water marks through a [`HighWaterStore`] before it
//!   returns the body.

mod codec;
mod digest;
mod keys;
mod scope;
mod store;
mod trust;
mod verifier;

pub use codec::{
    DecodedEnvelope, ENVELOPE_FORMAT, EnvelopeHeader, SealedEnvelope, ShardDraft, decode, seal,
};
pub use digest::{Digest, KeyId};
pub use keys::SnapshotSigner;
pub use scope::{Reader, ReaderSelector, Scope};
pub use store::{HighWaterStore, ScopeMark, TermMark};
pub use trust::{TRUST_ROOT_FORMAT, TrustRoot, VerifiedTrustRoot};
pub use verifier::{Accepted, Verifier, VerifierOptions};
