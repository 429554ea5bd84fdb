//! Integration tests of the `rap-controlplane` binary on a private
//! PostgreSQL (`rap_testkit`).
#![allow(clippy::unwrap_used, dead_code, missing_docs)]

mod cli;
mod multi;
