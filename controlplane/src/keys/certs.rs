//! Certificates the control plane issues to itself (server and client
//! certificates), the server-name (SAN) rules, and the check that a
//! certificate on disk is still usable.

use super::*;

/// Generates a key and a server certificate for `sans`, signed by `ca`;
/// writes the key (0600) then the certificate followed by the CA
/// certificate (so a client that pins the CA by fingerprint finds it in the
/// chain the server presents), each replacing the old file atomically.
pub(super) fn issue_server_cert(
    ca: &LoadedCa,
    files: &ServerCertFiles,
    common_name: &str,
    sans: &[SanType],
    validity: Duration,
) -> Result<()> {
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(rcgen_error("generate server key"))?;
    let cert = server_cert_params(common_name, sans, validity)?
        .signed_by(&key, &ca.issuer)
        .map_err(rcgen_error("sign server certificate"))?;
    let chain = format!("{}{}", cert.pem(), ca.cert_pem);
    write_pair(files, &key.serialize_pem(), &chain)
}

/// The parameters of a server certificate (TLS server auth only) for
/// `sans`, valid for `validity` from now, with a fresh serial.
pub(super) fn server_cert_params(
    common_name: &str,
    sans: &[SanType],
    validity: Duration,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.subject_alt_names = sans.to_vec();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    set_validity(&mut params, validity).map_err(cert_error)?;
    Ok(params)
}

/// Writes the key (0600) then the certificate (chain) of a pair, each
/// replacing the old file atomically.
pub(super) fn write_pair(files: &ServerCertFiles, key_pem: &str, cert_pem: &str) -> Result<()> {
    write_file(&files.key, key_pem.as_bytes(), 0o600, Overwrite::Replace).map_err(file_error)?;
    write_file(&files.cert, cert_pem.as_bytes(), 0o644, Overwrite::Replace).map_err(file_error)
}

/// Checked server names: as given (lowercased), as SANs and as names to
/// verify against. `localhost` and 127.0.0.1 are always included.
pub(super) struct ServerNames {
    pub(super) text: Vec<String>,
    pub(super) verify: Vec<ServerName<'static>>,
}

impl ServerNames {
    pub(super) fn parse(names: &[String]) -> Result<Self> {
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

    pub(super) fn sans(&self) -> Result<Vec<SanType>> {
        server_sans(self.text.iter().map(String::as_str)).map_err(cert_error)
    }
}

/// What a certificate must be good for.
pub(super) enum CertCheck<'a> {
    /// A server certificate for each of these names.
    Server(&'a [ServerName<'static>]),
    /// A client certificate naming this identity.
    Client(&'a PeerIdentity),
}

/// Whether `cert` + `key` exist, match, chain to `ca_der`, pass `check`
/// and stay valid for longer than `renew_before`. A key file readable by
/// group or others is an error, not a reason to replace it silently.
pub(super) fn cert_is_current(
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
    let files = ServerCertFiles {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    };
    let Some(certified) = current_pair(&files, renew_before)? else {
        return Ok(false);
    };
    let Some(end_entity) = certified.cert.first() else {
        return Ok(false);
    };
    let provider = rustls::crypto::ring::default_provider();
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

/// The pair in `files` when it loads, matches and stays valid for longer
/// than `renew_before`; `None` (an unusable pair logged) when it must be
/// made again.
pub(super) fn current_pair(
    files: &ServerCertFiles,
    renew_before: Duration,
) -> Result<Option<Arc<CertifiedKey>>> {
    let provider = rustls::crypto::ring::default_provider();
    let certified = match load_certified_key(files, &provider) {
        Ok(certified) => certified,
        Err(e) => {
            tracing::warn!(cert = %files.cert.display(), error = %e, "certificate unusable; replacing it");
            return Ok(None);
        }
    };
    let Some(end_entity) = certified.cert.first() else {
        return Ok(None);
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(end_entity.as_ref()) else {
        return Ok(None);
    };
    let not_after = u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0);
    if Duration::from_secs(not_after) <= now_since_epoch()? + renew_before {
        return Ok(None);
    }
    Ok(Some(certified))
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
pub(super) fn random_serial() -> Result<[u8; CERT_SERIAL_BYTES]> {
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
