//! The certificates kept in the keys directory and when they expire, for
//! the expiry report ([`crate::certificates`]). Node and storage-node
//! certificates are in PostgreSQL (`node_identities`), not here.

use super::{CLUSTERS_DIR, CONTROLPLANE_TLS_DIR, PLATFORM_DIR, SERVER_CERT_FILE};
use rap_core::files::read_bounded;
use rap_core::tls::{CA_CERT_FILE, NODE_CERT_FILE, PEM_FILE_BYTES_MAX};
use rap_proto::ids::ClusterId;
use std::path::{Path, PathBuf};

/// What a certificate in the keys directory is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertRole {
    /// The platform CA (admins' and joining agents' trust anchor).
    PlatformCa,
    /// The control plane's default TLS server certificate.
    PlatformServer,
    /// A cluster's CA.
    ClusterCa,
    /// The control plane's TLS server certificate from a cluster's CA.
    ClusterServer,
    /// The control plane's client certificate towards a cluster's storage
    /// nodes.
    ControlplaneClient,
}

impl CertRole {
    /// The name in reports (`kind`).
    pub fn name(self) -> &'static str {
        match self {
            CertRole::PlatformCa => "platform-ca",
            CertRole::PlatformServer => "platform-server",
            CertRole::ClusterCa => "cluster-ca",
            CertRole::ClusterServer => "cluster-server",
            CertRole::ControlplaneClient => "controlplane-client",
        }
    }

    /// Whether the control plane replaces it by itself before it expires
    /// (CAs are replaced only by an operator).
    pub fn renewed_automatically(self) -> bool {
        !matches!(self, CertRole::PlatformCa | CertRole::ClusterCa)
    }
}

/// One certificate file in the keys directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFile {
    /// Its cluster; `None` for the platform's.
    pub cluster_id: Option<String>,
    /// What it is for.
    pub role: CertRole,
    /// Where it is.
    pub path: PathBuf,
}

/// The platform's certificate files under `keys_dir`.
pub fn platform_cert_files(keys_dir: &Path) -> Vec<CertFile> {
    let dir = keys_dir.join(PLATFORM_DIR);
    [
        (CertRole::PlatformCa, dir.join(CA_CERT_FILE)),
        (CertRole::PlatformServer, dir.join(SERVER_CERT_FILE)),
    ]
    .into_iter()
    .map(|(role, path)| CertFile {
        cluster_id: None,
        role,
        path,
    })
    .collect()
}

/// `cluster`'s certificate files under `keys_dir`.
pub fn cluster_cert_files(keys_dir: &Path, cluster: &ClusterId) -> Vec<CertFile> {
    let dir = keys_dir.join(CLUSTERS_DIR).join(cluster.as_str());
    [
        (CertRole::ClusterCa, dir.join(CA_CERT_FILE)),
        (CertRole::ClusterServer, dir.join(SERVER_CERT_FILE)),
        (
            CertRole::ControlplaneClient,
            dir.join(CONTROLPLANE_TLS_DIR).join(NODE_CERT_FILE),
        ),
    ]
    .into_iter()
    .map(|(role, path)| CertFile {
        cluster_id: Some(cluster.as_str().to_string()),
        role,
        path,
    })
    .collect()
}

/// The serial and expiry of a certificate file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertExpiry {
    /// The serial number, lower-case hex.
    pub serial_hex: String,
    /// Not after, Unix milliseconds.
    pub not_after_unix_ms: i64,
}

/// Reads the first certificate of the PEM file at `path` (at most
/// [`PEM_FILE_BYTES_MAX`]): `Ok(None)` when there is no such file,
/// `Err(why)` when it cannot be read or parsed.
pub fn read_cert_expiry(path: &Path) -> Result<Option<CertExpiry>, String> {
    let bytes = match read_bounded(path, PEM_FILE_BYTES_MAX) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes)
        .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("{}: not an X.509 certificate: {e}", path.display()))?;
    Ok(Some(CertExpiry {
        serial_hex: hex::encode(cert.raw_serial()),
        not_after_unix_ms: cert.validity().not_after.timestamp().saturating_mul(1000),
    }))
}
