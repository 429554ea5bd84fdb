//! The standard gRPC health and reflection services of the control plane
//! ([`rap_authority::probes`]): health follows the same readiness as
//! `/readyz` ([`crate::server::ready`]), reflection lists the control
//! plane's services.
//!
//! Each is served behind a [`ProbeGate`], which decides every call with
//! the access table as the control plane decides its other
//! certificate-authenticated RPCs
//! ([`rap_authority::access::decide_at_control_plane`]): health admits
//! every certificate kind of the cluster and callers without one (join
//! requests and admin calls reach this port without one too); reflection
//! the kinds that may call another RPC here (callers without a
//! certificate, node agents, storage nodes). A refusal is audited
//! (`grpc.health` or `grpc.reflection`, anonymous ones sampled per source
//! like every refusal) and answered `PERMISSION_DENIED` or
//! `UNAUTHENTICATED` with the control plane's error detail.

use crate::audit::{self, Action, RefusalSampler};
use crate::error::Error;
use rap_authority::access::{Caller, Rpc, decide_at_control_plane};
use sqlx::PgPool;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

/// The audit action of a refused health call.
pub const AUDIT_ACTION_HEALTH: &str = "grpc.health";
/// The audit action of a refused reflection call.
pub const AUDIT_ACTION_REFLECTION: &str = "grpc.reflection";

/// The services the control plane runs besides health and reflection
/// (their health is reported by name).
pub const CONTROL_PLANE_SERVICES: [&str; 3] = [
    rap_proto::pb::admin_service_server::SERVICE_NAME,
    rap_proto::pb::enrollment_service_server::SERVICE_NAME,
    rap_proto::pb::agent_service_server::SERVICE_NAME,
];

/// What a [`ProbeGate`] needs to audit its refusals.
#[derive(Clone, Debug)]
pub struct Refusals {
    /// Where refusals are written.
    pub pool: PgPool,
    /// The process's sampler of anonymous refusals.
    pub sampler: Arc<RefusalSampler>,
}

/// One health or reflection service behind the access table (see the
/// module docs).
#[derive(Clone, Debug)]
pub struct ProbeGate<S> {
    inner: S,
    refusals: Refusals,
}

impl<S> ProbeGate<S> {
    /// `inner` (a health or reflection service) behind the table.
    pub fn new(inner: S, refusals: Refusals) -> Self {
        ProbeGate { inner, refusals }
    }
}

impl<S: NamedService> NamedService for ProbeGate<S> {
    const NAME: &'static str = S::NAME;
}

/// Whether the table admits the call; else the refusal (as the control
/// plane's error) and its audit action.
fn admit(request: &http::Request<Body>) -> Result<(), Box<(Error, Action)>> {
    let path = request.uri().path();
    let action_name = if path.starts_with("/grpc.health.") {
        AUDIT_ACTION_HEALTH
    } else {
        AUDIT_ACTION_REFLECTION
    };
    let caller = Caller::of_request(request);
    let (actor, cluster_id) = match &caller {
        Ok(Caller::Certified(facts)) => (
            format!("{}:{}", facts.identity.kind, facts.identity.node_id),
            Some(facts.identity.cluster_id.to_string()),
        ),
        Ok(Caller::Anonymous) | Err(_) => (audit::ANONYMOUS.to_string(), None),
    };
    // The router hands a gate only its service's paths: a path the table
    // knows is one of the probe RPCs; another one (a method this server
    // does not have) is refused like any path outside the table.
    let decided = Rpc::of_path(path)
        .and_then(|rpc| caller.and_then(|caller| decide_at_control_plane(rpc, &caller)));
    decided.map_err(|refusal| {
        let error = match refusal {
            rap_authority::Error::Unauthenticated(message) => Error::Unauthenticated(message),
            other => Error::PermissionDenied(other.to_string()),
        };
        let action = Action::new(actor, action_name, cluster_id.as_deref(), path);
        Box::new((error, action))
    })
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tonic::codegen::Service<http::Request<Body>> for ProbeGate<S>
where
    S: tonic::codegen::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match admit(&request) {
            Ok(()) => {
                // The clone is ready only after poll_ready; swap so the
                // ready one serves this request.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(request).await })
            }
            Err(refused) => {
                let (error, action) = *refused;
                let peer = audit::Peer {
                    ip: request
                        .extensions()
                        .get::<tonic::transport::server::TlsConnectInfo<
                            tonic::transport::server::TcpConnectInfo,
                        >>()
                        .and_then(|info| info.get_ref().remote_addr())
                        .or_else(|| {
                            request
                                .extensions()
                                .get::<tonic::transport::server::TcpConnectInfo>()
                                .and_then(|info| info.remote_addr())
                        })
                        .map(|addr| addr.ip()),
                    sampler: Arc::clone(&self.refusals.sampler),
                };
                let pool = self.refusals.pool.clone();
                Box::pin(async move {
                    audit::with_peer(peer, audit::record_refusal(&pool, &action, &error)).await;
                    Ok(tonic::Status::from(error).into_http())
                })
            }
        }
    }
}
