//! The workspace's test kit: every crate's integration tests and examples
//! that need a database, a control plane or an authority group use this
//! crate as a (dev-)dependency.
//!
//! * [`pg`]: a private, throw-away PostgreSQL server (`rap-pgtest`,
//!   re-exported): `initdb` + `pg_ctl` into a temp dir, unix socket only.
//! * [`platform`]: the control-plane test platform: a fresh migrated
//!   database, a keys directory, one cluster whose authority group is three
//!   in-process `rap-configstore` nodes over mTLS, the running control-plane
//!   server ([`platform::ControlPlane`]) and helpers such as
//!   [`platform::join_token`] and [`platform::enrol_storage`].
//! * [`cluster`]: an authority group of real `rap-configstore` processes
//!   on 127.0.0.1 ([`cluster::Cluster`]), with [`cluster::eventually`],
//!   [`cluster::metric_value`] and the [`cluster::HANG_GUARD`].
//! * [`browser`]: headless Chromium driven over the DevTools protocol
//!   (pipe transport), for the web console's browser tests.
//! * [`shards`]: a node agent's certificate and `ShardService` client
//!   towards one storage node, and the pinned channel under it
//!   ([`shards::storage_channel`]).
//! * [`probes`]: generic clients of the standard gRPC health and
//!   reflection services.
//!
//! # Finding the binaries
//!
//! The kit never looks for a binary itself: `env!("CARGO_BIN_EXE_<name>")`
//! exists only in the integration tests of the package that owns the
//! binary, and a binary found "next to the test executable" may be stale
//! or missing when only some packages were built. So the caller passes the
//! path in: a test uses its own `env!("CARGO_BIN_EXE_rap-configstore")`
//! for [`cluster::Cluster::new`] and `env!("CARGO_BIN_EXE_rapctl")` for
//! [`platform::ControlPlane::run_rapctl`]; that makes Cargo build exactly
//! the binary the test runs, also under `cargo test --workspace` in a
//! clean clone. Tests of a binary therefore live in the package that owns
//! it (`rapctl` for rapctl, `rap-controlplane-server` for
//! `rap-controlplane`, `rap-configstore` for its processes). Benchmarks
//! take the path as an argument.
//!
//! Test code: it panics (with a message) on any failure, like the tests
//! that call it.
#![allow(clippy::unwrap_used)]

pub mod browser;
pub mod cluster;
pub mod platform;
pub mod probes;
pub mod shards;

pub use rap_pgtest as pg;
