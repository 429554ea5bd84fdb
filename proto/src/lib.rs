//! `rap-proto`: the wire contracts of the RAP config/storage service.
//!
//! * [`pb`]: the protobuf messages and tonic services of package `rap.v1`
//!   (`EnrollmentService`, `AgentService`, `AdminService`,
//!   `AuthorityService`, `ShardService`, `RaftService`).
//! * [`ids`]: typed ids and counters (`ClusterId`, `NodeId`,
//!   `AuthorityTerm`, ...), validated at the edge.
//! * [`envelope`]: the signed, content-hashed, versioned snapshot shard
//!   envelope, trust roots with rotation, and the [`envelope::Verifier`]
//!   that refuses forged, tampered, stale, rolled-back and oversized shards.
//! * [`limits`]: every size and count limit, as named constants.
//! * [`orders`]: signed promotion and rejoin orders to storage nodes.
//! * [`revocations`]: the body of the `trust/revocations` shard.
//! * [`error`]: the crate's error type, with stable machine-readable codes.

pub mod envelope;
pub mod error;
pub mod ids;
pub mod limits;
pub mod orders;
pub mod proof;
pub mod revocations;
pub mod services;
pub mod shards;
pub mod time;

mod convert;

pub use error::{Error, Result};

/// Generated protobuf messages and tonic services of package `rap.v1`.
///
/// Field numbers are stable once used; the `.proto` files under
/// `proto/proto/rap/v1/` are the source of truth.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("rap.v1");

    /// The encoded `FileDescriptorSet` of every `.proto` file of package
    /// `rap.v1` (with their comments): what the servers' gRPC reflection
    /// serves. The schema only, never data.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("rap_v1_descriptor_set");
}
