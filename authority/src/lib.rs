//! `rap-authority`: the per-cluster openraft group.
//!
//! One group per cluster runs on that cluster's storage nodes. It holds the
//! authority term, grants fencing tokens through committed entries,
//! verifies and stores signed snapshot shards, refuses writes fast in a
//! minority, and is re-formed from the best survivor on promotion. It is
//! the only crate that grants fencing tokens.
//!
//! * [`typ`]: the openraft type configuration.
//! * [`request`]: log entries and their results; [`state`]: the replicated
//!   state and its deterministic `apply`.
//! * [`store`]: redb log store and state machine.
//! * [`network`]: Raft RPCs over tonic with cluster/term headers (a
//!   higher term only with its signed order).
//! * [`access`]: the one table of caller kind × RPC and the layer that
//!   applies it to every storage-node request; [`admission`]: whom this
//!   node admits (its group's members, the peers it was told to expect)
//!   and the revoked certificates it refuses.
//! * [`probes`]: the standard gRPC health and reflection services every
//!   rap server runs (storage nodes, cache replicas, the control plane),
//!   health following the server's own readiness.
//! * Identities, certificates, TLS, files and the fence type come from
//!   `rap-core`, shared with the control plane and the agent.
//! * [`shard`]: `ShardService`, the node agents' reads of the shards the
//!   group holds, with the readers check of every scope in one place.
//! * [`limits`], [`error`].

pub mod access;
pub mod admission;
pub mod cache;
pub mod client;
pub mod convert;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod network;
pub mod node;
pub mod partition;
pub mod placement;
pub mod probes;
pub mod promotion;
pub mod replica;
pub mod request;
pub mod service;
pub mod shard;
pub mod slot;
pub mod state;
pub mod store;
pub mod typ;

pub use error::{Error, Result};
