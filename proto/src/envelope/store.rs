//! High-water marks: what a verifier must remember across restarts.
//!
//! What do we store? Per cluster: the highest (trust generation, authority
//! term) accepted, the current trust root, and per scope the (trust
//! generation, version, header hash) of the newest accepted envelope. A mark
//! is made durable *before* the envelope's body is handed out, so a crash
//! can never let an older version in afterwards.
//!
//! [`HighWaterStore`] is the seam: the agent backs it with sled, storage
//! nodes with redb; `rap_core::marks::FileHighWaterStore` is a small
//! durable file store for tools, tests and single-purpose readers.

use super::digest::Digest;
use super::scope::Scope;
use crate::error::Result;
use crate::ids::{AuthorityTerm, ClusterId, SnapshotVersion, TrustGeneration};
use serde::{Deserialize, Serialize};

/// The newest accepted envelope of one scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeMark {
    /// Trust generation it was signed under.
    pub trust_generation: TrustGeneration,
    /// Its version.
    pub version: SnapshotVersion,
    /// blake3 of its header bytes (detects forks and chains the next one).
    pub header_hash: Digest,
}

/// The highest authority term accepted in a cluster, with the trust
/// generation it was accepted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermMark {
    /// Trust generation of the envelope that raised it.
    pub trust_generation: TrustGeneration,
    /// The term.
    pub authority_term: AuthorityTerm,
}

/// Durable storage of a verifier's marks. Every `record_*` call is durable
/// when it returns `Ok`; on `Err` nothing may have changed.
pub trait HighWaterStore {
    /// The mark of `scope` in `cluster`, if any envelope was accepted.
    fn scope_mark(&self, cluster: &ClusterId, scope: &Scope) -> Result<Option<ScopeMark>>;
    /// The term mark of `cluster`, if any envelope was accepted.
    fn term_mark(&self, cluster: &ClusterId) -> Result<Option<TermMark>>;
    /// Records an accepted envelope: both marks, atomically and durably.
    fn record_accept(
        &mut self,
        cluster: &ClusterId,
        scope: &Scope,
        scope_mark: ScopeMark,
        term_mark: TermMark,
    ) -> Result<()>;
    /// The current trust root (encoded `SignedTrustRoot`), if one was stored.
    fn trust_root(&self, cluster: &ClusterId) -> Result<Option<Vec<u8>>>;
    /// Replaces the current trust root, durably.
    fn record_trust_root(&mut self, cluster: &ClusterId, signed_root: &[u8]) -> Result<()>;
}
