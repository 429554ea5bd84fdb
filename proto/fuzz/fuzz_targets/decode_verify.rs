//! Fuzz target: arbitrary bytes through `decode` and the full `Verifier`.
//! Nothing may panic, and nothing the fuzzer makes may be accepted: it
//! cannot forge an ed25519 signature under the fixture's key.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rap_proto::envelope::{
    Reader, Scope, SnapshotSigner, TrustRoot, Verifier, VerifierOptions, decode,
};
use rap_core::marks::FileHighWaterStore;
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::time::UnixMillis;
use std::sync::{Mutex, OnceLock};

struct Fixture {
    verifier: Mutex<Verifier<FileHighWaterStore>>,
    scope: Scope,
    reader: Reader,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let cluster = ClusterId::new("c1").expect("cluster id");
        let key = SnapshotSigner::generate().expect("key");
        let root = TrustRoot::genesis(&cluster, &[&key], UnixMillis(0)).expect("root");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileHighWaterStore::open(dir.path()).expect("store");
        let verifier = Verifier::open(cluster, root.bytes(), None, store, VerifierOptions::default())
            .expect("verifier");
        let node = NodeId::new("n1").expect("node id");
        Fixture {
            verifier: Mutex::new(verifier),
            scope: Scope::Node(node.clone()),
            reader: Reader::Node { node_id: node, roles: Vec::new(), orgs: Vec::new() },
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = decode(data);
    let fixture = fixture();
    let mut verifier = fixture.verifier.lock().expect("lock");
    let result = verifier.verify(data, &fixture.scope, &fixture.reader, UnixMillis::now());
    assert!(result.is_err(), "the fuzzer forged an accepted envelope");
});
