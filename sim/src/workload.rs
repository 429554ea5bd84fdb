//! The client host's script: bootstrap the group, wait for a first fence,
//! run the workers (each asks one node for fences, again and again) and,
//! if the scenario has one, the operator's promotion ([`crate::operator`])
//! beside them; then, with every fault healed, wait until the group (all
//! nodes, or the survivors after a promotion) agrees, take one more fence
//! through each member, record each one's final status, and wait until
//! every node of the old side reports `fenced`.
//!
//! Every call goes through the real gRPC `AuthorityService` of the chosen
//! node, so followers forward to the leader exactly as in production.

use crate::events::{
    Event, EventLog, FenceCall, FinalStatus, NodeIndex, Outcome, Phase, TruthEvent, node_name,
};
use crate::harness::{CLUSTER_ID, ClusterSpec, GRPC_PORT, now};
use crate::net;
use crate::operator::{self, PromotionPlan};
use crate::seed::SimRng;
use crate::shards::{self, PublisherRun, ShardPlan, SharedBoard};
use crate::truth::{self, MemoryTruth, MemoryTx};
use rap_authority::client::authority_client_via;
use rap_authority::network::NetworkConfig;
use rap_authority::partition::PartitionView;
use rap_controlplane::audit::Action;
use rap_controlplane::fencing::{self, AuthorityClients, StorageTransport};
use rap_core::codes::error_detail;
use rap_core::tls::pin::ExpectedPeer;
use rap_proto::envelope::{SnapshotSigner, TrustRoot};
use rap_proto::ids::ClusterId;
use rap_proto::pb;
use rap_proto::pb::authority_service_client::AuthorityServiceClient;
use rap_proto::time::UnixMillis;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tonic::transport::Channel;

/// Worker id of the calls the client makes itself (readiness and final
/// fences).
pub const CLIENT_WORKER: usize = usize::MAX;

/// How many times the client tries to bootstrap before giving up.
pub const BOOTSTRAP_ATTEMPTS_MAX: u32 = 30;

/// Pause between bootstrap, readiness and convergence attempts.
pub const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The authority term a bootstrapped group starts at.
pub const INITIAL_TERM: u64 = 1;

/// The simulated issue time of the genesis trust root (2025-01-01).
pub const GENESIS_ISSUED_AT: UnixMillis = UnixMillis(1_735_689_600_000);

/// What the client does.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Concurrent workers; worker `w` talks to node `w % voters`.
    pub workers: usize,
    /// Each worker pauses between calls for a time drawn from
    /// `[think_min, think_max)`.
    pub think_min: Duration,
    /// See `think_min`.
    pub think_max: Duration,
    /// How long the workers run (the fault schedule fits inside).
    pub duration: Duration,
    /// The client's own deadline per call: an answer later than this is
    /// recorded as [`Outcome::TimedOut`] (a hang, well past the refusal
    /// bound).
    pub call_timeout: Duration,
    /// How long the client waits, once the workers stop, for the nodes to
    /// agree (liveness after heal).
    pub converge_timeout: Duration,
    /// Nodes the scenario crashes for good: left out of the nodes that
    /// must agree after the heal.
    pub down_for_good: Vec<NodeIndex>,
    /// Control-plane workers making fenced mutations through the control
    /// plane's real fenced path over the in-memory source of truth
    /// ([`crate::truth`]), same think times as the workers.
    pub mutators: usize,
}

impl Default for Workload {
    /// One worker per node of a 3-voter cluster, 50–150 ms apart, for
    /// 10 s; a 5 s call deadline; 20 s to converge.
    fn default() -> Self {
        Workload {
            workers: 3,
            think_min: Duration::from_millis(50),
            think_max: Duration::from_millis(150),
            duration: Duration::from_secs(10),
            call_timeout: Duration::from_secs(5),
            converge_timeout: Duration::from_secs(20),
            down_for_good: Vec::new(),
            mutators: 0,
        }
    }
}

/// Everything the client host needs.
pub(crate) struct ClientPlan {
    pub(crate) nodes: usize,
    pub(crate) cluster: ClusterSpec,
    pub(crate) workload: Workload,
    pub(crate) rng: SimRng,
    pub(crate) log: EventLog,
    /// Set to the simulated time the workload starts; the harness counts
    /// fault offsets from it.
    pub(crate) started: Arc<Mutex<Option<Duration>>>,
    /// The operator's promotion, if the scenario has one.
    pub(crate) promotion: Option<PromotionPlan>,
    /// The publisher's plan and the board it shares with the agents, if
    /// the scenario has shards.
    pub(crate) shards: Option<(ShardPlan, SharedBoard)>,
    /// [`crate::mutants::Mutant::ControlPlaneUnchecked`].
    pub(crate) unchecked_truth: bool,
    /// The storage nodes' skewed clocks, if the scenario skews them.
    pub(crate) clocks: Option<crate::clocks::NodeClocks>,
}

/// The authority term each worker's calls expect. Workers of the
/// survivors follow a promotion (their client learns of it from the
/// operator); workers of the old side keep asking for the old term, the
/// stale clients a split brain leaves behind.
#[derive(Clone, Debug)]
struct ExpectedTerms {
    survivors: Vec<NodeIndex>,
    promoted: Arc<AtomicU64>,
}

impl ExpectedTerms {
    fn new(plan: &ClientPlan) -> Self {
        ExpectedTerms {
            survivors: plan
                .promotion
                .as_ref()
                .map(|p| p.survivors.clone())
                .unwrap_or_default(),
            promoted: Arc::new(AtomicU64::new(INITIAL_TERM)),
        }
    }

    fn of(&self, node: NodeIndex) -> u64 {
        if self.survivors.contains(&node) {
            self.promoted.load(Ordering::SeqCst)
        } else {
            INITIAL_TERM
        }
    }
}

type Client = AuthorityServiceClient<Channel>;

fn address(node: NodeIndex) -> String {
    format!("{}:{GRPC_PORT}", node_name(node))
}

fn client_of(network: &NetworkConfig, node: NodeIndex) -> Result<Client, String> {
    authority_client_via(
        network,
        &address(node),
        &ExpectedPeer::storage_named(&node_name(node)),
        Some(&net::connector()),
    )
    .map_err(|e| format!("client of {}: {e}", node_name(node)))
}

/// The client host's future.
pub(crate) async fn client(plan: ClientPlan) -> turmoil::Result {
    let network = NetworkConfig {
        keepalive_interval: plan.cluster.keepalive,
        plain_connector: Some(net::connector()),
        ..NetworkConfig::default()
    };
    let clients = (0..plan.nodes)
        .map(|node| client_of(&network, node))
        .collect::<Result<Vec<_>, _>>()?;
    let cluster_id = ClusterId::new(CLUSTER_ID)?;
    let log = &plan.log;

    bootstrap(&plan, &clients, &cluster_id).await?;
    log.push(Event::Phase {
        at: now(),
        phase: Phase::Bootstrapped,
    });
    // The control plane records the bootstrapped term and the storage
    // nodes (as `rapctl authority bootstrap` does in PostgreSQL).
    let nodes: Vec<NodeIndex> = (0..plan.nodes).collect();
    let truth = MemoryTruth::bootstrapped(
        CLUSTER_ID,
        INITIAL_TERM,
        &nodes,
        address,
        log.clone(),
        plan.unchecked_truth,
    );
    let authority = AuthorityClients::new(StorageTransport::Given(network.clone()));
    // Loaded now, so no fenced mutation loads it on a blocking thread.
    authority
        .network(CLUSTER_ID)
        .map_err(|e| format!("the control plane's network: {e}"))?;

    // Readiness: the first fence, through node 0.
    let terms = ExpectedTerms::new(&plan);
    if !fence_until_granted(
        &plan,
        clients[0].clone(),
        0,
        INITIAL_TERM,
        plan.workload.converge_timeout,
    )
    .await
    {
        return Err("no fence granted after bootstrap".into());
    }
    let start = now();
    *plan.started.lock().unwrap_or_else(PoisonError::into_inner) = Some(start);
    log.push(Event::Phase {
        at: start,
        phase: Phase::WorkloadStarted,
    });

    let end = start + plan.workload.duration;
    let workers = (0..plan.workload.workers).map(|worker| {
        let node = worker % plan.nodes;
        let rng = plan.rng.fork(&format!("worker-{worker}"));
        run_worker(&plan, worker, node, clients[node].clone(), rng, end, &terms)
    });
    let operator = async {
        let Some(promotion) = &plan.promotion else {
            return Ok(None);
        };
        let due = start + promotion.at;
        if due > now() {
            tokio::time::sleep(due - now()).await;
        }
        let signer = genesis_signer(&plan.rng);
        let mut rng = plan.rng.fork("operator");
        let promoted = operator::promote(
            promotion,
            &signer,
            &clients,
            &mut rng,
            log,
            &truth,
            plan.clocks.as_ref(),
        )
        .await;
        match promoted {
            Some(term) => {
                terms.promoted.store(term, Ordering::SeqCst);
                Ok(Some(promotion.survivors.clone()))
            }
            None => Err("the operator could not promote the survivors (see the log)".to_string()),
        }
    };
    let publisher_worker = plan.workload.workers;
    let fence = async |node: NodeIndex| {
        let mut client = clients[node].clone();
        match call_and_log(&plan, publisher_worker, node, terms.of(node), &mut client).await {
            Outcome::Granted {
                authority_term,
                seq,
                log_index,
            } => Some(pb::FencingToken {
                cluster_id: CLUSTER_ID.into(),
                authority_term,
                seq,
                log_index,
            }),
            _ => None,
        }
    };
    // The control plane's side of the shards, if the scenario has them.
    let shard_group = plan.shards.as_ref().map(|(_, board)| shards::Group {
        nodes: plan.nodes,
        clients: &clients,
        call_timeout: plan.workload.call_timeout,
        log,
        board,
    });
    let publisher = async {
        if let (Some((shard_plan, _)), Some(group)) = (&plan.shards, &shard_group) {
            let run = PublisherRun {
                group,
                truth: &truth,
                plan: *shard_plan,
                signer: genesis_signer(&plan.rng),
                rng: plan.rng.fork("publisher"),
                fence: &fence,
            };
            shards::publisher(run, end).await;
        }
    };
    let mutators = (0..plan.workload.mutators).map(|worker| {
        let rng = plan.rng.fork(&format!("mutator-{worker}"));
        run_mutator(&plan, &truth, &authority, worker, rng, end)
    });
    let (_, promoted, (), _) = futures::future::join4(
        futures::future::join_all(workers),
        operator,
        publisher,
        futures::future::join_all(mutators),
    )
    .await;
    log.push(Event::Phase {
        at: now(),
        phase: Phase::WorkloadEnded,
    });
    // After a promotion the group is the survivors; the old side must
    // have learnt that it is fenced.
    let (group, old_side): (Vec<NodeIndex>, Vec<NodeIndex>) = match promoted? {
        Some(survivors) => {
            let old_side = (0..plan.nodes).filter(|n| !survivors.contains(n)).collect();
            (survivors, old_side)
        }
        None => {
            let up = (0..plan.nodes)
                .filter(|n| !plan.workload.down_for_good.contains(n))
                .collect();
            (up, Vec::new())
        }
    };

    // Liveness after heal: the group agrees, every member can get a
    // fence, and then they agree again (the last fences applied
    // everywhere).
    converge(&plan, &clients, &group, false).await?;
    log.push(Event::Phase {
        at: now(),
        phase: Phase::Converged,
    });
    for node in &group {
        let term = terms.of(*node);
        if !fence_until_granted(
            &plan,
            clients[*node].clone(),
            *node,
            term,
            plan.workload.converge_timeout,
        )
        .await
        {
            return Err(format!("no fence granted through {} after heal", node_name(*node)).into());
        }
    }
    converge(&plan, &clients, &group, true).await?;
    if plan.workload.mutators > 0 {
        mutate_until_applied(&plan, &truth, &authority).await?;
    }
    if let Some(shard_group) = &shard_group {
        shards::settle(shard_group, &group, plan.workload.converge_timeout).await?;
        agents_catch_up(&plan, shard_group.board).await?;
    }
    for node in &old_side {
        wait_fenced(&plan, &clients[*node], *node).await?;
        // A stale client asks the fenced node once more for the old term.
        call_and_log(
            &plan,
            CLIENT_WORKER,
            *node,
            INITIAL_TERM,
            &mut clients[*node].clone(),
        )
        .await;
    }
    if plan.promotion.as_ref().is_some_and(|p| p.rejoin) && !old_side.is_empty() {
        rejoin_old_side(&plan, &network, &clients, &group, &old_side, &terms).await?;
        for node in &old_side {
            truth.add_peer(*node, address(*node)).await;
        }
        if plan.workload.mutators > 0 {
            mutate_until_applied(&plan, &truth, &authority).await?;
        }
        if let Some(shard_group) = &shard_group {
            let everyone: Vec<NodeIndex> = (0..plan.nodes).collect();
            shards::settle(shard_group, &everyone, plan.workload.converge_timeout).await?;
            agents_catch_up(&plan, shard_group.board).await?;
        }
    }
    truth.log_final().await;
    Ok(())
}

/// The worker number of the client's own mutations after the heal.
const CLIENT_MUTATOR: usize = usize::MAX;

/// One fenced mutation through the control plane's real fenced path
/// (`rap_controlplane::fencing::run`) over `truth`: a new `target`,
/// applied after a write of `write` (a database's own latency); logged
/// with its answer. Whether it was applied.
async fn mutate(
    plan: &ClientPlan,
    truth: &MemoryTruth,
    authority: &AuthorityClients,
    worker: usize,
    target: String,
    write: Duration,
) -> bool {
    let started = now();
    let action = Action::new(
        "sim-operator",
        truth::MUTATE,
        Some(CLUSTER_ID),
        target.clone(),
    );
    let applied = fencing::run(
        truth,
        authority,
        action,
        Ok(target.clone()),
        async |tx: &mut MemoryTx, fence, target| {
            tx.put(&target, &fence);
            tokio::time::sleep(write).await;
            Ok(((fence.authority_term.0, fence.seq.0), serde_json::json!({})))
        },
    )
    .await;
    let applied = applied.map_err(|e| e.code().to_string());
    let ok = applied.is_ok();
    plan.log.push(Event::Truth {
        at: now(),
        what: TruthEvent::Mutation {
            worker,
            target,
            started,
            answer: applied,
        },
    });
    ok
}

/// How long one simulated database write takes, at least and at most.
const WRITE_MIN: Duration = Duration::from_millis(1);
/// See [`WRITE_MIN`].
const WRITE_MAX: Duration = Duration::from_millis(20);

/// A control-plane worker: fenced mutations of new targets until `end`.
async fn run_mutator(
    plan: &ClientPlan,
    truth: &MemoryTruth,
    authority: &AuthorityClients,
    worker: usize,
    mut rng: SimRng,
    end: Duration,
) {
    let mut n = 0u64;
    while now() < end {
        let write = rng.millis(WRITE_MIN, WRITE_MAX);
        mutate(
            plan,
            truth,
            authority,
            worker,
            format!("m{worker}-{n}"),
            write,
        )
        .await;
        n += 1;
        let think = rng.millis(plan.workload.think_min, plan.workload.think_max);
        tokio::time::sleep(think).await;
    }
}

/// Liveness of the control plane after heal: a fenced mutation is applied
/// within the convergence timeout.
async fn mutate_until_applied(
    plan: &ClientPlan,
    truth: &MemoryTruth,
    authority: &AuthorityClients,
) -> Result<(), String> {
    let deadline = now() + plan.workload.converge_timeout;
    let mut n = 0u64;
    while now() < deadline {
        let target = format!("after-heal-{}-{n}", truth.current_term());
        if mutate(plan, truth, authority, CLIENT_MUTATOR, target, WRITE_MIN).await {
            return Ok(());
        }
        n += 1;
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Err(format!(
        "no fenced mutation applied within {:?} after the heal",
        plan.workload.converge_timeout
    ))
}

/// The operator brings the fenced old side back into the new group, one
/// member at a time; then the whole cluster must agree again and grant
/// fences of the new term through every node.
async fn rejoin_old_side(
    plan: &ClientPlan,
    network: &NetworkConfig,
    clients: &[Client],
    group: &[NodeIndex],
    old_side: &[NodeIndex],
    terms: &ExpectedTerms,
) -> Result<(), String> {
    let term = terms.promoted.load(Ordering::SeqCst);
    let signer = genesis_signer(&plan.rng);
    let mut members = group.to_vec();
    for node in old_side {
        if !operator::rejoin(network, &members, *node, term, &signer, &plan.log).await {
            return Err(format!(
                "the operator could not bring {} back (see the log)",
                node_name(*node)
            ));
        }
        members.push(*node);
    }
    members.sort_unstable();
    converge(plan, clients, &members, false).await?;
    for node in old_side {
        if !fence_until_granted(
            plan,
            clients[*node].clone(),
            *node,
            term,
            plan.workload.converge_timeout,
        )
        .await
        {
            return Err(format!(
                "no fence granted through {} after its rejoin",
                node_name(*node)
            ));
        }
    }
    converge(plan, clients, &members, true).await
}

/// `node`'s `Status`, or `None` when it does not answer within `timeout`.
pub(crate) async fn status_of(
    client: &Client,
    timeout: Duration,
) -> Option<pb::AuthorityStatusResponse> {
    let request = pb::AuthorityStatusRequest {
        cluster_id: CLUSTER_ID.into(),
    };
    match tokio::time::timeout(timeout, client.clone().status(request)).await {
        Ok(Ok(answer)) => Some(answer.into_inner()),
        _ => None,
    }
}

/// Waits until `node` reports `fenced` (the old side after a promotion).
async fn wait_fenced(plan: &ClientPlan, client: &Client, node: NodeIndex) -> Result<(), String> {
    let deadline = now() + plan.workload.converge_timeout;
    let mut last = None;
    while now() < deadline {
        if let Some(answer) = status_of(client, plan.workload.call_timeout).await {
            let view = answer.partition_view;
            if view == pb::PartitionView::Fenced as i32 {
                // What the client saw is a view of the node as much as
                // its observer's samples are, and the run may end before
                // the next sample.
                plan.log.push(Event::View {
                    at: now(),
                    node,
                    view: PartitionView::Fenced,
                });
                return Ok(());
            }
            last = Some(view);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Err(format!(
        "{} was not fenced within {:?} after the workload (last view {last:?})",
        node_name(node),
        plan.workload.converge_timeout
    ))
}

/// The genesis key: derived from the seed, so the trust root's bytes
/// (and everything downstream) are the same on every replay. It signs the
/// trust root and the operator's orders.
fn genesis_signer(client_rng: &SimRng) -> SnapshotSigner {
    let mut rng = client_rng.fork("trust-root");
    let mut secret = [0u8; 32];
    for chunk in secret.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    SnapshotSigner::from_secret_bytes(&secret)
}

/// The genesis trust root, signed by [`genesis_signer`] (the client
/// host's generator `client_rng` draws its key).
pub(crate) fn genesis(client_rng: &SimRng, cluster_id: &ClusterId) -> Result<Vec<u8>, String> {
    let signer = genesis_signer(client_rng);
    let root = TrustRoot::genesis(cluster_id, &[&signer], GENESIS_ISSUED_AT)
        .map_err(|e| format!("make the genesis trust root: {e}"))?;
    Ok(root.bytes().to_vec())
}

/// `node` as a group member: its name, address and failure domain (a
/// zone of its own).
pub(crate) fn voter_spec(node: NodeIndex) -> pb::VoterSpec {
    pb::VoterSpec {
        node_id: node_name(node),
        address: address(node),
        domain: Some(pb::FailureDomain {
            region: "region-1".into(),
            zone: format!("zone-{}", node + 1),
            host: node_name(node),
        }),
    }
}

async fn bootstrap(
    plan: &ClientPlan,
    clients: &[Client],
    cluster_id: &ClusterId,
) -> Result<(), String> {
    let voters = (0..plan.nodes).map(voter_spec).collect();
    let request = pb::BootstrapGroupRequest {
        cluster_id: cluster_id.to_string(),
        voters,
        trust_root: genesis(&plan.rng, cluster_id)?,
        allow_single_voter: false,
    };
    let mut last_error = String::new();
    for _ in 0..BOOTSTRAP_ATTEMPTS_MAX {
        let mut client = clients[0].clone();
        match client.bootstrap(request.clone()).await {
            Ok(_) => return Ok(()),
            Err(status) => {
                if error_detail(&status).is_some_and(|d| d.code == "ALREADY_INITIALIZED") {
                    return Ok(());
                }
                last_error = status.to_string();
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Err(format!(
        "bootstrap failed {BOOTSTRAP_ATTEMPTS_MAX} times; last: {last_error}"
    ))
}

/// One `AcquireFence` call for `expected_term`, with the client's
/// deadline.
async fn acquire(plan: &ClientPlan, client: &mut Client, expected_term: u64) -> Outcome {
    let request = pb::AcquireFenceRequest {
        cluster_id: CLUSTER_ID.into(),
        purpose: "sim".into(),
        expected_term,
    };
    match tokio::time::timeout(plan.workload.call_timeout, client.acquire_fence(request)).await {
        Err(_elapsed) => Outcome::TimedOut,
        Ok(Ok(response)) => match response.into_inner().fence {
            Some(fence) => Outcome::Granted {
                authority_term: fence.authority_term,
                seq: fence.seq,
                log_index: fence.log_index,
            },
            None => Outcome::Refused {
                code: "NO_FENCE_IN_ANSWER".into(),
                grpc: tonic::Code::Ok,
            },
        },
        Ok(Err(status)) => Outcome::Refused {
            code: error_detail(&status)
                .map(|d| d.code)
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "-".into()),
            grpc: status.code(),
        },
    }
}

/// Calls and logs; returns the outcome.
async fn call_and_log(
    plan: &ClientPlan,
    worker: usize,
    node: NodeIndex,
    expected_term: u64,
    client: &mut Client,
) -> Outcome {
    let started = now();
    let outcome = acquire(plan, client, expected_term).await;
    plan.log.push(Event::Fence(FenceCall {
        worker,
        node,
        started,
        ended: now(),
        outcome: outcome.clone(),
    }));
    outcome
}

/// Waits until every agent holds the newest version of every scope it
/// reads, then tells them to stop.
async fn agents_catch_up(plan: &ClientPlan, board: &SharedBoard) -> Result<(), String> {
    let deadline = now() + plan.workload.converge_timeout;
    loop {
        let caught_up = board
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .caught_up();
        match caught_up {
            Ok(()) => break,
            Err(missing) if now() >= deadline => {
                return Err(format!(
                    "agents did not catch up within {:?} after the workload: {missing}",
                    plan.workload.converge_timeout
                ));
            }
            Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
    board
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .finish();
    Ok(())
}

async fn fence_until_granted(
    plan: &ClientPlan,
    mut client: Client,
    node: NodeIndex,
    expected_term: u64,
    within: Duration,
) -> bool {
    let deadline = now() + within;
    while now() < deadline {
        let outcome = call_and_log(plan, CLIENT_WORKER, node, expected_term, &mut client).await;
        if matches!(outcome, Outcome::Granted { .. }) {
            return true;
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    false
}

async fn run_worker(
    plan: &ClientPlan,
    worker: usize,
    node: NodeIndex,
    mut client: Client,
    mut rng: SimRng,
    end: Duration,
    terms: &ExpectedTerms,
) {
    while now() < end {
        call_and_log(plan, worker, node, terms.of(node), &mut client).await;
        let think = rng.millis(plan.workload.think_min, plan.workload.think_max);
        tokio::time::sleep(think).await;
    }
}

/// Waits until every node of `group` names the same leader and has the
/// same applied index and last fence; with `record`, logs each one's
/// final status.
async fn converge(
    plan: &ClientPlan,
    clients: &[Client],
    group: &[NodeIndex],
    record: bool,
) -> Result<(), String> {
    let deadline = now() + plan.workload.converge_timeout;
    let mut last = Vec::new();
    while now() < deadline {
        let mut statuses = Vec::with_capacity(group.len());
        for node in group {
            match status_of(&clients[*node], plan.workload.call_timeout).await {
                Some(s) => {
                    statuses.push(FinalStatus {
                        leader: s.leader_id,
                        raft_term: s.raft_term,
                        authority_term: s.authority_term,
                        applied_index: s.applied_index,
                        last_fence_seq: s.last_fence_seq,
                    });
                }
                _ => break,
            }
        }
        let agreed = statuses.len() == group.len()
            && !statuses[0].leader.is_empty()
            && statuses.iter().all(|s| {
                s.leader == statuses[0].leader
                    && s.applied_index == statuses[0].applied_index
                    && s.last_fence_seq == statuses[0].last_fence_seq
            });
        if agreed {
            if record {
                for (node, status) in group.iter().zip(statuses) {
                    plan.log.push(Event::Final {
                        at: now(),
                        node: *node,
                        status,
                    });
                }
            }
            return Ok(());
        }
        last = statuses;
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Err(format!(
        "nodes did not converge within {:?} after the workload; last statuses: {last:?}",
        plan.workload.converge_timeout
    ))
}
