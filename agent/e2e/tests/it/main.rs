//! Integration tests of `rap-node-agent` against the real control plane.
#![allow(clippy::unwrap_used, dead_code, missing_docs)]

mod join;
mod liveness;
mod run;
