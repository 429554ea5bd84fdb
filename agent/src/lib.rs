//! `rap-node-agent`: the node agent.
//!
//! Implemented so far: enrollment ([`enroll`]), the first thing an
//! operator runs on a new host:
//!
//! ```text
//! rap-node-agent join --server <host:port> --cluster <cluster-id> \
//!     --token rapjt.<id>.<secret> --ca-fingerprint <64 hex>
//! ```
//!
//! It pins the cluster CA by fingerprint (`rap_core::tls::ca_pin`,
//! shared with `rap-configstore join`), generates the node key
//! on the node, submits a join request with proof of possession, polls
//! until a platform admin approves, and stores identity, certificate
//! chain, CA, trust root and bootstrap storage endpoints under the state
//! directory ([`state`]).
//!
//! `rap-node-agent run` ([`run`]) then keeps the node's scopes current:
//! it reads them from the best ranked storage node (its own zone, a cache
//! replica placed for it, the fastest), verifies every envelope with the
//! `rap_proto::envelope::Verifier` whatever node served it ([`reads`]),
//! refuses rollback across restarts (fsynced high-water marks), fails over
//! on error, stall or a refused envelope, watches for new versions, and
//! keeps running on its last verified state when no storage node serves
//! (degraded). `rap-node-agent status` prints what it knows. It also runs
//! [`heartbeat`] (liveness, health and what the node holds, reported to
//! the control plane over mTLS) and [`renewal`] (the node certificate
//! renewed with a new key before it expires), both over the link of
//! [`control`].
//!
//! [`workloads`] runs exactly the workloads the verified node shard asks
//! for and whose role it assigns (the built-in `synthetic-echo`; every
//! other adapter reports `degraded`, never `running`).
//!
//! What `run` keeps lives in sled ([`store`]); the high-water marks stay in
//! fsynced files.

pub mod cli;
pub mod control;
pub mod enroll;
pub mod heartbeat;
pub mod reads;
pub mod renewal;
pub mod run;
pub mod state;
pub mod store;
pub mod workloads;
