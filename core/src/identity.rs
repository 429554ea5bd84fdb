//! Who a certificate says its holder is: cluster, kind and id, in one URI
//! subject alternative name.
//!
//! | kind | URI SAN |
//! |---|---|
//! | storage node (`rap-configstore`) | `rap://cluster/<c>/storage/<id>` |
//! | agent node (`rap-node-agent`) | `rap://cluster/<c>/node/<id>` |
//! | control plane | `rap://cluster/<c>/controlplane` |
//! | operator (a person's or tool's client certificate) | `rap://cluster/<c>/operator/<id>` |
//!
//! A certificate from the cluster CA proves only that the CA issued it;
//! what its holder may call is decided by its kind (and, for storage
//! nodes, group membership) in the access table of `rap-authority`. Every certificate names
//! exactly one identity; [`PeerIdentity::from_cert_der`] refuses none or
//! several.

use crate::error::{Error, Result};
use rap_proto::ids::{ClusterId, NodeId};
use std::fmt;
use std::time::{Duration, SystemTime};

/// The id the control plane's identity carries in every cluster. It is
/// reserved: no agent or storage node may be given it.
pub const CONTROLPLANE_ID: &str = "controlplane";

/// Prefix of every rap identity URI (and of a cluster CA's URI,
/// `rap://cluster/<c>`).
pub const CLUSTER_URI_PREFIX: &str = "rap://cluster/";

/// Suffix of a cluster's control plane server name:
/// `<cluster_id>.cluster.rap`.
pub const CLUSTER_SERVER_NAME_SUFFIX: &str = ".cluster.rap";

/// The TLS server name of `cluster_id`'s control plane endpoint:
/// `<cluster_id>.cluster.rap` (a cluster id is a DNS label). Joining and
/// renewing nodes send it as SNI and verify the control plane's
/// certificate (from the cluster CA) against it.
pub fn cluster_server_name(cluster_id: &ClusterId) -> String {
    format!("{cluster_id}{CLUSTER_SERVER_NAME_SUFFIX}")
}

/// What kind of party holds a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityKind {
    /// A storage/config node (`rap-configstore`): a possible member of
    /// the cluster's authority group.
    Storage,
    /// An agent node (`rap-node-agent`).
    Node,
    /// The control plane.
    ControlPlane,
    /// An operator's client certificate (development clusters without a
    /// control plane, tooling).
    Operator,
}

impl IdentityKind {
    /// Every kind, in table order.
    pub const ALL: [IdentityKind; 4] = [
        IdentityKind::Storage,
        IdentityKind::Node,
        IdentityKind::ControlPlane,
        IdentityKind::Operator,
    ];

    /// The URI path segment (and the name used in docs and errors).
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Storage => "storage",
            IdentityKind::Node => "node",
            IdentityKind::ControlPlane => "controlplane",
            IdentityKind::Operator => "operator",
        }
    }

    fn from_segment(segment: &str) -> Option<IdentityKind> {
        IdentityKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == segment)
    }
}

impl fmt::Display for IdentityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The holder's cluster.
    pub cluster_id: ClusterId,
    /// What the holder is.
    pub kind: IdentityKind,
    /// The holder's id ([`CONTROLPLANE_ID`] for the control plane).
    pub node_id: NodeId,
}

impl PeerIdentity {
    /// An identity of `kind` for `id` in `cluster_id`. For
    /// [`IdentityKind::ControlPlane`] the id must be [`CONTROLPLANE_ID`].
    pub fn new(cluster_id: ClusterId, kind: IdentityKind, node_id: NodeId) -> Result<Self> {
        let controlplane_id = node_id.as_str() == CONTROLPLANE_ID;
        if (kind == IdentityKind::ControlPlane) != controlplane_id {
            return Err(Error::InvalidRequest(format!(
                "the id {CONTROLPLANE_ID:?} is the control plane's and only its, not {kind} {node_id}"
            )));
        }
        Ok(PeerIdentity {
            cluster_id,
            kind,
            node_id,
        })
    }

    /// An agent node's identity.
    pub fn node(cluster_id: ClusterId, node_id: NodeId) -> Result<Self> {
        Self::new(cluster_id, IdentityKind::Node, node_id)
    }

    /// A storage node's identity.
    pub fn storage(cluster_id: ClusterId, node_id: NodeId) -> Result<Self> {
        Self::new(cluster_id, IdentityKind::Storage, node_id)
    }

    /// An operator's identity.
    pub fn operator(cluster_id: ClusterId, name: NodeId) -> Result<Self> {
        Self::new(cluster_id, IdentityKind::Operator, name)
    }

    /// The control plane's identity in `cluster_id`.
    pub fn control_plane(cluster_id: ClusterId) -> Self {
        PeerIdentity {
            cluster_id,
            kind: IdentityKind::ControlPlane,
            node_id: controlplane_node_id(),
        }
    }

    /// Its URI SAN (see the module docs).
    pub fn uri(&self) -> String {
        match self.kind {
            IdentityKind::ControlPlane => {
                format!("{CLUSTER_URI_PREFIX}{}/{}", self.cluster_id, self.kind)
            }
            kind => format!(
                "{CLUSTER_URI_PREFIX}{}/{kind}/{}",
                self.cluster_id, self.node_id
            ),
        }
    }

    /// Parses a URI written by [`PeerIdentity::uri`]; ids must be valid
    /// (DNS labels) and nothing may follow them.
    pub fn from_uri(uri: &str) -> Result<Self> {
        let malformed = || Error::InvalidRequest(format!("not a rap identity URI: {uri:?}"));
        let rest = uri.strip_prefix(CLUSTER_URI_PREFIX).ok_or_else(malformed)?;
        let (cluster, rest) = rest.split_once('/').ok_or_else(malformed)?;
        let cluster_id = ClusterId::new(cluster).map_err(|_| malformed())?;
        if rest == IdentityKind::ControlPlane.as_str() {
            return Ok(Self::control_plane(cluster_id));
        }
        let (segment, id) = rest.split_once('/').ok_or_else(malformed)?;
        let kind = IdentityKind::from_segment(segment)
            .filter(|kind| *kind != IdentityKind::ControlPlane)
            .ok_or_else(malformed)?;
        let node_id = NodeId::new(id).map_err(|_| malformed())?;
        Self::new(cluster_id, kind, node_id).map_err(|_| malformed())
    }

    /// The identity a DER certificate names: exactly one rap identity URI
    /// SAN (a CA's `rap://cluster/<c>` is not one). The chain is *not*
    /// checked here (rustls did that during the handshake).
    pub fn from_cert_der(der: &[u8]) -> Result<Self> {
        Ok(CertificateFacts::from_der(der)?.identity)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// The control plane's reserved id as a [`NodeId`].
pub fn controlplane_node_id() -> NodeId {
    // A constant DNS label: checked by the unit test below.
    #[allow(clippy::expect_used)]
    NodeId::new(CONTROLPLANE_ID).expect("the reserved control plane id is a valid node id")
}

/// What a certificate says, read once: identity, serial and validity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The holder.
    pub identity: PeerIdentity,
    /// The serial number, lowercase hex of its DER bytes (as the control
    /// plane records and revokes it).
    pub serial_hex: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl CertificateFacts {
    /// Reads a DER certificate (not its chain: rustls checks that).
    pub fn from_der(der: &[u8]) -> Result<Self> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::InvalidRequest(format!("parse certificate: {e}")))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| Error::InvalidRequest(format!("parse certificate SAN: {e}")))?;
        let mut identities = san
            .iter()
            .flat_map(|san| san.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .filter(|uri| {
                uri.strip_prefix(CLUSTER_URI_PREFIX)
                    .is_some_and(|rest| rest.contains('/'))
            });
        let first = identities.next().ok_or_else(|| {
            Error::InvalidRequest("certificate names no rap://cluster/<c>/<kind>/... URI".into())
        })?;
        if identities.next().is_some() {
            return Err(Error::InvalidRequest(
                "certificate names more than one rap identity URI".into(),
            ));
        }
        let identity = PeerIdentity::from_uri(first)?;
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = u64::try_from(t.timestamp()).unwrap_or(0);
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
        };
        Ok(CertificateFacts {
            identity,
            serial_hex: hex::encode(cert.raw_serial()),
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterId {
        ClusterId::new("c1").expect("cluster")
    }

    fn id(text: &str) -> NodeId {
        NodeId::new(text).expect("node id")
    }

    // Goal: every kind's URI round-trips and names its kind; anything else
    // (other prefixes, extra segments, unknown kinds, invalid ids, the
    // control plane's id under another kind) is refused. Method: table.
    #[test]
    fn uris_round_trip_and_refusals() {
        let all = [
            (
                PeerIdentity::storage(cluster(), id("s-2")).expect("storage"),
                "rap://cluster/c1/storage/s-2",
            ),
            (
                PeerIdentity::node(cluster(), id("n-1")).expect("node"),
                "rap://cluster/c1/node/n-1",
            ),
            (
                PeerIdentity::operator(cluster(), id("admin")).expect("operator"),
                "rap://cluster/c1/operator/admin",
            ),
            (
                PeerIdentity::control_plane(cluster()),
                "rap://cluster/c1/controlplane",
            ),
        ];
        for (identity, uri) in &all {
            assert_eq!(identity.uri(), *uri);
            assert_eq!(&PeerIdentity::from_uri(uri).expect("parse"), identity);
        }
        for bad in [
            "rap://cluster/c1",
            "rap://cluster/c1/",
            "rap://cluster/c1/node/",
            "rap://cluster/c1/node/s1/extra",
            "rap://cluster//node/s1",
            "https://cluster/c1/node/s1",
            "rap://cluster/C 1/node/s1",
            "rap://cluster/c1/nodes/s1",
            "rap://cluster/c1/controlplane/x",
            "rap://cluster/c1/node/controlplane",
            "rap://cluster/c1/storage/controlplane",
        ] {
            assert!(
                PeerIdentity::from_uri(bad).is_err(),
                "{bad} must be refused"
            );
        }
        assert_eq!(controlplane_node_id().as_str(), CONTROLPLANE_ID);
        assert!(PeerIdentity::node(cluster(), controlplane_node_id()).is_err());
    }

    // Goal: a non-certificate is a typed error. Method: parse garbage.
    #[test]
    fn garbage_certificate_is_refused() {
        assert!(matches!(
            PeerIdentity::from_cert_der(b"not a certificate"),
            Err(Error::InvalidRequest(_))
        ));
    }
}
