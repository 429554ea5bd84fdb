//! Scopes (what a shard is about) and readers (who may read it).
//!
//! Need-to-know: a node reads only scopes whose readers admit it
//! (Golden Rule 14). Storage nodes hold shards on behalf of their readers.

use crate::error::{Error, Result};
use crate::ids::{NodeId, OrgId, RoleName, truncate_for_error};
use crate::limits::{READER_BYTES_MAX, SCOPE_BYTES_MAX};
use std::fmt;
use std::str::FromStr;

/// A snapshot scope: the unit of signing, versioning and need-to-know.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `node/<node_id>`: that node's memberships, identity status, roles,
    /// desired workloads, storage endpoints and readable scopes.
    Node(NodeId),
    /// `peers/<node_id>`: active/warm/bootstrap peers of a mesh-capable node.
    Peers(NodeId),
    /// `role/<role>`: role-wide policy.
    Role(RoleName),
    /// `org/<org_id>/services`: service configs for nodes serving that org.
    OrgServices(OrgId),
    /// `trust/revocations`: revoked node ids and certificate serials.
    TrustRevocations,
    /// `trust/root`: the cluster's trust-root chain.
    TrustRoot,
    /// `cache/<storage_node_id>`: the scopes placement assigns that cache
    /// replica. Read by that storage node only.
    Cache(NodeId),
}

impl FromStr for Scope {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidScope {
            value: truncate_for_error(text),
            reason,
        };
        if text.len() > SCOPE_BYTES_MAX {
            return Err(invalid(format!("longer than {SCOPE_BYTES_MAX} bytes")));
        }
        let parts: Vec<&str> = text.split('/').collect();
        let id_error = |e: Error| invalid(e.to_string());
        match parts.as_slice() {
            ["node", id] => Ok(Scope::Node(NodeId::new(*id).map_err(id_error)?)),
            ["peers", id] => Ok(Scope::Peers(NodeId::new(*id).map_err(id_error)?)),
            ["role", role] => Ok(Scope::Role(RoleName::new(*role).map_err(id_error)?)),
            ["org", org, "services"] => Ok(Scope::OrgServices(OrgId::new(*org).map_err(id_error)?)),
            ["trust", "revocations"] => Ok(Scope::TrustRevocations),
            ["trust", "root"] => Ok(Scope::TrustRoot),
            ["cache", id] => Ok(Scope::Cache(NodeId::new(*id).map_err(id_error)?)),
            _ => Err(invalid(
                "expected node/<id>, peers/<id>, role/<role>, org/<org>/services, trust/revocations, trust/root or cache/<id>"
                    .to_string(),
            )),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Node(id) => write!(f, "node/{id}"),
            Scope::Peers(id) => write!(f, "peers/{id}"),
            Scope::Role(role) => write!(f, "role/{role}"),
            Scope::OrgServices(org) => write!(f, "org/{org}/services"),
            Scope::TrustRevocations => f.write_str("trust/revocations"),
            Scope::TrustRoot => f.write_str("trust/root"),
            Scope::Cache(id) => write!(f, "cache/{id}"),
        }
    }
}

/// One entry of an envelope's `readers` list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReaderSelector {
    /// `node:<node_id>`: exactly that node.
    Node(NodeId),
    /// `role:<role>`: every node holding that role in the cluster.
    Role(RoleName),
    /// `org:<org_id>`: every node holding a role for that organization.
    Org(OrgId),
    /// `all-nodes`: every node of the cluster (e.g. revocations).
    AllNodes,
}

impl FromStr for ReaderSelector {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidReader {
            value: truncate_for_error(text),
            reason,
        };
        if text.len() > READER_BYTES_MAX {
            return Err(invalid(format!("longer than {READER_BYTES_MAX} bytes")));
        }
        if text == "all-nodes" {
            return Ok(ReaderSelector::AllNodes);
        }
        match text.split_once(':') {
            Some(("node", id)) => NodeId::new(id)
                .map(ReaderSelector::Node)
                .map_err(|e| invalid(e.to_string())),
            Some(("role", role)) => RoleName::new(role)
                .map(ReaderSelector::Role)
                .map_err(|e| invalid(e.to_string())),
            Some(("org", org)) => OrgId::new(org)
                .map(ReaderSelector::Org)
                .map_err(|e| invalid(e.to_string())),
            _ => Err(invalid(
                "expected node:<id>, role:<role>, org:<org> or all-nodes".to_string(),
            )),
        }
    }
}

impl fmt::Display for ReaderSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReaderSelector::Node(id) => write!(f, "node:{id}"),
            ReaderSelector::Role(role) => write!(f, "role:{role}"),
            ReaderSelector::Org(org) => write!(f, "org:{org}"),
            ReaderSelector::AllNodes => f.write_str("all-nodes"),
        }
    }
}

/// Who is verifying an envelope, for the readers check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reader {
    /// A node agent, with the roles assigned to it in this cluster.
    Node {
        /// The node.
        node_id: NodeId,
        /// Its roles in this cluster (from its own `node/<id>` scope).
        roles: Vec<RoleName>,
        /// The organizations its roles serve (from the same scope).
        orgs: Vec<OrgId>,
    },
    /// A storage node that holds shards on behalf of their readers. It is
    /// admitted to every scope of its cluster; placement decides which
    /// shards it holds, and it serves each only to admitted readers.
    StorageNode {
        /// The storage node.
        node_id: NodeId,
    },
}

impl Reader {
    /// Whether this reader is admitted by `readers`. An empty list admits
    /// no node at all.
    pub fn is_admitted(&self, readers: &[ReaderSelector]) -> bool {
        match self {
            Reader::StorageNode { .. } => true,
            Reader::Node {
                node_id,
                roles,
                orgs,
            } => readers.iter().any(|selector| match selector {
                ReaderSelector::AllNodes => true,
                ReaderSelector::Node(id) => id == node_id,
                ReaderSelector::Role(role) => roles.contains(role),
                ReaderSelector::Org(org) => orgs.contains(org),
            }),
        }
    }
}

impl fmt::Display for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reader::Node { node_id, .. } => write!(f, "node:{node_id}"),
            Reader::StorageNode { node_id } => write!(f, "storage-node:{node_id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: every scope form round-trips through its text, and malformed
    // scopes are refused. Method: parse, print, compare.
    #[test]
    fn scope_text_round_trip() {
        for text in [
            "node/n1",
            "peers/n1",
            "role/entry-node",
            "org/acme/services",
            "trust/revocations",
            "trust/root",
        ] {
            let scope: Scope = text.parse().unwrap();
            assert_eq!(scope.to_string(), text);
        }
        for bad in [
            "", "node", "node/", "node/N1", "org/acme", "trust/x", "node/a/b", "x/y",
        ] {
            assert!(
                matches!(bad.parse::<Scope>(), Err(Error::InvalidScope { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    // Goal: readers admit exactly the named node, role holders, or all
    // nodes; an empty list admits nobody. Method: table of cases.
    #[test]
    fn readers_admit_need_to_know() {
        let n1 = NodeId::new("n1").unwrap();
        let entry = RoleName::new("entry-node").unwrap();
        let reader = Reader::Node {
            node_id: n1.clone(),
            roles: vec![entry.clone()],
            orgs: vec![OrgId::new("acme").unwrap()],
        };
        let other = ReaderSelector::Node(NodeId::new("n2").unwrap());
        assert!(!reader.is_admitted(&[]));
        assert!(!reader.is_admitted(std::slice::from_ref(&other)));
        assert!(reader.is_admitted(&[other.clone(), ReaderSelector::Node(n1)]));
        assert!(reader.is_admitted(&[ReaderSelector::Role(entry)]));
        assert!(!reader.is_admitted(&[ReaderSelector::Role(RoleName::new("relay").unwrap())]));
        assert!(reader.is_admitted(&[ReaderSelector::AllNodes]));
        assert!(reader.is_admitted(&[ReaderSelector::Org(OrgId::new("acme").unwrap())]));
        assert!(!reader.is_admitted(&[ReaderSelector::Org(OrgId::new("other").unwrap())]));
        for text in ["node:n1", "role:entry-node", "org:acme", "all-nodes"] {
            assert_eq!(text.parse::<ReaderSelector>().unwrap().to_string(), text);
        }
        assert!("nodes:n1".parse::<ReaderSelector>().is_err());
    }
}
