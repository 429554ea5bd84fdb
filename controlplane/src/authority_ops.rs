//! Loss-of-quorum recovery through the control plane: `PromotePartition`
//! and `RejoinNode`.
//!
//! Platform-owner only, audited, explicit survivor list, refused while the
//! current group has a quorum. The survivors are named by node id and must
//! be recorded voters of the cluster (`storage_nodes`); their addresses come
//! from there. The order is signed with the cluster's snapshot-signing key
//! and delivered by [`rap_authority::client::orders`].
//!
//! # Promotion: PostgreSQL first, then the order
//!
//! 0. Take the cluster's promotion lock
//!    ([`crate::db::coordination::lock_promotion`]), shared by every control
//!    plane process on the database and held until step 4 is done.
//! 1. `BEGIN`; lock the cluster's current authority row (`FOR UPDATE`);
//!    refuse unless its term equals the operator's `expected_term`.
//! 2. Survey the survivors (`Status`): refused, with nothing changed
//!    anywhere, when one still sees a quorum, is fenced, or they disagree
//!    on the term ([`rap_authority::client::orders::plan_promotion`]). Every
//!    check a survivor would make on the order is made here, before
//!    PostgreSQL changes, so that step 4 rarely fails.
//! 3. End term T, insert term T+1 (`reason = 'promotion'`, the survivors,
//!    `last_seq = 0`), retire the voters and learners that are not
//!    survivors, write the `authority.promote` audit event; `COMMIT`.
//! 4. Send the signed order to the survivors.
//!
//! Writing PostgreSQL before the order is the DESIGN's order, and it fails
//! closed: from the commit on, PostgreSQL refuses every term-T fence
//! (`fencing.rs` checks the term), so whatever the old majority might still
//! grant is useless, and no mutation goes through until the new group at
//! T+1 exists. The other order (survivors first) could leave a group at T+1
//! while PostgreSQL still accepts term-T fences from a revived old majority.
//!
//! If step 4 fails (a survivor unreachable, the process killed), PostgreSQL
//! says T+1 while the survivors are still at T, or some of them restarted
//! empty at T+1 and wait for the seed. The error says so; the operator runs
//! the same promotion again with `--expected-term T+1`. That re-run finds
//! the current row at T+1 recorded by a promotion with the same survivors,
//! and the survivors holding state still at T: it writes nothing to
//! PostgreSQL and sends the order T → T+1 again (survivors that already
//! restarted get nothing; `rap_authority::client::orders` documents this). Once the seed
//! has formed the group, a re-run is refused with `QUORUM_PRESENT`.
//!
//! The work of a call runs in a task of its own: a client that gives up
//! (deadline, Ctrl-C) does not cut a promotion or a rejoin half-way.
//!
//! # Rejoin
//!
//! A retired storage node of the cluster (a voter left out of a promotion)
//! is brought back into the current term: signed rejoin order, then added
//! as a voter through the group ([`rap_authority::client::orders::rejoin_member`]);
//! its role goes back to `voter` and the event is audited.

use crate::audit::{self, Action};
use crate::auth::Principal;
use crate::clusters::require_exists;
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result};
use rap_authority::client::orders::{self, PromotionPlan, SurvivorOutcome};
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId};
use rap_proto::pb;
use std::collections::BTreeSet;

/// Audit action of a promotion.
pub const ACTION_PROMOTE: &str = "authority.promote";
/// Audit action of a rejoin.
pub const ACTION_REJOIN: &str = "authority.rejoin";
/// Most survivors one promotion may name (the group's voter limit).
pub const SURVIVORS_MAX: usize = rap_authority::limits::VOTERS_MAX;

/// The authority crate's refusals as the control plane's.
fn authority_error(error: rap_authority::Error) -> Error {
    use rap_authority::Error as A;
    match error {
        A::NoQuorum {
            reachable_voters,
            total_voters,
        } => Error::NoQuorum {
            reachable_voters,
            total_voters,
        },
        A::Raft(message) => Error::AuthorityUnreachable(message),
        A::InvalidRequest(message) => Error::InvalidArgument(message),
        A::Oversize { what, limit, got } => Error::Oversize { what, limit, got },
        A::Proto(e) => Error::from(e),
        A::Refused { code, message } => Error::Authority { code, message },
        other => Error::Authority {
            code: other.code().to_string(),
            message: other.to_string(),
        },
    }
}

/// Runs `work` in a task of its own so that a caller that goes away does
/// not cancel it half-way.
async fn detached<T, F>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    use tracing::Instrument;
    tokio::spawn(work.instrument(tracing::Span::current()))
        .await
        .map_err(|e| Error::Internal(format!("authority operation task: {e}")))?
}

/// Loss-of-quorum recovery: re-forms the cluster's authority group at term
/// T+1 from the named survivors (see the module docs for the order of
/// PostgreSQL and the storage nodes). Platform owner only; audited.
#[tracing::instrument(skip_all, fields(cluster_id = crate::audit::field(&request.cluster_id)))]
pub async fn promote(
    ctx: &Context,
    principal: &Principal,
    request: &pb::PromotePartitionRequest,
) -> Result<pb::AuthorityStatus> {
    let (ctx, principal, request) = (ctx.clone(), principal.clone(), request.clone());
    detached(async move {
        let action = Action::new(
            principal.actor(),
            ACTION_PROMOTE,
            Some(&request.cluster_id),
            request.survivors.join(","),
        )
        .with_step_up(&principal);
        let result = promote_now(&ctx, &principal, &request, &action).await;
        audit::audited(&ctx.pool, &action, result).await
    })
    .await
}

/// Checks the request's shape: the cluster id, 1..=7 distinct survivor
/// node ids and an expected term.
fn check_promote_request(request: &pb::PromotePartitionRequest) -> Result<ClusterId> {
    let cluster = ClusterId::new(request.cluster_id.as_str())?;
    if request.survivors.is_empty() {
        return Err(Error::invalid(
            "name the survivors: --survivor <node-id> (every surviving voter)",
        ));
    }
    if request.survivors.len() > SURVIVORS_MAX {
        return Err(Error::Oversize {
            what: "survivors",
            limit: SURVIVORS_MAX,
            got: request.survivors.len(),
        });
    }
    for id in &request.survivors {
        NodeId::new(id.as_str())?;
    }
    let distinct: BTreeSet<&String> = request.survivors.iter().collect();
    if distinct.len() != request.survivors.len() {
        return Err(Error::invalid("a survivor is named more than once"));
    }
    if request.expected_term == 0 {
        return Err(Error::invalid(
            "give the authority term you expect to replace: --expected-term <term> (`rapctl authority status` shows it)",
        ));
    }
    Ok(cluster)
}

async fn promote_now(
    ctx: &Context,
    principal: &Principal,
    request: &pb::PromotePartitionRequest,
    action: &Action,
) -> Result<pb::AuthorityStatus> {
    principal.require_owner()?;
    let cluster = check_promote_request(request)?;
    let cluster_id = cluster.as_str();
    // One promotion of a cluster at a time, across every control plane
    // process, held until the order is delivered: a second one waits, then
    // finds the term moved on.
    let mut one_at_a_time = crate::db::coordination::lock_promotion(&ctx.pool, cluster_id).await?;

    let mut tx = ctx.pool.begin().await?;
    require_exists(&mut tx, cluster_id).await?;
    let Some(current) = db::authority_terms::lock_current(&mut tx, cluster_id).await? else {
        return Err(Error::NotBootstrapped(cluster_id.to_string()));
    };
    let term = current.term()?;
    let (reason, recorded_survivors) = (current.reason, current.survivors);
    if term != request.expected_term {
        return Err(Error::FailedPrecondition(format!(
            "the current authority term of cluster {cluster_id} is {term}, not the expected {}: \
             check `rapctl authority status {cluster_id}` and run again with --expected-term {term} \
             if the promotion is still needed",
            request.expected_term
        )));
    }
    let storage = db::storage_nodes::all(&mut tx, cluster_id).await?;
    let mut specs = Vec::with_capacity(request.survivors.len());
    for id in &request.survivors {
        match storage.iter().find(|row| &row.node_id == id) {
            Some(row) if row.role == "voter" => {
                specs.push(pb::VoterSpec {
                    node_id: row.node_id.clone(),
                    address: row.address.clone(),
                    domain: Some(pb::FailureDomain {
                        region: row.region.clone(),
                        zone: row.zone.clone(),
                        host: row.host.clone(),
                    }),
                });
            }
            Some(row) => {
                let role = &row.role;
                return Err(Error::FailedPrecondition(format!(
                    "survivor {id} is a {role} of cluster {cluster_id}, not a voter: only recorded voters can be survivors"
                )));
            }
            None => {
                return Err(Error::FailedPrecondition(format!(
                    "survivor {id} is not a storage node of cluster {cluster_id} (`rapctl cluster show {cluster_id}` lists them)"
                )));
            }
        }
    }
    let network = ctx.authority.load_network(cluster_id).await?;
    let keys = crate::clusters::load_keys(&ctx.keys_dir, &cluster).await?;
    let plan = orders::plan_promotion(&network, &cluster, &specs, None)
        .await
        .map_err(authority_error)?;

    let requested: BTreeSet<&String> = request.survivors.iter().collect();
    let recorded: BTreeSet<&String> = recorded_survivors.iter().collect();
    let resumed = if plan.current_term.0 == term {
        false
    } else if plan.current_term.0.checked_add(1) == Some(term) && reason == "promotion" {
        if requested != recorded {
            return Err(Error::FailedPrecondition(format!(
                "a promotion of cluster {cluster_id} to authority term {term} with survivors {} \
                 is recorded but not finished: run it again with exactly those survivors",
                recorded_survivors.join(", ")
            )));
        }
        true
    } else {
        return Err(Error::FailedPrecondition(format!(
            "the survivors are at authority term {}, but the control plane records term {term} \
             for cluster {cluster_id}",
            plan.current_term
        )));
    };

    if resumed {
        // PostgreSQL already says T+1 (an earlier run committed it): only
        // the order is sent again.
        drop(tx);
    } else {
        let retired = record_promotion(&mut tx, cluster_id, &plan, action).await?;
        one_at_a_time.confirm().await?;
        tx.commit().await?;
        tracing::warn!(
            cluster_id,
            old_term = plan.current_term.0,
            new_term = plan.new_term.0,
            seed = %plan.seed_node_id,
            retired = ?retired,
            "promotion recorded; sending the order to the survivors"
        );
    }

    let report = orders::send_promotion(
        &network,
        &plan,
        keys.signer(),
        |outcome: &SurvivorOutcome| {
            tracing::info!(cluster_id, survivor = %outcome.node_id, step = ?outcome.step, "promotion step");
        },
    )
    .await
    .map_err(|e| unfinished(e, cluster_id, &plan))?;

    if resumed {
        let mut conn = ctx.pool.acquire().await?;
        audit::record_ok(
            &mut conn,
            action,
            None,
            serde_json::json!({
                "old_term": plan.current_term.0,
                "new_term": plan.new_term.0,
                "survivors": plan.survivor_ids(),
                "seed": plan.seed_node_id,
                "seed_applied_index": plan.seed_applied_index,
                "resumed": true,
            }),
        )
        .await?;
    }
    tracing::warn!(
        cluster_id,
        term = report.new_term.0,
        leader = %report.leader_id,
        "promotion done: the group is re-formed"
    );
    one_at_a_time.release().await;
    Ok(observe(
        ctx,
        &cluster,
        plan.new_term,
        report.leader_id,
        &plan
            .survivors
            .iter()
            .map(|s| s.spec.clone())
            .collect::<Vec<_>>(),
    )
    .await)
}

/// Step 3 of a promotion (in the caller's transaction): ends term T,
/// records T+1 with the survivors, retires the other voters and learners
/// and writes the audit event. Returns the retired node ids.
async fn record_promotion(
    tx: &mut sqlx::PgConnection,
    cluster_id: &str,
    plan: &PromotionPlan,
    action: &Action,
) -> Result<Vec<String>> {
    let survivors = plan.survivor_ids();
    db::authority_terms::advance(
        tx,
        cluster_id,
        plan.current_term.0,
        plan.new_term.0,
        db::authority_terms::TermReason::Promotion,
        &survivors,
    )
    .await?;
    let retired = db::storage_nodes::retire_all_but(tx, cluster_id, &survivors).await?;
    // Every node shard lists the storage endpoints; and the new group
    // starts from the survivors' state, which may lack what the old side
    // published before the order: every published scope is compared with
    // the new group's heads again and published where they differ.
    db::snapshots::mark_all_node_scopes_dirty(tx, cluster_id).await?;
    db::snapshots::mark_all_published_dirty(tx, cluster_id).await?;
    audit::record_ok(
        tx,
        action,
        None,
        serde_json::json!({
            "old_term": plan.current_term.0,
            "new_term": plan.new_term.0,
            "survivors": survivors,
            "seed": plan.seed_node_id,
            "seed_applied_index": plan.seed_applied_index,
            "retired": retired,
            "resumed": false,
        }),
    )
    .await?;
    Ok(retired)
}

/// The error of an order that could not be delivered after PostgreSQL
/// moved to T+1: what happened, and how to finish.
fn unfinished(error: rap_authority::Error, cluster_id: &str, plan: &PromotionPlan) -> Error {
    let survivors: String = plan
        .survivor_ids()
        .iter()
        .map(|id| format!(" --survivor {id}"))
        .collect();
    let next = format!(
        "the control plane records authority term {new} already (term-{old} fences are refused, \
         nothing is changed until the group is re-formed); once the survivors are reachable, run \
         `rapctl authority promote {cluster_id}{survivors} --expected-term {new}` again to finish",
        new = plan.new_term,
        old = plan.current_term,
    );
    match authority_error(error) {
        Error::Authority { code, message } => Error::Authority {
            code,
            message: format!("{message}; {next}"),
        },
        other => Error::AuthorityUnreachable(format!("{other}; {next}")),
    }
}

/// The group as `nodes` see it now (no PostgreSQL writes).
async fn observe(
    ctx: &Context,
    cluster: &ClusterId,
    term: AuthorityTerm,
    leader_id: String,
    nodes: &[pb::VoterSpec],
) -> pb::AuthorityStatus {
    let mut status = pb::AuthorityStatus {
        cluster_id: cluster.to_string(),
        authority_term: term.0,
        last_fence_seq: 0,
        leader_id,
        observations: Vec::with_capacity(nodes.len()),
    };
    if let Ok(mut conn) = ctx.pool.acquire().await
        && let Ok(Some((_, last_seq))) =
            crate::clusters::current_term(&mut conn, cluster.as_str()).await
    {
        status.last_fence_seq = last_seq;
    }
    let network = ctx.authority.load_network(cluster.as_str()).await.ok();
    for node in nodes {
        let mut observation = pb::PartitionObservation {
            node_id: node.node_id.clone(),
            view: pb::PartitionView::Unspecified as i32,
            observed_at_unix_ms: rap_proto::time::UnixMillis::now().0,
            ..Default::default()
        };
        if let Some(network) = &network
            && let Ok(mut client) = rap_authority::client::authority_client(
                network,
                &node.address,
                &rap_core::tls::pin::ExpectedPeer::storage_named(&node.node_id),
            )
        {
            let call = client.status(pb::AuthorityStatusRequest {
                cluster_id: cluster.to_string(),
            });
            if let Ok(Ok(answer)) = tokio::time::timeout(orders::STATUS_TIMEOUT, call).await {
                let answer = answer.into_inner();
                let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                observation.view = answer.partition_view;
                observation.reachable_voters =
                    count(answer.voters.iter().filter(|v| v.reachable).count());
                observation.total_voters = count(answer.voters.len());
                if status.leader_id.is_empty() {
                    status.leader_id = answer.leader_id;
                }
            }
        }
        status.observations.push(observation);
    }
    status
}

/// The authority group as its storage nodes see it; every answer is
/// recorded in `cluster_partitions` (platform principals only).
#[tracing::instrument(skip_all, fields(cluster_id = crate::audit::field(cluster_id)))]
pub async fn status(
    ctx: &Context,
    principal: &Principal,
    cluster_id: &str,
) -> Result<pb::AuthorityStatus> {
    principal.require_platform()?;
    record_status(ctx, cluster_id).await
}

/// Asks every storage node of `cluster_id` how it sees the group and
/// records each answer (or silence) in `cluster_partitions`: the work of
/// [`status`], also done by the watcher ([`crate::watch`]) without a
/// caller.
pub async fn record_status(ctx: &Context, cluster_id: &str) -> Result<pb::AuthorityStatus> {
    let mut conn = ctx.pool.acquire().await?;
    require_exists(&mut conn, cluster_id).await?;
    let (term, last_seq) = crate::clusters::current_term(&mut conn, cluster_id)
        .await?
        .unwrap_or((0, 0));
    let storage = crate::db::storage_nodes::members_by_id(&mut conn, cluster_id).await?;
    drop(conn);
    let network = ctx.authority.load_network(cluster_id).await?;
    let mut status = pb::AuthorityStatus {
        cluster_id: cluster_id.to_string(),
        authority_term: term,
        last_fence_seq: last_seq,
        ..Default::default()
    };
    for crate::db::storage_nodes::StorageAddress { node_id, address } in storage {
        let mut observation = pb::PartitionObservation {
            node_id: node_id.clone(),
            view: pb::PartitionView::Unspecified as i32,
            observed_at_unix_ms: rap_proto::time::UnixMillis::now().0,
            ..Default::default()
        };
        if let Ok(mut client) = rap_authority::client::authority_client(
            &network,
            &address,
            &rap_core::tls::pin::ExpectedPeer::storage_named(&node_id),
        ) {
            let call = client.status(pb::AuthorityStatusRequest {
                cluster_id: cluster_id.to_string(),
            });
            if let Ok(Ok(answer)) = tokio::time::timeout(crate::limits::FENCE_TIMEOUT, call).await {
                let answer = answer.into_inner();
                observation.view = answer.partition_view;
                observation.reachable_voters =
                    u32::try_from(answer.voters.iter().filter(|v| v.reachable).count())
                        .unwrap_or(0);
                observation.total_voters = u32::try_from(answer.voters.len()).unwrap_or(0);
                if status.leader_id.is_empty() {
                    status.leader_id = answer.leader_id.clone();
                }
            }
        }
        let view = match pb::PartitionView::try_from(observation.view)
            .unwrap_or(pb::PartitionView::Unspecified)
        {
            pb::PartitionView::Healthy => "healthy",
            pb::PartitionView::Degraded => "degraded",
            pb::PartitionView::Minority => "minority",
            pb::PartitionView::Fenced => "fenced",
            pb::PartitionView::Unspecified => "unreachable",
        };
        crate::db::partitions::insert(
            &mut *ctx.pool.acquire().await?,
            cluster_id,
            crate::db::partitions::Observation {
                node_id: &node_id,
                view,
                reachable_voters: i32::try_from(observation.reachable_voters).unwrap_or(0),
                total_voters: i32::try_from(observation.total_voters).unwrap_or(0),
                authority_term: i64::try_from(term).unwrap_or(0),
            },
        )
        .await?;
        status.observations.push(observation);
    }
    Ok(status)
}

/// Brings a retired storage node back into the cluster's current term as a
/// voter (see the module docs). Platform owner only; audited.
#[tracing::instrument(
    skip_all,
    fields(
        cluster_id = crate::audit::field(&request.cluster_id),
        node_id = crate::audit::field(&request.node_id),
    )
)]
pub async fn rejoin(
    ctx: &Context,
    principal: &Principal,
    request: &pb::RejoinNodeRequest,
) -> Result<pb::AuthorityStatus> {
    let (ctx, principal, request) = (ctx.clone(), principal.clone(), request.clone());
    detached(async move {
        let action = Action::new(
            principal.actor(),
            ACTION_REJOIN,
            Some(&request.cluster_id),
            request.node_id.as_str(),
        )
        .with_step_up(&principal);
        let result = rejoin_now(&ctx, &principal, &request, &action).await;
        audit::audited(&ctx.pool, &action, result).await
    })
    .await
}

async fn rejoin_now(
    ctx: &Context,
    principal: &Principal,
    request: &pb::RejoinNodeRequest,
    action: &Action,
) -> Result<pb::AuthorityStatus> {
    principal.require_owner()?;
    let cluster = ClusterId::new(request.cluster_id.as_str())?;
    let cluster_id = cluster.as_str();
    let node_id = NodeId::new(request.node_id.as_str())?;

    let mut conn = ctx.pool.acquire().await?;
    require_exists(&mut conn, cluster_id).await?;
    let Some((term, _)) = crate::clusters::current_term(&mut conn, cluster_id).await? else {
        return Err(Error::NotBootstrapped(cluster_id.to_string()));
    };
    let Some(row) = db::storage_nodes::get(&mut conn, cluster_id, node_id.as_str()).await? else {
        return Err(Error::not_found("storage node", node_id.as_str()));
    };
    let db::storage_nodes::StorageNode {
        address,
        region,
        zone,
        host,
        role,
        ..
    } = row;
    if role != "retired" {
        return Err(Error::FailedPrecondition(format!(
            "storage node {node_id} is a {role} of cluster {cluster_id}, not retired: only a \
             retired storage node (a voter left out of a promotion) can rejoin"
        )));
    }
    let group: Vec<pb::VoterSpec> = db::storage_nodes::voters(&mut conn, cluster_id)
        .await?
        .into_iter()
        .map(|row| pb::VoterSpec {
            node_id: row.node_id,
            address: row.address,
            domain: None,
        })
        .collect();
    drop(conn);
    if group.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "cluster {cluster_id} has no recorded voter to rejoin through"
        )));
    }
    let member = pb::VoterSpec {
        node_id: node_id.to_string(),
        address,
        domain: Some(pb::FailureDomain { region, zone, host }),
    };
    let network = ctx.authority.load_network(cluster_id).await?;
    let keys = crate::clusters::load_keys(&ctx.keys_dir, &cluster).await?;
    let report = orders::rejoin_member(
        &network,
        &cluster,
        &group,
        &member,
        keys.signer(),
        Some(AuthorityTerm(term)),
    )
    .await
    .map_err(authority_error)?;

    let mut tx = ctx.pool.begin().await?;
    let current = db::authority_terms::lock_current(&mut tx, cluster_id).await?;
    if current.map(|row| row.term()).transpose()? != Some(term) {
        return Err(Error::FailedPrecondition(format!(
            "the authority term of cluster {cluster_id} moved on from {term} during the rejoin; \
             {node_id} joined term {term}: check `rapctl authority status {cluster_id}`"
        )));
    }
    db::storage_nodes::unretire(&mut tx, cluster_id, node_id.as_str()).await?;
    db::snapshots::mark_all_node_scopes_dirty(&mut tx, cluster_id).await?;
    audit::record_ok(
        &mut tx,
        action,
        None,
        serde_json::json!({
            "authority_term": term,
            "order_sent": report.order_sent,
            "already_member": report.already_member,
        }),
    )
    .await?;
    tx.commit().await?;
    tracing::warn!(cluster_id, node_id = %node_id, term, "storage node rejoined the authority group");

    let answer = report.status;
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let mut status = pb::AuthorityStatus {
        cluster_id: cluster_id.to_string(),
        authority_term: term,
        last_fence_seq: 0,
        leader_id: answer.leader_id.clone(),
        observations: vec![pb::PartitionObservation {
            node_id: answer.node_id.clone(),
            view: answer.partition_view,
            reachable_voters: count(answer.voters.iter().filter(|v| v.reachable).count()),
            total_voters: count(answer.voters.len()),
            observed_at_unix_ms: rap_proto::time::UnixMillis::now().0,
        }],
    };
    if let Ok(mut conn) = ctx.pool.acquire().await
        && let Ok(Some((_, last_seq))) = crate::clusters::current_term(&mut conn, cluster_id).await
    {
        status.last_fence_seq = last_seq;
    }
    Ok(status)
}
