//! Promotion (loss-of-quorum recovery) and rejoin.
//!
//! openraft has no forced-membership API, so a promotion builds a new group:
//! every survivor verifies the control plane's signed order, refuses while
//! it can still reach a quorum, retires its Raft storage (moved to
//! `<data-dir>/retired/`, never deleted) and restarts on fresh storage at
//! term T+1. The seed survivor (the one with the highest applied index, as
//! the order names it and checks) initializes a one-voter group, commits a
//! `Reseed` entry carrying its whole state at T+1, and adds the other
//! survivors (learner first, then voter). Term-T members are refused at the
//! transport from then on, and their fences fail every check.
//!
//! A rejoin order lets one old member come back: it retires its storage and
//! restarts empty at the new term, then the operator adds it as a voter.

use crate::error::{Error, Result};
use crate::node::{AuthorityNode, BOOTSTRAP_ELECTION_TIMEOUTS_MAX};
use crate::partition::PartitionView;
use crate::request::{Request, Response};
use crate::slot::NodeSlot;
use crate::typ::{Member, raft_id_of};
use rap_proto::envelope::VerifiedTrustRoot;
use rap_proto::ids::{AuthorityTerm, NodeId};
use rap_proto::pb;
use rap_proto::time::UnixMillis;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Oldest order accepted (10 minutes): an order is for an incident now,
/// not for replay later.
pub const ORDER_AGE_MS_MAX: i64 = 10 * 60 * 1000;

/// How far in the future an order's `issued_at` may be (clock skew).
pub const ORDER_SKEW_MS_MAX: i64 = 2 * 60 * 1000;

/// Directory under the data dir where retired Raft storage is kept.
pub const RETIRED_DIR: &str = "retired";

/// What a promotion did on this node.
#[derive(Clone, Debug)]
pub struct PromotionOutcome {
    /// The new authority term.
    pub authority_term: AuthorityTerm,
    /// The survivor the new group was formed from.
    pub seeded_from_node_id: String,
    /// Its applied index in the old group.
    pub seeded_from_index: u64,
    /// Survivors added to the new group (seed only).
    pub added: Vec<String>,
    /// Survivors that could not be added yet, with the reason (seed only).
    pub not_added: Vec<(String, String)>,
}

fn refused(reason: impl Into<String>) -> Error {
    Error::OrderRefused(reason.into())
}

fn trust_root_of(node: &AuthorityNode) -> Result<VerifiedTrustRoot> {
    let bytes = node.state().read(|state| state.trust_root.to_vec());
    if bytes.is_empty() {
        return Err(refused(
            "this node holds no trust root (never bootstrapped)",
        ));
    }
    Ok(VerifiedTrustRoot::verify_genesis(
        &bytes,
        &node.options().cluster_id,
        None,
    )?)
}

/// An order's age against this node's wall clock (`now`).
fn check_age(now: UnixMillis, issued_at: i64) -> Result<()> {
    let now = now.0;
    if issued_at < now.saturating_sub(ORDER_AGE_MS_MAX) || issued_at > now + ORDER_SKEW_MS_MAX {
        return Err(Error::OrderOutsideWindow(format!(
            "order issued at {issued_at} ms is outside [now - {ORDER_AGE_MS_MAX} ms, now + {ORDER_SKEW_MS_MAX} ms]"
        )));
    }
    Ok(())
}

/// Moves the node's Raft storage aside (never deletes it).
fn retire_storage(data_dir: &Path, term: AuthorityTerm) -> Result<Option<PathBuf>> {
    let current = data_dir.join(crate::store::RAFT_DB_FILE);
    if !current.exists() {
        return Ok(None);
    }
    let retired_dir = data_dir.join(RETIRED_DIR);
    std::fs::create_dir_all(&retired_dir)
        .map_err(|e| Error::Storage(format!("create {}: {e}", retired_dir.display())))?;
    let target = retired_dir.join(format!("raft-term-{}-{}.redb", term.0, UnixMillis::now().0));
    std::fs::rename(&current, &target).map_err(|e| {
        Error::Storage(format!(
            "retire {} to {}: {e}",
            current.display(),
            target.display()
        ))
    })?;
    Ok(Some(target))
}

impl NodeSlot {
    /// Carries out a signed promotion order on this node.
    pub async fn promote(
        self: &Arc<Self>,
        request: &pb::PromoteRequest,
    ) -> Result<PromotionOutcome> {
        let _reforming = self.reforming.lock().await;
        let node = self.get();
        let options = node.options().clone();
        let order = rap_proto::orders::verify_promotion(request, &trust_root_of(&node)?)?;
        if order.cluster_id != options.cluster_id.as_str() {
            return Err(Error::WrongCluster {
                expected: options.cluster_id.clone(),
                got: order.cluster_id.chars().take(80).collect(),
            });
        }
        check_age(options.now(), order.issued_at_unix_ms)?;
        let current = node.state().authority_term();
        if order.current_term != current.0 || order.new_term != current.0 + 1 {
            return Err(refused(format!(
                "order replaces term {} with {}, this node is at term {current}",
                order.current_term, order.new_term
            )));
        }
        let survivors: BTreeSet<&str> = order.survivors.iter().map(String::as_str).collect();
        if survivors.is_empty()
            || survivors.len() != order.survivors.len()
            || survivors.len() > crate::limits::VOTERS_MAX
        {
            return Err(refused("survivors must be 1..=7 distinct node ids"));
        }
        for id in &survivors {
            NodeId::new(*id)?;
        }
        let me = options.node_id.as_str();
        if !survivors.contains(me) {
            return Err(refused(format!("{me} is not among the survivors")));
        }
        if !survivors.contains(order.seed_node_id.as_str()) {
            return Err(refused("the seed is not among the survivors"));
        }
        let status = node.status();
        if matches!(
            status.view,
            PartitionView::Healthy | PartitionView::Degraded
        ) {
            return Err(refused(format!(
                "the group still has a quorum ({}/{} voters reachable); promotion is only for loss of quorum",
                status.reachable_voters,
                status.voters.len()
            )));
        }
        // A survivor may be fenced by this very promotion: another survivor
        // that got the order first restarted at the new term and answered
        // this one's Raft RPCs with the order as its proof. The control
        // plane signs one promotion per term, so a node fenced by exactly
        // the order's new term, and named by it, carries it out; a node
        // fenced by any other term must be rejoined.
        if status.view == PartitionView::Fenced
            && node.guard().fenced_by() != Some(AuthorityTerm(order.new_term))
        {
            return Err(refused(
                "this node is fenced by a higher term; rejoin it instead",
            ));
        }
        let is_seed = order.seed_node_id == me;
        if is_seed && status.applied_index != order.seed_applied_index {
            return Err(refused(format!(
                "the order seeds from applied index {}, this node has applied {}",
                order.seed_applied_index, status.applied_index
            )));
        }
        if !is_seed && status.applied_index > order.seed_applied_index {
            return Err(refused(format!(
                "this survivor has applied {} entries, more than the seed's {}: seed from the survivor with the highest applied index",
                status.applied_index, order.seed_applied_index
            )));
        }
        let members: BTreeMap<String, Member> = status
            .voters
            .iter()
            .map(|v| (v.member.node_id.clone(), v.member.clone()))
            .collect();
        for id in &survivors {
            if !members.contains_key(*id) {
                return Err(refused(format!(
                    "survivor {id} is not a voter of this group"
                )));
            }
        }

        // Point of no return on this node.
        let new_term = AuthorityTerm(order.new_term);
        let state = node.state().state();
        tracing::warn!(
            cluster_id = %options.cluster_id,
            node_id = %options.node_id,
            term = new_term.0,
            seed = %order.seed_node_id,
            "promotion: re-forming the group at a new authority term"
        );
        // The signed order is the proof of the new term: attached to every
        // Raft RPC and term refusal of this node, and kept in the state.
        let proof = prost::Message::encode_to_vec(request);
        // Until the seed adds it, this node hears only from the survivors.
        let peers = survivors
            .iter()
            .filter(|id| **id != me)
            .map(|id| NodeId::new(*id))
            .collect::<std::result::Result<_, _>>()?;
        node.expected_peers()
            .set(peers, &options.cluster_id, "promotion order")?;
        let fresh = self
            .restart_fresh(&node, current, new_term, Some(&proof))
            .await?;
        let mut outcome = PromotionOutcome {
            authority_term: new_term,
            seeded_from_node_id: order.seed_node_id.clone(),
            seeded_from_index: order.seed_applied_index,
            added: Vec::new(),
            not_added: Vec::new(),
        };
        if !is_seed {
            return Ok(outcome);
        }
        let timing = fresh.options().timing;
        let mut single = BTreeMap::new();
        single.insert(raft_id_of(me), fresh.options().member());
        fresh
            .raft()
            .initialize(single)
            .await
            .map_err(|e| Error::Raft(format!("initialize the new group: {e}")))?;
        let budget = timing.election_timeout_max * BOOTSTRAP_ELECTION_TIMEOUTS_MAX;
        let deadline = tokio::time::Instant::now() + budget;
        fresh
            .raft()
            .wait(Some(budget))
            .current_leader(raft_id_of(me), "the seed leads its new group")
            .await
            .map_err(|e| Error::Raft(format!("wait for the new group's leader: {e}")))?;
        loop {
            match fresh
                .propose(Request::Reseed {
                    state: Box::new(state.clone()),
                    new_term,
                    proof: serde_bytes::ByteBuf::from(proof.clone()),
                })
                .await
            {
                Ok(Response::Done) => break,
                Ok(Response::Refused(r)) => {
                    return Err(Error::Refused {
                        code: r.code,
                        message: r.message,
                    });
                }
                Ok(other) => return Err(Error::Raft(format!("reseed answered {other:?}"))),
                Err(e) if tokio::time::Instant::now() < deadline && e.is_retryable() => {
                    tokio::time::sleep(timing.heartbeat).await;
                }
                Err(e) => return Err(e),
            }
        }
        for id in survivors.iter().filter(|id| **id != me) {
            let Some(member) = members.get(*id) else {
                continue;
            };
            match add_with_retry(&fresh, member.clone(), deadline).await {
                Ok(()) => outcome.added.push((*id).to_string()),
                Err(e) => outcome.not_added.push(((*id).to_string(), e.to_string())),
            }
        }
        Ok(outcome)
    }

    /// Carries out a signed rejoin order: this (old) member retires its
    /// Raft storage and restarts empty at the new term, ready to be added.
    pub async fn rejoin(self: &Arc<Self>, request: &pb::RejoinRequest) -> Result<AuthorityTerm> {
        let _reforming = self.reforming.lock().await;
        let node = self.get();
        let options = node.options().clone();
        let order = rap_proto::orders::verify_rejoin(request, &trust_root_of(&node)?)?;
        if order.cluster_id != options.cluster_id.as_str() {
            return Err(Error::WrongCluster {
                expected: options.cluster_id.clone(),
                got: order.cluster_id.chars().take(80).collect(),
            });
        }
        if order.node_id != options.node_id.as_str() {
            return Err(refused(format!(
                "the order is for {}, this is {}",
                order.node_id, options.node_id
            )));
        }
        check_age(options.now(), order.issued_at_unix_ms)?;
        let current = node.state().authority_term();
        if order.authority_term <= current.0 {
            return Err(refused(format!(
                "rejoin into term {} but this node is already at {current}",
                order.authority_term
            )));
        }
        let new_term = AuthorityTerm(order.authority_term);
        tracing::warn!(
            cluster_id = %options.cluster_id,
            node_id = %options.node_id,
            term = new_term.0,
            "rejoin: wiping this node's raft state to join the new term as a learner"
        );
        // Nobody is expected until an operator names the group's members
        // (`PrepareJoin`); the old group's members are not.
        node.expected_peers().set(
            std::collections::BTreeSet::new(),
            &options.cluster_id,
            "rejoin order",
        )?;
        self.restart_fresh(&node, current, new_term, None).await?;
        Ok(new_term)
    }

    /// Stops `node`, retires its storage, and starts a fresh incarnation at
    /// `new_term` (proven by `proof`, the signed promotion order, when
    /// given) with the same guard and reachability.
    async fn restart_fresh(
        &self,
        node: &Arc<AuthorityNode>,
        old_term: AuthorityTerm,
        new_term: AuthorityTerm,
        proof: Option<&[u8]>,
    ) -> Result<Arc<AuthorityNode>> {
        let options = node.options().clone();
        if let Err(e) = node.shutdown().await {
            tracing::warn!(node_id = %options.node_id, "stop the old raft: {e}");
        }
        let carried = node.carried();
        // Give the old incarnation's tasks a moment to drop their handles.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(path) = retire_storage(&options.data_dir, old_term)? {
            tracing::warn!(node_id = %options.node_id, retired = %path.display(), "raft storage retired");
        }
        carried.guard.set_term(new_term);
        if let Some(proof) = proof {
            carried.guard.set_own_proof(proof);
        }
        let fresh = AuthorityNode::start_with(options, Some(carried)).await?;
        self.replace(fresh.clone());
        Ok(fresh)
    }
}

async fn add_with_retry(
    node: &AuthorityNode,
    member: Member,
    deadline: tokio::time::Instant,
) -> Result<()> {
    let timing = node.options().timing;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = tokio::time::timeout(
            remaining.min(timing.election_timeout_max * 4),
            node.add_voter(member.clone()),
        )
        .await;
        match attempt {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(Error::Raft(format!(
                    "{} did not catch up before the deadline",
                    member.node_id
                )));
            }
            _ => tokio::time::sleep(timing.heartbeat * 2).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: an order is taken only inside the node's clock window, and one
    // outside it is refused with its own code. Method: issue times around
    // a fixed "now", at and past both edges.
    #[test]
    fn an_order_outside_the_clock_window_is_refused_with_its_code() {
        let now = UnixMillis(1_000_000_000);
        for inside in [now.0, now.0 - ORDER_AGE_MS_MAX, now.0 + ORDER_SKEW_MS_MAX] {
            assert!(check_age(now, inside).is_ok(), "{inside}");
        }
        for outside in [now.0 - ORDER_AGE_MS_MAX - 1, now.0 + ORDER_SKEW_MS_MAX + 1] {
            let code = check_age(now, outside).err().map(|e| e.code().to_string());
            let expected = rap_core::codes::ORDER_OUTSIDE_WINDOW;
            assert_eq!(code.as_deref(), Some(expected), "{outside}");
        }
    }
}
