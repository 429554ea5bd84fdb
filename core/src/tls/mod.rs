//! Certificates and mTLS for the cluster's parties, and the cluster CA.
//!
//! Every certificate names its holder in one URI SAN of its kind
//! ([`crate::identity`]); a cluster CA certificate names its cluster as
//! `rap://cluster/<cluster_id>`. What a holder may call is decided by
//! the access table of `rap-authority`, never by the CA alone.
//!
//! * [`live`]: [`LiveIdentity`](live::LiveIdentity), a node's own
//!   certificate and key, reloaded from disk without a restart (renewal),
//!   and the rustls server configuration built on it.
//! * [`pin`]: the client side: every connection to a storage node pins the
//!   peer's identity (cluster, kind, node id) and its address.
//! * [`ca_pin`]: pinning the cluster CA by fingerprint, for a node that
//!   joins (agents and storage nodes alike) before it holds the CA.
//! * [`incoming`]: a TLS accept loop that keeps slow handshakes off the
//!   accept path (storage nodes and the control plane).
//!
//! [`ClusterCa`] is a cluster's CA, loaded once: the control plane's per
//! cluster, and that of development clusters run without a control plane
//! (tests, the simulation, `rap-configstore dev-ca`). [`ca_cert_params`],
//! [`identity_cert_params`], [`distinguished_name`], [`uri_san`] and
//! [`set_validity`] are shared with the control plane, which issues
//! certificates the same way. Only the ring crypto provider is used
//! ([`install_crypto_provider`]): two providers make tonic panic.
//!
//! What is on disk: `ca.pem`, `ca.key` in the CA directory; `ca.pem`,
//! `node.pem`, `node.key` in a node directory. Keys are PKCS#8 PEM, mode
//! 0600, and refused when group or others may read them.

pub mod ca_pin;
pub mod incoming;
pub mod live;
pub mod pin;

use crate::error::{Error, Result};
use crate::files::{self, Overwrite};
use crate::identity::{CLUSTER_URI_PREFIX, CertificateFacts, PeerIdentity};
use rap_proto::ids::{ClusterId, NodeId};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Default lifetime of a node certificate: short, renewed before expiry
///.
pub const NODE_CERT_VALIDITY_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// Share of a node certificate's life after which its holder renews it
/// (2/3): agents and storage nodes alike.
pub const RENEW_AFTER_NUMERATOR: u32 = 2;
/// See [`RENEW_AFTER_NUMERATOR`].
pub const RENEW_AFTER_DENOMINATOR: u32 = 3;

/// Longest node certificate lifetime issued: node certificates are
/// short-lived by design.
pub const NODE_CERT_VALIDITY_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Shortest node certificate lifetime issued (tests run whole clusters on
/// 20-second certificates; anything shorter cannot be renewed in time).
pub const NODE_CERT_VALIDITY_MIN: Duration = Duration::from_secs(10);

/// Lifetime of a cluster CA.
pub const CLUSTER_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How far `not_before` is set into the past, so a peer whose clock is a
/// little behind accepts a fresh certificate.
pub const NOT_BEFORE_BACKDATE: Duration = Duration::from_secs(5 * 60);

/// The server names every development certificate carries, so nodes on
/// one host reach each other by `localhost` or 127.0.0.1.
pub const DEV_SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// Longest TLS handshake a server or client waits for: a peer that stalls
/// the handshake must not hold a connection slot.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest PEM file read (certificate, bundle or key): a few certificates.
pub const PEM_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Most certificates in an issued chain or a chain file (the
/// certificate, the CA, room for an intermediate).
pub const CHAIN_CERTS_MAX: usize = 4;

/// Most server names (DNS names or IP addresses) one certificate carries.
pub const SERVER_NAMES_MAX: usize = 16;

/// Longest server name (a DNS name is at most 253 bytes).
pub const SERVER_NAME_BYTES_MAX: usize = 253;

/// The ALPN protocol every rap gRPC connection speaks (HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";

/// The CA certificate's file name.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name.
pub const CA_KEY_FILE: &str = "ca.key";
/// A node certificate's file name.
pub const NODE_CERT_FILE: &str = "node.pem";
/// A node key's file name.
pub const NODE_KEY_FILE: &str = "node.key";

const _: () = assert!(NODE_CERT_VALIDITY_MIN.as_secs() <= NODE_CERT_VALIDITY_DEFAULT.as_secs());
const _: () = assert!(NODE_CERT_VALIDITY_DEFAULT.as_secs() <= NODE_CERT_VALIDITY_MAX.as_secs());
const _: () = assert!(NODE_CERT_VALIDITY_MAX.as_secs() < CLUSTER_CA_VALIDITY.as_secs());

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

/// The three files a party needs for mTLS: the cluster CA certificate,
/// its own certificate and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This party's certificate (PEM; may be followed by the CA).
    pub cert: PathBuf,
    /// This party's private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
}

/// The three files of [`TlsFiles`], read and checked.
pub(crate) struct LoadedFiles {
    pub(crate) ca: Vec<u8>,
    pub(crate) cert: Vec<u8>,
    pub(crate) key: Vec<u8>,
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

    /// The identity, serial and validity of our own certificate.
    pub fn facts(&self) -> Result<CertificateFacts> {
        let pem = files::read_bounded(&self.cert, PEM_FILE_BYTES_MAX).map_err(file_error)?;
        let der = files::first_cert(&self.cert, &pem).map_err(file_error)?;
        CertificateFacts::from_der(der.as_ref())
    }

    /// The identity our own certificate names.
    pub fn identity(&self) -> Result<PeerIdentity> {
        Ok(self.facts()?.identity)
    }

    /// Reads and checks the three files: each parses, the key is private.
    pub(crate) fn load(&self) -> Result<LoadedFiles> {
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

/// A CA certificate with its signing key, read from `ca.pem` + `ca.key`
/// in a directory. [`ClusterCa`] is one for a cluster; the control plane
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

/// A cluster CA on disk (`ca.pem`, `ca.key`). The control plane keeps one
/// per cluster in its keys directory and issues node certificates for
/// keys that stay on their nodes. Clusters run without a control plane
/// (tests, the simulation, `scripts/dev.sh`, `rap-configstore dev-ca`)
/// create one here and let it generate the holders' keys
/// ([`ClusterCa::issue`]); `rap-configstore dev-ca renew` issues new files,
/// which a running storage node picks up without a restart.
pub struct ClusterCa {
    dir: PathBuf,
    cluster_id: ClusterId,
    ca: LoadedCa,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("dir", &self.dir)
            .field("cluster_id", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
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
        set_validity(&mut params, CLUSTER_CA_VALIDITY)?;
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
        tracing::info!(cluster_id = %cluster_id, dir = %dir.display(), "cluster CA created");
        Self::load(dir)
    }

    /// Loads a CA written by [`ClusterCa::create`] ([`LoadedCa::load`]); the
    /// cluster comes from its certificate.
    pub fn load(dir: &Path) -> Result<Self> {
        let ca = LoadedCa::load(dir)?;
        let cluster_id = ca_cluster(ca.cert_der.as_ref()).map_err(|e| {
            Error::InvalidRequest(format!("{}: {e}", dir.join(CA_CERT_FILE).display()))
        })?;
        Ok(ClusterCa {
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

    /// The CA certificate and signing key, as loaded (once).
    pub fn loaded(&self) -> &LoadedCa {
        &self.ca
    }

    /// Issues storage node `node_id` a certificate valid for
    /// [`NODE_CERT_VALIDITY_DEFAULT`] with the [`DEV_SERVER_NAMES`] and
    /// `server_names`; see [`ClusterCa::issue`].
    pub fn issue_storage(
        &self,
        dir: &Path,
        node_id: &NodeId,
        server_names: &[String],
    ) -> Result<TlsFiles> {
        let identity = PeerIdentity::storage(self.cluster_id.clone(), node_id.clone())?;
        self.issue(dir, &identity, NODE_CERT_VALIDITY_DEFAULT, server_names)
    }

    /// Issues operator `name` a client certificate valid for
    /// [`NODE_CERT_VALIDITY_DEFAULT`]; see [`ClusterCa::issue`].
    pub fn issue_operator(&self, dir: &Path, name: &NodeId) -> Result<TlsFiles> {
        let identity = PeerIdentity::operator(self.cluster_id.clone(), name.clone())?;
        self.issue(dir, &identity, NODE_CERT_VALIDITY_DEFAULT, &[])
    }

    /// Generates an ed25519 key for `identity` (of this CA's cluster) and
    /// a certificate valid for `validity` (within
    /// [`NODE_CERT_VALIDITY_MIN`]..=[`NODE_CERT_VALIDITY_MAX`]) with the
    /// identity's URI SAN, the [`DEV_SERVER_NAMES`] and `server_names` as
    /// DNS/IP SANs, and both server and client auth. Writes `node.pem`,
    /// `node.key` (0600) and a copy of `ca.pem` into `dir`, replacing an
    /// older certificate and key (renewal).
    pub fn issue(
        &self,
        dir: &Path,
        identity: &PeerIdentity,
        validity: Duration,
        server_names: &[String],
    ) -> Result<TlsFiles> {
        if validity < NODE_CERT_VALIDITY_MIN || validity > NODE_CERT_VALIDITY_MAX {
            return Err(Error::InvalidRequest(format!(
                "certificate validity {validity:?} is outside [{NODE_CERT_VALIDITY_MIN:?}, {NODE_CERT_VALIDITY_MAX:?}]"
            )));
        }
        if identity.cluster_id != self.cluster_id {
            return Err(Error::WrongCluster {
                expected: self.cluster_id.clone(),
                got: identity.cluster_id.to_string(),
            });
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(rcgen_error("generate node key"))?;
        let mut params = identity_cert_params(identity)?;
        params.subject_alt_names.extend(server_sans(
            DEV_SERVER_NAMES
                .iter()
                .copied()
                .chain(server_names.iter().map(String::as_str)),
        )?);
        set_validity(&mut params, validity)?;
        let cert = params
            .signed_by(&key, &self.ca.issuer)
            .map_err(rcgen_error("sign node certificate"))?;

        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let tls = TlsFiles::in_dir(dir);
        if tls.ca != self.dir.join(CA_CERT_FILE) {
            files::write_file(
                &tls.ca,
                self.ca.cert_pem.as_bytes(),
                0o644,
                Overwrite::Replace,
            )
            .map_err(file_error)?;
        }
        // Key before certificate: a reader that sees the new certificate
        // finds its key ([`crate::tls::live::LiveIdentity`] also refuses a
        // pair that does not match and keeps the old one).
        files::write_file(
            &tls.key,
            key.serialize_pem().as_bytes(),
            0o600,
            Overwrite::Replace,
        )
        .map_err(file_error)?;
        files::write_file(&tls.cert, cert.pem().as_bytes(), 0o644, Overwrite::Replace)
            .map_err(file_error)?;
        tracing::info!(
            cluster_id = %self.cluster_id,
            identity = %identity,
            validity_s = validity.as_secs(),
            "development certificate issued"
        );
        Ok(tls)
    }
}

/// The DNS/IP SANs of `names` (deduplicated, at most
/// [`SERVER_NAMES_MAX`]).
pub fn server_sans<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Vec<SanType>> {
    let mut seen: Vec<String> = Vec::new();
    let mut sans = Vec::new();
    for name in names {
        let lower = name.to_ascii_lowercase();
        if seen.contains(&lower) {
            continue;
        }
        if seen.len() >= SERVER_NAMES_MAX {
            return Err(Error::Oversize {
                what: "server names",
                limit: SERVER_NAMES_MAX,
                got: seen.len() + 1,
            });
        }
        sans.push(name_san(&lower)?);
        seen.push(lower);
    }
    Ok(sans)
}

/// Checks a certificate chain the control plane issued (PEM, at most
/// [`PEM_FILE_BYTES_MAX`] bytes and [`CHAIN_CERTS_MAX`] certificates): its
/// first certificate verifies as a client certificate against `ca`, names
/// exactly `identity` and carries `public_key` (the raw ed25519 key of
/// this node). Returns that certificate. Joining and renewing agents and
/// storage nodes check every certificate they are given with it.
pub fn check_issued_chain(
    chain_pem: &str,
    ca: &CertificateDer<'static>,
    identity: &PeerIdentity,
    public_key: &[u8],
) -> std::result::Result<CertificateDer<'static>, String> {
    if chain_pem.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(format!(
            "certificate chain of {} bytes; at most {PEM_FILE_BYTES_MAX}",
            chain_pem.len()
        ));
    }
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .take(CHAIN_CERTS_MAX + 1)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate chain PEM: {e}"))?;
    if chain.len() > CHAIN_CERTS_MAX {
        return Err(format!(
            "more than {CHAIN_CERTS_MAX} certificates in the chain"
        ));
    }
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or_else(|| "empty certificate chain".to_string())?;
    let intermediates: Vec<CertificateDer<'static>> = intermediates
        .iter()
        .filter(|c| c.as_ref() != ca.as_ref())
        .cloned()
        .collect();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| format!("the CA is not a trust anchor: {e}"))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| format!("build the certificate verifier: {e}"))?;
    verifier
        .verify_client_cert(leaf, &intermediates, rustls::pki_types::UnixTime::now())
        .map_err(|e| format!("the node certificate does not verify against the CA: {e}"))?;
    let named = PeerIdentity::from_cert_der(leaf.as_ref())
        .map_err(|e| format!("the node certificate: {e}"))?;
    if &named != identity {
        return Err(format!(
            "the node certificate names {}, not {}",
            named.uri(),
            identity.uri()
        ));
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("parse the node certificate: {e}"))?;
    if parsed.public_key().subject_public_key.data.as_ref() != public_key {
        return Err("the node certificate carries another public key than this node's".into());
    }
    Ok(leaf.clone())
}

/// PEM of a DER certificate (64-character base64 lines, `\n` line ends).
pub fn pem_certificate(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
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
pub fn ca_cluster(der: &[u8]) -> Result<ClusterId> {
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

/// The parameters of `identity`'s certificate: subject its id, the URI
/// SAN [`PeerIdentity::uri`] (what [`PeerIdentity::from_cert_der`] reads
/// back), not a CA, digital signature for both server and client auth,
/// with an authority key identifier. Validity, serial number and further
/// SANs (a storage node's DNS names and addresses: [`name_san`]) are the
/// caller's.
pub fn identity_cert_params(identity: &PeerIdentity) -> Result<CertificateParams> {
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

/// The subject alternative name of a server name: an IP address SAN when
/// `name` is one, else a DNS name SAN (lowercased; wildcards refused).
pub fn name_san(name: &str) -> Result<SanType> {
    if name.len() > SERVER_NAME_BYTES_MAX {
        return Err(Error::Oversize {
            what: "server name",
            limit: SERVER_NAME_BYTES_MAX,
            got: name.len(),
        });
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let lower = name.to_ascii_lowercase();
    let valid = rustls::pki_types::DnsName::try_from(lower.as_str()).is_ok();
    if !valid || lower.contains('*') {
        return Err(Error::InvalidRequest(format!(
            "server name {name:?} is neither an IP address nor a DNS name without wildcards"
        )));
    }
    Ok(SanType::DnsName(
        lower.try_into().map_err(rcgen_error("DNS name SAN"))?,
    ))
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
    use rustls::pki_types::pem::PemObject;

    // Goal: the PEM we write is what the PEM decoder reads back, for every
    // padding case, with standard base64 and `\n` line ends.
    // Method: round trips of 0..100 bytes; the text of three short ones.
    #[test]
    fn pem_round_trip() {
        for len in [0usize, 1, 2, 3, 4, 5, 47, 48, 49, 100] {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let pem = pem_certificate(&der);
            let back = CertificateDer::from_pem_slice(pem.as_bytes());
            if len == 0 {
                continue;
            }
            assert_eq!(back.expect("decodes").as_ref(), der.as_slice(), "{len}");
        }
        assert_eq!(
            pem_certificate(b"foobar"),
            "-----BEGIN CERTIFICATE-----\nZm9vYmFy\n-----END CERTIFICATE-----\n"
        );
        assert!(pem_certificate(b"fooba").contains("\nZm9vYmE=\n"));
        assert!(pem_certificate(b"foob").contains("\nZm9vYg==\n"));
    }

    // Goal: server names become IP or DNS SANs, deduplicated; wildcards,
    // garbage and too many names are refused. Method: table.
    #[test]
    fn server_names_to_sans() {
        let sans =
            server_sans(["LocalHost", "localhost", "10.0.0.1", "s1.example.com"]).expect("sans");
        assert_eq!(sans.len(), 3);
        assert!(matches!(sans[1], SanType::IpAddress(_)));
        for bad in ["*.example.com", "bad name", ""] {
            assert!(server_sans([bad]).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=SERVER_NAMES_MAX)
            .map(|i| format!("n{i}.example.com"))
            .collect();
        assert!(matches!(
            server_sans(many.iter().map(String::as_str)),
            Err(Error::Oversize { .. })
        ));
    }
}
