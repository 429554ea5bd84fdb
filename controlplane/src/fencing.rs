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

use crate::audit::{self, Action};
use crate::db;
use crate::error::{Error, Result};
use crate::truth::{SourceOfTruth, TruthTx};
use rap_authority::network::NetworkConfig;
use rap_core::Fence;
use rap_core::tls::live::LiveIdentity;
use rap_core::tls::pin::PeerTls;
use rap_proto::ids::ClusterId;
use rap_proto::pb;
use sqlx::{PgConnection, PgPool};
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
    /// Network settings made by the embedding program, the same for every
    /// cluster (the simulator dials over its simulated network this way).
    Given(NetworkConfig),
}

pub use rap_authority::client::StoragePeer;

/// How long the network settings of a cluster (its mTLS client
/// certificate) are reused before the keys are loaded again; loading
/// renews a client certificate that is about to expire.
pub const NETWORK_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Clients of the clusters' authority groups.
#[derive(Clone, Debug)]
pub struct AuthorityClients {
    transport: StorageTransport,
    networks: Arc<Mutex<HashMap<String, (std::time::Instant, NetworkConfig)>>>,
    /// How long the fenced mutations through these clients took, by
    /// outcome ([`MUTATION_OUTCOMES`]).
    mutations: MutationDurations,
}

/// The outcomes a fenced mutation's duration is recorded under.
pub const MUTATION_OUTCOMES: [&str; 2] = ["committed", "refused"];

/// Fenced mutations' durations by outcome.
pub type MutationDurations = prometheus_client::metrics::family::Family<
    [(&'static str, &'static str); 1],
    prometheus_client::metrics::histogram::Histogram,
    fn() -> prometheus_client::metrics::histogram::Histogram,
>;

impl AuthorityClients {
    /// Clients using `transport`.
    pub fn new(transport: StorageTransport) -> Self {
        AuthorityClients {
            transport,
            networks: Arc::new(Mutex::new(HashMap::new())),
            mutations: MutationDurations::new_with_constructor(
                crate::metrics::database_histogram
                    as fn() -> prometheus_client::metrics::histogram::Histogram,
            ),
        }
    }

    /// The durations of the fenced mutations run through these clients
    /// (shared: what is observed later shows in it).
    pub fn mutation_durations(&self) -> MutationDurations {
        self.mutations.clone()
    }

    fn observe_mutation(&self, committed: bool, elapsed: std::time::Duration) {
        let outcome = MUTATION_OUTCOMES[usize::from(!committed)];
        self.mutations
            .get_or_create(&[("outcome", outcome)])
            .observe(elapsed.as_secs_f64());
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
            StorageTransport::Given(network) => network.clone(),
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

    /// Asks the storage nodes `peers`, in order, until one grants a fence,
    /// within [`crate::limits::FENCE_TIMEOUT`] overall; the retry rules are
    /// the authority client's ([`rap_authority::client::acquire_fence`]).
    pub async fn acquire_fence(
        &self,
        cluster_id: &str,
        peers: &[StoragePeer],
        expected_term: u64,
        purpose: &str,
    ) -> Result<pb::FencingToken> {
        let network = self.network(cluster_id)?;
        rap_authority::client::acquire_fence(
            &network,
            cluster_id,
            peers,
            expected_term,
            purpose,
            crate::limits::FENCE_TIMEOUT,
        )
        .await
        .map_err(authority_error)
    }
}

impl AuthorityClients {
    /// Publishes signed envelopes to the cluster's group under `fence`
    /// (all or nothing), asking the storage nodes `peers` in order
    /// ([`rap_authority::client::publish`]).
    pub async fn publish(
        &self,
        cluster_id: &str,
        peers: &[StoragePeer],
        fence: pb::FencingToken,
        envelopes: Vec<Vec<u8>>,
    ) -> Result<pb::PublishShardsResponse> {
        let network = self.network(cluster_id)?;
        rap_authority::client::publish(
            &network,
            peers,
            fence,
            envelopes,
            crate::limits::FENCE_TIMEOUT,
        )
        .await
        .map_err(authority_error)
    }

    /// The group's newest shard of each scope asked for (every scope when
    /// none is named), read linearizably on the leader
    /// ([`rap_authority::client::shard_heads`]).
    pub async fn shard_heads(
        &self,
        cluster_id: &str,
        peers: &[StoragePeer],
        scopes: Vec<String>,
        include_envelopes: bool,
    ) -> Result<pb::ShardHeadsResponse> {
        let network = self.load_network(cluster_id).await?;
        rap_authority::client::shard_heads(
            &network,
            peers,
            pb::ShardHeadsRequest {
                cluster_id: cluster_id.to_string(),
                scopes,
                include_envelopes,
            },
            crate::limits::FENCE_TIMEOUT,
        )
        .await
        .map_err(authority_error)
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
/// updated; the caller adds its mutation, then commits. `T` is a
/// transaction of the source of truth ([`crate::truth`]): PostgreSQL's in
/// the product.
pub struct Fenced<T = crate::truth::PgTx> {
    /// The transaction; put the mutation here.
    pub tx: T,
    /// The fence this mutation carries.
    pub fence: Fence,
    action: Action,
}

impl<T> std::fmt::Debug for Fenced<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fenced")
            .field("fence", &self.fence)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

impl<T: TruthTx> Fenced<T> {
    /// Begins the fenced transaction for `action` (which names the cluster)
    /// in `truth`.
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
    pub async fn begin<S: SourceOfTruth<Tx = T>>(
        truth: &S,
        clients: &AuthorityClients,
        action: &Action,
    ) -> Result<Fenced<T>> {
        let cluster_id = action
            .cluster_id
            .clone()
            .ok_or_else(|| Error::Internal(format!("{} names no cluster", action.action)))?;
        let network = clients.load_network(&cluster_id).await;
        let mut tx = truth.begin().await?;
        let Some(current) = tx.lock_current(&cluster_id).await? else {
            return Err(if tx.cluster_exists(&cluster_id).await? {
                Error::NotBootstrapped(cluster_id)
            } else {
                Error::not_found("cluster", cluster_id)
            });
        };
        let peers = tx.storage_peers(&cluster_id).await?;
        if let Err(e) = network
            && !peers.is_empty()
        {
            return Err(e);
        }
        let fence = clients
            .acquire_fence(&cluster_id, &peers, current.term, action.action)
            .await?;
        if fence.cluster_id != cluster_id {
            return Err(Error::Internal(format!(
                "fence for cluster {:?} from {cluster_id}'s group",
                fence.cluster_id
            )));
        }
        let granted = Fence::from_pb(&fence)?;
        tx.record_fence(&cluster_id, fence.authority_term, fence.seq)
            .await?;
        tracing::debug!(cluster_id = %cluster_id, term = fence.authority_term, seq = fence.seq, action = action.action, "fence checked");
        Ok(Fenced {
            tx,
            fence: granted,
            action: action.clone(),
        })
    }

    /// Writes the audit event (with the fence) and commits.
    pub async fn commit(mut self, details: serde_json::Value) -> Result<Fence> {
        self.tx
            .record_ok(&self.action, Some(&self.fence), details)
            .await?;
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
///     let (term, seq) = fence_columns(&fence)?;
///     let by = db::roles::remove(tx, target.key(), &removed_by, term, seq).await?;
///     Ok((target.to_pb("removed", by.unwrap_or_default()), serde_json::json!({})))
/// })
/// .await
/// ```
///
/// `truth` is PostgreSQL in the product (the transaction derefs to the
/// connection the `db` functions take); the simulator passes its
/// in-memory source of truth.
pub async fn run<S: SourceOfTruth, C, T>(
    truth: &S,
    clients: &AuthorityClients,
    action: Action,
    checked: Result<C>,
    apply: impl AsyncFnOnce(&mut S::Tx, Fence, C) -> Result<(T, serde_json::Value)>,
) -> Result<T> {
    let checked = match checked {
        Ok(checked) => checked,
        Err(error) => {
            truth.record_refusal(&action, &error).await;
            return Err(error);
        }
    };
    let started = std::time::Instant::now();
    let result = async {
        let mut fenced = Fenced::begin(truth, clients, &action).await?;
        let fence = fenced.fence.clone();
        let (value, details) = apply(&mut fenced.tx, fence, checked).await?;
        fenced.commit(details).await?;
        Ok(value)
    }
    .await;
    clients.observe_mutation(result.is_ok(), started.elapsed());
    if let Err(error) = &result {
        truth.record_refusal(&action, error).await;
    }
    result
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

/// What the authority client's refusal means to the control plane: the
/// group's own codes are kept (`NO_QUORUM` with its counts, anything the
/// group refused as `AUTHORITY_REFUSED` with the group's code), no answer
/// at all is `AUTHORITY_UNREACHABLE`.
fn authority_error(error: rap_authority::Error) -> Error {
    match error {
        rap_authority::Error::NoQuorum {
            reachable_voters,
            total_voters,
        } => Error::NoQuorum {
            reachable_voters,
            total_voters,
        },
        rap_authority::Error::Unreachable(message) => Error::AuthorityUnreachable(message),
        rap_authority::Error::Refused { code, message } => Error::Authority { code, message },
        other => Error::Authority {
            code: other.code().to_string(),
            message: other.to_string(),
        },
    }
}
