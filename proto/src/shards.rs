//! Typed bodies of the snapshot shards (`rap/v1/shards.proto`), one message
//! per scope kind, and the readers that each scope admits.
//!
//! The control plane encodes them; storage nodes and agents decode them
//! from verified envelopes with [`decode`], which checks size, format and
//! cluster. [`node_reader`] turns a verified `node/<id>` body into the
//! [`Reader`] that the readers check of every other scope uses, so a
//! node's roles and organizations come from signed state, never from what
//! the caller says.

use crate::envelope::{HighWaterStore, Reader, ReaderSelector, Scope, Verifier};
use crate::error::{Error, Result};
use crate::ids::{ClusterId, NodeId, OrgId, RoleName, TrustGeneration};
use crate::limits::BODY_BYTES_MAX;
use crate::pb;
use prost::Message;

/// The body format this code writes and accepts (every scope kind).
pub const SHARD_FORMAT: u32 = 1;

/// A shard body: a protobuf message with a format and a cluster.
pub trait ShardBody: Message + Default {
    /// What it is, for errors.
    const WHAT: &'static str;
    /// Its `format` field.
    fn format(&self) -> u32;
    /// Its `cluster_id` field.
    fn cluster_id(&self) -> &str;
}

macro_rules! shard_body {
    ($ty:ty, $what:literal) => {
        impl ShardBody for $ty {
            const WHAT: &'static str = $what;
            fn format(&self) -> u32 {
                self.format
            }
            fn cluster_id(&self) -> &str {
                &self.cluster_id
            }
        }
    };
}

shard_body!(pb::NodeShard, "node shard");
shard_body!(pb::PeersShard, "peers shard");
shard_body!(pb::RoleShard, "role shard");
shard_body!(pb::OrgServicesShard, "org services shard");
shard_body!(pb::TrustRootShard, "trust root shard");
shard_body!(pb::CacheShard, "cache shard");

/// Decodes a body of `cluster_id`, refusing an oversized body, another
/// format or another cluster.
pub fn decode<T: ShardBody>(body: &[u8], cluster_id: &ClusterId) -> Result<T> {
    if body.len() > BODY_BYTES_MAX {
        return Err(Error::Oversize {
            what: T::WHAT,
            limit: BODY_BYTES_MAX,
            got: body.len(),
        });
    }
    let message = T::decode(body).map_err(|e| Error::Malformed {
        what: T::WHAT,
        reason: e.to_string(),
    })?;
    if message.format() != SHARD_FORMAT {
        return Err(Error::UnsupportedFormat {
            what: T::WHAT,
            got: message.format(),
            supported: SHARD_FORMAT,
        });
    }
    if message.cluster_id() != cluster_id.as_str() {
        return Err(Error::WrongCluster {
            expected: cluster_id.clone(),
            got: message.cluster_id().chars().take(80).collect(),
        });
    }
    Ok(message)
}

/// Encodes a body, refusing one over [`BODY_BYTES_MAX`].
pub fn encode<T: ShardBody>(body: &T) -> Result<Vec<u8>> {
    let bytes = body.encode_to_vec();
    if bytes.len() > BODY_BYTES_MAX {
        return Err(Error::Oversize {
            what: T::WHAT,
            limit: BODY_BYTES_MAX,
            got: bytes.len(),
        });
    }
    Ok(bytes)
}

/// The readers of `scope`: the node itself for `node/` and `peers/`, the
/// role's holders for `role/`, the organization's serving nodes for
/// `org/../services`, every node for `trust/`, no node agent for `cache/`
/// (its storage node reads it as a storage node).
pub fn readers_of(scope: &Scope) -> Vec<ReaderSelector> {
    match scope {
        Scope::Cache(_) => Vec::new(),
        Scope::Node(id) | Scope::Peers(id) => vec![ReaderSelector::Node(id.clone())],
        Scope::Role(role) => vec![ReaderSelector::Role(role.clone())],
        Scope::OrgServices(org) => vec![ReaderSelector::Org(org.clone())],
        Scope::TrustRevocations | Scope::TrustRoot => vec![ReaderSelector::AllNodes],
    }
}

/// The reader that a node is, from its own verified `node/<id>` body:
/// its roles and the organizations they serve.
pub fn node_reader(shard: &pb::NodeShard) -> Result<Reader> {
    let node_id = NodeId::new(shard.node_id.as_str())?;
    let mut roles = Vec::with_capacity(shard.roles.len());
    let mut orgs = Vec::new();
    for role in &shard.roles {
        roles.push(RoleName::new(role.role.as_str())?);
        if !role.org_id.is_empty() {
            orgs.push(OrgId::new(role.org_id.as_str())?);
        }
    }
    roles.sort();
    roles.dedup();
    orgs.sort();
    orgs.dedup();
    Ok(Reader::Node {
        node_id,
        roles,
        orgs,
    })
}

/// Follows the trust-root chain carried by a `trust/root` envelope before
/// that envelope is verified: every root newer than the verifier's is
/// checked against the one before it (signed by its keys and by its own)
/// and made current, oldest first. Roots authenticate themselves, so a
/// reader at generation g can verify a `trust/root` envelope signed under
/// g+1. Returns the generation reached, or `None` when `envelope` is not a
/// `trust/root` envelope or carries nothing newer. On error nothing newer
/// than the last root that verified is current.
pub fn follow_trust_roots<S: HighWaterStore>(
    verifier: &mut Verifier<S>,
    cluster_id: &ClusterId,
    envelope: &[u8],
) -> Result<Option<TrustGeneration>> {
    let decoded = crate::envelope::decode(envelope)?;
    if decoded.header.scope != Scope::TrustRoot {
        return Ok(None);
    }
    let body: pb::TrustRootShard = decode(&decoded.body, cluster_id)?;
    let mut reached = None;
    for root in &body.roots {
        let generation = root_generation(root)?;
        if generation > verifier.trust_root().generation() {
            reached = Some(verifier.rotate_trust_root(root)?);
        }
    }
    Ok(reached)
}

/// The generation a signed trust root claims (not verified).
fn root_generation(signed: &[u8]) -> Result<TrustGeneration> {
    let malformed = |e: prost::DecodeError| Error::Malformed {
        what: "trust root",
        reason: e.to_string(),
    };
    let signed = pb::SignedTrustRoot::decode(signed).map_err(malformed)?;
    let root = pb::TrustRoot::decode(signed.root.as_slice()).map_err(malformed)?;
    Ok(TrustGeneration(root.generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> ClusterId {
        ClusterId::new("c1").unwrap()
    }

    // Goal: a body of another format or cluster is refused with its typed
    // error; a good one round-trips. Method: encode three, decode each.
    #[test]
    fn decode_checks_format_and_cluster() {
        let good = pb::RoleShard {
            format: SHARD_FORMAT,
            cluster_id: "c1".into(),
            role: "entry-node".into(),
            ..Default::default()
        };
        let bytes = encode(&good).unwrap();
        assert_eq!(decode::<pb::RoleShard>(&bytes, &cluster()).unwrap(), good);
        let other_format = pb::RoleShard {
            format: 2,
            ..good.clone()
        };
        assert!(matches!(
            decode::<pb::RoleShard>(&encode(&other_format).unwrap(), &cluster()),
            Err(Error::UnsupportedFormat { got: 2, .. })
        ));
        let foreign = pb::RoleShard {
            cluster_id: "c2".into(),
            ..good
        };
        assert!(matches!(
            decode::<pb::RoleShard>(&encode(&foreign).unwrap(), &cluster()),
            Err(Error::WrongCluster { .. })
        ));
        assert!(matches!(
            decode::<pb::RoleShard>(&[0xff, 0xff], &cluster()),
            Err(Error::Malformed { .. })
        ));
    }

    // Goal: a node's reader carries exactly the roles and organizations of
    // its own node shard, and admits it to those scopes only. Method: build
    // the reader, check admission of its role, its org and another org.
    #[test]
    fn node_reader_comes_from_the_node_shard() {
        let shard = pb::NodeShard {
            format: SHARD_FORMAT,
            cluster_id: "c1".into(),
            node_id: "n1".into(),
            roles: vec![
                pb::NodeRole {
                    role: "rdp-worker".into(),
                    org_id: "acme".into(),
                },
                pb::NodeRole {
                    role: "entry-node".into(),
                    org_id: String::new(),
                },
            ],
            ..Default::default()
        };
        let reader = node_reader(&shard).unwrap();
        let admits = |scope: &str| reader.is_admitted(&readers_of(&scope.parse().unwrap()));
        assert!(admits("node/n1"));
        assert!(!admits("node/n2"));
        assert!(!admits("peers/n2"));
        assert!(admits("role/entry-node"));
        assert!(!admits("role/relay-node"));
        assert!(admits("org/acme/services"));
        assert!(!admits("org/other/services"));
        assert!(admits("trust/revocations"));
        assert!(admits("trust/root"));
    }
}
