//! The redb Raft storage (`rap_authority::store`): openraft's conformance
//! suite, restart, corruption, snapshot transfer and apply announcements.

mod changes;
mod corrupt;
mod reopen;
mod snapshot;
mod suite;

use openraft::{CommittedLeaderId, EntryPayload, Membership};
use rap_authority::request::{Request, Response};
use rap_authority::typ::{Entry, LogId, Member, TypeConfig};
use rap_core::Fence;
use rap_proto::envelope::{ReaderSelector, Scope, ShardDraft, SnapshotSigner, TrustRoot, seal};
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId, SnapshotVersion, TrustGeneration};
use rap_proto::time::UnixMillis;
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, BTreeSet};

/// Test result: any error, with its message.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The proposer's clock in these tests (any fixed time works).
pub const NOW_MS: i64 = 1_750_000_000_000;

/// Raft node id of the only voter.
pub const VOTER: u64 = 1;

/// A log id of leader `VOTER`.
pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, VOTER), index)
}

/// An entry at `(term, index)`.
pub fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

/// A normal entry carrying `request`.
pub fn normal(term: u64, index: u64, request: Request) -> Entry {
    entry(term, index, EntryPayload::Normal(request))
}

/// A membership entry with `VOTER` as the only voter.
pub fn membership(term: u64, index: u64) -> Entry {
    let member = Member {
        node_id: "n1".to_string(),
        address: "127.0.0.1:7000".to_string(),
        region: "r1".to_string(),
        zone: "z1".to_string(),
        host: "h1".to_string(),
    };
    entry(
        term,
        index,
        EntryPayload::Membership(Membership::new(
            vec![BTreeSet::from([VOTER])],
            BTreeMap::from([(VOTER, member)]),
        )),
    )
}

/// A cluster with a real genesis trust root and its signing key.
pub struct Cluster {
    /// The cluster.
    pub id: ClusterId,
    /// Its snapshot-signing key.
    pub signer: SnapshotSigner,
    /// Encoded genesis `SignedTrustRoot`.
    pub trust_root: Vec<u8>,
}

impl Cluster {
    /// A fresh cluster `c1`.
    pub fn new() -> TestResult<Self> {
        let id = ClusterId::new("c1")?;
        let signer = SnapshotSigner::generate()?;
        let root = TrustRoot::genesis(&id, &[&signer], UnixMillis(NOW_MS - 60_000))?;
        Ok(Cluster {
            id,
            signer,
            trust_root: root.bytes().to_vec(),
        })
    }

    /// The `Genesis` request of this cluster.
    pub fn genesis(&self) -> Request {
        Request::Genesis {
            cluster_id: self.id.clone(),
            trust_root: ByteBuf::from(self.trust_root.clone()),
        }
    }

    /// A `PublishShards` request with version `version` of `node/<node>`
    /// under `fence`.
    pub fn publish(&self, fence: &Fence, node: &str, version: u64) -> TestResult<Request> {
        let node_id = NodeId::new(node)?;
        let sealed = seal(
            ShardDraft {
                cluster_id: self.id.clone(),
                scope: Scope::Node(node_id.clone()),
                version: SnapshotVersion(version),
                authority_term: AuthorityTerm(1),
                issued_at: UnixMillis(NOW_MS - 1_000),
                expires_at: UnixMillis(NOW_MS + 3_600_000),
                prev_hash: None,
                readers: vec![ReaderSelector::Node(node_id)],
                body: format!("policy of {node}").into_bytes(),
            },
            &self.signer,
            TrustGeneration(1),
        )?;
        Ok(Request::PublishShards {
            fence: fence.clone(),
            envelopes: vec![ByteBuf::from(sealed.bytes)],
            proposed_at_ms: NOW_MS,
        })
    }
}

/// An `AcquireFence` request for authority term 1.
pub fn acquire(purpose: &str) -> Request {
    Request::AcquireFence {
        purpose: purpose.to_string(),
        expected_term: AuthorityTerm(1),
    }
}

/// The fence of a response, or an error naming what came back.
pub fn fence_of(response: &Response) -> TestResult<Fence> {
    match response {
        Response::Fence(fence) => Ok(fence.clone()),
        other => Err(format!("expected a fence, got {other:?}").into()),
    }
}

/// Debug text of entries: `openraft::Entry` has no `PartialEq`.
pub fn debug_of(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|entry| format!("{entry:?}")).collect()
}
