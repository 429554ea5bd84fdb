//! `rap-authority`: the per-cluster openraft group (DESIGN.md §3, §5).
//!
//! This crate will hold the openraft type configuration, the redb log store
//! and state machine, the Raft transport over tonic, fencing-token grants,
//! the partition view and promotion. It is the only crate that grants
//! fencing tokens.
//!
//! Status: an empty boundary. Nothing here is implemented yet; the authority
//! group is the next issue after the foundation. The wire contracts it will
//! serve (`AuthorityService`, `RaftService`) already live in `rap-proto`.
