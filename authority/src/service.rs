//! `AuthorityService`: the gRPC face of an [`AuthorityNode`]. Followers
//! forward writes to the leader (one hop, marked with the
//! [`FORWARDED_HEADER`] metadata); every refusal is typed, counted in the
//! metrics and carries a `rap.v1.ErrorDetail`. Who may call which method
//! is decided before a handler runs, by the
//! [`AccessLayer`](crate::access::AccessLayer) the server stands behind.

pub use crate::access::FORWARDED_HEADER;
use crate::client::mark_forwarded;
use crate::convert::{member_of, voter_spec};
use crate::error::{Error, Result};
use crate::node::AuthorityNode;
use crate::slot::NodeSlot;
use crate::typ::{Member, raft_id_of};
use rap_core::Fence;
use rap_proto::ids::{AuthorityTerm, NodeId};
use rap_proto::pb;
use rap_proto::pb::authority_service_client::AuthorityServiceClient;
use rap_proto::pb::authority_service_server::{AuthorityService, AuthorityServiceServer};
use std::sync::Arc;
use std::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// The `AuthorityService` of one node.
#[derive(Clone, Debug)]
pub struct AuthorityApi {
    slot: Arc<NodeSlot>,
}

impl AuthorityApi {
    /// Serves `node` (promotion swaps it within its own slot).
    pub fn new(node: Arc<AuthorityNode>) -> Self {
        AuthorityApi {
            slot: NodeSlot::new(node),
        }
    }

    /// Serves whichever node `slot` holds.
    pub fn with_slot(slot: Arc<NodeSlot>) -> Self {
        AuthorityApi { slot }
    }

    fn node(&self) -> Arc<AuthorityNode> {
        self.slot.get()
    }

    /// The tonic service, with message limits.
    pub fn into_service(self) -> AuthorityServiceServer<Self> {
        AuthorityServiceServer::new(self)
            .max_decoding_message_size(crate::limits::RAFT_RPC_BYTES_MAX)
            .max_encoding_message_size(crate::limits::RAFT_RPC_BYTES_MAX)
    }

    fn check_cluster(&self, cluster_id: &str) -> Result<()> {
        let node = self.node();
        let ours = &node.options().cluster_id;
        if cluster_id != ours.as_str() {
            return Err(Error::WrongCluster {
                expected: ours.clone(),
                got: cluster_id.chars().take(80).collect(),
            });
        }
        Ok(())
    }

    /// Counts and logs a refusal, and turns it into a status.
    fn refuse(&self, method: &str, error: Error) -> Status {
        self.node().metrics().refused(error.code());
        let node = self.node();
        let options = node.options();
        tracing::debug!(
            cluster_id = %options.cluster_id,
            node_id = %options.node_id,
            method,
            code = error.code(),
            "refused: {error}"
        );
        error.into()
    }

    /// Runs `local`; if this node is not the leader and the request was not
    /// forwarded already, sends `forward` to the leader instead.
    async fn write<T, L, F, Fut>(
        &self,
        method: &'static str,
        forwarded: bool,
        local: L,
        forward: F,
    ) -> std::result::Result<T, Status>
    where
        L: std::future::Future<Output = Result<T>>,
        F: FnOnce(AuthorityServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Status>>,
    {
        let started = Instant::now();
        let result = match local.await {
            Err(Error::NotLeader { leader }) if !forwarded => match self.node().fresh_leader() {
                Some(member) => {
                    let client = self
                        .node()
                        .authority_client(&member)
                        .map_err(|e| self.refuse(method, e))?;
                    let budget = self.node().options().timing.write_budget();
                    match tokio::time::timeout(budget, forward(client)).await {
                        Ok(Err(hop)) if rap_core::codes::error_detail(&hop).is_none() => {
                            // The hop itself failed (leader died, connection
                            // cut). Without the leader, a node that reaches
                            // no quorum says NO_QUORUM (as any write in a
                            // minority); otherwise a typed, retryable
                            // NOT_LEADER while the others elect.
                            self.node()
                                .reachability()
                                .record_failure(raft_id_of(&member.node_id));
                            let status = self.node().status();
                            let error = if status.reachable_voters
                                < crate::partition::quorum(status.voters.len())
                            {
                                Error::NoQuorum {
                                    reachable_voters: status.reachable_voters as u32,
                                    total_voters: status.voters.len() as u32,
                                }
                            } else {
                                Error::NotLeader {
                                    leader: Some(format!(
                                        "{} (unreachable: {})",
                                        member.node_id,
                                        hop.message()
                                    )),
                                }
                            };
                            Err(self.refuse(method, error))
                        }
                        Ok(result) => result,
                        Err(_) => {
                            let status = self.node().status();
                            Err(self.refuse(
                                method,
                                Error::NoQuorum {
                                    reachable_voters: status.reachable_voters as u32,
                                    total_voters: status.voters.len() as u32,
                                },
                            ))
                        }
                    }
                }
                None => Err(self.refuse(method, Error::NotLeader { leader })),
            },
            Err(e) => Err(self.refuse(method, e)),
            Ok(value) => Ok(value),
        };
        self.node().metrics().observe(method, started.elapsed());
        result
    }
}

fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}

#[tonic::async_trait]
impl AuthorityService for AuthorityApi {
    async fn acquire_fence(
        &self,
        request: Request<pb::AcquireFenceRequest>,
    ) -> std::result::Result<Response<pb::AcquireFenceResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        self.check_cluster(&message.cluster_id)
            .map_err(|e| self.refuse("AcquireFence", e))?;
        if message.purpose.len() > crate::limits::FENCE_PURPOSE_BYTES_MAX {
            return Err(self.refuse(
                "AcquireFence",
                Error::Oversize {
                    what: "fence purpose",
                    limit: crate::limits::FENCE_PURPOSE_BYTES_MAX,
                    got: message.purpose.len(),
                },
            ));
        }
        let node = self.node();
        let forward_message = message.clone();
        let fence = self
            .write(
                "AcquireFence",
                forwarded,
                async move {
                    node.acquire_fence(&message.purpose, AuthorityTerm(message.expected_term))
                        .await
                        .map(|f| f.to_pb())
                },
                |mut client| async move {
                    client
                        .acquire_fence(mark_forwarded(forward_message))
                        .await
                        .and_then(|r| {
                            r.into_inner()
                                .fence
                                .ok_or_else(|| Status::internal("leader returned no fence"))
                        })
                },
            )
            .await?;
        Ok(Response::new(pb::AcquireFenceResponse {
            fence: Some(fence),
        }))
    }

    async fn publish_shards(
        &self,
        request: Request<pb::PublishShardsRequest>,
    ) -> std::result::Result<Response<pb::PublishShardsResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let fence = message
            .fence
            .as_ref()
            .ok_or_else(|| Error::InvalidRequest("publish without a fence".into()))
            .and_then(|f| Fence::from_pb(f).map_err(Error::from))
            .map_err(|e| self.refuse("PublishShards", e))?;
        self.check_cluster(fence.cluster_id.as_str())
            .map_err(|e| self.refuse("PublishShards", e))?;
        let total: usize = message.envelopes.iter().map(Vec::len).sum();
        if message.envelopes.len() > crate::limits::PUBLISH_ENVELOPES_MAX
            || total > crate::limits::PUBLISH_BYTES_MAX
        {
            return Err(self.refuse(
                "PublishShards",
                Error::Oversize {
                    what: "publication",
                    limit: crate::limits::PUBLISH_BYTES_MAX,
                    got: total,
                },
            ));
        }
        let node = self.node();
        let forward_message = message.clone();
        let published = self
            .write(
                "PublishShards",
                forwarded,
                async move {
                    node.publish(fence, message.envelopes).await.map(|shards| {
                        shards
                            .into_iter()
                            .map(|s| pb::PublishedShard {
                                scope: s.scope,
                                version: s.version,
                                content_hash: s.content_hash.to_vec(),
                                log_index: s.log_index,
                            })
                            .collect()
                    })
                },
                |mut client| async move {
                    client
                        .publish_shards(mark_forwarded(forward_message))
                        .await
                        .map(|r| r.into_inner().published)
                },
            )
            .await?;
        Ok(Response::new(pb::PublishShardsResponse { published }))
    }

    async fn shard_heads(
        &self,
        request: Request<pb::ShardHeadsRequest>,
    ) -> std::result::Result<Response<pb::ShardHeadsResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        self.check_cluster(&message.cluster_id)
            .map_err(|e| self.refuse("ShardHeads", e))?;
        let node = self.node();
        let forward_message = message.clone();
        let response = self
            .write(
                "ShardHeads",
                forwarded,
                async move {
                    node.shard_heads(&message.scopes, message.include_envelopes)
                        .await
                        .map(|(term, generation, heads)| pb::ShardHeadsResponse {
                            authority_term: term.0,
                            heads,
                            trust_generation: generation.0,
                        })
                },
                |mut client| async move {
                    client
                        .shard_heads(mark_forwarded(forward_message))
                        .await
                        .map(|r| r.into_inner())
                },
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn status(
        &self,
        request: Request<pb::AuthorityStatusRequest>,
    ) -> std::result::Result<Response<pb::AuthorityStatusResponse>, Status> {
        let message = request.into_inner();
        self.check_cluster(&message.cluster_id)
            .map_err(|e| self.refuse("Status", e))?;
        let status = self.node().status();
        let node = self.node();
        let options = node.options();
        Ok(Response::new(pb::AuthorityStatusResponse {
            cluster_id: options.cluster_id.to_string(),
            node_id: options.node_id.to_string(),
            leader_id: status.leader.unwrap_or_default(),
            raft_term: status.raft_term,
            authority_term: status.authority_term.0,
            applied_index: status.applied_index,
            last_fence_seq: status.last_fence_seq,
            partition_view: status.view.to_pb() as i32,
            voters: status
                .voters
                .iter()
                .map(|v| pb::VoterStatus {
                    node_id: v.member.node_id.clone(),
                    address: v.member.address.clone(),
                    domain: voter_spec(&v.member).domain,
                    reachable: v.reachable,
                    last_contact_age_ms: v
                        .last_contact_age
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                        .unwrap_or(0),
                    is_leader: v.is_leader,
                })
                .collect(),
        }))
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> std::result::Result<Response<pb::PromoteResponse>, Status> {
        let started = Instant::now();
        let message = request.into_inner();
        let outcome = self.slot.promote(&message).await;
        self.node().metrics().observe("Promote", started.elapsed());
        let outcome = outcome.map_err(|e| self.refuse("Promote", e))?;
        for (id, reason) in &outcome.not_added {
            tracing::warn!(survivor = %id, "promotion: survivor not added yet: {reason}");
        }
        let status = self.node().status();
        Ok(Response::new(pb::PromoteResponse {
            authority_term: outcome.authority_term.0,
            leader_id: status.leader.unwrap_or_default(),
            seeded_from_index: outcome.seeded_from_index,
            seeded_from_node_id: outcome.seeded_from_node_id,
        }))
    }

    async fn rejoin(
        &self,
        request: Request<pb::RejoinRequest>,
    ) -> std::result::Result<Response<pb::RejoinResponse>, Status> {
        let started = Instant::now();
        let message = request.into_inner();
        let term = self.slot.rejoin(&message).await;
        self.node().metrics().observe("Rejoin", started.elapsed());
        let term = term.map_err(|e| self.refuse("Rejoin", e))?;
        Ok(Response::new(pb::RejoinResponse {
            authority_term: term.0,
        }))
    }

    async fn bootstrap(
        &self,
        request: Request<pb::BootstrapGroupRequest>,
    ) -> std::result::Result<Response<pb::BootstrapGroupResponse>, Status> {
        let started = Instant::now();
        let message = request.into_inner();
        self.check_cluster(&message.cluster_id)
            .map_err(|e| self.refuse("Bootstrap", e))?;
        let result = if self.node().is_initialized() {
            // Either a repeated bootstrap, or a voter that won the first
            // election being asked by another to commit genesis.
            self.node()
                .complete_genesis(message.trust_root)
                .await
                .and_then(|()| {
                    Err(Error::Refused {
                        code: "ALREADY_INITIALIZED".into(),
                        message: "this node already belongs to a group".into(),
                    })
                })
        } else {
            let voters: Result<Vec<Member>> = message.voters.iter().map(member_of).collect();
            match voters {
                Ok(voters) => {
                    self.node()
                        .bootstrap(voters, message.trust_root, message.allow_single_voter)
                        .await
                }
                Err(e) => Err(e),
            }
        };
        self.node()
            .metrics()
            .observe("Bootstrap", started.elapsed());
        let (term, tolerance) = result.map_err(|e| self.refuse("Bootstrap", e))?;
        let status = self.node().status();
        Ok(Response::new(pb::BootstrapGroupResponse {
            authority_term: term.0,
            leader_id: status.leader.unwrap_or_default(),
            failure_tolerance: tolerance.to_string(),
        }))
    }

    async fn add_voter(
        &self,
        request: Request<pb::AddVoterRequest>,
    ) -> std::result::Result<Response<pb::AuthorityStatusResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        self.check_cluster(&message.cluster_id)
            .map_err(|e| self.refuse("AddVoter", e))?;
        let member = message
            .voter
            .as_ref()
            .ok_or_else(|| Error::InvalidRequest("add-voter without a voter".into()))
            .and_then(member_of)
            .map_err(|e| self.refuse("AddVoter", e))?;
        let node = self.node();
        let forward_message = message.clone();
        self.write(
            "AddVoter",
            forwarded,
            async move { node.add_voter(member).await },
            |mut client| async move {
                client
                    .add_voter(mark_forwarded(forward_message))
                    .await
                    .map(|_| ())
            },
        )
        .await?;
        self.status(Request::new(pb::AuthorityStatusRequest {
            cluster_id: message.cluster_id,
        }))
        .await
    }

    async fn remove_voter(
        &self,
        request: Request<pb::RemoveVoterRequest>,
    ) -> std::result::Result<Response<pb::AuthorityStatusResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        self.check_cluster(&message.cluster_id)
            .map_err(|e| self.refuse("RemoveVoter", e))?;
        let node_id = NodeId::new(message.node_id.as_str())
            .map_err(|e| self.refuse("RemoveVoter", e.into()))?;
        let node = self.node();
        let forward_message = message.clone();
        self.write(
            "RemoveVoter",
            forwarded,
            async move { node.remove_voter(&node_id).await },
            |mut client| async move {
                client
                    .remove_voter(mark_forwarded(forward_message))
                    .await
                    .map(|_| ())
            },
        )
        .await?;
        self.status(Request::new(pb::AuthorityStatusRequest {
            cluster_id: message.cluster_id,
        }))
        .await
    }

    async fn prepare_join(
        &self,
        request: Request<pb::PrepareJoinRequest>,
    ) -> std::result::Result<Response<pb::PrepareJoinResponse>, Status> {
        let message = request.into_inner();
        self.check_cluster(&message.cluster_id)
            .map_err(|e| self.refuse("PrepareJoin", e))?;
        if message.members.len() > crate::network::PEERS_MAX {
            return Err(self.refuse(
                "PrepareJoin",
                Error::Oversize {
                    what: "members",
                    limit: crate::network::PEERS_MAX,
                    got: message.members.len(),
                },
            ));
        }
        let members: Result<Vec<Member>> = message.members.iter().map(member_of).collect();
        let count = members
            .and_then(|members| self.node().prepare_join(&members))
            .map_err(|e| self.refuse("PrepareJoin", e))?;
        Ok(Response::new(pb::PrepareJoinResponse {
            members: u32::try_from(count).unwrap_or(u32::MAX),
        }))
    }
}
