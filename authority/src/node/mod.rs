//! One storage node's member of its cluster's authority group: the Raft
//! instance with its redb storage and tonic transport, the fast-refusing
//! write path, the partition view, and group lifecycle (bootstrap, add and
//! remove voters).
//!
//! The write path never hangs: a fenced node refuses at once; a leader
//! whose quorum lease has run out refuses before proposing; a follower that
//! cannot reach a quorum refuses at once; anything else gets at most
//! [`Timing::write_budget`] (2 × the minimum election timeout) and then
//! `NO_QUORUM`.

use crate::admission::{ExpectedPeers, Revocations};
use crate::error::{Error, Result};
use crate::metrics::{AuthorityMetrics, Format, Gauges, NodeKind};
use crate::network::{Connector, NetworkConfig, NetworkFactory, Reachability, TermGuard};
use crate::partition::{self, PartitionView};
use crate::placement::{Candidate, Tolerance, failure_tolerance};
use crate::request::{PublishedShard, Request, Response};
use crate::store::{self, StateView};
use crate::typ::{Member, Raft, RaftMetrics, RaftNodeId, raft_id_of};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use rap_core::fence::Fence;
use rap_core::tls::pin::{ExpectedPeer, PeerTls};
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId};
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

mod failover;
mod fences;
#[cfg(debug_assertions)]
pub use fences::mutant;
mod heads;
mod membership;
mod quorum;

use quorum::{probe_voters, track_term};

/// Raft log entries between snapshots.
pub const SNAPSHOT_LOGS_SINCE_LAST: u64 = 5_000;

/// Log entries kept behind a snapshot, so a slightly lagging follower
/// catches up from the log instead of a snapshot.
pub const LOGS_KEPT_BEHIND_SNAPSHOT: u64 = 1_000;

/// How many election timeouts `bootstrap` waits for the first leader.
pub const BOOTSTRAP_ELECTION_TIMEOUTS_MAX: u32 = 20;

/// How long `add_voter` waits for a new learner to catch up before it
/// refuses to promote it (`LEARNER_BEHIND`).
pub const LEARNER_CATCH_UP_MAX: Duration = Duration::from_secs(120);

/// `add_voter` gives up sooner, after this many maximum election
/// timeouts, when the new learner has not answered a single Raft RPC.
pub const LEARNER_SILENCE_ELECTION_TIMEOUTS: u32 = 10;

/// Refusal code: a new learner did not catch up, so it was not promoted;
/// it stays a learner and does not count for quorum.
pub const LEARNER_BEHIND: &str = "LEARNER_BEHIND";

/// Raft timing of one node.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Minimum election timeout.
    pub election_timeout_min: Duration,
    /// Maximum election timeout.
    pub election_timeout_max: Duration,
    /// Quorum lease (≤ `election_timeout_min`).
    pub lease: Duration,
    /// HTTP/2 keepalive interval of every channel.
    pub keepalive: Duration,
}

impl Timing {
    /// Refuses timing that cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.election_timeout_min <= self.heartbeat * 3 {
            return Err(Error::InvalidRequest(format!(
                "election timeout {:?} must be more than 3 × heartbeat {:?}",
                self.election_timeout_min, self.heartbeat
            )));
        }
        if self.election_timeout_max <= self.election_timeout_min {
            return Err(Error::InvalidRequest(
                "maximum election timeout must exceed the minimum".into(),
            ));
        }
        if self.lease.is_zero() || self.lease > self.election_timeout_min {
            return Err(Error::InvalidRequest(format!(
                "lease {:?} must be in (0, election timeout {:?}]",
                self.lease, self.election_timeout_min
            )));
        }
        Ok(())
    }

    /// How long a voter that heard from a leader refuses to vote for
    /// anyone else: the minimum election timeout, as etcd's check-quorum
    /// lease. It is never shorter than the quorum lease, so a leader stops
    /// claiming a quorum before the voters may elect another.
    pub fn vote_lease(&self) -> Duration {
        self.election_timeout_min
    }

    /// The `(election_timeout_min, election_timeout_max)` pair in
    /// milliseconds handed to openraft 0.9, which uses its maximum as the
    /// voters' lease (see [`Timing::vote_lease`]) and campaigns, without
    /// a leader, after that lease plus a timeout it draws once from
    /// `[min, max)`. So its maximum is the vote lease, and its draw spans
    /// half of the configured range, at least 1 ms and ending at the
    /// lease: a follower that lost its leader campaigns on its own timer
    /// between `lease + min - (max - min) / 2` and `2 × min` of silence
    /// (750–1000 ms at the default 500–1000 ms). The failover module
    /// starts one designated voter sooner.
    pub fn raft_election_window_ms(&self) -> (u64, u64) {
        let lease = millis(self.vote_lease());
        let floor = millis(self.heartbeat * 2).max(1);
        let half = millis(
            self.election_timeout_max
                .saturating_sub(self.election_timeout_min),
        ) / 2;
        let width = half.clamp(1, lease.saturating_sub(floor).max(1));
        (lease - width, lease)
    }

    /// The longest a write may take before it is refused with `NO_QUORUM`.
    pub fn write_budget(&self) -> Duration {
        self.election_timeout_min * 2
    }

    /// How often a node probes the other voters.
    pub fn probe_interval(&self) -> Duration {
        self.heartbeat * 3
    }

    /// How recent a contact must be for a voter to count as reachable.
    pub fn reach_window(&self) -> Duration {
        self.lease.max(self.probe_interval() * 3)
    }
}

/// Everything a node needs to start.
#[derive(Clone)]
pub struct NodeOptions {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// This node.
    pub node_id: NodeId,
    /// `host:port` other nodes dial (gRPC).
    pub advertise: String,
    /// Failure-domain labels: region, zone, host.
    pub region: String,
    /// Zone label.
    pub zone: String,
    /// Host label.
    pub host: String,
    /// Where `raft.redb` lives.
    pub data_dir: PathBuf,
    /// Raft timing.
    pub timing: Timing,
    /// mTLS towards peers, with this node's (reloadable) certificate;
    /// `None` runs plaintext (development and the simulation only).
    pub tls: Option<Arc<PeerTls>>,
    /// How channels to other nodes are dialled; `None` is plain TCP. The
    /// simulation dials through turmoil.
    pub connector: Option<Connector>,
    /// Where the Raft store's bytes live; `None` is the file
    /// `<data_dir>/raft.redb`. The simulation gives a disk that loses
    /// unsynced writes in a crash.
    pub disk: Option<store::DiskOpener>,
    /// The wall clock signed orders' ages are checked against; `None` is
    /// the system's. The simulation skews it.
    pub clock: Option<rap_proto::time::WallClock>,
    /// Addresses to dial peers at instead of their member addresses
    /// ([`NetworkConfig::dial_via`]); empty in production.
    pub dial_via: BTreeMap<String, String>,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("advertise", &self.advertise)
            .field("data_dir", &self.data_dir)
            .field("timing", &self.timing)
            .field("tls", &self.tls.is_some())
            .field("custom_connector", &self.connector.is_some())
            .field("custom_disk", &self.disk.is_some())
            .field("custom_clock", &self.clock.is_some())
            .finish()
    }
}

impl NodeOptions {
    /// The time on this node's wall clock.
    pub fn now(&self) -> rap_proto::time::UnixMillis {
        rap_proto::time::UnixMillis::on(self.clock.as_ref())
    }

    /// This node as a group member.
    pub fn member(&self) -> Member {
        Member {
            node_id: self.node_id.to_string(),
            address: self.advertise.clone(),
            region: self.region.clone(),
            zone: self.zone.clone(),
            host: self.host.clone(),
        }
    }
}

/// What one incarnation of a node hands to the next (promotion and rejoin
/// restart the node on fresh storage): the transport's term guard and
/// reachability, the metrics, so counters keep counting, and the peers it
/// expects while it holds no group.
#[derive(Clone, Debug)]
pub struct Carried {
    /// The term guard shared with the transport.
    pub guard: Arc<TermGuard>,
    /// Contacts with peers and the leader.
    pub reach: Arc<Reachability>,
    /// Counters and histograms.
    pub metrics: Arc<AuthorityMetrics>,
    /// Whom this node admits while it holds no group.
    pub expected: Arc<ExpectedPeers>,
}

/// What `Status` reports about one voter.
#[derive(Clone, Debug)]
pub struct VoterReport {
    /// The member.
    pub member: Member,
    /// Whether this node heard from it recently (itself: always).
    pub reachable: bool,
    /// Time since the last successful contact, if any.
    pub last_contact_age: Option<Duration>,
    /// Whether it is the leader this node knows.
    pub is_leader: bool,
}

/// A node's view of its group.
#[derive(Clone, Debug)]
pub struct StatusReport {
    /// Leader's RAP node id, if known.
    pub leader: Option<String>,
    /// Raft term.
    pub raft_term: u64,
    /// Authority term.
    pub authority_term: AuthorityTerm,
    /// Applied index.
    pub applied_index: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Last fence sequence granted.
    pub last_fence_seq: u64,
    /// The partition view.
    pub view: PartitionView,
    /// Voters reachable, this node included.
    pub reachable_voters: usize,
    /// The voters.
    pub voters: Vec<VoterReport>,
}

/// One node of a cluster's authority group.
pub struct AuthorityNode {
    options: NodeOptions,
    raft_id: RaftNodeId,
    raft: Raft,
    guard: Arc<TermGuard>,
    reach: Arc<Reachability>,
    view: StateView,
    metrics: Arc<AuthorityMetrics>,
    expected: Arc<ExpectedPeers>,
    revocations: Revocations,
    network: NetworkConfig,
    /// One lazily connected channel per peer address, shared by forwarding
    /// and probing (a channel per call would cost a TLS handshake each).
    clients: std::sync::Mutex<BTreeMap<String, AuthorityClient>>,
    /// `AcquireFence` calls waiting for their shared entry.
    fences: fences::FenceQueue,
}

/// A client of another node's `AuthorityService`.
pub type AuthorityClient =
    rap_proto::pb::authority_service_client::AuthorityServiceClient<tonic::transport::Channel>;

impl std::fmt::Debug for AuthorityNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityNode")
            .field("cluster_id", &self.options.cluster_id)
            .field("node_id", &self.options.node_id)
            .finish_non_exhaustive()
    }
}

impl AuthorityNode {
    /// Opens the node's storage and starts its Raft instance and
    /// background tasks (term tracking, voter probing). Serving the gRPC
    /// services is the caller's job ([`crate::service`]).
    pub async fn start(options: NodeOptions) -> Result<Arc<Self>> {
        Self::start_with(options, None).await
    }

    /// Like [`AuthorityNode::start`], keeping the term guard and
    /// reachability of a previous incarnation of this node (promotion and
    /// rejoin restart the node on fresh storage at a new term).
    pub async fn start_with(options: NodeOptions, carried: Option<Carried>) -> Result<Arc<Self>> {
        options.timing.validate()?;
        rap_core::tls::install_crypto_provider();
        let (log, state_machine) = store::open_on(&options.data_dir, options.disk.as_ref())?;
        let view = state_machine.view();
        if let Some(stored) = view.cluster_id()
            && stored != options.cluster_id
        {
            return Err(Error::WrongCluster {
                expected: options.cluster_id.clone(),
                got: stored.to_string(),
            });
        }
        let Carried {
            guard,
            reach,
            metrics,
            expected,
        } = match carried {
            Some(carried) => {
                if view.authority_term() > carried.guard.term() {
                    carried.guard.set_term(view.authority_term());
                }
                carried
            }
            None => Carried {
                guard: Arc::new(TermGuard::new(
                    options.cluster_id.clone(),
                    options.node_id.clone(),
                    view.authority_term(),
                )),
                reach: Arc::new(Reachability::new()),
                metrics: Arc::new(AuthorityMetrics::new(
                    options.cluster_id.as_str(),
                    options.node_id.as_str(),
                    NodeKind::Voter,
                )),
                expected: Arc::new(ExpectedPeers::load(&options.data_dir)?),
            },
        };
        let network = NetworkConfig {
            keepalive_interval: options.timing.keepalive,
            // Retry a peer that could not be reached every heartbeat, so a
            // dead peer is known as gone within two heartbeats.
            unreachable_backoff: options.timing.heartbeat,
            tls: options.tls.clone(),
            dial_via: options.dial_via.clone(),
            ..NetworkConfig::default()
        };
        let mut factory = NetworkFactory::new(network.clone(), guard.clone(), reach.clone())?;
        if let Some(connector) = &options.connector {
            factory = factory.with_connector(connector.clone());
        }
        let raft_election = options.timing.raft_election_window_ms();
        let config = openraft::Config {
            cluster_name: options.cluster_id.to_string(),
            heartbeat_interval: millis(options.timing.heartbeat),
            election_timeout_min: raft_election.0,
            election_timeout_max: raft_election.1,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_LOGS_SINCE_LAST),
            max_in_snapshot_log_to_keep: LOGS_KEPT_BEHIND_SNAPSHOT,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| Error::InvalidRequest(format!("raft config: {e}")))?;
        let raft_id = raft_id_of(options.node_id.as_str());
        // The stores time their appends and applies into the metrics.
        let log = log.timed(metrics.raft_append());
        let state_machine = state_machine.timed(metrics.raft_apply());
        let raft = Raft::new(raft_id, Arc::new(config), factory, log, state_machine)
            .await
            .map_err(|e| Error::Raft(format!("start raft: {e}")))?;
        let node = Arc::new(AuthorityNode {
            options,
            raft_id,
            raft,
            guard,
            reach,
            view,
            metrics,
            expected,
            revocations: Revocations::default(),
            network,
            clients: std::sync::Mutex::new(BTreeMap::new()),
            fences: fences::FenceQueue::default(),
        });
        node.sync_guard();
        // The background tasks carry the node's ids in their spans.
        let span = |task: &'static str| {
            tracing::info_span!(
                "task",
                task,
                cluster_id = %node.options.cluster_id,
                node_id = %node.options.node_id
            )
        };
        tokio::spawn(track_term(Arc::downgrade(&node)).instrument(span("track_term")));
        tokio::spawn(probe_voters(Arc::downgrade(&node)).instrument(span("probe_voters")));
        tokio::spawn(
            failover::campaign_when_lease_ends(Arc::downgrade(&node))
                .instrument(span("campaign_when_lease_ends")),
        );
        tracing::info!(
            cluster_id = %node.options.cluster_id,
            node_id = %node.options.node_id,
            raft_id = node.raft_id,
            "authority node started"
        );
        Ok(node)
    }

    /// The node's options.
    pub fn options(&self) -> &NodeOptions {
        &self.options
    }

    /// The Raft handle (for the RaftService server).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The term guard shared with the transport.
    pub fn guard(&self) -> &Arc<TermGuard> {
        &self.guard
    }

    /// Reachability shared with the transport.
    pub fn reachability(&self) -> &Arc<Reachability> {
        &self.reach
    }

    /// The applied state.
    pub fn state(&self) -> &StateView {
        &self.view
    }

    /// Counters and histograms.
    pub fn metrics(&self) -> &Arc<AuthorityMetrics> {
        &self.metrics
    }

    /// What the next incarnation of this node keeps.
    pub fn carried(&self) -> Carried {
        Carried {
            guard: self.guard.clone(),
            reach: self.reach.clone(),
            metrics: self.metrics.clone(),
            expected: self.expected.clone(),
        }
    }

    /// Hands the guard what the applied state proves: the trust root that
    /// signs promotion orders, the term, and the order of the term.
    fn sync_guard(&self) {
        if !self.guard.has_trust_root() {
            let root = self.view.read(|s| s.trust_root.to_vec());
            if !root.is_empty() {
                match rap_proto::envelope::VerifiedTrustRoot::verify_genesis(
                    &root,
                    &self.options.cluster_id,
                    None,
                ) {
                    Ok(root) => self.guard.set_trust_root(root),
                    Err(error) => tracing::error!(
                        cluster_id = %self.options.cluster_id,
                        node_id = %self.options.node_id,
                        %error,
                        "the applied trust root does not verify"
                    ),
                }
            }
        }
        let term = self.view.authority_term();
        if term > self.guard.term() {
            tracing::info!(
                cluster_id = %self.options.cluster_id,
                node_id = %self.options.node_id,
                term = term.0,
                "authority term applied"
            );
            self.guard.set_term(term);
        }
        if term == self.guard.term() && !self.guard.has_own_proof() {
            let proof = self.view.read(|s| s.term_proof.to_vec());
            if !proof.is_empty() {
                self.guard.set_own_proof(&proof);
            }
        }
    }

    /// Whether storage node `id` may send this node Raft RPCs and relayed
    /// writes: a member (voter or learner) of its group, or, while it
    /// holds no group, one of the peers it was told to expect.
    pub fn admits_peer(&self, id: &NodeId) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let mut nodes = membership.nodes().peekable();
        if nodes.peek().is_none() {
            return self.expected.contains(id);
        }
        nodes.any(|(_, member)| member.node_id == id.as_str())
    }

    /// Whether the certificate with serial `serial_hex` is in the group's
    /// `trust/revocations`.
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.revocations
            .is_revoked(&self.view, &self.options.cluster_id, serial_hex)
    }

    /// The peers this node expects while it holds no group.
    pub fn expected_peers(&self) -> &Arc<ExpectedPeers> {
        &self.expected
    }

    /// Records the members of the group this node is about to join (it
    /// must hold no group yet): they may replicate to it. Returns how many.
    pub fn prepare_join(&self, members: &[Member]) -> Result<usize> {
        if self.is_initialized() {
            return Err(Error::Refused {
                code: "ALREADY_INITIALIZED".into(),
                message: "this node already holds a group; remove it or rejoin it first".into(),
            });
        }
        let mut peers = std::collections::BTreeSet::new();
        for member in members {
            let id = NodeId::new(member.node_id.as_str())?;
            if id != self.options.node_id {
                peers.insert(id);
            }
        }
        let count = peers.len();
        self.expected
            .set(peers, &self.options.cluster_id, "prepare-join")?;
        Ok(count)
    }

    /// Network settings (for clients that dial other nodes).
    pub fn network(&self) -> &NetworkConfig {
        &self.network
    }

    /// A client of `member`'s `AuthorityService`, dialled the way this
    /// node dials its Raft peers (pinned to that member); one cached
    /// channel per member and address (at most `PEERS_MAX` are kept).
    pub fn authority_client(&self, member: &Member) -> Result<AuthorityClient> {
        let key = format!("{}@{}", member.node_id, member.address);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = crate::client::authority_client_via(
            &self.network,
            &member.address,
            &ExpectedPeer::storage_named(&member.node_id),
            self.options.connector.as_ref(),
        )?;
        if clients.len() >= crate::network::PEERS_MAX {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// Proposes `request` through Raft within the write budget. Returns
    /// `NotLeader` (with the leader) when another node leads and was heard
    /// from within the lease: the service layer forwards to it.
    pub async fn propose(&self, request: Request) -> Result<Response> {
        self.propose_within(request, self.options.timing.write_budget())
            .await
    }

    async fn propose_within(&self, request: Request, budget: Duration) -> Result<Response> {
        self.guard.ensure_not_fenced()?;
        let deadline = Instant::now() + budget;
        let lease = self.options.timing.lease;
        let mut changes = self.raft.metrics();
        loop {
            let metrics = changes.borrow_and_update().clone();
            let voters = Self::voters(&metrics);
            if voters.is_empty() {
                return Err(Error::Refused {
                    code: "NOT_INITIALIZED".into(),
                    message: "this node is not part of a bootstrapped group".into(),
                });
            }
            match metrics.current_leader {
                Some(leader) if leader == self.raft_id => {
                    // No quorum acknowledgement within the lease, or too
                    // many voters the transport cannot connect to: refused
                    // before proposing. (A peer counts as gone only for two
                    // heartbeats after a failed connection, so a restarted
                    // one is counted again at once.)
                    if self.quorum_lost(&voters, lease) {
                        return Err(self.no_quorum(&voters));
                    }
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let write =
                        tokio::time::timeout(remaining, self.raft.client_write(request.clone()));
                    tokio::pin!(write);
                    // While the entry waits for its quorum, a leader that
                    // finds the quorum gone refuses at once rather than at
                    // the end of the budget (the same rule as before
                    // proposing: a lapsed lease counts only when the
                    // transport does not reach a quorum either, so peers
                    // that just came back and acknowledge late while they
                    // catch up do not get the write refused).
                    let written = loop {
                        tokio::select! {
                            written = &mut write => break written,
                            () = tokio::time::sleep(self.quorum_check_interval()) => {
                                if self.quorum_lost(&voters, lease) {
                                    return Err(self.no_quorum(&voters));
                                }
                            }
                        }
                    };
                    match written {
                        Err(_elapsed) => return Err(self.no_quorum(&voters)),
                        Ok(Ok(written)) => return Ok(written.data),
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                            // Lost leadership mid-write; look again.
                        }
                        Ok(Err(e)) => return Err(Error::Raft(format!("client write: {e}"))),
                    }
                }
                Some(leader_id) => {
                    if let Some(leader) = self.fresh_leader() {
                        return Err(Error::NotLeader {
                            leader: Some(leader.node_id),
                        });
                    }
                    // Heard within the lease but a call to it failed (it
                    // restarted, or our way to it is cut): ask it once now.
                    let heard = self
                        .reach
                        .last_leader_contact_age()
                        .is_some_and(|age| age <= lease);
                    if heard
                        && let Some(member) = voters.get(&leader_id)
                        && self.probe(leader_id, member).await
                    {
                        return Err(Error::NotLeader {
                            leader: Some(member.node_id.clone()),
                        });
                    }
                    if self.reachable_voters(&voters) < partition::quorum(voters.len()) {
                        return Err(self.no_quorum(&voters));
                    }
                }
                None => {
                    if self.reachable_voters(&voters) < partition::quorum(voters.len()) {
                        return Err(self.no_quorum(&voters));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(self.no_quorum(&voters));
            }
            // Look again after a heartbeat, or as soon as openraft's view
            // changes (this node won an election, a leader appeared), so
            // a write waiting out an election goes ahead at once.
            let pause = self.options.timing.heartbeat.min(deadline - Instant::now());
            if let Ok(Err(_closed)) = tokio::time::timeout(pause, changes.changed()).await {
                // openraft stopped: no more changes to wait for.
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Publishes envelopes under `fence` (leader only).
    pub async fn publish(
        &self,
        fence: Fence,
        envelopes: Vec<Vec<u8>>,
    ) -> Result<Vec<PublishedShard>> {
        let response = self
            .propose(Request::PublishShards {
                fence,
                envelopes: envelopes.into_iter().map(ByteBuf::from).collect(),
                proposed_at_ms: rap_proto::time::UnixMillis::now().0,
            })
            .await?;
        match response {
            Response::Published(shards) => {
                self.metrics.shards_published(shards.len());
                Ok(shards)
            }
            other => Err(unexpected(other)),
        }
    }

    /// This node's view of its group.
    pub fn status(&self) -> StatusReport {
        let metrics = self.raft_metrics();
        let voters = Self::voters(&metrics);
        let reachable = self.reachable_voters(&voters);
        let is_leader = metrics.current_leader == Some(self.raft_id);
        let mut view = partition::view(self.guard.is_fenced(), voters.len(), reachable);
        if is_leader
            && view != PartitionView::Fenced
            && !partition::leader_lease_valid(
                metrics.millis_since_quorum_ack,
                self.options.timing.lease,
            )
        {
            view = PartitionView::Minority;
        }
        let reports = voters
            .iter()
            .map(|(id, member)| {
                let me = *id == self.raft_id;
                VoterReport {
                    member: member.clone(),
                    reachable: self.voter_reachable(*id, metrics.current_leader),
                    last_contact_age: if me {
                        Some(Duration::ZERO)
                    } else {
                        self.reach.last_contact_age(*id)
                    },
                    is_leader: metrics.current_leader == Some(*id),
                }
            })
            .collect();
        StatusReport {
            leader: metrics
                .current_leader
                .and_then(|id| voters.get(&id).map(|m| m.node_id.clone())),
            raft_term: metrics.current_term,
            authority_term: self.view.authority_term(),
            applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            last_fence_seq: self.view.last_fence_seq().0,
            view,
            reachable_voters: reachable,
            voters: reports,
        }
    }

    /// The metrics exposition of this node in `format`.
    pub fn render_metrics(&self, format: Format) -> String {
        let status = self.status();
        let gauges = Gauges {
            raft_term: status.raft_term,
            is_leader: status.leader.as_deref() == Some(self.options.node_id.as_str()),
            last_log_index: status.last_log_index,
            applied_index: status.applied_index,
            authority_term: status.authority_term.0,
            last_fence_seq: status.last_fence_seq,
            reachable_voters: status.reachable_voters as u64,
            total_voters: status.voters.len() as u64,
            partition_view: status.view.as_str(),
            last_apply_age: self.view.last_apply_age(),
            certificate_not_after: self
                .options
                .tls
                .as_ref()
                .map(|tls| tls.identity().facts().not_after),
            shards_held: u64::try_from(self.view.read(|state| state.shards.len()))
                .unwrap_or(u64::MAX),
        };
        self.metrics.render(&gauges, format)
    }

    /// Stops Raft. Storage is consistent at every commit, so this is only
    /// a courtesy to peers.
    pub async fn shutdown(&self) -> Result<()> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| Error::Raft(format!("shutdown: {e}")))
    }
}

fn candidate(member: &Member) -> Candidate {
    Candidate {
        node_id: member.node_id.clone(),
        region: member.region.clone(),
        zone: member.zone.clone(),
        host: member.host.clone(),
    }
}

fn unexpected(response: Response) -> Error {
    match response {
        Response::Refused(refusal) => Error::Refused {
            code: refusal.code,
            message: refusal.message,
        },
        other => Error::Raft(format!("unexpected state machine response {other:?}")),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(heartbeat: u64, min: u64, max: u64) -> Timing {
        Timing {
            heartbeat: Duration::from_millis(heartbeat),
            election_timeout_min: Duration::from_millis(min),
            election_timeout_max: Duration::from_millis(max),
            lease: Duration::from_millis(min),
            keepalive: Duration::from_secs(1),
        }
    }

    // Goal: openraft's lease (its maximum) is the minimum election timeout,
    // its draw is a valid range above the heartbeat, and a 1 ms window
    // (the simulator's pinned draw) stays a single value. Method: the
    // defaults, the simulator's shape, and a range far wider than the
    // minimum, each through openraft's own validation.
    #[test]
    fn openraft_gets_the_vote_lease_as_its_maximum() {
        for (t, want) in [
            (timing(100, 500, 1000), (250, 500)),
            (timing(100, 700, 701), (699, 700)),
            (timing(100, 500, 10_000), (200, 500)),
            (timing(10, 40, 41), (39, 40)),
        ] {
            t.validate().expect("valid timing");
            let window = t.raft_election_window_ms();
            assert_eq!(window, want, "{t:?}");
            assert_eq!(Duration::from_millis(window.1), t.vote_lease());
            assert!(t.lease <= t.vote_lease());
            openraft::Config {
                heartbeat_interval: millis(t.heartbeat),
                election_timeout_min: window.0,
                election_timeout_max: window.1,
                ..openraft::Config::default()
            }
            .validate()
            .expect("openraft accepts the window");
        }
    }
}
