//! The client side of the group's lifecycle: bootstrap
//! ([`bootstrap_group`]), promotion and rejoin:
//! survey the survivors, pick the seed, sign the order with the cluster's
//! snapshot-signing key and deliver it. [`crate::promotion`] is the storage
//! node's side; `rap-configstore bootstrap|promote|rejoin` and the control
//! plane's `AdminService.BootstrapCluster|PromotePartition|RejoinNode` are
//! the callers.
//!
//! A promotion has two steps so that a caller can record the new term
//! between them (the control plane writes term T+1 to PostgreSQL after the
//! checks and before the order goes out):
//! 1. [`plan_promotion`] asks every survivor's `AuthorityService.Status`
//!    and refuses, changing nothing, when a survivor still sees a quorum
//!    ([`QUORUM_PRESENT`]), is fenced ([`SURVIVOR_FENCED`]), answers as
//!    another node ([`WRONG_NODE`]), or when the survivors disagree on the
//!    authority term ([`TERMS_DISAGREE`]) or are not at the term the caller
//!    expects ([`UNEXPECTED_TERM`]). The seed is the survivor with the
//!    highest applied index (ties: the smallest node id).
//! 2. [`send_promotion`] signs the order and sends it to the other
//!    survivors first (they restart empty at T+1 and wait), then to the
//!    seed (it re-forms the group from its state and adds them).
//!
//! [`promote_survivors`] runs both.
//!
//! **Resuming.** If a promotion stopped half-way (the seed never got the
//! order), the survivors that did restart report authority term 0 and no
//! voters ([`SurvivorStatus::awaits_seed`]). A plan counts them as
//! survivors that already restarted, takes the term and the seed from the
//! others, and [`send_promotion`] sends them nothing: running the same
//! promotion again completes it. Once the seed has formed the new group
//! the survivors see a quorum again, and a re-run is refused with
//! [`QUORUM_PRESENT`].
//!
//! Rejoin ([`rejoin_member`]) brings an old member into the current term:
//! it retires the member's Raft storage with a signed rejoin order, then
//! adds it as a voter through the group. A member that already restarted
//! empty gets no second order, so a rejoin that failed at the add step can
//! be run again.

use crate::client::authority_client;
use crate::convert::{member_of, voter_spec_of_status};
use crate::error::{Error, Result};
use rap_core::codes::error_detail;
use rap_core::tls::pin::ExpectedPeer;
use rap_proto::envelope::{Digest, SnapshotSigner};
use rap_proto::ids::{AuthorityTerm, ClusterId};
use rap_proto::pb;
use rap_proto::time::UnixMillis;
use std::collections::BTreeSet;
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long one `Status` call may take.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one voter's `Bootstrap` may take (it waits for the first
/// leader and the genesis entry: up to 20 election timeouts).
pub const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one `Promote` call may take. The seed initializes a group,
/// waits for its leadership (up to 20 election timeouts), commits the
/// reseed and adds the other survivors; cutting the call short would drop
/// the node's handler half-way, so this is generous.
pub const PROMOTE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one `Rejoin` call may take (stop, retire storage, restart).
pub const REJOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a rejoin waits for the group to show a quorum before it
/// refuses `NO_QUORUM` (a member added a moment ago counts as reachable
/// once the answering node has probed it).
pub const REJOIN_QUORUM_WAIT: Duration = Duration::from_secs(3);
/// Pause between two looks at the group's view while a rejoin waits.
pub const REJOIN_QUORUM_POLL: Duration = Duration::from_millis(200);
/// How long the `AddVoter` of a rejoin may take (the member catches up as
/// a learner first).
pub const ADD_VOTER_TIMEOUT: Duration = Duration::from_secs(300);

/// Refusal code: a survivor still sees a quorum of its group, so the group
/// is not lost and promotion is refused.
pub const QUORUM_PRESENT: &str = "QUORUM_PRESENT";
/// Refusal code: a survivor is fenced by a higher authority term (it needs
/// a rejoin, not a promotion).
pub const SURVIVOR_FENCED: &str = "SURVIVOR_FENCED";
/// Refusal code: the survivors are at different authority terms.
pub const TERMS_DISAGREE: &str = "TERMS_DISAGREE";
/// Refusal code: the survivors (or the group) are not at the authority
/// term the caller expected.
pub const UNEXPECTED_TERM: &str = "UNEXPECTED_TERM";
/// Refusal code: an address answered as another node or cluster.
pub const WRONG_NODE: &str = "WRONG_NODE";
/// Refusal code: no survivor holds the old group's state (all of them
/// already restarted empty), so there is nothing to seed from.
pub const NO_SEED: &str = "NO_SEED";

/// Distinguishes the orders of one process issued in the same millisecond.
static ORDER_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Bootstraps a new group: sends the same `Bootstrap` (voters, genesis
/// trust root) to every voter at once, since each node admits Raft RPCs
/// only from members of the group it holds. Returns the answer of a voter
/// that initialized. Refused (typed, final) when a voter refuses for a
/// reason other than already belonging to the group; retryable
/// ([`Error::Raft`], nothing to undo) when a voter could not be reached:
/// start it and run the same bootstrap again (the others answer
/// `ALREADY_INITIALIZED` and the missing one joins).
pub async fn bootstrap_group(
    network: &crate::network::NetworkConfig,
    request: &pb::BootstrapGroupRequest,
) -> Result<pb::BootstrapGroupResponse> {
    if request.voters.len() > crate::limits::VOTERS_MAX {
        return Err(Error::Oversize {
            what: "voters",
            limit: crate::limits::VOTERS_MAX,
            got: request.voters.len(),
        });
    }
    let calls = request.voters.iter().map(|voter| async move {
        let context = format!("bootstrap of {}", voter.node_id);
        let answer = match member_of(voter).and_then(|member| {
            authority_client(
                network,
                &member.address,
                &ExpectedPeer::storage_named(&member.node_id),
            )
        }) {
            Ok(mut client) => {
                call(
                    context,
                    BOOTSTRAP_TIMEOUT,
                    client.bootstrap(request.clone()),
                )
                .await
            }
            Err(e) => Err(e),
        };
        (voter.node_id.clone(), answer)
    });
    let mut initialized = None;
    let mut unreachable = Vec::new();
    for (node_id, answer) in futures::future::join_all(calls).await {
        match answer {
            Ok(response) => initialized = Some(response),
            Err(Error::Refused { code, .. }) if code == "ALREADY_INITIALIZED" => {}
            Err(
                e @ (Error::Refused { .. } | Error::InvalidRequest(_) | Error::Oversize { .. }),
            ) => {
                return Err(e);
            }
            Err(e) => unreachable.push(format!("{node_id}: {e}")),
        }
    }
    if !unreachable.is_empty() {
        return Err(Error::Raft(format!(
            "bootstrap incomplete ({}); start the missing voters and run the same bootstrap again",
            unreachable.join("; ")
        )));
    }
    initialized.ok_or_else(|| {
        refused(
            "ALREADY_INITIALIZED",
            "every voter already belongs to a group: nothing was bootstrapped",
        )
    })
}

/// One survivor and its answer to `Status`.
#[derive(Clone, Debug)]
pub struct SurvivorStatus {
    /// Who and where.
    pub spec: pb::VoterSpec,
    /// What it said.
    pub status: pb::AuthorityStatusResponse,
}

impl SurvivorStatus {
    /// Whether this survivor already carried out the promotion order and
    /// restarted empty, waiting for the seed to add it: no authority term
    /// (0), no voters.
    pub fn awaits_seed(&self) -> bool {
        self.status.authority_term == 0 && self.status.voters.is_empty()
    }
}

/// A checked promotion: the term it replaces, the survivors and the seed.
#[derive(Clone, Debug)]
pub struct PromotionPlan {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// The authority term being replaced (T).
    pub current_term: AuthorityTerm,
    /// The new authority term (T+1).
    pub new_term: AuthorityTerm,
    /// Every survivor, in the order given.
    pub survivors: Vec<SurvivorStatus>,
    /// The survivor the new group is formed from.
    pub seed_node_id: String,
    /// Its applied index in the old group.
    pub seed_applied_index: u64,
}

impl PromotionPlan {
    /// The survivors' node ids, in the order given.
    pub fn survivor_ids(&self) -> Vec<String> {
        self.survivors
            .iter()
            .map(|s| s.spec.node_id.clone())
            .collect()
    }

    /// Whether some survivors already restarted (a resumed promotion).
    pub fn is_resumed(&self) -> bool {
        self.survivors.iter().any(SurvivorStatus::awaits_seed)
    }
}

/// What happened on one survivor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromotionStep {
    /// It retired its storage and restarted empty at the new term.
    Restarted,
    /// It had done so already (a resumed promotion); nothing was sent.
    AlreadyRestarted,
    /// The seed: it formed the new group.
    Seeded {
        /// The new group's leader, when known.
        leader_id: String,
    },
}

/// One survivor's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SurvivorOutcome {
    /// The survivor.
    pub node_id: String,
    /// What happened.
    pub step: PromotionStep,
}

/// What a promotion did.
#[derive(Clone, Debug)]
pub struct PromotionReport {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// The term replaced.
    pub old_term: AuthorityTerm,
    /// The new term, as the seed reported it.
    pub new_term: AuthorityTerm,
    /// The survivor the group was formed from.
    pub seed_node_id: String,
    /// Its applied index.
    pub seed_applied_index: u64,
    /// The new group's leader, when known.
    pub leader_id: String,
    /// Per survivor, in the order the order was delivered (the seed last).
    pub survivors: Vec<SurvivorOutcome>,
}

/// What a rejoin did.
#[derive(Clone, Debug)]
pub struct RejoinReport {
    /// The group's authority term the member joined.
    pub authority_term: AuthorityTerm,
    /// Whether a rejoin order was sent (false: the member had restarted
    /// empty already, or was a member already).
    pub order_sent: bool,
    /// Whether the member was a voter of the current group already
    /// (nothing was done).
    pub already_member: bool,
    /// The group's status after the member was added.
    pub status: pb::AuthorityStatusResponse,
}

fn refused(code: &str, message: impl Into<String>) -> Error {
    Error::Refused {
        code: code.to_string(),
        message: message.into(),
    }
}

/// A storage node's refusal, read back from its status: typed when it
/// carries a `rap.v1.ErrorDetail`, a retryable [`Error::Raft`] when the
/// call itself failed (unreachable, reset).
pub fn remote_error(context: impl Display, status: &tonic::Status) -> Error {
    match error_detail(status) {
        Some(detail) if detail.code == "NO_QUORUM" => Error::NoQuorum {
            reachable_voters: detail.reachable_voters,
            total_voters: detail.total_voters,
        },
        Some(detail) => Error::Refused {
            code: detail.code,
            message: format!("{context}: {}", detail.message),
        },
        None => Error::Raft(format!("{context}: {}", status.message())),
    }
}

/// Runs one call with `timeout`; a status or a timeout becomes an [`Error`]
/// naming `context`.
async fn call<T>(
    context: impl Display,
    timeout: Duration,
    future: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, future).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(remote_error(context, &status)),
        Err(_) => Err(Error::Raft(format!(
            "{context}: no answer within {timeout:?}"
        ))),
    }
}

/// Asks the storage node `expected` at `address` for its status.
async fn status_of(
    network: &crate::network::NetworkConfig,
    cluster_id: &ClusterId,
    address: &str,
    expected: &ExpectedPeer,
    context: impl Display,
) -> Result<pb::AuthorityStatusResponse> {
    let mut client = authority_client(network, address, expected)?;
    call(
        context,
        STATUS_TIMEOUT,
        client.status(pb::AuthorityStatusRequest {
            cluster_id: cluster_id.to_string(),
        }),
    )
    .await
}

fn view_of(status: &pb::AuthorityStatusResponse) -> pb::PartitionView {
    pb::PartitionView::try_from(status.partition_view).unwrap_or_default()
}

/// Step 1 of a promotion: checks the survivors and picks the seed. Sends
/// no order and changes nothing anywhere. `expected_term`, when given, is
/// the term the survivors must be at (the one being replaced).
pub async fn plan_promotion(
    network: &crate::network::NetworkConfig,
    cluster_id: &ClusterId,
    survivors: &[pb::VoterSpec],
    expected_term: Option<AuthorityTerm>,
) -> Result<PromotionPlan> {
    if survivors.is_empty() {
        return Err(Error::InvalidRequest("no survivors given".into()));
    }
    if survivors.len() > crate::limits::VOTERS_MAX {
        return Err(Error::Oversize {
            what: "survivors",
            limit: crate::limits::VOTERS_MAX,
            got: survivors.len(),
        });
    }
    let distinct: BTreeSet<&str> = survivors.iter().map(|s| s.node_id.as_str()).collect();
    if distinct.len() != survivors.len() {
        return Err(Error::InvalidRequest(
            "a survivor is named more than once".into(),
        ));
    }
    let mut surveyed = Vec::with_capacity(survivors.len());
    for spec in survivors {
        member_of(spec)?;
        let status = status_of(
            network,
            cluster_id,
            &spec.address,
            &ExpectedPeer::storage_named(&spec.node_id),
            format!("status of survivor {}", spec.node_id),
        )
        .await?;
        if status.node_id != spec.node_id || status.cluster_id != cluster_id.as_str() {
            return Err(refused(
                WRONG_NODE,
                format!(
                    "{} answers as {} of cluster {}, not {} of {cluster_id}",
                    spec.address, status.node_id, status.cluster_id, spec.node_id
                ),
            ));
        }
        let view = view_of(&status);
        match view {
            pb::PartitionView::Healthy | pb::PartitionView::Degraded => {
                return Err(refused(
                    QUORUM_PRESENT,
                    format!(
                        "survivor {} still sees a quorum ({}); promotion is only for loss of quorum",
                        spec.node_id,
                        view.as_str_name()
                    ),
                ));
            }
            pb::PartitionView::Fenced => {
                return Err(refused(
                    SURVIVOR_FENCED,
                    format!(
                        "survivor {} is fenced by a higher authority term (it is at {}); rejoin it instead",
                        spec.node_id, status.authority_term
                    ),
                ));
            }
            pb::PartitionView::Minority | pb::PartitionView::Unspecified => {}
        }
        surveyed.push(SurvivorStatus {
            spec: spec.clone(),
            status,
        });
    }
    let holders: Vec<&SurvivorStatus> = surveyed.iter().filter(|s| !s.awaits_seed()).collect();
    let Some(first) = holders.first() else {
        return Err(refused(
            NO_SEED,
            "every survivor already restarted empty: none holds the old group's state to seed from",
        ));
    };
    let term = first.status.authority_term;
    if let Some(other) = holders.iter().find(|s| s.status.authority_term != term) {
        return Err(refused(
            TERMS_DISAGREE,
            format!(
                "survivors disagree on the authority term ({} is at {}, {} at {term})",
                other.spec.node_id, other.status.authority_term, first.spec.node_id
            ),
        ));
    }
    if let Some(expected) = expected_term
        && expected.0 != term
    {
        return Err(refused(
            UNEXPECTED_TERM,
            format!("the survivors are at authority term {term}, not the expected {expected}"),
        ));
    }
    let Some(seed) = holders.iter().max_by(|a, b| {
        a.status
            .applied_index
            .cmp(&b.status.applied_index)
            .then(b.spec.node_id.cmp(&a.spec.node_id))
    }) else {
        return Err(refused(NO_SEED, "no survivor to seed from"));
    };
    let new_term = term
        .checked_add(1)
        .ok_or_else(|| Error::InvalidRequest("authority term overflow".into()))?;
    Ok(PromotionPlan {
        cluster_id: cluster_id.clone(),
        current_term: AuthorityTerm(term),
        new_term: AuthorityTerm(new_term),
        seed_node_id: seed.spec.node_id.clone(),
        seed_applied_index: seed.status.applied_index,
        survivors: surveyed,
    })
}

/// Step 2 of a promotion: signs the order with `signer` (the cluster's
/// snapshot-signing key) and delivers it: the other survivors first, the
/// seed last. `on_step` sees each survivor's result as it happens.
pub async fn send_promotion<F>(
    network: &crate::network::NetworkConfig,
    plan: &PromotionPlan,
    signer: &SnapshotSigner,
    mut on_step: F,
) -> Result<PromotionReport>
where
    F: FnMut(&SurvivorOutcome),
{
    let now = UnixMillis::now().0;
    let nonce = ORDER_COUNTER.fetch_add(1, Ordering::Relaxed);
    let order = pb::PromotionOrder {
        cluster_id: plan.cluster_id.to_string(),
        current_term: plan.current_term.0,
        new_term: plan.new_term.0,
        survivors: plan.survivor_ids(),
        seed: Digest::of(format!("{now}/{}/{nonce}", std::process::id()).as_bytes())
            .0
            .to_vec(),
        issued_at_unix_ms: now,
        seed_node_id: plan.seed_node_id.clone(),
        seed_applied_index: plan.seed_applied_index,
    };
    let request = rap_proto::orders::sign_promotion(&order, signer);
    let mut outcomes = Vec::with_capacity(plan.survivors.len());
    let mut seed = None;
    for survivor in &plan.survivors {
        let node_id = survivor.spec.node_id.clone();
        if node_id == plan.seed_node_id {
            seed = Some(survivor);
            continue;
        }
        let step = if survivor.awaits_seed() {
            PromotionStep::AlreadyRestarted
        } else {
            let mut client = authority_client(
                network,
                &survivor.spec.address,
                &ExpectedPeer::storage_named(&survivor.spec.node_id),
            )?;
            call(
                format!("survivor {node_id}"),
                PROMOTE_TIMEOUT,
                client.promote(request.clone()),
            )
            .await?;
            PromotionStep::Restarted
        };
        let outcome = SurvivorOutcome { node_id, step };
        on_step(&outcome);
        outcomes.push(outcome);
    }
    let Some(seed) = seed else {
        return Err(Error::InvalidRequest(format!(
            "the seed {} is not among the survivors",
            plan.seed_node_id
        )));
    };
    let mut client = authority_client(
        network,
        &seed.spec.address,
        &ExpectedPeer::storage_named(&seed.spec.node_id),
    )?;
    let response = call(
        format!("seed {}", plan.seed_node_id),
        PROMOTE_TIMEOUT,
        client.promote(request),
    )
    .await?;
    let outcome = SurvivorOutcome {
        node_id: plan.seed_node_id.clone(),
        step: PromotionStep::Seeded {
            leader_id: response.leader_id.clone(),
        },
    };
    on_step(&outcome);
    outcomes.push(outcome);
    Ok(PromotionReport {
        cluster_id: plan.cluster_id.clone(),
        old_term: plan.current_term,
        new_term: AuthorityTerm(response.authority_term),
        seed_node_id: plan.seed_node_id.clone(),
        seed_applied_index: plan.seed_applied_index,
        leader_id: response.leader_id,
        survivors: outcomes,
    })
}

/// Loss-of-quorum recovery: [`plan_promotion`] then [`send_promotion`].
/// Refused (with nothing changed) while a survivor still sees a quorum.
pub async fn promote_survivors(
    network: &crate::network::NetworkConfig,
    cluster_id: &ClusterId,
    survivors: &[pb::VoterSpec],
    signer: &SnapshotSigner,
    expected_term: Option<AuthorityTerm>,
) -> Result<PromotionReport> {
    let plan = plan_promotion(network, cluster_id, survivors, expected_term).await?;
    send_promotion(network, &plan, signer, |_| {}).await
}

/// Adds `member` to the group that `endpoint` (an address and the storage
/// node expected there) serves, as a learner promoted once caught up.
/// First tells the joining node the members of `group` (a current status
/// of the group) with `PrepareJoin`: until it holds the membership, only
/// they may replicate to it. `context` names the `AddVoter` step in errors.
pub async fn add_voter(
    network: &crate::network::NetworkConfig,
    cluster_id: &ClusterId,
    endpoint: (&str, &ExpectedPeer),
    group: &pb::AuthorityStatusResponse,
    member: &pb::VoterSpec,
    context: impl Display,
) -> Result<pb::AuthorityStatusResponse> {
    let mut joining = authority_client(
        network,
        &member.address,
        &ExpectedPeer::storage_named(&member.node_id),
    )?;
    call(
        format!("prepare {} to join", member.node_id),
        STATUS_TIMEOUT,
        joining.prepare_join(pb::PrepareJoinRequest {
            cluster_id: cluster_id.to_string(),
            members: group.voters.iter().map(voter_spec_of_status).collect(),
        }),
    )
    .await?;
    let mut leader = authority_client(network, endpoint.0, endpoint.1)?;
    call(
        context,
        ADD_VOTER_TIMEOUT,
        leader.add_voter(pb::AddVoterRequest {
            cluster_id: cluster_id.to_string(),
            voter: Some(member.clone()),
        }),
    )
    .await
}

/// The first of `group` (other than `member`'s address) that answers
/// with the state of a current group: its address, the peer expected
/// there, and its status.
async fn current_group_status(
    network: &crate::network::NetworkConfig,
    cluster_id: &ClusterId,
    group: &[pb::VoterSpec],
    member: &pb::VoterSpec,
) -> Result<(String, ExpectedPeer, pb::AuthorityStatusResponse)> {
    let mut last_error = Error::InvalidRequest("no member of the current group given".into());
    for spec in group.iter().filter(|s| s.address != member.address) {
        let address = spec.address.as_str();
        let expected = ExpectedPeer::storage_named(&spec.node_id);
        match status_of(
            network,
            cluster_id,
            address,
            &expected,
            format!("status of {address}"),
        )
        .await
        {
            Ok(status) if status.authority_term == 0 || status.node_id == member.node_id => {
                last_error = refused(
                    WRONG_NODE,
                    format!(
                        "{address} ({}) holds no current group state",
                        status.node_id
                    ),
                );
            }
            Ok(status) => return Ok((address.to_string(), expected, status)),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// Brings the old member `member` back into the cluster's current term:
/// asks the group (the first of `group`, current members (an empty node id
/// accepts any storage node at that address), that answers with group
/// state) for its term, sends the member a signed rejoin order (it retires
/// its Raft storage and restarts empty), tells it the group's members
/// (`PrepareJoin`: only they may replicate to it) and adds it as a voter
/// through that node. Refused before anything changes when the group is
/// not at `expected_term` (when given), or has no quorum after
/// [`REJOIN_QUORUM_WAIT`].
pub async fn rejoin_member(
    network: &crate::network::NetworkConfig,
    cluster_id: &ClusterId,
    group: &[pb::VoterSpec],
    member: &pb::VoterSpec,
    signer: &SnapshotSigner,
    expected_term: Option<AuthorityTerm>,
) -> Result<RejoinReport> {
    member_of(member)?;
    let node_id = member.node_id.as_str();
    let member_peer = ExpectedPeer::storage_named(node_id);
    // A member added a moment ago (the previous rejoin) counts as
    // reachable only once the answering node has probed it: wait a little
    // for the group to show its quorum before refusing.
    let quorum_deadline = tokio::time::Instant::now() + REJOIN_QUORUM_WAIT;
    let (endpoint, endpoint_peer, group_status) = loop {
        let (endpoint, peer, status) =
            current_group_status(network, cluster_id, group, member).await?;
        if let Some(expected) = expected_term
            && expected.0 != status.authority_term
        {
            return Err(refused(
                UNEXPECTED_TERM,
                format!(
                    "the group is at authority term {}, not the expected {expected}",
                    status.authority_term
                ),
            ));
        }
        match view_of(&status) {
            pb::PartitionView::Healthy | pb::PartitionView::Degraded => {
                break (endpoint, peer, status);
            }
            _ if tokio::time::Instant::now() < quorum_deadline => {
                tokio::time::sleep(REJOIN_QUORUM_POLL).await;
            }
            _ => {
                // Nothing is retired while the group could not add the member.
                let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                return Err(Error::NoQuorum {
                    reachable_voters: count(status.voters.iter().filter(|v| v.reachable).count()),
                    total_voters: count(status.voters.len()),
                });
            }
        }
    };
    let term = AuthorityTerm(group_status.authority_term);
    let member_status = status_of(
        network,
        cluster_id,
        &member.address,
        &member_peer,
        format!("status of {node_id}"),
    )
    .await?;
    if member_status.node_id != node_id || member_status.cluster_id != cluster_id.as_str() {
        return Err(refused(
            WRONG_NODE,
            format!(
                "{} answers as {} of cluster {}, not {node_id} of {cluster_id}",
                member.address, member_status.node_id, member_status.cluster_id
            ),
        ));
    }
    let restarted_empty = member_status.authority_term == 0 && member_status.voters.is_empty();
    let is_voter = group_status.voters.iter().any(|v| v.node_id == node_id);
    if member_status.authority_term == term.0 && is_voter {
        return Ok(RejoinReport {
            authority_term: term,
            order_sent: false,
            already_member: true,
            status: group_status,
        });
    }
    if member_status.authority_term > term.0 {
        return Err(refused(
            UNEXPECTED_TERM,
            format!(
                "{node_id} is at authority term {}, ahead of the group's {term}",
                member_status.authority_term
            ),
        ));
    }
    let order_sent = !restarted_empty && member_status.authority_term < term.0;
    if order_sent {
        let order = pb::RejoinOrder {
            cluster_id: cluster_id.to_string(),
            authority_term: term.0,
            node_id: node_id.to_string(),
            issued_at_unix_ms: UnixMillis::now().0,
        };
        let mut old = authority_client(network, &member.address, &member_peer)?;
        call(
            node_id,
            REJOIN_TIMEOUT,
            old.rejoin(rap_proto::orders::sign_rejoin(&order, signer)),
        )
        .await?;
    }
    let status = add_voter(
        network,
        cluster_id,
        (&endpoint, &endpoint_peer),
        &group_status,
        member,
        format!(
            "add {node_id} as a voter (it restarted empty at term {term}; run the rejoin again to retry)"
        ),
    )
    .await?;
    Ok(RejoinReport {
        authority_term: term,
        order_sent,
        already_member: false,
        status,
    })
}
