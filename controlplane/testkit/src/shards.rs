//! Node agents' side of `ShardService`, for the tests and benchmarks that
//! read shards from storage nodes: a node certificate from the cluster CA
//! ([`node_cert`]) and a client presenting it, pinned to one storage
//! node's identity ([`shard_client`]), both the way `rap-node-agent`
//! connects (mTLS, the cluster CA trusted, the storage node's id expected).

use rap_core::identity::PeerIdentity;
use rap_core::tls::live::LiveIdentity;
use rap_core::tls::pin::{ExpectedPeer, PeerTls};
use rap_core::tls::{ClusterCa, NODE_CERT_VALIDITY_DEFAULT, TlsFiles};
use rap_proto::ids::NodeId;
use rap_proto::pb::shard_service_client::ShardServiceClient;
use std::path::Path;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// How long a shard client waits for its TCP connection.
pub const SHARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A node agent's certificate for node `id` of `ca`'s cluster (a fresh
/// key, valid for the default node validity), written into `dir`.
pub fn node_cert(ca: &ClusterCa, dir: &Path, id: &str) -> TlsFiles {
    let identity = PeerIdentity::node(ca.cluster_id().clone(), NodeId::new(id).expect("node id"))
        .expect("node identity");
    ca.issue(dir, &identity, NODE_CERT_VALIDITY_DEFAULT, &[])
        .expect("issue a node certificate")
}

/// A `ShardService` client of the storage node `node_id` listening on
/// `address`, presenting `files` and accepting only that node's storage
/// certificate from the cluster CA. Its own channel, connected lazily.
pub fn shard_client(files: &TlsFiles, address: &str, node_id: &str) -> ShardServiceClient<Channel> {
    ShardServiceClient::new(storage_channel(files, address, node_id))
}

/// A channel to the storage node `node_id` listening on `address`,
/// presenting `files` and accepting only that node's storage certificate
/// from the cluster CA; connected lazily.
pub fn storage_channel(files: &TlsFiles, address: &str, node_id: &str) -> Channel {
    let tls = PeerTls::new(LiveIdentity::load(files.clone()).expect("identity")).expect("tls");
    Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect_timeout(SHARD_CONNECT_TIMEOUT)
        .connect_with_connector_lazy(
            tls.connector(&ExpectedPeer::storage_named(node_id))
                .expect("connector"),
        )
}
