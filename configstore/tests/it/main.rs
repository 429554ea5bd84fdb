//! Multi-process tests of `rap-configstore`: the real binary
//! runs as child processes on 127.0.0.1 with mTLS, is killed with
//! `kill -9` and restarted; the tests talk to it over gRPC and HTTP like
//! the control plane and an operator would.
//!
//! * `rap_testkit::cluster`: the harness (processes, CA, trust root, clients).
//! * [`fences`]: fences under concurrency, leader failover and full restart.
//! * [`minority`]: kill 2 of 3, fast `NO_QUORUM`, `minority` view.
//! * [`bad_input`]: typed refusals over the wire, counted in `/metrics`.
//! * [`bootstrap`]: bootstrap refuses too few voters, saying what to do.
//! * [`promotion`]: promotion after loss of the majority, old side fenced, rejoin.
//! * [`caches`]: cache replicas fill themselves from the voters, serve
//!   exactly their placement, and outlive a lost domain and lost voters.
//! * [`shards`]: `ShardService` reads by node agents: the readers check,
//!   caller kinds, revocation, watches across restarts and leader changes.
//! * [`probes`]: the standard gRPC health (following `/readyz`) and
//!   reflection services, with generic clients, behind the access table.
//! * [`trust_boundary`]: nodes enrolled through the real control plane:
//!   wrong callers refused, no impersonation, revocation followed,
//!   certificates renewed without a restart.
//!
//! The tests run one at a time (each holds a whole cluster); every wait
//! has a hang guard, and no test asserts how fast anything is: the figures
//! are printed by `scripts/bench-authority.sh`.

mod bad_input;
mod bootstrap;
mod caches;
mod fences;
mod minority;
mod probes;
mod promotion;
mod shards;
mod trust_boundary;

use std::path::Path;

/// The binary under test.
fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rap-configstore"))
}
