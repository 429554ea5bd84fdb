//! The operator's part of a run: promoting the surviving minority when the
//! majority is lost (loss-of-quorum recovery), with a promotion order
//! signed by the cluster's genesis key, as `rapctl authority promote` has
//! the control plane do. It runs on the client host, beside the workers.
//!
//! The operator waits until every survivor reports `minority` (a node
//! refuses a promotion while its group has a quorum), asks each for its
//! applied index, names the one with the highest as the seed, signs one
//! order, and sends it to the other survivors first and to the seed last
//! (the seed forms the new group and adds the others). Nothing here knows
//! what the nodes do with it: the checkers judge that.

use crate::clocks::NodeClocks;
use crate::events::{Event, EventLog, NodeIndex, node_name};
use crate::harness::{CLUSTER_ID, now};
use crate::seed::SimRng;
use crate::truth::MemoryTruth;
use crate::workload::{status_of, voter_spec};
use rap_authority::client::orders;
use rap_authority::network::NetworkConfig;
use rap_controlplane::audit::Action;
use rap_controlplane::db::authority_terms::TermReason;
use rap_controlplane::truth::{SourceOfTruth, TruthTx};
use rap_core::codes;
use rap_core::codes::error_detail;
use rap_proto::envelope::SnapshotSigner;
use rap_proto::ids::{AuthorityTerm, ClusterId};
use rap_proto::pb;
use rap_proto::pb::authority_service_client::AuthorityServiceClient;
use rap_proto::time::UnixMillis;
use std::time::Duration;
use tonic::transport::Channel;

/// How many times the operator looks at the survivors' views before it
/// gives up waiting for all of them to report `minority`.
pub const VIEW_CHECKS_MAX: u32 = 100;

/// Pause between two looks at the survivors.
pub const VIEW_CHECK_PAUSE: Duration = Duration::from_millis(100);

/// The client's deadline for one survivor's promotion (the seed's includes
/// forming the new group and adding the others).
pub const PROMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// A promotion in a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromotionPlan {
    /// When the operator starts (offset from the workload's start); the
    /// scenario has cut the survivors off from the rest before this.
    pub at: Duration,
    /// The surviving voters, a minority.
    pub survivors: Vec<NodeIndex>,
    /// Whether the operator brings the old side back after the heal, once
    /// each old member reports `fenced` ([`rejoin`]).
    pub rejoin: bool,
}

/// What one survivor says about itself.
struct Survivor {
    node: NodeIndex,
    authority_term: u64,
    applied_index: u64,
    view: i32,
}

/// Waits until every survivor reports `minority`; their statuses then.
async fn survivors_in_minority(
    plan: &PromotionPlan,
    clients: &[AuthorityServiceClient<Channel>],
) -> Option<Vec<Survivor>> {
    for _ in 0..VIEW_CHECKS_MAX {
        let mut found = Vec::with_capacity(plan.survivors.len());
        for node in &plan.survivors {
            if let Some(answer) = status_of(&clients[*node], VIEW_CHECK_PAUSE * 10).await {
                found.push(Survivor {
                    node: *node,
                    authority_term: answer.authority_term,
                    applied_index: answer.applied_index,
                    view: answer.partition_view,
                });
            }
        }
        let minority = pb::PartitionView::Minority as i32;
        if found.len() == plan.survivors.len() && found.iter().all(|s| s.view == minority) {
            return Some(found);
        }
        tokio::time::sleep(VIEW_CHECK_PAUSE).await;
    }
    None
}

/// Carries out `plan` (recording the new term in the source of truth
/// `truth` before it signs the order, as `rapctl authority promote` has
/// the control plane do in PostgreSQL); returns the new
/// authority term once every survivor
/// has been promoted, `None` when the operator could not (each step is in
/// the log).
pub(crate) async fn promote(
    plan: &PromotionPlan,
    signer: &SnapshotSigner,
    clients: &[AuthorityServiceClient<Channel>],
    rng: &mut SimRng,
    log: &EventLog,
    truth: &MemoryTruth,
    clocks: Option<&NodeClocks>,
) -> Option<u64> {
    let survivors = survivors_in_minority(plan, clients).await?;
    // The highest applied index seeds; the first such survivor on a tie.
    let seed = survivors
        .iter()
        .fold(None::<&Survivor>, |best, s| match best {
            Some(b) if b.applied_index >= s.applied_index => Some(b),
            _ => Some(s),
        })?;
    let current_term = seed.authority_term;
    let new_term = current_term + 1;
    let mut order = pb::PromotionOrder {
        cluster_id: CLUSTER_ID.into(),
        current_term,
        new_term,
        survivors: plan.survivors.iter().map(|n| node_name(*n)).collect(),
        seed: replay_guard(rng),
        // The nodes check an order's age against the wall clock, not the
        // simulated one; the time is in no event, so traces do not vary.
        issued_at_unix_ms: UnixMillis::now().0,
        seed_node_id: node_name(seed.node),
        seed_applied_index: seed.applied_index,
    };
    let mut request = rap_proto::orders::sign_promotion(&order, signer);
    // The source of truth records the new term before the order goes out:
    // from now on no mutation or publication under an older fence is
    // taken.
    if let Err(e) = record_promotion(truth, &order.survivors, current_term, new_term).await {
        log.push(Event::Promote {
            at: now(),
            node: seed.node,
            outcome: format!("not recorded {}: {e}", e.code()),
        });
        return None;
    }
    log.push(Event::Promotion {
        at: now(),
        term: new_term,
        survivors: plan.survivors.clone(),
        seed: seed.node,
        seed_applied: seed.applied_index,
    });
    let seed_node = seed.node;
    let mut order_of_calls: Vec<NodeIndex> = plan
        .survivors
        .iter()
        .copied()
        .filter(|n| *n != seed_node)
        .collect();
    order_of_calls.push(seed_node);
    let mut all_promoted = true;
    for node in order_of_calls {
        let mut client = clients[node].clone();
        let mut clock_set_right = false;
        loop {
            let (promoted, outcome) = match tokio::time::timeout(
                PROMOTE_TIMEOUT,
                client.promote(request.clone()),
            )
            .await
            {
                Ok(Ok(answer)) => (
                    true,
                    format!("promoted term={}", answer.into_inner().authority_term),
                ),
                Ok(Err(status)) => {
                    let code = error_detail(&status)
                        .map(|d| d.code)
                        .unwrap_or_else(|| format!("{:?}", status.code()));
                    // The window's refusal names wall-clock times,
                    // which no trace may hold.
                    let message = if code == codes::ORDER_OUTSIDE_WINDOW {
                        "issued outside this node's clock window"
                    } else {
                        status.message()
                    };
                    (false, format!("refused {code}: {message}"))
                }
                Err(_) => (false, "timed out".into()),
            };
            let outside = outcome.starts_with(&format!("refused {}", codes::ORDER_OUTSIDE_WINDOW));
            log.push(Event::Promote {
                at: now(),
                node,
                outcome,
            });
            // Told so, the operator sets the node's clock right once and
            // sends a freshly signed order (as running `rapctl authority
            // promote` again does); the nodes after it get that one too.
            if let (true, false, Some(clocks)) = (outside, clock_set_right, clocks) {
                clocks.set_right(node);
                clock_set_right = true;
                log.push(Event::Clock {
                    at: now(),
                    node,
                    skew_ms: clocks.skew(node),
                });
                order.seed = replay_guard(rng);
                order.issued_at_unix_ms = UnixMillis::now().0;
                request = rap_proto::orders::sign_promotion(&order, signer);
                continue;
            }
            all_promoted &= promoted;
            break;
        }
    }
    all_promoted.then_some(new_term)
}

/// A fresh replay guard for an order.
fn replay_guard(rng: &mut SimRng) -> Vec<u8> {
    (0..16)
        .map(|_| u8::try_from(rng.below(256)).unwrap_or(0))
        .collect()
}

/// The promotion's transaction in the source of truth: the authority row
/// is held (waiting for a fenced mutation in flight, as PostgreSQL's row
/// lock does), `from` ends and `to` begins with `survivors`.
async fn record_promotion(
    truth: &MemoryTruth,
    survivors: &[String],
    from: u64,
    to: u64,
) -> rap_controlplane::Result<()> {
    let mut tx = truth.begin().await?;
    tx.lock_current(CLUSTER_ID).await?;
    tx.advance_term(CLUSTER_ID, from, to, TermReason::Promotion, survivors)
        .await?;
    let action = Action::new(
        "sim-operator",
        "authority.promote",
        Some(CLUSTER_ID),
        format!("term/{to}"),
    );
    tx.record_ok(&action, None, serde_json::json!({})).await?;
    tx.commit().await
}

/// The deadline of one rejoin (the old member restarts empty, the group
/// adds it as a learner and promotes it once it has caught up).
pub const REJOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Brings the old member `node` back into the group of `term` whose
/// members are `group`, with the product's `rejoin_member` (a rejoin order
/// signed with the genesis key, `PrepareJoin`, `AddVoter` through the
/// group), as `rapctl authority rejoin` has the control plane do; logs the
/// answer. Whether it rejoined.
pub(crate) async fn rejoin(
    network: &NetworkConfig,
    group: &[NodeIndex],
    node: NodeIndex,
    term: u64,
    signer: &SnapshotSigner,
    log: &EventLog,
) -> bool {
    let cluster = match ClusterId::new(CLUSTER_ID) {
        Ok(cluster) => cluster,
        Err(e) => {
            log.push(Event::Rejoin {
                at: now(),
                node,
                outcome: format!("refused: {e}"),
            });
            return false;
        }
    };
    let specs: Vec<pb::VoterSpec> = group.iter().map(|n| voter_spec(*n)).collect();
    let member = voter_spec(node);
    let asked = orders::rejoin_member(
        network,
        &cluster,
        &specs,
        &member,
        signer,
        Some(AuthorityTerm(term)),
    );
    let (rejoined, outcome) = match tokio::time::timeout(REJOIN_TIMEOUT, asked).await {
        Ok(Ok(report)) => (true, format!("rejoined term={}", report.authority_term.0)),
        Ok(Err(e)) => (false, format!("refused {}: {e}", e.code())),
        Err(_) => (false, "timed out".into()),
    };
    log.push(Event::Rejoin {
        at: now(),
        node,
        outcome,
    });
    rejoined
}
