//! The one client of a cluster's authority group: channels to a storage
//! node's `AuthorityService` ([`authority_client`]), requests relayed by a
//! member ([`mark_forwarded`]), fences and publications with their retry
//! rules ([`fence`]), and the group's lifecycle orders
//! ([`orders`]: bootstrap, promotion, rejoin, adding a voter). Storage
//! nodes (forwarding to the leader), `rap-configstore`, the control plane
//! and the simulation all reach the group through here.

pub mod fence;
pub mod orders;

pub use fence::{StoragePeer, acquire_fence, publish, shard_heads};

pub use crate::access::FORWARDED_HEADER;
use crate::error::Result;
use crate::network::{Connector, NetworkConfig};
use rap_core::tls::pin::ExpectedPeer;
use rap_proto::pb::authority_service_client::AuthorityServiceClient;
use tonic::Request;
use tonic::transport::Channel;

/// A client of the `AuthorityService` of storage node `expected` at
/// `address` (lazily connected, with the transport's keepalive, and under
/// mTLS pinned to `expected`).
pub fn authority_client(
    network: &NetworkConfig,
    address: &str,
    expected: &ExpectedPeer,
) -> Result<AuthorityServiceClient<Channel>> {
    authority_client_via(network, address, expected, None)
}

/// Like [`authority_client`], dialling through `connector` when given
/// (plaintext transports: the simulation).
pub fn authority_client_via(
    network: &NetworkConfig,
    address: &str,
    expected: &ExpectedPeer,
    connector: Option<&Connector>,
) -> Result<AuthorityServiceClient<Channel>> {
    let channel = crate::network::channel(network, address, expected, connector)?;
    Ok(AuthorityServiceClient::new(channel)
        .max_decoding_message_size(crate::limits::RAFT_RPC_BYTES_MAX)
        .max_encoding_message_size(crate::limits::RAFT_RPC_BYTES_MAX))
}

/// `message` as a request marked as relayed by a member
/// ([`FORWARDED_HEADER`]): the leader admits it from a member only so.
pub fn mark_forwarded<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        FORWARDED_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    request
}
