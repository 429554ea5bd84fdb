//! One test per attack of The Update Framework's list that applies to
//! snapshot shards, plus the fork, term and reader rules of the verifier.
//! Every refusal is checked for its own error variant *and* for leaving
//! the verifier's marks unchanged.

use crate::fixture::*;
use prost::Message;
use rap_proto::Error;
use rap_proto::envelope::{
    Digest, Reader, ReaderSelector, Scope, ShardDraft, SnapshotSigner, TrustRoot, seal,
};
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId, RoleName, SnapshotVersion};
use rap_proto::limits::{ENVELOPE_BYTES_MAX, READERS_MAX};
use rap_proto::pb;

// Goal: the happy path works and is durable. Method: accept v1 and v2 of a
// chain, check the bodies and the stored mark.
#[test]
fn accepts_a_valid_chain() {
    let fx = Fixture::new();
    let chain = fx.chain(&node_scope(), 2);
    let mut verifier = fx.verifier();
    let first = verifier
        .verify(&chain[0].bytes, &node_scope(), &reader(), NOW)
        .unwrap();
    assert_eq!(first.body, b"body of node/n1 v1");
    let second = verifier
        .verify(&chain[1].bytes, &node_scope(), &reader(), NOW)
        .unwrap();
    assert_eq!(second.header.version, SnapshotVersion(2));
    let mark = verifier.scope_mark(&node_scope()).unwrap().unwrap();
    assert_eq!(mark.version, SnapshotVersion(2));
    assert_eq!(mark.header_hash, chain[1].header_hash);
}

// Goal (TUF rollback attack): an older version is refused once a newer one
// was accepted, with the numbers in the error, also across a restart.
// Method: accept v3, offer v2; reopen the durable store, offer v2 again.
#[test]
fn rollback_is_refused_also_after_restart() {
    let fx = Fixture::new();
    let chain = fx.chain(&node_scope(), 3);
    {
        let mut verifier = fx.verifier();
        verifier
            .verify(&chain[2].bytes, &node_scope(), &reader(), NOW)
            .unwrap();
        let err = verifier
            .verify(&chain[1].bytes, &node_scope(), &reader(), NOW)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Rollback {
                    seen: SnapshotVersion(3),
                    got: SnapshotVersion(2),
                    ..
                }
            ),
            "{err:?}"
        );
    }
    // Restart: a new verifier over the same directory.
    let mut verifier = fx.verifier();
    let err = verifier
        .verify(&chain[1].bytes, &node_scope(), &reader(), NOW)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Rollback {
                seen: SnapshotVersion(3),
                got: SnapshotVersion(2),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "rollback of node/n1: seen version 3, got 2"
    );
    let mark = verifier.scope_mark(&node_scope()).unwrap().unwrap();
    assert_eq!(mark.version, SnapshotVersion(3));
}

// Goal (TUF replay): the very envelope already accepted is refused as a
// replay. Method: verify the same bytes twice.
#[test]
fn replay_is_refused() {
    let fx = Fixture::new();
    let chain = fx.chain(&node_scope(), 1);
    let mut verifier = fx.verifier();
    verifier
        .verify(&chain[0].bytes, &node_scope(), &reader(), NOW)
        .unwrap();
    let err = verifier
        .verify(&chain[0].bytes, &node_scope(), &reader(), NOW)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Replay {
                version: SnapshotVersion(1),
                ..
            }
        ),
        "{err:?}"
    );
}

// Goal (TUF freeze / indefinite freeze): an expired envelope is refused
// beyond the skew allowance, accepted within it; an envelope from the
// future is refused too. Method: verify at instants around the window.
#[test]
fn freeze_expired_and_future_envelopes_are_refused() {
    let fx = Fixture::new();
    let skew = rap_proto::limits::CLOCK_SKEW_MS_DEFAULT as i64;
    let chain = fx.chain(&node_scope(), 1);
    let mut verifier = fx.verifier();

    let late = NOW.plus_ms(HOUR_MS + skew + 1);
    let err = verifier
        .verify(&chain[0].bytes, &node_scope(), &reader(), late)
        .unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err:?}");

    let early = NOW.plus_ms(-skew - 1);
    let err = verifier
        .verify(&chain[0].bytes, &node_scope(), &reader(), early)
        .unwrap_err();
    assert!(matches!(err, Error::NotYetValid { .. }), "{err:?}");
    assert!(verifier.scope_mark(&node_scope()).unwrap().is_none());

    // Just inside the skew allowance after expiry: accepted.
    let inside = NOW.plus_ms(HOUR_MS + skew);
    verifier
        .verify(&chain[0].bytes, &node_scope(), &reader(), inside)
        .unwrap();
}

// Goal (TUF fast-forward attack and its recovery by key rotation): a
// compromised key pushes a scope to a huge version, freezing legitimate
// updates; rotating the trust root to a new key recovers, and the old
// key's envelopes are then refused. Method: accept the attacker's version,
// see the legitimate one refused, rotate, see it accepted.
#[test]
fn fast_forward_is_recovered_by_key_rotation() {
    let fx = Fixture::new();
    let mut verifier = fx.verifier();
    let scope = node_scope();

    // The attacker holds the compromised key (fx.key) and signs version 2^62.
    let huge = 1u64 << 62;
    let attack = fx.seal(fx.draft(&scope, huge, Some(Digest::of(b"whatever"))));
    verifier
        .verify(&attack.bytes, &scope, &reader(), NOW)
        .unwrap();
    let legit = fx.seal(fx.draft(&scope, 5, Some(Digest::of(b"v4"))));
    let err = verifier
        .verify(&legit.bytes, &scope, &reader(), NOW)
        .unwrap_err();
    assert!(matches!(err, Error::Rollback { .. }), "{err:?}");

    // The control plane rotates to a new key; the rotation is signed by the
    // old generation and by the new key.
    let new_key = SnapshotSigner::generate().unwrap();
    let g2 = TrustRoot::rotate(&fx.root, &[&new_key], &[&fx.key], NOW).unwrap();
    assert_eq!(
        verifier.rotate_trust_root(g2.bytes()).unwrap(),
        generation(2)
    );

    // Republished under generation 2: accepted although its version is low.
    let republished = seal(
        fx.draft(&scope, 6, Some(Digest::of(b"v5"))),
        &new_key,
        g2.generation(),
    )
    .unwrap();
    let accepted = verifier
        .verify(&republished.bytes, &scope, &reader(), NOW)
        .unwrap();
    assert_eq!(accepted.header.version, SnapshotVersion(6));

    // The compromised key is useless now: its old envelopes are of a stale
    // generation, and it cannot sign under the new one.
    let err = verifier
        .verify(&attack.bytes, &scope, &reader(), NOW)
        .unwrap_err();
    assert!(matches!(err, Error::StaleTrustGeneration { .. }), "{err:?}");
    let forged = seal(
        fx.draft(&scope, huge, Some(Digest::of(b"x"))),
        &fx.key,
        generation(2),
    )
    .unwrap();
    let err = verifier
        .verify(&forged.bytes, &scope, &reader(), NOW)
        .unwrap_err();
    assert!(matches!(err, Error::UnknownKey { .. }), "{err:?}");

    // The rotation survives a restart.
    drop(verifier);
    let verifier = fx.verifier();
    assert_eq!(verifier.trust_root().generation(), generation(2));
}

// Goal (TUF endless data): an oversized envelope is refused by its length
// before any decoding, and oversized parts are refused by the sealer and
// by the decoder. Method: feed a buffer one byte over the limit, a draft
// with too many readers.
#[test]
fn endless_data_is_refused_before_decoding() {
    let fx = Fixture::new();
    let mut verifier = fx.verifier();
    // Not even a valid protobuf: the length check must come first.
    let huge = vec![0xffu8; ENVELOPE_BYTES_MAX + 1];
    let err = verifier
        .verify(&huge, &node_scope(), &reader(), NOW)
        .unwrap_err();
    assert!(
        matches!(err, Error::Oversize { what: "envelope", got, .. } if got == ENVELOPE_BYTES_MAX + 1),
        "{err:?}"
    );

    let mut draft = fx.draft(&node_scope(), 1, None);
    draft.readers = (0..=READERS_MAX)
        .map(|i| ReaderSelector::Node(NodeId::new(format!("n{i}")).unwrap()))
        .collect();
    let err = seal(draft, &fx.key, generation(1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Oversize {
                what: "envelope readers",
                ..
            }
        ),
        "{err:?}"
    );

    let mut draft = fx.draft(&node_scope(), 1, None);
    draft.body = vec![0; rap_proto::limits::BODY_BYTES_MAX + 1];
    let err = seal(draft, &fx.key, generation(1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Oversize {
                what: "envelope body",
                ..
            }
        ),
        "{err:?}"
    );
}

// Goal (TUF arbitrary software / wrong key): an envelope signed by a key
// outside the trust root is refused as an unknown key, and one that claims
// a trusted key id but is signed by another key fails its signature.
// Method: sign with a stranger's key; then splice the trusted key id in.
#[test]
fn wrong_key_is_refused() {
    let fx = Fixture::new();
    let mut verifier = fx.verifier();
    let stranger = SnapshotSigner::generate().unwrap();
    let envelope = seal(fx.draft(&node_scope(), 1, None), &stranger, generation(1)).unwrap();
    let err = verifier
        .verify(&envelope.bytes, &node_scope(), &reader(), NOW)
        .unwrap_err();
    assert!(
        matches!(err, Error::UnknownKey { key_id, .. } if key_id == stranger.key_id()),
        "{err:?}"
    );

    // Claim the trusted key id, keep the stranger's signature.
    let forged = rewrite_header(&envelope.bytes, |h| h.key_id = fx.key.key_id().0.0.to_vec());
    let err = verifier
        .verify(&forged, &node_scope(), &reader(), NOW)
        .unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err:?}");
    assert!(verifier.scope_mark(&node_scope()).unwrap().is_none());
}

// Goal: a tampered body is refused by its content hash; a body swapped
// together with a matching content hash is refused by the signature.
// Method: edit the body bytes; then also patch the header's hash.
#[test]
fn tampered_body_is_refused() {
    let fx = Fixture::new();
    let mut verifier = fx.verifier();
    let envelope = fx.seal(fx.draft(&node_scope(), 1, None));
    let mut decoded = pb::SignedEnvelope::decode(envelope.bytes.as_slice()).unwrap();
    decoded.body = b"grant everything".to_vec();
    let err = verifier
        .verify(&decoded.encode_to_vec(), &node_scope(), &reader(), NOW)
        .unwrap_err();
    assert!(matches!(err, Error::ContentHashMismatch { .. }), "{err:?}");

    let mut header = pb::EnvelopeHeader::decode(decoded.header.as_slice()).unwrap();
    header.content_hash = Digest::of(b"grant everything").0.to_vec();
    decoded.header = header.encode_to_vec();
    let err = verifier
        .verify(&decoded.encode_to_vec(), &node_scope(), &reader(), NOW)
        .unwrap_err();
    assert!(matches!(err, Error::BadSignature { .. }), "{err:?}");
}

// Goal: a tampered header (version, term, expiry or readers raised by an
// attacker) is refused by the signature. Method: rewrite each field.
#[test]
fn tampered_header_is_refused() {
    let fx = Fixture::new();
    let mut verifier = fx.verifier();
    let envelope = fx.seal(fx.draft(&node_scope(), 1, None));
    type HeaderEdit = Box<dyn Fn(&mut pb::EnvelopeHeader)>;
    let edits: Vec<HeaderEdit> = vec![
        Box::new(|h| h.authority_term = 9),
        Box::new(|h| h.expires_at_unix_ms += HOUR_MS),
        Box::new(|h| h.readers.push("all-nodes".to_string())),
        Box::new(|h| h.issued_at_unix_ms -= 1),
    ];
    for edit in edits {
        let forged = rewrite_header(&envelope.bytes, edit);
        let err = verifier
            .verify(&forged, &node_scope(), &reader(), NOW)
            .unwrap_err();
        assert!(matches!(err, Error::BadSignature { .. }), "{err:?}");
    }
    assert!(verifier.scope_mark(&node_scope()).unwrap().is_none());
}

// Goal (TUF mix-and-match): an envelope of another scope, another cluster,
// or one whose readers do not admit the reader is refused, even though
// each is validly signed. Method: ask for node/n1 but serve node/n2;
// serve another cluster's shard; serve role/relay to an entry-node.
#[test]
fn mix_of_scopes_clusters_and_readers_is_refused() {
    let fx = Fixture::new();
    let mut verifier = fx.verifier();
    let other_scope = Scope::Node(NodeId::new("n2").unwrap());
    let other = fx.seal(fx.draft(&other_scope, 1, None));
    let err = verifier
        .verify(&other.bytes, &node_scope(), &reader(), NOW)
        .unwrap_err();
    assert!(matches!(err, Error::ScopeMismatch { .. }), "{err:?}");

    let mut foreign = fx.draft(&node_scope(), 1, None);
    foreign.cluster_id = ClusterId::new("c2").unwrap();
    let foreign = fx.seal(foreign);
    let err = verifier
        .verify(&foreign.bytes, &node_scope(), &reader(), NOW)
        .unwrap_err();
    assert!(matches!(err, Error::WrongCluster { .. }), "{err:?}");

    let relay = Scope::Role(RoleName::new("relay").unwrap());
    let mut draft = fx.draft(&relay, 1, None);
    draft.readers = vec![ReaderSelector::Role(RoleName::new("relay").unwrap())];
    let relay_policy = fx.seal(draft);
    let err = verifier
        .verify(&relay_policy.bytes, &relay, &reader(), NOW)
        .unwrap_err();
    assert!(matches!(err, Error::ReaderNotAdmitted { .. }), "{err:?}");
    // A storage node holds it on behalf of its readers.
    let storage = Reader::StorageNode {
        node_id: NodeId::new("s1").unwrap(),
    };
    verifier
        .verify(&relay_policy.bytes, &relay, &storage, NOW)
        .unwrap();
}

// Goal: an envelope from a lower authority term (the fenced old side) is
// refused once a higher term was seen, across scopes. Method: accept term
// 2 on one scope, offer term 1 on another.
#[test]
fn stale_authority_term_is_refused() {
    let fx = Fixture::new();
    let mut verifier = fx.verifier();
    let mut newer = fx.draft(&node_scope(), 1, None);
    newer.authority_term = AuthorityTerm(2);
    verifier
        .verify(&fx.seal(newer).bytes, &node_scope(), &reader(), NOW)
        .unwrap();
    let revocations = Scope::TrustRevocations;
    let mut older = fx.draft(&revocations, 1, None);
    older.readers = vec![ReaderSelector::AllNodes];
    let err = verifier
        .verify(&fx.seal(older).bytes, &revocations, &reader(), NOW)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::StaleTerm {
                seen: AuthorityTerm(2),
                got: AuthorityTerm(1)
            }
        ),
        "{err:?}"
    );
    assert!(verifier.scope_mark(&revocations).unwrap().is_none());
}

// Goal (invariant 3): two different bodies for one (scope, version) are
// never both accepted, and a next version must chain to the accepted one.
// Method: accept v1, offer another v1; offer a v2 chained to another v1.
#[test]
fn forks_are_refused() {
    let fx = Fixture::new();
    let mut verifier = fx.verifier();
    let chain = fx.chain(&node_scope(), 1);
    verifier
        .verify(&chain[0].bytes, &node_scope(), &reader(), NOW)
        .unwrap();
    let mut twin = fx.draft(&node_scope(), 1, None);
    twin.body = b"another history".to_vec();
    let twin = fx.seal(twin);
    let err = verifier
        .verify(&twin.bytes, &node_scope(), &reader(), NOW)
        .unwrap_err();
    assert!(matches!(err, Error::Fork { .. }), "{err:?}");

    let orphan = fx.seal(fx.draft(&node_scope(), 2, Some(twin.header_hash)));
    let err = verifier
        .verify(&orphan.bytes, &node_scope(), &reader(), NOW)
        .unwrap_err();
    assert!(matches!(err, Error::Fork { .. }), "{err:?}");
}

// Goal: malformed and non-canonical encodings are refused with their own
// errors. Method: garbage bytes; a valid envelope with an unknown field
// appended; a header with an unsupported format.
#[test]
fn malformed_and_non_canonical_input_is_refused() {
    let fx = Fixture::new();
    let mut verifier = fx.verifier();
    let err = verifier
        .verify(b"\x0a\xff\xff\xff", &node_scope(), &reader(), NOW)
        .unwrap_err();
    assert!(matches!(err, Error::Malformed { .. }), "{err:?}");

    let envelope = fx.seal(fx.draft(&node_scope(), 1, None));
    let mut padded = envelope.bytes.clone();
    padded.extend_from_slice(&[0x78, 0x01]); // field 15, varint 1: unknown
    let err = verifier
        .verify(&padded, &node_scope(), &reader(), NOW)
        .unwrap_err();
    assert!(
        matches!(err, Error::NonCanonical { what: "envelope" }),
        "{err:?}"
    );

    let future = rewrite_header(&envelope.bytes, |h| h.format = 2);
    let err = verifier
        .verify(&future, &node_scope(), &reader(), NOW)
        .unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedFormat { got: 2, .. }),
        "{err:?}"
    );

    // A draft that no verifier would accept is refused at sealing time.
    let bad = ShardDraft {
        expires_at: NOW,
        ..fx.draft(&node_scope(), 1, None)
    };
    assert!(matches!(
        seal(bad, &fx.key, generation(1)),
        Err(Error::Malformed { .. })
    ));
}

// Goal: a verifier opened with a pin refuses a genesis root that does not
// match it (the agent's defence against a substituted control plane).
// Method: pin the hash of another cluster key's root.
#[test]
fn unpinned_trust_root_is_refused() {
    let fx = Fixture::new();
    let impostor_key = SnapshotSigner::generate().unwrap();
    let impostor = TrustRoot::genesis(&fx.cluster, &[&impostor_key], NOW).unwrap();
    let store = rap_core::marks::FileHighWaterStore::open(fx.dir.path()).unwrap();
    let err = rap_proto::envelope::Verifier::open(
        fx.cluster.clone(),
        impostor.bytes(),
        Some(fx.root.root_hash()),
        store,
        Default::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::TrustRootNotPinned { .. }), "{err:?}");
}

/// Decodes an envelope, edits its header, re-encodes, keeps the signature.
fn rewrite_header(bytes: &[u8], edit: impl Fn(&mut pb::EnvelopeHeader)) -> Vec<u8> {
    let mut envelope = pb::SignedEnvelope::decode(bytes).unwrap();
    let mut header = pb::EnvelopeHeader::decode(envelope.header.as_slice()).unwrap();
    edit(&mut header);
    envelope.header = header.encode_to_vec();
    envelope.encode_to_vec()
}
