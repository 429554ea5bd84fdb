//! The web console's TLS certificate. Browsers do not take Ed25519 in
//! TLS, so the console does not use the platform server certificate: it
//! serves a self-signed ECDSA P-256 certificate of its own, made in the
//! platform keys directory on first start and made again when it is
//! missing, unusable, about to expire or lacks one of the server names.
//! Operators pin it by the SHA-256 fingerprint the control plane logs
//! (what browsers show), or put a certificate of their own CA in its
//! place (it is then kept while it covers the names and stays valid).

use super::*;

/// The console certificate (PEM) in the platform keys directory.
pub const CONSOLE_CERT_FILE: &str = "console.pem";
/// Its private key (PKCS#8 PEM, mode 0600).
pub const CONSOLE_KEY_FILE: &str = "console.key";

/// The console's certificate files and fingerprint.
#[derive(Clone, Debug)]
pub struct ConsoleCert {
    /// The certificate and key files.
    pub files: ServerCertFiles,
    /// SHA-256 of the certificate (DER), colon-separated hex.
    pub fingerprint: String,
}

/// Loads the console certificate from `keys_dir/platform`, making a new
/// one for `server_names` (plus `localhost` and 127.0.0.1) when there is
/// no usable one.
pub fn console_cert(keys_dir: &Path, server_names: &[String]) -> Result<ConsoleCert> {
    let names = ServerNames::parse(server_names)?;
    let dir = keys_dir.join(PLATFORM_DIR);
    create_private_dir_all(&dir)?;
    let _lock = KeysDirLock::take(&dir)?;
    let files = ServerCertFiles {
        cert: dir.join(CONSOLE_CERT_FILE),
        key: dir.join(CONSOLE_KEY_FILE),
    };
    if !usable(&files, &names.text)? {
        issue(&files, &names)?;
        tracing::info!(dir = %dir.display(), names = ?names.text, "console certificate issued");
    }
    let provider = rustls::crypto::ring::default_provider();
    let certified = load_certified_key(&files, &provider)?;
    let der = certified
        .cert
        .first()
        .ok_or_else(|| Error::Keys(format!("{} holds no certificate", files.cert.display())))?;
    Ok(ConsoleCert {
        fingerprint: sha256_fingerprint(der.as_ref()),
        files,
    })
}

/// The SHA-256 fingerprint ([`sha256_fingerprint`]) of the first
/// certificate in the PEM file at `path`.
pub fn file_fingerprint(path: &Path) -> Result<String> {
    let pem = read_bounded(path, PEM_FILE_BYTES_MAX).map_err(file_error)?;
    let der = CertificateDer::from_pem_slice(&pem)
        .map_err(|e| Error::Keys(format!("{}: {e}", path.display())))?;
    Ok(sha256_fingerprint(der.as_ref()))
}

/// SHA-256 of `der` as colon-separated upper-case hex.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The files hold a matching pair whose certificate names every one of
/// `names` and stays valid past [`SERVER_CERT_RENEW_BEFORE`].
fn usable(files: &ServerCertFiles, names: &[String]) -> Result<bool> {
    if !files.cert.exists() || !files.key.exists() {
        return Ok(false);
    }
    let Some(certified) = current_pair(files, SERVER_CERT_RENEW_BEFORE)? else {
        return Ok(false);
    };
    let Some(der) = certified.cert.first() else {
        return Ok(false);
    };
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Ok(false);
    };
    let mut sans: Vec<String> = Vec::new();
    if let Ok(Some(ext)) = parsed.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => {
                    sans.push(dns.to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(std::net::IpAddr::from),
                        _ => None,
                    };
                    sans.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(names.iter().all(|name| sans.contains(name)))
}

/// Makes a self-signed ECDSA P-256 server certificate for `names`.
fn issue(files: &ServerCertFiles, names: &ServerNames) -> Result<()> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(rcgen_error("generate console key"))?;
    let cert = server_cert_params("rap console", &names.sans()?, SERVER_CERT_VALIDITY)?
        .self_signed(&key)
        .map_err(rcgen_error("self-sign console certificate"))?;
    write_pair(files, &key.serialize_pem(), &cert.pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the console certificate is ECDSA P-256 (browsers take it),
    // names the server names, is kept across starts, and is made again
    // when a name is added or its files are damaged. Method: a temporary
    // keys directory, three loads, the files read back.
    #[test]
    fn console_certificate_is_made_once_and_again_when_names_change() {
        let dir = tempfile::tempdir().expect("dir");
        let first = console_cert(dir.path(), &["console.example".into()]).expect("make");
        let pem = std::fs::read_to_string(&first.files.cert).expect("read");
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
        assert_eq!(
            parsed.public_key().algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        assert_eq!(first.fingerprint, sha256_fingerprint(der.as_ref()));
        assert!(
            usable(
                &first.files,
                &["console.example".into(), "localhost".into()]
            )
            .expect("check")
        );

        let again = console_cert(dir.path(), &["console.example".into()]).expect("load");
        assert_eq!(again.fingerprint, first.fingerprint, "kept across starts");

        let renamed = console_cert(dir.path(), &["other.example".into()]).expect("remake");
        assert_ne!(
            renamed.fingerprint, first.fingerprint,
            "a new name makes a new one"
        );

        std::fs::write(&renamed.files.cert, b"garbage").expect("damage");
        let repaired = console_cert(dir.path(), &["other.example".into()]).expect("repair");
        assert_ne!(repaired.fingerprint, renamed.fingerprint);
    }
}
