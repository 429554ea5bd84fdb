//! The snapshot compiler: from one read of a cluster's rows (through the
//! persistence layer), the body and readers of every scope.
//!
//! Need-to-know (seed Golden Rules 7 and 14): each body holds what its
//! readers need and nothing else. `node/<n>` is that node's own view;
//! `peers/<n>` exists only for holders of a mesh role and lists only other
//! mesh nodes; `role/<r>` holds the role's policy (the endpoints it
//! serves), never its holders; `org/<o>/services` the org's endpoints and
//! serving roles, never users or credentials (the database holds none).
//!
//! Determinism: every list is sorted by its first field and the bodies are
//! protobuf with no maps, so one database state compiles to one byte
//! string per scope (and so one content hash: an unchanged scope is not
//! published again).

use crate::db;
use crate::error::{Error, Result};
use crate::limits::{SHARD_PEERS_MAX, SHARD_STORAGE_ENDPOINTS_MAX};
use crate::roles::{is_mesh_role, required_capability};
use rap_proto::envelope::{ReaderSelector, Scope};
use rap_proto::ids::{ClusterId, NodeId, OrgId, RoleName};
use rap_proto::limits::REVOCATIONS_MAX;
use rap_proto::pb;
use rap_proto::shards::{SHARD_FORMAT, encode, readers_of};
use sqlx::PgConnection;
use std::collections::{BTreeMap, BTreeSet};

/// The rows of one cluster that its shards are compiled from.
#[derive(Clone, Debug)]
pub struct ClusterRows {
    cluster_id: ClusterId,
    members: Vec<db::nodes::Member>,
    assignments: Vec<db::roles::ActiveAssignment>,
    desired: Vec<db::workloads::Desired>,
    storage: Vec<db::storage_nodes::StorageNode>,
    endpoints: Vec<db::orgs::ClusterEndpoint>,
    revoked: Vec<db::nodes::RevokedCertificate>,
    /// Genesis, then every rotated root, oldest first.
    trust_roots: Vec<Vec<u8>>,
}

impl ClusterRows {
    /// Reads every row the compiler needs, in the caller's transaction (so
    /// that it sees the mutation it publishes for).
    pub async fn load(conn: &mut PgConnection, cluster_id: &ClusterId) -> Result<ClusterRows> {
        let id = cluster_id.as_str();
        let limit = i64::try_from(REVOCATIONS_MAX).unwrap_or(i64::MAX - 1) + 1;
        let revoked = db::nodes::revoked_certificates(conn, id, limit).await?;
        if revoked.len() > REVOCATIONS_MAX {
            return Err(Error::Oversize {
                what: "revocation list",
                limit: REVOCATIONS_MAX,
                got: revoked.len(),
            });
        }
        Ok(ClusterRows {
            cluster_id: cluster_id.clone(),
            members: db::nodes::members(conn, id).await?,
            assignments: db::roles::active_in_cluster(conn, id).await?,
            desired: db::workloads::desired_in_cluster(conn, id).await?,
            storage: db::storage_nodes::not_retired(conn, id).await?,
            endpoints: db::orgs::endpoints_in_cluster(conn, id).await?,
            revoked,
            trust_roots: std::iter::once(db::clusters::trust_root(conn, id).await?)
                .chain(
                    db::clusters::rotated_roots(conn, id)
                        .await?
                        .into_iter()
                        .map(|r| r.root),
                )
                .collect(),
        })
    }
}

/// One compiled scope: what to sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    /// The scope.
    pub scope: Scope,
    /// Who may read it.
    pub readers: Vec<ReaderSelector>,
    /// The encoded body.
    pub body: Vec<u8>,
}

/// A compiler over one read of a cluster's rows.
#[derive(Debug)]
pub struct Compiler {
    rows: ClusterRows,
    /// node → its active assignments (role, org), sorted.
    roles_of: BTreeMap<String, Vec<(String, String)>>,
    /// The members holding a mesh role.
    mesh: BTreeSet<String>,
    /// node → its group.
    group_of: BTreeMap<String, String>,
    /// node → its position in `rows.members`.
    member_at: BTreeMap<String, usize>,
    /// node → the positions of its desired workloads in `rows.desired`.
    desired_of: BTreeMap<String, Vec<usize>>,
}

impl Compiler {
    /// A compiler over `rows`.
    pub fn new(rows: ClusterRows) -> Compiler {
        let members: BTreeSet<&str> = rows.members.iter().map(|m| m.node_id.as_str()).collect();
        let mut roles_of: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for a in &rows.assignments {
            if members.contains(a.node_id.as_str()) {
                roles_of
                    .entry(a.node_id.clone())
                    .or_default()
                    .push((a.role.clone(), a.org_id.clone()));
            }
        }
        for roles in roles_of.values_mut() {
            roles.sort();
            roles.dedup();
        }
        let mesh = roles_of
            .iter()
            .filter(|(_, roles)| roles.iter().any(|(role, _)| is_mesh_role(role)))
            .map(|(node, _)| node.clone())
            .collect();
        let group_of = rows
            .members
            .iter()
            .map(|m| (m.node_id.clone(), m.group_id.clone()))
            .collect();
        let member_at = rows
            .members
            .iter()
            .enumerate()
            .map(|(at, m)| (m.node_id.clone(), at))
            .collect();
        let mut desired_of: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (at, d) in rows.desired.iter().enumerate() {
            desired_of.entry(d.node_id.clone()).or_default().push(at);
        }
        Compiler {
            rows,
            roles_of,
            mesh,
            group_of,
            member_at,
            desired_of,
        }
    }

    /// Every scope the cluster's state defines, sorted.
    pub fn scopes(&self) -> Result<BTreeSet<Scope>> {
        let mut scopes = BTreeSet::new();
        scopes.insert(Scope::TrustRevocations);
        scopes.insert(Scope::TrustRoot);
        for member in &self.rows.members {
            let node = NodeId::new(member.node_id.as_str())?;
            if self.mesh.contains(&member.node_id) {
                scopes.insert(Scope::Peers(node.clone()));
            }
            scopes.insert(Scope::Node(node));
        }
        for (role, _) in self.roles_of.values().flatten() {
            scopes.insert(Scope::Role(RoleName::new(role.as_str())?));
        }
        for org in self.served_orgs() {
            scopes.insert(Scope::OrgServices(OrgId::new(org)?));
        }
        Ok(scopes)
    }

    /// The organizations with an endpoint or a serving node in the cluster.
    fn served_orgs(&self) -> BTreeSet<&str> {
        let mut orgs: BTreeSet<&str> = self
            .rows
            .endpoints
            .iter()
            .map(|e| e.org_id.as_str())
            .collect();
        for (_, org) in self.roles_of.values().flatten() {
            if !org.is_empty() {
                orgs.insert(org.as_str());
            }
        }
        orgs
    }

    /// The scopes `node` may read, sorted (its own first among equals).
    fn readable_scopes(&self, node: &str) -> Vec<String> {
        let mut scopes = BTreeSet::new();
        scopes.insert(format!("node/{node}"));
        if self.mesh.contains(node) {
            scopes.insert(format!("peers/{node}"));
        }
        for (role, org) in self.roles_of.get(node).into_iter().flatten() {
            scopes.insert(format!("role/{role}"));
            if !org.is_empty() {
                scopes.insert(format!("org/{org}/services"));
            }
        }
        scopes.insert(Scope::TrustRevocations.to_string());
        scopes.insert(Scope::TrustRoot.to_string());
        scopes.into_iter().collect()
    }

    /// Compiles `scope`; `None` when the cluster's state does not define
    /// it (a node that left, a role nobody holds).
    pub fn compile(&self, scope: &Scope) -> Result<Option<Compiled>> {
        let cluster_id = self.rows.cluster_id.to_string();
        let body = match scope {
            Scope::Node(node) => self.node(&cluster_id, node.as_str())?,
            Scope::Peers(node) => self.peers(&cluster_id, node.as_str())?,
            Scope::Role(role) => self.role(&cluster_id, role.as_str())?,
            Scope::OrgServices(org) => self.org(&cluster_id, org.as_str())?,
            Scope::TrustRevocations => Some(rap_proto::revocations::encode(
                &self.rows.cluster_id,
                self.rows
                    .revoked
                    .iter()
                    .map(|row| pb::RevokedCertificate {
                        node_id: row.node_id.clone(),
                        certificate_serial: row.certificate_serial.clone(),
                        revoked_at_unix_ms: row.revoked_at_unix_ms,
                    })
                    .collect(),
            )?),
            Scope::TrustRoot => Some(encode(&pb::TrustRootShard {
                format: SHARD_FORMAT,
                cluster_id,
                roots: self.rows.trust_roots.clone(),
            })?),
            // Cache assignments are not compiled yet.
            Scope::Cache(_) => None,
        };
        Ok(body.map(|body| Compiled {
            scope: scope.clone(),
            readers: readers_of(scope),
            body,
        }))
    }

    fn node(&self, cluster_id: &str, node: &str) -> Result<Option<Vec<u8>>> {
        let Some(member) = self.member_at.get(node).map(|at| &self.rows.members[*at]) else {
            return Ok(None);
        };
        let storage_endpoints = self
            .rows
            .storage
            .iter()
            .filter(|s| s.role == "voter" || s.role == "cache")
            .take(SHARD_STORAGE_ENDPOINTS_MAX)
            .map(|s| pb::ShardEndpoint {
                node_id: s.node_id.clone(),
                address: s.address.clone(),
                domain: Some(pb::FailureDomain {
                    region: s.region.clone(),
                    zone: s.zone.clone(),
                    host: s.host.clone(),
                }),
                role: s.role.clone(),
            })
            .collect();
        Ok(Some(encode(&pb::NodeShard {
            format: SHARD_FORMAT,
            cluster_id: cluster_id.to_string(),
            node_id: node.to_string(),
            membership_status: member.membership_status.clone(),
            group_id: member.group_id.clone(),
            roles: self
                .roles_of
                .get(node)
                .into_iter()
                .flatten()
                .map(|(role, org)| pb::NodeRole {
                    role: role.clone(),
                    org_id: org.clone(),
                })
                .collect(),
            workloads: self
                .desired_of
                .get(node)
                .into_iter()
                .flatten()
                .map(|at| &self.rows.desired[*at])
                .map(|d| pb::DesiredWorkload {
                    service: d.service.clone(),
                    desired_state: d.desired_state.clone(),
                    version: u64::try_from(d.version).unwrap_or(0),
                })
                .collect(),
            storage_endpoints,
            readable_scopes: self.readable_scopes(node),
        })?))
    }

    fn peers(&self, cluster_id: &str, node: &str) -> Result<Option<Vec<u8>>> {
        if !self.mesh.contains(node) {
            return Ok(None);
        }
        let own_group = self.group_of.get(node).map(String::as_str).unwrap_or("");
        let mut peers: Vec<pb::Peer> = self
            .mesh
            .iter()
            .filter(|peer| peer.as_str() != node)
            .map(|peer| {
                let group_id = self.group_of.get(peer).cloned().unwrap_or_default();
                let tier = if group_id == own_group {
                    "active"
                } else {
                    "warm"
                };
                let mut roles: Vec<String> = self
                    .roles_of
                    .get(peer)
                    .into_iter()
                    .flatten()
                    .filter(|(role, _)| is_mesh_role(role))
                    .map(|(role, _)| role.clone())
                    .collect();
                roles.dedup();
                pb::Peer {
                    node_id: peer.clone(),
                    roles,
                    group_id,
                    tier: tier.to_string(),
                }
            })
            .collect();
        // Same-group peers first, then by a rendezvous hash of the pair: the
        // cut is deterministic, spreads the load, and one node joining or
        // leaving the mesh enters or leaves only about SHARD_PEERS_MAX lists.
        peers.sort_by_cached_key(|peer| {
            (
                peer.tier != "active",
                *blake3::hash(format!("{node}\0{}", peer.node_id).as_bytes()).as_bytes(),
            )
        });
        peers.truncate(SHARD_PEERS_MAX);
        peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(Some(encode(&pb::PeersShard {
            format: SHARD_FORMAT,
            cluster_id: cluster_id.to_string(),
            node_id: node.to_string(),
            peers,
        })?))
    }

    fn role(&self, cluster_id: &str, role: &str) -> Result<Option<Vec<u8>>> {
        let held = self.roles_of.values().flatten().any(|(r, _)| r == role);
        if !held {
            return Ok(None);
        }
        Ok(Some(encode(&pb::RoleShard {
            format: SHARD_FORMAT,
            cluster_id: cluster_id.to_string(),
            role: role.to_string(),
            required_capability: required_capability(role).unwrap_or_default().to_string(),
            endpoints: self
                .rows
                .endpoints
                .iter()
                .filter(|e| e.role == role)
                .map(|e| pb::RoleEndpoint {
                    org_id: e.org_id.clone(),
                    name: e.name.clone(),
                    kind: e.kind.clone(),
                })
                .collect(),
        })?))
    }

    fn org(&self, cluster_id: &str, org: &str) -> Result<Option<Vec<u8>>> {
        if !self.served_orgs().contains(org) {
            return Ok(None);
        }
        let serving_roles: BTreeSet<&str> = self
            .roles_of
            .values()
            .flatten()
            .filter(|(_, o)| o == org)
            .map(|(role, _)| role.as_str())
            .collect();
        Ok(Some(encode(&pb::OrgServicesShard {
            format: SHARD_FORMAT,
            cluster_id: cluster_id.to_string(),
            org_id: org.to_string(),
            endpoints: self
                .rows
                .endpoints
                .iter()
                .filter(|e| e.org_id == org)
                .map(|e| pb::OrgServiceEndpoint {
                    name: e.name.clone(),
                    kind: e.kind.clone(),
                    role: e.role.clone(),
                })
                .collect(),
            serving_roles: serving_roles.into_iter().map(str::to_string).collect(),
        })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(mesh: usize) -> ClusterRows {
        let ids: Vec<String> = (0..mesh).map(|i| format!("n{i:04}")).collect();
        ClusterRows {
            cluster_id: ClusterId::new("c1").unwrap(),
            members: ids
                .iter()
                .map(|id| db::nodes::Member {
                    node_id: id.clone(),
                    membership_status: "active".into(),
                    group_id: String::new(),
                })
                .collect(),
            assignments: ids
                .iter()
                .map(|id| db::roles::ActiveAssignment {
                    node_id: id.clone(),
                    role: "relay-node".into(),
                    org_id: String::new(),
                })
                .collect(),
            desired: Vec::new(),
            storage: Vec::new(),
            endpoints: Vec::new(),
            revoked: Vec::new(),
            trust_roots: Vec::new(),
        }
    }

    fn peers_bodies(compiler: &Compiler) -> BTreeMap<String, Vec<u8>> {
        compiler
            .scopes()
            .unwrap()
            .into_iter()
            .filter(|s| matches!(s, Scope::Peers(_)))
            .map(|s| (s.to_string(), compiler.compile(&s).unwrap().unwrap().body))
            .collect()
    }

    // Goal: a peers list holds at most SHARD_PEERS_MAX mesh nodes, and one
    // node joining the mesh changes only a few lists (rendezvous choice),
    // not every list. Method: 200 relay nodes, compile every peers shard;
    // add one relay node and count the lists whose bytes changed.
    #[test]
    fn one_mesh_node_more_changes_few_peers_lists() {
        let before = peers_bodies(&Compiler::new(rows(200)));
        let after = peers_bodies(&Compiler::new(rows(201)));
        assert_eq!(after.len(), 201);
        let cluster = ClusterId::new("c1").unwrap();
        for body in after.values() {
            let peers: pb::PeersShard = rap_proto::shards::decode(body, &cluster).unwrap();
            assert_eq!(peers.peers.len(), SHARD_PEERS_MAX);
        }
        let changed = before
            .iter()
            .filter(|(scope, body)| after.get(*scope) != Some(*body))
            .count();
        // Each list takes the new node with probability 32/200: about 32.
        assert!(
            changed > 0 && changed < 3 * SHARD_PEERS_MAX,
            "{changed} lists changed"
        );
    }
}
