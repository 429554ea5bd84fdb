//! Verified shard reads from nearby storage nodes, with failover.
//!
//! A [`Reader`] asks the best ranked endpoint ([`endpoints`]) for a scope
//! (`GetShard` with the version it holds as `min_version`), verifies the
//! envelope with the agent's own [`Verifier`] (cluster, trust generation,
//! key, hash, signature, term, version chain, validity, readers) whatever
//! node served it, and only then keeps it. An endpoint that fails, stalls
//! ([`READ_TIMEOUT`]) or serves an envelope that does not verify is scored
//! down and the next one is asked, without asking the control plane.
//!
//! What is kept:
//!
//! * `<state-dir>/<cluster>/marks/`: the verifier's high-water marks
//!   (`FileHighWaterStore`: written and fsynced before the envelope they
//!   admit is used, so after `kill -9` no lower version or term is ever
//!   accepted again);
//! * in the cluster's tree of the agent's store ([`crate::store`]): the
//!   newest verified envelope of each scope, exactly as signed (checked on
//!   start against its mark's header hash and its content hash, so a
//!   damaged one is dropped, never used), and the endpoints' scores.

pub mod endpoints;

use crate::state::{ClusterState, StateError};
use crate::store::{ClusterStore, HealthRecord, StoreError};
use endpoints::{Endpoint, Endpoints, Tier, load_fraction};
use rap_core::codes;
use rap_core::marks::FileHighWaterStore;
use rap_core::tls::pin::{ExpectedPeer, PeerTls, TlsDialer, dial};
use rap_proto::envelope::{
    Digest, Reader as EnvelopeReader, Scope, Verifier, VerifierOptions, decode,
};
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::pb;
use rap_proto::pb::shard_service_client::ShardServiceClient;
use rap_proto::time::UnixMillis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
// tokio's clock: the real one in production, the simulated one under the
// simulator (round trips and failure memory in simulated time).
use tokio::time::Instant;
use tonic::transport::Channel;

pub use rap_proto::time::WallClock;

/// How long one read may take before the endpoint counts as stalled.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a probe of a warm or cold endpoint may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long, in all, a read that holds a minority node's answer goes on
/// asking the other endpoints before it takes that answer: behind a
/// silent partition each of them would cost a whole [`READ_TIMEOUT`].
pub const ASIDE_WAIT_MAX: Duration = Duration::from_secs(1);
/// TCP connect timeout towards a storage node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 keepalive towards a storage node (a dead connection under an
/// idle watch is noticed within twice this).
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// Largest response accepted from a storage node.
pub const RESPONSE_BYTES_MAX: usize = rap_proto::limits::ENVELOPE_BYTES_MAX + 64 * 1024;
/// Most scopes an agent holds.
pub const SCOPES_MAX: usize = 256;
/// Longest the saved endpoint scores lag behind round-trip changes (a
/// change of the list, a failure count or a refusal count is saved at
/// once).
pub const SCORES_SAVE_INTERVAL: Duration = Duration::from_secs(30);

/// What makes a score worth saving at once: node id, failures, refusals.
type ScoreKey = (String, u32, u32);

/// A failed read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Node-local state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The node-local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The envelope machinery or the marks store refused to start.
    #[error(transparent)]
    Proto(#[from] rap_proto::Error),
    /// No endpoint answered with a verified envelope; the reasons, best
    /// endpoint first.
    #[error("no storage endpoint served a verified {scope}: {reasons}")]
    NoEndpoint {
        /// The scope.
        scope: String,
        /// One reason per endpoint tried.
        reasons: String,
    },
    /// A configuration that cannot work (no endpoint, a bad address).
    #[error("{0}")]
    Setup(String),
    /// This node's identity was revoked (the control plane said so, or
    /// the verified revocation list names its certificate): `run` stopped
    /// its workloads and ends; join again to come back.
    #[error("this node was revoked: {0}")]
    Revoked(String),
}

impl ReadError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            ReadError::State(_) => "STATE",
            ReadError::Store(e) => e.code(),
            ReadError::Proto(e) => e.code(),
            ReadError::NoEndpoint { .. } => "NO_ENDPOINT",
            ReadError::Setup(_) => "INVALID_ARGUMENT",
            ReadError::Revoked(_) => rap_core::codes::CERTIFICATE_REVOKED,
        }
    }
}

/// One verified scope the agent holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Held {
    /// Its version.
    pub version: u64,
    /// The authority term it was published in.
    pub authority_term: u64,
    /// When this agent accepted it (Unix ms).
    pub accepted_at_unix_ms: i64,
    /// The storage node that served it ('' when loaded from disk).
    pub served_by: String,
    /// Whether a cache replica served it.
    pub from_cache_replica: bool,
    /// The serving node's partition view (`healthy`, `minority`, ...).
    pub partition_view: String,
    #[serde(skip)]
    envelope: Vec<u8>,
}

impl Held {
    /// The envelope, exactly as signed.
    pub fn envelope(&self) -> &[u8] {
        &self.envelope
    }
}

/// The storage node that answered last, as it described itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LastAnswer {
    /// Its node id.
    pub node_id: String,
    /// Its partition view (`healthy`, `minority`, ...).
    pub partition_view: String,
    /// Whether it is a cache replica.
    pub from_cache_replica: bool,
    /// Its authority term.
    pub authority_term: u64,
    /// When (Unix ms).
    pub at_unix_ms: i64,
}

/// What a read did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A newer version was verified and kept.
    Updated(u64),
    /// The held version is the newest served.
    Unchanged(u64),
}

/// Reads, verifies and keeps one agent's scopes.
pub struct Reader {
    cluster_id: ClusterId,
    node_id: NodeId,
    store: ClusterStore,
    tls: Option<Arc<PeerTls>>,
    verifier: Verifier<FileHighWaterStore>,
    /// Who this node is for the readers check (roles from its own node
    /// shard).
    me: EnvelopeReader,
    /// The endpoints and their scores.
    pub endpoints: Endpoints,
    bootstrap: Vec<Endpoint>,
    /// What was saved last: the scores' failure part, and when.
    saved_scores: Option<(Vec<ScoreKey>, Instant)>,
    /// The health saved last.
    saved_health: std::sync::Mutex<Option<(String, String)>>,
    held: BTreeMap<String, Held>,
    /// One client per storage node. Ordered, so that dropping them (a
    /// restart, a renewal) closes their connections in the same order
    /// every time: the simulator replays a seed exactly.
    clients: BTreeMap<String, ShardServiceClient<Channel>>,
    /// The certificate serial the cached clients' connections present: a
    /// renewal empties the cache, so that no read goes out on a
    /// connection made with a superseded (soon expired) certificate.
    clients_serial: String,
    last_answer: Option<LastAnswer>,
    /// When a cold endpoint was probed last.
    last_cold_probe: Option<Instant>,
    /// How a channel is made from an endpoint and its TLS connector
    /// (`None`: TCP through the connector, as in production).
    dialer: Option<TlsDialer>,
    /// The wall clock envelopes are checked against (`None`: the
    /// system's, as in production; the simulator skews it per agent).
    clock: Option<WallClock>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// A reader of node `node_id` in `state`'s cluster, keeping envelopes
    /// and scores in `store` (the same cluster's tree), verifying from
    /// the genesis trust root `genesis`, dialling `endpoints` under `tls`
    /// (`None`: plaintext, development only). Loads (and re-verifies) the
    /// envelopes kept before, and the scores of the endpoints saved
    /// before (`endpoints` stay as the bootstrap list).
    pub fn open(
        state: ClusterState,
        store: ClusterStore,
        cluster_id: ClusterId,
        node_id: NodeId,
        genesis: &[u8],
        tls: Option<Arc<PeerTls>>,
        endpoints: Vec<Endpoint>,
    ) -> Result<Reader, ReadError> {
        if endpoints.is_empty() {
            return Err(ReadError::Setup(
                "no storage endpoint to read from (join again, or check storage-endpoints.json)"
                    .into(),
            ));
        }
        let marks = FileHighWaterStore::open(&state.path("marks"))?;
        let verifier = Verifier::open(
            cluster_id.clone(),
            genesis,
            None,
            marks,
            VerifierOptions::default(),
        )?;
        if store.cluster_id() != &cluster_id {
            return Err(ReadError::Setup(format!(
                "the store handle is of cluster {}, not {cluster_id}",
                store.cluster_id()
            )));
        }
        let saved = store.endpoints().unwrap_or_else(|e| {
            tracing::warn!(cluster_id = %cluster_id, node_id = %node_id, "the saved endpoint scores are unusable; starting afresh: {e}");
            None
        });
        let scored = match saved {
            Some(mut saved) => {
                let mut list: Vec<Endpoint> =
                    saved.list.iter().map(|s| s.endpoint.clone()).collect();
                list.extend(endpoints.iter().cloned());
                saved.replace(list);
                saved
            }
            None => Endpoints::new(endpoints.clone()),
        };
        if let Ok(Some(last)) = store.health() {
            tracing::info!(cluster_id = %cluster_id, node_id = %node_id, health = last.health, reason = last.degraded_reason, at_unix_ms = last.at_unix_ms, "the last run's health");
        }
        let mut reader = Reader {
            me: EnvelopeReader::Node {
                node_id: node_id.clone(),
                roles: Vec::new(),
                orgs: Vec::new(),
            },
            cluster_id,
            node_id,
            store,
            tls,
            verifier,
            endpoints: scored,
            bootstrap: endpoints,
            saved_scores: None,
            saved_health: std::sync::Mutex::new(None),
            held: BTreeMap::new(),
            clients: BTreeMap::new(),
            clients_serial: String::new(),
            last_answer: None,
            last_cold_probe: None,
            dialer: None,
            clock: None,
        };
        reader.load_kept();
        Ok(reader)
    }

    /// Makes every channel with `dialer` instead of over `tokio::net`
    /// (the simulator's network; TLS stays the same).
    pub fn dial_with(mut self, dialer: TlsDialer) -> Self {
        self.dialer = Some(dialer);
        self.clients.clear();
        self
    }

    /// Reads the time from `clock` instead of the system's wall clock
    /// (the simulator's skewed clocks).
    pub fn clock_with(mut self, clock: WallClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The time on this agent's wall clock.
    fn now(&self) -> UnixMillis {
        UnixMillis::on(self.clock.as_ref())
    }

    /// The node's own scope.
    pub fn own_scope(&self) -> String {
        Scope::Node(self.node_id.clone()).to_string()
    }

    /// The bootstrap endpoints it was opened with (the last resort).
    pub fn bootstrap(&self) -> &[Endpoint] {
        &self.bootstrap
    }

    /// The cluster's store.
    pub fn store(&self) -> &ClusterStore {
        &self.store
    }

    /// Saves the endpoints' scores (so they survive a restart) when the
    /// list, a failure count or a refusal count changed, or
    /// [`SCORES_SAVE_INTERVAL`] passed.
    pub fn save_endpoints(&mut self) {
        let key: Vec<ScoreKey> = self
            .endpoints
            .list
            .iter()
            .map(|s| (s.endpoint.node_id.clone(), s.failures, s.bad_envelopes))
            .collect();
        if let Some((saved, at)) = &self.saved_scores
            && *saved == key
            && at.elapsed() < SCORES_SAVE_INTERVAL
        {
            return;
        }
        match self.store.put_endpoints(&self.endpoints) {
            Ok(()) => self.saved_scores = Some((key, Instant::now())),
            Err(e) => {
                tracing::warn!(cluster_id = %self.cluster_id, node_id = %self.node_id, code = e.code(), "saving the endpoint scores failed: {e}");
            }
        }
    }

    /// Saves the health `run` reports (`healthy`, `degraded` or
    /// `revoked`, and why) when it changed; its `at_unix_ms` is when it
    /// became so.
    pub fn save_health(&self, health: &str, reason: &str) {
        let now = (health.to_string(), reason.to_string());
        let mut saved = self
            .saved_health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if saved.as_ref() == Some(&now) {
            return;
        }
        let record = HealthRecord {
            health: now.0.clone(),
            degraded_reason: now.1.clone(),
            at_unix_ms: self.now().0,
        };
        match self.store.put_health(&record) {
            Ok(()) => *saved = Some(now),
            Err(e) => {
                tracing::warn!(cluster_id = %self.cluster_id, node_id = %self.node_id, code = e.code(), "saving the health failed: {e}");
            }
        }
    }

    /// What is held, by scope.
    pub fn held(&self) -> &BTreeMap<String, Held> {
        &self.held
    }

    /// The storage node that answered last (a read or a watch).
    pub fn last_answer(&self) -> Option<&LastAnswer> {
        self.last_answer.as_ref()
    }

    /// Whether the verified `trust/revocations` shard held lists the
    /// certificate serial `serial_hex` of this node.
    pub fn lists_revoked(&self, serial_hex: &str) -> bool {
        let Some(held) = self.held.get(rap_proto::revocations::REVOCATIONS_SCOPE) else {
            return false;
        };
        let Ok(envelope) = decode(held.envelope()) else {
            return false;
        };
        rap_proto::revocations::decode(&envelope.body, &self.cluster_id).is_ok_and(|list| {
            list.revoked.iter().any(|r| {
                r.node_id == self.node_id.as_str()
                    && r.certificate_serial.eq_ignore_ascii_case(serial_hex)
            })
        })
    }

    /// The held node shard, decoded.
    pub fn node_shard(&self) -> Option<pb::NodeShard> {
        self.held_body(&self.own_scope())
    }

    /// The peer cache: the mesh peers of the held (verified)
    /// `peers/<id>` shard; empty when the node holds none (no mesh role).
    pub fn peers(&self) -> Vec<pb::Peer> {
        self.held_body::<pb::PeersShard>(&Scope::Peers(self.node_id.clone()).to_string())
            .map(|shard| shard.peers)
            .unwrap_or_default()
    }

    /// The body of the held envelope of `scope`, decoded.
    fn held_body<T: rap_proto::shards::ShardBody>(&self, scope: &str) -> Option<T> {
        let held = self.held.get(scope)?;
        let envelope = decode(held.envelope()).ok()?;
        rap_proto::shards::decode(&envelope.body, &self.cluster_id).ok()
    }

    /// Loads the kept envelopes the marks admitted (the marks were written
    /// before each envelope): one that does not decode, or is not the
    /// envelope its scope's mark names, is dropped.
    fn load_kept(&mut self) {
        let kept = match self.store.shards() {
            Ok(kept) => kept,
            Err(e) => {
                tracing::warn!(cluster_id = %self.cluster_id, node_id = %self.node_id, code = e.code(), "the kept shards are unreadable; reading them again: {e}");
                Vec::new()
            }
        };
        for (scope, bytes) in kept {
            let Ok(envelope) = decode(&bytes) else {
                tracing::warn!(cluster_id = %self.cluster_id, node_id = %self.node_id, scope, "a kept shard does not decode; dropped");
                let _ = self.store.remove_shard(&scope);
                continue;
            };
            if envelope.header.scope.to_string() != scope || self.held.len() >= SCOPES_MAX {
                continue;
            }
            // It must be the very envelope the marks admitted: its header
            // hash is the mark's, its body hash the header's.
            let marked = self
                .verifier
                .scope_mark(&envelope.header.scope)
                .ok()
                .flatten()
                .is_some_and(|mark| mark.header_hash == envelope.header_hash());
            if !marked || Digest::of(&envelope.body) != envelope.header.content_hash {
                tracing::warn!(cluster_id = %self.cluster_id, node_id = %self.node_id, scope, "a kept shard is not the one its mark admitted; dropped");
                continue;
            }
            self.held.insert(
                scope,
                Held {
                    version: envelope.header.version.0,
                    authority_term: envelope.header.authority_term.0,
                    accepted_at_unix_ms: 0,
                    served_by: String::new(),
                    from_cache_replica: false,
                    partition_view: String::new(),
                    envelope: bytes,
                },
            );
        }
        self.refresh_me();
    }

    /// This node's roles and organizations, from its held node shard.
    fn refresh_me(&mut self) {
        if let Some(shard) = self.node_shard()
            && let Ok(me) = rap_proto::shards::node_reader(&shard)
        {
            self.me = me;
        }
    }

    fn client(&mut self, endpoint: &Endpoint) -> Result<ShardServiceClient<Channel>, String> {
        if let Some(tls) = &self.tls {
            let serial = tls.identity().facts().serial_hex;
            if serial != self.clients_serial {
                self.clients.clear();
                self.clients_serial = serial;
            }
        }
        if let Some(client) = self.clients.get(&endpoint.node_id) {
            return Ok(client.clone());
        }
        let uri = format!("http://{}", endpoint.address);
        let base = tonic::transport::Endpoint::from_shared(uri)
            .map_err(|e| format!("address {:?}: {e}", endpoint.address))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true);
        let channel = match &self.tls {
            Some(tls) => {
                let connector = tls
                    .connector(&ExpectedPeer::storage_named(&endpoint.node_id))
                    .map_err(|e| format!("TLS to {}: {e}", endpoint.node_id))?;
                dial(base, connector, self.dialer.as_ref())
            }
            None => base.connect_lazy(),
        };
        let client = ShardServiceClient::new(channel).max_decoding_message_size(RESPONSE_BYTES_MAX);
        self.clients
            .insert(endpoint.node_id.clone(), client.clone());
        Ok(client)
    }

    /// Reads `scope` from the best endpoint that serves a verified
    /// envelope of it at least as new as the one held. An answer from a
    /// node in a minority (a voter cut off from its quorum, a cache
    /// replica that could not confirm with a voter lately) may be behind:
    /// the newest such answer is kept aside while the other endpoints are
    /// asked (for [`ASIDE_WAIT_MAX`] in all), and taken only when none of
    /// them answers in the majority.
    pub async fn read(&mut self, scope: &str) -> Result<Outcome, ReadError> {
        let held = self.held.get(scope).map_or(0, |h| h.version);
        let mut reasons = Vec::new();
        let mut aside: Option<(usize, Endpoint, pb::GetShardResponse, Duration)> = None;
        let mut aside_since: Option<Instant> = None;
        for at in self.endpoints.ranked() {
            let timeout = match aside_since {
                None => READ_TIMEOUT,
                Some(since) => match ASIDE_WAIT_MAX.checked_sub(since.elapsed()) {
                    Some(left) if !left.is_zero() => left.min(READ_TIMEOUT),
                    _ => break,
                },
            };
            let endpoint = self.endpoints.list[at].endpoint.clone();
            let mut client = match self.client(&endpoint) {
                Ok(client) => client,
                Err(why) => {
                    self.endpoints.failed(at, &why);
                    reasons.push(format!("{}: {why}", endpoint.node_id));
                    continue;
                }
            };
            let request = pb::GetShardRequest {
                cluster_id: self.cluster_id.to_string(),
                scope: scope.to_string(),
                min_version: held,
            };
            let started = Instant::now();
            let answer = match tokio::time::timeout(timeout, client.get_shard(request)).await {
                Ok(Ok(answer)) => answer.into_inner(),
                Ok(Err(status)) => {
                    let code = rap_core::codes::error_detail(&status)
                        .map(|d| d.code)
                        .unwrap_or_else(|| format!("{:?}", status.code()));
                    self.endpoints.failed(at, &code);
                    reasons.push(format!("{}: {code}", endpoint.node_id));
                    continue;
                }
                Err(_) => {
                    self.endpoints.failed(at, "stalled");
                    reasons.push(format!("{}: no answer in {timeout:?}", endpoint.node_id));
                    continue;
                }
            };
            if deposed(&answer) {
                // Its group was superseded by a promotion: whatever it
                // holds is the old side's. Read from another.
                self.endpoints.failed(at, codes::FENCED);
                reasons.push(format!("{}: {}", endpoint.node_id, codes::FENCED));
                continue;
            }
            let rtt = started.elapsed();
            if in_minority(&answer) {
                let newer = aside
                    .as_ref()
                    .is_none_or(|(_, _, kept, _)| version_of(&answer) > version_of(kept));
                if newer {
                    aside = Some((at, endpoint, answer, rtt));
                }
                aside_since.get_or_insert_with(Instant::now);
                continue;
            }
            if let Some(outcome) = self.take(scope, at, &endpoint, answer, rtt, &mut reasons) {
                return Ok(outcome);
            }
        }
        if let Some((at, endpoint, answer, rtt)) = aside
            && let Some(outcome) = self.take(scope, at, &endpoint, answer, rtt, &mut reasons)
        {
            return Ok(outcome);
        }
        self.save_endpoints();
        Err(ReadError::NoEndpoint {
            scope: scope.to_string(),
            reasons: reasons.join("; "),
        })
    }

    /// Keeps what endpoint `at` answered for `scope` in `rtt`: on success
    /// the endpoint is scored up and is the one in use; an envelope that
    /// does not verify scores it down (the reason goes to `reasons`).
    fn take(
        &mut self,
        scope: &str,
        at: usize,
        endpoint: &Endpoint,
        answer: pb::GetShardResponse,
        rtt: Duration,
        reasons: &mut Vec<String>,
    ) -> Option<Outcome> {
        let load = answer.load.as_ref().map(load_fraction);
        match self.keep(scope, endpoint, answer) {
            Ok(outcome) => {
                self.endpoints.succeeded(at, rtt, load);
                self.endpoints.use_endpoint(at);
                self.save_endpoints();
                Some(outcome)
            }
            Err(error) => {
                tracing::warn!(
                    cluster_id = %self.cluster_id,
                    node_id = %self.node_id,
                    storage = %endpoint.node_id,
                    scope,
                    code = error.code(),
                    "refused an envelope: {error}"
                );
                self.endpoints.bad_envelope(at, error.code());
                reasons.push(format!("{}: refused ({})", endpoint.node_id, error.code()));
                None
            }
        }
    }

    /// Verifies what `endpoint` served for `scope` and keeps it: the
    /// marks first (fsynced by the verifier's store), then the envelope.
    fn keep(
        &mut self,
        scope: &str,
        endpoint: &Endpoint,
        answer: pb::GetShardResponse,
    ) -> Result<Outcome, rap_proto::Error> {
        let staleness = answer.staleness.unwrap_or_default();
        self.last_answer = Some(LastAnswer {
            node_id: endpoint.node_id.clone(),
            partition_view: view_name(staleness.partition_view).to_string(),
            from_cache_replica: staleness.from_cache_replica,
            authority_term: staleness.authority_term,
            at_unix_ms: self.now().0,
        });
        let envelope = answer.envelope;
        let decoded = decode(&envelope)?;
        let offered = decoded.header.scope.to_string();
        if offered != scope {
            return Err(rap_proto::Error::InvalidScope {
                value: offered,
                reason: format!("asked for {scope}"),
            });
        }
        if let Some(held) = self.held.get(scope)
            && held.envelope == envelope
        {
            return Ok(Outcome::Unchanged(held.version));
        }
        rap_proto::shards::follow_trust_roots(&mut self.verifier, &self.cluster_id, &envelope)?;
        let now = self.now();
        let (version, authority_term) =
            match self
                .verifier
                .verify(&envelope, &decoded.header.scope, &self.me, now)
            {
                Ok(accepted) => (accepted.header.version.0, accepted.header.authority_term.0),
                // The very envelope accepted before (same header hash;
                // signature and readers checked again) of a scope this
                // node stopped reading and reads again (a role removed,
                // then assigned back): kept again, marks unchanged,
                // unless it expired meanwhile.
                Err(rap_proto::Error::Replay { .. }) if !self.held.contains_key(scope) => {
                    let skew_ms = VerifierOptions::default().clock_skew_ms;
                    let expires_at = decoded.header.expires_at;
                    if now > expires_at.plus_ms(i64::try_from(skew_ms).unwrap_or(i64::MAX)) {
                        return Err(rap_proto::Error::Expired {
                            scope: decoded.header.scope.clone(),
                            expires_at,
                            now,
                            skew_ms,
                        });
                    }
                    (decoded.header.version.0, decoded.header.authority_term.0)
                }
                Err(error) => return Err(error),
            };
        if let Err(e) = self.store.put_shard(scope, &envelope) {
            // The mark is durable and the envelope is verified: serve it
            // from memory and say the disk failed.
            tracing::error!(cluster_id = %self.cluster_id, node_id = %self.node_id, scope, "keeping a verified shard failed: {e}");
        }
        self.held.insert(
            scope.to_string(),
            Held {
                version,
                authority_term,
                accepted_at_unix_ms: self.now().0,
                served_by: endpoint.node_id.clone(),
                from_cache_replica: staleness.from_cache_replica,
                partition_view: view_name(staleness.partition_view).to_string(),
                envelope,
            },
        );
        if scope == self.own_scope() {
            self.refresh_me();
        }
        Ok(Outcome::Updated(version))
    }

    /// Keeps what a watch delivered (verified like a read); a refusal
    /// scores the endpoint down.
    pub fn keep_watched(
        &mut self,
        endpoint_at: usize,
        answer: pb::GetShardResponse,
    ) -> Result<(String, Outcome), rap_proto::Error> {
        let endpoint = self.endpoints.list[endpoint_at].endpoint.clone();
        let scope = decode(&answer.envelope)?.header.scope.to_string();
        let load = answer.load.as_ref().map(load_fraction);
        match self.keep(&scope, &endpoint, answer) {
            Ok(outcome) => {
                self.endpoints.reported(endpoint_at, load);
                Ok((scope, outcome))
            }
            Err(error) => {
                self.endpoints.bad_envelope(endpoint_at, error.code());
                Err(error)
            }
        }
    }

    /// Probes the endpoints due ([`Endpoints::due_for_probe`]), all at
    /// once: each is asked for the node's own scope at the version held,
    /// within [`PROBE_TIMEOUT`]. An answer measures its round trip and
    /// load (and is verified like any read: a bad one scores it down); no
    /// answer counts as a failure. The last answer `run` judges the
    /// partition view by stays the read's.
    pub async fn probe(&mut self) {
        let due = self.endpoints.due_for_probe(self.last_cold_probe);
        if due.is_empty() {
            return;
        }
        if due.iter().any(|(_, tier)| *tier == Tier::Cold) {
            self.last_cold_probe = Some(Instant::now());
        }
        let own = self.own_scope();
        let held = self.held.get(&own).map_or(0, |h| h.version);
        let mut probes = tokio::task::JoinSet::new();
        for (at, _) in due {
            let endpoint = self.endpoints.list[at].endpoint.clone();
            let mut client = match self.client(&endpoint) {
                Ok(client) => client,
                Err(why) => {
                    self.endpoints.failed(at, &why);
                    continue;
                }
            };
            let request = pb::GetShardRequest {
                cluster_id: self.cluster_id.to_string(),
                scope: own.clone(),
                min_version: held,
            };
            probes.spawn(async move {
                let started = Instant::now();
                let answer = tokio::time::timeout(PROBE_TIMEOUT, client.get_shard(request)).await;
                (at, endpoint, started.elapsed(), answer)
            });
        }
        let read_answer = self.last_answer.clone();
        while let Some(joined) = probes.join_next().await {
            let Ok((at, endpoint, rtt, answer)) = joined else {
                continue;
            };
            match answer {
                Ok(Ok(answer)) if deposed(answer.get_ref()) => {
                    self.endpoints
                        .failed(at, &format!("probe: {}", codes::FENCED));
                }
                Ok(Ok(answer)) => {
                    let answer = answer.into_inner();
                    let load = answer.load.as_ref().map(load_fraction);
                    match self.keep(&own, &endpoint, answer) {
                        Ok(_) => self.endpoints.succeeded(at, rtt, load),
                        Err(error) => {
                            tracing::warn!(cluster_id = %self.cluster_id, node_id = %self.node_id, storage = %endpoint.node_id, code = error.code(), "a probe was answered with an envelope that does not verify: {error}");
                            self.endpoints.bad_envelope(at, error.code());
                        }
                    }
                }
                Ok(Err(status)) => {
                    let code = rap_core::codes::error_detail(&status)
                        .map(|d| d.code)
                        .unwrap_or_else(|| format!("{:?}", status.code()));
                    self.endpoints.failed(at, &format!("probe: {code}"));
                }
                Err(_) => self.endpoints.failed(at, "probe: stalled"),
            }
        }
        self.last_answer = read_answer;
        self.save_endpoints();
    }

    /// A client of the endpoint at `at` (for a watch).
    pub fn client_at(&mut self, at: usize) -> Result<ShardServiceClient<Channel>, String> {
        let endpoint = self.endpoints.list[at].endpoint.clone();
        self.client(&endpoint)
    }

    /// Drops the held scopes not in `keep` (their marks stay).
    pub fn retain(&mut self, keep: &[String]) {
        let gone: Vec<String> = self
            .held
            .keys()
            .filter(|s| !keep.contains(s))
            .cloned()
            .collect();
        for scope in gone {
            self.held.remove(&scope);
            if let Err(e) = self.store.remove_shard(&scope) {
                tracing::warn!(cluster_id = %self.cluster_id, node_id = %self.node_id, scope, "forgetting a dropped shard failed: {e}");
            }
        }
    }
}

/// Whether `answer` comes from a storage node whose group a promotion
/// superseded (it reports `fenced`): the agent reads elsewhere and scores
/// it down, as it does an unreachable one.
pub fn deposed(answer: &pb::GetShardResponse) -> bool {
    answer
        .staleness
        .as_ref()
        .is_some_and(|s| s.partition_view == pb::PartitionView::Fenced as i32)
}

/// Whether `answer` comes from a node in a minority: a voter cut off
/// from its quorum, or a cache replica that could not confirm with a
/// voter lately. What it serves may be behind.
fn in_minority(answer: &pb::GetShardResponse) -> bool {
    answer
        .staleness
        .as_ref()
        .is_some_and(|s| s.partition_view == pb::PartitionView::Minority as i32)
}

/// The version of the envelope in `answer` (0 when it does not decode;
/// the verifier refuses it later).
fn version_of(answer: &pb::GetShardResponse) -> u64 {
    decode(&answer.envelope).map_or(0, |e| e.header.version.0)
}

/// The name of a partition view.
pub fn view_name(view: i32) -> &'static str {
    match pb::PartitionView::try_from(view) {
        Ok(pb::PartitionView::Healthy) => "healthy",
        Ok(pb::PartitionView::Degraded) => "degraded",
        Ok(pb::PartitionView::Minority) => "minority",
        Ok(pb::PartitionView::Fenced) => "fenced",
        _ => "unknown",
    }
}
