//! Duplicated and reordered Raft messages. TCP neither duplicates nor
//! reorders within a connection, but Raft sees both all the same: a
//! sender that timed out sends again on a new connection while the first
//! copy is still on its way, and a message held up in one connection
//! arrives after newer ones sent on another. An [`Echo`] in front of a
//! storage node's real `RaftService` hands it, besides every message as
//! it arrives, a copy of some of them again later (after newer ones): the
//! node must answer a stale or repeated `AppendEntries`, `Vote` or
//! `InstallSnapshot` without granting a second leader, losing an entry or
//! moving backwards. The copy's answer goes nowhere.

use crate::seed::SimRng;
use rap_authority::limits::RAFT_RPC_BYTES_MAX;
use rap_proto::pb;
use rap_proto::pb::raft_service_server::{RaftService, RaftServiceServer};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Most copies one node has in flight at once; past it no more are made.
pub const ECHOES_IN_FLIGHT_MAX: usize = 64;

/// How often and how late copies come.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EchoPlan {
    /// Chance that a message is delivered a second time.
    pub rate: f64,
    /// The copy arrives up to this long after the original.
    pub delay_max: Duration,
}

/// `RaftService` that repeats some messages later ([`EchoPlan`]).
pub struct Echo<S> {
    inner: Arc<S>,
    plan: EchoPlan,
    rng: Arc<Mutex<SimRng>>,
    in_flight: Arc<Mutex<usize>>,
}

impl<S: RaftService> Echo<S> {
    /// Wraps `inner`, with the real service's message limits; `rng` draws
    /// which messages are copied and when the copies arrive.
    pub fn service(inner: S, plan: EchoPlan, rng: SimRng) -> RaftServiceServer<Self> {
        RaftServiceServer::new(Echo {
            inner: Arc::new(inner),
            plan,
            rng: Arc::new(Mutex::new(rng)),
            in_flight: Arc::new(Mutex::new(0)),
        })
        .max_decoding_message_size(RAFT_RPC_BYTES_MAX)
        .max_encoding_message_size(RAFT_RPC_BYTES_MAX)
    }

    /// The delay of a copy of this message, if one is to be made.
    fn draw(&self) -> Option<Duration> {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        if !rng.chance(self.plan.rate) {
            return None;
        }
        let delay = rng.millis(Duration::from_millis(1), self.plan.delay_max);
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *in_flight >= ECHOES_IN_FLIGHT_MAX {
            return None;
        }
        *in_flight += 1;
        Some(delay)
    }

    /// Delivers a copy of `message` through `call` after a drawn delay.
    fn maybe_echo<F, Fut>(&self, message: &pb::RaftRequest, call: F)
    where
        F: FnOnce(Arc<S>, Request<pb::RaftRequest>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Response<pb::RaftResponse>, Status>> + Send,
    {
        let Some(delay) = self.draw() else {
            return;
        };
        let copy = message.clone();
        let inner = self.inner.clone();
        let in_flight = self.in_flight.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = call(inner, Request::new(copy)).await;
            *in_flight.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        });
    }
}

#[tonic::async_trait]
impl<S: RaftService> RaftService for Echo<S> {
    async fn append_entries(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftResponse>, Status> {
        self.maybe_echo(request.get_ref(), |inner, copy| async move {
            inner.append_entries(copy).await
        });
        self.inner.append_entries(request).await
    }

    async fn vote(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftResponse>, Status> {
        self.maybe_echo(request.get_ref(), |inner, copy| async move {
            inner.vote(copy).await
        });
        self.inner.vote(request).await
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftResponse>, Status> {
        self.maybe_echo(request.get_ref(), |inner, copy| async move {
            inner.install_snapshot(copy).await
        });
        self.inner.install_snapshot(request).await
    }
}
