//! mTLS between storage nodes, and a development CA.
//!
//! Every node certificate names its holder in one URI SAN,
//! `rap://cluster/<cluster_id>/node/<node_id>` (DESIGN.md §3 "Keys"); a
//! cluster CA certificate names its cluster as `rap://cluster/<cluster_id>`.
//! Servers require a client certificate from the cluster CA
//! ([`TlsFiles::server_config`]); the Raft server then checks that the
//! certificate's identity ([`PeerIdentity::from_cert_der`]) is the node the
//! request claims to come from.
//!
//! [`DevCa`] is the development and test stand-in for the control plane's
//! cluster CA: it writes `ca.pem` + `ca.key` (0600) and issues short-lived
//! ed25519 node certificates. Only the ring crypto provider is used
//! ([`install_crypto_provider`]): two providers make tonic panic.
//! [`ca_cert_params`], [`node_cert_params`], [`distinguished_name`],
//! [`uri_san`] and [`set_validity`] are shared with the control plane,
//! which issues certificates the same way.
//!
//! What is on disk: `ca.pem`, `ca.key` in the CA directory; `ca.pem`,
//! `node.pem`, `node.key` in a node directory. Keys are PKCS#8 PEM, mode
//! 0600, and refused when group or others may read them.

use crate::error::{Error, Result};
use crate::files::{self, Overwrite};
use rap_proto::ids::{ClusterId, NodeId};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Default lifetime of a node certificate: short, renewed by the agent
/// (DESIGN.md §3 "Keys").
pub const NODE_CERT_VALIDITY_DEFAULT: Duration = Duration::from_secs(24 * 3600);

/// Longest node certificate lifetime [`DevCa`] issues: node certificates
/// are short-lived by design.
pub const NODE_CERT_VALIDITY_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Lifetime of a development CA.
pub const DEV_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How far `not_before` is set into the past, so a peer whose clock is a
/// little behind accepts a fresh certificate.
pub const NOT_BEFORE_BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The name clients verify server certificates against by default: every
/// node certificate carries it, so any node of the cluster CA passes.
pub const TLS_DOMAIN_NAME_DEFAULT: &str = "localhost";

/// Longest TLS handshake a server or client waits for: a peer that stalls
/// the handshake must not hold a connection slot.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest PEM file read (certificate, bundle or key): a few certificates.
pub const PEM_FILE_BYTES_MAX: u64 = 64 * 1024;

/// The CA certificate's file name.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name.
pub const CA_KEY_FILE: &str = "ca.key";
/// A node certificate's file name.
pub const NODE_CERT_FILE: &str = "node.pem";
/// A node key's file name.
pub const NODE_KEY_FILE: &str = "node.key";

const _: () = assert!(NODE_CERT_VALIDITY_DEFAULT.as_secs() <= NODE_CERT_VALIDITY_MAX.as_secs());
const _: () = assert!(NODE_CERT_VALIDITY_MAX.as_secs() < DEV_CA_VALIDITY.as_secs());

const CLUSTER_URI_PREFIX: &str = "rap://cluster/";
const NODE_URI_INFIX: &str = "/node/";

/// Installs rustls' ring provider as the process default, once. Later
/// calls, and a provider installed by someone else first, are no-ops.
pub fn install_crypto_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        if rustls::crypto::ring::default_provider()
            .install_default()
            .is_err()
        {
            tracing::debug!("a rustls crypto provider was already installed");
        }
    });
}

/// Who a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The holder's cluster.
    pub cluster_id: ClusterId,
    /// The holder's node id.
    pub node_id: NodeId,
}

impl PeerIdentity {
    /// The identity of `node_id` in `cluster_id`.
    pub fn new(cluster_id: ClusterId, node_id: NodeId) -> Self {
        PeerIdentity {
            cluster_id,
            node_id,
        }
    }

    /// Its URI SAN: `rap://cluster/<cluster_id>/node/<node_id>`.
    pub fn uri(&self) -> String {
        format!(
            "{CLUSTER_URI_PREFIX}{}{NODE_URI_INFIX}{}",
            self.cluster_id, self.node_id
        )
    }

    /// Parses a URI written by [`PeerIdentity::uri`]; both ids must be
    /// valid (DNS labels), so nothing else can hide in the URI.
    pub fn from_uri(uri: &str) -> Result<Self> {
        let malformed = || Error::InvalidRequest(format!("not a rap node URI: {uri:?}"));
        let rest = uri.strip_prefix(CLUSTER_URI_PREFIX).ok_or_else(malformed)?;
        let (cluster, node) = rest.split_once(NODE_URI_INFIX).ok_or_else(malformed)?;
        let cluster_id = ClusterId::new(cluster).map_err(|_| malformed())?;
        let node_id = NodeId::new(node).map_err(|_| malformed())?;
        Ok(PeerIdentity::new(cluster_id, node_id))
    }

    /// The identity a DER certificate names: exactly one rap node URI SAN.
    /// The certificate's chain is *not* checked here (rustls did that
    /// during the handshake).
    pub fn from_cert_der(der: &[u8]) -> Result<Self> {
        let mut found = uri_sans(der)?
            .into_iter()
            .filter(|uri| uri.starts_with(CLUSTER_URI_PREFIX) && uri.contains(NODE_URI_INFIX));
        let first = found.next().ok_or_else(|| {
            Error::InvalidRequest("certificate names no rap://cluster/<c>/node/<n> URI".into())
        })?;
        if found.next().is_some() {
            return Err(Error::InvalidRequest(
                "certificate names more than one rap node URI".into(),
            ));
        }
        Self::from_uri(&first)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// The three files a node needs for mTLS: the cluster CA certificate, its
/// own certificate and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// This node's private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The standard names in `dir`: `ca.pem`, `node.pem`, `node.key`.
    pub fn in_dir(dir: &Path) -> Self {
        TlsFiles {
            ca: dir.join(CA_CERT_FILE),
            cert: dir.join(NODE_CERT_FILE),
            key: dir.join(NODE_KEY_FILE),
        }
    }

    /// Server side: our identity, and client certificates REQUIRED and
    /// verified against the cluster CA (mTLS).
    pub fn server_config(&self) -> Result<ServerTlsConfig> {
        install_crypto_provider();
        let loaded = self.load()?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(loaded.cert, loaded.key))
            .client_ca_root(Certificate::from_pem(loaded.ca))
            .client_auth_optional(false)
            .timeout(TLS_HANDSHAKE_TIMEOUT))
    }

    /// Client side: trust only the cluster CA, present our certificate,
    /// verify servers as [`TLS_DOMAIN_NAME_DEFAULT`].
    pub fn client_config(&self) -> Result<ClientTlsConfig> {
        self.client_config_for(TLS_DOMAIN_NAME_DEFAULT)
    }

    /// [`TlsFiles::client_config`] verifying servers as `domain_name`.
    pub fn client_config_for(&self, domain_name: &str) -> Result<ClientTlsConfig> {
        install_crypto_provider();
        let loaded = self.load()?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(loaded.ca))
            .identity(Identity::from_pem(loaded.cert, loaded.key))
            .domain_name(domain_name)
            .timeout(TLS_HANDSHAKE_TIMEOUT))
    }

    /// The identity our own certificate names.
    pub fn identity(&self) -> Result<PeerIdentity> {
        let pem = files::read_bounded(&self.cert, PEM_FILE_BYTES_MAX).map_err(file_error)?;
        let der = files::first_cert(&self.cert, &pem).map_err(file_error)?;
        PeerIdentity::from_cert_der(der.as_ref())
    }

    /// Reads and checks the three files: each parses, the key is private.
    fn load(&self) -> Result<LoadedFiles> {
        let ca = files::read_bounded(&self.ca, PEM_FILE_BYTES_MAX).map_err(file_error)?;
        files::first_cert(&self.ca, &ca).map_err(file_error)?;
        let cert = files::read_bounded(&self.cert, PEM_FILE_BYTES_MAX).map_err(file_error)?;
        files::first_cert(&self.cert, &cert).map_err(file_error)?;
        let key = files::read_private_key(&self.key, PEM_FILE_BYTES_MAX).map_err(file_error)?;
        PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
            Error::InvalidRequest(format!("{} holds no private key: {e}", self.key.display()))
        })?;
        Ok(LoadedFiles { ca, cert, key })
    }
}

struct LoadedFiles {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// A CA certificate with its signing key, read from `ca.pem` + `ca.key`
/// in a directory. [`DevCa`] is one for a cluster; the control plane
/// loads its CAs (the platform CA names no cluster) with it too.
pub struct LoadedCa {
    /// The CA certificate (PEM, as read).
    pub cert_pem: String,
    /// The CA certificate (DER).
    pub cert_der: CertificateDer<'static>,
    /// Signs certificates with the CA key.
    pub issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for LoadedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCa").finish_non_exhaustive()
    }
}

impl LoadedCa {
    /// Reads `ca.pem` and `ca.key` from `dir`: the certificate parses, the
    /// key is private (refused when group or others may read it) and
    /// belongs to the certificate.
    pub fn load(dir: &Path) -> Result<Self> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_bytes = files::read_bounded(&cert_path, PEM_FILE_BYTES_MAX).map_err(file_error)?;
        let cert_der = files::first_cert(&cert_path, &cert_bytes).map_err(file_error)?;
        let key_bytes =
            files::read_private_key(&key_path, PEM_FILE_BYTES_MAX).map_err(file_error)?;
        let key_pem = String::from_utf8(key_bytes)
            .map_err(|_| Error::InvalidRequest(format!("{} is not PEM", key_path.display())))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            Error::InvalidRequest(format!("{} holds no usable key: {e}", key_path.display()))
        })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert_der.as_ref())
            .map_err(|e| Error::InvalidRequest(format!("parse {}: {e}", cert_path.display())))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(Error::InvalidRequest(format!(
                "{} does not belong to {}",
                key_path.display(),
                cert_path.display()
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| Error::InvalidRequest(format!("load {}: {e}", cert_path.display())))?;
        let cert_pem = String::from_utf8(cert_bytes)
            .map_err(|_| Error::InvalidRequest(format!("{} is not PEM", cert_path.display())))?;
        Ok(LoadedCa {
            cert_pem,
            cert_der,
            issuer,
        })
    }
}

/// A development cluster CA on disk (`ca.pem`, `ca.key`). The control
/// plane holds the real one; this one serves tests, the simulation and
/// `scripts/dev.sh`.
pub struct DevCa {
    dir: PathBuf,
    cluster_id: ClusterId,
    ca: LoadedCa,
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa")
            .field("dir", &self.dir)
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

impl DevCa {
    /// Creates a new ed25519 CA for `cluster_id` in `dir` (created if
    /// missing). Refuses to overwrite an existing `ca.pem` or `ca.key`.
    pub fn create(dir: &Path, cluster_id: &ClusterId) -> Result<Self> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(Error::InvalidRequest(format!(
                    "{} exists; refusing to overwrite a CA",
                    path.display()
                )));
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;

        let key =
            KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(rcgen_error("generate CA key"))?;
        let mut params = ca_cert_params(&format!("rap cluster {cluster_id} CA"));
        params.subject_alt_names = vec![uri_san(&format!("{CLUSTER_URI_PREFIX}{cluster_id}"))?];
        set_validity(&mut params, DEV_CA_VALIDITY)?;
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_error("self-sign CA certificate"))?;

        files::write_file(
            &key_path,
            key.serialize_pem().as_bytes(),
            0o600,
            Overwrite::Never,
        )
        .map_err(file_error)?;
        files::write_file(&cert_path, cert.pem().as_bytes(), 0o644, Overwrite::Never)
            .map_err(file_error)?;
        tracing::info!(cluster_id = %cluster_id, dir = %dir.display(), "development CA created");
        Self::load(dir)
    }

    /// Loads a CA written by [`DevCa::create`] ([`LoadedCa::load`]); the
    /// cluster comes from its certificate.
    pub fn load(dir: &Path) -> Result<Self> {
        let ca = LoadedCa::load(dir)?;
        let cluster_id = ca_cluster(ca.cert_der.as_ref()).map_err(|e| {
            Error::InvalidRequest(format!("{}: {e}", dir.join(CA_CERT_FILE).display()))
        })?;
        Ok(DevCa {
            dir: dir.to_path_buf(),
            cluster_id,
            ca,
        })
    }

    /// The cluster this CA certifies.
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// Issues `node_id` a certificate valid for
    /// [`NODE_CERT_VALIDITY_DEFAULT`]; see [`DevCa::issue_node_for`].
    pub fn issue_node(&self, dir: &Path, node_id: &NodeId) -> Result<TlsFiles> {
        self.issue_node_for(dir, node_id, NODE_CERT_VALIDITY_DEFAULT)
    }

    /// Generates an ed25519 key for `node_id` and a certificate valid for
    /// `validity` (at most [`NODE_CERT_VALIDITY_MAX`]) with the URI SAN
    /// `rap://cluster/<cluster>/node/<node>`, DNS `localhost`, IP
    /// 127.0.0.1 and both server and client auth. Writes `node.pem`,
    /// `node.key` (0600) and a copy of `ca.pem` into `dir`, replacing an
    /// older certificate and key (renewal).
    pub fn issue_node_for(
        &self,
        dir: &Path,
        node_id: &NodeId,
        validity: Duration,
    ) -> Result<TlsFiles> {
        if validity.is_zero() || validity > NODE_CERT_VALIDITY_MAX {
            return Err(Error::InvalidRequest(format!(
                "node certificate validity {validity:?} is outside (0, {NODE_CERT_VALIDITY_MAX:?}]"
            )));
        }
        let identity = PeerIdentity::new(self.cluster_id.clone(), node_id.clone());
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(rcgen_error("generate node key"))?;
        let mut params = node_cert_params(&identity)?;
        params.subject_alt_names.extend([
            SanType::DnsName(
                TLS_DOMAIN_NAME_DEFAULT
                    .try_into()
                    .map_err(rcgen_error("DNS name SAN"))?,
            ),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ]);
        set_validity(&mut params, validity)?;
        let cert = params
            .signed_by(&key, &self.ca.issuer)
            .map_err(rcgen_error("sign node certificate"))?;

        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let tls = TlsFiles::in_dir(dir);
        files::write_file(
            &tls.key,
            key.serialize_pem().as_bytes(),
            0o600,
            Overwrite::Replace,
        )
        .map_err(file_error)?;
        files::write_file(&tls.cert, cert.pem().as_bytes(), 0o644, Overwrite::Replace)
            .map_err(file_error)?;
        if tls.ca != self.dir.join(CA_CERT_FILE) {
            files::write_file(
                &tls.ca,
                self.ca.cert_pem.as_bytes(),
                0o644,
                Overwrite::Replace,
            )
            .map_err(file_error)?;
        }
        tracing::info!(
            cluster_id = %self.cluster_id,
            node_id = %node_id,
            validity_s = validity.as_secs(),
            "development node certificate issued"
        );
        Ok(tls)
    }
}

/// Every URI SAN of a DER certificate.
fn uri_sans(der: &[u8]) -> Result<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::InvalidRequest(format!("parse certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| Error::InvalidRequest(format!("parse certificate SAN: {e}")))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The cluster a CA certificate names (`rap://cluster/<cluster>`).
fn ca_cluster(der: &[u8]) -> Result<ClusterId> {
    let uris = uri_sans(der)?;
    let cluster = uris
        .iter()
        .filter_map(|uri| uri.strip_prefix(CLUSTER_URI_PREFIX))
        .find(|rest| !rest.contains('/'))
        .ok_or_else(|| {
            Error::InvalidRequest("CA certificate names no rap://cluster/<c> URI".into())
        })?;
    ClusterId::new(cluster).map_err(|e| Error::InvalidRequest(format!("CA cluster id: {e}")))
}

/// The subject every rap certificate carries: organisation `rap` and
/// `common_name`.
pub fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "rap");
    name.push(DnType::CommonName, common_name);
    name
}

/// The parameters of a CA certificate named `common_name` that signs
/// end-entity certificates only (path length 0). Validity, SANs and
/// serial number are the caller's.
pub fn ca_cert_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The parameters of `identity`'s node certificate: subject its node id,
/// the URI SAN [`PeerIdentity::uri`] (what [`PeerIdentity::from_cert_der`]
/// reads back), not a CA, digital signature for both server and client
/// auth, with an authority key identifier. Validity, serial number and
/// further SANs are the caller's.
pub fn node_cert_params(identity: &PeerIdentity) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(identity.node_id.as_str());
    params.subject_alt_names = vec![uri_san(&identity.uri())?];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A URI subject alternative name (a [`PeerIdentity::uri`] or a cluster
/// CA's `rap://cluster/<cluster_id>`).
pub fn uri_san(uri: &str) -> Result<SanType> {
    Ok(SanType::URI(
        uri.try_into().map_err(rcgen_error("URI SAN"))?,
    ))
}

/// Sets `not_before` = now − [`NOT_BEFORE_BACKDATE`] and
/// `not_after` = now + `validity`, now in whole seconds (X.509 times have
/// seconds), and returns both. (rcgen's times are `time::OffsetDateTime`;
/// adding a std `Duration` to its epoch avoids a direct dependency on
/// `time`.)
pub fn set_validity(
    params: &mut CertificateParams,
    validity: Duration,
) -> Result<(SystemTime, SystemTime)> {
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| Error::InvalidRequest(format!("system clock before 1970: {e}")))?;
    let now = Duration::from_secs(since_epoch.as_secs());
    let not_before = now.saturating_sub(NOT_BEFORE_BACKDATE);
    let not_after = now + validity;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + not_before;
    params.not_after = epoch + not_after;
    Ok((
        SystemTime::UNIX_EPOCH + not_before,
        SystemTime::UNIX_EPOCH + not_after,
    ))
}

fn rcgen_error(what: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |e| Error::InvalidRequest(format!("{what}: {e}"))
}

fn io_error(verb: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("{verb} {}: {e}", path.display()))
}

/// A [`files`] error as ours: a file over [`PEM_FILE_BYTES_MAX`] is
/// [`Error::Oversize`], a key others may read or a file without a
/// certificate [`Error::InvalidRequest`], anything else [`Error::Storage`].
fn file_error(e: std::io::Error) -> Error {
    match e.kind() {
        ErrorKind::FileTooLarge => Error::Oversize {
            what: "PEM file",
            limit: PEM_FILE_BYTES_MAX as usize,
            // `read_bounded` stops one byte past the limit.
            got: PEM_FILE_BYTES_MAX as usize + 1,
        },
        ErrorKind::PermissionDenied | ErrorKind::InvalidData => {
            Error::InvalidRequest(e.to_string())
        }
        _ => Error::Storage(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a node URI round-trips, and anything else (other prefixes,
    // extra path segments, invalid ids) is refused. Method: table.
    #[test]
    fn node_uri_round_trip_and_refusals() {
        let id = PeerIdentity::new(
            ClusterId::new("c1").expect("cluster"),
            NodeId::new("s-2").expect("node"),
        );
        assert_eq!(id.uri(), "rap://cluster/c1/node/s-2");
        assert_eq!(PeerIdentity::from_uri(&id.uri()).expect("parse"), id);
        for bad in [
            "rap://cluster/c1",
            "rap://cluster/c1/node/",
            "rap://cluster/c1/node/s1/extra",
            "rap://cluster//node/s1",
            "https://cluster/c1/node/s1",
            "rap://cluster/C 1/node/s1",
            "rap://cluster/c1/nodes/s1",
        ] {
            assert!(
                PeerIdentity::from_uri(bad).is_err(),
                "{bad} must be refused"
            );
        }
    }

    // Goal: a non-certificate is a typed error. Method: parse garbage.
    #[test]
    fn garbage_certificate_is_refused() {
        assert!(matches!(
            PeerIdentity::from_cert_der(b"not a certificate"),
            Err(Error::InvalidRequest(_))
        ));
    }
}
