//! The development CA and the TLS file handling.

use rap_authority::Error;
use rap_authority::tls::{CA_KEY_FILE, DevCa, NODE_CERT_VALIDITY_MAX, PeerIdentity, TlsFiles};
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
    let ca = DevCa::create(dir.path(), &cluster("c1")).expect("create CA");
    assert_eq!(ca.cluster_id().as_str(), "c1");
    assert_eq!(mode(&dir.path().join(CA_KEY_FILE)), 0o600);
    let loaded = DevCa::load(dir.path()).expect("load CA");
    assert_eq!(loaded.cluster_id(), ca.cluster_id());
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    let again = DevCa::create(dir.path(), &cluster("c1"));
    assert!(matches!(again, Err(Error::InvalidRequest(_))), "{again:?}");
    assert_eq!(
        DevCa::load(dir.path()).expect("still loads").cert_pem(),
        ca.cert_pem()
    );
}

// Goal: a node certificate names rap://cluster/<c>/node/<n>, its key is
// 0600, the CA copy sits beside it, the default validity is 24 h and a
// configured one is honoured; a validity above the maximum is refused.
// Method: issue into a node dir, read back identity and not_after.
#[test]
fn issue_node_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::create(&dir.path().join("ca"), &cluster("c1")).expect("create CA");
    let node_dir = dir.path().join("s1");
    let files = ca.issue_node(&node_dir, &node("s1")).expect("issue");
    assert_eq!(files, TlsFiles::in_dir(&node_dir));
    assert_eq!(mode(&files.key), 0o600);
    assert_eq!(
        std::fs::read_to_string(&files.ca).expect("ca copy"),
        ca.cert_pem()
    );
    let identity = files.identity().expect("identity");
    assert_eq!(identity, PeerIdentity::new(cluster("c1"), node("s1")));
    assert_eq!(identity.uri(), "rap://cluster/c1/node/s1");
    let day = not_after_unix(&files.cert) - unix_now();
    assert!(
        (24 * 3600 - 120..=24 * 3600 + 120).contains(&day),
        "{day} s"
    );

    let short = ca
        .issue_node_for(&node_dir, &node("s1"), Duration::from_secs(600))
        .expect("renew with a short validity");
    let left = not_after_unix(&short.cert) - unix_now();
    assert!((480..=720).contains(&left), "{left} s");

    let too_long = ca.issue_node_for(
        &node_dir,
        &node("s1"),
        NODE_CERT_VALIDITY_MAX + Duration::from_secs(1),
    );
    assert!(matches!(too_long, Err(Error::InvalidRequest(_))));
    // Both configs build from the files.
    files.server_config().expect("server config");
    files.client_config().expect("client config");
}

// Goal: a key readable by others is refused, and a CA key that does not
// belong to the certificate is refused. Method: chmod 0644; swap in the
// key of another CA.
#[test]
fn refuses_open_or_foreign_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::create(&dir.path().join("ca"), &cluster("c1")).expect("create CA");
    let files = ca
        .issue_node(&dir.path().join("s1"), &node("s1"))
        .expect("issue");
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let open = files.server_config();
    assert!(
        matches!(&open, Err(Error::InvalidRequest(m)) if m.contains("chmod 600")),
        "{open:?}"
    );

    let other = DevCa::create(&dir.path().join("other"), &cluster("c1")).expect("other CA");
    drop(other);
    std::fs::copy(
        dir.path().join("other").join(CA_KEY_FILE),
        dir.path().join("ca").join(CA_KEY_FILE),
    )
    .expect("swap key");
    let mismatched = DevCa::load(&dir.path().join("ca"));
    assert!(
        matches!(&mismatched, Err(Error::InvalidRequest(m)) if m.contains("does not belong")),
        "{mismatched:?}"
    );
}

// Goal: missing files are typed errors, not panics. Method: configs from
// an empty directory.
#[test]
fn missing_files_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = TlsFiles::in_dir(dir.path());
    assert!(matches!(files.server_config(), Err(Error::Storage(_))));
    assert!(matches!(files.client_config(), Err(Error::Storage(_))));
    assert!(DevCa::load(dir.path()).is_err());
}
