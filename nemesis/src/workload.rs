//! The workload: every client operation, logged as an [`Op`] with its
//! invoke and complete times and its outcome.
//!
//! * fence clients: `AcquireFence` straight from a random voter, with the
//!   authority term the operator last made current as the expected term;
//! * mutators: fenced control-plane mutations through the control plane's
//!   own service functions (the admin API calls the same), each mutator
//!   toggling one register (a role on its own agent) and reading it back
//!   from PostgreSQL after every answer;
//! * agents: the agent library's verified reader (failover, verification,
//!   durable marks) reading and watching the agent's own scope through the
//!   ingress proxies;
//! * the publication log: what PostgreSQL records as published, polled;
//! * after the final heal: the group's head of every published scope, and
//!   every fenced mutation PostgreSQL accepted (from the audit log).

use crate::fabric::{Agent, CLUSTER, TOGGLED_ROLE};
use crate::history::{Detail, Op, Outcome};
use rap_controlplane::auth::Principal;
use rap_controlplane::context::Context;
use rap_node_agent::reads::endpoints::Endpoint;
use rap_node_agent::reads::{Outcome as ReadOutcome, Reader};
use rap_node_agent::state::ClusterState;
use rap_node_agent::store::ClusterStore;
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::pb;
use rap_testkit::cluster::Client;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one fence may take before it counts as unknown.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one fenced mutation may take before it counts as unknown (the
/// control plane bounds its own steps well inside this).
pub const MUTATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause of a client between two operations.
pub const THINK_TIME: Duration = Duration::from_millis(20);
/// Pause of a mutator between two mutations.
pub const MUTATION_PAUSE: Duration = Duration::from_millis(200);
/// Pause of an agent between two reads.
pub const READ_PAUSE: Duration = Duration::from_millis(100);
/// Longest one watch of an agent stays open.
pub const WATCH_MAX: Duration = Duration::from_secs(2);
/// How often the publication log is polled.
pub const PUBLICATION_POLL: Duration = Duration::from_millis(300);
/// Page size of the control plane listings read.
pub const PAGE_SIZE: u32 = 500;
/// Most pages read of one listing (a bound on a run's audit log).
pub const PAGES_MAX: usize = 10_000;
/// Most operations kept in one history (a bound on memory).
pub const HISTORY_MAX: usize = 2_000_000;

/// Milliseconds since the run began.
#[derive(Clone, Copy)]
pub struct Clock(pub Instant);

impl Clock {
    /// Now, in ms since the run began.
    pub fn ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// What every client shares: the clock, the history, the stop flag and
/// the authority term the operator made current last.
#[derive(Clone)]
pub struct Shared {
    /// The run's clock.
    pub clock: Clock,
    /// The history, in the order operations completed.
    pub history: Arc<Mutex<Vec<Op>>>,
    /// Set when the workload stops.
    pub stop: Arc<AtomicBool>,
    /// The current authority term as the operator knows it: fence clients
    /// expect it (a real resource owner takes it from the source of truth).
    pub term: Arc<AtomicU64>,
}

impl Shared {
    /// A fresh run's.
    pub fn new() -> Shared {
        Shared {
            clock: Clock(Instant::now()),
            history: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            term: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Whether the workload stops.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Appends `op` (while the history is below [`HISTORY_MAX`]).
    pub fn record(&self, op: Op) {
        if let Ok(mut history) = self.history.lock()
            && history.len() < HISTORY_MAX
        {
            history.push(op);
        }
    }

    /// The history so far.
    pub fn snapshot(&self) -> Vec<Op> {
        self.history.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// One `AcquireFence` through `client` expecting `term`, as an operation.
pub async fn fence(client: &mut Client, process: &str, node: &str, term: u64, clock: Clock) -> Op {
    let invoke_ms = clock.ms();
    let request = pb::AcquireFenceRequest {
        cluster_id: CLUSTER.to_string(),
        purpose: format!("nemesis {process}"),
        expected_term: term,
    };
    let outcome = match tokio::time::timeout(FENCE_TIMEOUT, client.acquire_fence(request)).await {
        Err(_) => Outcome::Unknown {
            reason: "timeout".into(),
        },
        Ok(Ok(response)) => match response.into_inner().fence {
            Some(token) => Outcome::Ok {
                term: token.authority_term,
                seq: token.seq,
            },
            None => Outcome::Unknown {
                reason: "an answer without a token".into(),
            },
        },
        Ok(Err(status)) => {
            let code = rap_testkit::cluster::code_of(&status);
            match status.code() {
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
                    if code.is_empty() || code == "UNKNOWN" =>
                {
                    Outcome::Unknown {
                        reason: format!("{:?}: {}", status.code(), status.message()),
                    }
                }
                _ => Outcome::Refused {
                    code: if code.is_empty() {
                        format!("{:?}", status.code())
                    } else {
                        code
                    },
                },
            }
        }
    };
    Op {
        process: process.to_string(),
        kind: "fence".into(),
        node: node.to_string(),
        invoke_ms,
        complete_ms: clock.ms(),
        outcome,
        detail: Detail::None,
    }
}

/// Whether `node` holds the toggled role, as PostgreSQL says.
async fn holds_role(ctx: &Context, owner: &Principal, node: &str) -> Option<bool> {
    let answer = rap_controlplane::roles::list(
        ctx,
        owner,
        &pb::ListRolesRequest {
            cluster_id: CLUSTER.to_string(),
            node_id: node.to_string(),
            page: Some(pb::PageRequest {
                page_size: PAGE_SIZE,
                page_token: String::new(),
            }),
        },
    )
    .await
    .ok()?;
    Some(
        answer
            .assignments
            .iter()
            .any(|a| a.role == TOGGLED_ROLE && a.org_id.is_empty()),
    )
}

/// A mutator: toggles [`TOGGLED_ROLE`] on `node` through the control
/// plane until the workload stops; after every answer it reads the
/// register back.
pub async fn mutator(
    ctx: Context,
    owner: Principal,
    node: String,
    process: String,
    shared: Shared,
) {
    let key = format!("{node}/{TOGGLED_ROLE}");
    let mut state = holds_role(&ctx, &owner, &node).await;
    while !shared.stopped() {
        let Some(before) = state else {
            tokio::time::sleep(MUTATION_PAUSE).await;
            state = holds_role(&ctx, &owner, &node).await;
            continue;
        };
        let asked = !before;
        let invoke_ms = shared.clock.ms();
        let call = async {
            if asked {
                rap_controlplane::roles::assign(
                    &ctx,
                    &owner,
                    &pb::AssignRoleRequest {
                        cluster_id: CLUSTER.to_string(),
                        node_id: node.clone(),
                        role: TOGGLED_ROLE.to_string(),
                        org_id: String::new(),
                    },
                )
                .await
                .map(|_| ())
            } else {
                rap_controlplane::roles::remove(
                    &ctx,
                    &owner,
                    &pb::RemoveRoleRequest {
                        cluster_id: CLUSTER.to_string(),
                        node_id: node.clone(),
                        role: TOGGLED_ROLE.to_string(),
                        org_id: String::new(),
                    },
                )
                .await
                .map(|_| ())
            }
        };
        let outcome = match tokio::time::timeout(MUTATION_TIMEOUT, call).await {
            Err(_) => Outcome::Unknown {
                reason: "timeout".into(),
            },
            Ok(Ok(())) => Outcome::Done,
            // Errors of the database or of the process itself may come
            // after a commit: their effect is unknown.
            Ok(Err(
                e @ (rap_controlplane::Error::Database(_) | rap_controlplane::Error::Internal(_)),
            )) => Outcome::Unknown {
                reason: format!("{}: {e}", e.code()),
            },
            Ok(Err(e)) => Outcome::Refused {
                code: e.code().to_string(),
            },
        };
        let complete_ms = shared.clock.ms();
        let after = holds_role(&ctx, &owner, &node).await;
        shared.record(Op {
            process: process.clone(),
            kind: "mutation".into(),
            node: "controlplane".into(),
            invoke_ms,
            complete_ms,
            outcome,
            detail: Detail::Mutation {
                key: key.clone(),
                before,
                asked,
                after,
            },
        });
        state = after;
        tokio::time::sleep(MUTATION_PAUSE).await;
    }
}

/// The scope, version, term and content hash of an envelope an agent
/// holds, as a [`Detail::Shard`].
fn held_detail(reader: &Reader, scope: &str, fresh: bool) -> Detail {
    match reader.held().get(scope) {
        Some(held) => Detail::Shard {
            scope: scope.to_string(),
            version: held.version,
            term: held.authority_term,
            hash: rap_proto::envelope::decode(held.envelope())
                .map(|e| e.header.content_hash.to_hex())
                .unwrap_or_default(),
            fresh,
        },
        None => Detail::None,
    }
}

/// An agent: reads its own scope through the agent library's reader, then
/// watches it on the best endpoint for up to [`WATCH_MAX`], until the
/// workload stops. Every read and every envelope a watch delivered is an
/// operation.
pub async fn agent(
    agent: &Agent,
    endpoints: Vec<Endpoint>,
    genesis: Vec<u8>,
    process: String,
    shared: Shared,
) -> anyhow::Result<()> {
    let cluster = ClusterId::new(CLUSTER)?;
    let tls = rap_core::tls::pin::PeerTls::new(rap_core::tls::live::LiveIdentity::load(
        agent.files.clone(),
    )?)?;
    let state = ClusterState::open(&agent.state_dir, &cluster)?;
    let store = ClusterStore::open(&agent.state_dir, &state, &cluster)?;
    let mut reader = Reader::open(
        state,
        store,
        cluster.clone(),
        NodeId::new(agent.id.as_str())?,
        &genesis,
        Some(tls),
        endpoints,
    )?;
    let scope = reader.own_scope();
    while !shared.stopped() {
        let invoke_ms = shared.clock.ms();
        let result = reader.read(&scope).await;
        let complete_ms = shared.clock.ms();
        let (outcome, detail) = match result {
            Ok(ReadOutcome::Updated(_)) => (Outcome::Done, held_detail(&reader, &scope, true)),
            Ok(ReadOutcome::Unchanged(_)) => (Outcome::Done, held_detail(&reader, &scope, false)),
            Err(e) => (
                Outcome::Refused {
                    code: e.code().to_string(),
                },
                Detail::None,
            ),
        };
        let served_by = reader
            .last_answer()
            .map(|a| a.node_id.clone())
            .unwrap_or_default();
        shared.record(Op {
            process: process.clone(),
            kind: "read".into(),
            node: served_by,
            invoke_ms,
            complete_ms,
            outcome,
            detail,
        });
        watch(&mut reader, &cluster, &scope, &process, &shared).await;
        tokio::time::sleep(READ_PAUSE).await;
    }
    Ok(())
}

/// One watch of `scope` on the reader's best endpoint, for up to
/// [`WATCH_MAX`]; each delivered envelope the reader verified is an
/// operation (its invoke time is when the watch opened).
async fn watch(
    reader: &mut Reader,
    cluster: &ClusterId,
    scope: &str,
    process: &str,
    shared: &Shared,
) {
    let Some(at) = reader.endpoints.ranked().first().copied() else {
        return;
    };
    let node = reader.endpoints.list[at].endpoint.node_id.clone();
    let Ok(mut client) = reader.client_at(at) else {
        return;
    };
    let held = reader.held().get(scope).map_or(0, |h| h.version);
    let request = pb::WatchShardsRequest {
        cluster_id: cluster.to_string(),
        known: vec![pb::ScopeVersion {
            scope: scope.to_string(),
            version: held,
        }],
    };
    let invoke_ms = shared.clock.ms();
    let deadline = tokio::time::Instant::now() + WATCH_MAX;
    let Ok(Ok(stream)) = tokio::time::timeout(WATCH_MAX, client.watch_shards(request)).await else {
        return;
    };
    let mut stream = stream.into_inner();
    while !shared.stopped() {
        let Ok(Ok(Some(answer))) = tokio::time::timeout_at(deadline, stream.message()).await else {
            return;
        };
        if rap_node_agent::reads::deposed(&answer) {
            return;
        }
        let (outcome, detail) = match reader.keep_watched(at, answer) {
            Ok((watched, ReadOutcome::Updated(_))) => {
                (Outcome::Done, held_detail(reader, &watched, true))
            }
            Ok((watched, ReadOutcome::Unchanged(_))) => {
                (Outcome::Done, held_detail(reader, &watched, false))
            }
            Err(e) => (
                Outcome::Refused {
                    code: e.code().to_string(),
                },
                Detail::None,
            ),
        };
        shared.record(Op {
            process: process.to_string(),
            kind: "watch".into(),
            node: node.clone(),
            invoke_ms,
            complete_ms: shared.clock.ms(),
            outcome,
            detail,
        });
    }
}

/// Every scope's newest recorded publication in PostgreSQL.
async fn recorded(ctx: &Context, owner: &Principal) -> Option<Vec<pb::SnapshotRecord>> {
    let mut records = Vec::new();
    let mut token = String::new();
    for _ in 0..PAGES_MAX {
        let (page, next) = rap_controlplane::snapshots::list(
            ctx,
            owner,
            &pb::ListSnapshotsRequest {
                cluster_id: CLUSTER.to_string(),
                page: Some(pb::PageRequest {
                    page_size: PAGE_SIZE,
                    page_token: token,
                }),
            },
        )
        .await
        .ok()?;
        records.extend(page);
        if next.is_empty() {
            return Some(records);
        }
        token = next;
    }
    Some(records)
}

/// The publication log: polls what PostgreSQL records as published and
/// logs each new (scope, version) once, until the workload stops; then
/// once more. Returns every scope seen.
pub async fn publications(ctx: Context, owner: Principal, shared: Shared) -> BTreeSet<String> {
    let mut seen: BTreeSet<(String, u64)> = BTreeSet::new();
    loop {
        let last = shared.stopped();
        let invoke_ms = shared.clock.ms();
        if let Some(records) = recorded(&ctx, &owner).await {
            let complete_ms = shared.clock.ms();
            for record in records {
                if seen.insert((record.scope.clone(), record.version)) {
                    shared.record(Op {
                        process: "publications".into(),
                        kind: "publication".into(),
                        node: "controlplane".into(),
                        invoke_ms,
                        complete_ms,
                        outcome: Outcome::Done,
                        detail: Detail::Shard {
                            scope: record.scope,
                            version: record.version,
                            term: record.authority_term,
                            hash: hex::encode(&record.content_hash),
                            fresh: true,
                        },
                    });
                }
            }
        }
        if last {
            return seen.into_iter().map(|(scope, _)| scope).collect();
        }
        tokio::time::sleep(PUBLICATION_POLL).await;
    }
}

/// The group's newest envelope of each of `scopes`, read through the
/// control plane, as operations of kind `head`.
pub async fn heads(
    ctx: &Context,
    owner: &Principal,
    scopes: &BTreeSet<String>,
    clock: Clock,
) -> Vec<Op> {
    let mut ops = Vec::new();
    for scope in scopes {
        let invoke_ms = clock.ms();
        let answer = rap_controlplane::snapshots::get(
            ctx,
            owner,
            &pb::GetSnapshotRequest {
                cluster_id: CLUSTER.to_string(),
                scope: scope.clone(),
            },
        )
        .await;
        let (outcome, detail) = match answer.map(|a| rap_proto::envelope::decode(&a.envelope)) {
            Ok(Ok(envelope)) => (
                Outcome::Done,
                Detail::Shard {
                    scope: scope.clone(),
                    version: envelope.header.version.0,
                    term: envelope.header.authority_term.0,
                    hash: envelope.header.content_hash.to_hex(),
                    fresh: true,
                },
            ),
            Ok(Err(e)) => (
                Outcome::Refused {
                    code: e.code().to_string(),
                },
                Detail::None,
            ),
            Err(e) => (
                Outcome::Refused {
                    code: e.code().to_string(),
                },
                Detail::None,
            ),
        };
        ops.push(Op {
            process: "final".into(),
            kind: "head".into(),
            node: "controlplane".into(),
            invoke_ms,
            complete_ms: clock.ms(),
            outcome,
            detail,
        });
    }
    ops
}

/// Every fenced mutation PostgreSQL accepted, from the audit log, in
/// event order: (event id, action, fence).
pub async fn accepted_fences(
    ctx: &Context,
    owner: &Principal,
) -> anyhow::Result<Vec<(u64, String, (u64, u64))>> {
    let mut out = Vec::new();
    let mut after = 0;
    for _ in 0..PAGES_MAX {
        let page = rap_controlplane::audit::list(
            &ctx.pool,
            owner,
            &pb::ListAuditEventsRequest {
                cluster_id: CLUSTER.to_string(),
                after_event_id: after,
                page: Some(pb::PageRequest {
                    page_size: PAGE_SIZE,
                    page_token: String::new(),
                }),
                result: "ok".into(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("the audit log: {e}"))?;
        let Some(last) = page.events.last().map(|e| e.event_id) else {
            return Ok(out);
        };
        for event in page.events {
            if let Some(fence) = event.fence {
                out.push((
                    event.event_id,
                    event.action,
                    (fence.authority_term, fence.seq),
                ));
            }
        }
        after = last;
    }
    Ok(out)
}

/// How long the operator goes on trying to promote, or to rejoin one node.
pub const OPERATOR_WITHIN: Duration = Duration::from_secs(30);
/// Pause between two tries of the operator.
pub const OPERATOR_RETRY: Duration = Duration::from_millis(500);

/// The authority term PostgreSQL records as current.
pub async fn recorded_term(ctx: &Context) -> Option<u64> {
    let mut conn = ctx.pool.acquire().await.ok()?;
    rap_controlplane::clusters::current_term(&mut conn, CLUSTER)
        .await
        .ok()?
        .map(|(term, _)| term)
}

/// Tries `attempt` until it is done or [`OPERATOR_WITHIN`] passes,
/// [`OPERATOR_RETRY`] apart: done with the authority term it reports, or
/// the last refusal (term 0).
async fn until_done<F, Fut>(mut attempt: F) -> (Outcome, u64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = rap_controlplane::Result<pb::AuthorityStatus>>,
{
    let started = Instant::now();
    let mut outcome = Outcome::Unknown {
        reason: "not tried".into(),
    };
    while started.elapsed() < OPERATOR_WITHIN {
        match attempt().await {
            Ok(status) => return (Outcome::Done, status.authority_term),
            Err(e) => {
                outcome = Outcome::Refused {
                    code: e.code().to_string(),
                };
                tokio::time::sleep(OPERATOR_RETRY).await;
            }
        }
    }
    (outcome, 0)
}

/// The operator promotes `survivors` (`rapctl authority promote`), tried
/// again until it is done or [`OPERATOR_WITHIN`] passes: a survivor may
/// still see its quorum for a moment, and a try that recorded the new
/// term but could not deliver the order is finished by the next (which
/// expects the new term). The clients expect the new term from before the
/// first try, so no fence of the new term can come before a client
/// stops expecting the old one; when nothing was recorded in the end they
/// go back to the recorded term. One operation of kind `promote`.
pub async fn promote(
    ctx: &Context,
    owner: &Principal,
    survivors: Vec<String>,
    shared: &Shared,
) -> Op {
    let invoke_ms = shared.clock.ms();
    let old = recorded_term(ctx).await.unwrap_or(0);
    shared.term.store(old + 1, Ordering::SeqCst);
    let (outcome, mut term) = until_done(|| {
        let survivors = survivors.clone();
        async move {
            let expected = recorded_term(ctx).await.unwrap_or(old);
            rap_controlplane::authority_ops::promote(
                ctx,
                owner,
                &pb::PromotePartitionRequest {
                    cluster_id: CLUSTER.to_string(),
                    survivors,
                    expected_term: expected,
                },
            )
            .await
        }
    })
    .await;
    if outcome != Outcome::Done {
        term = recorded_term(ctx).await.unwrap_or(old);
        shared.term.store(term, Ordering::SeqCst);
    }
    Op {
        process: "operator".into(),
        kind: "promote".into(),
        node: "controlplane".into(),
        invoke_ms,
        complete_ms: shared.clock.ms(),
        outcome,
        detail: Detail::Operator {
            nodes: survivors,
            term,
        },
    }
}

/// The operator rejoins old member `node` (`rapctl authority rejoin`),
/// tried again until it is done or [`OPERATOR_WITHIN`] passes. One
/// operation of kind `rejoin`.
pub async fn rejoin(ctx: &Context, owner: &Principal, node: &str, shared: &Shared) -> Op {
    let invoke_ms = shared.clock.ms();
    let request = pb::RejoinNodeRequest {
        cluster_id: CLUSTER.to_string(),
        node_id: node.to_string(),
    };
    let (outcome, term) =
        until_done(|| rap_controlplane::authority_ops::rejoin(ctx, owner, &request)).await;
    Op {
        process: "operator".into(),
        kind: "rejoin".into(),
        node: "controlplane".into(),
        invoke_ms,
        complete_ms: shared.clock.ms(),
        outcome,
        detail: Detail::Operator {
            nodes: vec![node.to_string()],
            term,
        },
    }
}
