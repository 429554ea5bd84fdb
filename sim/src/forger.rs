//! A host that is not a member of the group and forges Raft RPCs that
//! claim a higher authority term.
//!
//! At each offset of its plan (from the start of the workload) the forger
//! picks a storage node, a claimed sender (itself or a member), a claimed
//! term above the group's and a proof: none, garbage bytes, or a
//! promotion order correctly encoded and signed by a key the cluster does
//! not trust. It sends one `Vote` (garbage payload) and logs the answer
//! ([`Event::Forged`]). No promotion order is ever signed with the
//! cluster's key in the simulation, so the oracle demands that every such
//! RPC is refused and that no node is ever fenced.

use crate::events::{Event, EventLog, NodeIndex, node_name};
use crate::harness::{CLUSTER_ID, GRPC_PORT, now};
use crate::net;
use crate::seed::SimRng;
use prost::Message;
use rap_core::codes::error_detail;
use rap_proto::envelope::SnapshotSigner;
use rap_proto::pb;
use rap_proto::pb::raft_service_client::RaftServiceClient;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tonic::transport::Endpoint;

/// The forger host's name (not a member of any group).
pub const FORGER: &str = "forger";

/// Longest the forger waits for one answer.
pub const FORGERY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the forger does: one forged RPC at each offset from the start of
/// the workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForgerPlan {
    /// Offsets from the workload start, in order.
    pub at: Vec<Duration>,
}

/// Everything the forger host needs.
pub(crate) struct ForgerRun {
    pub(crate) plan: ForgerPlan,
    pub(crate) nodes: usize,
    pub(crate) rng: SimRng,
    pub(crate) log: EventLog,
    pub(crate) started: Arc<Mutex<Option<Duration>>>,
}

/// The proof a forgery carries.
fn proof(kind: u64, stranger: &SnapshotSigner, term: u64) -> (&'static str, Vec<u8>) {
    match kind {
        0 => ("none", Vec::new()),
        1 => ("garbage", vec![0xde, 0xad, 0xbe, 0xef]),
        _ => {
            let order = pb::PromotionOrder {
                cluster_id: CLUSTER_ID.into(),
                current_term: term - 1,
                new_term: term,
                survivors: vec![FORGER.into()],
                seed_node_id: FORGER.into(),
                ..Default::default()
            };
            (
                "stranger-signed",
                rap_proto::orders::sign_promotion(&order, stranger).encode_to_vec(),
            )
        }
    }
}

/// The forger host's future.
pub(crate) async fn forger(mut run: ForgerRun) -> turmoil::Result {
    // A key the cluster does not trust, drawn from the seed.
    let mut secret = [0u8; 32];
    for byte in &mut secret {
        *byte = u8::try_from(run.rng.below(256)).unwrap_or(0);
    }
    let stranger = SnapshotSigner::from_secret_bytes(&secret);
    let start = loop {
        if let Some(start) = *run.started.lock().unwrap_or_else(PoisonError::into_inner) {
            break start;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for offset in run.plan.at.clone() {
        let due = start + offset;
        let now_at = now();
        if due > now_at {
            tokio::time::sleep(due - now_at).await;
        }
        let node: NodeIndex = run.rng.index(run.nodes);
        let term = 2 + run.rng.below(4);
        let (proof_kind, proof) = proof(run.rng.below(3), &stranger, term);
        let from = if run.rng.chance(0.5) {
            FORGER.to_string()
        } else {
            node_name(run.rng.index(run.nodes))
        };
        let endpoint = Endpoint::from_shared(format!("http://{}:{GRPC_PORT}", node_name(node)))
            .map_err(|e| format!("forger endpoint: {e}"))?
            .connect_timeout(Duration::from_secs(1));
        let mut client = RaftServiceClient::new(net::connector()(&endpoint));
        let request = pb::RaftRequest {
            header: Some(pb::RaftRpcHeader {
                cluster_id: CLUSTER_ID.into(),
                authority_term: term,
                from_node_id: from.clone(),
                term_proof: proof,
            }),
            payload: vec![1, 2, 3],
        };
        let outcome = match tokio::time::timeout(FORGERY_TIMEOUT, client.vote(request)).await {
            Ok(Ok(_)) => "accepted".to_string(),
            Ok(Err(status)) => error_detail(&status)
                .map(|d| d.code)
                .unwrap_or_else(|| format!("transport {:?}", status.code())),
            Err(_) => "timed out".to_string(),
        };
        run.log.push(Event::Forged {
            at: now(),
            node,
            from,
            term,
            proof: proof_kind,
            outcome,
        });
    }
    Ok(())
}
