//! `rap-node-agent`: the node agent (DESIGN.md §6).
//!
//! It will enroll with a join token, keep node-local state in sled, send
//! heartbeats, read and verify its own shards from nearby storage nodes with
//! the `rap_proto::envelope::Verifier`, refuse rollback, and supervise only
//! assigned workloads.
//!
//! Status: an empty boundary; nothing here is implemented yet.
