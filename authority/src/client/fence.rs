//! Fences and publications as a client asks the group for them: one
//! storage node after another, until one grants or a refusal is final.

use super::authority_client;
use crate::error::{Error, Result};
use crate::network::NetworkConfig;
use rap_core::codes::{self, error_detail};
use rap_core::tls::pin::ExpectedPeer;
use rap_proto::pb;
use rap_proto::pb::authority_service_client::AuthorityServiceClient;
use std::future::Future;
use std::time::Duration;
use tonic::transport::Channel;

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

/// How long each node after it in a round gets to grant, once a node has
/// answered `NO_QUORUM` from a minority, before that refusal is final.
pub const AFTER_MINORITY_WAIT: Duration = Duration::from_millis(1_000);

/// Asks the storage nodes `peers`, in order, until one grants a fence,
/// within `timeout` overall.
///
/// * `NO_QUORUM` from a node that reaches fewer than a majority is final
///   at the end of that round: the nodes after it are still asked, each
///   for at most [`AFTER_MINORITY_WAIT`], since the caller may reach the
///   majority that node is cut off from. If none grants and none showed a
///   majority at work (`NOT_LEADER`, or `NO_QUORUM` from a node that
///   reaches a majority), the minority's refusal stands at once: a
///   minority refuses fast.
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
        let mut minority: Option<(u32, u32)> = None;
        let mut majority_at_work = false;
        for peer in peers {
            let address = &peer.address;
            let mut remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                break;
            }
            if minority.is_some() {
                remaining = remaining.min(AFTER_MINORITY_WAIT);
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
                        // A minority: final once the rest of this round
                        // has had its chance.
                        minority.get_or_insert(seen);
                        continue;
                    }
                    majority_at_work = true;
                    if best_no_quorum.is_none_or(|best| seen.0 > best.0) {
                        best_no_quorum = Some(seen);
                    }
                }
                Some(detail) if detail.code == codes::NOT_LEADER => {
                    majority_at_work = true;
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
        if let Some((reachable_voters, total_voters)) = minority
            && !majority_at_work
        {
            return Err(Error::NoQuorum {
                reachable_voters,
                total_voters,
            });
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
/// nothing), asking the storage nodes `peers` in order ([`first_answer`]).
pub async fn publish(
    network: &NetworkConfig,
    peers: &[StoragePeer],
    fence: pb::FencingToken,
    envelopes: Vec<Vec<u8>>,
    timeout: Duration,
) -> Result<pb::PublishShardsResponse> {
    let request = pb::PublishShardsRequest {
        fence: Some(fence),
        envelopes,
    };
    first_answer(network, peers, timeout, |mut client| {
        let request = request.clone();
        async move { client.publish_shards(request).await }
    })
    .await
}

/// The group's newest shard of each of `request.scopes`, read
/// linearizably on the leader (followers forward), asking the storage
/// nodes `peers` in order ([`first_answer`]).
pub async fn shard_heads(
    network: &NetworkConfig,
    peers: &[StoragePeer],
    request: pb::ShardHeadsRequest,
    timeout: Duration,
) -> Result<pb::ShardHeadsResponse> {
    first_answer(network, peers, timeout, |mut client| {
        let request = request.clone();
        async move { client.shard_heads(request).await }
    })
    .await
}

/// Asks the storage nodes `peers` in order, each within `timeout`, until
/// one answers: `NOT_LEADER` and transport failures move on; `NO_QUORUM`
/// moves on too (the caller may reach the majority that node is cut off
/// from), each node after it asked for at most [`AFTER_MINORITY_WAIT`],
/// and is the answer if no node grants; any other refusal is final; no
/// answer at all is [`Error::Unreachable`].
async fn first_answer<T, F, Fut>(
    network: &NetworkConfig,
    peers: &[StoragePeer],
    timeout: Duration,
    mut call: F,
) -> Result<T>
where
    F: FnMut(AuthorityServiceClient<Channel>) -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    let mut last = String::from("no storage node recorded");
    let mut no_quorum = None;
    for peer in peers {
        let address = &peer.address;
        let client = authority_client(network, address, &peer.expected())?;
        let within = if no_quorum.is_some() {
            timeout.min(AFTER_MINORITY_WAIT)
        } else {
            timeout
        };
        match tokio::time::timeout(within, call(client)).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => match final_refusal(&status) {
                Some(error @ Error::NoQuorum { .. }) => {
                    last = format!("{address}: {}", status.message());
                    no_quorum.get_or_insert(error);
                }
                Some(error) => return Err(error),
                None => last = format!("{address}: {}", status.message()),
            },
            Err(_) => last = format!("{address}: no answer"),
        }
    }
    Err(no_quorum.unwrap_or(Error::Unreachable(last)))
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
