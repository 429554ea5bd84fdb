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
//! Cache replicas (storage nodes with role `cache`): placement is computed
//! once per compiler ([`Compiler::new`]): each member node gets the
//! cluster's `cache_replicas` caches over distinct zones, its own zone
//! first ([`caches_for`]). `cache/<c>` lists the nodes cache `c` serves and
//! exactly the scopes they read (their `readable_scopes`), never a scope of
//! a node it does not serve; `node/<n>` lists the voters and exactly the
//! caches that serve `n`. A retired cache compiles to an empty assignment,
//! so its last one is superseded rather than left standing.
//!
//! Determinism: every list is sorted by its first field and the bodies are
//! protobuf with no maps, so one database state compiles to one byte
//! string per scope (and so one content hash: an unchanged scope is not
//! published again).

use crate::db;
use crate::error::{Error, Result};
use crate::limits::{CACHE_SHARD_SCOPES_MAX, SHARD_PEERS_MAX, SHARD_STORAGE_ENDPOINTS_MAX};
use crate::roles::{is_mesh_role, required_capability};
use rap_authority::placement::{Candidate, ReaderSite, caches_for};
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
    /// Every storage node of the cluster (retired ones too), by node id.
    storage: Vec<db::storage_nodes::StorageNode>,
    endpoints: Vec<db::orgs::ClusterEndpoint>,
    revoked: Vec<db::nodes::RevokedCertificate>,
    /// Genesis, then every rotated root, oldest first.
    trust_roots: Vec<Vec<u8>>,
    /// Cache replicas per node (the cluster's policy).
    cache_replicas: usize,
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
        let cache_replicas = db::clusters::cache_replicas(conn, id)
            .await?
            .ok_or_else(|| Error::not_found("cluster", id))?;
        Ok(ClusterRows {
            cluster_id: cluster_id.clone(),
            members: db::nodes::members(conn, id).await?,
            assignments: db::roles::active_in_cluster(conn, id).await?,
            desired: db::workloads::desired_in_cluster(conn, id).await?,
            storage: db::storage_nodes::all(conn, id).await?,
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
            // The schema keeps it within 0..=CACHE_REPLICAS_MAX.
            cache_replicas: usize::try_from(cache_replicas).unwrap_or(0),
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
    /// The cache replicas (role `cache`): positions in `rows.storage`, by
    /// node id.
    caches: Vec<usize>,
    /// node → the caches (positions in `caches`) that hold its scopes, in
    /// placement order (its own zone first).
    caches_of: BTreeMap<String, Vec<usize>>,
    /// Per cache (as `caches`): the nodes it serves.
    serves: Vec<BTreeSet<String>>,
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
        let caches: Vec<usize> = rows
            .storage
            .iter()
            .enumerate()
            .filter(|(_, s)| s.role == "cache")
            .map(|(at, _)| at)
            .collect();
        let candidates: Vec<Candidate> = caches
            .iter()
            .map(|at| {
                let s = &rows.storage[*at];
                Candidate {
                    node_id: s.node_id.clone(),
                    region: s.region.clone(),
                    zone: s.zone.clone(),
                    host: s.host.clone(),
                }
            })
            .collect();
        let mut caches_of = BTreeMap::new();
        let mut serves = vec![BTreeSet::new(); caches.len()];
        for member in &rows.members {
            let site = ReaderSite {
                node_id: &member.node_id,
                region: &member.region,
                zone: &member.zone,
            };
            let picked = caches_for(&candidates, &site, rows.cache_replicas);
            for at in &picked {
                serves[*at].insert(member.node_id.clone());
            }
            if !picked.is_empty() {
                caches_of.insert(member.node_id.clone(), picked);
            }
        }
        Compiler {
            rows,
            roles_of,
            mesh,
            group_of,
            member_at,
            desired_of,
            caches,
            caches_of,
            serves,
        }
    }

    /// The cache replicas (role `cache`), by node id.
    pub fn cache_ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.caches
            .iter()
            .map(|at| self.rows.storage[*at].node_id.as_str())
    }

    /// The scopes cache replica `cache` holds (the readable scopes of the
    /// nodes it serves), sorted; `None` unless it is a cache replica.
    pub fn cache_scopes(&self, cache: &str) -> Option<BTreeSet<String>> {
        let at = self
            .caches
            .iter()
            .position(|at| self.rows.storage[*at].node_id == cache)?;
        Some(
            self.serves[at]
                .iter()
                .flat_map(|node| self.readable_scopes(node))
                .collect(),
        )
    }

    /// The nodes cache replica `cache` serves, sorted (empty unless it is
    /// a cache replica).
    pub fn cache_serves(&self, cache: &str) -> BTreeSet<String> {
        self.caches
            .iter()
            .position(|at| self.rows.storage[*at].node_id == cache)
            .map(|at| self.serves[at].clone())
            .unwrap_or_default()
    }

    /// The cache replicas that hold `node`'s scopes, in placement order
    /// (its own zone first).
    pub fn caches_of(&self, node: &str) -> Vec<&str> {
        self.caches_of
            .get(node)
            .into_iter()
            .flatten()
            .map(|at| self.rows.storage[self.caches[*at]].node_id.as_str())
            .collect()
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
        for cache in self.cache_ids() {
            scopes.insert(Scope::Cache(NodeId::new(cache)?));
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
            Scope::Cache(cache) => self.cache(&cluster_id, cache.as_str())?,
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
        // The voters, then exactly the caches that serve this node, each
        // by node id.
        let mut caches: Vec<&db::storage_nodes::StorageNode> = self
            .caches_of
            .get(node)
            .into_iter()
            .flatten()
            .map(|at| &self.rows.storage[self.caches[*at]])
            .collect();
        caches.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        let storage_endpoints = self
            .rows
            .storage
            .iter()
            .filter(|s| s.role == "voter")
            .chain(caches)
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

    fn cache(&self, cluster_id: &str, cache: &str) -> Result<Option<Vec<u8>>> {
        let Some(row) = self.rows.storage.iter().find(|s| s.node_id == cache) else {
            return Ok(None);
        };
        let (scopes, serves) = match row.role.as_str() {
            "cache" => (
                self.cache_scopes(cache).unwrap_or_default(),
                self.cache_serves(cache),
            ),
            // Removed: it holds nothing any more.
            "retired" => (BTreeSet::new(), BTreeSet::new()),
            _ => return Ok(None),
        };
        if scopes.len() > CACHE_SHARD_SCOPES_MAX {
            return Err(Error::Oversize {
                what: "scopes of one cache shard",
                limit: CACHE_SHARD_SCOPES_MAX,
                got: scopes.len(),
            });
        }
        Ok(Some(encode(&pb::CacheShard {
            format: SHARD_FORMAT,
            cluster_id: cluster_id.to_string(),
            node_id: cache.to_string(),
            scopes: scopes.into_iter().collect(),
            serves: serves.into_iter().collect(),
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
                    region: String::new(),
                    zone: String::new(),
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
            cache_replicas: 2,
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

    fn storage(id: &str, zone: &str, role: &str) -> db::storage_nodes::StorageNode {
        db::storage_nodes::StorageNode {
            node_id: id.into(),
            address: format!("{id}.example:7001"),
            region: "r".into(),
            zone: zone.into(),
            host: id.into(),
            role: role.into(),
        }
    }

    /// Twelve nodes over zones z1..z3 with a mix of roles, three voters and
    /// three caches over the same zones, a retired cache, `replicas` per
    /// node.
    fn cached_rows(replicas: usize) -> ClusterRows {
        let mut rows = rows(0);
        for i in 0..12 {
            let id = format!("n{i:02}");
            rows.members.push(db::nodes::Member {
                node_id: id.clone(),
                membership_status: "active".into(),
                group_id: String::new(),
                region: "r".into(),
                zone: format!("z{}", i % 3 + 1),
            });
            let (role, org) = match i % 4 {
                0 => ("relay-node", ""),
                1 => ("rdp-worker", "org-a"),
                2 => ("rdp-worker", "org-b"),
                _ => continue,
            };
            rows.assignments.push(db::roles::ActiveAssignment {
                node_id: id,
                role: role.into(),
                org_id: org.into(),
            });
        }
        rows.storage = vec![
            storage("k1", "z1", "cache"),
            storage("k2", "z2", "cache"),
            storage("k3", "z3", "cache"),
            storage("k9", "z1", "retired"),
            storage("s1", "z1", "voter"),
            storage("s2", "z2", "voter"),
            storage("s3", "z3", "voter"),
        ];
        rows.cache_replicas = replicas;
        rows
    }

    fn cache_body(compiler: &Compiler, id: &str) -> pb::CacheShard {
        let scope = Scope::Cache(NodeId::new(id).unwrap());
        let body = compiler.compile(&scope).unwrap().unwrap().body;
        rap_proto::shards::decode(&body, &ClusterId::new("c1").unwrap()).unwrap()
    }

    // Goal (cache placement, need-to-know): with two replicas, every node
    // is served by two caches in distinct zones, its own zone's first; a
    // cache holds exactly the union of its served nodes' readable scopes
    // (no node/ or peers/ scope of a node it does not serve, never a
    // cache/ scope); a node's shard lists the voters and exactly its own
    // caches; the same rows compile to the same bytes; a retired cache
    // compiles to an empty assignment, a voter or an unknown id to none.
    // Method: twelve nodes and three caches over three zones; compile
    // every scope twice from two compilers and check each body.
    #[test]
    fn caches_hold_exactly_what_their_nodes_read() {
        let compiler = Compiler::new(cached_rows(2));
        let scopes = compiler.scopes().unwrap();
        let caches: Vec<&Scope> = scopes
            .iter()
            .filter(|s| matches!(s, Scope::Cache(_)))
            .collect();
        assert_eq!(caches.len(), 3, "k1..k3, not the retired k9: {caches:?}");
        let zone_of = |id: &str| {
            compiler
                .rows
                .storage
                .iter()
                .find(|s| s.node_id == id)
                .unwrap()
                .zone
                .clone()
        };
        let mut served_by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for member in &compiler.rows.members {
            let mine = compiler.caches_of(&member.node_id);
            assert_eq!(mine.len(), 2, "{}", member.node_id);
            assert_eq!(
                zone_of(mine[0]),
                member.zone,
                "{}: own zone first",
                member.node_id
            );
            assert_ne!(zone_of(mine[0]), zone_of(mine[1]), "{}", member.node_id);
            for cache in mine {
                served_by
                    .entry(cache.to_string())
                    .or_default()
                    .insert(member.node_id.clone());
            }
            let node = compiler
                .compile(&Scope::Node(NodeId::new(member.node_id.as_str()).unwrap()))
                .unwrap()
                .unwrap();
            let body: pb::NodeShard =
                rap_proto::shards::decode(&node.body, &ClusterId::new("c1").unwrap()).unwrap();
            let endpoints: Vec<(&str, &str)> = body
                .storage_endpoints
                .iter()
                .map(|e| (e.node_id.as_str(), e.role.as_str()))
                .collect();
            let mut expected = vec![("s1", "voter"), ("s2", "voter"), ("s3", "voter")];
            let mut own: Vec<&str> = compiler.caches_of(&member.node_id);
            own.sort();
            expected.extend(own.iter().map(|c| (*c, "cache")));
            assert_eq!(endpoints, expected, "{}", member.node_id);
        }
        for cache in ["k1", "k2", "k3"] {
            let body = cache_body(&compiler, cache);
            assert_eq!(body.node_id, cache);
            let serves: BTreeSet<String> = body.serves.iter().cloned().collect();
            assert_eq!(serves, served_by[cache], "{cache} serves");
            assert!(body.serves.is_sorted() && body.scopes.is_sorted());
            let expected: BTreeSet<String> = serves
                .iter()
                .flat_map(|node| compiler.readable_scopes(node))
                .collect();
            let held: BTreeSet<String> = body.scopes.iter().cloned().collect();
            assert_eq!(held, expected, "{cache} holds its nodes' scopes");
            for member in &compiler.rows.members {
                let id = &member.node_id;
                let own = held.contains(&format!("node/{id}"));
                assert_eq!(own, serves.contains(id), "{cache} and node/{id}");
                if !serves.contains(id) {
                    assert!(!held.contains(&format!("peers/{id}")));
                }
            }
            assert!(held.iter().all(|s| !s.starts_with("cache/")));
            assert!(held.contains("trust/root") && held.contains("trust/revocations"));
        }
        // A role a cache's nodes hold is held; org scopes only of its nodes'
        // orgs.
        let k1 = cache_body(&compiler, "k1");
        assert!(k1.scopes.iter().any(|s| s.starts_with("role/")));

        let again = Compiler::new(cached_rows(2));
        for scope in &scopes {
            assert_eq!(
                compiler.compile(scope).unwrap(),
                again.compile(scope).unwrap(),
                "{scope}"
            );
        }
        let retired = cache_body(&compiler, "k9");
        assert!(retired.scopes.is_empty() && retired.serves.is_empty());
        for none in ["s1", "nobody"] {
            let scope = Scope::Cache(NodeId::new(none).unwrap());
            assert_eq!(compiler.compile(&scope).unwrap(), None, "{none}");
        }
    }

    // Goal: a cluster whose policy is 0 replicas assigns nothing: every
    // cache shard exists and is empty, node shards list the voters only.
    // Method: the rows above with replicas = 0.
    #[test]
    fn no_replicas_means_caches_hold_nothing() {
        let compiler = Compiler::new(cached_rows(0));
        for cache in ["k1", "k2", "k3"] {
            let body = cache_body(&compiler, cache);
            assert!(body.scopes.is_empty() && body.serves.is_empty(), "{cache}");
        }
        let node = compiler
            .compile(&Scope::Node(NodeId::new("n00").unwrap()))
            .unwrap()
            .unwrap();
        let body: pb::NodeShard =
            rap_proto::shards::decode(&node.body, &ClusterId::new("c1").unwrap()).unwrap();
        assert!(body.storage_endpoints.iter().all(|e| e.role == "voter"));
        assert_eq!(body.storage_endpoints.len(), 3);
    }

    // Goal: a cache whose assignment would exceed CACHE_SHARD_SCOPES_MAX
    // scopes is refused with OVERSIZE, not published cut. Method: one
    // cache, replicas 1, more nodes than the limit.
    #[test]
    fn an_oversized_cache_assignment_is_refused() {
        let mut rows = rows(CACHE_SHARD_SCOPES_MAX);
        rows.assignments.clear();
        rows.storage = vec![storage("k1", "z1", "cache")];
        rows.cache_replicas = 1;
        let compiler = Compiler::new(rows);
        let refused = compiler
            .compile(&Scope::Cache(NodeId::new("k1").unwrap()))
            .expect_err("over the limit");
        assert_eq!(refused.code(), "OVERSIZE");
    }
}
