//! A storage node's identity through the control plane: enrollment
//! (`rap-configstore join`) and renewal (by the running node).
//!
//! **Join.** The node's ed25519 key is generated here, in the TLS
//! directory (`node.key`, 0600), and never leaves the node. The node
//! dials the control plane pinning the cluster CA by the fingerprint from
//! the join command (nothing is sent before the pin holds), submits a
//! storage join request (its node id, the server names its certificate
//! must carry, a proof of possession) with its single-use storage token,
//! and polls until it is approved: at once while the cluster's group is
//! not bootstrapped yet (the first voters), by an operator afterwards.
//! The issued chain is checked (it verifies against the pinned CA, names
//! `rap://cluster/<c>/storage/<id>` and carries this key) before
//! `node.pem`, `ca.pem` and `enrollment.json` (where to renew) are
//! written. A join that stops while pending resumes polling when run
//! again.
//!
//! **Renewal.** [`renew_if_enrolled`] (called by the node at about two
//! thirds of its certificate's life) connects to the control plane with
//! the current certificate (mTLS; the control plane's certificate must
//! chain to the cluster CA and name `<cluster>.cluster.rap`), rotates the
//! key (the proof is by the new key), checks the new chain the same way,
//! and writes `node.key` then `node.pem`; the running node reloads them.

use crate::config::Config;
use anyhow::{Context as _, Result, bail};
use rap_core::identity::{PeerIdentity, cluster_server_name};
use rap_core::tls::ca_pin::{CaFingerprint, PinOutcome, PinnedCaVerifier};
use rap_core::tls::live::LiveIdentity;
use rap_core::tls::pin::PeerTls;
use rap_core::tls::{TlsFiles, check_issued_chain, pem_certificate};
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::pb;
use rap_proto::pb::enrollment_service_client::EnrollmentServiceClient;
use rap_proto::proof::{PURPOSE_JOIN, PURPOSE_RENEW, PURPOSE_STATUS, proof_message};
use rap_proto::time::UnixMillis;
use rcgen::{KeyPair, SigningKey};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Where the node remembers, next to its certificate, which control plane
/// enrolled it (to renew there).
pub const ENROLLMENT_FILE: &str = "enrollment.json";

/// A join request submitted and not yet answered (resumed by a re-run).
pub const PENDING_FILE: &str = "join-request.json";

/// Longest TCP connect to the control plane.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest single call to the control plane.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Random bytes in a proof's nonce (the control plane takes 16..=64).
pub const PROOF_NONCE_BYTES: usize = 16;

/// Largest enrollment or pending-request file read.
pub const STATE_FILE_BYTES_MAX: u64 = 16 * 1024;

/// Longest join token accepted (the control plane's limit).
pub const TOKEN_BYTES_MAX: usize = 256;

/// Default pause between two status polls.
pub const POLL_INTERVAL_DEFAULT: Duration = Duration::from_secs(2);

/// Longest a join waits for approval by default.
pub const WAIT_DEFAULT: Duration = Duration::from_secs(3600);

/// What `enrollment.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Enrollment {
    /// The control plane's `host:port`.
    pub control_plane: String,
    /// The cluster.
    pub cluster_id: String,
    /// This storage node.
    pub node_id: String,
    /// The cluster CA's fingerprint (hex).
    pub ca_fingerprint: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Pending {
    join_request_id: String,
    cluster_id: String,
    node_id: String,
    control_plane: String,
}

/// What `rap-configstore join` was asked to do.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// The control plane's `host:port`.
    pub control_plane: String,
    /// The cluster.
    pub cluster: ClusterId,
    /// This storage node's id (the token was made for it).
    pub node_id: NodeId,
    /// `rapjt.<id>.<secret>`.
    pub token: String,
    /// The cluster CA's fingerprint from the join command.
    pub fingerprint: CaFingerprint,
    /// Where `ca.pem`, `node.pem`, `node.key` go.
    pub tls_dir: PathBuf,
    /// DNS names and IP addresses others dial this node by.
    pub server_names: Vec<String>,
    /// How long to wait for approval.
    pub wait: Duration,
    /// Pause between status polls.
    pub poll_interval: Duration,
}

/// How a join ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Enrolled: the certificate files are written.
    Enrolled {
        /// The certificate's serial (hex).
        serial: String,
        /// Seconds of validity left.
        valid_for_s: u64,
    },
    /// Still pending after the wait: run the same command again later.
    Pending {
        /// The request to ask an operator to approve.
        join_request_id: String,
    },
}

fn nonce() -> Result<Vec<u8>> {
    let mut nonce = vec![0u8; PROOF_NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("read randomness: {e}"))?;
    Ok(nonce)
}

/// A proof of possession by `key` for `purpose`: (timestamp, nonce,
/// signature).
fn prove(key: &KeyPair, purpose: &str, cluster: &str) -> Result<(i64, Vec<u8>, Vec<u8>)> {
    let now = UnixMillis::now().0;
    let nonce = nonce()?;
    let message = proof_message(purpose, cluster, key.public_key_raw(), now, &nonce);
    let signature = key
        .sign(&message)
        .map_err(|e| anyhow::anyhow!("sign the proof of possession: {e}"))?;
    Ok((now, nonce, signature))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    rap_core::files::write_file(path, bytes, 0o600, rap_core::files::Overwrite::Replace)
        .with_context(|| format!("write {}", path.display()))
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    rap_core::files::write_file(path, bytes, 0o644, rap_core::files::Overwrite::Replace)
        .with_context(|| format!("write {}", path.display()))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match rap_core::files::read_bounded(path, STATE_FILE_BYTES_MAX) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Loads `node.key` from `dir`, or generates it (0600) when there is none.
fn load_or_create_key(files: &TlsFiles) -> Result<KeyPair> {
    if files.key.exists() {
        let bytes = rap_core::files::read_private_key(&files.key, 4096)
            .with_context(|| format!("read {}", files.key.display()))?;
        let pem = String::from_utf8(bytes).context("node.key is not PEM")?;
        return KeyPair::from_pem(&pem)
            .with_context(|| format!("{} holds no usable key", files.key.display()));
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).context("generate the node key")?;
    write_private(&files.key, key.serialize_pem().as_bytes())?;
    Ok(key)
}

/// A TLS channel to the control plane at `server`, pinning the cluster CA
/// by `fingerprint` (SNI `<cluster>.cluster.rap`). Returns the channel and
/// the pinned CA.
async fn connect_pinned(
    server: &str,
    cluster: &ClusterId,
    fingerprint: CaFingerprint,
) -> Result<(Channel, CertificateDer<'static>)> {
    rap_core::tls::install_crypto_provider();
    let verifier = Arc::new(PinnedCaVerifier::new(fingerprint));
    let tls = ClientTlsConfig::new()
        .domain_name(cluster_server_name(cluster))
        .timeout(rap_core::tls::TLS_HANDSHAKE_TIMEOUT);
    let endpoint = Endpoint::from_shared(format!("https://{server}"))
        .with_context(|| format!("control plane address {server:?}"))?
        .tls_config_with_verifier(tls, Arc::clone(&verifier) as _)
        .context("TLS towards the control plane")?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(RPC_TIMEOUT);
    let connected = endpoint.connect().await;
    match (connected, verifier.outcome()) {
        (_, PinOutcome::Refused(reason)) => bail!("refusing the server at {server}: {reason}"),
        (Ok(channel), PinOutcome::Pinned(ca)) => Ok((channel, ca)),
        (Ok(_), PinOutcome::NotYet) => {
            bail!("the TLS handshake with {server} finished without checking its certificate")
        }
        (Err(e), _) => Err(anyhow::Error::new(e))
            .with_context(|| format!("cannot reach the control plane at {server}")),
    }
}

fn status_error(call: &str, status: &tonic::Status) -> anyhow::Error {
    let code = rap_core::codes::error_detail(status)
        .map(|d| d.code)
        .unwrap_or_else(|| format!("{:?}", status.code()));
    anyhow::anyhow!("{call} refused ({code}): {}", status.message())
}

/// Runs `rap-configstore join` (see the module docs).
pub async fn join(options: &JoinOptions) -> Result<JoinOutcome> {
    if options.token.len() > TOKEN_BYTES_MAX {
        bail!("the join token is longer than {TOKEN_BYTES_MAX} bytes");
    }
    rap_core::tls::server_sans(options.server_names.iter().map(String::as_str))
        .context("--advertise / --server-name")?;
    std::fs::create_dir_all(&options.tls_dir)
        .with_context(|| format!("create {}", options.tls_dir.display()))?;
    let files = TlsFiles::in_dir(&options.tls_dir);
    let key = load_or_create_key(&files)?;
    let (channel, ca) = connect_pinned(
        &options.control_plane,
        &options.cluster,
        options.fingerprint,
    )
    .await?;
    let mut client = EnrollmentServiceClient::new(channel);
    let cluster = options.cluster.to_string();
    let pending_path = options.tls_dir.join(PENDING_FILE);
    let pending: Option<Pending> = read_json(&pending_path)?
        .filter(|p: &Pending| p.cluster_id == cluster && p.node_id == options.node_id.as_str());
    let join_request_id = match pending {
        Some(pending) => pending.join_request_id,
        None => {
            let (timestamp_unix_ms, nonce, proof) = prove(&key, PURPOSE_JOIN, &cluster)?;
            let answer = client
                .submit_join_request(pb::SubmitJoinRequestRequest {
                    token: options.token.clone(),
                    cluster_id: cluster.clone(),
                    node_public_key: key.public_key_raw().to_vec(),
                    facts: Some(pb::NodeFacts {
                        agent_version: env!("CARGO_PKG_VERSION").to_string(),
                        ..Default::default()
                    }),
                    capabilities: Vec::new(),
                    requested_roles: Vec::new(),
                    timestamp_unix_ms,
                    nonce,
                    proof,
                    kind: pb::NodeKind::Storage as i32,
                    node_id: options.node_id.to_string(),
                    server_names: options.server_names.clone(),
                })
                .await
                .map_err(|s| status_error("SubmitJoinRequest", &s))?
                .into_inner();
            let id = answer.join_request_id;
            rap_proto::ids::JoinRequestId::new(id.as_str())
                .map_err(|e| anyhow::anyhow!("the control plane answered a bad request id: {e}"))?;
            let record = Pending {
                join_request_id: id.clone(),
                cluster_id: cluster.clone(),
                node_id: options.node_id.to_string(),
                control_plane: options.control_plane.clone(),
            };
            write_public(&pending_path, &serde_json::to_vec_pretty(&record)?)?;
            id
        }
    };
    let deadline = tokio::time::Instant::now() + options.wait;
    loop {
        let (timestamp_unix_ms, nonce, proof) = prove(&key, PURPOSE_STATUS, &cluster)?;
        let answer = client
            .get_join_status(pb::GetJoinStatusRequest {
                join_request_id: join_request_id.clone(),
                cluster_id: cluster.clone(),
                node_public_key: key.public_key_raw().to_vec(),
                timestamp_unix_ms,
                nonce,
                proof,
            })
            .await
            .map_err(|s| status_error("GetJoinStatus", &s))?
            .into_inner();
        match pb::JoinRequestStatus::try_from(answer.status).unwrap_or_default() {
            pb::JoinRequestStatus::Approved => {
                let identity = answer.identity.context("approved without an identity")?;
                let expected =
                    PeerIdentity::storage(options.cluster.clone(), options.node_id.clone())?;
                let leaf = check_issued_chain(
                    &identity.certificate_chain_pem,
                    &ca,
                    &expected,
                    key.public_key_raw(),
                )
                .map_err(|e| anyhow::anyhow!("the issued certificate: {e}"))?;
                write_public(&files.ca, pem_certificate(ca.as_ref()).as_bytes())?;
                write_public(&files.cert, identity.certificate_chain_pem.as_bytes())?;
                let enrollment = Enrollment {
                    control_plane: options.control_plane.clone(),
                    cluster_id: cluster.clone(),
                    node_id: options.node_id.to_string(),
                    ca_fingerprint: options.fingerprint.to_hex(),
                };
                write_public(
                    &options.tls_dir.join(ENROLLMENT_FILE),
                    &serde_json::to_vec_pretty(&enrollment)?,
                )?;
                let _ = std::fs::remove_file(&pending_path);
                let facts = rap_core::identity::CertificateFacts::from_der(leaf.as_ref())?;
                let valid_for_s = facts
                    .not_after
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default()
                    .as_secs();
                return Ok(JoinOutcome::Enrolled {
                    serial: facts.serial_hex,
                    valid_for_s,
                });
            }
            pb::JoinRequestStatus::Rejected => {
                let _ = std::fs::remove_file(&pending_path);
                bail!(
                    "join request {join_request_id} was rejected: {}",
                    answer.reason
                );
            }
            pb::JoinRequestStatus::Expired => {
                let _ = std::fs::remove_file(&pending_path);
                bail!("join request {join_request_id} expired; ask for a new storage token");
            }
            pb::JoinRequestStatus::Pending | pb::JoinRequestStatus::Unspecified => {
                if tokio::time::Instant::now() + options.poll_interval > deadline {
                    return Ok(JoinOutcome::Pending { join_request_id });
                }
                tokio::time::sleep(options.poll_interval).await;
            }
        }
    }
}

/// The enrollment record next to the certificate `files`, if the node was
/// enrolled through a control plane.
pub fn enrollment_of(files: &TlsFiles) -> Result<Option<Enrollment>> {
    let Some(dir) = files.cert.parent() else {
        return Ok(None);
    };
    read_json(&dir.join(ENROLLMENT_FILE))
}

/// Renews the node's certificate through the control plane that enrolled
/// it, rotating its key; `Ok(None)` when it was not enrolled through one
/// (a development certificate from `rap-configstore dev-ca`). Returns the
/// new serial. The files are written; the caller reloads them.
pub async fn renew_if_enrolled(
    identity: &Arc<LiveIdentity>,
    config: &Config,
) -> Result<Option<String>> {
    let Some(enrollment) = enrollment_of(identity.files())? else {
        return Ok(None);
    };
    let current = identity.identity();
    if enrollment.cluster_id != current.cluster_id.as_str()
        || enrollment.node_id != current.node_id.as_str()
        || enrollment.node_id != config.node_id
    {
        bail!(
            "{} is for {}/{}, but this node is {current}",
            ENROLLMENT_FILE,
            enrollment.cluster_id,
            enrollment.node_id
        );
    }
    let tls = PeerTls::new(identity.clone())?;
    let channel = Endpoint::from_shared(format!("http://{}", enrollment.control_plane))
        .with_context(|| format!("control plane address {:?}", enrollment.control_plane))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(RPC_TIMEOUT)
        .connect_with_connector(tls.control_plane_connector()?)
        .await
        .with_context(|| format!("reach the control plane at {}", enrollment.control_plane))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).context("generate the new node key")?;
    let cluster = current.cluster_id.to_string();
    let (timestamp_unix_ms, nonce, proof) = prove(&key, PURPOSE_RENEW, &cluster)?;
    let answer = EnrollmentServiceClient::new(channel)
        .renew_certificate(pb::RenewCertificateRequest {
            cluster_id: cluster,
            node_id: current.node_id.to_string(),
            new_public_key: key.public_key_raw().to_vec(),
            timestamp_unix_ms,
            nonce,
            proof,
        })
        .await
        .map_err(|s| status_error("RenewCertificate", &s))?
        .into_inner();
    let issued = answer.identity.context("renewed without an identity")?;
    let leaf = check_issued_chain(
        &issued.certificate_chain_pem,
        identity.ca_der(),
        &current,
        key.public_key_raw(),
    )
    .map_err(|e| anyhow::anyhow!("the renewed certificate: {e}"))?;
    let files = identity.files();
    // Key first: until the certificate follows, the pair does not match
    // and a reload keeps the old one.
    write_private(&files.key, key.serialize_pem().as_bytes())?;
    write_public(&files.cert, issued.certificate_chain_pem.as_bytes())?;
    Ok(Some(
        rap_core::identity::CertificateFacts::from_der(leaf.as_ref())?.serial_hex,
    ))
}
