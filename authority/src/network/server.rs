//! The server half: `rap.v1.RaftService` over a Raft handle.
//!
//! Every call is admitted first ([`RaftServer::admit`]): under mTLS the
//! [`AccessLayer`](crate::access::AccessLayer) in front of the server has
//! admitted the caller (a storage node of our cluster that is a member of
//! our group, certificate not revoked) and the header must name that same
//! node; then the [`TermGuard`] checks the header's cluster and term (a
//! higher term only with its signed order). Only then is the payload
//! decoded and handed to Raft; the reply (`Result<Resp, RaftError>`) is
//! encoded back. A refusal is the crate [`Error`] as a `tonic::Status`
//! with its `ErrorDetail` (and, for term refusals, the order proving the
//! higher term).

use super::codec::{self, AppendEntriesReply, InstallSnapshotReply, SnapshotChunk, VoteReply};
use super::{Reachability, TermGuard};
use crate::error::Error;
use crate::limits::RAFT_RPC_BYTES_MAX;
use crate::typ::Raft;
use openraft::raft::AppendEntriesResponse;
use rap_proto::ids::NodeId;
use rap_proto::pb::raft_service_server::{RaftService, RaftServiceServer};
use rap_proto::pb::{RaftRequest, RaftResponse};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// What the server hands admitted requests to: the Raft handle in
/// production; a stub in tests that must not need a store.
pub trait RaftHandler: Send + Sync + 'static {
    /// `Raft::append_entries`.
    fn append_entries(
        &self,
        rpc: codec::AppendEntriesRequest,
    ) -> impl Future<Output = AppendEntriesReply> + Send;

    /// `Raft::vote`.
    fn vote(&self, rpc: codec::VoteRequest) -> impl Future<Output = VoteReply> + Send;

    /// `Raft::install_snapshot` (one chunk).
    fn install_snapshot(
        &self,
        rpc: codec::InstallSnapshotRequest,
    ) -> impl Future<Output = InstallSnapshotReply> + Send;
}

impl RaftHandler for Raft {
    async fn append_entries(&self, rpc: codec::AppendEntriesRequest) -> AppendEntriesReply {
        Raft::append_entries(self, rpc).await
    }

    async fn vote(&self, rpc: codec::VoteRequest) -> VoteReply {
        Raft::vote(self, rpc).await
    }

    async fn install_snapshot(&self, rpc: codec::InstallSnapshotRequest) -> InstallSnapshotReply {
        Raft::install_snapshot(self, rpc).await
    }
}

/// How the server knows who is calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerAuth {
    /// No TLS (unit tests, the simulation): the header's sender is taken
    /// as is.
    Plaintext,
    /// mTLS: the [`AccessLayer`](crate::access::AccessLayer) admitted the
    /// caller from its client certificate, and the header's
    /// `from_node_id` must be that caller.
    MutualTls,
}

/// `rap.v1.RaftService` for one node of one group.
pub struct RaftServer<H = Raft> {
    handler: H,
    guard: Arc<TermGuard>,
    reachability: Arc<Reachability>,
    peer_auth: PeerAuth,
    metrics: Option<Arc<crate::metrics::AuthorityMetrics>>,
}

impl<H> fmt::Debug for RaftServer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftServer")
            .field("guard", &self.guard)
            .field("peer_auth", &self.peer_auth)
            .finish_non_exhaustive()
    }
}

impl<H: RaftHandler> RaftServer<H> {
    /// A server handing admitted requests to `handler`, checking headers
    /// with `guard`, recording leader contact in `reachability`.
    pub fn new(
        handler: H,
        guard: Arc<TermGuard>,
        reachability: Arc<Reachability>,
        peer_auth: PeerAuth,
    ) -> Self {
        RaftServer {
            handler,
            guard,
            reachability,
            peer_auth,
            metrics: None,
        }
    }

    /// Counts refusals (by code) and RPC latency (by method) in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::AuthorityMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn refuse_counted(&self, rpc: &'static str, error: Error) -> Status {
        if let Some(metrics) = &self.metrics {
            metrics.refused(error.code());
        }
        log_refusal(rpc, &error);
        self.guard.refusal_status(error)
    }

    /// The tonic service, with message sizes capped at
    /// [`RAFT_RPC_BYTES_MAX`] both ways.
    pub fn into_service(self) -> RaftServiceServer<Self> {
        RaftServiceServer::new(self)
            .max_decoding_message_size(RAFT_RPC_BYTES_MAX)
            .max_encoding_message_size(RAFT_RPC_BYTES_MAX)
    }

    /// Decides whether a request may reach Raft, before its payload is
    /// decoded: under [`PeerAuth::MutualTls`] the caller admitted by the
    /// access layer must be the node the header names; then the header
    /// ([`TermGuard::check`]). Returns the sender.
    pub fn admit(&self, request: &Request<RaftRequest>) -> Result<NodeId, Error> {
        let header = request.get_ref().header.as_ref();
        if self.peer_auth == PeerAuth::MutualTls {
            let admitted = crate::access::admitted(request).ok_or_else(|| {
                Error::Unauthenticated(
                    "no admitted caller: RaftService must be served behind the access layer".into(),
                )
            })?;
            if let Some(message) = &admitted.refusal_after_term_check {
                return Err(self.guard.stale_sender(header).unwrap_or_else(|| {
                    Error::PermissionDenied {
                        code: crate::access::NOT_A_MEMBER,
                        message: message.clone(),
                    }
                }));
            }
            let caller = admitted.caller.certificate().ok_or_else(|| {
                Error::Unauthenticated("RaftService needs a client certificate".into())
            })?;
            let claimed = header.map(|h| h.from_node_id.as_str()).unwrap_or_default();
            if caller.identity.node_id.as_str() != claimed {
                return Err(Error::PermissionDenied {
                    code: crate::access::CALLER_NOT_ADMITTED,
                    message: format!(
                        "client certificate is {}, but the request claims node {:?}",
                        caller.identity,
                        claimed.chars().take(64).collect::<String>()
                    ),
                });
            }
        }
        self.guard.check(header)
    }

    /// Admit, decode, call, encode: the shape of every RPC.
    async fn serve<Req, Reply, Call, Fut>(
        &self,
        rpc: &'static str,
        request: Request<RaftRequest>,
        call: Call,
    ) -> Result<Response<RaftResponse>, Status>
    where
        Req: DeserializeOwned,
        Reply: Serialize,
        Call: FnOnce(Req) -> Fut,
        Fut: Future<Output = Reply>,
    {
        let span = tracing::debug_span!(
            "raft_rpc_in",
            rpc,
            cluster_id = %self.guard.cluster_id(),
            node_id = %self.guard.node_id(),
            from = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let result = async {
            let from = self
                .admit(&request)
                .map_err(|error| self.refuse_counted(rpc, error))?;
            tracing::Span::current().record("from", tracing::field::display(&from));
            let rpc_request: Req = codec::decode(rpc, &request.get_ref().payload)
                .map_err(|error| self.refuse_counted(rpc, error))?;
            let reply = call(rpc_request).await;
            let payload = codec::encode("raft reply", &reply).map_err(|error| {
                tracing::error!(%error, "cannot encode raft reply");
                Status::from(error)
            })?;
            Ok(Response::new(RaftResponse { payload }))
        }
        .instrument(span)
        .await;
        if let Some(metrics) = &self.metrics {
            metrics.observe(rpc, started.elapsed());
        }
        result
    }
}

/// Logs a refusal at the level it deserves. Term refusals repeat every
/// heartbeat of a fenced peer and the fencing itself (or the unproven
/// claim) is logged by the guard, so they are DEBUG.
fn log_refusal(rpc: &'static str, error: &Error) {
    match error {
        Error::StaleTerm { .. } | Error::Fenced { .. } | Error::UnprovenTerm { .. } => {
            tracing::debug!(rpc, %error, "raft rpc refused");
        }
        _ => tracing::warn!(rpc, %error, "raft rpc refused"),
    }
}

#[tonic::async_trait]
impl<H: RaftHandler> RaftService for RaftServer<H> {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftResponse>, Status> {
        self.serve("append entries", request, |rpc| async {
            let reply = self.handler.append_entries(rpc).await;
            // A leader of our authority term (the header said so) reached
            // us and Raft accepted its vote.
            if matches!(
                reply,
                Ok(AppendEntriesResponse::Success
                    | AppendEntriesResponse::PartialSuccess(_)
                    | AppendEntriesResponse::Conflict)
            ) {
                self.reachability.record_leader_contact();
            }
            reply
        })
        .await
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftResponse>, Status> {
        self.serve("vote", request, |rpc: codec::VoteRequest| async {
            let candidate_log = rpc.last_log_id;
            let candidate_term = rpc.vote.leader_id().get_term();
            let reply = self.handler.vote(rpc).await;
            if let Ok(answer) = &reply
                && !answer.vote_granted
                && answer.last_log_id > candidate_log
            {
                self.reachability.record_refused_shorter_log(candidate_term);
            }
            reply
        })
        .await
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftResponse>, Status> {
        self.serve("snapshot chunk", request, |chunk: SnapshotChunk| {
            self.handler.install_snapshot(chunk.into())
        })
        .await
    }
}
