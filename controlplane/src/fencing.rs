//! Fenced mutations.
//!
//! A trust or policy mutation runs as:
//! 1. `BEGIN`; lock the cluster's current authority row
//!    (`cluster_authority_terms`, `FOR UPDATE`): no row → `NOT_BOOTSTRAPPED`.
//! 2. Acquire a fence from the cluster's authority group (`AcquireFence`
//!    on any recorded storage node; followers forward to the leader).
//!    No quorum → `NO_QUORUM`, the transaction is rolled back, nothing
//!    changed.
//! 3. Conditional update of the authority row: same term, higher seq
//!    (`STALE_FENCE` otherwise).
//! 4. The caller applies its mutation in the same transaction, then
//!    [`Fenced::commit`] writes the audit event and commits.
//!
//! Holding the row lock while the fence is acquired orders fenced
//! mutations of one cluster: fences arrive at PostgreSQL in the order the
//! group granted them, so a later fence never makes an earlier one stale.
//! The price is that one cluster's trust mutations run one at a time
//! (a fence is a few milliseconds).

use crate::audit::{self, Action, FenceRef};
use crate::db;
use crate::error::{Error, Result};
use rap_authority::client::authority_client;
use rap_authority::network::NetworkConfig;
use rap_core::tls::live::LiveIdentity;
use rap_core::tls::pin::{ExpectedPeer, PeerTls};
use rap_proto::ids::ClusterId;
use rap_proto::pb;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How the control plane reaches storage nodes.
#[derive(Clone, Debug)]
pub enum StorageTransport {
    /// mTLS with the control plane's client certificate from each
    /// cluster's CA (the keys directory).
    MutualTls {
        /// The control plane's keys directory.
        keys_dir: PathBuf,
    },
    /// Development only: plaintext.
    InsecurePlaintext,
}

/// A storage node of a cluster's group, as the control plane dials it: its
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

/// How long the network settings of a cluster (its mTLS client
/// certificate) are reused before the keys are loaded again; loading
/// renews a client certificate that is about to expire.
pub const NETWORK_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Pause between two rounds over a cluster's storage nodes while no fence
/// is granted (an election is running, or a lease is being renewed).
pub const FENCE_ROUND_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Clients of the clusters' authority groups.
#[derive(Clone, Debug)]
pub struct AuthorityClients {
    transport: StorageTransport,
    networks: Arc<Mutex<HashMap<String, (std::time::Instant, NetworkConfig)>>>,
}

impl AuthorityClients {
    /// Clients using `transport`.
    pub fn new(transport: StorageTransport) -> Self {
        AuthorityClients {
            transport,
            networks: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The network settings towards `cluster_id`'s storage nodes, from the
    /// cache or loaded now. Loading reads (and may renew, with fsync) key
    /// files on this thread: async code calls [`Self::load_network`].
    pub fn network(&self, cluster_id: &str) -> Result<NetworkConfig> {
        if let Some(network) = self.cached_network(cluster_id) {
            return Ok(network);
        }
        let network = match &self.transport {
            StorageTransport::InsecurePlaintext => NetworkConfig::default(),
            StorageTransport::MutualTls { keys_dir } => {
                rap_core::tls::install_crypto_provider();
                let cluster = ClusterId::new(cluster_id)?;
                let keys = crate::keys::ClusterKeys::load(keys_dir, &cluster)?;
                let tls = LiveIdentity::load(keys.controlplane_tls())
                    .and_then(PeerTls::new)
                    .map_err(|e| Error::Keys(format!("mTLS towards {cluster_id}: {e}")))?;
                NetworkConfig {
                    tls: Some(tls),
                    ..NetworkConfig::default()
                }
            }
        };
        if let Ok(mut cache) = self.networks.lock() {
            cache.insert(
                cluster_id.to_string(),
                (std::time::Instant::now(), network.clone()),
            );
        }
        Ok(network)
    }

    /// [`Self::network`] for async callers: a cached entry at once, else
    /// the keys are loaded on a blocking thread (`spawn_blocking`). The
    /// fenced transaction calls this before `BEGIN`, so no key file is read
    /// while the authority row is locked.
    pub async fn load_network(&self, cluster_id: &str) -> Result<NetworkConfig> {
        if let Some(network) = self.cached_network(cluster_id) {
            return Ok(network);
        }
        let clients = self.clone();
        let cluster_id = cluster_id.to_string();
        tokio::task::spawn_blocking(move || clients.network(&cluster_id))
            .await
            .map_err(|e| Error::Internal(format!("loading network settings: {e}")))?
    }

    fn cached_network(&self, cluster_id: &str) -> Option<NetworkConfig> {
        let cache = self.networks.lock().ok()?;
        let (loaded, network) = cache.get(cluster_id)?;
        (loaded.elapsed() < NETWORK_CACHE_TTL).then(|| network.clone())
    }

    /// Asks the storage nodes `peers`, in order, until one grants a
    /// fence, within [`crate::limits::FENCE_TIMEOUT`] overall.
    ///
    /// * `NO_QUORUM` from a node that reaches fewer than a majority is
    ///   final at once (a minority refuses fast).
    /// * `NO_QUORUM` although a majority is reachable (a leader whose
    ///   quorum lease lapsed under load), `NOT_LEADER` (an election is
    ///   running) and transport failures move on to the next node; after a
    ///   round without a grant the round is repeated after
    ///   [`FENCE_ROUND_PAUSE`] until the deadline.
    /// * Any other refusal (term mismatch, fenced, wrong cluster) is final.
    ///
    /// At the deadline, the best `NO_QUORUM` seen (or `0/n` when no node
    /// could be reached) is returned.
    pub async fn acquire_fence(
        &self,
        cluster_id: &str,
        peers: &[StoragePeer],
        expected_term: u64,
        purpose: &str,
    ) -> Result<pb::FencingToken> {
        if peers.is_empty() {
            return Err(Error::AuthorityUnreachable(format!(
                "no storage node of cluster {cluster_id} is recorded"
            )));
        }
        let network = self.network(cluster_id)?;
        let deadline = tokio::time::Instant::now() + crate::limits::FENCE_TIMEOUT;
        let mut best_no_quorum: Option<(u32, u32)> = None;
        let mut last_other = String::new();
        loop {
            for peer in peers {
                let address = &peer.address;
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                if remaining.is_zero() {
                    break;
                }
                let mut client = match authority_client(&network, address, &peer.expected()) {
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
                            Error::Internal("fence response without a fence".into())
                        });
                    }
                    Ok(Err(status)) => status,
                    Err(_) => {
                        last_other = format!("{address}: no answer in time");
                        continue;
                    }
                };
                match rap_core::codes::error_detail(&status) {
                    Some(detail) if detail.code == "NO_QUORUM" => {
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
                    Some(detail) if detail.code == "NOT_LEADER" => {
                        last_other = format!("{address}: {}", detail.message);
                    }
                    Some(detail) => {
                        return Err(Error::Authority {
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
}

impl AuthorityClients {
    /// Publishes signed envelopes to the cluster's group under `fence`
    /// (all or nothing), asking the storage nodes `peers` in order.
    pub async fn publish(
        &self,
        cluster_id: &str,
        peers: &[StoragePeer],
        fence: pb::FencingToken,
        envelopes: Vec<Vec<u8>>,
    ) -> Result<pb::PublishShardsResponse> {
        let network = self.network(cluster_id)?;
        let mut last = String::from("no storage node recorded");
        for peer in peers {
            let address = &peer.address;
            let mut client = authority_client(&network, address, &peer.expected())
                .map_err(|e| Error::invalid(e.to_string()))?;
            let call = client.publish_shards(pb::PublishShardsRequest {
                fence: Some(fence.clone()),
                envelopes: envelopes.clone(),
            });
            match tokio::time::timeout(crate::limits::FENCE_TIMEOUT, call).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => match rap_core::codes::error_detail(&status) {
                    Some(detail) if detail.code == "NOT_LEADER" => last = detail.message,
                    Some(detail) if detail.code == "NO_QUORUM" => {
                        return Err(Error::NoQuorum {
                            reachable_voters: detail.reachable_voters,
                            total_voters: detail.total_voters,
                        });
                    }
                    Some(detail) => {
                        return Err(Error::Authority {
                            code: detail.code,
                            message: detail.message,
                        });
                    }
                    None => last = format!("{address}: {}", status.message()),
                },
                Err(_) => last = format!("{address}: no answer"),
            }
        }
        Err(Error::AuthorityUnreachable(last))
    }
}

/// A cluster's voters and learners, voters first.
pub async fn storage_peers(
    conn: &mut sqlx::PgConnection,
    cluster_id: &str,
) -> Result<Vec<StoragePeer>> {
    Ok(db::storage_nodes::peers(conn, cluster_id)
        .await?
        .into_iter()
        .map(|row| StoragePeer {
            node_id: row.node_id,
            address: row.address,
        })
        .collect())
}

/// An open fenced transaction: the fence is checked, the authority row is
/// updated; the caller adds its mutation, then commits.
pub struct Fenced {
    /// The transaction; put the mutation here.
    pub tx: Transaction<'static, Postgres>,
    /// The fence this mutation carries.
    pub fence: FenceRef,
    action: Action,
}

impl std::fmt::Debug for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fenced")
            .field("fence", &self.fence)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

impl Fenced {
    /// Begins the fenced transaction for `action` (which names the cluster).
    ///
    /// The network settings towards the cluster's group are loaded first,
    /// off the async threads and before `BEGIN`; a failure to load them is
    /// reported where the fence would be asked for, so the refusals keep
    /// their order (unknown cluster, not bootstrapped, no storage node,
    /// then keys).
    #[tracing::instrument(
        skip_all,
        fields(
            cluster_id = action.cluster_id.as_deref().unwrap_or(""),
            action = action.action,
        )
    )]
    pub async fn begin(
        pool: &PgPool,
        clients: &AuthorityClients,
        action: &Action,
    ) -> Result<Fenced> {
        let cluster_id = action
            .cluster_id
            .clone()
            .ok_or_else(|| Error::Internal(format!("{} names no cluster", action.action)))?;
        let network = clients.load_network(&cluster_id).await;
        let mut tx = pool.begin().await?;
        let Some(current) = db::authority_terms::lock_current(&mut tx, &cluster_id).await? else {
            return Err(if db::clusters::exists(&mut tx, &cluster_id).await? {
                Error::NotBootstrapped(cluster_id)
            } else {
                Error::not_found("cluster", cluster_id)
            });
        };
        let peers = storage_peers(&mut tx, &cluster_id).await?;
        if let Err(e) = network
            && !peers.is_empty()
        {
            return Err(e);
        }
        let fence = clients
            .acquire_fence(&cluster_id, &peers, current.term()?, action.action)
            .await?;
        if fence.cluster_id != cluster_id {
            return Err(Error::Internal(format!(
                "fence for cluster {:?} from {cluster_id}'s group",
                fence.cluster_id
            )));
        }
        db::authority_terms::record_fence(&mut tx, &cluster_id, fence.authority_term, fence.seq)
            .await?;
        tracing::debug!(cluster_id = %cluster_id, term = fence.authority_term, seq = fence.seq, action = action.action, "fence checked");
        Ok(Fenced {
            tx,
            fence: FenceRef {
                term: fence.authority_term,
                seq: fence.seq,
                log_index: fence.log_index,
            },
            action: action.clone(),
        })
    }

    /// Writes the audit event (with the fence) and commits.
    pub async fn commit(mut self, details: serde_json::Value) -> Result<FenceRef> {
        audit::record_ok(&mut self.tx, &self.action, Some(self.fence), details).await?;
        self.tx.commit().await?;
        Ok(self.fence)
    }
}

/// Runs a fenced mutation in two steps:
/// 1. `checked`, the result of the caller's precheck (permissions, input):
///    an error is audited as a refusal and returned; nothing is asked of
///    the authority group.
/// 2. `begin`, then `apply(conn, fence, checked)` inside the transaction,
///    then `commit` with the details `apply` returns; any error is audited
///    as a refusal and nothing changes.
///
/// `checked` carries what the apply step needs (validated ids, ...). It
/// should own its data: with a borrowed `C`, the returned future is not
/// `Send` for every lifetime and tonic handlers refuse it. The closure may
/// borrow the caller's locals (`request`, `ctx`) freely.
///
/// ```ignore
/// let checked = principal.require_platform().and_then(|()| validate(&request));
/// fencing::run(&ctx.pool, &ctx.authority, action, checked, async |tx, fence, target| {
///     let (term, seq) = fence_columns(fence)?;
///     let by = db::roles::remove(tx, target.key(), &removed_by, term, seq).await?;
///     Ok((target.to_pb("removed", by.unwrap_or_default()), serde_json::json!({})))
/// })
/// .await
/// ```
pub async fn run<C, T>(
    pool: &PgPool,
    clients: &AuthorityClients,
    action: Action,
    checked: Result<C>,
    apply: impl AsyncFnOnce(&mut PgConnection, FenceRef, C) -> Result<(T, serde_json::Value)>,
) -> Result<T> {
    let checked = audit::refuse_unless(pool, &action, checked).await?;
    let result = async {
        let mut fenced = Fenced::begin(pool, clients, &action).await?;
        let fence = fenced.fence;
        let (value, details) = apply(&mut fenced.tx, fence, checked).await?;
        fenced.commit(details).await?;
        Ok(value)
    }
    .await;
    audit::audited(pool, &action, result).await
}

/// Runs a mutation that needs no fence (say why in `unfenced_because`,
/// recorded with the audit event), in the same two steps as [`run`]:
/// `checked` (a refusal is audited and returned), then `apply` in one
/// transaction, then the audit event, then commit; any error is audited as
/// a refusal and nothing changes.
pub async fn run_unfenced<C, T>(
    pool: &PgPool,
    action: Action,
    unfenced_because: &'static str,
    checked: Result<C>,
    apply: impl AsyncFnOnce(&mut PgConnection, C) -> Result<(T, serde_json::Value)>,
) -> Result<T> {
    let checked = audit::refuse_unless(pool, &action, checked).await?;
    let result = async {
        let mut tx = pool.begin().await?;
        let (value, mut details) = apply(&mut tx, checked).await?;
        details["unfenced"] = serde_json::json!(unfenced_because);
        audit::record_ok(&mut tx, &action, None, details).await?;
        tx.commit().await?;
        Ok(value)
    }
    .await;
    audit::audited(pool, &action, result).await
}
