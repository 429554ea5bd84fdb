//! `EnrollmentService`: join requests and status polls (no client
//! certificate yet), certificate renewal (mTLS with the current node
//! certificate).

use crate::audit::{self, RefusalSampler};
use crate::context::Context;
use crate::enrollment;
use rap_core::identity::PeerIdentity;
use rap_proto::pb;
use rap_proto::pb::enrollment_service_server::{EnrollmentService, EnrollmentServiceServer};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The `EnrollmentService` of one control plane. Its callers have no
/// principal: refusals are recorded with the peer's address
/// ([`audit::with_peer`]), so anonymous ones are sampled per source.
#[derive(Clone, Debug)]
pub struct EnrollmentApi {
    ctx: Context,
    refusals: Arc<RefusalSampler>,
}

impl EnrollmentApi {
    /// Serves `ctx`, with a refusal sampler of its own.
    pub fn new(ctx: Context) -> Self {
        EnrollmentApi {
            ctx,
            refusals: Arc::new(RefusalSampler::default()),
        }
    }

    /// Shares `sampler` (one per server process) for anonymous refusals.
    pub fn with_refusal_sampler(mut self, sampler: Arc<RefusalSampler>) -> Self {
        self.refusals = sampler;
        self
    }

    fn peer<T>(&self, request: &Request<T>) -> audit::Peer {
        audit::Peer {
            ip: request.remote_addr().map(|a| a.ip()),
            sampler: Arc::clone(&self.refusals),
        }
    }

    /// As a tonic service, with the control plane's message limits.
    pub fn into_service(self) -> EnrollmentServiceServer<Self> {
        EnrollmentServiceServer::new(self)
            .max_decoding_message_size(crate::limits::GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(crate::limits::GRPC_MESSAGE_BYTES_MAX)
    }
}

/// The identity, certificate serial (lowercase hex of the DER serial
/// bytes, as the issuer stores it) and public key of the client
/// certificate, if any.
pub fn peer_certificate<T>(request: &Request<T>) -> Option<enrollment::PeerCertificate> {
    let certs = request.peer_certs()?;
    let der = certs.first()?;
    let identity = PeerIdentity::from_cert_der(der.as_ref()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let server_names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => ip_text(bytes),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(enrollment::PeerCertificate {
        identity,
        serial: hex::encode(cert.raw_serial()),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        server_names,
    })
}

/// An IP address SAN's bytes as text (4 or 16 bytes).
fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

#[tonic::async_trait]
impl EnrollmentService for EnrollmentApi {
    async fn submit_join_request(
        &self,
        request: Request<pb::SubmitJoinRequestRequest>,
    ) -> Result<Response<pb::SubmitJoinRequestResponse>, Status> {
        audit::with_peer(
            self.peer(&request),
            enrollment::submit(&self.ctx, request.get_ref()),
        )
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn get_join_status(
        &self,
        request: Request<pb::GetJoinStatusRequest>,
    ) -> Result<Response<pb::GetJoinStatusResponse>, Status> {
        audit::with_peer(
            self.peer(&request),
            enrollment::status(&self.ctx, request.get_ref()),
        )
        .await
        .map(Response::new)
        .map_err(Status::from)
    }

    async fn renew_certificate(
        &self,
        request: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let peer = peer_certificate(&request);
        audit::with_peer(
            self.peer(&request),
            enrollment::renew(&self.ctx, peer, request.get_ref()),
        )
        .await
        .map(Response::new)
        .map_err(Status::from)
    }
}
