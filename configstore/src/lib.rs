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
//! * [`cache`]: the same binary as a cache replica (`[cache]` in the
//!   config, or `serve --cache-voter .. --cache-trust-root ..`): no Raft,
//!   only the shards its placement assigns it, filled from the voters and
//!   served to node agents.
//! * [`http`]: the metrics and health endpoints.
//! * [`cli`]: the `rap-configstore` command line.

pub mod cache;
pub mod cli;
pub mod config;
pub mod enroll;
pub mod http;
pub mod renewal;
pub mod server;
