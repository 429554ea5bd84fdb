//! `rap-sim`: deterministic turmoil simulations and the invariant oracle
//!.
//!
//! The real authority code (`rap-authority`: openraft, redb storage, the
//! tonic transport and `AuthorityService`; in the shard scenarios also
//! `ShardService` under mutual TLS, a cache replica and the node agent's
//! reader) runs on simulated hosts under partitions, crashes, loss and
//! delay; every run writes an event log, and
//! the checkers judge it against the split-brain invariants. A run is a
//! function of its seed: every run prints it, `RAP_SIM_SEED=N` replays it.
//!
//! * [`harness`]: the turmoil simulation of one cluster and [`harness::run`].
//! * [`net`]: tonic over turmoil TCP (client connector, server incoming),
//!   and the product's TLS over it.
//! * [`faults`]: what can go wrong, and the link model the checkers use.
//! * [`clocks`]: the storage nodes' skewed wall clocks.
//! * [`forger`]: a non-member host forging higher-term Raft RPCs.
//! * [`shards`]: publication, the storage nodes' `ShardService` under
//!   mutual TLS, and node agents reading with the real agent reader.
//! * [`mutants`]: rules broken on purpose, which the oracle must catch.
//! * [`workload`]: the client's script (bootstrap, workers, convergence).
//! * [`truth`]: the control plane's fenced mutations, through the real
//!   `rap_controlplane::fencing::run`, over an in-memory source of truth.
//! * [`events`]: the event log.
//! * [`checkers`]: the invariants, checked over the log.
//! * [`scenarios`]: the seeded scenarios the tests sweep.
//! * [`seed`]: seeds, the harness's generator, sweeps and replay commands.
//! * [`chaos`]: long sweeps over the named scenarios (`scripts/chaos.sh`,
//!   the `rap-chaos` binary), with a summary and the traces of failures.
//!
//! The test binary is `tests/it/main.rs`; its `regressions` module pins
//! every seed that ever failed.

pub mod chaos;
pub mod checkers;
pub mod clocks;
pub mod disk;
pub mod echo;
pub mod events;
pub mod faults;
pub mod forger;
pub mod harness;
pub mod mutants;
pub mod net;
pub mod operator;
pub mod scenarios;
pub mod seed;
pub mod shards;
pub mod truth;
pub mod workload;

pub use checkers::{CheckConfig, Violation};
pub use events::{Event, EventLog};
pub use harness::{ClusterSpec, RunReport, Scenario, run};
pub use seed::sweep;
pub use workload::Workload;
