//! The platform CA and the control plane's default server certificate
//! (`<keys_dir>/platform/`).

use super::*;

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
        let dir = keys_dir.join(PLATFORM_DIR);
        create_private_dir_all(&dir)?;
        let _lock = KeysDirLock::take(&dir)?;
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
        let ca = LoadedCa::load(&dir).map_err(core_error(&dir))?;
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

/// The file of the key that seals principals' TOTP secrets in PostgreSQL
/// ([`crate::totp::seal`]), in the platform keys directory.
pub const TOTP_KEY_FILE: &str = "totp.key";

/// The platform's TOTP sealing key (32 bytes, mode 0600), made on first
/// use. Back it up with the rest of the keys directory: without it no
/// enrolled principal can step up (each would enrol again).
pub fn totp_key(keys_dir: &Path) -> Result<[u8; 32]> {
    let dir = keys_dir.join(PLATFORM_DIR);
    create_private_dir_all(&dir)?;
    let _lock = KeysDirLock::take(&dir)?;
    let path = dir.join(TOTP_KEY_FILE);
    if !path.exists() {
        let key: [u8; 32] = crate::secret::random_bytes()?;
        write_file(&path, &key, 0o600, Overwrite::Never).map_err(file_error)?;
        return Ok(key);
    }
    let bytes = read_private_key(&path, 64).map_err(file_error)?;
    bytes.try_into().map_err(|_| {
        Error::Keys(format!(
            "{} is not a 32-byte key; restore it from a backup",
            path.display()
        ))
    })
}
