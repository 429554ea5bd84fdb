//! One cluster's keys (`<keys_dir>/clusters/<cluster_id>/`): creation in
//! a staging directory, loading with checks, renewal of the control
//! plane's own certificates, and issuance of node certificates.

use super::*;

/// One cluster's CA, snapshot-signing key, genesis trust root and the
/// control plane's certificates from that CA.
pub struct ClusterKeys {
    dir: PathBuf,
    cluster_id: ClusterId,
    /// The cluster CA, loaded once.
    ca: ClusterCa,
    signer: SnapshotSigner,
    trust_root: VerifiedTrustRoot,
    /// Snapshot-signing key generations after genesis, in order.
    pub(super) generations: Vec<super::generations::Generation>,
}

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
        let ca = ClusterCa::load(&dir).map_err(core_error(&dir))?;
        if ca.cluster_id() != cluster_id {
            return Err(Error::Keys(format!(
                "{} is the CA of cluster {}, not {cluster_id}",
                dir.join(CA_CERT_FILE).display(),
                ca.cluster_id()
            )));
        }
        let signing_path = dir.join(SIGNING_KEY_FILE);
        let signer = rap_core::files::read_signing_key(&signing_path)
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
        let generations = super::generations::load(&dir, &trust_root)?;
        let keys = ClusterKeys {
            dir,
            cluster_id: cluster_id.clone(),
            ca,
            signer,
            trust_root,
            generations,
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
        let _lock = KeysDirLock::take(&self.dir)?;
        let server_name = cluster_server_name(&self.cluster_id);
        let names = ServerNames::parse(std::slice::from_ref(&server_name))?;
        let files = self.server_cert_files();
        let mut server_renewed = false;
        if !cert_is_current(
            &files.cert,
            &files.key,
            self.ca.loaded().cert_der.as_ref(),
            &CertCheck::Server(&names.verify),
            SERVER_CERT_RENEW_BEFORE,
        )? {
            issue_server_cert(
                self.ca.loaded(),
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
            self.ca.loaded().cert_der.as_ref(),
            &CertCheck::Client(&PeerIdentity::control_plane(self.cluster_id.clone())),
            CONTROLPLANE_CLIENT_CERT_RENEW_BEFORE,
        )? {
            issue_controlplane_client(&self.ca, &self.dir, &self.cluster_id)?;
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
        &self.ca.loaded().cert_pem
    }

    /// The cluster CA certificate (DER).
    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.ca.loaded().cert_der
    }

    /// Hex blake3 of the cluster CA certificate's DER (64 characters):
    /// what a join command pins.
    pub fn ca_fingerprint(&self) -> String {
        certificate_fingerprint(self.ca.loaded().cert_der.as_ref())
    }

    /// The generation-1 (genesis) key: it signs promotion and rejoin
    /// orders, and shards while the group is at generation 1 (see
    /// [`ClusterKeys::shard_signer`]).
    pub fn signer(&self) -> &SnapshotSigner {
        &self.signer
    }

    /// The genesis key's id, full hex (64 characters).
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
            .signed_by(&spki, &self.ca.loaded().issuer)
            .map_err(rcgen_error("sign node certificate"))?;
        let mut chain_pem = cert.pem();
        if !chain_pem.ends_with('\n') {
            chain_pem.push('\n');
        }
        chain_pem.push_str(&self.ca.loaded().cert_pem);
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
fn issue_controlplane_client(ca: &ClusterCa, dir: &Path, cluster_id: &ClusterId) -> Result<()> {
    ca.issue(
        &dir.join(CONTROLPLANE_TLS_DIR),
        &PeerIdentity::control_plane(cluster_id.clone()),
        CONTROLPLANE_CLIENT_CERT_VALIDITY,
        &[],
    )
    .map(|_| ())
    .map_err(core_error(dir))
}

/// Writes a new cluster's key material into (empty) `dir`.
fn write_cluster_keys(dir: &Path, cluster_id: &ClusterId) -> Result<()> {
    let ca = ClusterCa::create(dir, cluster_id).map_err(core_error(dir))?;
    let signer = SnapshotSigner::generate()
        .map_err(|e| Error::Keys(format!("generate signing key: {e}")))?;
    let signing_path = dir.join(SIGNING_KEY_FILE);
    rap_core::files::write_signing_key(&signing_path, &signer)
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
    let names = ServerNames::parse(&[cluster_server_name(cluster_id)])?;
    issue_server_cert(
        ca.loaded(),
        &ServerCertFiles::in_dir(dir),
        &format!("rap control plane for cluster {cluster_id}"),
        &names.sans()?,
        SERVER_CERT_VALIDITY,
    )?;
    issue_controlplane_client(&ca, dir, cluster_id)?;
    sync_dir(dir).map_err(file_error)
}
