//! The node a storage-node process currently runs. Promotion and rejoin
//! replace it with a new incarnation on fresh storage at a new authority
//! term; the gRPC services look the node up per request, so they keep
//! serving across the swap.

use crate::network::codec;
use crate::network::server::RaftHandler;
use crate::node::AuthorityNode;
use rap_proto::ids::{ClusterId, NodeId};
use std::sync::{Arc, RwLock};

/// The current [`AuthorityNode`] of this process.
#[derive(Debug)]
pub struct NodeSlot {
    /// The cluster every incarnation serves.
    cluster_id: ClusterId,
    current: RwLock<Arc<AuthorityNode>>,
    /// Held while a promotion or rejoin replaces the node.
    pub(crate) reforming: tokio::sync::Mutex<()>,
}

impl NodeSlot {
    /// A slot holding `node`.
    pub fn new(node: Arc<AuthorityNode>) -> Arc<Self> {
        Arc::new(NodeSlot {
            cluster_id: node.options().cluster_id.clone(),
            current: RwLock::new(node),
            reforming: tokio::sync::Mutex::new(()),
        })
    }

    /// The cluster this slot's nodes serve.
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }

    /// The current node.
    pub fn get(&self) -> Arc<AuthorityNode> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the current node.
    pub(crate) fn replace(&self, node: Arc<AuthorityNode>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = node;
    }
}

/// Raft RPCs go to whichever node is current.
impl RaftHandler for Arc<NodeSlot> {
    async fn append_entries(&self, rpc: codec::AppendEntriesRequest) -> codec::AppendEntriesReply {
        let node = self.get();
        node.raft().append_entries(rpc).await
    }

    async fn vote(&self, rpc: codec::VoteRequest) -> codec::VoteReply {
        let node = self.get();
        node.raft().vote(rpc).await
    }

    async fn install_snapshot(
        &self,
        rpc: codec::InstallSnapshotRequest,
    ) -> codec::InstallSnapshotReply {
        let node = self.get();
        node.raft().install_snapshot(rpc).await
    }
}

/// What the access layer asks of a storage node about its group: its
/// members, the revoked certificates (`crate::admission`).
impl crate::access::GroupView for NodeSlot {
    fn cluster_id(&self) -> &ClusterId {
        self.cluster_id()
    }

    fn is_member(&self, id: &NodeId) -> bool {
        self.get().admits_peer(id)
    }

    fn is_revoked(&self, serial_hex: &str) -> bool {
        self.get().is_revoked(serial_hex)
    }

    fn node_id(&self) -> Option<NodeId> {
        Some(self.get().options().node_id.clone())
    }

    fn serves(&self) -> &'static [crate::access::Rpc] {
        &crate::access::Rpc::VOTER
    }
}
