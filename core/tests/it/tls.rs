//! The development CA, the TLS file handling and the reloadable identity.

use rap_core::Error;
use rap_core::identity::PeerIdentity;
use rap_core::tls::live::LiveIdentity;
use rap_core::tls::{
    CA_KEY_FILE, ClusterCa, NODE_CERT_VALIDITY_MAX, NODE_CERT_VALIDITY_MIN, TlsFiles,
};
use rap_proto::ids::{ClusterId, NodeId};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

fn cluster(id: &str) -> ClusterId {
    ClusterId::new(id).expect("cluster id")
}

fn node(id: &str) -> NodeId {
    NodeId::new(id).expect("node id")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn not_after_unix(pem_path: &Path) -> i64 {
    let der = CertificateDer::from_pem_file(pem_path).expect("read certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("parse certificate");
    cert.validity().not_after.timestamp()
}

fn unix_now() -> i64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_secs()).expect("fits")
}

// Goal: a CA is created with a private key (0600), loads back with its
// cluster, and is never overwritten. Method: create, load, create again.
#[test]
fn dev_ca_create_load_and_no_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::create(dir.path(), &cluster("c1")).expect("create CA");
    assert_eq!(ca.cluster_id().as_str(), "c1");
    assert_eq!(mode(&dir.path().join(CA_KEY_FILE)), 0o600);
    let loaded = ClusterCa::load(dir.path()).expect("load CA");
    assert_eq!(loaded.cluster_id(), ca.cluster_id());
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    let again = ClusterCa::create(dir.path(), &cluster("c1"));
    assert!(matches!(again, Err(Error::InvalidRequest(_))), "{again:?}");
    assert_eq!(
        ClusterCa::load(dir.path()).expect("still loads").cert_pem(),
        ca.cert_pem()
    );
}

// Goal: a storage certificate names rap://cluster/<c>/storage/<n>, its
// key is 0600, the CA copy sits beside it, the default validity is 24 h
// and a configured one is honoured; a validity outside the bounds is
// refused; an operator certificate names its kind. Method: issue into a
// node dir, read back identity and not_after.
#[test]
fn issue_storage_and_operator_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::create(&dir.path().join("ca"), &cluster("c1")).expect("create CA");
    let node_dir = dir.path().join("s1");
    let files = ca
        .issue_storage(&node_dir, &node("s1"), &[])
        .expect("issue");
    assert_eq!(files, TlsFiles::in_dir(&node_dir));
    assert_eq!(mode(&files.key), 0o600);
    assert_eq!(
        std::fs::read_to_string(&files.ca).expect("ca copy"),
        ca.cert_pem()
    );
    let identity = files.identity().expect("identity");
    assert_eq!(
        identity,
        PeerIdentity::storage(cluster("c1"), node("s1")).expect("id")
    );
    assert_eq!(identity.uri(), "rap://cluster/c1/storage/s1");
    let day = not_after_unix(&files.cert) - unix_now();
    assert!(
        (24 * 3600 - 120..=24 * 3600 + 120).contains(&day),
        "{day} s"
    );

    let short = ca
        .issue(&node_dir, &identity, Duration::from_secs(600), &[])
        .expect("renew with a short validity");
    let left = not_after_unix(&short.cert) - unix_now();
    assert!((480..=720).contains(&left), "{left} s");

    for bad in [
        NODE_CERT_VALIDITY_MIN - Duration::from_secs(1),
        NODE_CERT_VALIDITY_MAX + Duration::from_secs(1),
    ] {
        let refused = ca.issue(&node_dir, &identity, bad, &[]);
        assert!(matches!(refused, Err(Error::InvalidRequest(_))), "{bad:?}");
    }
    LiveIdentity::load(files).expect("the files load as a live identity");

    let operator = ca
        .issue_operator(&dir.path().join("admin"), &node("admin"))
        .expect("operator");
    assert_eq!(
        operator.identity().expect("identity").uri(),
        "rap://cluster/c1/operator/admin"
    );
}

// Goal: a live identity picks up a renewal written to its files (new
// serial, same identity) and nothing else: unchanged files are no
// change, a certificate of another identity or a key that does not match
// is refused and the old pair kept. Method: issue, load, reissue, reload;
// then write foreign files.
#[test]
fn live_identity_reloads_renewals_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::create(&dir.path().join("ca"), &cluster("c1")).expect("create CA");
    let node_dir = dir.path().join("s1");
    let files = ca
        .issue_storage(&node_dir, &node("s1"), &[])
        .expect("issue");
    let live = LiveIdentity::load(files.clone()).expect("load");
    let first = live.facts().serial_hex;
    assert!(!live.reload().expect("no change"));
    ca.issue_storage(&node_dir, &node("s1"), &[])
        .expect("renew");
    assert!(live.reload().expect("renewed"));
    let second = live.facts().serial_hex;
    assert_ne!(first, second);

    // Another identity's certificate and key in the same files.
    let other_dir = dir.path().join("s2");
    let other = ca
        .issue_storage(&other_dir, &node("s2"), &[])
        .expect("issue s2");
    std::fs::copy(&other.cert, &files.cert).expect("swap cert");
    std::fs::copy(&other.key, &files.key).expect("swap key");
    assert!(live.reload().is_err(), "a renewal never switches identity");
    assert_eq!(live.facts().serial_hex, second);

    // A certificate whose key is not in the key file.
    ca.issue_storage(&node_dir, &node("s1"), &[])
        .expect("renew again");
    std::fs::copy(&other.key, &files.key).expect("wrong key");
    let mismatched = live.reload();
    assert!(
        matches!(&mismatched, Err(Error::InvalidRequest(m)) if m.contains("do not belong")),
        "{mismatched:?}"
    );
    assert_eq!(live.facts().serial_hex, second);
}

// Goal: a key readable by others is refused, and a CA key that does not
// belong to the certificate is refused. Method: chmod 0644; swap in the
// key of another CA.
#[test]
fn refuses_open_or_foreign_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::create(&dir.path().join("ca"), &cluster("c1")).expect("create CA");
    let files = ca
        .issue_storage(&dir.path().join("s1"), &node("s1"), &[])
        .expect("issue");
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let open = LiveIdentity::load(files);
    assert!(
        matches!(&open, Err(Error::InvalidRequest(m)) if m.contains("chmod 600")),
        "{open:?}"
    );

    let other = ClusterCa::create(&dir.path().join("other"), &cluster("c1")).expect("other CA");
    drop(other);
    std::fs::copy(
        dir.path().join("other").join(CA_KEY_FILE),
        dir.path().join("ca").join(CA_KEY_FILE),
    )
    .expect("swap key");
    let mismatched = ClusterCa::load(&dir.path().join("ca"));
    assert!(
        matches!(&mismatched, Err(Error::InvalidRequest(m)) if m.contains("does not belong")),
        "{mismatched:?}"
    );
}

// Goal: missing files are typed errors, not panics. Method: load from an
// empty directory.
#[test]
fn missing_files_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = TlsFiles::in_dir(dir.path());
    assert!(matches!(
        LiveIdentity::load(files.clone()),
        Err(Error::Storage(_))
    ));
    assert!(files.identity().is_err());
    assert!(ClusterCa::load(dir.path()).is_err());
}
