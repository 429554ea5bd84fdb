//! A party's own certificate and key, replaceable while it runs.
//!
//! [`LiveIdentity`] reads `node.pem` + `node.key` (and the cluster CA) once
//! and serves them to rustls through [`ResolvesServerCert`] and
//! [`ResolvesClientCert`]. [`LiveIdentity::reload`] re-reads the files and
//! swaps them in when they changed (a renewal wrote new ones): every new
//! handshake, server or client side, uses the new pair; established
//! connections keep theirs (TLS does not re-check a certificate after the
//! handshake), so a renewal fails no RPC. A pair that does not load (a key
//! that does not match, a certificate of another identity) is refused and
//! the old one kept.
//!
//! [`server_config`] is the storage node's rustls server configuration:
//! client certificates required and verified against the cluster CA, our
//! certificate from the live identity, ALPN `h2`.

use super::{ALPN_H2, CHAIN_CERTS_MAX, LoadedFiles, TlsFiles, install_crypto_provider};
use crate::error::{Error, Result};
use crate::identity::{CertificateFacts, PeerIdentity};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SignatureScheme};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

/// The loaded pair and what it says.
struct Current {
    certified: Arc<CertifiedKey>,
    facts: CertificateFacts,
    /// The raw files, to tell whether a reload found anything new.
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

/// A party's certificate and key, reloadable (see the module docs).
pub struct LiveIdentity {
    files: TlsFiles,
    ca_der: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Current>,
}

impl fmt::Debug for LiveIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveIdentity")
            .field("files", &self.files)
            .field("identity", &self.facts().identity)
            .finish_non_exhaustive()
    }
}

impl LiveIdentity {
    /// Loads `files`: the CA, the certificate chain and its private key,
    /// which must belong together.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>> {
        install_crypto_provider();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = files.load()?;
        let ca_der = CertificateDer::from_pem_slice(&loaded.ca)
            .map_err(|e| Error::InvalidRequest(format!("{}: {e}", files.ca.display())))?;
        let current = build(&files, &provider, &loaded)?;
        Ok(Arc::new(LiveIdentity {
            files,
            ca_der,
            provider,
            current: RwLock::new(current),
        }))
    }

    /// The files this identity is read from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The cluster CA certificate (DER).
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The crypto provider every configuration built on this identity uses.
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// What the current certificate says (identity, serial, validity).
    pub fn facts(&self) -> CertificateFacts {
        self.read().facts.clone()
    }

    /// The current identity.
    pub fn identity(&self) -> PeerIdentity {
        self.read().facts.identity.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn certified(&self) -> Arc<CertifiedKey> {
        self.read().certified.clone()
    }

    /// Re-reads the files; when they changed and load, the new pair serves
    /// every later handshake. Returns whether it changed. A new pair must
    /// name the same identity: a renewal never turns a node into another.
    pub fn reload(&self) -> Result<bool> {
        let loaded = self.files.load()?;
        {
            let current = self.read();
            if current.cert_pem == loaded.cert && current.key_pem == loaded.key {
                return Ok(false);
            }
        }
        let next = build(&self.files, &self.provider, &loaded)?;
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if next.facts.identity != current.facts.identity {
            return Err(Error::InvalidRequest(format!(
                "{} now names {}, not {}: refusing to switch identity",
                self.files.cert.display(),
                next.facts.identity,
                current.facts.identity
            )));
        }
        tracing::info!(
            identity = %next.facts.identity,
            serial = %next.facts.serial_hex,
            "certificate reloaded"
        );
        *current = next;
        Ok(true)
    }

    /// The rustls root store holding only the cluster CA.
    pub fn roots(&self) -> Result<Arc<RootCertStore>> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .map_err(|e| Error::InvalidRequest(format!("cluster CA is not a trust anchor: {e}")))?;
        Ok(Arc::new(roots))
    }

    /// A resolver rustls asks for our certificate, server and client side.
    pub fn resolver(self: &Arc<Self>) -> Arc<LiveResolver> {
        Arc::new(LiveResolver(self.clone()))
    }
}

fn build(files: &TlsFiles, provider: &CryptoProvider, loaded: &LoadedFiles) -> Result<Current> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&loaded.cert)
        .take(CHAIN_CERTS_MAX + 1)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::InvalidRequest(format!("{}: {e}", files.cert.display())))?;
    if chain.is_empty() || chain.len() > CHAIN_CERTS_MAX {
        return Err(Error::InvalidRequest(format!(
            "{} holds {} certificates; expected 1..={CHAIN_CERTS_MAX}",
            files.cert.display(),
            chain.len()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&loaded.key)
        .map_err(|e| Error::InvalidRequest(format!("{}: {e}", files.key.display())))?;
    let facts = CertificateFacts::from_der(chain[0].as_ref())?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        Error::InvalidRequest(format!(
            "{} and {} do not belong together: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    Ok(Current {
        certified: Arc::new(certified),
        facts,
        cert_pem: loaded.cert.clone(),
        key_pem: loaded.key.clone(),
    })
}

/// Hands rustls the current pair of a [`LiveIdentity`].
#[derive(Debug)]
pub struct LiveResolver(Arc<LiveIdentity>);

impl ResolvesServerCert for LiveResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified())
    }
}

impl ResolvesClientCert for LiveResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The storage node's server configuration: client certificates required
/// and verified against the cluster CA (which caller may call what is
/// decided afterwards, per RPC, by the access table of `rap-authority`), our certificate
/// from `identity` (reloadable), ALPN `h2`.
pub fn server_config(identity: &Arc<LiveIdentity>) -> Result<Arc<ServerConfig>> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(identity.roots()?, identity.provider().clone())
            .build()
            .map_err(|e| Error::InvalidRequest(format!("client certificate verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(identity.provider().clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidRequest(format!("TLS protocol versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity.resolver());
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}
