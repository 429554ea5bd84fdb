//! Unit tests of the keys directory.

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

// Goal: created keys load back identically, in the ClusterCa format, with a
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

    let dev_ca = ClusterCa::load(loaded.dir()).expect("ClusterCa loads the cluster CA");
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
    rap_core::tls::live::LiveIdentity::load(tls).expect("client identity loads");

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
    let platform = PlatformKeys::create_or_load(keys_dir.path(), &["cp.example.com".to_string()])
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

// Goal: two writers of one keys directory (threads or control plane
// processes sharing it) never renew at the same time.
// Method: hold the directory's lock, then try to take it through another
// open file description (as another process would): refused while held,
// granted once the holder drops it.
#[test]
fn keys_dir_lock_excludes_other_holders() {
    let dir = tempfile::tempdir().unwrap();
    let held = KeysDirLock::take(dir.path()).unwrap();
    let other = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(KEYS_LOCK_FILE))
        .unwrap();
    assert!(
        matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        "a second holder got the lock"
    );
    assert_eq!(mode(&dir.path().join(KEYS_LOCK_FILE)), 0o600);
    drop(held);
    other.try_lock().expect("free once the holder is gone");
}

// Goal: the expiry report reads every certificate a cluster's and the
// platform's key files hold, with the serial and end the files carry; a
// missing file is no entry and a damaged one an error naming the file.
// Method: real keys in a temp dir; compare with x509 parsing of each
// file; then a garbage and a missing file.
#[test]
fn expiry_of_the_key_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c1 = cluster("c1");
    ClusterKeys::create(dir.path(), &c1).expect("create");
    ClusterKeys::load(dir.path(), &c1).expect("load");
    PlatformKeys::create_or_load(dir.path(), &[]).expect("platform");
    let files: Vec<_> = expiry::platform_cert_files(dir.path())
        .into_iter()
        .chain(expiry::cluster_cert_files(dir.path(), &c1))
        .collect();
    let roles: Vec<&str> = files.iter().map(|f| f.role.name()).collect();
    assert_eq!(
        roles,
        [
            "platform-ca",
            "platform-server",
            "cluster-ca",
            "cluster-server",
            "controlplane-client"
        ]
    );
    for file in &files {
        let read = expiry::read_cert_expiry(&file.path)
            .expect("readable")
            .unwrap_or_else(|| panic!("{} missing", file.path.display()));
        let pem = std::fs::read_to_string(&file.path).expect("read");
        let der = pem_certs(&pem).remove(0);
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
        assert_eq!(read.serial_hex, hex::encode(cert.raw_serial()));
        assert_eq!(
            read.not_after_unix_ms,
            cert.validity().not_after.timestamp() * 1000
        );
        assert_eq!(
            file.role.renewed_automatically(),
            !file.role.name().ends_with("-ca")
        );
    }
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").expect("write");
    let error = expiry::read_cert_expiry(&garbage).expect_err("garbage");
    assert!(error.contains("garbage.pem"), "{error}");
    assert_eq!(
        expiry::read_cert_expiry(&dir.path().join("absent.pem")),
        Ok(None)
    );
}
