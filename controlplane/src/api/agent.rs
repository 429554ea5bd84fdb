//! `AgentService`: heartbeats from node agents over mTLS.
//!
//! The caller is the first certificate of its TLS chain (rustls verified
//! the chain during the handshake): its URI SAN
//! `rap://cluster/<c>/node/<n>` must name the cluster and node the
//! heartbeat claims ([`authenticate`]), and its serial and public key must
//! be those of the ACTIVE `node_identities` row of that node
//! ([`AgentApi::check_identity`]; answers are cached per serial for
//! [`IDENTITY_CACHE_TTL`], but used only while this process's identity
//! listener hears every change ([`crate::db::coordination`]): a revocation or
//! rotation through any control plane process drops the answer here too,
//! and [`AgentApi::invalidate_serial`] drops one at once). The public key
//! matters: the TLS listener accepts client certificates of ANY registered
//! cluster CA, and serials are not secret, so only the key (whose
//! possession the handshake proved) binds the caller to the node enrolled
//! in *this* cluster. The heartbeat is then
//! validated, admitted by its node's own rate limit (`RATE_LIMITED`,
//! `RESOURCE_EXHAUSTED` with a `retry-after-ms` hint, never queued when
//! over it) and written through the [`Heartbeats`] batcher; the call
//! returns once its batch committed, so an acknowledged heartbeat is
//! durable.
//!
//! Certificate serials are stored and compared as
//! [`certificate_serial`]: lowercase hex of the DER INTEGER content bytes
//! (`hex::encode(cert.raw_serial())`, a leading `00` kept when the DER
//! encoding has it).

use crate::db::coordination::{IdentityCache, IdentityWatch};
use crate::error::{Error, Result};
use crate::heartbeats::{
    HEARTBEAT_BYTES_MAX, Heartbeat, Heartbeats, is_overloaded, is_rate_limited, now_unix_ms,
};
use crate::limits::HEARTBEAT_INTERVAL_DEFAULT;
use rap_authority::access::Rpc;
use rap_core::identity::PeerIdentity;
use rap_proto::pb::agent_service_server::{AgentService, AgentServiceServer};
use rap_proto::pb::{HeartbeatRequest, HeartbeatResponse};
use sqlx::PgPool;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

/// How long an identity answer (active, revoked, unknown) is reused for a
/// certificate serial. Agents heartbeat every
/// [`HEARTBEAT_INTERVAL_DEFAULT`], so a TTL of a few intervals saves most
/// lookups. Revocations do not wait for it: the revoking process drops the
/// answer through [`AgentApi::invalidate_serial`], every other through its
/// identity listener, and no answer is used while the listener is not
/// current ([`crate::db::coordination::IDENTITY_NOTICE_MAX`]).
pub const IDENTITY_CACHE_TTL: Duration = Duration::from_secs(30);
/// Most cached identity answers; beyond it expired ones are dropped, and
/// if that is not enough, all.
pub const IDENTITY_CACHE_ENTRIES_MAX: usize = 100_000;
/// How much of an untrusted id is quoted in an error or a log line.
pub const QUOTED_ID_CHARS_MAX: usize = 64;

/// The next interval agents are asked to heartbeat at, in milliseconds.
const NEXT_INTERVAL_MS: u32 = {
    let ms = HEARTBEAT_INTERVAL_DEFAULT.as_millis();
    assert!(ms <= u32::MAX as u128);
    ms as u32
};

/// The caller as its client certificate names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallerIdentity {
    /// Cluster and node of the certificate's URI SAN.
    pub identity: PeerIdentity,
    /// The certificate serial ([`certificate_serial`] format).
    pub serial: String,
    /// The certificate's subject public key (raw; 32 bytes for ed25519).
    pub public_key: Vec<u8>,
}

/// The serial of a DER certificate as `node_identities.certificate_serial`
/// stores it: lowercase hex of the DER INTEGER content bytes
/// (`hex::encode(raw_serial())`, no stripping, no separators). The issuer
/// must store exactly this string.
pub fn certificate_serial(der: &[u8]) -> Result<String> {
    Ok(serial_and_key(der)?.0)
}

/// The serial ([`certificate_serial`]) and the raw subject public key.
fn serial_and_key(der: &[u8]) -> Result<(String, Vec<u8>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::Unauthenticated(format!("client certificate does not parse: {e}")))?;
    Ok((
        hex::encode(cert.raw_serial()),
        cert.public_key().subject_public_key.data.to_vec(),
    ))
}

fn quoted(value: &str) -> String {
    value.chars().take(QUOTED_ID_CHARS_MAX).collect()
}

/// Checks the caller's certificate (`cert_der`, the first of its chain)
/// against `request`: a certificate is there (else
/// [`Error::Unauthenticated`]), names one rap node identity, and that
/// identity is the request's cluster and node (else
/// [`Error::PermissionDenied`]). Does not look at the database.
pub fn authenticate(cert_der: Option<&[u8]>, request: &HeartbeatRequest) -> Result<CallerIdentity> {
    let der = cert_der.ok_or_else(|| {
        Error::Unauthenticated("no client certificate: AgentService requires mTLS".into())
    })?;
    let identity = PeerIdentity::from_cert_der(der).map_err(|e| {
        Error::Unauthenticated(format!("client certificate names no node identity: {e}"))
    })?;
    let (serial, public_key) = serial_and_key(der)?;
    crate::enrollment::admit_caller(Rpc::Heartbeat, &identity)?;
    if identity.cluster_id.as_str() != request.cluster_id
        || identity.node_id.as_str() != request.node_id
    {
        return Err(Error::PermissionDenied(format!(
            "client certificate is {identity}, but the heartbeat is for cluster {:?} node {:?}",
            quoted(&request.cluster_id),
            quoted(&request.node_id)
        )));
    }
    Ok(CallerIdentity {
        identity,
        serial,
        public_key,
    })
}

/// What `node_identities` says about one serial.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Known {
    /// No row has this serial.
    Missing,
    /// The row's owner, key and status.
    Row {
        cluster_id: String,
        node_id: String,
        public_key: Vec<u8>,
        status: String,
    },
}

#[derive(Clone, Debug)]
struct Cached {
    known: Known,
    at: Instant,
}

/// The cached answers, and how many invalidations happened: an answer
/// read from PostgreSQL is kept only if none happened since the read
/// started (else it may predate the change).
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<String, Cached>,
    invalidations: u64,
}

/// The `AgentService` implementation.
#[derive(Clone)]
pub struct AgentApi {
    pool: PgPool,
    heartbeats: Heartbeats,
    cache: Arc<Mutex<Cache>>,
    watch: IdentityWatch,
}

impl fmt::Debug for AgentApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentApi")
            .field("heartbeats", &self.heartbeats)
            .finish_non_exhaustive()
    }
}

impl AgentApi {
    /// Serves heartbeats into `heartbeats`, checking identities in `pool`.
    pub fn new(pool: PgPool, heartbeats: Heartbeats) -> Self {
        AgentApi {
            pool,
            heartbeats,
            cache: Arc::new(Mutex::new(Cache::default())),
            watch: IdentityWatch::default(),
        }
    }

    /// Starts this process's identity listener
    /// ([`crate::db::coordination::spawn_identity_listener`]) until `stop` turns
    /// true; cached answers are used only while it is current.
    pub fn start_identity_listener(
        &self,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        crate::db::coordination::spawn_identity_listener(
            self.pool.clone(),
            self.clone(),
            self.watch.clone(),
            stop,
        )
    }

    /// Whether cached identity answers are in use now (the identity
    /// listener is current).
    pub fn identity_cache_in_use(&self) -> bool {
        self.watch.is_current()
    }

    /// The tonic service; requests are decoded up to
    /// [`HEARTBEAT_BYTES_MAX`].
    pub fn into_service(self) -> AgentServiceServer<Self> {
        AgentServiceServer::new(self)
            .max_decoding_message_size(HEARTBEAT_BYTES_MAX)
            .max_encoding_message_size(HEARTBEAT_BYTES_MAX)
    }

    /// The batcher behind this service.
    pub fn heartbeats(&self) -> &Heartbeats {
        &self.heartbeats
    }

    /// Forgets the cached answer for `serial` (call it when an identity is
    /// revoked or rotated, so this process refuses it at once).
    pub fn invalidate_serial(&self, serial: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.invalidations = cache.invalidations.wrapping_add(1);
        cache.entries.remove(serial);
    }

    fn cached(&self, serial: &str) -> Option<Known> {
        if !self.watch.is_current() {
            return None;
        }
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .entries
            .get(serial)
            .filter(|c| c.at.elapsed() < IDENTITY_CACHE_TTL)
            .map(|c| c.known.clone())
    }

    fn invalidations(&self) -> u64 {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .invalidations
    }

    /// Keeps `known`, read after `invalidations` were counted, unless an
    /// invalidation happened since.
    fn remember(&self, serial: &str, known: Known, invalidations: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.invalidations != invalidations {
            return;
        }
        if cache.entries.len() >= IDENTITY_CACHE_ENTRIES_MAX {
            cache
                .entries
                .retain(|_, c| c.at.elapsed() < IDENTITY_CACHE_TTL);
            if cache.entries.len() >= IDENTITY_CACHE_ENTRIES_MAX {
                cache.entries.clear();
            }
        }
        cache.entries.insert(
            serial.to_string(),
            Cached {
                known,
                at: Instant::now(),
            },
        );
    }

    async fn lookup(&self, serial: &str) -> Result<Known> {
        if let Some(known) = self.cached(serial) {
            return Ok(known);
        }
        let invalidations = self.invalidations();
        let row =
            crate::db::nodes::identity_by_serial(&mut *self.pool.acquire().await?, serial).await?;
        let known = match row {
            None => Known::Missing,
            Some(row) => Known::Row {
                cluster_id: row.cluster_id,
                node_id: row.node_id,
                public_key: row.public_key,
                status: row.identity_status,
            },
        };
        self.remember(serial, known.clone(), invalidations);
        Ok(known)
    }

    /// The caller's certificate serial must belong to the ACTIVE identity
    /// of the node it names, with the same public key: an unknown serial,
    /// another node's serial, another key, a rotated or a revoked identity
    /// are [`Error::PermissionDenied`].
    pub async fn check_identity(&self, caller: &CallerIdentity) -> Result<()> {
        match self.lookup(&caller.serial).await? {
            Known::Missing => Err(Error::PermissionDenied(format!(
                "certificate serial {} is not a known node identity",
                caller.serial
            ))),
            Known::Row {
                cluster_id,
                node_id,
                public_key,
                status,
            } => {
                if cluster_id != caller.identity.cluster_id.as_str()
                    || node_id != caller.identity.node_id.as_str()
                {
                    Err(Error::PermissionDenied(format!(
                        "certificate serial {} belongs to another node identity",
                        caller.serial
                    )))
                } else if public_key != caller.public_key {
                    Err(Error::PermissionDenied(format!(
                        "certificate serial {} is not for this key",
                        caller.serial
                    )))
                } else if status == "active" {
                    Ok(())
                } else if status == "revoked" {
                    Err(Error::CertificateRevoked(format!(
                        "the identity of node {node_id} (serial {}) was revoked",
                        caller.serial
                    )))
                } else {
                    Err(Error::PermissionDenied(format!(
                        "identity {status}: the certificate was superseded"
                    )))
                }
            }
        }
    }

    /// The whole heartbeat call given the caller's certificate (the first
    /// of its chain, DER): [`authenticate`], validate, check the identity,
    /// write and wait for the commit. Refusals are logged with the
    /// request's cluster and node.
    pub async fn heartbeat_from(
        &self,
        cert_der: Option<&[u8]>,
        request: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse> {
        let result = self.accept(cert_der, request).await;
        if let Err(error) = &result {
            let cluster_id = quoted(&request.cluster_id);
            let node_id = quoted(&request.node_id);
            if is_overloaded(error) {
                // Logged once per overload episode by the batcher.
                tracing::debug!(%cluster_id, %node_id, "heartbeat refused: queue full");
            } else if is_rate_limited(error) {
                // Logged once per episode and node by the limiter.
                tracing::debug!(%cluster_id, %node_id, "heartbeat refused: node rate limited");
            } else {
                tracing::warn!(
                    %cluster_id,
                    %node_id,
                    code = error.code(),
                    error = %error,
                    "heartbeat refused"
                );
            }
        }
        result
    }

    async fn accept(
        &self,
        cert_der: Option<&[u8]>,
        request: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse> {
        let caller = authenticate(cert_der, request)?;
        // A node over its rate is shed first (cheap; takes no token, so a
        // stale certificate of a node cannot spend the node's budget: only
        // `submit` below, after the identity check, does).
        self.heartbeats.check_rate(
            caller.identity.cluster_id.as_str(),
            caller.identity.node_id.as_str(),
        )?;
        let heartbeat = Heartbeat::from_request(request, now_unix_ms())?;
        self.check_identity(&caller).await?;
        self.heartbeats.submit_and_wait(heartbeat).await?;
        Ok(HeartbeatResponse {
            next_interval_ms: NEXT_INTERVAL_MS,
        })
    }
}

impl IdentityCache for AgentApi {
    fn forget_serials(&self, serials: &[String]) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.invalidations = cache.invalidations.wrapping_add(1);
        for serial in serials {
            cache.entries.remove(serial);
        }
    }

    fn forget_everything(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.invalidations = cache.invalidations.wrapping_add(1);
        cache.entries.clear();
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let certs = request.peer_certs();
        let leaf = certs
            .as_ref()
            .and_then(|chain| chain.first())
            .map(|cert| cert.as_ref());
        let response = self
            .heartbeat_from(leaf, request.get_ref())
            .await
            .map_err(Status::from)?;
        Ok(Response::new(response))
    }
}
