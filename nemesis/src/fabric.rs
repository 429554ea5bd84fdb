//! The platform a run works on, all on 127.0.0.1:
//!
//! * a private PostgreSQL and the control plane (`rap_controlplane::server`
//!   in this process, with its publisher), which made the cluster, its CA
//!   and its signing key;
//! * the storage voters and one cache replica as `rap-configstore`
//!   processes (certificates from that CA);
//! * a [`LinkProxy`] on every directed link between two voters (each voter
//!   dials its peers through its own, `serve --dial-via`), and one in
//!   front of every storage node for everything outside the group: the
//!   control plane, the cache replica and the agents dial a node by its
//!   *ingress* proxy, the address recorded in PostgreSQL;
//! * agents enrolled and approved in PostgreSQL, each with a node
//!   certificate of its own, whose reads run in this process on the agent
//!   library's verified reader (see [`crate::workload`]).
//!
//! The workload's direct fence clients dial the voters themselves, as a
//! client beside each node would.

use crate::proxy::{LinkMode, LinkProxy};
use anyhow::{Context, Result};
use rap_controlplane::keys::ClusterKeys;
use rap_core::tls::{ClusterCa, TlsFiles};
use rap_proto::envelope::SnapshotSigner;
use rap_proto::ids::ClusterId;
use rap_proto::pb;
use rap_testkit::cluster::{Cluster, KeyMaterial};
use rap_testkit::platform::{ControlPlane, Platform};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The cluster of a run.
pub const CLUSTER: &str = "c1";
/// The role the mutators assign and remove (one register per agent).
pub const TOGGLED_ROLE: &str = "relay-node";
/// The capability that role needs; every agent is enrolled with it.
pub const TOGGLED_CAPABILITY: &str = "can_route_mesh";
/// The cache replica's id.
pub const CACHE_ID: &str = "k1";
/// Most agents of a run.
pub const AGENTS_MAX: usize = 16;

/// One enrolled agent.
#[derive(Clone, Debug)]
pub struct Agent {
    /// Its node id (given at approval).
    pub id: String,
    /// Its node certificate, key and the cluster CA.
    pub files: TlsFiles,
    /// Its node-local state (marks, kept envelopes).
    pub state_dir: PathBuf,
}

/// The running platform (see the module docs). Dropping it stops every
/// process it started, the proxies and the control plane.
pub struct Fabric {
    /// PostgreSQL, the control plane's context and the owner.
    pub platform: Platform,
    /// The served control plane (stopped when dropped).
    pub control_plane: ControlPlane,
    /// The storage voters (`nodes`) and the cache replica (`caches[0]`).
    pub cluster: Cluster,
    /// The voters' ids, by index.
    pub ids: Vec<String>,
    /// Voter-to-voter links, by (from, to) index.
    pub links: BTreeMap<(usize, usize), LinkProxy>,
    /// The ingress proxy of each voter, by index.
    pub ingress: Vec<LinkProxy>,
    /// The ingress proxy of the cache replica.
    pub cache_ingress: LinkProxy,
    /// The agents.
    pub agents: Vec<Agent>,
    /// The cluster's genesis trust root.
    pub genesis: Vec<u8>,
    /// Where agents keep their state.
    _agent_dir: tempfile::TempDir,
}

impl Fabric {
    /// Starts PostgreSQL and the control plane, `voters` storage voters
    /// (with `voter_args` added to each one's `serve`) behind their
    /// proxies, bootstraps the group through the control plane, adds and
    /// starts the cache replica, and enrols `agents` agents.
    pub async fn start(
        bin: &Path,
        voters: usize,
        agents: usize,
        voter_args: &[String],
    ) -> Result<Fabric> {
        let platform =
            Platform::without_storage(CLUSTER, rap_core::tls::NODE_CERT_VALIDITY_DEFAULT).await;
        let cluster_id = ClusterId::new(CLUSTER)?;
        let keys = ClusterKeys::load(&platform.ctx.keys_dir, &cluster_id)
            .map_err(|e| anyhow::anyhow!("the cluster's keys: {e}"))?;
        let ca_dir = ClusterKeys::dir_for(&platform.ctx.keys_dir, &cluster_id);
        let genesis = keys.trust_root_bytes().to_vec();
        let mut cluster = Cluster::with_keys(
            bin,
            voters,
            KeyMaterial {
                cluster_id: cluster_id.clone(),
                ca_dir: ca_dir.clone(),
                signer: SnapshotSigner::from_secret_bytes(&keys.signer().to_secret_bytes()),
                trust_root: genesis.clone(),
            },
        );
        let ids: Vec<String> = cluster.nodes.iter().map(|n| n.id.clone()).collect();

        let mut links = BTreeMap::new();
        for from in 0..ids.len() {
            for to in (0..ids.len()).filter(|to| *to != from) {
                let proxy = LinkProxy::start(&ids[from], &ids[to], cluster.nodes[to].grpc).await?;
                links.insert((from, to), proxy);
            }
        }
        let mut ingress = Vec::new();
        for (index, node) in cluster.nodes.iter_mut().enumerate() {
            let proxy = LinkProxy::start("outside", &ids[index], node.grpc).await?;
            node.advertise = Some(proxy.listen);
            ingress.push(proxy);
        }
        for from in 0..ids.len() {
            let mut extra = voter_args.to_vec();
            for to in (0..ids.len()).filter(|to| *to != from) {
                extra.push("--dial-via".to_string());
                extra.push(format!("{}={}", ids[to], links[&(from, to)].listen));
            }
            cluster.nodes[from].extra_args = extra;
        }
        cluster.start_all().await;
        // Through the control plane, which records the voters (at their
        // ingress addresses) and term 1 in PostgreSQL.
        platform.bootstrap(cluster.voter_specs()).await;
        platform.wait_for_fence().await;
        let control_plane = platform.serve().await;

        // The cache replica, in the first voter's failure domain.
        let cache = cluster.add_cache(CACHE_ID, 1);
        let cache_ingress =
            LinkProxy::start("outside", CACHE_ID, cluster.caches[cache].grpc).await?;
        cluster.caches[cache].advertise = Some(cache_ingress.listen);
        rap_controlplane::caches::add(
            &platform.ctx,
            &platform.owner,
            &pb::AddCacheReplicaRequest {
                cluster_id: CLUSTER.to_string(),
                cache: Some(pb::StorageEndpoint {
                    node_id: CACHE_ID.to_string(),
                    address: cache_ingress.listen.to_string(),
                    domain: Some(pb::FailureDomain {
                        region: "r1".into(),
                        zone: "z1".into(),
                        host: "h1".into(),
                    }),
                }),
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("add the cache replica: {e}"))?;
        cluster.start_cache(cache).await;

        let ca = ClusterCa::load(&ca_dir).map_err(|e| anyhow::anyhow!("the cluster CA: {e}"))?;
        let agent_dir = tempfile::Builder::new()
            .prefix("rap-nemesis-agents-")
            .tempdir()?;
        let mut enrolled = Vec::new();
        for _ in 0..agents.min(AGENTS_MAX) {
            let id = platform.enroll(&[TOGGLED_CAPABILITY]).await;
            let files =
                rap_testkit::shards::node_cert(&ca, &agent_dir.path().join(&id).join("tls"), &id);
            let state_dir = agent_dir.path().join(&id).join("state");
            std::fs::create_dir_all(&state_dir)
                .with_context(|| format!("create {}", state_dir.display()))?;
            enrolled.push(Agent {
                id,
                files,
                state_dir,
            });
        }
        Ok(Fabric {
            platform,
            control_plane,
            cluster,
            ids,
            links,
            ingress,
            cache_ingress,
            agents: enrolled,
            genesis,
            _agent_dir: agent_dir,
        })
    }

    /// The endpoints an agent reads from: every voter and the cache
    /// replica, each at its ingress proxy.
    pub fn agent_endpoints(&self) -> Vec<rap_node_agent::reads::endpoints::Endpoint> {
        let voters = self.cluster.nodes.iter().map(|node| (node, "voter"));
        let caches = self.cluster.caches.iter().map(|node| (node, "cache"));
        voters
            .chain(caches)
            .map(|(node, role)| rap_node_agent::reads::endpoints::Endpoint {
                node_id: node.id.clone(),
                address: node.advertised(),
                region: format!("r{}", node.domain),
                zone: format!("z{}", node.domain),
                role: role.to_string(),
            })
            .collect()
    }

    /// Every link and every ingress passes again.
    pub fn pass_all(&self) {
        for link in self.links.values().chain(&self.ingress) {
            link.set(LinkMode::Pass);
        }
        self.cache_ingress.set(LinkMode::Pass);
    }

    /// Every node's log, by file name.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        self.cluster
            .nodes
            .iter()
            .chain(&self.cluster.caches)
            .map(|node| (format!("{}.log", node.id), node.log.clone()))
            .collect()
    }
}
