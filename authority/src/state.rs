//! The authority group's replicated state and its deterministic `apply`.
//!
//! What do we store? Per cluster: its id, the authority term, the last
//! fence sequence granted in that term, the genesis trust root, the
//! highest (trust generation, authority term) of any accepted shard, and
//! per scope the newest verified envelope. `rap-authority`'s redb state
//! machine persists exactly this (`store` module); snapshots serialize it.
//!
//! Every envelope is verified with `rap_proto::envelope::Verifier` before it
//! is applied (as a storage-node reader, with the proposer's clock), so the
//! group never holds a shard an agent would refuse, and never two bodies
//! for one (scope, version).

use crate::fence::Fence;
use crate::limits::{
    FENCE_PURPOSE_BYTES_MAX, PUBLISH_BYTES_MAX, PUBLISH_ENVELOPES_MAX, SHARDS_MAX,
};
use crate::request::{PublishedShard, Refusal, Request, Response};
use rap_proto::envelope::{
    Digest, HighWaterStore, Reader, Scope, ScopeMark, TermMark, VerifiedTrustRoot, Verifier,
    VerifierOptions, decode,
};
use rap_proto::ids::{
    AuthorityTerm, ClusterId, FenceSeq, LogIndex, NodeId, SnapshotVersion, TrustGeneration,
};
use rap_proto::time::UnixMillis;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::BTreeMap;

/// The newest verified envelope of one scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Encoded `SignedEnvelope`, exactly as signed.
    pub envelope: ByteBuf,
    /// Its version.
    pub version: SnapshotVersion,
    /// Its trust generation.
    pub trust_generation: TrustGeneration,
    /// blake3 of its header bytes.
    pub header_hash: Digest,
    /// Authority term it was published in.
    pub authority_term: AuthorityTerm,
    /// Log index of the entry that applied it.
    pub log_index: LogIndex,
}

/// The replicated state of one cluster's authority group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityState {
    /// Set by the `Genesis` entry; `None` before.
    pub cluster_id: Option<ClusterId>,
    /// The cluster's authority term (1 after genesis; +1 per promotion).
    pub authority_term: AuthorityTerm,
    /// Last fence sequence granted in `authority_term` (0: none yet).
    pub last_fence_seq: FenceSeq,
    /// Encoded genesis `SignedTrustRoot`; empty before genesis.
    pub trust_root: ByteBuf,
    /// Highest (trust generation, authority term) of an accepted shard.
    pub term_mark: Option<TermMark>,
    /// Scope → newest verified envelope.
    pub shards: BTreeMap<String, ShardRecord>,
}

/// What an applied entry changed, so storage rewrites only that.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Touched {
    /// Nothing at all (a refusal, a blank entry).
    Nothing,
    /// The scalar fields (cluster, term, seq, trust root, term mark) only.
    Meta,
    /// The scalar fields and these scopes.
    Scopes(Vec<String>),
    /// Everything (genesis, reseed).
    All,
}

/// The outcome of applying one entry.
#[derive(Clone, Debug)]
pub struct Applied {
    /// What the proposer gets back.
    pub response: Response,
    /// What storage must persist.
    pub touched: Touched,
}

fn refused(code: &str, message: impl Into<String>) -> Applied {
    Applied {
        response: Response::Refused(Refusal {
            code: code.to_string(),
            message: message.into(),
        }),
        touched: Touched::Nothing,
    }
}

/// The reader identity the state machine verifies as: a storage node holds
/// every scope of its cluster on behalf of the scope's readers.
fn storage_reader() -> Reader {
    // A fixed, valid id: the readers check admits storage nodes anyway.
    #[allow(clippy::expect_used)]
    let node_id = NodeId::new("authority-group").expect("constant node id is valid");
    Reader::StorageNode { node_id }
}

impl AuthorityState {
    /// Applies one entry at `log_index`. Deterministic: the result depends
    /// only on the state and the entry. A refusal leaves the state as it was.
    pub fn apply(&mut self, log_index: u64, request: &Request) -> Applied {
        match request {
            Request::Genesis {
                cluster_id,
                trust_root,
            } => self.genesis(cluster_id, trust_root),
            Request::AcquireFence {
                purpose,
                expected_term,
            } => self.acquire_fence(log_index, purpose, *expected_term),
            Request::PublishShards {
                fence,
                envelopes,
                proposed_at_ms,
            } => self.publish(log_index, fence, envelopes, UnixMillis(*proposed_at_ms)),
            Request::Reseed { state, new_term } => self.reseed(state, *new_term),
        }
    }

    fn genesis(&mut self, cluster_id: &ClusterId, trust_root: &ByteBuf) -> Applied {
        if let Some(existing) = &self.cluster_id {
            return refused(
                "ALREADY_INITIALIZED",
                format!("the group already holds cluster {existing}"),
            );
        }
        if let Err(e) = VerifiedTrustRoot::verify_genesis(trust_root, cluster_id, None) {
            return refused(e.code(), format!("genesis trust root: {e}"));
        }
        *self = AuthorityState {
            cluster_id: Some(cluster_id.clone()),
            authority_term: AuthorityTerm(1),
            last_fence_seq: FenceSeq(0),
            trust_root: trust_root.clone(),
            term_mark: None,
            shards: BTreeMap::new(),
        };
        Applied {
            response: Response::Done,
            touched: Touched::All,
        }
    }

    fn acquire_fence(&mut self, log_index: u64, purpose: &str, expected: AuthorityTerm) -> Applied {
        let Some(cluster_id) = self.cluster_id.clone() else {
            return refused("NOT_INITIALIZED", "the group has no cluster yet");
        };
        if purpose.len() > FENCE_PURPOSE_BYTES_MAX {
            return refused(
                "OVERSIZE",
                format!("purpose longer than {FENCE_PURPOSE_BYTES_MAX} bytes"),
            );
        }
        if expected != self.authority_term {
            return refused(
                "TERM_MISMATCH",
                format!(
                    "caller expects authority term {expected}, the group is at {}",
                    self.authority_term
                ),
            );
        }
        let seq = FenceSeq(self.last_fence_seq.0 + 1);
        // Safety invariant: fence sequences strictly increase within a term.
        assert!(seq > self.last_fence_seq, "fence sequence must increase");
        self.last_fence_seq = seq;
        Applied {
            response: Response::Fence(Fence {
                cluster_id,
                authority_term: self.authority_term,
                seq,
                log_index: LogIndex(log_index),
            }),
            touched: Touched::Meta,
        }
    }

    fn publish(
        &mut self,
        log_index: u64,
        fence: &Fence,
        envelopes: &[ByteBuf],
        now: UnixMillis,
    ) -> Applied {
        let Some(cluster_id) = self.cluster_id.clone() else {
            return refused("NOT_INITIALIZED", "the group has no cluster yet");
        };
        if fence.cluster_id != cluster_id {
            return refused(
                "WRONG_CLUSTER",
                format!(
                    "fence of cluster {}, group of {cluster_id}",
                    fence.cluster_id
                ),
            );
        }
        if fence.authority_term != self.authority_term {
            return refused(
                "STALE_FENCE",
                format!(
                    "fence of authority term {}, the group is at {}",
                    fence.authority_term, self.authority_term
                ),
            );
        }
        if fence.seq.0 == 0 || fence.seq > self.last_fence_seq {
            return refused(
                "UNKNOWN_FENCE",
                format!(
                    "fence seq {} was never granted (last granted {})",
                    fence.seq, self.last_fence_seq
                ),
            );
        }
        let total: usize = envelopes.iter().map(|e| e.len()).sum();
        if envelopes.len() > PUBLISH_ENVELOPES_MAX || total > PUBLISH_BYTES_MAX {
            return refused(
                "OVERSIZE",
                format!(
                    "{} envelopes, {total} bytes (limits {PUBLISH_ENVELOPES_MAX}, {PUBLISH_BYTES_MAX})",
                    envelopes.len()
                ),
            );
        }

        let overlay = Overlay {
            base: self,
            scopes: BTreeMap::new(),
            term: None,
        };
        let mut verifier = match Verifier::open(
            cluster_id.clone(),
            &self.trust_root,
            None,
            overlay,
            VerifierOptions::default(),
        ) {
            Ok(verifier) => verifier,
            Err(e) => return refused(e.code(), format!("trust root: {e}")),
        };
        let reader = storage_reader();
        let mut accepted = Vec::with_capacity(envelopes.len());
        for (position, bytes) in envelopes.iter().enumerate() {
            let scope = match decode(bytes) {
                Ok(envelope) => envelope.header.scope,
                Err(e) => return refused(e.code(), format!("envelope {position}: {e}")),
            };
            match verifier.verify(bytes, &scope, &reader, now) {
                Ok(ok) if ok.header.authority_term != self.authority_term => {
                    return refused(
                        "TERM_MISMATCH",
                        format!(
                            "envelope {position} ({scope}) carries authority term {}, the group is at {}",
                            ok.header.authority_term, self.authority_term
                        ),
                    );
                }
                Ok(ok) => accepted.push((bytes.clone(), ok)),
                Err(e) => return refused(e.code(), format!("envelope {position} ({scope}): {e}")),
            }
        }
        let overlay = verifier.into_store();
        let term_mark = overlay.term;
        let new_scopes = accepted
            .iter()
            .filter(|(_, ok)| !self.shards.contains_key(&ok.header.scope.to_string()))
            .count();
        if self.shards.len() + new_scopes > SHARDS_MAX {
            return refused(
                "OVERSIZE",
                format!("the cluster would hold more than {SHARDS_MAX} scopes"),
            );
        }

        let mut published = Vec::with_capacity(accepted.len());
        let mut touched = Vec::with_capacity(accepted.len());
        for (bytes, ok) in accepted {
            let scope = ok.header.scope.to_string();
            published.push(PublishedShard {
                scope: scope.clone(),
                version: ok.header.version.0,
                content_hash: ok.header.content_hash.0,
                log_index,
            });
            self.shards.insert(
                scope.clone(),
                ShardRecord {
                    envelope: bytes,
                    version: ok.header.version,
                    trust_generation: ok.header.trust_generation,
                    header_hash: ok.header_hash,
                    authority_term: ok.header.authority_term,
                    log_index: LogIndex(log_index),
                },
            );
            touched.push(scope);
        }
        if term_mark.is_some() {
            self.term_mark = term_mark;
        }
        Applied {
            response: Response::Published(published),
            touched: Touched::Scopes(touched),
        }
    }

    fn reseed(&mut self, state: &AuthorityState, new_term: AuthorityTerm) -> Applied {
        let Some(cluster_id) = state.cluster_id.clone() else {
            return refused("NOT_INITIALIZED", "the seed state has no cluster");
        };
        if let Some(ours) = &self.cluster_id
            && ours != &cluster_id
        {
            return refused(
                "WRONG_CLUSTER",
                format!("reseed of cluster {cluster_id} into a group of {ours}"),
            );
        }
        if new_term.0 != state.authority_term.0 + 1 || new_term <= self.authority_term {
            return refused(
                "TERM_MISMATCH",
                format!(
                    "reseed to term {new_term} from a seed at {} (group at {})",
                    state.authority_term, self.authority_term
                ),
            );
        }
        *self = AuthorityState {
            authority_term: new_term,
            last_fence_seq: FenceSeq(0),
            ..state.clone()
        };
        Applied {
            response: Response::Done,
            touched: Touched::All,
        }
    }
}

/// Verifier marks for one `PublishShards` entry: read through to the
/// state, written to an overlay that is merged only if every envelope of
/// the entry is accepted.
struct Overlay<'a> {
    base: &'a AuthorityState,
    scopes: BTreeMap<String, ScopeMark>,
    term: Option<TermMark>,
}

impl HighWaterStore for Overlay<'_> {
    fn scope_mark(
        &self,
        _cluster: &ClusterId,
        scope: &Scope,
    ) -> rap_proto::Result<Option<ScopeMark>> {
        let key = scope.to_string();
        if let Some(mark) = self.scopes.get(&key) {
            return Ok(Some(*mark));
        }
        Ok(self.base.shards.get(&key).map(|record| ScopeMark {
            trust_generation: record.trust_generation,
            version: record.version,
            header_hash: record.header_hash,
        }))
    }

    fn term_mark(&self, _cluster: &ClusterId) -> rap_proto::Result<Option<TermMark>> {
        Ok(self.term.or(self.base.term_mark))
    }

    fn record_accept(
        &mut self,
        _cluster: &ClusterId,
        scope: &Scope,
        scope_mark: ScopeMark,
        term_mark: TermMark,
    ) -> rap_proto::Result<()> {
        self.scopes.insert(scope.to_string(), scope_mark);
        self.term = Some(term_mark);
        Ok(())
    }

    fn trust_root(&self, _cluster: &ClusterId) -> rap_proto::Result<Option<Vec<u8>>> {
        Ok(Some(self.base.trust_root.to_vec()))
    }

    fn record_trust_root(&mut self, _cluster: &ClusterId, _root: &[u8]) -> rap_proto::Result<()> {
        Err(rap_proto::Error::Store {
            context: "rotate the trust root in the authority state".to_string(),
            source: "trust-root rotation through the authority group is not implemented yet".into(),
        })
    }
}
