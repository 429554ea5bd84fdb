//! Shared set-up: a cluster, its signing key and trust root, a verifier on
//! a real durable store in a temp dir, and a helper to seal drafts.

use rap_core::marks::FileHighWaterStore;
use rap_proto::envelope::{
    Digest, Reader, ReaderSelector, Scope, SealedEnvelope, ShardDraft, SnapshotSigner, TrustRoot,
    VerifiedTrustRoot, Verifier, VerifierOptions, seal,
};
use rap_proto::ids::{
    AuthorityTerm, ClusterId, NodeId, RoleName, SnapshotVersion, TrustGeneration,
};
use rap_proto::time::UnixMillis;

/// A fixed "now" so tests do not depend on the wall clock.
pub const NOW: UnixMillis = UnixMillis(1_800_000_000_000);
/// One hour, the default validity window in these tests.
pub const HOUR_MS: i64 = 3600 * 1000;

pub struct Fixture {
    pub cluster: ClusterId,
    pub key: SnapshotSigner,
    pub root: VerifiedTrustRoot,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let cluster = ClusterId::new("c1").unwrap();
        let key = SnapshotSigner::generate().unwrap();
        let root = TrustRoot::genesis(&cluster, &[&key], NOW).unwrap();
        Fixture {
            cluster,
            key,
            root,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A verifier on the durable store in this fixture's dir (reopening it
    /// is a restart).
    pub fn verifier(&self) -> Verifier<FileHighWaterStore> {
        let store = FileHighWaterStore::open(self.dir.path()).unwrap();
        Verifier::open(
            self.cluster.clone(),
            self.root.bytes(),
            Some(self.root.root_hash()),
            store,
            VerifierOptions::default(),
        )
        .unwrap()
    }

    /// A draft of `scope` at `version` and term 1, valid for an hour from
    /// NOW, readable by node n1.
    pub fn draft(&self, scope: &Scope, version: u64, prev: Option<Digest>) -> ShardDraft {
        ShardDraft {
            cluster_id: self.cluster.clone(),
            scope: scope.clone(),
            version: SnapshotVersion(version),
            authority_term: AuthorityTerm(1),
            issued_at: NOW,
            expires_at: NOW.plus_ms(HOUR_MS),
            prev_hash: prev,
            readers: vec![ReaderSelector::Node(n1())],
            body: format!("body of {scope} v{version}").into_bytes(),
        }
    }

    pub fn seal(&self, draft: ShardDraft) -> SealedEnvelope {
        seal(draft, &self.key, self.root.generation()).unwrap()
    }

    /// Seals a chain v1..=n of `scope`; returns them in order.
    pub fn chain(&self, scope: &Scope, n: u64) -> Vec<SealedEnvelope> {
        let mut out: Vec<SealedEnvelope> = Vec::new();
        for version in 1..=n {
            let prev = out.last().map(|e| e.header_hash);
            out.push(self.seal(self.draft(scope, version, prev)));
        }
        out
    }
}

pub fn n1() -> NodeId {
    NodeId::new("n1").unwrap()
}

pub fn node_scope() -> Scope {
    Scope::Node(n1())
}

pub fn reader() -> Reader {
    Reader::Node {
        node_id: n1(),
        roles: vec![RoleName::new("entry-node").unwrap()],
        orgs: Vec::new(),
    }
}

pub fn generation(g: u64) -> TrustGeneration {
    TrustGeneration(g)
}
