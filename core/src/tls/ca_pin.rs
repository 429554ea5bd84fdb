//! Pinning the cluster CA by fingerprint.
//!
//! A joining node knows only the blake3 fingerprint of its cluster CA
//! certificate's DER (it travels in the join command), not the CA itself.
//! [`PinnedCaVerifier`] accepts a server only when the chain it presents
//! contains a certificate with exactly that fingerprint *and* the server's
//! end-entity certificate verifies (webpki: signature, validity, server
//! name, EKU) against that certificate as the only trust anchor. The CA it
//! found is kept ([`PinnedCaVerifier::outcome`]), so the joining node can
//! store it after the handshake. Used by `rap-node-agent join` and
//! `rap-configstore join`.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::{Arc, Mutex, PoisonError};

/// Hex characters of a CA fingerprint (blake3, 32 bytes).
pub const FINGERPRINT_HEX_LEN: usize = 64;

/// A parsed CA fingerprint: blake3 of the CA certificate's DER.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CaFingerprint([u8; 32]);

impl CaFingerprint {
    /// Parses 64 hex characters (either case).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() != FINGERPRINT_HEX_LEN {
            return Err(format!(
                "a CA fingerprint is {FINGERPRINT_HEX_LEN} hex characters, got {}",
                text.len()
            ));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes)
            .map_err(|e| format!("a CA fingerprint is hex: {e}"))?;
        Ok(CaFingerprint(bytes))
    }

    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Self {
        CaFingerprint(*blake3::hash(der).as_bytes())
    }

    /// Lowercase hex (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for CaFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for CaFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaFingerprint({})", self.to_hex())
    }
}

/// What the last handshake showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PinOutcome {
    /// No handshake reached certificate verification yet.
    #[default]
    NotYet,
    /// The server's chain held the pinned CA and verified against it.
    Pinned(CertificateDer<'static>),
    /// The server was refused; why.
    Refused(String),
}

/// A rustls server certificate verifier that pins the CA by fingerprint
/// (see the module docs).
#[derive(Debug)]
pub struct PinnedCaVerifier {
    fingerprint: CaFingerprint,
    provider: Arc<CryptoProvider>,
    outcome: Mutex<PinOutcome>,
}

impl PinnedCaVerifier {
    /// A verifier for `fingerprint`, with rustls' ring provider.
    pub fn new(fingerprint: CaFingerprint) -> Self {
        PinnedCaVerifier {
            fingerprint,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            outcome: Mutex::new(PinOutcome::NotYet),
        }
    }

    /// The pinned fingerprint.
    pub fn fingerprint(&self) -> CaFingerprint {
        self.fingerprint
    }

    /// What the most recent handshake showed.
    pub fn outcome(&self) -> PinOutcome {
        self.outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, outcome: PinOutcome) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = outcome;
    }

    fn refuse(&self, reason: String) -> rustls::Error {
        self.record(PinOutcome::Refused(reason.clone()));
        rustls::Error::General(reason)
    }

    /// The check itself, without recording: returns the pinned CA.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<CertificateDer<'static>, String> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| CaFingerprint::of(c.as_ref()) == self.fingerprint)
        else {
            // The presented fingerprints are not shown: copying one from
            // an error message would defeat the pin.
            return Err(format!(
                "none of the {} certificate(s) the server presented has the pinned CA \
                 fingerprint {}; check --ca-fingerprint and --cluster against the output of \
                 `rapctl token create`",
                intermediates.len() + 1,
                self.fingerprint,
            ));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| format!("the pinned CA certificate is not a usable trust anchor: {e}"))?;
        let webpki = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| format!("build the certificate verifier: {e}"))?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| c.as_ref() != ca.as_ref())
            .cloned()
            .collect();
        webpki
            .verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
            .map_err(|e| {
                format!(
                    "the server certificate does not verify against the pinned CA {} for {}: {e}",
                    self.fingerprint,
                    server_name.to_str()
                )
            })?;
        Ok(ca.clone().into_owned())
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.check(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(ca) => {
                self.record(PinOutcome::Pinned(ca));
                Ok(ServerCertVerified::assertion())
            }
            Err(reason) => Err(self.refuse(reason)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };

    struct Ca {
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(ca: &Ca, name: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn verify(
        verifier: &PinnedCaVerifier,
        leaf: &CertificateDer<'_>,
        chain: &[CertificateDer<'_>],
        name: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier.verify_server_cert(leaf, chain, &name, &[], UnixTime::now())
    }

    // Goal: the pinned CA in the chain plus a leaf from it for the name is
    // accepted and the CA is kept; a leaf-only chain, another CA with the
    // same name, a leaf of another CA sent with the pinned CA, and the
    // wrong server name are refused. Method: rcgen certificates.
    #[test]
    fn pins_by_fingerprint() {
        let pinned = ca();
        let other = ca();
        let name = "c1.cluster.rap";
        let good = leaf(&pinned, name);
        let verifier = PinnedCaVerifier::new(CaFingerprint::of(pinned.der.as_ref()));
        assert_eq!(verifier.outcome(), PinOutcome::NotYet);

        verify(&verifier, &good, std::slice::from_ref(&pinned.der), name).unwrap();
        assert_eq!(verifier.outcome(), PinOutcome::Pinned(pinned.der.clone()));

        let refusals: [(&CertificateDer<'_>, Vec<CertificateDer<'_>>, &str, &str); 4] = [
            (&good, vec![], name, "none of the"),
            (
                &leaf(&other, name),
                vec![other.der.clone()],
                name,
                "none of the",
            ),
            (
                &leaf(&other, name),
                vec![pinned.der.clone()],
                name,
                "does not verify",
            ),
            (
                &good,
                vec![pinned.der.clone()],
                "c2.cluster.rap",
                "does not verify",
            ),
        ];
        for (leaf, chain, name, why) in refusals {
            let err = verify(&verifier, leaf, &chain, name).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
            match verifier.outcome() {
                PinOutcome::Refused(reason) => {
                    assert!(
                        reason.contains(&verifier.fingerprint().to_hex()),
                        "{reason}"
                    )
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    }

    // Goal: fingerprints parse from 64 hex characters only.
    #[test]
    fn fingerprint_parsing() {
        let hex = "AB".repeat(32);
        assert_eq!(
            CaFingerprint::parse(&hex).unwrap().to_hex(),
            "ab".repeat(32)
        );
        for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(CaFingerprint::parse(bad).is_err(), "{bad}");
        }
    }
}
