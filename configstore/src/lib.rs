//! `rap-configstore`: the storage/config node.
//!
//! It hosts its cluster's authority group (`rap-authority`): it serves
//! `RaftService` and `AuthorityService` on one gRPC listener and
//! `/metrics`, `/healthz`, `/readyz` on an HTTP listener. It never talks to
//! PostgreSQL and never accepts writes from nodes.
//!
//! * [`config`]: the TOML configuration and its validation.
//! * [`server`]: start a node, serve it, shut it down.
//! * [`http`]: the metrics and health endpoints.
//!
//! Shard reads for agents (`ShardService`) and cache replicas arrive with
//! the agent issue.

pub mod config;
pub mod enroll;
pub mod http;
pub mod renewal;
pub mod server;
