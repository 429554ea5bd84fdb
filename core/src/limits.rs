//! Limits that more than one crate enforces (a client checks before it
//! sends, the server checks again), named once.

/// The prefix of a join token: `rapjt.<id>.<secret>`.
pub const JOIN_TOKEN_PREFIX: &str = "rapjt";

/// Most capabilities a node reports (enrollment and heartbeats).
pub const CAPABILITIES_MAX: usize = 64;

/// Longest capability name (a DNS label).
pub const CAPABILITY_NAME_BYTES_MAX: usize = 63;

/// Longest free-text detail of one capability.
pub const CAPABILITY_DETAIL_BYTES_MAX: usize = 256;
