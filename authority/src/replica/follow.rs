//! How a cache replica fills itself: from one voter at a time, as a
//! storage-node caller of its `ShardService`.
//!
//! 1. `GetShard cache/<self>`: the assignment, verified and kept like any
//!    envelope (an older one than kept is refused as a rollback, and the
//!    voter is left for the next one).
//! 2. Every kept scope that the assignment no longer names is deleted
//!    (its mark stays).
//! 3. `WatchShards` over the assignment's scopes, `cache/<self>` and
//!    `trust/root`, from the versions kept (in streams of at most
//!    [`WATCH_SCOPES_MAX`] scopes): each new version is verified and kept,
//!    whatever has arrived together (up to [`ACCEPT_BATCH_MAX`]) in one
//!    durable transaction.
//!    A new assignment starts again at 1 with the same voter.
//! 4. Every [`CONFIRM_INTERVAL`] the assignment is asked for again; the
//!    answer's staleness is what this cache reports as its own
//!    ([`CacheReplica::confirm`]).
//!
//! Any error (the voter unreachable, a refusal, an envelope that does not
//! verify: the voter served something bad, a voter that reports `fenced`:
//! a promotion superseded its group) leaves that voter for the next one
//! after [`RETRY_PAUSE`]; the refusal is logged with its code.

use super::CacheReplica;
use crate::cache::ACCEPT_BATCH_MAX;
use crate::error::{Error, Result};
use crate::limits::{SHARD_RESPONSE_BYTES_MAX, WATCH_SCOPES_MAX};
use crate::network::NetworkConfig;
use futures::{FutureExt, StreamExt};
use rap_core::tls::pin::ExpectedPeer;
use rap_proto::envelope::Scope;
use rap_proto::ids::NodeId;
use rap_proto::pb;
use rap_proto::pb::shard_service_client::ShardServiceClient;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;

/// How often a cache replica asks a voter for its assignment again (and
/// so confirms that it is current).
pub const CONFIRM_INTERVAL: Duration = Duration::from_secs(2);
/// Pause before trying the next voter after one failed.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How long one unary request to a voter may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most voters a cache replica is given to fill itself from.
pub const SOURCES_MAX: usize = 16;

/// A voter to fill from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Its storage node id (its certificate must name it).
    pub node_id: NodeId,
    /// Its gRPC address, `host:port`.
    pub address: String,
}

/// Fills `replica` from `sources` (round robin, starting with the first)
/// until `stop` turns true.
pub async fn follow(
    replica: Arc<CacheReplica>,
    sources: Vec<Source>,
    network: NetworkConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    if sources.is_empty() || sources.len() > SOURCES_MAX {
        return Err(Error::InvalidRequest(format!(
            "a cache replica fills itself from 1 to {SOURCES_MAX} voters, got {}",
            sources.len()
        )));
    }
    let mut next = 0usize;
    loop {
        let source = &sources[next % sources.len()];
        let outcome = tokio::select! {
            outcome = follow_one(&replica, source, &network) => outcome,
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
        };
        match outcome {
            // A new assignment: plan again with the same voter.
            Ok(()) => continue,
            Err(error) => {
                warn(
                    &replica,
                    source,
                    &error,
                    "cache fill from this voter failed; trying the next",
                );
                next = next.wrapping_add(1);
                tokio::select! {
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                    _ = stop.wait_for(|stop| *stop) => return Ok(()),
                }
            }
        }
    }
}

/// One round with one voter: the assignment, then watch until it changes
/// (`Ok`) or something fails.
async fn follow_one(
    replica: &CacheReplica,
    source: &Source,
    network: &NetworkConfig,
) -> Result<()> {
    let channel = crate::network::channel(
        network,
        &source.address,
        &ExpectedPeer::storage_named(source.node_id.as_str()),
        None,
    )?;
    let mut client =
        ShardServiceClient::new(channel).max_decoding_message_size(SHARD_RESPONSE_BYTES_MAX);
    let own = Scope::Cache(replica.node_id().clone()).to_string();
    let assignment_version = fetch_assignment(replica, &mut client, source, &own).await?;
    let Some(assignment) = replica.assignment()? else {
        return Err(Error::NotFound(format!("no {own} yet")));
    };
    let mut wanted: BTreeSet<String> = assignment
        .scopes
        .into_iter()
        .filter(|scope| !scope.starts_with("cache/"))
        .collect();
    wanted.insert(own.clone());
    wanted.insert(Scope::TrustRoot.to_string());
    let gone = replica.retain(&wanted)?;
    tracing::info!(
        cluster_id = %replica.cluster_id(),
        node_id = %replica.node_id(),
        source = %source.node_id,
        assignment = assignment_version,
        scopes = wanted.len(),
        deleted = gone.len(),
        "cache replica follows its assignment"
    );

    // trust/root first: a rotation is followed before what it signs.
    let mut order: Vec<String> = vec![Scope::TrustRoot.to_string()];
    order.extend(
        wanted
            .iter()
            .filter(|s| **s != Scope::TrustRoot.to_string())
            .cloned(),
    );
    let mut streams = Vec::new();
    for chunk in order.chunks(WATCH_SCOPES_MAX) {
        let known = chunk
            .iter()
            .map(|scope| pb::ScopeVersion {
                scope: scope.clone(),
                version: replica.version(scope),
            })
            .collect();
        let request = pb::WatchShardsRequest {
            cluster_id: replica.cluster_id().to_string(),
            known,
        };
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, client.watch_shards(request))
            .await
            .map_err(|_| {
                Error::Unreachable(format!("WatchShards: no answer in {REQUEST_TIMEOUT:?}"))
            })?
            .map_err(|status| refused_by(source, status))?
            .into_inner();
        streams.push(stream);
    }
    let mut merged = futures::stream::select_all(streams);
    let mut confirm = tokio::time::interval(CONFIRM_INTERVAL);
    confirm.tick().await;
    loop {
        tokio::select! {
            item = merged.next() => {
                let first = match item {
                    Some(Ok(answer)) => answer,
                    Some(Err(status)) => return Err(refused_by(source, status)),
                    None => return Err(ended(source)),
                };
                // What else has arrived goes into the same transaction.
                let mut batch = vec![first];
                let mut after: Option<Error> = None;
                while batch.len() < ACCEPT_BATCH_MAX {
                    match merged.next().now_or_never() {
                        Some(Some(Ok(answer))) => batch.push(answer),
                        Some(Some(Err(status))) => {
                            after = Some(refused_by(source, status));
                            break;
                        }
                        Some(None) => {
                            after = Some(ended(source));
                            break;
                        }
                        None => break,
                    }
                }
                // Nothing from a voter that says it is fenced is kept.
                for staleness in batch.iter().filter_map(|a| a.staleness.as_ref()) {
                    deposed(source, staleness)?;
                }
                let envelopes: Vec<&[u8]> = batch.iter().map(|a| a.envelope.as_slice()).collect();
                let mut refused = None;
                let mut reassigned = false;
                for outcome in replica.accept_batch(&envelopes)? {
                    match outcome {
                        Ok(record) => {
                            let scope = rap_proto::envelope::decode(&record.envelope)?.header.scope;
                            reassigned |= scope.to_string() == own && record.version.0 > assignment_version;
                        }
                        Err(error) => {
                            warn(replica, source, &error, "cache replica refused an envelope");
                            refused.get_or_insert(error);
                        }
                    }
                }
                if let Some(staleness) = batch.last().and_then(|a| a.staleness.as_ref()) {
                    replica.confirm(staleness);
                }
                if let Some(error) = refused.or(after) {
                    return Err(error);
                }
                if reassigned {
                    return Ok(());
                }
            }
            _ = confirm.tick() => {
                let version = fetch_assignment(replica, &mut client, source, &own).await?;
                if version > assignment_version {
                    return Ok(());
                }
            }
        }
    }
}

/// Asks for the assignment; keeps it when newer. Returns its version.
async fn fetch_assignment(
    replica: &CacheReplica,
    client: &mut ShardServiceClient<Channel>,
    source: &Source,
    own: &str,
) -> Result<u64> {
    let request = pb::GetShardRequest {
        cluster_id: replica.cluster_id().to_string(),
        scope: own.to_string(),
        min_version: 0,
    };
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, client.get_shard(request))
        .await
        .map_err(|_| {
            Error::Unreachable(format!("GetShard {own}: no answer in {REQUEST_TIMEOUT:?}"))
        })?
        .map_err(|status| refused_by(source, status))?
        .into_inner();
    if let Some(staleness) = &answer.staleness {
        deposed(source, staleness)?;
    }
    let decoded = rap_proto::envelope::decode(&answer.envelope)?;
    let offered = decoded.header.version.0;
    let held = replica.version(own);
    if offered < held {
        return Err(Error::Refused {
            code: "ROLLBACK".to_string(),
            message: format!("the voter serves {own} version {offered}; this cache holds {held}"),
        });
    }
    if offered > held {
        keep(replica, &answer.envelope, source)?;
    }
    if let Some(staleness) = &answer.staleness {
        replica.confirm(staleness);
    }
    Ok(offered)
}

/// Verifies and keeps one envelope a voter sent.
fn keep(
    replica: &CacheReplica,
    envelope: &[u8],
    source: &Source,
) -> Result<crate::state::ShardRecord> {
    replica
        .accept(envelope)
        .inspect_err(|error| warn(replica, source, error, "cache replica refused an envelope"))
}

/// Logs `error` of the fill from `source`, with the ids and its code.
fn warn(replica: &CacheReplica, source: &Source, error: &Error, what: &str) {
    tracing::warn!(
        cluster_id = %replica.cluster_id(),
        node_id = %replica.node_id(),
        source = %source.node_id,
        code = error.code(),
        "{what}: {error}"
    );
}

/// Refuses a voter that reports `fenced`: a promotion superseded its
/// group, so what it holds is the old side's and will not move again; the
/// cache fills from the next voter.
fn deposed(source: &Source, staleness: &pb::Staleness) -> Result<()> {
    if staleness.partition_view == pb::PartitionView::Fenced as i32 {
        return Err(Error::Refused {
            code: rap_core::codes::FENCED.to_string(),
            message: format!(
                "voter {} is fenced (a promotion superseded its group); filling from the next voter",
                source.node_id
            ),
        });
    }
    Ok(())
}

/// A watch the voter ended.
fn ended(source: &Source) -> Error {
    Error::Unreachable(format!("voter {} ended the watch", source.node_id))
}

/// A refusal from a voter, as a typed error.
fn refused_by(source: &Source, status: tonic::Status) -> Error {
    Error::Refused {
        code: rap_core::codes::error_detail(&status)
            .map(|d| d.code)
            .unwrap_or_else(|| format!("{:?}", status.code())),
        message: format!(
            "voter {}: {}",
            source.node_id,
            status.message().chars().take(300).collect::<String>()
        ),
    }
}
