//! `rap-core`: what every RAP program shares, below the authority group,
//! the control plane and the node agent.
//!
//! * [`identity`]: who a certificate names (cluster, kind, id).
//! * [`tls`]: certificate parameters, the cluster CA ([`tls::ClusterCa`]),
//!   reloadable mTLS identities, pinned peers, CA pinning for joiners.
//! * [`files`]: durable, bounded file reads and writes, the one durable
//!   atomic write and the one private-key mode check; [`marks`]: a durable
//!   file store of the envelope verifier's high-water marks.
//! * [`fence`]: the fencing token, as every crate handles it.
//! * [`cli_docs`]: every binary's `completions` and `man`, generated
//!   from its clap definition.
//! * [`codes`]: the registry of stable error codes matched across crates.
//! * [`limits`]: limits more than one crate enforces.
//! * [`process`]: runtime and shutdown of the server binaries;
//!   [`logging`]: their log output (text, or JSON lines with the
//!   process's cluster and node ids).
//! * [`error`]: this crate's error type.
//!
//! Nothing here links Raft or a database: the agent depends on this crate
//! and `rap-proto` only.

pub mod cli_docs;
pub mod codes;
pub mod error;
pub mod fence;
pub mod files;
pub mod identity;
pub mod limits;
pub mod logging;
pub mod marks;
pub mod process;
pub mod rng;
pub mod tls;

pub use error::{Error, Result};

/// What every binary's `--version` prints: the workspace version and the
/// git revision it was built from (`unknown` outside a git checkout
/// unless `RAP_GIT_REVISION` was set for the build).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("RAP_GIT_REVISION"),
    ")"
);
pub use fence::Fence;
