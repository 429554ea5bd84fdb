//! `rap-controlplane`: the control plane.
//!
//! PostgreSQL (sqlx) is the source of truth; this is the only crate with
//! SQL. Modules:
//! * [`db`]: the persistence layer: pool, embedded migrations
//!   (`migrations/`) and every SQL statement, one module per group of
//!   tables (its docs list what is stored where).
//! * [`error`], [`limits`]: typed refusals and every named limit.
//! * [`keys`]: per-cluster CA and snapshot-signing key files (0600, never in
//!   PostgreSQL), node certificate issuance.
//! * [`tls`]: the control plane's TLS listener (per-cluster server
//!   certificates by SNI, client certificates from any cluster CA).
//! * [`audit`], [`fencing`]: audit events and fenced mutations;
//!   [`truth`]: the source of truth they are checked against, as a trait
//!   (PostgreSQL here; in memory only inside the simulator).
//! * [`db::coordination`]: what several control plane processes on one
//!   PostgreSQL agree on through it (promotion lock, identity change
//!   notifications); nothing trust-related is held only in one process.
//! * [`auth`]: admin principals and bearer tokens; [`principals`]: their
//!   lifecycle (token list/create/revoke, principal disable/enable).
//! * services: [`clusters`], [`tokens`], [`enrollment`], [`nodes`],
//!   [`roles`], [`groups`], [`workloads`], [`heartbeats`], [`orgs`],
//!   [`caches`] (cache replicas, the cache policy, node locations).
//! * [`api`]: the gRPC services (`AdminService`, `EnrollmentService`,
//!   `AgentService`, and the standard health and reflection behind the
//!   access table, [`api::probes`]); [`server`]: the `rap-controlplane
//!   serve` process; [`metrics`]: its Prometheus registry.

pub mod api;
pub mod audit;
pub mod auth;
pub mod authority_ops;
pub mod caches;
pub mod certificates;
pub mod clusters;
pub mod console;
pub mod context;
pub mod db;
pub mod enrollment;
pub mod error;
pub mod fencing;
pub mod groups;
pub mod heartbeats;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod nodes;
pub mod orgs;
pub mod overview;
pub mod page;
pub mod principals;
pub mod roles;
pub mod secret;
pub mod server;
pub mod snapshots;
pub mod tls;
pub mod tokens;
pub mod totp;
pub mod truth;
pub mod watch;
pub mod workloads;

pub use error::{Error, Result};
