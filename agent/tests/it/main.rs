//! Integration tests of `rap-node-agent` against the real control plane.
#![allow(clippy::unwrap_used, dead_code, missing_docs)]

mod join;
// The control plane's test platform, shared without copying (its lints are
// the control plane's business).
#[path = "../../../controlplane/tests/it/support.rs"]
#[allow(clippy::field_reassign_with_default)]
mod support;
