//! Fences and publications as a client asks the group for them: one
//! storage node after another, until one grants or a refusal is final.

use super::authority_client;
use crate::error::{Error, Result};
use crate::network::NetworkConfig;
use rap_core::codes::{self, error_detail};
use rap_core::tls::pin::ExpectedPeer;
use rap_proto::pb;
use std::time::Duration;

/// Pause between two rounds over a cluster's storage nodes while no fence
/// is granted (an election is running, or a lease is being renewed).
pub const FENCE_ROUND_PAUSE: Duration = Duration::from_millis(100);

/// A storage node of a cluster's group, as a client dials it: its
/// certificate must name this node id (storage kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoragePeer {
    /// The storage node's id.
    pub node_id: String,
    /// Its gRPC address, `host:port`.
    pub address: String,
}

impl StoragePeer {
    /// Whom the TLS client expects at this address.
    pub fn expected(&self) -> ExpectedPeer {
        ExpectedPeer::storage_named(&self.node_id)
    }
}

/// Asks the storage nodes `peers`, in order, until one grants a fence,
/// within `timeout` overall.
///
/// * `NO_QUORUM` from a node that reaches fewer than a majority is final
///   at once (a minority refuses fast).
/// * `NO_QUORUM` although a majority is reachable (a leader whose quorum
///   lease lapsed under load), `NOT_LEADER` (an election is running) and
///   transport failures move on to the next node; after a round without a
///   grant the round is repeated after [`FENCE_ROUND_PAUSE`] until the
///   deadline.
/// * Any other refusal (term mismatch, fenced, wrong cluster) is final:
///   [`Error::Refused`] with the node's code.
///
/// At the deadline, the best `NO_QUORUM` seen (or `0/n` when no node could
/// be reached) is returned. No peers at all is [`Error::Unreachable`].
pub async fn acquire_fence(
    network: &NetworkConfig,
    cluster_id: &str,
    peers: &[StoragePeer],
    expected_term: u64,
    purpose: &str,
    timeout: Duration,
) -> Result<pb::FencingToken> {
    if peers.is_empty() {
        return Err(Error::Unreachable(format!(
            "no storage node of cluster {cluster_id} is recorded"
        )));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut best_no_quorum: Option<(u32, u32)> = None;
    let mut last_other = String::new();
    loop {
        for peer in peers {
            let address = &peer.address;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                break;
            }
            let mut client = match authority_client(network, address, &peer.expected()) {
                Ok(client) => client,
                Err(e) => {
                    last_other = e.to_string();
                    continue;
                }
            };
            let call = client.acquire_fence(pb::AcquireFenceRequest {
                cluster_id: cluster_id.to_string(),
                purpose: purpose.to_string(),
                expected_term,
            });
            let status = match tokio::time::timeout(remaining, call).await {
                Ok(Ok(response)) => {
                    return response.into_inner().fence.ok_or_else(|| {
                        Error::InvalidRequest(format!("{address}: fence response without a fence"))
                    });
                }
                Ok(Err(status)) => status,
                Err(_) => {
                    last_other = format!("{address}: no answer in time");
                    continue;
                }
            };
            match error_detail(&status) {
                Some(detail) if detail.code == codes::NO_QUORUM => {
                    let seen = (detail.reachable_voters, detail.total_voters);
                    if seen.0 <= seen.1 / 2 {
                        // A minority: refuse fast.
                        return Err(Error::NoQuorum {
                            reachable_voters: seen.0,
                            total_voters: seen.1,
                        });
                    }
                    if best_no_quorum.is_none_or(|best| seen.0 > best.0) {
                        best_no_quorum = Some(seen);
                    }
                }
                Some(detail) if detail.code == codes::NOT_LEADER => {
                    last_other = format!("{address}: {}", detail.message);
                }
                Some(detail) => {
                    return Err(Error::Refused {
                        code: detail.code,
                        message: detail.message,
                    });
                }
                None => last_other = format!("{address}: {}", status.message()),
            }
        }
        if tokio::time::Instant::now() + FENCE_ROUND_PAUSE >= deadline {
            break;
        }
        tokio::time::sleep(FENCE_ROUND_PAUSE).await;
    }
    let (reachable_voters, total_voters) =
        best_no_quorum.unwrap_or((0, u32::try_from(peers.len()).unwrap_or(u32::MAX)));
    tracing::warn!(cluster_id, reachable_voters, total_voters, last = %last_other, "no fence granted in time");
    Err(Error::NoQuorum {
        reachable_voters,
        total_voters,
    })
}

/// Publishes signed envelopes to the cluster's group under `fence` (all or
/// nothing), asking the storage nodes `peers` in order, each within
/// `timeout`: `NOT_LEADER` and transport failures move on, `NO_QUORUM` and
/// any other refusal are final, and no answer at all is
/// [`Error::Unreachable`].
pub async fn publish(
    network: &NetworkConfig,
    peers: &[StoragePeer],
    fence: pb::FencingToken,
    envelopes: Vec<Vec<u8>>,
    timeout: Duration,
) -> Result<pb::PublishShardsResponse> {
    let mut last = String::from("no storage node recorded");
    for peer in peers {
        let address = &peer.address;
        let mut client = authority_client(network, address, &peer.expected())?;
        let call = client.publish_shards(pb::PublishShardsRequest {
            fence: Some(fence.clone()),
            envelopes: envelopes.clone(),
        });
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => match final_refusal(&status) {
                Some(error) => return Err(error),
                None => last = format!("{address}: {}", status.message()),
            },
            Err(_) => last = format!("{address}: no answer"),
        }
    }
    Err(Error::Unreachable(last))
}

/// The group's newest shard of each of `request.scopes`, read
/// linearizably on the leader (followers forward), asking the storage
/// nodes `peers` in order, each within `timeout`: `NOT_LEADER` and
/// transport failures move on, `NO_QUORUM` and any other refusal are
/// final, and no answer at all is [`Error::Unreachable`].
pub async fn shard_heads(
    network: &NetworkConfig,
    peers: &[StoragePeer],
    request: pb::ShardHeadsRequest,
    timeout: Duration,
) -> Result<pb::ShardHeadsResponse> {
    let mut last = String::from("no storage node recorded");
    for peer in peers {
        let address = &peer.address;
        let mut client = authority_client(network, address, &peer.expected())?;
        match tokio::time::timeout(timeout, client.shard_heads(request.clone())).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => match final_refusal(&status) {
                Some(error) => return Err(error),
                None => last = format!("{address}: {}", status.message()),
            },
            Err(_) => last = format!("{address}: no answer"),
        }
    }
    Err(Error::Unreachable(last))
}

/// The error a refusal ends a round with, or `None` when the next storage
/// node should be asked (`NOT_LEADER`, or a failure without a typed detail).
fn final_refusal(status: &tonic::Status) -> Option<Error> {
    match error_detail(status) {
        Some(detail) if detail.code == codes::NOT_LEADER => None,
        Some(detail) if detail.code == codes::NO_QUORUM => Some(Error::NoQuorum {
            reachable_voters: detail.reachable_voters,
            total_voters: detail.total_voters,
        }),
        Some(detail) => Some(Error::Refused {
            code: detail.code,
            message: detail.message,
        }),
        None => None,
    }
}
