//! Key material the control plane holds, in files under a keys directory
//! and never in PostgreSQL.
//!
//! Layout under `<keys_dir>` (directories mode 0700, private keys 0600):
//!
//! * `platform/`: `ca.pem`, `ca.key` (the platform CA) and `server.pem`,
//!   `server.key` (the control plane's default TLS server certificate, for
//!   admins and joining agents): [`PlatformKeys`].
//! * `clusters/<cluster_id>/`: [`ClusterKeys`]
//!   * `ca.pem`, `ca.key`: the cluster CA, in the format of
//!     [`rap_authority::tls::DevCa`] (which loads it);
//!   * `signing.key`: the snapshot-signing key ([`SnapshotSigner`]);
//!   * `trust-root.bin`: the genesis `SignedTrustRoot` naming that key;
//!   * `server.pem`, `server.key`: the control plane's TLS server
//!     certificate from the cluster CA, for the name
//!     [`cluster_server_name`] (`<cluster_id>.cluster.rap`) and
//!     `localhost`, so an agent that pins the cluster CA reaches the
//!     control plane with that SNI;
//!   * `controlplane/`: `ca.pem`, `node.pem`, `node.key`: the control
//!     plane's client certificate (identity
//!     `rap://cluster/<c>/controlplane`) for mTLS to the cluster's storage
//!     nodes.
//!
//! Agent and storage node certificates are issued only for keys generated
//! on their node ([`ClusterKeys::issue_certificate`]: only the public key
//! travels), each naming its kind.

use crate::error::{Error, Result};
use rap_authority::files::{
    Overwrite, check_private_mode, read_bounded, read_private_key, sync_dir, write_file,
};
use rap_authority::identity::{IdentityKind, PeerIdentity, cluster_server_name};
use rap_authority::tls::{
    CA_CERT_FILE, CA_KEY_FILE, DevCa, LoadedCa, SERVER_NAME_BYTES_MAX, SERVER_NAMES_MAX, TlsFiles,
    ca_cert_params, distinguished_name, identity_cert_params, server_sans, set_validity,
};
use rap_proto::envelope::{SnapshotSigner, TrustRoot, VerifiedTrustRoot};
use rap_proto::ids::ClusterId;
use rap_proto::time::UnixMillis;
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// Largest PEM file (certificate, chain or private key) read from the keys
/// directory: a few certificates.
pub const PEM_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Largest `trust-root.bin` read: the wire limit of a signed trust root.
pub const TRUST_ROOT_FILE_BYTES_MAX: u64 = rap_proto::limits::TRUST_ROOT_BYTES_MAX as u64;

/// Default lifetime of a node certificate: short, renewed by its node.
pub use rap_authority::tls::NODE_CERT_VALIDITY_DEFAULT;

/// Longest node certificate lifetime issued.
pub use rap_authority::tls::NODE_CERT_VALIDITY_MAX;

/// Shortest node certificate lifetime issued.
pub use rap_authority::tls::NODE_CERT_VALIDITY_MIN;

/// How far `not_before` is set into the past, so a peer whose clock is a
/// little behind accepts a fresh certificate (the backdate
/// [`rap_authority::tls::set_validity`] applies).
pub const NOT_BEFORE_BACKDATE: Duration = rap_authority::tls::NOT_BEFORE_BACKDATE;

/// Lifetime of the platform CA.
pub const PLATFORM_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Lifetime of a control plane TLS server certificate (platform or cluster).
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A server certificate that expires sooner than this is replaced when the
/// keys are loaded (or [`ClusterKeys::renew_expiring`] runs).
pub const SERVER_CERT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Lifetime of the control plane's client certificate for a cluster's
/// storage nodes.
pub const CONTROLPLANE_CLIENT_CERT_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The control plane's client certificate is replaced when it expires
/// sooner than this.
pub const CONTROLPLANE_CLIENT_CERT_RENEW_BEFORE: Duration = Duration::from_secs(2 * 24 * 3600);

/// Length of a random certificate serial number in bytes (RFC 5280 allows
/// up to 20; at least 64 random bits are asked for).
pub const CERT_SERIAL_BYTES: usize = 16;

/// The platform keys' directory under the keys directory.
pub const PLATFORM_DIR: &str = "platform";
/// The directory of all clusters' keys under the keys directory.
pub const CLUSTERS_DIR: &str = "clusters";
/// The snapshot-signing key's file name.
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// The genesis trust root's file name.
pub const TRUST_ROOT_FILE: &str = "trust-root.bin";
/// A server certificate's file name.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// A server key's file name.
pub const SERVER_KEY_FILE: &str = "server.key";
/// The directory of the control plane's client certificate in a cluster's
/// keys directory.
pub const CONTROLPLANE_TLS_DIR: &str = "controlplane";

/// The name every control plane server certificate carries besides its own.
const LOCALHOST: &str = "localhost";

/// DER SubjectPublicKeyInfo of an ed25519 key, up to the 32 key bytes:
/// SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

const _: () = assert!(NODE_CERT_VALIDITY_DEFAULT.as_secs() <= NODE_CERT_VALIDITY_MAX.as_secs());
const _: () = assert!(NODE_CERT_VALIDITY_MAX.as_secs() <= SERVER_CERT_VALIDITY.as_secs());
const _: () = assert!(SERVER_CERT_RENEW_BEFORE.as_secs() < SERVER_CERT_VALIDITY.as_secs());
const _: () = assert!(SERVER_CERT_VALIDITY.as_secs() < PLATFORM_CA_VALIDITY.as_secs());
const _: () = assert!(
    CONTROLPLANE_CLIENT_CERT_VALIDITY.as_secs()
        <= rap_authority::tls::NODE_CERT_VALIDITY_MAX.as_secs()
);
const _: () = assert!(
    CONTROLPLANE_CLIENT_CERT_RENEW_BEFORE.as_secs() < CONTROLPLANE_CLIENT_CERT_VALIDITY.as_secs()
);
const _: () = assert!(CERT_SERIAL_BYTES >= 8 && CERT_SERIAL_BYTES <= 20);

/// Hex blake3 of an ed25519 public key (64 characters).
pub fn public_key_fingerprint(key: &[u8; 32]) -> String {
    blake3::hash(key).to_hex().to_string()
}

/// Hex blake3 of a DER certificate (64 characters).
pub fn certificate_fingerprint(der: &[u8]) -> String {
    blake3::hash(der).to_hex().to_string()
}

/// A server certificate and its key on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerCertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
}

impl ServerCertFiles {
    /// The standard names in `dir`: `server.pem`, `server.key`.
    pub fn in_dir(dir: &Path) -> Self {
        ServerCertFiles {
            cert: dir.join(SERVER_CERT_FILE),
            key: dir.join(SERVER_KEY_FILE),
        }
    }
}

/// A certificate issued for a key that never left its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The node certificate, then the cluster CA certificate (PEM).
    pub chain_pem: String,
    /// The serial number, lowercase hex without separators (positive,
    /// [`CERT_SERIAL_BYTES`] bytes, so 2 × that many characters).
    pub serial_hex: String,
    /// Start of validity (now − [`NOT_BEFORE_BACKDATE`]), whole seconds.
    pub not_before: SystemTime,
    /// End of validity, whole seconds.
    pub not_after: SystemTime,
}

/// The platform CA and the control plane's default server certificate.
pub struct PlatformKeys {
    dir: PathBuf,
    ca_cert_pem: String,
    ca_cert_der: CertificateDer<'static>,
    server_names: Vec<String>,
}

impl fmt::Debug for PlatformKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformKeys")
            .field("dir", &self.dir)
            .field("server_names", &self.server_names)
            .finish_non_exhaustive()
    }
}

impl PlatformKeys {
    /// Loads the platform keys from `<keys_dir>/platform`, creating the CA
    /// when neither `ca.pem` nor `ca.key` exists. The server certificate is
    /// (re)issued when it is missing, does not match its key or the CA,
    /// expires within [`SERVER_CERT_RENEW_BEFORE`] or lacks one of
    /// `server_names` (DNS names or IP addresses; `localhost` and
    /// 127.0.0.1 are always added).
    pub fn create_or_load(keys_dir: &Path, server_names: &[String]) -> Result<Self> {
        let names = ServerNames::parse(server_names)?;
        let _guard = RENEWAL.lock().unwrap_or_else(PoisonError::into_inner);
        let dir = keys_dir.join(PLATFORM_DIR);
        create_private_dir_all(&dir)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (false, false) => create_platform_ca(&dir)?,
            (true, true) => {}
            _ => {
                return Err(Error::Keys(format!(
                    "{} holds only one of {CA_CERT_FILE} and {CA_KEY_FILE}; \
                     restore the other or remove both to create a new platform CA",
                    dir.display()
                )));
            }
        }
        let ca = LoadedCa::load(&dir).map_err(authority_error(&dir))?;
        let files = ServerCertFiles::in_dir(&dir);
        if !cert_is_current(
            &files.cert,
            &files.key,
            &ca.cert_der,
            &CertCheck::Server(&names.verify),
            SERVER_CERT_RENEW_BEFORE,
        )? {
            issue_server_cert(
                &ca,
                &files,
                "rap control plane",
                &names.sans()?,
                SERVER_CERT_VALIDITY,
            )?;
            tracing::info!(dir = %dir.display(), names = ?names.text, "platform server certificate issued");
        }
        Ok(PlatformKeys {
            dir,
            ca_cert_pem: ca.cert_pem,
            ca_cert_der: ca.cert_der,
            server_names: names.text,
        })
    }

    /// The platform keys' directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The platform CA certificate (PEM): what admins and joining agents
    /// pin.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The platform CA certificate (DER).
    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.ca_cert_der
    }

    /// Hex blake3 of the platform CA certificate's DER (64 characters).
    pub fn ca_fingerprint(&self) -> String {
        certificate_fingerprint(self.ca_cert_der.as_ref())
    }

    /// The default server certificate and key.
    pub fn server_cert_files(&self) -> ServerCertFiles {
        ServerCertFiles::in_dir(&self.dir)
    }

    /// The names the server certificate was checked for.
    pub fn server_names(&self) -> &[String] {
        &self.server_names
    }
}

/// One cluster's CA, snapshot-signing key, genesis trust root and the
/// control plane's certificates from that CA.
pub struct ClusterKeys {
    dir: PathBuf,
    cluster_id: ClusterId,
    dev_ca: DevCa,
    ca: LoadedCa,
    signer: SnapshotSigner,
    trust_root: VerifiedTrustRoot,
}

/// Serialises certificate renewals in this process (key then certificate
/// are written: two renewals at once could leave a mismatched pair). One
/// control plane process owns a keys directory.
static RENEWAL: Mutex<()> = Mutex::new(());

impl fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterKeys")
            .field("dir", &self.dir)
            .field("cluster_id", &self.cluster_id)
            .field("signing_key_id", &self.signer.key_id())
            .finish_non_exhaustive()
    }
}

impl ClusterKeys {
    /// The directory of `cluster_id`'s keys under `keys_dir`.
    pub fn dir_for(keys_dir: &Path, cluster_id: &ClusterId) -> PathBuf {
        keys_dir.join(CLUSTERS_DIR).join(cluster_id.as_str())
    }

    /// Creates all key material of a new cluster. Everything is written to a
    /// staging directory first and renamed into place, so a crash leaves
    /// either no keys or all of them. Refuses when the cluster already has
    /// keys ([`Error::AlreadyExists`]).
    pub fn create(keys_dir: &Path, cluster_id: &ClusterId) -> Result<Self> {
        let clusters = keys_dir.join(CLUSTERS_DIR);
        let dir = Self::dir_for(keys_dir, cluster_id);
        let exists = || Error::AlreadyExists {
            kind: "cluster keys",
            id: cluster_id.to_string(),
        };
        if dir_has_entries(&dir)? {
            return Err(exists());
        }
        create_private_dir_all(&clusters)?;
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix)
            .map_err(|e| Error::Keys(format!("read operating-system randomness: {e}")))?;
        let staging = clusters.join(format!(".{cluster_id}.staging-{}", hex::encode(suffix)));
        create_private_dir(&staging)?;
        if let Err(e) = write_cluster_keys(&staging, cluster_id) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&staging, &dir) {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(match e.kind() {
                // Someone else created it meanwhile.
                std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists => {
                    exists()
                }
                _ => io_error("rename", &staging, e),
            });
        }
        sync_dir(&clusters).map_err(file_error)?;
        tracing::info!(cluster_id = %cluster_id, dir = %dir.display(), "cluster keys created");
        Self::load(keys_dir, cluster_id)
    }

    /// Loads keys written by [`ClusterKeys::create`] and checks them: the CA
    /// names `cluster_id`, its key matches, the trust root is a valid
    /// genesis of `cluster_id` naming the signing key, and no private key
    /// is readable by group or others. Then renews an expiring server or
    /// client certificate ([`ClusterKeys::renew_expiring`]).
    pub fn load(keys_dir: &Path, cluster_id: &ClusterId) -> Result<Self> {
        let dir = Self::dir_for(keys_dir, cluster_id);
        if !dir.join(CA_CERT_FILE).exists() {
            return Err(Error::not_found("cluster keys", cluster_id.as_str()));
        }
        let dev_ca = DevCa::load(&dir).map_err(authority_error(&dir))?;
        if dev_ca.cluster_id() != cluster_id {
            return Err(Error::Keys(format!(
                "{} is the CA of cluster {}, not {cluster_id}",
                dir.join(CA_CERT_FILE).display(),
                dev_ca.cluster_id()
            )));
        }
        let ca = LoadedCa::load(&dir).map_err(authority_error(&dir))?;
        let signing_path = dir.join(SIGNING_KEY_FILE);
        let signer = SnapshotSigner::read_key_file(&signing_path)
            .map_err(|e| Error::Keys(format!("{}: {e}", signing_path.display())))?;
        let root_path = dir.join(TRUST_ROOT_FILE);
        let root_bytes = read_bounded(&root_path, TRUST_ROOT_FILE_BYTES_MAX).map_err(file_error)?;
        let trust_root = VerifiedTrustRoot::verify_genesis(&root_bytes, cluster_id, None)
            .map_err(|e| Error::Keys(format!("{}: {e}", root_path.display())))?;
        if trust_root.key(&signer.key_id()).is_none() {
            return Err(Error::Keys(format!(
                "{} does not name the key in {}",
                root_path.display(),
                signing_path.display()
            )));
        }
        let keys = ClusterKeys {
            dir,
            cluster_id: cluster_id.clone(),
            dev_ca,
            ca,
            signer,
            trust_root,
        };
        keys.renew_expiring()?;
        Ok(keys)
    }

    /// Replaces the cluster server certificate and the control plane's
    /// client certificate when missing, unusable or close to expiry
    /// ([`SERVER_CERT_RENEW_BEFORE`],
    /// [`CONTROLPLANE_CLIENT_CERT_RENEW_BEFORE`]). Returns whether the
    /// server certificate was replaced: then hand the keys to
    /// [`crate::tls::ControlPlaneTls::add_cluster`] again.
    pub fn renew_expiring(&self) -> Result<bool> {
        let _guard = RENEWAL.lock().unwrap_or_else(PoisonError::into_inner);
        let server_name = cluster_server_name(&self.cluster_id);
        let names = ServerNames::parse(std::slice::from_ref(&server_name))?;
        let files = self.server_cert_files();
        let mut server_renewed = false;
        if !cert_is_current(
            &files.cert,
            &files.key,
            self.ca.cert_der.as_ref(),
            &CertCheck::Server(&names.verify),
            SERVER_CERT_RENEW_BEFORE,
        )? {
            issue_server_cert(
                &self.ca,
                &files,
                &format!("rap control plane for cluster {}", self.cluster_id),
                &names.sans()?,
                SERVER_CERT_VALIDITY,
            )?;
            tracing::info!(cluster_id = %self.cluster_id, "cluster server certificate issued");
            server_renewed = true;
        }
        let client = TlsFiles::in_dir(&self.dir.join(CONTROLPLANE_TLS_DIR));
        if !cert_is_current(
            &client.cert,
            &client.key,
            self.ca.cert_der.as_ref(),
            &CertCheck::Client(&PeerIdentity::control_plane(self.cluster_id.clone())),
            CONTROLPLANE_CLIENT_CERT_RENEW_BEFORE,
        )? {
            issue_controlplane_client(&self.dev_ca, &self.dir, &self.cluster_id)?;
        }
        Ok(server_renewed)
    }

    /// The cluster.
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }

    /// This cluster's keys directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca.cert_pem
    }

    /// The cluster CA certificate (DER).
    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.ca.cert_der
    }

    /// Hex blake3 of the cluster CA certificate's DER (64 characters):
    /// what a join command pins.
    pub fn ca_fingerprint(&self) -> String {
        certificate_fingerprint(self.ca.cert_der.as_ref())
    }

    /// The snapshot-signing key.
    pub fn signer(&self) -> &SnapshotSigner {
        &self.signer
    }

    /// The signing key's id, full hex (64 characters).
    pub fn signing_key_id_hex(&self) -> String {
        self.signer.key_id().0.to_hex()
    }

    /// The genesis trust root (generation 1), verified.
    pub fn trust_root(&self) -> &VerifiedTrustRoot {
        &self.trust_root
    }

    /// The genesis trust root's bytes (an encoded `SignedTrustRoot`).
    pub fn trust_root_bytes(&self) -> &[u8] {
        self.trust_root.bytes()
    }

    /// Hex blake3 of the genesis trust root: what a join command pins.
    pub fn trust_root_hash_hex(&self) -> String {
        self.trust_root.root_hash().to_hex()
    }

    /// The server name of this cluster's control plane endpoint
    /// ([`cluster_server_name`]).
    pub fn server_name(&self) -> String {
        cluster_server_name(&self.cluster_id)
    }

    /// The control plane's server certificate and key from the cluster CA.
    pub fn server_cert_files(&self) -> ServerCertFiles {
        ServerCertFiles::in_dir(&self.dir)
    }

    /// The files for mTLS to this cluster's storage nodes (`ca.pem`,
    /// `node.pem`, `node.key`; identity `rap://cluster/<c>/controlplane`). They were
    /// checked (and renewed when close to expiry) by [`ClusterKeys::load`];
    /// a long-lived holder calls [`ClusterKeys::renew_expiring`] before
    /// reading them again.
    pub fn controlplane_tls(&self) -> TlsFiles {
        TlsFiles::in_dir(&self.dir.join(CONTROLPLANE_TLS_DIR))
    }

    /// Issues `identity` (an agent or a storage node of this cluster) an
    /// X.509 certificate for an ed25519 key generated on its node (only
    /// the raw 32-byte public key is given): the identity's URI SAN, for a
    /// storage node also `server_names` (the DNS names and addresses others
    /// dial it by), client and server auth, a random serial, valid from
    /// now − [`NOT_BEFORE_BACKDATE`] for `validity` (within
    /// [`NODE_CERT_VALIDITY_MIN`]..=[`NODE_CERT_VALIDITY_MAX`]).
    pub fn issue_certificate(
        &self,
        identity: &PeerIdentity,
        public_key: &[u8; 32],
        validity: Duration,
        server_names: &[String],
    ) -> Result<IssuedCertificate> {
        if !matches!(identity.kind, IdentityKind::Node | IdentityKind::Storage) {
            return Err(Error::InvalidArgument(format!(
                "only agents and storage nodes are issued certificates for their own keys, not {}",
                identity.kind
            )));
        }
        if identity.cluster_id != self.cluster_id {
            return Err(Error::InvalidArgument(format!(
                "{identity} is not of cluster {}",
                self.cluster_id
            )));
        }
        if identity.kind == IdentityKind::Node && !server_names.is_empty() {
            return Err(Error::InvalidArgument(
                "agent certificates carry no server names".into(),
            ));
        }
        if validity < NODE_CERT_VALIDITY_MIN || validity > NODE_CERT_VALIDITY_MAX {
            return Err(Error::InvalidArgument(format!(
                "node certificate validity {validity:?} is outside [{NODE_CERT_VALIDITY_MIN:?}, {NODE_CERT_VALIDITY_MAX:?}]"
            )));
        }
        let verifying = ed25519_dalek::VerifyingKey::from_bytes(public_key)
            .map_err(|e| Error::InvalidArgument(format!("not an ed25519 public key: {e}")))?;
        if verifying.is_weak() {
            return Err(Error::InvalidArgument(
                "ed25519 public key is of small order".into(),
            ));
        }
        let mut spki_der = Vec::with_capacity(ED25519_SPKI_PREFIX.len() + public_key.len());
        spki_der.extend_from_slice(&ED25519_SPKI_PREFIX);
        spki_der.extend_from_slice(public_key);
        let spki = rcgen::SubjectPublicKeyInfo::from_der(&spki_der)
            .map_err(|e| Error::Internal(format!("ed25519 SubjectPublicKeyInfo: {e}")))?;

        let serial = random_serial()?;
        let mut params = identity_cert_params(identity).map_err(cert_error)?;
        params
            .subject_alt_names
            .extend(server_sans(server_names.iter().map(String::as_str)).map_err(cert_error)?);
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let (not_before, not_after) = set_validity(&mut params, validity).map_err(cert_error)?;
        let cert = params
            .signed_by(&spki, &self.ca.issuer)
            .map_err(rcgen_error("sign node certificate"))?;
        let mut chain_pem = cert.pem();
        if !chain_pem.ends_with('\n') {
            chain_pem.push('\n');
        }
        chain_pem.push_str(&self.ca.cert_pem);
        tracing::info!(
            cluster_id = %self.cluster_id,
            identity = %identity,
            serial = %hex::encode(serial),
            key = %public_key_fingerprint(public_key),
            validity_s = validity.as_secs(),
            "certificate issued"
        );
        Ok(IssuedCertificate {
            chain_pem,
            serial_hex: hex::encode(serial),
            not_before,
            not_after,
        })
    }
}

/// Issues the control plane's own client certificate towards `cluster_id`'s
/// storage nodes into `<dir>/controlplane` (its key is the control plane's
/// own, made here on its host).
fn issue_controlplane_client(dev_ca: &DevCa, dir: &Path, cluster_id: &ClusterId) -> Result<()> {
    dev_ca
        .issue(
            &dir.join(CONTROLPLANE_TLS_DIR),
            &PeerIdentity::control_plane(cluster_id.clone()),
            CONTROLPLANE_CLIENT_CERT_VALIDITY,
            &[],
        )
        .map(|_| ())
        .map_err(authority_error(dir))
}

/// Writes a new cluster's key material into (empty) `dir`.
fn write_cluster_keys(dir: &Path, cluster_id: &ClusterId) -> Result<()> {
    let dev_ca = DevCa::create(dir, cluster_id).map_err(authority_error(dir))?;
    let signer = SnapshotSigner::generate()
        .map_err(|e| Error::Keys(format!("generate signing key: {e}")))?;
    let signing_path = dir.join(SIGNING_KEY_FILE);
    signer
        .write_key_file(&signing_path)
        .map_err(|e| Error::Keys(format!("{}: {e}", signing_path.display())))?;
    let root = TrustRoot::genesis(cluster_id, &[&signer], UnixMillis::now())
        .map_err(|e| Error::Internal(format!("genesis trust root: {e}")))?;
    write_file(
        &dir.join(TRUST_ROOT_FILE),
        root.bytes(),
        0o644,
        Overwrite::Never,
    )
    .map_err(file_error)?;
    let ca = LoadedCa::load(dir).map_err(authority_error(dir))?;
    let names = ServerNames::parse(&[cluster_server_name(cluster_id)])?;
    issue_server_cert(
        &ca,
        &ServerCertFiles::in_dir(dir),
        &format!("rap control plane for cluster {cluster_id}"),
        &names.sans()?,
        SERVER_CERT_VALIDITY,
    )?;
    issue_controlplane_client(&dev_ca, dir, cluster_id)?;
    sync_dir(dir).map_err(file_error)
}

/// Creates a self-signed ed25519 platform CA in `dir`.
fn create_platform_ca(dir: &Path) -> Result<()> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(rcgen_error("generate platform CA key"))?;
    let mut params = ca_cert_params("rap platform CA");
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    set_validity(&mut params, PLATFORM_CA_VALIDITY).map_err(cert_error)?;
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_error("self-sign platform CA"))?;
    write_file(
        &dir.join(CA_KEY_FILE),
        key.serialize_pem().as_bytes(),
        0o600,
        Overwrite::Never,
    )
    .map_err(file_error)?;
    write_file(
        &dir.join(CA_CERT_FILE),
        cert.pem().as_bytes(),
        0o644,
        Overwrite::Never,
    )
    .map_err(file_error)?;
    tracing::info!(dir = %dir.display(), "platform CA created");
    Ok(())
}

/// Generates a key and a server certificate for `sans`, signed by `ca`;
/// writes the key (0600) then the certificate followed by the CA
/// certificate (so a client that pins the CA by fingerprint finds it in the
/// chain the server presents), each replacing the old file atomically.
fn issue_server_cert(
    ca: &LoadedCa,
    files: &ServerCertFiles,
    common_name: &str,
    sans: &[SanType],
    validity: Duration,
) -> Result<()> {
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(rcgen_error("generate server key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.subject_alt_names = sans.to_vec();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    set_validity(&mut params, validity).map_err(cert_error)?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(rcgen_error("sign server certificate"))?;
    write_file(
        &files.key,
        key.serialize_pem().as_bytes(),
        0o600,
        Overwrite::Replace,
    )
    .map_err(file_error)?;
    let chain = format!("{}{}", cert.pem(), ca.cert_pem);
    write_file(&files.cert, chain.as_bytes(), 0o644, Overwrite::Replace).map_err(file_error)
}

/// Checked server names: as given (lowercased), as SANs and as names to
/// verify against. `localhost` and 127.0.0.1 are always included.
struct ServerNames {
    text: Vec<String>,
    verify: Vec<ServerName<'static>>,
}

impl ServerNames {
    fn parse(names: &[String]) -> Result<Self> {
        // localhost and 127.0.0.1 take two of the certificate's names.
        let limit = SERVER_NAMES_MAX - 2;
        if names.len() > limit {
            return Err(Error::Oversize {
                what: "server names",
                limit,
                got: names.len(),
            });
        }
        let mut text: Vec<String> = Vec::with_capacity(names.len() + 2);
        let mut verify = Vec::with_capacity(names.len() + 2);
        let all = names
            .iter()
            .map(String::as_str)
            .chain([LOCALHOST, "127.0.0.1"]);
        for name in all {
            if name.len() > SERVER_NAME_BYTES_MAX {
                return Err(Error::Oversize {
                    what: "server name",
                    limit: SERVER_NAME_BYTES_MAX,
                    got: name.len(),
                });
            }
            let lower = name.to_ascii_lowercase();
            if text.contains(&lower) {
                continue;
            }
            let server_name = ServerName::try_from(lower.clone())
                .map_err(|e| Error::InvalidArgument(format!("server name {name:?}: {e}")))?;
            if let ServerName::DnsName(dns) = &server_name
                && dns.as_ref().contains('*')
            {
                return Err(Error::InvalidArgument(format!(
                    "server name {name:?}: wildcards are not issued"
                )));
            }
            text.push(lower);
            verify.push(server_name);
        }
        Ok(ServerNames { text, verify })
    }

    fn sans(&self) -> Result<Vec<SanType>> {
        server_sans(self.text.iter().map(String::as_str)).map_err(cert_error)
    }
}

/// What a certificate must be good for.
enum CertCheck<'a> {
    /// A server certificate for each of these names.
    Server(&'a [ServerName<'static>]),
    /// A client certificate naming this identity.
    Client(&'a PeerIdentity),
}

/// Whether `cert` + `key` exist, match, chain to `ca_der`, pass `check`
/// and stay valid for longer than `renew_before`. A key file readable by
/// group or others is an error, not a reason to replace it silently.
fn cert_is_current(
    cert: &Path,
    key: &Path,
    ca_der: &[u8],
    check: &CertCheck<'_>,
    renew_before: Duration,
) -> Result<bool> {
    if !cert.exists() || !key.exists() {
        return Ok(false);
    }
    check_private_mode(key).map_err(file_error)?;
    let provider = rustls::crypto::ring::default_provider();
    let files = ServerCertFiles {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    };
    let certified = match load_certified_key(&files, &provider) {
        Ok(certified) => certified,
        Err(e) => {
            tracing::warn!(cert = %cert.display(), error = %e, "certificate unusable; replacing it");
            return Ok(false);
        }
    };
    let Some(end_entity) = certified.cert.first() else {
        return Ok(false);
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(end_entity.as_ref()) else {
        return Ok(false);
    };
    let not_after = u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0);
    let now = now_since_epoch()?;
    if Duration::from_secs(not_after) <= now + renew_before {
        return Ok(false);
    }
    let mut roots = rustls::RootCertStore::empty();
    if roots.add(CertificateDer::from(ca_der.to_vec())).is_err() {
        return Err(Error::Keys(
            "CA certificate is not a usable trust anchor".into(),
        ));
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(provider);
    let at = UnixTime::now();
    match check {
        CertCheck::Server(names) => {
            let verifier =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| Error::Internal(format!("server certificate verifier: {e}")))?;
            Ok(names.iter().all(|name| {
                verifier
                    .verify_server_cert(end_entity, &[], name, &[], at)
                    .is_ok()
            }))
        }
        CertCheck::Client(identity) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| Error::Internal(format!("client certificate verifier: {e}")))?;
            let named = PeerIdentity::from_cert_der(end_entity.as_ref()).ok();
            Ok(verifier.verify_client_cert(end_entity, &[], at).is_ok()
                && named.as_ref() == Some(*identity))
        }
    }
}

/// Loads a certificate chain and its private key (refusing a key file
/// readable by group or others) as a rustls [`CertifiedKey`], checking
/// that the key belongs to the certificate.
pub(crate) fn load_certified_key(
    files: &ServerCertFiles,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>> {
    let cert_pem = read_bounded(&files.cert, PEM_FILE_BYTES_MAX).map_err(file_error)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Keys(format!("{}: {e}", files.cert.display())))?;
    if chain.is_empty() {
        return Err(Error::Keys(format!(
            "{} holds no certificate",
            files.cert.display()
        )));
    }
    let key_pem = read_private_key(&files.key, PEM_FILE_BYTES_MAX).map_err(file_error)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| Error::Keys(format!("{} holds no private key: {e}", files.key.display())))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        Error::Keys(format!(
            "{} and {} do not make a usable pair: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    Ok(Arc::new(certified))
}

/// [`CERT_SERIAL_BYTES`] random bytes, positive (top bit clear) and with a
/// non-zero first byte, so the encoding has exactly that length.
fn random_serial() -> Result<[u8; CERT_SERIAL_BYTES]> {
    let mut serial = [0u8; CERT_SERIAL_BYTES];
    getrandom::fill(&mut serial)
        .map_err(|e| Error::Keys(format!("read operating-system randomness: {e}")))?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

/// Now since the Unix epoch, in whole seconds (X.509 times have seconds).
fn now_since_epoch() -> Result<Duration> {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| Error::Internal(format!("system clock before 1970: {e}")))?;
    Ok(Duration::from_secs(since.as_secs()))
}

fn rcgen_error(what: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |e| Error::Internal(format!("{what}: {e}"))
}

fn authority_error(path: &Path) -> impl FnOnce(rap_authority::Error) -> Error + '_ {
    move |e| Error::Keys(format!("{}: {e}", path.display()))
}

fn io_error(verb: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Keys(format!("{verb} {}: {e}", path.display()))
}

/// A [`rap_authority::files`] error (its message names the path).
fn file_error(e: std::io::Error) -> Error {
    Error::Keys(e.to_string())
}

/// A certificate-building error from [`rap_authority::tls`].
fn cert_error(e: rap_authority::Error) -> Error {
    Error::Internal(e.to_string())
}

/// Whether `dir` exists and has any entry.
fn dir_has_entries(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("list", dir, e)),
    }
}

/// Creates `dir` and missing parents with mode 0700.
fn create_private_dir_all(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error("create", dir, e))
}

/// Creates the new directory `dir` with mode 0700.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error("create", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rap_proto::ids::NodeId;
    use std::os::unix::fs::PermissionsExt;

    fn cluster(id: &str) -> ClusterId {
        ClusterId::new(id).expect("cluster id")
    }

    fn node(id: &str) -> NodeId {
        NodeId::new(id).expect("node id")
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    fn ed25519_public_key() -> (KeyPair, [u8; 32]) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let public: [u8; 32] = key.public_key_raw().try_into().expect("32 bytes");
        (key, public)
    }

    fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .expect("PEM certificates")
    }

    fn client_verifier(
        ca: &CertificateDer<'static>,
    ) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).expect("root");
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier")
    }

    fn server_verifier(ca: &CertificateDer<'static>) -> Arc<rustls::client::WebPkiServerVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).expect("root");
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier")
    }

    fn verify_server(ca: &CertificateDer<'static>, files: &ServerCertFiles, name: &str) -> bool {
        let pem = std::fs::read_to_string(&files.cert).expect("read cert");
        verifies_as(ca, &pem_certs(&pem)[0], name)
    }

    /// Whether `cert` is a valid server certificate of `ca` for `name`.
    fn verifies_as(ca: &CertificateDer<'static>, cert: &CertificateDer<'_>, name: &str) -> bool {
        server_verifier(ca)
            .verify_server_cert(
                cert,
                &[],
                &ServerName::try_from(name.to_string()).expect("name"),
                &[],
                UnixTime::now(),
            )
            .is_ok()
    }

    // Goal: created keys load back identically, in the DevCa format, with a
    // genesis trust root naming the signing key, a server certificate for
    // `<cluster>.cluster.rap` and a `controlplane` client certificate; a
    // second create is refused. Method: create, load, compare.
    #[test]
    fn create_load_round_trip() {
        let keys_dir = tempfile::tempdir().expect("tempdir");
        let id = cluster("alpha");
        let created = ClusterKeys::create(keys_dir.path(), &id).expect("create");
        let loaded = ClusterKeys::load(keys_dir.path(), &id).expect("load");
        assert_eq!(created.ca_fingerprint(), loaded.ca_fingerprint());
        assert_eq!(created.ca_fingerprint().len(), 64);
        assert!(
            created
                .ca_fingerprint()
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        );
        assert_eq!(created.ca_cert_pem(), loaded.ca_cert_pem());
        assert_eq!(created.signing_key_id_hex(), loaded.signing_key_id_hex());
        assert_eq!(created.signing_key_id_hex().len(), 64);
        assert_eq!(created.trust_root_bytes(), loaded.trust_root_bytes());
        assert_eq!(created.trust_root_hash_hex(), loaded.trust_root_hash_hex());
        assert_eq!(loaded.trust_root().generation().0, 1);
        assert!(loaded.trust_root().key(&loaded.signer().key_id()).is_some());
        VerifiedTrustRoot::verify_genesis(
            loaded.trust_root_bytes(),
            &id,
            Some(loaded.trust_root().root_hash()),
        )
        .expect("genesis verifies");

        let dev_ca = DevCa::load(loaded.dir()).expect("DevCa loads the cluster CA");
        assert_eq!(dev_ca.cluster_id(), &id);
        assert_eq!(dev_ca.cert_pem(), loaded.ca_cert_pem());

        assert_eq!(loaded.server_name(), "alpha.cluster.rap");
        let files = loaded.server_cert_files();
        assert!(verify_server(
            loaded.ca_cert_der(),
            &files,
            "alpha.cluster.rap"
        ));
        assert!(verify_server(loaded.ca_cert_der(), &files, "localhost"));
        assert!(!verify_server(
            loaded.ca_cert_der(),
            &files,
            "beta.cluster.rap"
        ));

        let tls = loaded.controlplane_tls();
        assert_eq!(
            tls.identity().expect("identity"),
            PeerIdentity::control_plane(id.clone())
        );
        rap_authority::tls::live::LiveIdentity::load(tls).expect("client identity loads");

        // Nothing was renewed on load: the server certificate is current.
        let before = std::fs::read(&files.cert).expect("read");
        assert!(!loaded.renew_expiring().expect("renew"));
        assert_eq!(before, std::fs::read(&files.cert).expect("read"));

        assert!(matches!(
            ClusterKeys::create(keys_dir.path(), &id),
            Err(Error::AlreadyExists { .. })
        ));
        assert!(matches!(
            ClusterKeys::load(keys_dir.path(), &cluster("missing")),
            Err(Error::NotFound { .. })
        ));
        // No staging directory is left behind.
        let entries: Vec<_> = std::fs::read_dir(keys_dir.path().join(CLUSTERS_DIR))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("alpha")]);
    }

    // Goal: every private key file is 0600 and key directories are 0700.
    // Method: stat after create.
    #[test]
    fn key_files_are_private() {
        let keys_dir = tempfile::tempdir().expect("tempdir");
        let keys = ClusterKeys::create(keys_dir.path(), &cluster("alpha")).expect("create");
        let platform =
            PlatformKeys::create_or_load(keys_dir.path(), &["cp.example.com".to_string()])
                .expect("platform");
        for path in [
            keys.dir().join(CA_KEY_FILE),
            keys.dir().join(SIGNING_KEY_FILE),
            keys.server_cert_files().key,
            keys.controlplane_tls().key,
            platform.dir().join(CA_KEY_FILE),
            platform.server_cert_files().key,
        ] {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        for dir in [
            keys_dir.path().join(CLUSTERS_DIR),
            keys.dir().to_path_buf(),
            platform.dir().to_path_buf(),
        ] {
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        }
    }

    // Goal: a node certificate for a foreign key carries that key, the URI
    // SAN of its kind, both EKUs, the requested validity and a random
    // serial, and chains to the cluster CA (and not to another); a storage
    // certificate also carries its server names. Method: parse with
    // x509-parser, verify with webpki.
    #[test]
    fn issued_node_certificate() {
        let keys_dir = tempfile::tempdir().expect("tempdir");
        let id = cluster("alpha");
        let keys = ClusterKeys::create(keys_dir.path(), &id).expect("create");
        let other = ClusterKeys::create(keys_dir.path(), &cluster("beta")).expect("create");
        let (_key, public) = ed25519_public_key();
        let validity = Duration::from_secs(2 * 3600);
        let agent = PeerIdentity::node(id.clone(), node("n-1")).expect("id");
        let issued = keys
            .issue_certificate(&agent, &public, validity, &[])
            .expect("issue");

        let chain = pem_certs(&issued.chain_pem);
        assert_eq!(chain.len(), 2);
        assert_eq!(&chain[1], keys.ca_cert_der());
        let (_, cert) = x509_parser::parse_x509_certificate(chain[0].as_ref()).expect("parse");
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            &public[..]
        );
        let uris: Vec<String> = cert
            .subject_alternative_name()
            .expect("san")
            .expect("has san")
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(uris, vec!["rap://cluster/alpha/node/n-1".to_string()]);
        let eku = cert
            .extended_key_usage()
            .expect("eku")
            .expect("has eku")
            .value;
        assert!(eku.client_auth && eku.server_auth);
        assert!(!cert.is_ca());

        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after epoch")
                .as_secs() as i64
        };
        assert_eq!(secs(issued.not_before), not_before);
        assert_eq!(secs(issued.not_after), not_after);
        assert_eq!(
            (not_after - not_before) as u64,
            (validity + NOT_BEFORE_BACKDATE).as_secs()
        );
        let now = secs(SystemTime::now());
        assert!((now - (not_before + NOT_BEFORE_BACKDATE.as_secs() as i64)).abs() <= 5);

        assert_eq!(issued.serial_hex.len(), 2 * CERT_SERIAL_BYTES);
        assert_eq!(issued.serial_hex, hex::encode(cert.raw_serial()));
        assert_eq!(issued.serial_hex, issued.serial_hex.to_lowercase());
        let again = keys
            .issue_certificate(&agent, &public, validity, &[])
            .expect("issue");
        assert_ne!(issued.serial_hex, again.serial_hex);

        assert_eq!(
            PeerIdentity::from_cert_der(chain[0].as_ref()).expect("identity"),
            agent
        );
        let at = UnixTime::now();
        client_verifier(keys.ca_cert_der())
            .verify_client_cert(&chain[0], &[], at)
            .expect("chains to the cluster CA");
        assert!(
            client_verifier(other.ca_cert_der())
                .verify_client_cert(&chain[0], &[], at)
                .is_err(),
            "must not chain to another cluster's CA"
        );
        assert_eq!(public_key_fingerprint(&public).len(), 64);

        let storage = PeerIdentity::storage(id.clone(), node("s1")).expect("id");
        let issued = keys
            .issue_certificate(
                &storage,
                &public,
                validity,
                &["s1.example.com".to_string(), "10.0.0.7".to_string()],
            )
            .expect("issue storage");
        let chain = pem_certs(&issued.chain_pem);
        assert_eq!(
            PeerIdentity::from_cert_der(chain[0].as_ref()).expect("identity"),
            storage
        );
        for name in ["s1.example.com", "10.0.0.7"] {
            assert!(verifies_as(keys.ca_cert_der(), &chain[0], name), "{name}");
        }
    }

    // Goal: out-of-range validity, a bad public key, server names on an
    // agent, an identity of another cluster, and the kinds that are not
    // issued for foreign keys (control plane, operator) are refused.
    // Method: table.
    #[test]
    fn node_certificate_refusals() {
        let keys_dir = tempfile::tempdir().expect("tempdir");
        let keys = ClusterKeys::create(keys_dir.path(), &cluster("alpha")).expect("create");
        let (_key, public) = ed25519_public_key();
        let agent = PeerIdentity::node(cluster("alpha"), node("n-1")).expect("id");
        for validity in [
            Duration::ZERO,
            NODE_CERT_VALIDITY_MIN - Duration::from_secs(1),
            NODE_CERT_VALIDITY_MAX + Duration::from_secs(1),
        ] {
            assert!(matches!(
                keys.issue_certificate(&agent, &public, validity, &[]),
                Err(Error::InvalidArgument(_))
            ));
        }
        // The identity point (y = 1, small order) and y = 2, which is on no
        // point of the curve ((y² − 1)/(d·y² + 1) is not a square mod p).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        for bad in [identity, off_curve] {
            assert!(matches!(
                keys.issue_certificate(&agent, &bad, NODE_CERT_VALIDITY_DEFAULT, &[]),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            keys.issue_certificate(
                &agent,
                &public,
                NODE_CERT_VALIDITY_DEFAULT,
                &["x.example".into()]
            ),
            Err(Error::InvalidArgument(_))
        ));
        let foreign = PeerIdentity::node(cluster("beta"), node("n-1")).expect("id");
        let operator = PeerIdentity::operator(cluster("alpha"), node("admin")).expect("id");
        for refused in [
            foreign,
            operator,
            PeerIdentity::control_plane(cluster("alpha")),
        ] {
            assert!(matches!(
                keys.issue_certificate(&refused, &public, NODE_CERT_VALIDITY_DEFAULT, &[]),
                Err(Error::InvalidArgument(_))
            ));
        }
    }

    // Goal: two clusters never share a CA or a signing key.
    #[test]
    fn clusters_have_distinct_keys() {
        let keys_dir = tempfile::tempdir().expect("tempdir");
        let a = ClusterKeys::create(keys_dir.path(), &cluster("alpha")).expect("create");
        let b = ClusterKeys::create(keys_dir.path(), &cluster("beta")).expect("create");
        assert_ne!(a.ca_fingerprint(), b.ca_fingerprint());
        assert_ne!(a.signing_key_id_hex(), b.signing_key_id_hex());
        assert_ne!(a.trust_root_hash_hex(), b.trust_root_hash_hex());
    }

    // Goal: a private key readable by group or others stops loading, for
    // each key file. Method: chmod 644 one at a time.
    #[test]
    fn world_readable_keys_are_refused() {
        let keys_dir = tempfile::tempdir().expect("tempdir");
        let id = cluster("alpha");
        let keys = ClusterKeys::create(keys_dir.path(), &id).expect("create");
        for path in [
            keys.dir().join(CA_KEY_FILE),
            keys.dir().join(SIGNING_KEY_FILE),
            keys.server_cert_files().key,
        ] {
            chmod(&path, 0o644);
            let err = ClusterKeys::load(keys_dir.path(), &id).expect_err("must refuse");
            assert!(matches!(err, Error::Keys(_)), "{err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
            chmod(&path, 0o600);
        }
        ClusterKeys::load(keys_dir.path(), &id).expect("loads again");

        let platform = PlatformKeys::create_or_load(keys_dir.path(), &[]).expect("platform");
        let key = platform.dir().join(CA_KEY_FILE);
        chmod(&key, 0o640);
        let err = PlatformKeys::create_or_load(keys_dir.path(), &[]).expect_err("must refuse");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    // Goal: the platform server certificate covers the asked names plus
    // localhost and 127.0.0.1, is kept while current, and is reissued for
    // a new name or when missing; the CA is kept. Bad names are refused.
    #[test]
    fn platform_keys_create_or_load() {
        let keys_dir = tempfile::tempdir().expect("tempdir");
        let names = vec!["CP.example.com".to_string(), "10.1.2.3".to_string()];
        let platform = PlatformKeys::create_or_load(keys_dir.path(), &names).expect("create");
        let files = platform.server_cert_files();
        let ca = platform.ca_cert_der().clone();
        for name in ["cp.example.com", "10.1.2.3", "localhost", "127.0.0.1"] {
            assert!(verify_server(&ca, &files, name), "{name}");
        }
        assert!(!verify_server(&ca, &files, "other.example.com"));
        assert_eq!(platform.ca_fingerprint().len(), 64);

        let cert = std::fs::read(&files.cert).expect("read");
        let again = PlatformKeys::create_or_load(keys_dir.path(), &names).expect("load");
        assert_eq!(again.ca_fingerprint(), platform.ca_fingerprint());
        assert_eq!(cert, std::fs::read(&files.cert).expect("read"), "kept");

        let more = vec!["other.example.com".to_string()];
        let renamed = PlatformKeys::create_or_load(keys_dir.path(), &more).expect("load");
        assert_eq!(renamed.ca_fingerprint(), platform.ca_fingerprint());
        assert!(verify_server(&ca, &files, "other.example.com"));

        std::fs::remove_file(&files.cert).expect("remove");
        PlatformKeys::create_or_load(keys_dir.path(), &more).expect("reissue");
        assert!(verify_server(&ca, &files, "other.example.com"));

        for bad in [
            vec!["bad name".to_string()],
            vec!["*.example.com".to_string()],
            vec!["x".repeat(SERVER_NAME_BYTES_MAX + 1)],
            (0..=SERVER_NAMES_MAX)
                .map(|i| format!("n{i}.example.com"))
                .collect(),
        ] {
            assert!(
                PlatformKeys::create_or_load(keys_dir.path(), &bad).is_err(),
                "{bad:?}"
            );
        }

        std::fs::remove_file(platform.dir().join(CA_CERT_FILE)).expect("remove");
        assert!(matches!(
            PlatformKeys::create_or_load(keys_dir.path(), &[]),
            Err(Error::Keys(_))
        ));
    }

    // Goal: a missing or corrupt client or server certificate is reissued
    // on load. Method: delete/corrupt, load, check.
    #[test]
    fn missing_certificates_are_reissued() {
        let keys_dir = tempfile::tempdir().expect("tempdir");
        let id = cluster("alpha");
        let keys = ClusterKeys::create(keys_dir.path(), &id).expect("create");
        let client = keys.controlplane_tls();
        std::fs::remove_file(&client.cert).expect("remove");
        let server = keys.server_cert_files();
        std::fs::write(&server.cert, b"garbage").expect("corrupt");
        let loaded = ClusterKeys::load(keys_dir.path(), &id).expect("load");
        assert!(verify_server(
            loaded.ca_cert_der(),
            &server,
            "alpha.cluster.rap"
        ));
        assert_eq!(
            loaded.controlplane_tls().identity().expect("identity"),
            PeerIdentity::control_plane(id)
        );
    }
}
