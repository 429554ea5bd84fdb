//! Integration tests of the signed snapshot envelope: one module per concern.

// Test helpers outside `#[test]` functions may unwrap: a failure there is a
// broken test set-up and should panic loudly.
#![allow(clippy::unwrap_used)]

mod attacks;
mod bitflip;
mod fixture;
