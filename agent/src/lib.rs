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
//! For the running agent: [`heartbeat`] (liveness, health and what the
//! node holds, reported to the control plane over mTLS) and [`renewal`]
//! (the node certificate renewed with a new key before it expires), both
//! over the link of [`control`].
//!
//! Still to come: node-local state in sled, reading and
//! verifying its own shards from nearby storage nodes with the
//! `rap_proto::envelope::Verifier`, refusing rollback, and supervising
//! only assigned workloads.

pub mod cli;
pub mod control;
pub mod enroll;
pub mod heartbeat;
pub mod renewal;
pub mod state;
