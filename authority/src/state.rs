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

use crate::limits::{
    FENCE_BATCH_MAX, FENCE_PURPOSE_BYTES_MAX, PUBLISH_BYTES_MAX, PUBLISH_ENVELOPES_MAX, SHARDS_MAX,
};
use crate::request::{FenceAsk, PublishedShard, Refusal, Request, Response};
use rap_core::fence::Fence;
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
    /// The signed promotion order (an encoded `PromoteRequest`) that
    /// created `authority_term`; empty at term 1. Members attach it to
    /// their Raft RPCs and refusals so that others can believe the term
    ///.
    #[serde(default)]
    pub term_proof: ByteBuf,
    /// The current trust root (an encoded `SignedTrustRoot`) once a
    /// `trust/root` shard rotated past genesis; empty while the genesis
    /// root is current.
    #[serde(default)]
    pub current_root: ByteBuf,
    /// Scope → newest verified envelope.
    pub shards: BTreeMap<String, ShardRecord>,
}

impl AuthorityState {
    /// The encoded current trust root: the last rotation's, else genesis.
    pub fn current_trust_root(&self) -> &[u8] {
        if self.current_root.is_empty() {
            &self.trust_root
        } else {
            &self.current_root
        }
    }
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
            Request::AcquireFences { asks } => self.acquire_fences(log_index, asks),
            Request::PublishShards {
                fence,
                envelopes,
                proposed_at_ms,
            } => self.publish(log_index, fence, envelopes, UnixMillis(*proposed_at_ms)),
            Request::Reseed {
                state,
                new_term,
                proof,
            } => self.reseed(state, *new_term, proof),
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
            term_proof: ByteBuf::new(),
            current_root: ByteBuf::new(),
            shards: BTreeMap::new(),
        };
        Applied {
            response: Response::Done,
            touched: Touched::All,
        }
    }

    /// Grants the asks of one group-commit entry in order, each decided as
    /// an `AcquireFence` entry of its own at the same log index.
    fn acquire_fences(&mut self, log_index: u64, asks: &[FenceAsk]) -> Applied {
        if asks.len() > FENCE_BATCH_MAX {
            return refused(
                "OVERSIZE",
                format!(
                    "{} fences asked in one entry, over the limit of {FENCE_BATCH_MAX}",
                    asks.len()
                ),
            );
        }
        let mut touched = Touched::Nothing;
        let answers = asks
            .iter()
            .map(|ask| {
                let applied = self.acquire_fence(log_index, &ask.purpose, ask.expected_term);
                if matches!(applied.response, Response::Fence(_)) {
                    touched = Touched::Meta;
                }
                applied.response
            })
            .collect();
        Applied {
            response: Response::Fences(answers),
            touched,
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
            root: None,
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
            // A trust/root envelope first moves the group along the chain
            // it carries (roots authenticate themselves), then is verified
            // under the generation reached.
            if let Err(e) = rap_proto::shards::follow_trust_roots(&mut verifier, &cluster_id, bytes)
            {
                return refused(e.code(), format!("envelope {position} ({scope}): {e}"));
            }
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
        let rotated = overlay.root;
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
        if let Some(root) = rotated {
            self.current_root = ByteBuf::from(root);
        }
        Applied {
            response: Response::Published(published),
            touched: Touched::Scopes(touched),
        }
    }

    fn reseed(
        &mut self,
        state: &AuthorityState,
        new_term: AuthorityTerm,
        proof: &ByteBuf,
    ) -> Applied {
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
            term_proof: proof.clone(),
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
    /// A trust root rotated to within the entry.
    root: Option<Vec<u8>>,
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
        Ok(Some(match &self.root {
            Some(root) => root.clone(),
            None => self.base.current_trust_root().to_vec(),
        }))
    }

    fn record_trust_root(&mut self, _cluster: &ClusterId, root: &[u8]) -> rap_proto::Result<()> {
        self.root = Some(root.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rap_proto::envelope::{
        ReaderSelector, ShardDraft, SnapshotSigner, TrustRoot, VerifiedTrustRoot, seal,
    };

    struct Fixture {
        key: SnapshotSigner,
        cluster: ClusterId,
        state: AuthorityState,
    }

    const NOW: i64 = 1_800_000_000_000;

    fn fixture() -> Fixture {
        let cluster = ClusterId::new("c1").unwrap();
        let key = SnapshotSigner::generate().unwrap();
        let root = TrustRoot::genesis(&cluster, &[&key], UnixMillis(NOW)).unwrap();
        let mut state = AuthorityState::default();
        let applied = state.apply(
            1,
            &Request::Genesis {
                cluster_id: cluster.clone(),
                trust_root: ByteBuf::from(root.bytes().to_vec()),
            },
        );
        assert_eq!(applied.response, Response::Done);
        Fixture {
            key,
            cluster,
            state,
        }
    }

    fn fence(state: &mut AuthorityState, index: u64) -> Fence {
        match state
            .apply(
                index,
                &Request::AcquireFence {
                    purpose: "test".into(),
                    expected_term: state.authority_term,
                },
            )
            .response
        {
            Response::Fence(fence) => fence,
            other => panic!("expected a fence, got {other:?}"),
        }
    }

    fn envelope(fx: &Fixture, version: u64, prev: Option<Digest>, term: u64) -> (ByteBuf, Digest) {
        let sealed = seal(
            ShardDraft {
                cluster_id: fx.cluster.clone(),
                scope: "node/n1".parse().unwrap(),
                version: SnapshotVersion(version),
                authority_term: AuthorityTerm(term),
                issued_at: UnixMillis(NOW),
                expires_at: UnixMillis(NOW + 3_600_000),
                prev_hash: prev,
                readers: vec![ReaderSelector::AllNodes],
                body: format!("v{version}").into_bytes(),
            },
            &fx.key,
            TrustGeneration(1),
        )
        .unwrap();
        (ByteBuf::from(sealed.bytes), sealed.header_hash)
    }

    fn refusal_code(applied: &Applied) -> &str {
        match &applied.response {
            Response::Refused(r) => &r.code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn sealed(
        fx: &Fixture,
        scope: &str,
        version: u64,
        prev: Option<Digest>,
        key: &SnapshotSigner,
        generation: u64,
        body: Vec<u8>,
    ) -> ByteBuf {
        ByteBuf::from(
            seal(
                ShardDraft {
                    cluster_id: fx.cluster.clone(),
                    scope: scope.parse().unwrap(),
                    version: SnapshotVersion(version),
                    authority_term: AuthorityTerm(1),
                    issued_at: UnixMillis(NOW),
                    expires_at: UnixMillis(NOW + 3_600_000),
                    prev_hash: prev,
                    readers: vec![ReaderSelector::AllNodes],
                    body,
                },
                key,
                TrustGeneration(generation),
            )
            .unwrap()
            .bytes,
        )
    }

    // Goal (issue 10 "signing-key rotation"): a trust/root shard carrying
    // generation 2 (signed by generation 1's key and its own) moves the
    // group to generation 2 in the same entry, verified under the new key;
    // afterwards an envelope signed by the retired key is refused and one
    // signed by the new key is accepted; a chain with a forged link changes
    // nothing. Method: apply the entries to a state and check its root and
    // the refusal codes.
    #[test]
    fn a_trust_root_shard_rotates_the_signing_key() {
        let mut fx = fixture();
        let f = fence(&mut fx.state, 2);
        let genesis =
            VerifiedTrustRoot::verify_genesis(&fx.state.trust_root, &fx.cluster, None).unwrap();
        let new_key = SnapshotSigner::generate().unwrap();
        let g2 = TrustRoot::rotate(&genesis, &[&new_key], &[&fx.key], UnixMillis(NOW)).unwrap();
        let chain = |roots: Vec<Vec<u8>>| {
            rap_proto::shards::encode(&rap_proto::pb::TrustRootShard {
                format: rap_proto::shards::SHARD_FORMAT,
                cluster_id: "c1".into(),
                roots,
            })
            .unwrap()
        };
        let publish = |envelopes: Vec<ByteBuf>| Request::PublishShards {
            fence: f.clone(),
            envelopes,
            proposed_at_ms: NOW,
        };

        // A forged generation 2 (chained to another genesis, not signed by
        // generation 1's key): refused, nothing moves.
        let stranger = SnapshotSigner::generate().unwrap();
        let other = TrustRoot::genesis(&fx.cluster, &[&stranger], UnixMillis(NOW)).unwrap();
        let forged =
            TrustRoot::rotate(&other, &[&stranger], &[&stranger], UnixMillis(NOW)).unwrap();
        let before = fx.state.clone();
        let body = chain(vec![genesis.bytes().to_vec(), forged.bytes().to_vec()]);
        let envelope = sealed(&fx, "trust/root", 1, None, &stranger, 2, body);
        let applied = fx.state.apply(3, &publish(vec![envelope]));
        assert!(
            matches!(applied.response, Response::Refused(_)),
            "{applied:?}"
        );
        assert_eq!(fx.state, before);

        let body = chain(vec![genesis.bytes().to_vec(), g2.bytes().to_vec()]);
        let root_envelope = sealed(&fx, "trust/root", 1, None, &new_key, 2, body);
        let node_v1 = sealed(&fx, "node/n1", 1, None, &new_key, 2, b"v1".to_vec());
        let applied = fx.state.apply(4, &publish(vec![root_envelope, node_v1]));
        assert!(
            matches!(applied.response, Response::Published(_)),
            "{applied:?}"
        );
        assert_eq!(fx.state.current_trust_root(), g2.bytes());

        let retired = sealed(&fx, "node/n2", 1, None, &fx.key, 1, b"old".to_vec());
        let before = fx.state.clone();
        assert_eq!(
            refusal_code(&fx.state.apply(5, &publish(vec![retired]))),
            "STALE_TRUST_GENERATION"
        );
        assert_eq!(fx.state, before);
        let fresh = sealed(&fx, "node/n2", 1, None, &new_key, 2, b"new".to_vec());
        let applied = fx.state.apply(6, &publish(vec![fresh]));
        assert!(
            matches!(applied.response, Response::Published(_)),
            "{applied:?}"
        );
    }

    // Goal (invariant 1): fences strictly increase within a term and carry
    // the granting index; a caller with the wrong term view gets nothing.
    // Method: grant three, then ask with a stale expected term.
    #[test]
    fn fences_increase_and_check_the_term() {
        let mut fx = fixture();
        let seqs: Vec<u64> = (2..5).map(|i| fence(&mut fx.state, i).seq.0).collect();
        assert_eq!(seqs, [1, 2, 3]);
        let before = fx.state.clone();
        let applied = fx.state.apply(
            9,
            &Request::AcquireFence {
                purpose: "x".into(),
                expected_term: AuthorityTerm(7),
            },
        );
        assert_eq!(refusal_code(&applied), "TERM_MISMATCH");
        assert_eq!(fx.state, before, "a refusal changes nothing");
    }

    // Goal (invariant 1, group commit): one AcquireFences entry grants its
    // asks in order, each the next sequence of the term at that index, as
    // separate entries would; an ask with the wrong term view is refused
    // alone; an entry over FENCE_BATCH_MAX is refused whole and changes
    // nothing. Method: a batch of four with one stale ask between, then a
    // single fence after it, then an oversize batch.
    #[test]
    fn a_fence_batch_grants_each_ask_in_order() {
        let mut fx = fixture();
        let term = fx.state.authority_term;
        let ask = |expected_term| FenceAsk {
            purpose: "batch".into(),
            expected_term,
        };
        let applied = fx.state.apply(
            2,
            &Request::AcquireFences {
                asks: vec![ask(term), ask(term), ask(AuthorityTerm(7)), ask(term)],
            },
        );
        let Response::Fences(answers) = applied.response else {
            panic!("{applied:?}");
        };
        let seqs: Vec<Option<u64>> = answers
            .iter()
            .map(|answer| match answer {
                Response::Fence(fence) => {
                    assert_eq!(fence.log_index.0, 2);
                    assert_eq!(fence.authority_term, term);
                    Some(fence.seq.0)
                }
                Response::Refused(refusal) => {
                    assert_eq!(refusal.code, "TERM_MISMATCH");
                    None
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, [Some(1), Some(2), None, Some(3)]);
        assert_eq!(fence(&mut fx.state, 3).seq.0, 4, "the sequence goes on");

        let before = fx.state.clone();
        let oversize = fx.state.apply(
            4,
            &Request::AcquireFences {
                asks: vec![ask(term); FENCE_BATCH_MAX + 1],
            },
        );
        assert_eq!(refusal_code(&oversize), "OVERSIZE");
        assert_eq!(fx.state, before, "a refusal changes nothing");
    }

    // Goal: publishing needs a granted fence of the current term, verifies
    // every envelope, and is all-or-nothing. Method: publish a chain, then
    // a batch with one rolled-back envelope, an ungranted fence, a fence of
    // an old term.
    #[test]
    fn publish_verifies_and_is_all_or_nothing() {
        let mut fx = fixture();
        let f = fence(&mut fx.state, 2);
        let (v1, h1) = envelope(&fx, 1, None, 1);
        let (v2, h2) = envelope(&fx, 2, Some(h1), 1);
        let publish = |fence: &Fence, envelopes: Vec<ByteBuf>| Request::PublishShards {
            fence: fence.clone(),
            envelopes,
            proposed_at_ms: NOW,
        };
        let applied = fx
            .state
            .apply(3, &publish(&f, vec![v1.clone(), v2.clone()]));
        match &applied.response {
            Response::Published(shards) => assert_eq!(shards.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(fx.state.shards["node/n1"].version, SnapshotVersion(2));

        let before = fx.state.clone();
        let (v3, _) = envelope(&fx, 3, Some(h2), 1);
        let applied = fx
            .state
            .apply(4, &publish(&f, vec![v3.clone(), v1.clone()]));
        assert_eq!(refusal_code(&applied), "ROLLBACK");
        assert_eq!(fx.state, before, "all or nothing");

        let mut ungranted = f.clone();
        ungranted.seq = FenceSeq(99);
        assert_eq!(
            refusal_code(&fx.state.apply(5, &publish(&ungranted, vec![v3.clone()]))),
            "UNKNOWN_FENCE"
        );
        let mut old = f.clone();
        old.authority_term = AuthorityTerm(0);
        assert_eq!(
            refusal_code(&fx.state.apply(6, &publish(&old, vec![v3.clone()]))),
            "STALE_FENCE"
        );
        assert_eq!(fx.state, before);
    }

    // Goal (invariant 6): after a reseed to term T+1, old-term fences and
    // old-term envelopes are refused, and fences restart at seq 1 of T+1.
    // Method: reseed a copy of the state, then try term-1 material.
    #[test]
    fn reseed_fences_the_old_term() {
        let mut fx = fixture();
        let old_fence = fence(&mut fx.state, 2);
        let (v1, h1) = envelope(&fx, 1, None, 1);
        let mut fresh = AuthorityState::default();
        let applied = fresh.apply(
            1,
            &Request::Reseed {
                state: Box::new(fx.state.clone()),
                new_term: AuthorityTerm(2),
                proof: ByteBuf::from(b"order".to_vec()),
            },
        );
        assert_eq!(applied.response, Response::Done);
        assert_eq!(fresh.authority_term, AuthorityTerm(2));
        assert_eq!(fresh.term_proof.as_ref(), b"order", "the order is kept");
        let publish = Request::PublishShards {
            fence: old_fence,
            envelopes: vec![v1],
            proposed_at_ms: NOW,
        };
        assert_eq!(refusal_code(&fresh.apply(2, &publish)), "STALE_FENCE");
        let new_fence = fence(&mut fresh, 3);
        assert_eq!(
            (new_fence.authority_term, new_fence.seq),
            (AuthorityTerm(2), FenceSeq(1))
        );
        let (v2_old_term, _) = envelope(&fx, 2, Some(h1), 1);
        let publish = Request::PublishShards {
            fence: new_fence,
            envelopes: vec![v2_old_term],
            proposed_at_ms: NOW,
        };
        assert_eq!(refusal_code(&fresh.apply(4, &publish)), "TERM_MISMATCH");
        // A second reseed to the same term is refused.
        let again = fresh.apply(
            5,
            &Request::Reseed {
                state: Box::new(fx.state.clone()),
                new_term: AuthorityTerm(2),
                proof: ByteBuf::from(b"order".to_vec()),
            },
        );
        assert_eq!(refusal_code(&again), "TERM_MISMATCH");
    }
}
