//! The body of the `trust/revocations` shard (`rap.v1.RevocationList`):
//! every revoked certificate of a cluster. The control plane encodes it
//! ([`encode`]); storage nodes and agents decode it ([`decode`]) from a
//! verified envelope and refuse the listed certificates.

use crate::error::{Error, Result};
use crate::ids::{ClusterId, NodeId};
use crate::limits::{BODY_BYTES_MAX, REVOCATIONS_MAX, SERIAL_HEX_BYTES_MAX};
use crate::pb;
use prost::Message;

/// The body format this code writes and accepts.
pub const REVOCATIONS_FORMAT: u32 = 1;

/// The scope of the revocation list.
pub const REVOCATIONS_SCOPE: &str = "trust/revocations";

/// Encodes the revocation list of `cluster_id`, refusing more than
/// [`REVOCATIONS_MAX`] entries.
pub fn encode(cluster_id: &ClusterId, revoked: Vec<pb::RevokedCertificate>) -> Result<Vec<u8>> {
    if revoked.len() > REVOCATIONS_MAX {
        return Err(Error::Oversize {
            what: "revocation list",
            limit: REVOCATIONS_MAX,
            got: revoked.len(),
        });
    }
    let list = pb::RevocationList {
        format: REVOCATIONS_FORMAT,
        cluster_id: cluster_id.to_string(),
        revoked,
    };
    check(&list, cluster_id)?;
    Ok(list.encode_to_vec())
}

/// Decodes a revocation list body of `cluster_id` and checks its limits,
/// format, cluster, node ids and serials.
pub fn decode(body: &[u8], cluster_id: &ClusterId) -> Result<pb::RevocationList> {
    if body.len() > BODY_BYTES_MAX {
        return Err(Error::Oversize {
            what: "revocation list",
            limit: BODY_BYTES_MAX,
            got: body.len(),
        });
    }
    let list = pb::RevocationList::decode(body).map_err(|e| Error::Malformed {
        what: "revocation list",
        reason: e.to_string(),
    })?;
    check(&list, cluster_id)?;
    Ok(list)
}

fn check(list: &pb::RevocationList, cluster_id: &ClusterId) -> Result<()> {
    if list.format != REVOCATIONS_FORMAT {
        return Err(Error::UnsupportedFormat {
            what: "revocation list",
            got: list.format,
            supported: REVOCATIONS_FORMAT,
        });
    }
    if list.cluster_id != cluster_id.as_str() {
        return Err(Error::WrongCluster {
            expected: cluster_id.clone(),
            got: list.cluster_id.chars().take(80).collect(),
        });
    }
    if list.revoked.len() > REVOCATIONS_MAX {
        return Err(Error::Oversize {
            what: "revocation list",
            limit: REVOCATIONS_MAX,
            got: list.revoked.len(),
        });
    }
    for entry in &list.revoked {
        NodeId::new(entry.node_id.as_str())?;
        let serial = &entry.certificate_serial;
        let hex = !serial.is_empty()
            && serial.len() <= SERIAL_HEX_BYTES_MAX
            && serial
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(Error::Malformed {
                what: "revocation list",
                reason: format!(
                    "serial {:?} is not lowercase hex of at most {SERIAL_HEX_BYTES_MAX} characters",
                    serial.chars().take(48).collect::<String>()
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(node: &str, serial: &str) -> pb::RevokedCertificate {
        pb::RevokedCertificate {
            node_id: node.into(),
            certificate_serial: serial.into(),
            revoked_at_unix_ms: 1,
        }
    }

    // Goal: a list round-trips; another cluster, a bad serial, a bad node
    // id, another format and too many entries are refused. Method: table.
    #[test]
    fn round_trip_and_refusals() {
        let c1 = ClusterId::new("c1").expect("cluster");
        let c2 = ClusterId::new("c2").expect("cluster");
        let body = encode(&c1, vec![entry("n-1", "0a1b")]).expect("encode");
        assert_eq!(decode(&body, &c1).expect("decode").revoked.len(), 1);
        assert!(matches!(
            decode(&body, &c2),
            Err(Error::WrongCluster { .. })
        ));
        assert!(encode(&c1, vec![entry("n-1", "0A1B")]).is_err());
        assert!(encode(&c1, vec![entry("N 1", "0a")]).is_err());
        let other_format = pb::RevocationList {
            format: 2,
            cluster_id: "c1".into(),
            revoked: vec![],
        }
        .encode_to_vec();
        assert!(matches!(
            decode(&other_format, &c1),
            Err(Error::UnsupportedFormat { .. })
        ));
        let many = (0..=REVOCATIONS_MAX).map(|_| entry("n-1", "01")).collect();
        assert!(matches!(encode(&c1, many), Err(Error::Oversize { .. })));
        assert!(decode(b"\xff\xff", &c1).is_err());
    }
}
