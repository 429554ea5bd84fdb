//! Integration tests of `rapctl`: the real binary, offline and against the
//! real control-plane server on the test platform (`rap_testkit`).
#![allow(clippy::unwrap_used, dead_code, missing_docs)]

mod audit;
mod caches;
mod certs;
mod cli;
mod dev;
mod docs;
mod overview;
mod principals;
mod promotion;
mod rapctl;
mod totp;

use rap_testkit::platform::{ControlPlane, Platform};
use std::path::{Path, PathBuf};

/// The four binaries next to the test's rapctl, or `None` when only part
/// of the workspace was built (`cargo test -p rapctl`): the test then
/// says so and skips; `cargo test --workspace` (scripts/test.sh) builds
/// them all, and under CI a missing one fails.
pub fn bin_dir() -> Option<PathBuf> {
    let rapctl = Path::new(env!("CARGO_BIN_EXE_rapctl"));
    let dir = rapctl.parent()?.to_path_buf();
    let missing: Vec<&str> = ["rap-controlplane", "rap-configstore", "rap-node-agent"]
        .into_iter()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    match (missing.is_empty(), std::env::var_os("CI").is_some()) {
        (true, _) => Some(dir),
        (false, true) => panic!("missing binaries {missing:?}: run cargo test --workspace"),
        (false, false) => {
            eprintln!("SKIPPED: {missing:?} not built (cargo build --workspace first)");
            None
        }
    }
}

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

/// Creates organization `org` and an org admin in it through rapctl as
/// the owner; returns the admin's API token.
async fn org_admin_token(server: &ControlPlane, p: &Platform, org: &str) -> String {
    let (code, _, err) = server.rapctl(p, &["org", "create", org]).await;
    assert_eq!(code, 0, "{err}");
    let admin = format!("{org}-admin");
    let (code, out, err) = server
        .rapctl(
            p,
            &[
                "principal",
                "create",
                &admin,
                "--kind",
                "org-admin",
                "--org",
                org,
                "-o",
                "json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let created: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    created["raw_token"].as_str().unwrap().to_string()
}
