//! `ShardService`: node agents read the signed shards a storage node
//! holds: `GetShard`, `WatchShards`, `ListOwnScopes`. Never writes. A voter
//! (or learner) serves its group's applied state ([`ShardApi::with_slot`]);
//! a cache replica serves what it verified and kept
//! ([`ShardApi::cache`], [`crate::replica`]).
//!
//! Who may call is decided twice, each in one place:
//!
//! * the [`AccessLayer`](crate::access::AccessLayer) admits node agents of
//!   this cluster whose certificate is not revoked, and, for `GetShard` and
//!   `WatchShards`, storage nodes (cache replicas filling themselves);
//! * [`Readers`] decides, per scope, whether the caller may read it. A node
//!   agent must be one of the envelope's `readers`; its roles and
//!   organizations come from the serving node's own `node/<id>` shard
//!   ([`reader_of`]), never from the request; a node without one reads
//!   only `node/<id>` and all-nodes scopes. A storage node reads from a
//!   voter exactly the scopes of the group's `cache/<its id>` shard (its
//!   placement), that shard itself and `trust/root`; a storage node with no
//!   assignment reads nothing, and a cache replica serves no storage node.
//!
//! Refusals are typed and counted in the node's metrics by code:
//! `NOT_FOUND` (no shard of that scope), `NOT_A_READER` (the scope exists,
//! its readers do not admit the caller), `NOT_YET` (an older version than
//! asked for), `WRONG_CLUSTER`, `INVALID_SCOPE`, `OVERSIZE`, `OVERLOADED`.
//! Every answer carries the envelope exactly as stored, the serving node
//! and its [`pb::Staleness`].
//!
//! A watch holds no task of its own: it is a stream that, when polled,
//! waits for the state machine to announce an apply
//! ([`StateView::changes`]) and then sends the newest version of every
//! watched scope that moved past what the caller has. The group keeps only
//! the newest version of a scope, so two versions applied between two
//! wake-ups are sent as the newer one: the watcher is never left behind
//! the newest version, which is what "no gap" means here. Each wake-up also
//! checks the caller's certificate again (revoked, expired): a long-lived
//! stream does not outlive its credential.

use crate::access::{Caller, admitted};
use crate::error::{Error, Result};
use crate::limits::{
    OWN_SCOPES_MAX, SHARD_REQUEST_BYTES_MAX, SHARD_RESPONSE_BYTES_MAX, SHARDS_MAX,
    WATCH_SCOPES_MAX, WATCH_STREAMS_MAX,
};
use crate::metrics::AuthorityMetrics;
use crate::node::AuthorityNode;
use crate::replica::CacheReplica;
use crate::slot::NodeSlot;
use crate::state::ShardRecord;
use crate::store::AppliedMark;
use rap_core::codes;
use rap_core::identity::IdentityKind;
use rap_proto::envelope::{Digest, Reader, ReaderSelector, Scope};
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::pb;
use rap_proto::pb::shard_service_server::{ShardService, ShardServiceServer};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
// tokio's clock: the real one in production, the simulated one under the
// simulator (what an answer's staleness reuses must not vary by wall time).
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// How often a waiting watch looks again without an apply: a promotion or
/// a rejoin swaps the node (and its state) in the slot, and the old
/// node's state announces nothing more.
pub const WATCH_RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long one computed [`pb::Staleness`] is handed out again: the
/// partition view and the apply age take a look at the Raft metrics and
/// the transport, too much to repeat for every watcher an apply wakes.
/// The apply age it reports may be this much too young.
pub const STALENESS_REUSE_MAX: Duration = Duration::from_millis(2);

/// What a `ShardService` serves from.
#[derive(Clone, Debug)]
enum Source {
    /// The applied state of whichever node the slot holds (a voter or a
    /// learner).
    Group(Arc<NodeSlot>),
    /// A cache replica's verified shards.
    Cache(Arc<CacheReplica>),
}

impl Source {
    /// The serving node as it is now: one request reads one of these.
    fn now(&self) -> At {
        match self {
            Source::Group(slot) => At::Group(slot.get()),
            Source::Cache(replica) => At::Cache(replica.clone()),
        }
    }

    fn cluster_id(&self) -> &ClusterId {
        match self {
            Source::Group(slot) => slot.cluster_id(),
            Source::Cache(replica) => replica.cluster_id(),
        }
    }
}

/// The serving node at one moment.
#[derive(Clone, Debug)]
enum At {
    Group(Arc<AuthorityNode>),
    Cache(Arc<CacheReplica>),
}

impl At {
    fn cluster_id(&self) -> &ClusterId {
        match self {
            At::Group(node) => &node.options().cluster_id,
            At::Cache(replica) => replica.cluster_id(),
        }
    }

    fn node_id(&self) -> &NodeId {
        match self {
            At::Group(node) => &node.options().node_id,
            At::Cache(replica) => replica.node_id(),
        }
    }

    fn shard(&self, scope: &str) -> Option<ShardRecord> {
        match self {
            At::Group(node) => node.state().shard(scope),
            At::Cache(replica) => replica.shard(scope),
        }
    }

    /// The header hash of the envelope `scope` holds, without copying it.
    fn header_hash(&self, scope: &str) -> Option<Digest> {
        let of = |shards: &BTreeMap<String, ShardRecord>| shards.get(scope).map(|r| r.header_hash);
        match self {
            At::Group(node) => node.state().read(|state| of(&state.shards)),
            At::Cache(replica) => replica.read(of),
        }
    }

    /// Which serving node this is: the same pointer while the slot holds
    /// the same node (a promotion or a rejoin puts a new one there).
    fn identity(&self) -> usize {
        match self {
            At::Group(node) => Arc::as_ptr(node) as usize,
            At::Cache(replica) => Arc::as_ptr(replica) as usize,
        }
    }

    /// Every held scope with its version and header hash.
    fn held(&self) -> Vec<(String, u64, Digest)> {
        let list = |shards: &BTreeMap<String, ShardRecord>| {
            shards
                .iter()
                .map(|(scope, r)| (scope.clone(), r.version.0, r.header_hash))
                .collect()
        };
        match self {
            At::Group(node) => node.state().read(|state| list(&state.shards)),
            At::Cache(replica) => replica.read(list),
        }
    }

    /// The scopes of `known` held at a newer version than known.
    fn moved(&self, known: &BTreeMap<String, u64>) -> Vec<String> {
        let moved = |shards: &BTreeMap<String, ShardRecord>| {
            known
                .iter()
                .filter(|(scope, known)| {
                    shards
                        .get(scope.as_str())
                        .is_some_and(|record| record.version.0 > **known)
                })
                .map(|(scope, _)| scope.clone())
                .collect()
        };
        match self {
            At::Group(node) => node.state().read(|state| moved(&state.shards)),
            At::Cache(replica) => replica.read(moved),
        }
    }

    /// A receiver of the next change of what is held.
    fn changes(&self) -> Changes {
        match self {
            At::Group(node) => Changes::Group(node.state().changes()),
            At::Cache(replica) => Changes::Cache(replica.changes()),
        }
    }

    fn staleness(&self) -> pb::Staleness {
        match self {
            At::Group(node) => staleness(node),
            At::Cache(replica) => replica.staleness(),
        }
    }

    fn is_revoked(&self, serial_hex: &str) -> bool {
        match self {
            At::Group(node) => node.is_revoked(serial_hex),
            At::Cache(replica) => replica.is_revoked(serial_hex),
        }
    }

    fn metrics(&self) -> &Arc<AuthorityMetrics> {
        match self {
            At::Group(node) => node.metrics(),
            At::Cache(replica) => replica.metrics(),
        }
    }
}

/// Announcements of changes, from either source.
enum Changes {
    Group(watch::Receiver<AppliedMark>),
    Cache(watch::Receiver<u64>),
}

impl Changes {
    /// Marks the current value seen: a change after this wakes
    /// [`Changes::changed`].
    fn mark_seen(&mut self) {
        match self {
            Changes::Group(r) => {
                r.borrow_and_update();
            }
            Changes::Cache(r) => {
                r.borrow_and_update();
            }
        }
    }

    /// When the change just seen became visible: its apply (a voter), or
    /// now (a cache replica, which announces no time).
    fn visible_since(&mut self) -> Instant {
        match self {
            Changes::Group(r) => r.borrow().at,
            Changes::Cache(_) => Instant::now(),
        }
    }

    /// Waits for a change; false when the sender is gone.
    async fn changed(&mut self) -> bool {
        match self {
            Changes::Group(r) => r.changed().await.is_ok(),
            Changes::Cache(r) => r.changed().await.is_ok(),
        }
    }
}

/// Who reads, for the readers check.
#[derive(Clone, Debug)]
pub enum Who {
    /// A node agent, with its roles and organizations.
    Node(Reader),
    /// A cache replica filling itself from a voter: the scopes of its
    /// assignment.
    Cache {
        /// The storage node.
        node_id: NodeId,
        /// What it may read.
        scopes: Arc<BTreeSet<String>>,
    },
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Node(reader) => write!(f, "{reader}"),
            Who::Cache { node_id, .. } => write!(f, "cache replica {node_id}"),
        }
    }
}

/// The `ShardService` of one storage node.
#[derive(Clone, Debug)]
pub struct ShardApi {
    source: Source,
    readers: Arc<Readers>,
    watches: Arc<AtomicUsize>,
    /// `GetShard` calls in progress (reported as load).
    reads: Arc<AtomicUsize>,
    /// The last staleness computed: (which node, when, what).
    staleness: Arc<Mutex<Option<(usize, Instant, pb::Staleness)>>>,
    /// Turns true when the server stops: open watches end (a graceful
    /// shutdown waits for open streams, and a watch never ends by itself).
    stopping: Option<watch::Receiver<bool>>,
}

/// The caller, as its certificate proves it: a node agent, or (reading
/// from a voter) a storage node filling its cache.
#[derive(Clone, Debug)]
struct ShardCaller {
    kind: IdentityKind,
    node_id: NodeId,
    serial_hex: String,
    not_after: SystemTime,
}

impl ShardApi {
    /// Serves whichever node `slot` holds.
    pub fn with_slot(slot: Arc<NodeSlot>) -> Self {
        Self::serving(Source::Group(slot))
    }

    /// Serves what the cache replica `replica` holds.
    pub fn cache(replica: Arc<CacheReplica>) -> Self {
        Self::serving(Source::Cache(replica))
    }

    fn serving(source: Source) -> Self {
        ShardApi {
            source,
            readers: Arc::new(Readers::default()),
            watches: Arc::new(AtomicUsize::new(0)),
            reads: Arc::new(AtomicUsize::new(0)),
            staleness: Arc::new(Mutex::new(None)),
            stopping: None,
        }
    }

    /// How fresh what `at` serves is, computed at most once per
    /// [`STALENESS_REUSE_MAX`] for one serving node.
    fn staleness(&self, at: &At) -> pb::Staleness {
        let identity = at.identity();
        let now = Instant::now();
        let lock = || {
            self.staleness
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if let Some((_, _, fresh)) = lock().as_ref().filter(|(node, at, _)| {
            *node == identity && now.saturating_duration_since(*at) <= STALENESS_REUSE_MAX
        }) {
            return *fresh;
        }
        let fresh = at.staleness();
        *lock() = Some((identity, now, fresh));
        fresh
    }

    /// Ends every open watch (cleanly: the caller resumes elsewhere with
    /// its known versions) once `stopping` turns true.
    pub fn stop_watches_on(mut self, stopping: watch::Receiver<bool>) -> Self {
        self.stopping = Some(stopping);
        self
    }

    /// The tonic service, with message limits.
    pub fn into_service(self) -> ShardServiceServer<Self> {
        ShardServiceServer::new(self)
            .max_decoding_message_size(SHARD_REQUEST_BYTES_MAX)
            .max_encoding_message_size(SHARD_RESPONSE_BYTES_MAX)
    }

    /// Watches open on this node now.
    pub fn open_watches(&self) -> usize {
        self.watches.load(Ordering::Relaxed)
    }

    /// Counts and logs a refusal, and turns it into a status.
    fn refuse(&self, method: &str, caller: Option<&NodeId>, error: Error) -> Status {
        refuse(&self.source.now(), method, caller, error)
    }

    /// The caller: the access layer admitted node certificates (and, for
    /// `GetShard` and `WatchShards`, storage certificates); this checks it
    /// again, in one place: a storage node is admitted only when
    /// `storage_reads` and only by a voter (a cache replica serves node
    /// agents only). A server without TLS has no caller to check readers
    /// against, so it serves no shard.
    fn caller<T>(&self, request: &Request<T>, storage_reads: bool) -> Result<ShardCaller> {
        let Some(facts) = admitted(request).and_then(|a| match &a.caller {
            Caller::Certified(facts) => Some(facts.clone()),
            Caller::Anonymous => None,
        }) else {
            return Err(Error::Unauthenticated(
                "shard reads need a node certificate (this storage node may serve without TLS)"
                    .into(),
            ));
        };
        let kind = facts.identity.kind;
        let admitted = match kind {
            IdentityKind::Node => true,
            IdentityKind::Storage => storage_reads && matches!(self.source, Source::Group(_)),
            _ => false,
        };
        if !admitted {
            return Err(Error::PermissionDenied {
                code: crate::access::CALLER_NOT_ADMITTED,
                message: match (&self.source, kind) {
                    (Source::Cache(_), IdentityKind::Storage) => format!(
                        "{}: a cache replica serves node agents only; fill caches from the voters",
                        facts.identity
                    ),
                    _ => format!("{} may not call this shard read", facts.identity),
                },
            });
        }
        Ok(ShardCaller {
            kind,
            node_id: facts.identity.node_id,
            serial_hex: facts.serial_hex,
            not_after: facts.not_after,
        })
    }

    fn check_cluster(&self, cluster_id: &str) -> Result<()> {
        let ours = self.source.cluster_id();
        if cluster_id != ours.as_str() {
            return Err(Error::WrongCluster {
                expected: ours.clone(),
                got: cluster_id.chars().take(80).collect(),
            });
        }
        Ok(())
    }

    fn get(
        &self,
        caller: &ShardCaller,
        message: &pb::GetShardRequest,
    ) -> Result<pb::GetShardResponse> {
        self.check_cluster(&message.cluster_id)?;
        let scope: Scope = message.scope.parse()?;
        let at = self.source.now();
        let who = self.readers.who(&at, caller)?;
        let record = self.readers.read(&at, &scope.to_string(), &who)?;
        if message.min_version > record.version.0 {
            return Err(Error::NotYet {
                scope: scope.to_string(),
                held: record.version.0,
                wanted: message.min_version,
            });
        }
        Ok(answer(&at, record, self.staleness(&at), self.load()))
    }

    fn list(
        &self,
        caller: &ShardCaller,
        message: &pb::ListOwnScopesRequest,
    ) -> Result<pb::ListOwnScopesResponse> {
        self.check_cluster(&message.cluster_id)?;
        let at = self.source.now();
        let who = self.readers.who(&at, caller)?;
        // Scope, version and header hash only: the envelopes stay put
        // unless their readers are not known yet.
        let held = at.held();
        let mut scopes = Vec::new();
        let mut truncated = false;
        for (scope, version, header_hash) in held {
            if !self.readers.admits(&at, &scope, header_hash, &who)? {
                continue;
            }
            if scopes.len() == OWN_SCOPES_MAX {
                truncated = true;
                break;
            }
            scopes.push(pb::ScopeVersion { scope, version });
        }
        Ok(pb::ListOwnScopesResponse { scopes, truncated })
    }

    /// Checks a watch request; returns the watched scopes with the
    /// caller's versions.
    fn open_watch(
        &self,
        caller: &ShardCaller,
        message: &pb::WatchShardsRequest,
    ) -> Result<BTreeMap<String, u64>> {
        self.check_cluster(&message.cluster_id)?;
        if message.known.is_empty() {
            return Err(Error::InvalidRequest("a watch of no scope".into()));
        }
        if message.known.len() > WATCH_SCOPES_MAX {
            return Err(Error::Oversize {
                what: "watched scopes",
                limit: WATCH_SCOPES_MAX,
                got: message.known.len(),
            });
        }
        let mut known = BTreeMap::new();
        for entry in &message.known {
            let scope: Scope = entry.scope.parse()?;
            if known.insert(scope.to_string(), entry.version).is_some() {
                return Err(Error::InvalidRequest(format!(
                    "scope {scope} is watched twice"
                )));
            }
        }
        // A scope held now must be readable now: the same refusal as
        // GetShard, before the stream starts. A scope not held yet is
        // watched until it appears (and checked then).
        let at = self.source.now();
        let who = self.readers.who(&at, caller)?;
        for scope in known.keys() {
            match self.readers.read(&at, scope, &who) {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(known)
    }

    /// Takes one of the [`WATCH_STREAMS_MAX`] watch places.
    /// This node's load as a reader sees it.
    fn load(&self) -> pb::ServerLoad {
        let count = |n: &AtomicUsize| u32::try_from(n.load(Ordering::Acquire)).unwrap_or(u32::MAX);
        pb::ServerLoad {
            watches: count(&self.watches),
            watches_max: u32::try_from(WATCH_STREAMS_MAX).unwrap_or(u32::MAX),
            reads_in_flight: count(&self.reads),
        }
    }

    fn watch_permit(&self) -> Result<Counted> {
        let before = self.watches.fetch_add(1, Ordering::AcqRel);
        if before >= WATCH_STREAMS_MAX {
            self.watches.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Overloaded(format!(
                "this storage node serves {WATCH_STREAMS_MAX} watches already; retry later or watch another storage node"
            )));
        }
        Ok(Counted(self.watches.clone()))
    }
}

/// Counts and logs a refusal of `method` at `at`, as a status.
fn refuse(at: &At, method: &str, caller: Option<&NodeId>, error: Error) -> Status {
    at.metrics().refused(error.code());
    tracing::debug!(
        cluster_id = %at.cluster_id(),
        node_id = %at.node_id(),
        caller = caller.map(NodeId::as_str).unwrap_or(""),
        method,
        code = error.code(),
        "shard read refused: {error}"
    );
    error.into()
}

/// The answer carrying `record`, served at `at`.
fn answer(
    at: &At,
    record: ShardRecord,
    staleness: pb::Staleness,
    load: pb::ServerLoad,
) -> pb::GetShardResponse {
    pb::GetShardResponse {
        envelope: record.envelope.into_vec(),
        served_by_node_id: at.node_id().to_string(),
        staleness: Some(staleness),
        load: Some(load),
    }
}

/// How fresh what `node` (a voter or learner) serves may be.
pub fn staleness(node: &AuthorityNode) -> pb::Staleness {
    pb::Staleness {
        partition_view: node.status().view.to_pb() as i32,
        last_apply_age_ms: u64::try_from(node.state().last_apply_age().as_millis())
            .unwrap_or(u64::MAX),
        from_cache_replica: false,
        authority_term: node.state().authority_term().0,
    }
}

/// The reader that node `node_id` is: from the body of `record`, the
/// serving node's own `node/<node_id>` shard
/// ([`rap_proto::shards::node_reader`]), or, while it holds none (or one
/// that does not decode, which is logged), a node without roles or
/// organizations, which reads only its own `node/` scope and the
/// all-nodes scopes.
pub fn reader_of(record: Option<ShardRecord>, cluster_id: &ClusterId, node_id: &NodeId) -> Reader {
    let bare = || Reader::Node {
        node_id: node_id.clone(),
        roles: Vec::new(),
        orgs: Vec::new(),
    };
    let Some(record) = record else {
        return bare();
    };
    let reader = rap_proto::envelope::decode(&record.envelope).and_then(|envelope| {
        let shard = rap_proto::shards::decode::<pb::NodeShard>(&envelope.body, cluster_id)?;
        rap_proto::shards::node_reader(&shard)
    });
    match reader {
        Ok(Reader::Node { node_id: named, .. }) if named != *node_id => {
            tracing::error!(
                cluster_id = %cluster_id,
                caller = %node_id,
                named = %named,
                "the applied node shard names another node; reading it as a node without roles"
            );
            bare()
        }
        Ok(reader) => reader,
        Err(error) => {
            tracing::error!(
                cluster_id = %cluster_id,
                caller = %node_id,
                %error,
                "the applied node shard does not decode; reading it as a node without roles"
            );
            bare()
        }
    }
}

/// The readers check of shard reads, in one place: whether a reader is
/// admitted by the `readers` of the envelope a scope holds. The readers of
/// each held envelope are decoded once per version (keyed by its header
/// hash).
///
/// A cache replica reading from a voter is checked against the group's
/// `cache/<its id>` shard instead (decoded once per version too).
#[derive(Debug, Default)]
pub struct Readers {
    cache: Mutex<HashMap<String, CachedReaders>>,
    assignments: Mutex<HashMap<NodeId, CachedAssignment>>,
    nodes: Mutex<HashMap<NodeId, CachedNode>>,
}

/// Who one node agent is: (the header hash of the `node/<id>` envelope it
/// was read from, `None` while none is held; the reader).
type CachedNode = (Option<Digest>, Reader);

/// The readers of one envelope version: (its header hash, its readers).
type CachedReaders = (Digest, Arc<[ReaderSelector]>);
/// What one version of a cache's assignment lets it read: (the header
/// hash of its `cache/<id>` envelope, the scopes).
type CachedAssignment = (Digest, Arc<BTreeSet<String>>);

impl Readers {
    /// Who `caller` is at `at`: a node agent with the roles of the
    /// `node/<caller>` shard held there, or a cache replica with the scopes
    /// of the `cache/<caller>` shard held there.
    fn who(&self, at: &At, caller: &ShardCaller) -> Result<Who> {
        if caller.kind != IdentityKind::Storage {
            return Ok(Who::Node(self.node_reader(at, &caller.node_id)));
        }
        let scope = Scope::Cache(caller.node_id.clone()).to_string();
        let mut scopes = BTreeSet::from([scope.clone()]);
        let Some(record) = at.shard(&scope) else {
            // No assignment: it may ask for one (and gets NOT_FOUND).
            return Ok(Who::Cache {
                node_id: caller.node_id.clone(),
                scopes: Arc::new(scopes),
            });
        };
        let cached = self
            .assignments
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&caller.node_id)
            .filter(|(hash, _)| *hash == record.header_hash)
            .map(|(_, scopes)| scopes.clone());
        if let Some(scopes) = cached {
            return Ok(Who::Cache {
                node_id: caller.node_id.clone(),
                scopes,
            });
        }
        let envelope = rap_proto::envelope::decode(&record.envelope).map_err(|e| {
            Error::Storage(format!(
                "the stored envelope of {scope} does not decode: {e}"
            ))
        })?;
        let assignment: pb::CacheShard =
            rap_proto::shards::decode(&envelope.body, at.cluster_id())?;
        scopes.insert(Scope::TrustRoot.to_string());
        scopes.extend(
            assignment
                .scopes
                .into_iter()
                .filter(|s| !s.starts_with("cache/")),
        );
        let scopes = Arc::new(scopes);
        let mut assignments = self
            .assignments
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if assignments.len() >= SHARDS_MAX && !assignments.contains_key(&caller.node_id) {
            assignments.clear();
        }
        assignments.insert(caller.node_id.clone(), (record.header_hash, scopes.clone()));
        Ok(Who::Cache {
            node_id: caller.node_id.clone(),
            scopes,
        })
    }

    /// The reader node agent `node_id` is at `at` ([`reader_of`] its
    /// `node/<id>` shard), decoded once per version of that shard.
    fn node_reader(&self, at: &At, node_id: &NodeId) -> Reader {
        let scope = Scope::Node(node_id.clone()).to_string();
        let hash = at.header_hash(&scope);
        let lock = || self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, reader)) = lock().get(node_id).filter(|(held, _)| *held == hash) {
            return reader.clone();
        }
        // The shard may change between the two reads: then the reader is
        // kept under the older hash and decoded again on the next call.
        let reader = reader_of(at.shard(&scope), at.cluster_id(), node_id);
        let mut nodes = lock();
        if nodes.len() >= SHARDS_MAX && !nodes.contains_key(node_id) {
            nodes.clear();
        }
        nodes.insert(node_id.clone(), (hash, reader.clone()));
        reader
    }

    /// The shard `scope` holds, if `who` may read it: `NOT_FOUND` when
    /// `at` holds no shard of `scope`, `NOT_A_READER` when its envelope's
    /// readers (or the cache's assignment) do not admit `who`.
    fn read(&self, at: &At, scope: &str, who: &Who) -> Result<ShardRecord> {
        let record = at.shard(scope).ok_or_else(|| {
            Error::NotFound(format!("this storage node holds no shard of {scope}"))
        })?;
        match who {
            Who::Node(reader) => {
                let readers = match self.cached(scope, record.header_hash) {
                    Some(readers) => readers,
                    None => self.remember(scope, &record)?,
                };
                if !reader.is_admitted(&readers) {
                    return Err(not_a_reader(scope, who));
                }
            }
            Who::Cache { scopes, .. } => {
                if !scopes.contains(scope) {
                    return Err(not_a_reader(scope, who));
                }
            }
        }
        Ok(record)
    }

    /// Whether `who` may read the envelope of `scope` whose header hash
    /// is `header_hash` (as listed from `at`).
    fn admits(&self, at: &At, scope: &str, header_hash: Digest, who: &Who) -> Result<bool> {
        let reader = match who {
            Who::Node(reader) => reader,
            Who::Cache { scopes, .. } => return Ok(scopes.contains(scope)),
        };
        let readers = match self.cached(scope, header_hash) {
            Some(readers) => readers,
            None => match at.shard(scope) {
                Some(record) => self.remember(scope, &record)?,
                // Gone since it was listed: nobody reads it now.
                None => return Ok(false),
            },
        };
        Ok(reader.is_admitted(&readers))
    }

    /// The readers of the envelope of `scope` with `header_hash`, if known.
    fn cached(&self, scope: &str, header_hash: Digest) -> Option<Arc<[ReaderSelector]>> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.get(scope) {
            Some((hash, readers)) if *hash == header_hash => Some(readers.clone()),
            _ => None,
        }
    }

    /// Decodes and remembers the readers of `record`, the shard of `scope`.
    fn remember(&self, scope: &str, record: &ShardRecord) -> Result<Arc<[ReaderSelector]>> {
        // Verified when it was applied: a stored envelope that does not
        // decode is a bug, refused as a storage error.
        let envelope = rap_proto::envelope::decode(&record.envelope).map_err(|e| {
            Error::Storage(format!(
                "the stored envelope of {scope} does not decode: {e}"
            ))
        })?;
        let readers: Arc<[ReaderSelector]> = Arc::from(envelope.header.readers);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= SHARDS_MAX && !cache.contains_key(scope) {
            cache.clear();
        }
        cache.insert(scope.to_string(), (record.header_hash, readers.clone()));
        Ok(readers)
    }
}

fn not_a_reader(scope: &str, who: &Who) -> Error {
    Error::PermissionDenied {
        code: codes::NOT_A_READER,
        message: match who {
            Who::Node(reader) => format!("the readers of {scope} do not admit {reader}"),
            Who::Cache { .. } => format!("{scope} is not in the placement of {who}"),
        },
    }
}

/// One unit of a counter (one of the [`WATCH_STREAMS_MAX`] watch places, a
/// read in progress), given back on drop.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Counted {
    /// Counts one more in `counter` until dropped.
    fn count(counter: &Arc<AtomicUsize>) -> Counted {
        counter.fetch_add(1, Ordering::AcqRel);
        Counted(counter.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One open `WatchShards` stream.
struct Watch {
    api: ShardApi,
    caller: ShardCaller,
    /// Scope → the newest version the caller has.
    known: BTreeMap<String, u64>,
    queue: VecDeque<std::result::Result<pb::GetShardResponse, Status>>,
    /// When the change that woke the watch became visible (`None`: the
    /// answers queued are the first ones or a re-check's).
    woken_by: Option<Instant>,
    finished: bool,
    _permit: Counted,
}

impl Watch {
    /// The next answer, waiting for applies as long as it takes; `None`
    /// after a refusal ended the stream.
    async fn next(&mut self) -> Option<std::result::Result<pb::GetShardResponse, Status>> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                if let (Some(since), Ok(_)) = (self.woken_by, &item) {
                    self.api
                        .source
                        .now()
                        .metrics()
                        .observe_watch_delivery(since.elapsed());
                }
                return Some(item);
            }
            if self.finished {
                return None;
            }
            if self
                .api
                .stopping
                .as_ref()
                .is_some_and(|stop| *stop.borrow())
            {
                tracing::debug!("the server stops: watch ended");
                return None;
            }
            // Subscribed before reading: a change after this read wakes
            // us. Taken anew each round: a promotion or a rejoin swaps the
            // node (and its state) in the slot.
            let at = self.api.source.now();
            let mut changes = at.changes();
            changes.mark_seen();
            self.collect(&at);
            if !self.queue.is_empty() || self.finished {
                continue;
            }
            let mut stopping = self.api.stopping.clone();
            let stop = async {
                match stopping.as_mut() {
                    Some(stop) => {
                        let _ = stop.wait_for(|stop| *stop).await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            self.woken_by = None;
            tokio::select! {
                changed = changes.changed() => {
                    if changed {
                        self.woken_by = Some(changes.visible_since());
                    } else {
                        // That node is gone (replaced): look again soon.
                        tokio::time::sleep(WATCH_RECHECK_INTERVAL).await;
                    }
                }
                () = tokio::time::sleep(WATCH_RECHECK_INTERVAL) => {}
                () = stop => {}
            }
        }
    }

    /// Queues the newest version of every watched scope the caller does
    /// not have yet, or the refusal that ends the stream.
    fn collect(&mut self, at: &At) {
        let still_valid = if at.is_revoked(&self.caller.serial_hex) {
            Err(Error::PermissionDenied {
                code: crate::access::CERTIFICATE_REVOKED,
                message: format!(
                    "the certificate of node {} (serial {}) was revoked",
                    self.caller.node_id, self.caller.serial_hex
                ),
            })
        } else if SystemTime::now() > self.caller.not_after {
            Err(Error::Unauthenticated(format!(
                "the certificate of node {} expired during the watch",
                self.caller.node_id
            )))
        } else {
            Ok(())
        };
        if let Err(error) = still_valid {
            self.end(at, error);
            return;
        }
        let moved = at.moved(&self.known);
        if moved.is_empty() {
            return;
        }
        let who = match self.api.readers.who(at, &self.caller) {
            Ok(who) => who,
            Err(error) => {
                self.end(at, error);
                return;
            }
        };
        let fresh = self.api.staleness(at);
        let load = self.api.load();
        for scope in moved {
            match self.api.readers.read(at, &scope, &who) {
                Ok(record) => {
                    self.known.insert(scope, record.version.0);
                    self.queue.push_back(Ok(answer(at, record, fresh, load)));
                }
                // Gone between the two reads (a reseed): nothing to send.
                Err(Error::NotFound(_)) => {}
                Err(error) => {
                    self.end(at, error);
                    return;
                }
            }
        }
    }

    fn end(&mut self, at: &At, error: Error) {
        self.queue.push_back(Err(refuse(
            at,
            "WatchShards",
            Some(&self.caller.node_id),
            error,
        )));
        self.finished = true;
    }
}

/// The stream type of `WatchShards`.
pub type WatchStream =
    Pin<Box<dyn futures::Stream<Item = std::result::Result<pb::GetShardResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ShardService for ShardApi {
    async fn get_shard(
        &self,
        request: Request<pb::GetShardRequest>,
    ) -> std::result::Result<Response<pb::GetShardResponse>, Status> {
        let started = Instant::now();
        let _reading = Counted::count(&self.reads);
        let caller = self
            .caller(&request, true)
            .map_err(|e| self.refuse("GetShard", None, e))?;
        let result = self
            .get(&caller, request.get_ref())
            .map_err(|e| self.refuse("GetShard", Some(&caller.node_id), e));
        self.source
            .now()
            .metrics()
            .observe("GetShard", started.elapsed());
        result.map(Response::new)
    }

    type WatchShardsStream = WatchStream;

    async fn watch_shards(
        &self,
        request: Request<pb::WatchShardsRequest>,
    ) -> std::result::Result<Response<WatchStream>, Status> {
        let caller = self
            .caller(&request, true)
            .map_err(|e| self.refuse("WatchShards", None, e))?;
        let known = self
            .open_watch(&caller, request.get_ref())
            .map_err(|e| self.refuse("WatchShards", Some(&caller.node_id), e))?;
        let permit = self
            .watch_permit()
            .map_err(|e| self.refuse("WatchShards", Some(&caller.node_id), e))?;
        let at = self.source.now();
        let span = tracing::info_span!(
            "watch_shards",
            cluster_id = %at.cluster_id(),
            node_id = %at.node_id(),
            caller = %caller.node_id,
            scopes = known.len(),
        );
        drop(at);
        tracing::debug!(parent: &span, "watch opened");
        let watch = Watch {
            api: self.clone(),
            caller,
            known,
            queue: VecDeque::new(),
            woken_by: None,
            finished: false,
            _permit: permit,
        };
        let stream = futures::stream::unfold(watch, move |mut watch| {
            let span = span.clone();
            async move {
                let item = watch.next().await?;
                Some((item, watch))
            }
            .instrument(span)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_own_scopes(
        &self,
        request: Request<pb::ListOwnScopesRequest>,
    ) -> std::result::Result<Response<pb::ListOwnScopesResponse>, Status> {
        let started = Instant::now();
        let caller = self
            .caller(&request, false)
            .map_err(|e| self.refuse("ListOwnScopes", None, e))?;
        let result = self
            .list(&caller, request.get_ref())
            .map_err(|e| self.refuse("ListOwnScopes", Some(&caller.node_id), e));
        self.source
            .now()
            .metrics()
            .observe("ListOwnScopes", started.elapsed());
        result.map(Response::new)
    }
}
