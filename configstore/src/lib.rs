//! `rap-configstore`: the storage/config node.
//!
//! It hosts its cluster's authority group (`rap-authority`): it serves
//! `RaftService`, `AuthorityService` and `ShardService` (node agents'
//! shard reads) on one gRPC listener and
//! `/metrics`, `/healthz`, `/readyz` on an HTTP listener. It never talks to
//! PostgreSQL and never accepts writes from nodes.
//!
//! * [`config`]: the TOML configuration and its validation.
//! * [`server`]: start a node, serve it, shut it down.
//! * [`http`]: the metrics and health endpoints.
//!
//! Cache replicas (storage nodes serving shards without voting) arrive
//! later; until then every shard is served by a voter.

pub mod config;
pub mod enroll;
pub mod http;
pub mod renewal;
pub mod server;
