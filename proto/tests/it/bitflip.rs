//! Property: any single-bit change of a signed envelope is refused, and a
//! refusal records nothing.

use crate::fixture::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rap_proto::envelope::{ReaderSelector, Scope};
use rap_proto::ids::RoleName;
use std::cell::RefCell;

/// At least 10,000 cases, as the foundation issue asks.
const BITFLIP_CASES: u32 = 10_000;

// Goal: no single-bit change of a signed envelope gets through, wherever
// the bit is (framing, header, body, signature). Method: seal one envelope
// with every optional field set, then let proptest pick 10,000 bit
// positions; each flipped copy goes to a fresh verifier (no marks, so only
// integrity checks can refuse it) and must be refused; the scope's mark
// must still be empty afterwards. The unflipped envelope is accepted at
// the end, so the set-up itself is sound.
#[test]
fn any_single_bit_flip_is_refused() {
    let fx = Fixture::new();
    let scope = Scope::Role(RoleName::new("entry-node").unwrap());
    let mut draft = fx.draft(&scope, 7, Some(rap_proto::envelope::Digest::of(b"v6")));
    draft.readers = vec![
        ReaderSelector::Role(RoleName::new("entry-node").unwrap()),
        ReaderSelector::Node(n1()),
    ];
    draft.body = (0..512u32).flat_map(|i| i.to_le_bytes()).collect();
    let envelope = fx.seal(draft);
    let bits = envelope.bytes.len() * 8;

    let verifier = RefCell::new(fx.verifier());
    let cases_run = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases: BITFLIP_CASES,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(0..bits), |bit| {
            cases_run.set(cases_run.get() + 1);
            let mut flipped = envelope.bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            match verifier
                .borrow_mut()
                .verify(&flipped, &scope, &reader(), NOW)
            {
                Ok(accepted) => Err(TestCaseError::fail(format!(
                    "bit {bit} flipped and still accepted as version {}",
                    accepted.header.version
                ))),
                Err(_) => Ok(()),
            }
        })
        .unwrap();

    assert!(
        cases_run.get() >= BITFLIP_CASES,
        "ran {} cases",
        cases_run.get()
    );
    let mut verifier = verifier.into_inner();
    assert!(verifier.scope_mark(&scope).unwrap().is_none());
    verifier
        .verify(&envelope.bytes, &scope, &reader(), NOW)
        .unwrap();
}
