//! Renewing the node certificate before it expires, with a new key each
//! time.
//!
//! [`keep_renewed`] checks the certificate [`CHECKS_PER_LIFETIME`] times
//! per lifetime and renews it once [`RENEW_AFTER_NUMERATOR`] /
//! [`RENEW_AFTER_DENOMINATOR`] of its life has passed ([`due`]). The life
//! counts from the issue time: the control plane backdates `not_before` by
//! [`NOT_BEFORE_BACKDATE`] for peers with slow clocks, which is taken off
//! again ([`life`]). A failed renewal is logged with its code and retried
//! after [`RETRY_MIN`], doubling up to [`RETRY_MAX`] but never more than
//! a tenth of the time left.
//!
//! [`renew_now`] is one renewal: a new ed25519 key is generated here, the
//! request goes over mTLS with the current certificate
//! (`EnrollmentService/RenewCertificate`, proof of possession by the new
//! key, purpose `rap.v1.renew`), the answer is checked (chains to the
//! cluster CA, names this node, carries the new key), stored, and loaded
//! into the running process ([`LiveIdentity::reload`]): the next
//! connection presents the new certificate.
//!
//! **Crash safety.** The control plane makes the old certificate
//! `rotated` when it issues the new one, so from that commit on only the
//! new pair works. The order on disk is:
//!
//! 1. the new key is written durably as [`NEXT_NODE_KEY_FILE`] (0600)
//!    *before* the request is sent;
//! 2. the answer's certificate replaces `node.pem` (atomic rename);
//! 3. `node.key.next` is renamed over `node.key` (atomic), the directory
//!    synced;
//! 4. `identity.json` is rewritten (expiry, key fingerprint).
//!
//! The old key is never overwritten before the certificate for the new
//! one is durably in place, and the new key exists before the control
//! plane can issue anything for it. A crash between 2 and 3 leaves the
//! new certificate with the old key in `node.key` and its own in
//! `node.key.next`: [`recover`] (run by [`ControlPlane::open`] before the
//! files are loaded) finishes the rotation; a `node.key.next` that does
//! not match `node.pem` (a crash before 2, a refusal) is discarded, the
//! old pair still being valid. A running process never swaps to a
//! mismatched pair ([`LiveIdentity::reload`] refuses it). What cannot be
//! recovered: the control plane committed the renewal and its answer was
//! lost (a crash or a timeout between its commit and step 2): the old
//! certificate is then refused everywhere and the node must join again.

use crate::control::{ControlPlane, ControlPlaneError};
use crate::state::{
    ClusterState, IDENTITY_FILE, NEXT_NODE_KEY_FILE, NODE_CERT_FILE, NODE_KEY_FILE,
    PRIVATE_FILE_MODE, StateError, key_fingerprint, key_pem, random_bytes, read_key_file,
    write_atomic,
};
use ed25519_dalek::SigningKey;
use rap_core::tls::live::LiveIdentity;
use rap_core::tls::{NOT_BEFORE_BACKDATE, PEM_FILE_BYTES_MAX, check_issued_chain, pem_certificate};
use rap_proto::pb;
use rap_proto::pb::enrollment_service_client::EnrollmentServiceClient;
use rap_proto::proof::PURPOSE_RENEW;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tracing::Instrument;

pub use rap_core::tls::{RENEW_AFTER_DENOMINATOR, RENEW_AFTER_NUMERATOR};
/// Checks per certificate lifetime: the renewal point is met within one
/// thirtieth of the life.
pub const CHECKS_PER_LIFETIME: u32 = 30;
/// Shortest pause between two checks (a short-lived test certificate).
pub const CHECK_INTERVAL_MIN: Duration = Duration::from_millis(250);
/// Longest pause between two checks.
pub const CHECK_INTERVAL_MAX: Duration = Duration::from_secs(30);
/// First pause after a failed renewal.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest pause after failed renewals.
pub const RETRY_MAX: Duration = Duration::from_secs(5 * 60);
/// Share of the time left a retry pause may take at most (1/10).
pub const RETRY_SHARE_OF_LEFT_DENOMINATOR: u32 = 10;

const _: () = assert!(RENEW_AFTER_NUMERATOR < RENEW_AFTER_DENOMINATOR);
const _: () = assert!(CHECK_INTERVAL_MIN.as_millis() < CHECK_INTERVAL_MAX.as_millis());
const _: () = assert!(RETRY_MIN.as_millis() < RETRY_MAX.as_millis());

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The control plane could not be reached, or refused (its code is
    /// kept: `PERMISSION_DENIED` for a revoked or superseded certificate).
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    /// Node-local state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The control plane's answer is not a certificate for this node and
    /// the new key.
    #[error("the renewed certificate is unusable: {0}")]
    BadAnswer(String),
    /// The stored pair does not load.
    #[error("the renewed certificate does not load: {0}")]
    Reload(String),
}

impl RenewError {
    /// A stable code (the control plane's own for its refusals).
    pub fn code(&self) -> &str {
        match self {
            RenewError::ControlPlane(e) => e.code(),
            RenewError::State(_) => "STATE",
            RenewError::BadAnswer(_) => "BAD_ANSWER",
            RenewError::Reload(_) => "RELOAD",
        }
    }

    /// Whether the same renewal may succeed soon.
    pub fn is_retryable(&self) -> bool {
        match self {
            RenewError::ControlPlane(e) => e.is_retryable(),
            RenewError::State(_) | RenewError::BadAnswer(_) | RenewError::Reload(_) => false,
        }
    }
}

/// A renewal that took effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewed {
    /// The new certificate's serial (hex).
    pub serial: String,
    /// Its end of validity.
    pub not_after_unix_ms: i64,
    /// Hex blake3 of the new public key.
    pub key_fingerprint: String,
}

/// What [`recover`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No rotation was under way.
    Nothing,
    /// The certificate was stored, its key not yet: the rotation is
    /// finished now.
    Completed,
    /// The next key never got a certificate: it was removed.
    Discarded,
}

/// What the renewal task achieved so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenewalOutcome {
    /// Renewals that took effect.
    pub renewals: u64,
    /// Renewals that failed.
    pub failures: u64,
    /// The last renewal that took effect.
    pub last: Option<Renewed>,
    /// The last failure (code, message), until a renewal succeeds.
    pub last_error: Option<(String, String)>,
}

/// Raw public key of the first certificate of a PEM chain.
fn cert_public_key(pem: &[u8], path: &std::path::Path) -> Result<Vec<u8>, StateError> {
    let der = rap_core::files::first_cert(path, pem).map_err(StateError::File)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("certificate does not parse: {e}"),
        })?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// Finishes or discards a rotation a crash interrupted (see the module
/// docs), then brings `identity.json` in line with `node.pem` and
/// `node.key` (expiry, key fingerprint). Safe to run any time no renewal
/// is under way.
pub fn recover(state: &ClusterState) -> Result<Recovery, StateError> {
    let cert_path = state.path(NODE_CERT_FILE);
    let cert_pem = crate::state::read_bounded(&cert_path, PEM_FILE_BYTES_MAX)?;
    let cert_key = cert_public_key(&cert_pem, &cert_path)?;
    let next_path = state.path(NEXT_NODE_KEY_FILE);
    let recovery = match std::fs::symlink_metadata(&next_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Recovery::Nothing,
        Err(e) => return Err(StateError::File(e)),
        Ok(_) => {
            let matches = read_key_file(&next_path)
                .is_ok_and(|next| next.verifying_key().as_bytes().as_slice() == cert_key);
            if matches {
                rename_durably(state, &next_path, &state.path(NODE_KEY_FILE))?;
                Recovery::Completed
            } else {
                remove_durably(state, &next_path)?;
                Recovery::Discarded
            }
        }
    };
    // identity.json follows the pair (a crash after the rename).
    let key = read_key_file(&state.path(NODE_KEY_FILE))?;
    if let Some(mut record) = state.identity()? {
        let facts = rap_core::identity::CertificateFacts::from_der(
            rap_core::files::first_cert(&cert_path, &cert_pem)
                .map_err(StateError::File)?
                .as_ref(),
        )
        .map_err(|e| StateError::Corrupt {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
        let not_after = unix_ms(facts.not_after);
        let fingerprint = key_fingerprint(&key);
        if record.not_after_unix_ms != not_after || record.key_fingerprint != fingerprint {
            record.not_after_unix_ms = not_after;
            record.key_fingerprint = fingerprint;
            state.write_json(IDENTITY_FILE, &record)?;
        }
    }
    Ok(recovery)
}

fn rename_durably(
    state: &ClusterState,
    from: &std::path::Path,
    to: &std::path::Path,
) -> Result<(), StateError> {
    std::fs::rename(from, to).map_err(|source| StateError::Io {
        op: "rename",
        path: from.to_path_buf(),
        source,
    })?;
    rap_core::files::sync_dir(state.dir()).map_err(StateError::File)
}

fn remove_durably(state: &ClusterState, path: &std::path::Path) -> Result<(), StateError> {
    match std::fs::remove_file(path) {
        Ok(()) => rap_core::files::sync_dir(state.dir()).map_err(StateError::File),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Io {
            op: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// (lifetime, lived, left) of a certificate valid from `not_before` to
/// `not_after`, as of `now`. The lifetime counts from the issue time,
/// `not_before` + [`NOT_BEFORE_BACKDATE`] (when that is still before
/// `not_after`; else from `not_before`).
pub fn life(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
) -> (Duration, Duration, Duration) {
    let issued = not_before
        .checked_add(NOT_BEFORE_BACKDATE)
        .filter(|issued| *issued < not_after)
        .unwrap_or(not_before);
    let lifetime = not_after.duration_since(issued).unwrap_or_default();
    let lived = now.duration_since(issued).unwrap_or_default();
    let left = not_after.duration_since(now).unwrap_or_default();
    (lifetime, lived, left)
}

/// Whether a certificate that lived `lived` of `lifetime` is due.
pub fn due(lifetime: Duration, lived: Duration) -> bool {
    lived * RENEW_AFTER_DENOMINATOR >= lifetime * RENEW_AFTER_NUMERATOR
}

/// The pause between checks for a certificate of `lifetime`.
pub fn check_interval(lifetime: Duration) -> Duration {
    (lifetime / CHECKS_PER_LIFETIME).clamp(CHECK_INTERVAL_MIN, CHECK_INTERVAL_MAX)
}

/// The pause after `failures` consecutive failures (1 or more) with
/// `left` of the certificate's life left.
pub fn retry_pause(failures: u32, left: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_MIN
        .saturating_mul(1u32 << doublings)
        .min(RETRY_MAX)
        .min((left / RETRY_SHARE_OF_LEFT_DENOMINATOR).max(RETRY_MIN))
}

/// Renews the certificate now, rotating the key (see the module docs).
/// On any failure before the new certificate is stored, `node.key`,
/// `node.pem` and `identity.json` are as they were.
pub async fn renew_now(
    control_plane: &ControlPlane,
    state: &ClusterState,
) -> Result<Renewed, RenewError> {
    let key = SigningKey::from_bytes(&random_bytes::<32>()?);
    let next_path = state.path(NEXT_NODE_KEY_FILE);
    write_atomic(&next_path, key_pem(&key)?.as_bytes(), PRIVATE_FILE_MODE)?;
    let stored = async {
        let answer = request(control_plane, &key).await?;
        store(control_plane, state, &key, answer)
    }
    .await;
    let (serial, not_after_unix_ms) = match stored {
        Ok(stored) => stored,
        Err(error) => {
            if let Err(e) = remove_durably(state, &next_path) {
                tracing::warn!(error = %e, "could not remove the unused next key");
            }
            return Err(error);
        }
    };
    let identity = &control_plane.identity;
    match identity.reload() {
        Ok(true) => {}
        Ok(false) => {
            return Err(RenewError::Reload(
                "the files did not change after the renewal".into(),
            ));
        }
        Err(e) => return Err(RenewError::Reload(e.to_string())),
    }
    Ok(Renewed {
        serial,
        not_after_unix_ms,
        key_fingerprint: key_fingerprint(&key),
    })
}

/// The `RenewCertificate` call with a proof by `key`.
async fn request(
    control_plane: &ControlPlane,
    key: &SigningKey,
) -> Result<pb::NodeIdentity, RenewError> {
    let (timestamp_unix_ms, nonce, proof) =
        crate::enroll::prove(key, PURPOSE_RENEW, &control_plane.cluster)
            .map_err(|e| RenewError::State(StateError::Random(e.to_string())))?;
    let channel = control_plane.connect().await?;
    let answer = EnrollmentServiceClient::new(channel)
        .renew_certificate(pb::RenewCertificateRequest {
            cluster_id: control_plane.cluster.to_string(),
            node_id: control_plane.node.to_string(),
            new_public_key: key.verifying_key().to_bytes().to_vec(),
            timestamp_unix_ms,
            nonce,
            proof,
        })
        .await
        .map_err(|s| ControlPlaneError::from_status("RenewCertificate", &s))?
        .into_inner();
    answer
        .identity
        .ok_or_else(|| RenewError::BadAnswer("renewed without an identity".into()))
}

/// Checks the answer and stores it: `node.pem`, then `node.key`, then
/// `identity.json` (module docs). Returns (serial, not after).
fn store(
    control_plane: &ControlPlane,
    state: &ClusterState,
    key: &SigningKey,
    issued: pb::NodeIdentity,
) -> Result<(String, i64), RenewError> {
    let identity: &LiveIdentity = &control_plane.identity;
    let ca = identity.ca_der();
    let leaf = check_issued_chain(
        &issued.certificate_chain_pem,
        ca,
        &identity.identity(),
        key.verifying_key().as_bytes(),
    )
    .map_err(RenewError::BadAnswer)?;
    let facts = rap_core::identity::CertificateFacts::from_der(leaf.as_ref())
        .map_err(|e| RenewError::BadAnswer(e.to_string()))?;
    let mut chain_pem = pem_certificate(leaf.as_ref());
    chain_pem.push_str(&pem_certificate(ca.as_ref()));
    state.write(NODE_CERT_FILE, chain_pem.as_bytes())?;
    rename_durably(
        state,
        &state.path(NEXT_NODE_KEY_FILE),
        &state.path(NODE_KEY_FILE),
    )?;
    let not_after = unix_ms(facts.not_after);
    if let Some(mut record) = state.identity()? {
        record.not_after_unix_ms = not_after;
        record.key_fingerprint = key_fingerprint(key);
        state.write_json(IDENTITY_FILE, &record)?;
    }
    Ok((facts.serial_hex, not_after))
}

/// Keeps the certificate renewed until `stop` turns true (see the module
/// docs); publishes every attempt's outcome to `outcome` and returns the
/// last. Never fails: errors are retried, logged and published.
pub async fn keep_renewed(
    control_plane: ControlPlane,
    state: ClusterState,
    stop: watch::Receiver<bool>,
    outcome: watch::Sender<RenewalOutcome>,
) -> RenewalOutcome {
    let span = tracing::info_span!(
        "renewal",
        cluster_id = %control_plane.cluster,
        node_id = %control_plane.node,
    );
    run(control_plane, state, stop, outcome)
        .instrument(span)
        .await
}

async fn run(
    control_plane: ControlPlane,
    state: ClusterState,
    mut stop: watch::Receiver<bool>,
    outcome: watch::Sender<RenewalOutcome>,
) -> RenewalOutcome {
    let mut result = RenewalOutcome::default();
    let mut consecutive = 0u32;
    loop {
        if *stop.borrow() {
            return result;
        }
        let facts = control_plane.identity.facts();
        let (lifetime, lived, left) = life(facts.not_before, facts.not_after, SystemTime::now());
        let pause = if due(lifetime, lived) {
            let renewed = tokio::select! {
                renewed = renew_now(&control_plane, &state) => renewed,
                _ = stop.wait_for(|s| *s) => return result,
            };
            match renewed {
                Ok(renewed) => {
                    tracing::info!(
                        serial = %renewed.serial,
                        not_after_unix_ms = renewed.not_after_unix_ms,
                        key = %renewed.key_fingerprint,
                        "certificate renewed with a new key"
                    );
                    consecutive = 0;
                    result.renewals += 1;
                    result.last = Some(renewed);
                    result.last_error = None;
                    outcome.send_replace(result.clone());
                    continue;
                }
                Err(error) => {
                    consecutive = consecutive.saturating_add(1);
                    result.failures += 1;
                    let pause = retry_pause(consecutive, left);
                    tracing::warn!(
                        code = %error.code(),
                        %error,
                        left_s = left.as_secs(),
                        retry_in_ms = pause.as_millis() as u64,
                        "certificate renewal failed"
                    );
                    result.last_error = Some((error.code().to_string(), error.to_string()));
                    outcome.send_replace(result.clone());
                    pause
                }
            }
        } else {
            let until_due =
                (lifetime * RENEW_AFTER_NUMERATOR / RENEW_AFTER_DENOMINATOR).saturating_sub(lived);
            check_interval(lifetime).min(until_due.max(CHECK_INTERVAL_MIN))
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::{CA_CERT_FILE, IdentityRecord};
    use rap_core::tls::ClusterCa;
    use rap_proto::ids::{ClusterId, NodeId};

    // Goal: renewal is due from two thirds of the issued life on, with the
    // backdated not_before taken off; checks come often for a short
    // certificate and rarely for a long one; retries back off but stay
    // within a tenth of the time left. Method: arithmetic.
    #[test]
    fn renewal_point_interval_and_retry() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let not_before = issued - NOT_BEFORE_BACKDATE;
        let not_after = issued + Duration::from_secs(30);
        let (lifetime, lived, left) = life(not_before, not_after, issued + Duration::from_secs(19));
        assert_eq!(lifetime, Duration::from_secs(30));
        assert_eq!(left, Duration::from_secs(11));
        assert!(!due(lifetime, lived));
        let (lifetime, lived, _) = life(not_before, not_after, issued + Duration::from_secs(20));
        assert!(due(lifetime, lived));
        // Not backdated and shorter than the backdate: counted from
        // not_before.
        let (lifetime, _, _) = life(issued, not_after, issued);
        assert_eq!(lifetime, Duration::from_secs(30));

        let day = Duration::from_secs(86_400);
        assert_eq!(check_interval(day), CHECK_INTERVAL_MAX);
        assert_eq!(check_interval(Duration::ZERO), CHECK_INTERVAL_MIN);
        assert!(check_interval(Duration::from_secs(12)) < Duration::from_secs(1));

        assert_eq!(retry_pause(1, day), RETRY_MIN);
        assert_eq!(retry_pause(3, day), RETRY_MIN * 4);
        assert_eq!(retry_pause(u32::MAX, day), RETRY_MAX);
        assert_eq!(
            retry_pause(5, Duration::from_secs(20)),
            Duration::from_secs(2)
        );
        assert_eq!(retry_pause(5, Duration::ZERO), RETRY_MIN);
    }

    /// A fresh key and its certificate chain from the development CA
    /// (issued into a scratch directory `name` under `dir`).
    fn issue(ca: &ClusterCa, dir: &std::path::Path, name: &str) -> (SigningKey, String) {
        let identity = rap_core::identity::PeerIdentity::node(
            ClusterId::new("c1").unwrap(),
            NodeId::new("n1").unwrap(),
        )
        .unwrap();
        let files = ca
            .issue(&dir.join(name), &identity, Duration::from_secs(60), &[])
            .unwrap();
        // rcgen writes PKCS#8 v2 (with the public key): take the seed.
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(&files.key).unwrap();
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
        let der = der.secret_pkcs8_der();
        let at = der
            .windows(4)
            .position(|w| w == [0x04, 0x22, 0x04, 0x20])
            .unwrap()
            + 4;
        let seed: [u8; 32] = der[at..at + 32].try_into().unwrap();
        (
            SigningKey::from_bytes(&seed),
            std::fs::read_to_string(&files.cert).unwrap(),
        )
    }

    /// An enrolled cluster directory: returns (state, CA, key, chain).
    fn enrolled(dir: &std::path::Path) -> (ClusterState, ClusterCa, SigningKey, String) {
        let cluster = ClusterId::new("c1").unwrap();
        let ca = ClusterCa::create(&dir.join("ca"), &cluster).unwrap();
        let state = ClusterState::open(&dir.join("state"), &cluster).unwrap();
        let (key, chain) = issue(&ca, dir, "first");
        write_atomic(
            &state.path(NODE_KEY_FILE),
            key_pem(&key).unwrap().as_bytes(),
            PRIVATE_FILE_MODE,
        )
        .unwrap();
        state.write(NODE_CERT_FILE, chain.as_bytes()).unwrap();
        state.write(CA_CERT_FILE, ca.cert_pem().as_bytes()).unwrap();
        state
            .write_json(
                IDENTITY_FILE,
                &IdentityRecord {
                    node_id: "n1".into(),
                    cluster_id: "c1".into(),
                    not_after_unix_ms: 1,
                    server: "127.0.0.1:1".into(),
                    ca_fingerprint: "00".into(),
                    key_fingerprint: key_fingerprint(&key),
                },
            )
            .unwrap();
        (state, ca, key, chain)
    }

    fn read(state: &ClusterState, name: &str) -> Vec<u8> {
        std::fs::read(state.path(name)).unwrap()
    }

    // Goal (crash safety of key rotation): every crash point of a
    // rotation leaves, after `recover`, a key that matches its
    // certificate, and identity.json follows the pair. Method: the files
    // as a crash leaves them (1) before the certificate was stored: the
    // next key is discarded, the old pair untouched; (2) after the
    // certificate, before the key rename: the rotation is finished;
    // (3) after the rename, before identity.json: only identity.json is
    // rewritten; (4) nothing under way: nothing changes.
    #[test]
    fn recover_every_crash_point() {
        let dir = tempfile::tempdir().unwrap();
        let (state, ca, old_key, old_chain) = enrolled(dir.path());
        let (next, new_chain) = issue(&ca, dir.path(), "second");
        let next_pem = key_pem(&next).unwrap();

        // (1) Crash after writing node.key.next, before node.pem.
        write_atomic(
            &state.path(NEXT_NODE_KEY_FILE),
            next_pem.as_bytes(),
            PRIVATE_FILE_MODE,
        )
        .unwrap();
        let key_before = read(&state, NODE_KEY_FILE);
        assert_eq!(recover(&state).unwrap(), Recovery::Discarded);
        let record = state.identity().unwrap().unwrap();
        assert!(
            record.not_after_unix_ms > 1,
            "identity.json follows node.pem"
        );
        assert!(!state.path(NEXT_NODE_KEY_FILE).exists());
        assert_eq!(read(&state, NODE_KEY_FILE), key_before);
        assert_eq!(read(&state, NODE_CERT_FILE), old_chain.as_bytes());
        assert_eq!(
            state.identity().unwrap().unwrap().key_fingerprint,
            key_fingerprint(&old_key)
        );

        // (2) Crash after node.pem, before the key rename.
        write_atomic(
            &state.path(NEXT_NODE_KEY_FILE),
            next_pem.as_bytes(),
            PRIVATE_FILE_MODE,
        )
        .unwrap();
        state.write(NODE_CERT_FILE, new_chain.as_bytes()).unwrap();
        assert_eq!(recover(&state).unwrap(), Recovery::Completed);
        assert!(!state.path(NEXT_NODE_KEY_FILE).exists());
        assert_eq!(read(&state, NODE_KEY_FILE), next_pem.as_bytes());
        let record = state.identity().unwrap().unwrap();
        assert_eq!(record.key_fingerprint, key_fingerprint(&next));
        assert!(record.not_after_unix_ms > 1);
        LiveIdentity::load(rap_core::tls::TlsFiles::in_dir(state.dir())).unwrap();

        // (3) Crash after the rename, before identity.json.
        let mut stale = record.clone();
        stale.key_fingerprint = "stale".into();
        state.write_json(IDENTITY_FILE, &stale).unwrap();
        assert_eq!(recover(&state).unwrap(), Recovery::Nothing);
        assert_eq!(state.identity().unwrap().unwrap(), record);

        // (4) Nothing under way.
        let files: Vec<_> = [NODE_KEY_FILE, NODE_CERT_FILE, IDENTITY_FILE]
            .iter()
            .map(|f| read(&state, f))
            .collect();
        assert_eq!(recover(&state).unwrap(), Recovery::Nothing);
        let after: Vec<_> = [NODE_KEY_FILE, NODE_CERT_FILE, IDENTITY_FILE]
            .iter()
            .map(|f| read(&state, f))
            .collect();
        assert_eq!(files, after);
    }
}
