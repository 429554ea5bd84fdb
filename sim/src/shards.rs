//! Shards in the simulation: publication, the storage nodes'
//! `ShardService`, and node agents reading, verifying and keeping what
//! they may read.
//!
//! * **Certificates:** each run makes a cluster CA ([`Pki`]) and issues
//!   every storage node, the cache replica and every agent a certificate,
//!   as `rapctl` does.
//! * **Storage side:** next to its plaintext Raft and authority port, each
//!   storage host serves the real `ShardApi` of its node slot on
//!   [`SHARD_PORT`], behind the real access layer, under mutual TLS
//!   ([`crate::net::tls_incoming`]; clients dial through
//!   [`crate::net::tls_dialer`], the product's TLS with turmoil under it).
//! * **Cache replica:** the [`CACHE`] host runs the real `CacheReplica`,
//!   filling itself from the voters with the product's `follow` (as a
//!   storage caller, under mutual TLS) per its signed assignment
//!   `cache/cache-1`, and serves the agents like a voter ([`cache`]).
//! * **Publisher:** beside the fence workers, the client host plays the
//!   control plane: it takes a fence, seals the next version of a scope
//!   with the genesis key and publishes it ([`publisher`]). A publication
//!   whose answer was lost is sent again unchanged until the group's heads
//!   show it, so one version never gets two bodies from us.
//! * **Agents:** each agent host ([`AGENTS`]) runs the real
//!   `rap-node-agent` `Reader` (read, verify, keep; rollback and readers
//!   checks of its verifier; endpoints ranked and failed over) over mutual
//!   TLS, restarting every few seconds from its own state directory. It
//!   also asks, with its own certificate, for a scope it may not read
//!   ([`FORBIDDEN`]): a storage node that serves it is caught.
//!
//! Agents reach every storage node (partitions cut storage links only),
//! so an agent reads from whichever side its ranking picks, the minority
//! included: what it may accept there is still only a newer signed
//! version. After the workload, the client waits until every agent holds
//! the newest version of each scope it reads ([`Board::caught_up`]).

use crate::events::{Event, EventLog, NodeIndex, ShardEvent, node_name};
use crate::harness::{CLUSTER_ID, now};
use crate::net::{self, TurmoilTls};
use crate::seed::SimRng;
use rap_authority::access::{AccessLayer, GroupView};
use rap_authority::cache::CacheStore;
use rap_authority::network::NetworkConfig;
use rap_authority::replica::CacheReplica;
use rap_authority::replica::follow::{Source, follow};
use rap_authority::shard::ShardApi;
use rap_authority::slot::NodeSlot;
use rap_core::codes::error_detail;
use rap_core::identity::PeerIdentity;
use rap_core::tls::live::{self, LiveIdentity};
use rap_core::tls::pin::{ExpectedPeer, PeerTls};
use rap_core::tls::{ClusterCa, NODE_CERT_VALIDITY_DEFAULT, TlsFiles};
use rap_node_agent::reads::endpoints::Endpoint as AgentEndpoint;
use rap_node_agent::reads::{Outcome, Reader};
use rap_node_agent::state::ClusterState;
use rap_node_agent::store::ClusterStore;
use rap_proto::envelope::{
    Digest, Scope, SealedEnvelope, ShardDraft, SnapshotSigner, VerifierOptions, decode, seal,
};
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId, SnapshotVersion, TrustGeneration};
use rap_proto::pb;
use rap_proto::pb::authority_service_client::AuthorityServiceClient;
use rap_proto::pb::shard_service_client::ShardServiceClient;
use rap_proto::shards::{SHARD_FORMAT, encode, readers_of};
use rap_proto::time::UnixMillis;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// The `ShardService` port of every storage node (mutual TLS).
pub const SHARD_PORT: u16 = 7001;

/// The agents: `agent-1` holds [`ROLE`], `agent-2` holds no role.
pub const AGENTS: [&str; 2] = ["agent-1", "agent-2"];

/// The cache replica: a storage node that is not a voter, assigned every
/// agent scope (`cache/cache-1`); agents rank it before the voters.
pub const CACHE: &str = "cache-1";

/// The role `agent-1` holds.
pub const ROLE: &str = "relay-node";

/// The scope each agent asks for with its own certificate and may not
/// read: the role for `agent-2`, the other agent's node scope for
/// `agent-1`. A storage node must refuse it (`NOT_A_READER`).
pub const FORBIDDEN: [&str; 2] = ["node/agent-2", "role/relay-node"];

/// How long an envelope the publisher seals is valid.
pub const ENVELOPE_VALIDITY_MS: i64 = 3_600_000;

/// Most publications the publisher makes in one run.
pub const PUBLICATIONS_MAX: usize = 400;

/// What the shard part of a scenario does.
#[derive(Clone, Copy, Debug)]
pub struct ShardPlan {
    /// The publisher pauses between publications for a time drawn from
    /// `[publish_min, publish_max)`.
    pub publish_min: Duration,
    /// See `publish_min`.
    pub publish_max: Duration,
    /// Each agent pauses between read rounds this long.
    pub read_pause: Duration,
    /// Each incarnation of an agent lives for a time drawn from
    /// `[lifetime_min, lifetime_max)`, then restarts from its state.
    pub lifetime_min: Duration,
    /// See `lifetime_min`.
    pub lifetime_max: Duration,
    /// Whether the cache replica and the agents take sides: each stands
    /// with a storage node drawn from the seed and is cut off, in every
    /// partition of the storage nodes, from the other side (else they
    /// reach every storage node throughout).
    pub sides: bool,
    /// Whether the agents' wall clocks are skewed ([`clock_skew`]): each
    /// agent's clock runs ahead of or behind the publisher's by an amount
    /// drawn from the seed, within the verifier's tolerance or past it.
    pub skews: bool,
}

/// How far an agent's clock may be off before it refuses envelopes: the
/// verifier's default tolerance (both ways).
pub const CLOCK_TOLERANCE_MS: i64 = rap_proto::limits::CLOCK_SKEW_MS_DEFAULT as i64;

/// One agent's clock skew in milliseconds, drawn from `rng`: one of four
/// kinds, each as likely: within the tolerance (up to 90 s either way);
/// ahead by 10–40 min (inside the envelopes' validity); behind by 5–30
/// min (every fresh envelope is not yet valid to it); ahead by 70–120 min
/// (every envelope has expired to it).
pub fn clock_skew(rng: &mut SimRng) -> i64 {
    let minutes = |m: u64| Duration::from_secs(m * 60);
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    match rng.below(4) {
        0 => ms(rng.millis(Duration::ZERO, Duration::from_secs(180))) - 90_000,
        1 => ms(rng.millis(minutes(10), minutes(40))),
        2 => -ms(rng.millis(minutes(5), minutes(30))),
        _ => ms(rng.millis(minutes(70), minutes(120))),
    }
}

/// Whether an agent whose clock is `skew_ms` off may accept a fresh
/// envelope at all: issued within the run, valid for
/// [`ENVELOPE_VALIDITY_MS`], checked with [`CLOCK_TOLERANCE_MS`].
pub fn clock_in_range(skew_ms: i64) -> bool {
    (-CLOCK_TOLERANCE_MS..ENVELOPE_VALIDITY_MS + CLOCK_TOLERANCE_MS).contains(&skew_ms)
}

impl Default for ShardPlan {
    /// A publication every 200–600 ms; agents read every 250 ms and
    /// restart every 3–8 s.
    fn default() -> Self {
        ShardPlan {
            publish_min: Duration::from_millis(200),
            publish_max: Duration::from_millis(600),
            read_pause: Duration::from_millis(250),
            lifetime_min: Duration::from_secs(3),
            lifetime_max: Duration::from_secs(8),
            sides: false,
            skews: false,
        }
    }
}

/// The scopes `agent` reads, its own first (its roles come from it).
pub fn scopes_of(agent: &str) -> Vec<String> {
    let mut scopes = vec![format!("node/{agent}")];
    if agent == AGENTS[0] {
        scopes.push(format!("role/{ROLE}"));
    }
    scopes
}

/// Whether `agent` may read `scope` (the readers the publisher seals).
pub fn may_read(agent: &str, scope: &str) -> bool {
    scopes_of(agent).iter().any(|s| s == scope)
}

/// Every scope an agent reads, sorted.
fn agent_scopes() -> Vec<String> {
    let mut scopes: Vec<String> = AGENTS.iter().flat_map(|a| scopes_of(a)).collect();
    scopes.sort();
    scopes.dedup();
    scopes
}

/// Every scope the publisher publishes: the agents' and the cache
/// replica's assignment.
pub fn published_scopes() -> Vec<String> {
    let mut scopes = agent_scopes();
    scopes.push(format!("cache/{CACHE}"));
    scopes
}

/// The run's certificates: a cluster CA in a scratch directory, a storage
/// identity per node and for the cache replica, a node identity per agent.
pub struct Pki {
    _dir: tempfile::TempDir,
    storage: Vec<Arc<LiveIdentity>>,
    cache: Arc<LiveIdentity>,
    agents: Vec<TlsFiles>,
}

impl Pki {
    /// Makes the CA and issues every certificate.
    pub fn create(nodes: usize) -> Result<Pki, String> {
        let dir = tempfile::Builder::new()
            .prefix("rap-sim-pki-")
            .tempdir()
            .map_err(|e| format!("PKI directory: {e}"))?;
        let cluster = ClusterId::new(CLUSTER_ID).map_err(|e| e.to_string())?;
        let ca = ClusterCa::create(&dir.path().join("ca"), &cluster)
            .map_err(|e| format!("cluster CA: {e}"))?;
        let storage_identity = |name: &str| -> Result<Arc<LiveIdentity>, String> {
            let id = NodeId::new(name).map_err(|e| e.to_string())?;
            let files = ca
                .issue_storage(&dir.path().join(name), &id, &[name.to_string()])
                .map_err(|e| format!("certificate of {name}: {e}"))?;
            LiveIdentity::load(files).map_err(|e| format!("{name}: {e}"))
        };
        let storage = (0..nodes)
            .map(|index| storage_identity(&node_name(index)))
            .collect::<Result<Vec<_>, _>>()?;
        let cache = storage_identity(CACHE)?;
        let mut agents = Vec::with_capacity(AGENTS.len());
        for agent in AGENTS {
            let identity = PeerIdentity::node(
                cluster.clone(),
                NodeId::new(agent).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
            let files = ca
                .issue(
                    &dir.path().join(agent),
                    &identity,
                    NODE_CERT_VALIDITY_DEFAULT,
                    &[],
                )
                .map_err(|e| format!("certificate of {agent}: {e}"))?;
            agents.push(files);
        }
        Ok(Pki {
            _dir: dir,
            storage,
            cache,
            agents,
        })
    }

    /// Storage node `index`'s identity.
    pub fn storage(&self, index: NodeIndex) -> Arc<LiveIdentity> {
        self.storage[index].clone()
    }

    /// The cache replica's identity.
    pub fn cache(&self) -> Arc<LiveIdentity> {
        self.cache.clone()
    }

    /// Agent `index`'s certificate files.
    pub fn agent(&self, index: usize) -> TlsFiles {
        self.agents[index].clone()
    }
}

/// What the publisher and the agents tell the client host (shared memory:
/// the simulation runs on one thread).
#[derive(Debug, Default)]
pub struct Board {
    /// The newest version of each scope the group holds, as the
    /// publisher last learnt it.
    published: BTreeMap<String, u64>,
    /// The version each agent holds of each scope.
    held: BTreeMap<(String, String), u64>,
    /// Set when the run is over: the agents stop.
    finished: bool,
    /// Agents whose clocks are too far off to accept anything: not
    /// expected to catch up.
    excused: BTreeSet<String>,
}

/// The board, shared.
pub type SharedBoard = Arc<Mutex<Board>>;

fn board(shared: &SharedBoard) -> std::sync::MutexGuard<'_, Board> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Board {
    /// Every agent holds at least the newest published version of every
    /// scope it reads; otherwise what is missing.
    pub fn caught_up(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        for agent in AGENTS.iter().filter(|a| !self.excused.contains(**a)) {
            for scope in scopes_of(agent) {
                let want = self.published.get(&scope).copied().unwrap_or(0);
                let held = self
                    .held
                    .get(&(agent.to_string(), scope.clone()))
                    .copied()
                    .unwrap_or(0);
                if held < want {
                    missing.push(format!("{agent} holds {scope} v{held}, v{want} published"));
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("; "))
        }
    }

    /// `agent`'s clock is too far off for it to accept anything.
    pub fn excuse(&mut self, agent: &str) {
        self.excused.insert(agent.to_string());
    }

    /// Tells the agents to stop.
    pub fn finish(&mut self) {
        self.finished = true;
    }
}

/// The first 8 bytes of a content hash, in hex: names a body in the log.
fn body_id(digest: &Digest) -> String {
    digest.to_hex().chars().take(16).collect()
}

// ---------------------------------------------------------------------
// Storage side

/// What a storage host serves shards from.
pub(crate) enum Serving {
    /// A voter: its node slot; with `leaky`, behind
    /// [`crate::mutants::LeakyReaders`].
    Voter { slot: Arc<NodeSlot>, leaky: bool },
    /// A cache replica.
    Cache(Arc<CacheReplica>),
}

/// Serves `what`'s `ShardService` on [`SHARD_PORT`] under mutual TLS with
/// `identity`, behind the real access layer.
pub(crate) async fn serve(
    what: Serving,
    identity: Arc<LiveIdentity>,
    keepalive: Duration,
) -> turmoil::Result {
    let acceptor = tokio_rustls::TlsAcceptor::from(
        live::server_config(&identity).map_err(|e| format!("TLS server: {e}"))?,
    );
    let listener =
        turmoil::net::TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), SHARD_PORT)).await?;
    let (group, routes): (Arc<dyn GroupView>, _) = match what {
        Serving::Voter { slot, leaky } => {
            let api = ShardApi::with_slot(slot.clone());
            let routes = if leaky {
                tonic::service::Routes::new(crate::mutants::LeakyReaders::service(
                    api,
                    slot.clone(),
                ))
            } else {
                tonic::service::Routes::new(api.into_service())
            };
            (slot, routes)
        }
        Serving::Cache(replica) => {
            let routes =
                tonic::service::Routes::new(ShardApi::cache(replica.clone()).into_service());
            (replica, routes)
        }
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive * 2))
        .layer(AccessLayer::new(group, None, true))
        .add_routes(routes)
        .serve_with_incoming(net::tls_incoming(listener, acceptor))
        .await?;
    Ok(())
}

/// Everything the cache replica's host needs to (re)start.
#[derive(Clone)]
pub(crate) struct CacheRun {
    pub(crate) nodes: usize,
    pub(crate) identity: Arc<LiveIdentity>,
    pub(crate) data_dir: PathBuf,
    pub(crate) genesis: Vec<u8>,
    pub(crate) keepalive: Duration,
}

/// The cache replica host: the real `CacheReplica` on its own store,
/// filling itself from the voters as a storage caller under mutual TLS
/// (the product's `follow`), and serving agents on [`SHARD_PORT`].
pub(crate) async fn cache(run: CacheRun) -> turmoil::Result {
    let store = CacheStore::open(
        &run.data_dir,
        ClusterId::new(CLUSTER_ID)?,
        NodeId::new(CACHE)?,
        &run.genesis,
        VerifierOptions::default(),
    )?;
    let replica = Arc::new(CacheReplica::open(store)?);
    let network = NetworkConfig {
        keepalive_interval: run.keepalive,
        keepalive_timeout: run.keepalive * 2,
        tls: Some(PeerTls::new(run.identity.clone())?),
        tls_dialer: Some(net::tls_dialer()),
        ..NetworkConfig::default()
    };
    let sources = (0..run.nodes)
        .map(|node| {
            Ok(Source {
                node_id: NodeId::new(node_name(node).as_str())?,
                address: format!("{}:{SHARD_PORT}", node_name(node)),
            })
        })
        .collect::<Result<Vec<_>, rap_proto::Error>>()?;
    // The host never stops it: a crash drops the whole host.
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let filling = follow(replica.clone(), sources, network, stopped);
    tokio::spawn(async move {
        if let Err(e) = filling.await {
            tracing::warn!(node_id = CACHE, "cache fill stopped: {e}");
        }
    });
    serve(Serving::Cache(replica), run.identity, run.keepalive).await
}

// ---------------------------------------------------------------------
// Publisher

/// One scope as the publisher knows it.
#[derive(Debug)]
struct Published {
    scope: Scope,
    /// The newest version the group holds and its header hash.
    head: Option<(u64, Digest)>,
    /// A publication whose answer was lost: sent again unchanged until the
    /// heads show its version.
    pending: Option<SealedEnvelope>,
    /// Bodies sealed so far (makes each body different).
    sealed: u64,
}

/// How the publisher reaches the group and tells what it learns.
pub(crate) struct Group<'a> {
    pub(crate) nodes: usize,
    pub(crate) clients: &'a [AuthorityServiceClient<Channel>],
    pub(crate) call_timeout: Duration,
    pub(crate) log: &'a EventLog,
    pub(crate) board: &'a SharedBoard,
}

/// Everything the publisher needs; `F` takes a fence through a node
/// (logging the call), `None` if refused.
pub(crate) struct PublisherRun<'a, F> {
    pub(crate) group: &'a Group<'a>,
    /// The source of truth's current authority term (PostgreSQL's
    /// `cluster_authority_terms` in production): a fence of an older term
    /// publishes nothing, as the control plane's fenced transaction
    /// refuses it.
    pub(crate) truth: &'a crate::truth::MemoryTruth,
    pub(crate) plan: ShardPlan,
    pub(crate) signer: SnapshotSigner,
    pub(crate) rng: SimRng,
    pub(crate) fence: F,
}

/// Every published scope, nothing known of it yet.
fn unknown_scopes() -> Vec<Published> {
    published_scopes()
        .into_iter()
        .filter_map(|scope| scope.parse().ok())
        .map(|scope| Published {
            scope,
            head: None,
            pending: None,
            sealed: 0,
        })
        .collect()
}

/// Publishes until simulated time `end`: each round takes a fence through
/// a node drawn from the seed and publishes the next version of one
/// scope (every scope in the first round).
pub(crate) async fn publisher<F>(mut run: PublisherRun<'_, F>, end: Duration)
where
    F: AsyncFn(NodeIndex) -> Option<pb::FencingToken>,
{
    let cluster = match ClusterId::new(CLUSTER_ID) {
        Ok(cluster) => cluster,
        Err(_) => return,
    };
    let group = run.group;
    let mut scopes = unknown_scopes();
    let mut round = 0usize;
    while now() < end && round < PUBLICATIONS_MAX {
        let node = run.rng.index(group.nodes);
        let chosen: Vec<usize> = if round == 0 {
            (0..scopes.len()).collect()
        } else {
            vec![run.rng.index(scopes.len())]
        };
        round += 1;
        let fence = (run.fence)(node)
            .await
            .filter(|f| f.authority_term >= run.truth.current_term());
        if let Some(fence) = fence {
            let mut envelopes = Vec::new();
            for at in &chosen {
                let entry = &mut scopes[*at];
                // A publication of another authority term (the answer
                // was lost before a promotion) can never be taken now:
                // the next version is sealed again under this fence.
                if entry
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.header.authority_term.0 != fence.authority_term)
                {
                    entry.pending = None;
                }
                if entry.pending.is_none() {
                    match seal_next(&cluster, entry, &run.signer, fence.authority_term) {
                        Ok(sealed) => entry.pending = Some(sealed),
                        Err(e) => {
                            tracing::warn!(scope = %entry.scope, "seal: {e}");
                            continue;
                        }
                    }
                }
                if let Some(sealed) = &entry.pending {
                    envelopes.push(sealed.bytes.clone());
                }
            }
            let request = pb::PublishShardsRequest {
                fence: Some(fence),
                envelopes,
            };
            let mut client = group.clients[node].clone();
            let answer =
                tokio::time::timeout(group.call_timeout, client.publish_shards(request)).await;
            match answer {
                Ok(Ok(answer)) => {
                    for shard in answer.into_inner().published {
                        if let Some(entry) = scopes
                            .iter_mut()
                            .find(|e| e.scope.to_string() == shard.scope)
                        {
                            acknowledged(entry, shard.version, false, group.log, group.board);
                        }
                    }
                }
                Ok(Err(status)) => {
                    let code = error_detail(&status).map(|d| d.code).unwrap_or_default();
                    tracing::debug!(node = node_name(node), code, "publish refused");
                    refresh_heads(group, node, &mut scopes).await;
                }
                Err(_) => {
                    refresh_heads(group, node, &mut scopes).await;
                }
            }
        }
        let pause = run.rng.millis(run.plan.publish_min, run.plan.publish_max);
        tokio::time::sleep(pause).await;
    }
}

/// After the workload: learns the heads of the group `members` (all
/// nodes, or the survivors of a promotion: the fenced old side still
/// answers with what it held) through the first member that answers; the
/// board then names exactly those versions for the agents to reach.
pub(crate) async fn settle(
    group: &Group<'_>,
    members: &[NodeIndex],
    within: Duration,
) -> Result<(), String> {
    let scopes = unknown_scopes();
    let deadline = now() + within;
    while now() < deadline {
        for node in members {
            if let Some(heads) = heads(group, *node, &scopes).await {
                let mut board = board(group.board);
                board.published = heads
                    .into_iter()
                    .map(|head| (head.scope, head.version))
                    .collect();
                return Ok(());
            }
        }
        tokio::time::sleep(crate::workload::RETRY_PAUSE).await;
    }
    Err(format!("no member told the shard heads within {within:?}"))
}

/// `node`'s heads of `scopes`, if it answers in time.
async fn heads(
    group: &Group<'_>,
    node: NodeIndex,
    scopes: &[Published],
) -> Option<Vec<pb::ShardHead>> {
    let request = pb::ShardHeadsRequest {
        cluster_id: CLUSTER_ID.into(),
        scopes: scopes.iter().map(|e| e.scope.to_string()).collect(),
        include_envelopes: false,
    };
    let mut client = group.clients[node].clone();
    match tokio::time::timeout(group.call_timeout, client.shard_heads(request)).await {
        Ok(Ok(answer)) => Some(answer.into_inner().heads),
        _ => None,
    }
}

/// Seals the next version of `entry` under `authority_term`.
fn seal_next(
    cluster: &ClusterId,
    entry: &mut Published,
    signer: &SnapshotSigner,
    authority_term: u64,
) -> Result<SealedEnvelope, String> {
    entry.sealed += 1;
    let (version, prev_hash) = match entry.head {
        Some((version, hash)) => (version + 1, Some(hash)),
        None => (1, None),
    };
    let body = body_of(cluster, &entry.scope, entry.sealed)?;
    let issued_at = UnixMillis::now();
    seal(
        ShardDraft {
            cluster_id: cluster.clone(),
            scope: entry.scope.clone(),
            version: SnapshotVersion(version),
            authority_term: AuthorityTerm(authority_term),
            issued_at,
            expires_at: issued_at.plus_ms(ENVELOPE_VALIDITY_MS),
            prev_hash,
            readers: readers_of(&entry.scope),
            body,
        },
        signer,
        TrustGeneration(1),
    )
    .map_err(|e| e.to_string())
}

/// The `n`th body of `scope`: a node shard (agent-1 with the role) or a
/// role shard, each different from the one before.
fn body_of(cluster: &ClusterId, scope: &Scope, n: u64) -> Result<Vec<u8>, String> {
    let bytes = match scope {
        Scope::Node(id) => {
            let roles = if id.as_str() == AGENTS[0] {
                vec![pb::NodeRole {
                    role: ROLE.into(),
                    org_id: String::new(),
                }]
            } else {
                Vec::new()
            };
            encode(&pb::NodeShard {
                format: SHARD_FORMAT,
                cluster_id: cluster.to_string(),
                node_id: id.to_string(),
                membership_status: "active".into(),
                group_id: String::new(),
                roles,
                workloads: vec![pb::DesiredWorkload {
                    service: "synthetic-echo".into(),
                    desired_state: if n.is_multiple_of(2) {
                        "enabled"
                    } else {
                        "disabled"
                    }
                    .into(),
                    version: n,
                }],
                storage_endpoints: Vec::new(),
                readable_scopes: scopes_of(id.as_str()),
            })
        }
        Scope::Cache(id) => encode(&pb::CacheShard {
            format: SHARD_FORMAT,
            cluster_id: cluster.to_string(),
            node_id: id.to_string(),
            scopes: agent_scopes(),
            serves: AGENTS.iter().map(ToString::to_string).collect(),
        }),
        _ => encode(&pb::RoleShard {
            format: SHARD_FORMAT,
            cluster_id: cluster.to_string(),
            role: ROLE.into(),
            required_capability: "can_route_mesh".into(),
            endpoints: vec![pb::RoleEndpoint {
                org_id: "org-1".into(),
                name: format!("entry-{n}"),
                ..Default::default()
            }],
        }),
    };
    bytes.map_err(|e| e.to_string())
}

/// The group holds `version` of `entry`: the pending publication if it is
/// that version, logged once.
fn acknowledged(
    entry: &mut Published,
    version: u64,
    found: bool,
    log: &EventLog,
    board_: &SharedBoard,
) {
    let Some(sealed) = entry
        .pending
        .take_if(|sealed| sealed.header.version.0 == version)
    else {
        return;
    };
    entry.head = Some((version, sealed.header_hash));
    let scope = entry.scope.to_string();
    log.push(Event::Shard {
        at: now(),
        what: ShardEvent::Published {
            scope: scope.clone(),
            version,
            term: sealed.header.authority_term.0,
            body: body_id(&sealed.header.content_hash),
            found,
        },
    });
    let mut board = board(board_);
    let newest = board.published.entry(scope).or_insert(0);
    *newest = (*newest).max(version);
}

/// Asks `node` for the group's heads and follows them: a pending
/// publication the heads show with our body is acknowledged, one they
/// show another body for (or pass) is dropped. True if `node` answered.
async fn refresh_heads(group: &Group<'_>, node: NodeIndex, scopes: &mut [Published]) -> bool {
    let Some(heads) = heads(group, node, scopes).await else {
        return false;
    };
    for head in heads {
        let Some(entry) = scopes
            .iter_mut()
            .find(|e| e.scope.to_string() == head.scope)
        else {
            continue;
        };
        let (Ok(header_hash), Ok(content_hash)) = (
            Digest::from_slice("header hash", &head.header_hash),
            Digest::from_slice("content hash", &head.content_hash),
        ) else {
            continue;
        };
        if entry
            .head
            .is_some_and(|(version, _)| version >= head.version)
        {
            continue;
        }
        match &entry.pending {
            Some(sealed) if sealed.header.version.0 == head.version => {
                if sealed.header.content_hash == content_hash {
                    acknowledged(entry, head.version, true, group.log, group.board);
                    continue;
                }
                entry.pending = None;
            }
            Some(sealed) if sealed.header.version.0 < head.version => entry.pending = None,
            _ => {}
        }
        entry.head = Some((head.version, header_hash));
        let mut board = board(group.board);
        let newest = board.published.entry(head.scope.clone()).or_insert(0);
        *newest = (*newest).max(head.version);
    }
    true
}

// ---------------------------------------------------------------------
// Agents

/// Everything an agent host needs.
#[derive(Clone)]
pub(crate) struct AgentRun {
    pub(crate) index: usize,
    pub(crate) nodes: usize,
    pub(crate) plan: ShardPlan,
    pub(crate) files: TlsFiles,
    pub(crate) state_dir: PathBuf,
    pub(crate) genesis: Vec<u8>,
    pub(crate) rng: SimRng,
    pub(crate) log: EventLog,
    pub(crate) board: SharedBoard,
    /// [`crate::mutants::Mutant::AgentForgetsState`]: every restart
    /// starts from an empty state directory.
    pub(crate) forget: bool,
    /// [`crate::mutants::Mutant::AgentForgetsTerm`]: every restart
    /// starts without the authority-term mark.
    pub(crate) forget_term: bool,
    /// How far the agent's wall clock is off, in milliseconds.
    pub(crate) skew_ms: i64,
}

/// [`crate::mutants::Mutant::AgentForgetsTerm`]: clears the authority-term
/// mark of every cluster in the agent's marks file (`<state-dir>/<cluster>/
/// marks/high-water.json`), keeping its version marks.
fn forget_term_marks(state_dir: &std::path::Path) -> Result<(), String> {
    let path = state_dir
        .join(CLUSTER_ID)
        .join("marks")
        .join("high-water.json");
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("read {}: {e}", path.display())),
    };
    let mut state: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("parse {}: {e}", path.display()))?;
    if let Some(clusters) = state
        .get_mut("clusters")
        .and_then(serde_json::Value::as_object_mut)
    {
        for cluster in clusters.values_mut() {
            if let Some(cluster) = cluster.as_object_mut() {
                cluster.insert("term".into(), serde_json::Value::Null);
            }
        }
    }
    let text = serde_json::to_vec(&state).map_err(|e| format!("encode the marks: {e}"))?;
    std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

/// The agent host's future: incarnations of the real reader until the run
/// is over.
pub(crate) async fn agent(mut run: AgentRun) -> turmoil::Result {
    let name = AGENTS[run.index];
    let cluster = ClusterId::new(CLUSTER_ID)?;
    let tls = PeerTls::new(LiveIdentity::load(run.files.clone())?)?;
    let endpoints: Vec<AgentEndpoint> = (0..run.nodes)
        .map(|node| AgentEndpoint {
            node_id: node_name(node),
            address: format!("{}:{SHARD_PORT}", node_name(node)),
            region: "region-1".into(),
            zone: format!("zone-{}", node + 1),
            role: "voter".into(),
        })
        .chain(std::iter::once(AgentEndpoint {
            node_id: CACHE.into(),
            address: format!("{CACHE}:{SHARD_PORT}"),
            region: "region-1".into(),
            zone: "zone-1".into(),
            role: "cache".into(),
        }))
        .collect();
    let mut incarnation = 0u32;
    while !board(&run.board).finished {
        incarnation += 1;
        if run.forget && incarnation > 1 {
            std::fs::remove_dir_all(&run.state_dir)?;
            std::fs::create_dir_all(&run.state_dir)?;
        }
        if run.forget_term && incarnation > 1 {
            forget_term_marks(&run.state_dir)?;
        }
        let state = ClusterState::open(&run.state_dir, &cluster)?;
        let store = ClusterStore::open(&run.state_dir, &state, &cluster)?;
        let mut reader = Reader::open(
            state,
            store,
            cluster.clone(),
            NodeId::new(name)?,
            &run.genesis,
            Some(tls.clone()),
            endpoints.clone(),
        )?
        .dial_with(net::tls_dialer());
        if run.skew_ms != 0 {
            let skew = run.skew_ms;
            reader = reader.clock_with(Arc::new(move || UnixMillis::now().plus_ms(skew)));
        }
        let lifetime = run.rng.millis(run.plan.lifetime_min, run.plan.lifetime_max);
        let until = now() + lifetime;
        while now() < until && !board(&run.board).finished {
            for scope in scopes_of(name) {
                if let Ok(Outcome::Updated(version)) = reader.read(&scope).await {
                    accepted(&run, &reader, incarnation, &scope, version);
                }
            }
            forbidden_read(&run, &tls, &endpoints).await;
            tokio::time::sleep(run.plan.read_pause).await;
        }
    }
    Ok(())
}

/// Logs that the agent verified and kept `version` of `scope`.
fn accepted(run: &AgentRun, reader: &Reader, incarnation: u32, scope: &str, version: u64) {
    let name = AGENTS[run.index];
    let Some(held) = reader.held().get(scope) else {
        return;
    };
    let body = decode(held.envelope())
        .map(|e| body_id(&e.header.content_hash))
        .unwrap_or_default();
    run.log.push(Event::Shard {
        at: now(),
        what: ShardEvent::Accepted {
            agent: name.to_string(),
            incarnation,
            scope: scope.to_string(),
            version,
            term: held.authority_term,
            body,
            served_by: held.served_by.clone(),
        },
    });
    board(&run.board)
        .held
        .insert((name.to_string(), scope.to_string()), version);
}

/// Asks one storage node (drawn from the seed), with the agent's own
/// certificate, for the scope it may not read; logs it if served.
async fn forbidden_read(run: &AgentRun, tls: &Arc<PeerTls>, endpoints: &[AgentEndpoint]) {
    let name = AGENTS[run.index];
    let scope = FORBIDDEN[run.index];
    let mut rng = run.rng.fork(&format!("forbidden-{}", now().as_millis()));
    let endpoint = &endpoints[rng.index(endpoints.len())];
    let Ok(connector) = tls.connector(&ExpectedPeer::storage_named(&endpoint.node_id)) else {
        return;
    };
    let Ok(base) = Endpoint::from_shared(format!("http://{}", endpoint.address)) else {
        return;
    };
    let channel = base
        .connect_timeout(Duration::from_secs(1))
        .connect_with_connector_lazy(TurmoilTls(connector));
    let request = pb::GetShardRequest {
        cluster_id: CLUSTER_ID.into(),
        scope: scope.to_string(),
        min_version: 0,
    };
    let mut client = ShardServiceClient::new(channel);
    let asked = client.get_shard(request);
    if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(2), asked).await {
        let answer = answer.into_inner();
        let version = decode(&answer.envelope)
            .map(|e| e.header.version.0)
            .unwrap_or_default();
        run.log.push(Event::Shard {
            at: now(),
            what: ShardEvent::Served {
                agent: name.to_string(),
                scope: scope.to_string(),
                version,
                served_by: answer.served_by_node_id,
            },
        });
    }
}
