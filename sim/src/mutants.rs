//! Rules broken on purpose, to show that the oracle catches them (the
//! "teeth" of the simulation). A [`Mutant`] wraps a storage node's real
//! service, so the broken behaviour reaches the wire exactly as a bug in
//! that rule would, or (an agent's) takes away what the rule rests on
//! (its state directory); the product code itself has no switch. A sweep
//! with a mutant must fail within a few seeds (`tests/it/teeth.rs`).

use rap_authority::limits::{
    RAFT_RPC_BYTES_MAX, SHARD_REQUEST_BYTES_MAX, SHARD_RESPONSE_BYTES_MAX,
};
use rap_authority::shard::ShardApi;
use rap_authority::slot::NodeSlot;
use rap_core::codes::{self, error_detail};
use rap_proto::pb;
use rap_proto::pb::authority_service_server::{AuthorityService, AuthorityServiceServer};
use rap_proto::pb::raft_service_server::RaftService;
use rap_proto::pb::shard_service_server::{ShardService, ShardServiceServer};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::{Request, Response, Status};

/// Which rule a run breaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mutant {
    /// None: the real system.
    #[default]
    None,
    /// A node that has no quorum grants a fence anyway (its own count,
    /// in the term asked for) instead of refusing `NO_QUORUM`.
    GrantWithoutQuorum,
    /// A node believes an unproven higher authority term: a Raft RPC its
    /// term check refused with `UNPROVEN_TERM` is answered as accepted.
    BelieveUnprovenTerm,
    /// A node that knows it is fenced by a higher term grants a fence of
    /// its old term anyway instead of refusing `FENCED`.
    GrantWhenFenced,
    /// A storage node skips the readers check: a `GetShard` its
    /// `ShardService` refused with `NOT_A_READER` is served anyway.
    LeakToNonReaders,
    /// A node agent keeps nothing across a restart (its high-water marks
    /// and kept shards are gone), so it no longer refuses a rollback to a
    /// version older than one it accepted before.
    AgentForgetsState,
    /// A node agent loses its authority-term mark on every restart (its
    /// version marks and kept shards stay), so it no longer refuses an
    /// envelope of an older term than one it accepted before.
    AgentForgetsTerm,
    /// The control plane neither holds the authority row while it asks
    /// for a fence nor applies the conditional fence check: a mutation is
    /// applied with whatever fence it got, however late it commits. (With
    /// the row held, a correct group never hands it an out-of-order
    /// fence, so the check alone could not be caught without a second
    /// broken rule.)
    ControlPlaneUnchecked,
}

impl Mutant {
    /// Every mutant, for sweeps and the command line.
    pub const ALL: [Mutant; 7] = [
        Mutant::GrantWithoutQuorum,
        Mutant::BelieveUnprovenTerm,
        Mutant::GrantWhenFenced,
        Mutant::LeakToNonReaders,
        Mutant::AgentForgetsState,
        Mutant::AgentForgetsTerm,
        Mutant::ControlPlaneUnchecked,
    ];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::None => "none",
            Mutant::GrantWithoutQuorum => "grant-without-quorum",
            Mutant::BelieveUnprovenTerm => "believe-unproven-term",
            Mutant::GrantWhenFenced => "grant-when-fenced",
            Mutant::LeakToNonReaders => "leak-to-non-readers",
            Mutant::AgentForgetsState => "agent-forgets-state",
            Mutant::AgentForgetsTerm => "agent-forgets-term",
            Mutant::ControlPlaneUnchecked => "control-plane-unchecked",
        }
    }

    /// The mutant called `name`.
    pub fn by_name(name: &str) -> Option<Mutant> {
        [Mutant::None]
            .into_iter()
            .chain(Mutant::ALL)
            .find(|m| m.name() == name)
    }
}

/// `AuthorityService` that answers one refusal of `AcquireFence` with a
/// made-up fence: [`Mutant::GrantWithoutQuorum`] (`NO_QUORUM`) and
/// [`Mutant::GrantWhenFenced`] (`FENCED`).
pub struct GrantOnRefusal<S> {
    inner: S,
    refusal: &'static str,
    granted: Arc<AtomicU64>,
}

impl<S: AuthorityService> GrantOnRefusal<S> {
    /// Wraps `inner`, with the real service's message limits: a refusal
    /// with code `refusal` becomes a fence.
    pub fn service(inner: S, refusal: &'static str) -> AuthorityServiceServer<Self> {
        AuthorityServiceServer::new(GrantOnRefusal {
            inner,
            refusal,
            granted: Arc::new(AtomicU64::new(0)),
        })
        .max_decoding_message_size(RAFT_RPC_BYTES_MAX)
        .max_encoding_message_size(RAFT_RPC_BYTES_MAX)
    }
}

#[tonic::async_trait]
impl<S: AuthorityService> AuthorityService for GrantOnRefusal<S> {
    async fn acquire_fence(
        &self,
        request: Request<pb::AcquireFenceRequest>,
    ) -> Result<Response<pb::AcquireFenceResponse>, Status> {
        let asked = request.get_ref().clone();
        match self.inner.acquire_fence(request).await {
            Err(status) if error_detail(&status).is_some_and(|d| d.code == self.refusal) => {
                let seq = self.granted.fetch_add(1, Ordering::Relaxed) + 1;
                Ok(Response::new(pb::AcquireFenceResponse {
                    fence: Some(pb::FencingToken {
                        cluster_id: asked.cluster_id,
                        authority_term: asked.expected_term,
                        seq,
                        log_index: 0,
                    }),
                }))
            }
            other => other,
        }
    }

    async fn publish_shards(
        &self,
        request: Request<pb::PublishShardsRequest>,
    ) -> Result<Response<pb::PublishShardsResponse>, Status> {
        self.inner.publish_shards(request).await
    }

    async fn shard_heads(
        &self,
        request: Request<pb::ShardHeadsRequest>,
    ) -> Result<Response<pb::ShardHeadsResponse>, Status> {
        self.inner.shard_heads(request).await
    }

    async fn status(
        &self,
        request: Request<pb::AuthorityStatusRequest>,
    ) -> Result<Response<pb::AuthorityStatusResponse>, Status> {
        self.inner.status(request).await
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::PromoteResponse>, Status> {
        self.inner.promote(request).await
    }

    async fn rejoin(
        &self,
        request: Request<pb::RejoinRequest>,
    ) -> Result<Response<pb::RejoinResponse>, Status> {
        self.inner.rejoin(request).await
    }

    async fn bootstrap(
        &self,
        request: Request<pb::BootstrapGroupRequest>,
    ) -> Result<Response<pb::BootstrapGroupResponse>, Status> {
        self.inner.bootstrap(request).await
    }

    async fn add_voter(
        &self,
        request: Request<pb::AddVoterRequest>,
    ) -> Result<Response<pb::AuthorityStatusResponse>, Status> {
        self.inner.add_voter(request).await
    }

    async fn remove_voter(
        &self,
        request: Request<pb::RemoveVoterRequest>,
    ) -> Result<Response<pb::AuthorityStatusResponse>, Status> {
        self.inner.remove_voter(request).await
    }

    async fn prepare_join(
        &self,
        request: Request<pb::PrepareJoinRequest>,
    ) -> Result<Response<pb::PrepareJoinResponse>, Status> {
        self.inner.prepare_join(request).await
    }
}

/// `RaftService` with [`Mutant::BelieveUnprovenTerm`].
pub struct BelieveUnprovenTerm<S> {
    inner: S,
}

impl<S: RaftService> BelieveUnprovenTerm<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        BelieveUnprovenTerm { inner }
    }
}

/// An `UNPROVEN_TERM` refusal turned into an (empty) answer.
fn believed(
    result: Result<Response<pb::RaftResponse>, Status>,
) -> Result<Response<pb::RaftResponse>, Status> {
    match result {
        Err(status) if error_detail(&status).is_some_and(|d| d.code == codes::UNPROVEN_TERM) => {
            Ok(Response::new(pb::RaftResponse::default()))
        }
        other => other,
    }
}

#[tonic::async_trait]
impl<S: RaftService> RaftService for BelieveUnprovenTerm<S> {
    async fn append_entries(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftResponse>, Status> {
        believed(self.inner.append_entries(request).await)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftResponse>, Status> {
        believed(self.inner.vote(request).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftResponse>, Status> {
        believed(self.inner.install_snapshot(request).await)
    }
}

/// `ShardService` with [`Mutant::LeakToNonReaders`]: a `NOT_A_READER`
/// refusal of `GetShard` becomes the envelope the node holds.
pub struct LeakyReaders {
    inner: ShardApi,
    slot: Arc<NodeSlot>,
}

impl LeakyReaders {
    /// Wraps `inner`, which serves `slot`, with the real service's limits.
    pub fn service(inner: ShardApi, slot: Arc<NodeSlot>) -> ShardServiceServer<Self> {
        ShardServiceServer::new(LeakyReaders { inner, slot })
            .max_decoding_message_size(SHARD_REQUEST_BYTES_MAX)
            .max_encoding_message_size(SHARD_RESPONSE_BYTES_MAX)
    }
}

#[tonic::async_trait]
impl ShardService for LeakyReaders {
    async fn get_shard(
        &self,
        request: Request<pb::GetShardRequest>,
    ) -> Result<Response<pb::GetShardResponse>, Status> {
        let scope = request.get_ref().scope.clone();
        match self.inner.get_shard(request).await {
            Err(status) if error_detail(&status).is_some_and(|d| d.code == codes::NOT_A_READER) => {
                let node = self.slot.get();
                let record = node.state().shard(&scope).ok_or(status)?;
                Ok(Response::new(pb::GetShardResponse {
                    envelope: record.envelope.into_vec(),
                    served_by_node_id: node.options().node_id.to_string(),
                    staleness: None,
                    load: None,
                }))
            }
            other => other,
        }
    }

    type WatchShardsStream = <ShardApi as ShardService>::WatchShardsStream;

    async fn watch_shards(
        &self,
        request: Request<pb::WatchShardsRequest>,
    ) -> Result<Response<Self::WatchShardsStream>, Status> {
        self.inner.watch_shards(request).await
    }

    async fn list_own_scopes(
        &self,
        request: Request<pb::ListOwnScopesRequest>,
    ) -> Result<Response<pb::ListOwnScopesResponse>, Status> {
        self.inner.list_own_scopes(request).await
    }
}
