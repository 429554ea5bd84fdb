//! Integration tests of `rapctl`: the real binary, offline and against the
//! real control-plane server on the test platform (`rap_testkit`).
#![allow(clippy::unwrap_used, dead_code, missing_docs)]

mod audit;
mod caches;
mod cli;
mod principals;
mod promotion;
mod rapctl;

use rap_testkit::platform::{ControlPlane, Platform};
use std::path::Path;

/// The real rapctl against a running [`ControlPlane`].
trait Rapctl {
    /// Runs rapctl as the platform owner: (exit code, stdout, stderr).
    async fn rapctl(&self, p: &Platform, args: &[&str]) -> (i32, String, String);
    /// Runs rapctl with the API token `token`.
    async fn rapctl_as(&self, p: &Platform, token: &str, args: &[&str]) -> (i32, String, String);
}

impl Rapctl for ControlPlane {
    async fn rapctl(&self, p: &Platform, args: &[&str]) -> (i32, String, String) {
        self.rapctl_as(p, &p.owner_token, args).await
    }

    async fn rapctl_as(&self, p: &Platform, token: &str, args: &[&str]) -> (i32, String, String) {
        let rapctl = Path::new(env!("CARGO_BIN_EXE_rapctl"));
        self.run_rapctl(rapctl, p, token, args).await
    }
}
