//! The harness: one turmoil simulation of a cluster's authority group.
//!
//! Each storage node is a turmoil host running the real
//! [`AuthorityNode`] on its own data directory (redb files on a real,
//! per-run scratch directory, so a crashed and restarted host finds its
//! log), serving `RaftService` and `AuthorityService` with tonic over
//! turmoil TCP, plaintext, and dialling its peers through
//! [`crate::net::connector`]. A client host bootstraps the group and runs
//! the workload ([`crate::workload`]). Between simulation steps the
//! harness applies the scenario's faults at their offsets from the start
//! of the workload. Everything is written to one [`EventLog`], which the
//! [`crate::checkers`] then judge.
//!
//! Election jitter: openraft 0.9 draws a node's election timeout once, when
//! its `Raft` is created, from `AsyncRuntime::thread_rng()`. The harness
//! makes that draw itself from the seed at every (re)start of a host and
//! gives the node a window one millisecond wide
//! (`election_timeout_max = min + 1 ms`), so openraft's own draw has a
//! single possible value. Production code and its OS-seeded runtime are
//! untouched.
//!
//! Determinism: turmoil runs every host on one thread in a fixed order,
//! its network draws latency and loss from the seed, the harness and the
//! client draw from the seed, and the nodes' clocks are turmoil's
//! simulated ones; so one seed gives one event log (the `determinism`
//! test compares two runs; separate processes agree too). One source is
//! outside the seed: tokio's own generator, which picks the first branch of
//! an unbiased `select!` when several are ready, is seeded by turmoil only
//! under `--cfg tokio_unstable`. No divergence from it has been seen; the
//! `determinism` tests would show one. Another was found and closed: a
//! crashed host's sockets close in tokio task-id order, which depends on
//! what ran before in the process (see [`crash_silently`]).

use crate::checkers::{self, CheckConfig, Violation};
use crate::clocks::NodeClocks;
use crate::disk::SimDisk;
use crate::echo::{Echo, EchoPlan};
use crate::events::{Event, EventLog, NodeIndex, Role, ShardEvent, node_name};
use crate::faults::{Applied, Fault, Links, Sides, Timeline};
use crate::forger::{FORGER, ForgerPlan, ForgerRun};
use crate::mutants::{BelieveUnprovenTerm, GrantOnRefusal, Mutant};
use crate::net;
use crate::operator::PromotionPlan;
use crate::seed::SimRng;
use crate::shards::{AGENTS, AgentRun, CACHE, CacheRun, Pki, Serving, ShardPlan, SharedBoard};
use crate::workload::{self, ClientPlan, Workload};
use rap_authority::limits::RAFT_RPC_BYTES_MAX;
use rap_authority::network::{PeerAuth, RaftServer};
use rap_authority::node::{AuthorityNode, NodeOptions, Timing};
use rap_authority::service::AuthorityApi;
use rap_authority::slot::NodeSlot;
use rap_authority::typ::{RaftNodeId, raft_id_of};
use rap_core::codes;
use rap_core::tls::live::LiveIdentity;
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::pb::raft_service_server::{RaftService, RaftServiceServer};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tonic::service::Routes;

/// The gRPC port of every storage node (RaftService + AuthorityService).
pub const GRPC_PORT: u16 = 7000;

/// The host that runs the workload.
pub const CLIENT: &str = "client";

/// The cluster every simulation runs.
pub const CLUSTER_ID: &str = "sim";

/// How often each node's observer samples its partition view (Raft
/// metrics are watched, not sampled).
pub const VIEW_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// Longest simulated time one run may take beyond its workload before
/// turmoil gives up on it.
pub const RUN_OVERTIME_MAX: Duration = Duration::from_secs(90);

/// The simulated cluster: size, Raft timing, network.
#[derive(Clone, Copy, Debug)]
pub struct ClusterSpec {
    /// Voters (3, 5 or 7).
    pub voters: usize,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Each incarnation of a node draws its election timeout from
    /// `[election_timeout_min, election_timeout_max)`.
    pub election_timeout_min: Duration,
    /// See `election_timeout_min`.
    pub election_timeout_max: Duration,
    /// HTTP/2 keepalive interval of every channel and server.
    pub keepalive: Duration,
    /// Most latency of a message on a healthy link (least is zero).
    pub latency_max: Duration,
    /// Simulated time per turmoil step.
    pub tick: Duration,
}

impl Default for ClusterSpec {
    /// Three voters with the production defaults of `rap-configstore`
    /// (heartbeat 100 ms, election timeout 500–1000 ms), keepalive 300 ms,
    /// up to 20 ms of latency, 1 ms steps.
    fn default() -> Self {
        ClusterSpec {
            voters: 3,
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            keepalive: Duration::from_millis(300),
            latency_max: Duration::from_millis(20),
            tick: Duration::from_millis(1),
        }
    }
}

impl ClusterSpec {
    /// The timing of one incarnation whose election timeout is
    /// `election_timeout` (pinned: see the module docs). The quorum lease
    /// equals the election timeout, as in `rap-configstore`'s default.
    pub fn timing(&self, election_timeout: Duration) -> Timing {
        Timing {
            heartbeat: self.heartbeat,
            election_timeout_min: election_timeout,
            election_timeout_max: election_timeout + Duration::from_millis(1),
            lease: election_timeout,
            keepalive: self.keepalive,
        }
    }

    /// The longest write budget any incarnation can have: 2 × the largest
    /// election timeout.
    pub fn write_budget_max(&self) -> Duration {
        self.election_timeout_max * 2
    }
}

/// A scenario: the cluster, what the client does, and which faults happen
/// when (offsets from the start of the workload).
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Short name, for messages.
    pub name: String,
    /// The cluster.
    pub cluster: ClusterSpec,
    /// The client's workload.
    pub workload: Workload,
    /// Faults, by offset from [`crate::events::Phase::WorkloadStarted`],
    /// in order. The last network fault must be healed and every crashed
    /// host restarted before the workload ends.
    pub schedule: Vec<(Duration, Fault)>,
    /// Forged higher-term RPCs from a non-member host ([`crate::forger`]);
    /// empty: no forger host at all.
    pub forger: ForgerPlan,
    /// A rule the storage nodes break on purpose ([`crate::mutants`]);
    /// [`Mutant::None`] for the real system.
    pub mutant: Mutant,
    /// The operator's promotion of a surviving minority
    /// ([`crate::operator`]); the schedule cuts the survivors off first.
    pub promotion: Option<PromotionPlan>,
    /// Raft messages delivered twice, the copy later ([`crate::echo`]).
    pub echo: Option<EchoPlan>,
    /// Shard publication, `ShardService` and node agents
    /// ([`crate::shards`]); `None`: the authority group alone.
    pub shards: Option<ShardPlan>,
    /// The storage nodes' wall clocks are skewed ([`crate::clocks`]).
    pub node_clocks: bool,
}

/// What one run produced.
#[derive(Debug)]
pub struct RunReport {
    /// The seed.
    pub seed: u64,
    /// The scenario's name.
    pub scenario: String,
    /// Everything that happened.
    pub events: Vec<Event>,
    /// Why the run could not finish (a host failed, the client gave up,
    /// the simulation ran out of time), if it did not.
    pub aborted: Option<String>,
    /// What the checkers found.
    pub violations: Vec<Violation>,
    /// Simulated time the run took.
    pub sim_time: Duration,
    /// The run could not finish, and its faults left no quorum that could
    /// form (a majority crashed for good, say): recovery was impossible
    /// by construction, so liveness is not judged. Safety still is.
    pub recovery_impossible: bool,
}

impl RunReport {
    /// Whether the run finished and no invariant was broken.
    pub fn passed(&self) -> bool {
        self.aborted.is_none() && self.violations.is_empty()
    }

    /// Whether nothing counts against the code: it passed, or it broke no
    /// invariant and recovery was impossible by construction.
    pub fn acceptable(&self) -> bool {
        self.passed() || (self.recovery_impossible && self.violations.is_empty())
    }

    /// One line: counts of calls, grants, refusals, leaders.
    pub fn summary(&self) -> String {
        let calls: Vec<_> = self
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Fence(call) => Some(call),
                _ => None,
            })
            .collect();
        let granted = calls.iter().filter(|c| c.granted().is_some()).count();
        let terms: std::collections::BTreeSet<u64> = self
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Raft {
                    term,
                    role: Role::Leader,
                    ..
                } => Some(*term),
                _ => None,
            })
            .collect();
        let mut line = format!(
            "{}: {} calls, {} granted, {} refused, {} leader terms, {:.1?} simulated",
            self.scenario,
            calls.len(),
            granted,
            calls.len() - granted,
            terms.len(),
            self.sim_time
        );
        let (mut published, mut accepted) = (0, 0);
        for event in &self.events {
            match event {
                Event::Shard {
                    what: ShardEvent::Published { .. },
                    ..
                } => published += 1,
                Event::Shard {
                    what: ShardEvent::Accepted { .. },
                    ..
                } => accepted += 1,
                _ => {}
            }
        }
        if published + accepted > 0 {
            line.push_str(&format!(
                ", {published} shard versions published, {accepted} accepted by agents"
            ));
        }
        line
    }

    /// Everything a human needs to debug a failure: why it aborted, the
    /// violations, and the event log.
    pub fn failure_report(&self) -> String {
        let mut out = String::new();
        if let Some(reason) = &self.aborted {
            out.push_str(&format!("run aborted: {reason}\n"));
        }
        for violation in &self.violations {
            out.push_str(&format!("violation: {violation}\n"));
        }
        out.push_str(&format!("event log ({} events):\n", self.events.len()));
        for event in &self.events {
            out.push_str(&format!("  {event}\n"));
        }
        out
    }

    /// `Ok(summary)` when acceptable (a run whose recovery was impossible
    /// says so), else `Err(failure report)`: the shape
    /// [`crate::seed::sweep`] wants.
    pub fn into_result(self) -> Result<String, String> {
        if self.passed() {
            Ok(self.summary())
        } else if self.acceptable() {
            Ok(format!(
                "{}; recovery impossible by construction (no quorum left), liveness not judged",
                self.summary()
            ))
        } else {
            Err(self.failure_report())
        }
    }
}

/// Runs `scenario` under `seed` and judges its event log.
pub fn run(seed: u64, scenario: &Scenario) -> RunReport {
    let log = EventLog::new();
    let spec = scenario.cluster;
    let rng = SimRng::new(seed);
    let (sim_time, mut aborted) = match simulate(seed, scenario, &rng, &log) {
        Ok(elapsed) => (elapsed, None),
        Err((reason, elapsed)) => (elapsed, Some(reason)),
    };
    if log.overflowed() {
        aborted.get_or_insert_with(|| format!("more than {} events", crate::events::EVENTS_MAX));
    }
    let events = log.snapshot();
    let violations = checkers::check_all(&events, &CheckConfig::for_cluster(&spec));
    let recovery_impossible = aborted.is_some()
        && !Timeline::from_events(spec.voters, &events)
            .last()
            .is_some_and(Links::has_quorum_core);
    RunReport {
        seed,
        scenario: scenario.name.clone(),
        events,
        aborted,
        violations,
        sim_time,
        recovery_impossible,
    }
}

/// Simulated time as the current host sees it.
pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// A fixed simulated epoch (2025-01-01), so nothing depends on the day a
/// run happens.
fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600)
}

/// Where data directories go: `/dev/shm` when there is one (fsync is free
/// there and the simulation commits often), else the system temp dir.
fn scratch_root() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// A scratch directory for host `name`'s files, removed when dropped.
fn scratch_dir(name: &str) -> Result<tempfile::TempDir, (String, Duration)> {
    tempfile::Builder::new()
        .prefix(&format!("rap-sim-{name}-"))
        .tempdir_in(scratch_root())
        .map_err(|e| {
            (
                format!("create a directory for {name}: {e}"),
                Duration::ZERO,
            )
        })
}

/// Everything a storage-node host needs to (re)start.
#[derive(Clone)]
struct NodeHost {
    index: NodeIndex,
    cluster: ClusterSpec,
    data_dir: PathBuf,
    /// Draws each incarnation's election timeout.
    jitter: Arc<Mutex<SimRng>>,
    /// Raft ids of every voter, by node index.
    raft_ids: Arc<Vec<RaftNodeId>>,
    log: EventLog,
    mutant: Mutant,
    /// The node's disk, across restarts.
    disk: SimDisk,
    /// Duplicated and reordered Raft messages, if the scenario has them.
    echo: Option<EchoPlan>,
    /// Draws the echoes (forked per incarnation).
    echo_rng: SimRng,
    /// Its storage certificate, when it serves shards.
    shard_identity: Option<Arc<LiveIdentity>>,
    /// Its skewed wall clock, if the scenario skews them.
    clock: Option<rap_proto::time::WallClock>,
}

impl NodeHost {
    fn draw_election_timeout(&self) -> Duration {
        self.jitter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .millis(
                self.cluster.election_timeout_min,
                self.cluster.election_timeout_max,
            )
    }

    /// The host's software: start the node, observe it, serve it.
    async fn run(self, election_timeout: Duration) -> turmoil::Result {
        let name = node_name(self.index);
        let options = NodeOptions {
            cluster_id: ClusterId::new(CLUSTER_ID)?,
            node_id: NodeId::new(name.as_str())?,
            advertise: format!("{name}:{GRPC_PORT}"),
            region: "region-1".into(),
            zone: format!("zone-{}", self.index + 1),
            host: name.clone(),
            data_dir: self.data_dir.clone(),
            timing: self.cluster.timing(election_timeout),
            tls: None,
            connector: Some(net::connector()),
            disk: Some(self.disk.opener()),
            clock: self.clock.clone(),
            dial_via: Default::default(),
        };
        let node = AuthorityNode::start(options)
            .await
            .map_err(|e| format!("start {name}: {e}"))?;
        self.log.push(Event::Boot {
            at: now(),
            node: self.index,
            election_timeout,
        });
        // As in `rap-configstore`: promotion swaps the node inside the
        // slot, and the services look it up per request.
        let slot = NodeSlot::new(node.clone());
        tokio::spawn(observe(
            slot.clone(),
            self.index,
            self.raft_ids.clone(),
            self.log.clone(),
        ));
        let raft_server = RaftServer::new(
            slot.clone(),
            node.guard().clone(),
            node.reachability().clone(),
            PeerAuth::Plaintext,
        );
        if let Some(identity) = &self.shard_identity {
            let serving = crate::shards::serve(
                Serving::Voter {
                    slot: slot.clone(),
                    leaky: self.mutant == Mutant::LeakToNonReaders,
                },
                identity.clone(),
                self.cluster.keepalive,
            );
            let node_id = name.clone();
            tokio::spawn(async move {
                if let Err(e) = serving.await {
                    tracing::warn!(node_id, "shard service stopped: {e}");
                }
            });
        }
        let authority_api = AuthorityApi::with_slot(slot);
        drop(node);
        let listener =
            turmoil::net::TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), GRPC_PORT)).await?;
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(self.cluster.keepalive))
            .http2_keepalive_timeout(Some(self.cluster.keepalive * 2));
        let echo_rng = self.echo_rng.fork(&format!("{name}-{}", now().as_millis()));
        let routes = match self.mutant {
            Mutant::BelieveUnprovenTerm => {
                raft_routes(BelieveUnprovenTerm::new(raft_server), self.echo, echo_rng)
            }
            _ => raft_routes(raft_server, self.echo, echo_rng),
        };
        let routes = match self.mutant {
            Mutant::GrantWithoutQuorum => {
                routes.add_service(GrantOnRefusal::service(authority_api, codes::NO_QUORUM))
            }
            Mutant::GrantWhenFenced => {
                routes.add_service(GrantOnRefusal::service(authority_api, codes::FENCED))
            }
            Mutant::None
            | Mutant::BelieveUnprovenTerm
            | Mutant::LeakToNonReaders
            | Mutant::AgentForgetsState
            | Mutant::AgentForgetsTerm
            | Mutant::ControlPlaneUnchecked => routes.add_service(authority_api.into_service()),
        };
        builder
            .add_routes(routes)
            .serve_with_incoming(net::incoming(listener))
            .await?;
        Ok(())
    }
}

/// The node's `RaftService`, behind an [`Echo`] when the scenario
/// duplicates messages.
fn raft_routes<S: RaftService>(service: S, echo: Option<EchoPlan>, rng: SimRng) -> Routes {
    match echo {
        Some(plan) => Routes::new(Echo::service(service, plan, rng)),
        None => Routes::new(
            RaftServiceServer::new(service)
                .max_decoding_message_size(RAFT_RPC_BYTES_MAX)
                .max_encoding_message_size(RAFT_RPC_BYTES_MAX),
        ),
    }
}

/// Logs every change of the node's Raft term, leader or role (watched)
/// and of its partition view (sampled), following the node in `slot`
/// across a promotion.
async fn observe(
    slot: Arc<NodeSlot>,
    index: NodeIndex,
    raft_ids: Arc<Vec<RaftNodeId>>,
    log: EventLog,
) {
    let mut node = slot.get();
    let mut metrics = node.raft().metrics();
    let mut ticker = tokio::time::interval(VIEW_SAMPLE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_raft = None;
    let mut last_view = None;
    loop {
        let current = slot.get();
        if !Arc::ptr_eq(&current, &node) {
            node = current;
            metrics = node.raft().metrics();
        }
        // The term the node runs at: a rejoined node starts empty at the
        // group's term (its guard's) before it has applied anything.
        let authority_term = node.state().authority_term().0.max(node.guard().term().0);
        let (term, leader, role) = {
            let m = metrics.borrow_and_update();
            let leader = m
                .current_leader
                .and_then(|id| raft_ids.iter().position(|r| *r == id));
            (m.current_term, leader, Role::of(m.state))
        };
        if last_raft != Some((authority_term, term, leader, role)) {
            last_raft = Some((authority_term, term, leader, role));
            log.push(Event::Raft {
                at: now(),
                node: index,
                authority_term,
                term,
                leader,
                role,
            });
        }
        let view = node.status().view;
        if last_view != Some(view) {
            last_view = Some(view);
            log.push(Event::View {
                at: now(),
                node: index,
                view,
            });
        }
        tokio::select! {
            biased;
            changed = metrics.changed() => {
                // The Raft stopped: a promotion is replacing the node (the
                // next sample finds the new one) or the host is going.
                if changed.is_err() {
                    ticker.tick().await;
                }
            }
            _ = ticker.tick() => {}
        }
    }
}

fn simulate(
    seed: u64,
    scenario: &Scenario,
    rng: &SimRng,
    log: &EventLog,
) -> Result<Duration, (String, Duration)> {
    let spec = scenario.cluster;
    let nodes = spec.voters;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(epoch())
        .tick_duration(spec.tick)
        .min_message_latency(Duration::ZERO)
        .max_message_latency(spec.latency_max)
        .simulation_duration(scenario.workload.duration + RUN_OVERTIME_MAX)
        .build();

    // Data directories live as long as this function: across restarts.
    let mut dirs = Vec::with_capacity(nodes);
    for index in 0..nodes {
        dirs.push(scratch_dir(&node_name(index))?);
    }
    let raft_ids: Arc<Vec<RaftNodeId>> =
        Arc::new((0..nodes).map(|i| raft_id_of(&node_name(i))).collect());
    let jitter = Arc::new(Mutex::new(rng.fork("election-jitter")));
    let disks: Vec<SimDisk> = (0..nodes).map(|_| SimDisk::new()).collect();
    let pki = match scenario.shards {
        Some(_) => Some(Pki::create(nodes).map_err(|e| (e, Duration::ZERO))?),
        None => None,
    };
    let clocks = scenario
        .node_clocks
        .then(|| NodeClocks::draw(&mut rng.fork("node-clocks"), nodes));
    if let Some(clocks) = &clocks {
        for node in 0..nodes {
            log.push(Event::Clock {
                at: sim.elapsed(),
                node,
                skew_ms: clocks.skew(node),
            });
        }
    }
    for (index, dir) in dirs.iter().enumerate() {
        let host = NodeHost {
            clock: clocks.as_ref().map(|clocks| clocks.clock_of(index)),
            shard_identity: pki.as_ref().map(|pki| pki.storage(index)),
            disk: disks[index].clone(),
            echo: scenario.echo,
            echo_rng: rng.fork(&format!("echo-{index}")),
            index,
            cluster: spec,
            data_dir: dir.path().to_path_buf(),
            jitter: jitter.clone(),
            raft_ids: raft_ids.clone(),
            log: log.clone(),
            mutant: scenario.mutant,
        };
        sim.host(node_name(index), move || {
            let host = host.clone();
            let election_timeout = host.draw_election_timeout();
            host.run(election_timeout)
        });
    }

    let started: Arc<Mutex<Option<Duration>>> = Arc::new(Mutex::new(None));
    let client_rng = rng.fork("client");
    let board = SharedBoard::default();
    let mut agent_dirs = Vec::new();
    if let (Some(shard_plan), Some(pki)) = (scenario.shards, &pki) {
        let genesis = workload::genesis(
            &client_rng,
            &ClusterId::new(CLUSTER_ID).map_err(|e| (e.to_string(), Duration::ZERO))?,
        )
        .map_err(|e| (e, Duration::ZERO))?;
        let mut skews_rng = rng.fork("clock-skews");
        for (index, agent) in AGENTS.iter().enumerate() {
            let dir = scratch_dir(agent)?;
            let skew_ms = if shard_plan.skews {
                let skew_ms = crate::shards::clock_skew(&mut skews_rng);
                log.push(Event::Shard {
                    at: sim.elapsed(),
                    what: ShardEvent::Clock {
                        agent: agent.to_string(),
                        skew_ms,
                    },
                });
                if !crate::shards::clock_in_range(skew_ms) {
                    board
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .excuse(agent);
                }
                skew_ms
            } else {
                0
            };
            let run = AgentRun {
                index,
                nodes,
                plan: shard_plan,
                files: pki.agent(index),
                state_dir: dir.path().to_path_buf(),
                genesis: genesis.clone(),
                rng: rng.fork(agent),
                log: log.clone(),
                board: board.clone(),
                forget: scenario.mutant == Mutant::AgentForgetsState,
                forget_term: scenario.mutant == Mutant::AgentForgetsTerm,
                skew_ms,
            };
            sim.client(*agent, crate::shards::agent(run));
            agent_dirs.push(dir);
        }
        let dir = scratch_dir(CACHE)?;
        let run = CacheRun {
            nodes,
            identity: pki.cache(),
            data_dir: dir.path().to_path_buf(),
            genesis,
            keepalive: spec.keepalive,
        };
        sim.host(CACHE, move || crate::shards::cache(run.clone()));
        agent_dirs.push(dir);
    }
    let plan = ClientPlan {
        shards: scenario.shards.map(|plan| (plan, board.clone())),
        nodes,
        cluster: spec,
        workload: scenario.workload.clone(),
        rng: client_rng,
        log: log.clone(),
        started: started.clone(),
        promotion: scenario.promotion.clone(),
        unchecked_truth: scenario.mutant == Mutant::ControlPlaneUnchecked,
        clocks,
    };
    sim.client(CLIENT, workload::client(plan));
    if !scenario.forger.at.is_empty() {
        sim.client(
            FORGER,
            crate::forger::forger(ForgerRun {
                plan: scenario.forger.clone(),
                nodes,
                rng: rng.fork("forger"),
                log: log.clone(),
                started: started.clone(),
            }),
        );
    }

    let mut bystanders = vec![CLIENT];
    if !scenario.forger.at.is_empty() {
        bystanders.push(FORGER);
    }
    if scenario.shards.is_some() {
        bystanders.extend(AGENTS);
        bystanders.push(CACHE);
    }
    let mut sides = Sides::default();
    if scenario.shards.is_some_and(|plan| plan.sides) {
        let mut sides_rng = rng.fork("sides");
        for host in [CACHE].into_iter().chain(AGENTS) {
            let node = sides_rng.index(nodes);
            sides.add_home(host.to_string(), node);
            log.push(Event::Shard {
                at: sim.elapsed(),
                what: ShardEvent::Home {
                    host: host.to_string(),
                    node,
                },
            });
        }
    }
    let mut faults_rng = rng.fork("faults");
    let mut power_rng = rng.fork("power-loss");
    let mut pending = scenario.schedule.iter().peekable();
    let mut links = Links::healthy(nodes);
    let outcome = loop {
        let workload_start = *started.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(start) = workload_start {
            while let Some((offset, fault)) = pending.peek() {
                if start + *offset > sim.elapsed() {
                    break;
                }
                let fallback = faults_rng.index(nodes);
                let leader = leader_now(log, &links).or(Some(fallback));
                for applied in fault.resolve(leader, &links.crashed(), nodes) {
                    // The power goes before the host's software is torn
                    // down: what its dying redb writes on the way out
                    // (a dropped Database flushes) never reaches the disk.
                    let power_loss = match applied {
                        Applied::Crash(node) => {
                            Some((node, disks[node].lose_power(&mut power_rng)))
                        }
                        _ => None,
                    };
                    apply(&mut sim, &spec, &links, &bystanders, &sides, &applied);
                    let (cut, mended) = sides.apply(&applied);
                    for (x, y) in cut {
                        sim.partition(x, y);
                    }
                    for (x, y) in mended {
                        sim.repair(x, y);
                    }
                    links.apply(&applied);
                    log.push(Event::Fault {
                        at: sim.elapsed(),
                        fault: applied,
                    });
                    if let Some((node, lost_writes)) = power_loss {
                        log.push(Event::PowerLoss {
                            at: sim.elapsed(),
                            node,
                            lost_writes,
                        });
                    }
                }
                pending.next();
            }
        }
        match sim.step() {
            Ok(true) => break Ok(sim.elapsed()),
            Ok(false) => {}
            Err(e) => break Err((e.to_string(), sim.elapsed())),
        }
    };
    // Stop every host (closing its redb files) before the data
    // directories go.
    drop(sim);
    drop(dirs);
    drop(agent_dirs);
    drop(pki);
    outcome
}

/// The leader the log knows of, among hosts that are up.
fn leader_now(log: &EventLog, links: &Links) -> Option<NodeIndex> {
    log.current_leader()
        .filter(|leader| !links.is_crashed(*leader))
}

/// Crashes `node` as a machine that loses power does: nothing more from it
/// arrives (what was in flight is lost too), and its peers learn of the
/// loss by timeouts, or by a reset once it is back.
///
/// Why not let the dying runtime close its sockets: turmoil drops a
/// crashed host's tasks in an order set by tokio's task ids, which come
/// from a process-wide counter, and each closing socket draws its latency
/// from the seed's generator as it goes. A second run of the same seed in
/// the same process (a sweep, the determinism test) then drew in another
/// order and diverged from the first, and a replay in a fresh process
/// could miss a sweep's failure. So every link out of `node` that is up is
/// cut one way for the moment of the crash, and mended after. (Under
/// random loss a message on a broken link mends it and draws; no scenario
/// crashes a host under loss.)
fn crash_silently(
    sim: &mut turmoil::Sim<'_>,
    links: &Links,
    bystanders: &[&str],
    sides: &Sides,
    node: NodeIndex,
) {
    let name = node_name(node);
    let cut: Vec<String> = (0..links.nodes())
        .filter(|other| *other != node && links.is_up(node, *other))
        .map(node_name)
        .chain(
            bystanders
                .iter()
                .filter(|host| !sides.is_cut(host, &name))
                .map(ToString::to_string),
        )
        .collect();
    for to in &cut {
        sim.partition_oneway(name.clone(), to.clone());
    }
    sim.crash(name.clone());
    for to in &cut {
        sim.repair_oneway(name.clone(), to.clone());
    }
}

fn pairs(a: &[NodeIndex], b: &[NodeIndex]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            if x != y {
                out.push((node_name(*x), node_name(*y)));
            }
        }
    }
    out
}

/// Does `fault` to the simulation; `links` is the state before it,
/// `bystanders` the hosts that are not storage nodes (client, forger,
/// agents, cache), and `sides` which of them are cut off from which node.
fn apply(
    sim: &mut turmoil::Sim<'_>,
    spec: &ClusterSpec,
    links: &Links,
    bystanders: &[&str],
    sides: &Sides,
    fault: &Applied,
) {
    let all: Vec<NodeIndex> = (0..spec.voters).collect();
    match fault {
        Applied::Partition { a, b } => {
            for (x, y) in pairs(a, b) {
                sim.partition(x, y);
            }
        }
        Applied::PartitionOneway { from, to } => {
            for (x, y) in pairs(from, to) {
                sim.partition_oneway(x, y);
            }
        }
        Applied::Hold { a, b } => {
            for (x, y) in pairs(a, b) {
                sim.hold(x, y);
            }
        }
        Applied::Release { a, b } => {
            for (x, y) in pairs(a, b) {
                sim.release(x, y);
            }
        }
        Applied::Repair { a, b } => {
            for (x, y) in pairs(a, b) {
                sim.repair(x, y);
            }
        }
        Applied::Loss { fail_rate } => {
            for (x, y) in pairs(&all, &all) {
                sim.set_link_fail_rate(x, y, *fail_rate);
            }
        }
        Applied::Latency { max } => {
            for (x, y) in pairs(&all, &all) {
                sim.set_link_max_message_latency(x, y, *max);
            }
        }
        Applied::HealNetwork => {
            for (x, y) in pairs(&all, &all) {
                sim.release(x.clone(), y.clone());
                sim.repair(x.clone(), y.clone());
                sim.set_link_fail_rate(x.clone(), y.clone(), 0.0);
                sim.set_link_max_message_latency(x, y, spec.latency_max);
            }
        }
        Applied::Crash(node) => crash_silently(sim, links, bystanders, sides, *node),
        Applied::Restart(node) => sim.bounce(node_name(*node)),
    }
}
