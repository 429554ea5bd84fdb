//! A cache replica's shard store against what an attacker (or a broken
//! voter) can feed it: every refusal is the verifier's typed error and
//! changes nothing; what it keeps survives a reopen; a removed scope never
//! comes back older.

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test

use rap_authority::cache::CacheStore;
use rap_proto::envelope::{
    Digest, ReaderSelector, SealedEnvelope, ShardDraft, SnapshotSigner, TrustRoot,
    VerifiedTrustRoot, VerifierOptions, seal,
};
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId, SnapshotVersion, TrustGeneration};
use rap_proto::pb;
use rap_proto::time::UnixMillis;

struct Cluster {
    id: ClusterId,
    key: SnapshotSigner,
    genesis: VerifiedTrustRoot,
}

fn cluster(id: &str) -> Cluster {
    let id = ClusterId::new(id).unwrap();
    let key = SnapshotSigner::generate().unwrap();
    let genesis = TrustRoot::genesis(&id, &[&key], UnixMillis::now()).unwrap();
    Cluster { id, key, genesis }
}

#[allow(clippy::too_many_arguments)]
fn sealed(
    c: &Cluster,
    key: &SnapshotSigner,
    generation: u64,
    scope: &str,
    version: u64,
    prev: Option<Digest>,
    body: Vec<u8>,
) -> SealedEnvelope {
    let now = UnixMillis::now();
    seal(
        ShardDraft {
            cluster_id: c.id.clone(),
            scope: scope.parse().unwrap(),
            version: SnapshotVersion(version),
            authority_term: AuthorityTerm(1),
            issued_at: now,
            expires_at: now.plus_ms(3_600_000),
            prev_hash: prev,
            readers: vec![ReaderSelector::AllNodes],
            body,
        },
        key,
        TrustGeneration(generation),
    )
    .unwrap()
}

fn open(dir: &std::path::Path, c: &Cluster) -> CacheStore {
    CacheStore::open(
        dir,
        c.id.clone(),
        NodeId::new("cache-1").unwrap(),
        c.genesis.bytes(),
        VerifierOptions::default(),
    )
    .unwrap()
}

fn code(store: &CacheStore, envelope: &[u8]) -> String {
    store
        .accept(envelope, UnixMillis::now())
        .expect_err("refused")
        .code()
        .to_string()
}

// Goal (issue 10 "Attacks on caches"): a cache replica fed a tampered,
// re-signed-by-a-stranger, rolled-back, forked, foreign-cluster or
// retired-key envelope refuses it with the verifier's code and keeps what
// it had; a good chain is kept across a reopen; a trust/root envelope moves
// it to the next generation; a removed scope cannot come back older, and
// comes back at its version only as the very envelope accepted before.
// Method: a real redb store in a temp dir; seal envelopes with real keys;
// feed them in order; after each refusal compare the kept envelope and the
// scope list with before.
#[test]
fn a_cache_replica_refuses_bad_envelopes_and_keeps_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster("c1");
    let store = open(dir.path(), &c);
    let v1 = sealed(&c, &c.key, 1, "node/n1", 1, None, b"v1".to_vec());
    let v2 = sealed(
        &c,
        &c.key,
        1,
        "node/n1",
        2,
        Some(v1.header_hash),
        b"v2".to_vec(),
    );
    store.accept(&v1.bytes, UnixMillis::now()).unwrap();
    store.accept(&v2.bytes, UnixMillis::now()).unwrap();
    drop(store);
    let store = open(dir.path(), &c);
    assert_eq!(
        store.get("node/n1").unwrap().as_deref(),
        Some(&v2.bytes[..])
    );

    let unchanged = |store: &CacheStore| {
        assert_eq!(
            store.get("node/n1").unwrap().as_deref(),
            Some(&v2.bytes[..])
        );
        assert_eq!(store.scopes().unwrap(), ["node/n1"]);
    };
    // Rolled back and replayed.
    assert_eq!(code(&store, &v1.bytes), "ROLLBACK");
    assert_eq!(code(&store, &v2.bytes), "REPLAY");
    unchanged(&store);
    // Tampered: a changed body under the old signature.
    let mut envelope = pb::SignedEnvelope {
        header: Vec::new(),
        body: Vec::new(),
        signature: Vec::new(),
    };
    let v3 = sealed(
        &c,
        &c.key,
        1,
        "node/n1",
        3,
        Some(v2.header_hash),
        b"v3".to_vec(),
    );
    {
        use prost::Message;
        envelope.merge(v3.bytes.as_slice()).unwrap();
        envelope.body = b"evil".to_vec();
        assert_eq!(
            code(&store, &envelope.encode_to_vec()),
            "CONTENT_HASH_MISMATCH"
        );
        let mut forged = pb::SignedEnvelope::decode(v3.bytes.as_slice()).unwrap();
        forged.signature[0] ^= 1;
        assert_eq!(code(&store, &forged.encode_to_vec()), "BAD_SIGNATURE");
    }
    // Signed by a key the trust root does not hold.
    let stranger = SnapshotSigner::generate().unwrap();
    let unknown = sealed(
        &c,
        &stranger,
        1,
        "node/n1",
        3,
        Some(v2.header_hash),
        b"v3".to_vec(),
    );
    assert_eq!(code(&store, &unknown.bytes), "UNKNOWN_KEY");
    // A fork: version 3 chained to something else.
    let fork = sealed(
        &c,
        &c.key,
        1,
        "node/n1",
        3,
        Some(v1.header_hash),
        b"v3".to_vec(),
    );
    assert_eq!(code(&store, &fork.bytes), "FORK");
    // Another cluster's envelope.
    let other = cluster("c2");
    let foreign = sealed(&other, &other.key, 1, "node/n1", 1, None, b"x".to_vec());
    assert_eq!(code(&store, &foreign.bytes), "WRONG_CLUSTER");
    unchanged(&store);

    // Rotation: a trust/root envelope signed by generation 2 carrying the
    // chain moves the store; the retired key is refused afterwards.
    let new_key = SnapshotSigner::generate().unwrap();
    let g2 = TrustRoot::rotate(&c.genesis, &[&new_key], &[&c.key], UnixMillis::now()).unwrap();
    let chain = rap_proto::shards::encode(&pb::TrustRootShard {
        format: rap_proto::shards::SHARD_FORMAT,
        cluster_id: "c1".into(),
        roots: vec![c.genesis.bytes().to_vec(), g2.bytes().to_vec()],
    })
    .unwrap();
    let root = sealed(&c, &new_key, 2, "trust/root", 1, None, chain);
    store.accept(&root.bytes, UnixMillis::now()).unwrap();
    let retired = sealed(
        &c,
        &c.key,
        1,
        "node/n1",
        3,
        Some(v2.header_hash),
        b"v3".to_vec(),
    );
    assert_eq!(code(&store, &retired.bytes), "STALE_TRUST_GENERATION");
    let current = sealed(
        &c,
        &new_key,
        2,
        "node/n1",
        3,
        Some(v2.header_hash),
        b"v3".to_vec(),
    );
    store.accept(&current.bytes, UnixMillis::now()).unwrap();
    drop(store);
    let store = open(dir.path(), &c);
    assert_eq!(
        code(&store, &retired.bytes),
        "STALE_TRUST_GENERATION",
        "the rotation is durable"
    );

    // Placement takes node/n1 away: gone, and it cannot come back older.
    assert!(store.remove("node/n1").unwrap());
    assert_eq!(store.get("node/n1").unwrap(), None);
    let older = sealed(
        &c,
        &new_key,
        2,
        "node/n1",
        2,
        Some(v1.header_hash),
        b"v2".to_vec(),
    );
    assert_eq!(code(&store, &older.bytes), "ROLLBACK");
    assert_eq!(store.scopes().unwrap(), ["trust/root"]);
    // Placement gives it back at the same version: the very envelope it
    // accepted is kept again; another one of that version is a fork.
    let same_version_other = sealed(
        &c,
        &new_key,
        2,
        "node/n1",
        3,
        Some(v2.header_hash),
        b"other v3".to_vec(),
    );
    assert_eq!(code(&store, &same_version_other.bytes), "FORK");
    assert_eq!(store.scopes().unwrap(), ["trust/root"]);
    store.accept(&current.bytes, UnixMillis::now()).unwrap();
    assert_eq!(
        store.get("node/n1").unwrap().as_deref(),
        Some(&current.bytes[..])
    );
    assert_eq!(
        code(&store, &current.bytes),
        "REPLAY",
        "kept: a replay again"
    );
}

// Goal: a batch keeps what verifies and refuses the rest, each with its
// own outcome, in one transaction: two versions of one scope chain inside
// the batch, a rolled-back and a foreign envelope are refused with their
// codes and change nothing, and an over-long batch is refused whole.
// Method: a real store; one batch of five envelopes; check each outcome,
// the kept envelopes after a reopen, and the limit.
#[test]
fn a_batch_keeps_what_verifies_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let c = cluster("c1");
    let store = open(dir.path(), &c);
    let a1 = sealed(&c, &c.key, 1, "node/a", 1, None, b"a1".to_vec());
    store.accept(&a1.bytes, UnixMillis::now()).unwrap();
    let a2 = sealed(
        &c,
        &c.key,
        1,
        "node/a",
        2,
        Some(a1.header_hash),
        b"a2".to_vec(),
    );
    let a3 = sealed(
        &c,
        &c.key,
        1,
        "node/a",
        3,
        Some(a2.header_hash),
        b"a3".to_vec(),
    );
    let b1 = sealed(&c, &c.key, 1, "node/b", 1, None, b"b1".to_vec());
    let other = cluster("c2");
    let foreign = sealed(&other, &other.key, 1, "node/c", 1, None, b"x".to_vec());
    let batch: Vec<&[u8]> = vec![&a2.bytes, &a1.bytes, &foreign.bytes, &a3.bytes, &b1.bytes];
    let outcomes = store.accept_batch(&batch, UnixMillis::now()).unwrap();
    let codes: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            Ok(kept) => format!("{}@{}", kept.scope, kept.version.0),
            Err(e) => e.code().to_string(),
        })
        .collect();
    assert_eq!(
        codes,
        [
            "node/a@2",
            "ROLLBACK",
            "WRONG_CLUSTER",
            "node/a@3",
            "node/b@1"
        ]
    );
    drop(store);
    let store = open(dir.path(), &c);
    assert_eq!(store.get("node/a").unwrap().as_deref(), Some(&a3.bytes[..]));
    assert_eq!(store.get("node/b").unwrap().as_deref(), Some(&b1.bytes[..]));
    assert_eq!(store.scopes().unwrap(), ["node/a", "node/b"]);
    let too_many: Vec<&[u8]> = vec![&b1.bytes[..]; rap_authority::cache::ACCEPT_BATCH_MAX + 1];
    let refused = store
        .accept_batch(&too_many, UnixMillis::now())
        .expect_err("over the limit");
    assert_eq!(refused.code(), "OVERSIZE");
}
