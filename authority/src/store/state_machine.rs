//! The state machine: [`StateMachineStore`] applies committed entries to
//! the [`AuthorityState`] and persists what they touched; [`SnapshotBuilder`]
//! serializes it; [`StateView`] lets the service layer read it.

use super::SNAPSHOT_BYTES_MAX;
use super::tables::{
    KEY_LAST_APPLIED, KEY_LAST_MEMBERSHIP, KEY_SNAPSHOT_COUNTER, KEY_SNAPSHOT_DATA,
    KEY_SNAPSHOT_META, KEY_STATE, SHARDS, SM_META, SNAPSHOT, StoreError, begin_deferred,
    begin_durable, decode, encode, get_decoded,
};
use crate::limits::SHARDS_MAX;
use crate::request::Response;
use crate::state::{AuthorityState, ShardRecord, Touched};
use crate::typ::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use rap_proto::envelope::TermMark;
use rap_proto::ids::{AuthorityTerm, ClusterId, FenceSeq};
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::watch;
// tokio's clock: the real one in production, the simulated one under the
// simulator (the apply age storage nodes report must not vary by wall time).
use tokio::time::Instant;

/// The authority group's state machine, persisted in the shared redb file.
///
/// Guarantees: `apply` persists one batch in one durable transaction
/// before it returns the responses; a failed transaction leaves memory and
/// disk as they were before the batch; an entry at or below the last
/// applied index is refused, so no entry (no fence) is ever applied twice.
pub struct StateMachineStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    machine: Arc<RwLock<Machine>>,
    /// Announces every change of the applied state (after it is durable).
    applied: Arc<watch::Sender<AppliedMark>>,
    /// Set when a failed apply could not even be rolled back by reloading
    /// the file: every later call fails (openraft stops the node anyway).
    failed: Option<String>,
    /// Times each applied batch, persisted (the node's metrics).
    apply_timing: Option<prometheus_client::metrics::histogram::Histogram>,
}

/// A read handle on the applied state, for the service layer: cheap to
/// clone, never blocks on Raft, and only ever shows state that is on disk.
/// A reader waits at most for one `apply` transaction (one fsync).
#[derive(Clone)]
pub struct StateView {
    machine: Arc<RwLock<Machine>>,
    applied: Arc<watch::Sender<AppliedMark>>,
}

/// When the applied state last changed: what [`StateView::changes`]
/// announces. Sent after the change is durable and visible to readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedMark {
    /// Index of the last applied entry (0: none).
    pub index: u64,
    /// When it was applied (or, before any apply of this process, when
    /// the state was loaded).
    pub at: Instant,
}

/// Builds a snapshot of the current applied state and stores it as the
/// current snapshot (unless a newer one was installed meanwhile).
pub struct SnapshotBuilder {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    machine: Arc<RwLock<Machine>>,
}

/// What the state machine holds in memory: the replicated state and the
/// Raft bookkeeping persisted with it.
#[derive(Clone, Debug, Default, PartialEq)]
struct Machine {
    state: AuthorityState,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

impl fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("path", &self.path)
            .field("last_applied", &self.last_applied())
            .field("failed", &self.failed)
            .finish()
    }
}

impl fmt::Debug for StateView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateView")
            .field("last_applied", &self.last_applied())
            .finish()
    }
}

impl StateMachineStore {
    /// Loads and checks the state machine of an initialised file.
    pub(super) fn load(db: Arc<Database>, path: Arc<PathBuf>) -> crate::Result<Self> {
        let machine = read_machine(&db)
            .and_then(|machine| {
                check_snapshot(&db)?;
                Ok(machine)
            })
            .map_err(|e| e.into_open_error(&path, "raft state machine"))?;
        let applied = Arc::new(watch::Sender::new(AppliedMark {
            index: machine.last_applied.map(|id| id.index).unwrap_or(0),
            at: Instant::now(),
        }));
        Ok(StateMachineStore {
            db,
            path,
            machine: Arc::new(RwLock::new(machine)),
            applied,
            failed: None,
            apply_timing: None,
        })
    }

    /// Times every applied batch (until it is durable) into `histogram`.
    pub fn timed(mut self, histogram: prometheus_client::metrics::histogram::Histogram) -> Self {
        self.apply_timing = Some(histogram);
        self
    }

    /// A shared read handle on the applied state (see [`StateView`]).
    pub fn view(&self) -> StateView {
        StateView {
            machine: self.machine.clone(),
            applied: self.applied.clone(),
        }
    }

    /// A copy of the applied state.
    pub fn state(&self) -> AuthorityState {
        read(&self.machine).state.clone()
    }

    /// Id of the last applied entry.
    pub fn last_applied(&self) -> Option<LogId> {
        read(&self.machine).last_applied
    }

    /// The membership of the last applied membership entry.
    pub fn last_membership(&self) -> StoredMembership {
        read(&self.machine).last_membership.clone()
    }

    /// Path of the redb file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[allow(clippy::result_large_err)] // openraft's error type, as every trait method returns it
    fn healthy(&self) -> Result<(), StorageError> {
        match &self.failed {
            None => Ok(()),
            Some(reason) => {
                Err(StorageIOError::write_state_machine(AnyError::error(reason)).into())
            }
        }
    }
}

impl StateView {
    /// Runs `f` on the applied state under the read lock, without copying
    /// it. Keep `f` short: `apply` waits for it.
    pub fn read<R>(&self, f: impl FnOnce(&AuthorityState) -> R) -> R {
        f(&read(&self.machine).state)
    }

    /// A copy of the whole applied state.
    pub fn state(&self) -> AuthorityState {
        self.read(AuthorityState::clone)
    }

    /// The cluster, once `Genesis` is applied.
    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.read(|state| state.cluster_id.clone())
    }

    /// The current authority term (0 before genesis).
    pub fn authority_term(&self) -> AuthorityTerm {
        self.read(|state| state.authority_term)
    }

    /// The last fence sequence granted in the current term.
    pub fn last_fence_seq(&self) -> FenceSeq {
        self.read(|state| state.last_fence_seq)
    }

    /// The newest verified envelope of `scope`, if any.
    pub fn shard(&self, scope: &str) -> Option<ShardRecord> {
        self.read(|state| state.shards.get(scope).cloned())
    }

    /// Every scope that holds a shard, in order.
    pub fn scopes(&self) -> Vec<String> {
        self.read(|state| state.shards.keys().cloned().collect())
    }

    /// Id of the last applied entry: how fresh this view is.
    pub fn last_applied(&self) -> Option<LogId> {
        read(&self.machine).last_applied
    }

    /// The membership of the last applied membership entry.
    pub fn last_membership(&self) -> StoredMembership {
        read(&self.machine).last_membership.clone()
    }

    /// A receiver that wakes whenever the applied state changed (an
    /// applied batch, an installed snapshot). Mark the current value seen
    /// (`borrow_and_update`) *before* reading the state, so no change
    /// between the read and the wait is missed.
    pub fn changes(&self) -> watch::Receiver<AppliedMark> {
        self.applied.subscribe()
    }

    /// Time since the state last changed (see [`AppliedMark::at`]).
    pub fn last_apply_age(&self) -> Duration {
        self.applied.borrow().at.elapsed()
    }
}

impl StateMachineStore {
    /// Announces a change of the applied state up to `index`.
    fn announce(&self, index: u64) {
        self.applied.send_replace(AppliedMark {
            index,
            at: Instant::now(),
        });
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.healthy()?;
        let machine = read(&self.machine);
        Ok((machine.last_applied, machine.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.healthy()?;
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|entry| entry.log_id) else {
            return Ok(Vec::new());
        };
        let started = std::time::Instant::now();
        // Held until the batch is durable: readers never see unpersisted state.
        let mut machine = write(&self.machine);

        // Refuse before touching anything: re-applying an entry would, for
        // one, grant a fence sequence twice.
        let mut floor = machine.last_applied.map(|id| id.index);
        for entry in &entries {
            if let Some(floor) = floor
                && entry.log_id.index <= floor
            {
                let error = StoreError::Invalid(format!(
                    "entry {} is not after the last applied index {floor}: refusing to apply it twice",
                    entry.log_id
                ));
                return Err(StorageIOError::apply(entry.log_id, &error).into());
            }
            floor = Some(entry.log_id.index);
        }

        let mut changes = Changes::default();
        let mut responses = Vec::with_capacity(entries.len());
        for entry in entries {
            let response = match entry.payload {
                EntryPayload::Blank => Response::Done,
                EntryPayload::Normal(request) => {
                    let applied = machine.state.apply(entry.log_id.index, &request);
                    changes.add(applied.touched);
                    applied.response
                }
                EntryPayload::Membership(membership) => {
                    machine.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    changes.membership = true;
                    Response::Done
                }
            };
            machine.last_applied = Some(entry.log_id);
            responses.push(response);
        }

        match persist_applied(&self.db, &machine, &changes) {
            Ok(()) => {
                drop(machine);
                self.announce(last.index);
                if let Some(timing) = &self.apply_timing {
                    timing.observe(started.elapsed().as_secs_f64());
                }
                Ok(responses)
            }
            Err(error) => {
                tracing::error!(
                    path = %self.path.display(), %error, last = %last,
                    "persist applied entries; rolling the state machine back"
                );
                match read_machine(&self.db) {
                    Ok(on_disk) => *machine = on_disk,
                    Err(reload) => {
                        tracing::error!(
                            path = %self.path.display(), error = %reload,
                            "reload the state machine after a failed apply"
                        );
                        self.failed = Some(format!(
                            "apply up to {last} failed ({error}) and the state could not be reloaded ({reload})"
                        ));
                    }
                }
                Err(StorageIOError::apply(last, &error).into())
            }
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            path: self.path.clone(),
            machine: self.machine.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        self.healthy()?;
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        self.healthy()?;
        let data = snapshot.into_inner();
        let machine = match decode_snapshot(meta, &data) {
            Ok(machine) => machine,
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, snapshot = %meta.snapshot_id, "decode a received snapshot");
                return Err(StorageIOError::read_snapshot(Some(meta.signature()), &error).into());
            }
        };
        if let Err(error) = persist_installed(&self.db, &machine, meta, &data) {
            tracing::error!(path = %self.path.display(), %error, snapshot = %meta.snapshot_id, "install a snapshot");
            return Err(StorageIOError::write_snapshot(Some(meta.signature()), &error).into());
        }
        let index = machine.last_applied.map(|id| id.index).unwrap_or(0);
        *write(&self.machine) = machine;
        self.announce(index);
        tracing::info!(path = %self.path.display(), snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.healthy()?;
        match read_current_snapshot(&self.db) {
            Ok(snapshot) => Ok(snapshot),
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, "read the current snapshot");
                Err(StorageIOError::read_snapshot(None, &error).into())
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let built = {
            let machine = read(&self.machine);
            encode(
                "snapshot",
                &SnapshotPayloadRef {
                    last_applied: &machine.last_applied,
                    last_membership: &machine.last_membership,
                    state: &machine.state,
                },
            )
            .map(|data| (machine.last_applied, machine.last_membership.clone(), data))
        };
        let result = built.and_then(|(last_applied, last_membership, data)| {
            if data.len() > SNAPSHOT_BYTES_MAX {
                return Err(StoreError::Invalid(format!(
                    "the state machine's snapshot is {} bytes, over the {SNAPSHOT_BYTES_MAX}-byte limit",
                    data.len()
                )));
            }
            let meta = persist_built(&self.db, last_applied, last_membership, &data)?;
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        });
        match result {
            Ok(snapshot) => {
                tracing::info!(path = %self.path.display(), snapshot = %snapshot.meta.snapshot_id, "snapshot built");
                Ok(snapshot)
            }
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, "build a snapshot");
                Err(StorageIOError::write_snapshot(None, &error).into())
            }
        }
    }
}

/// The scalar part of [`AuthorityState`], stored under `sm_meta/state`.
/// Built and taken apart by exhaustive destructuring, so a new field of
/// `AuthorityState` fails to compile here instead of being dropped.
#[derive(Serialize, Deserialize)]
struct StateMeta {
    cluster_id: Option<ClusterId>,
    authority_term: AuthorityTerm,
    last_fence_seq: FenceSeq,
    trust_root: ByteBuf,
    term_mark: Option<TermMark>,
    // Absent in stores written before promotion orders were kept.
    #[serde(default)]
    term_proof: ByteBuf,
    // Absent in stores written before trust-root rotation.
    #[serde(default)]
    current_root: ByteBuf,
}

impl StateMeta {
    fn of(state: &AuthorityState) -> Self {
        let AuthorityState {
            cluster_id,
            authority_term,
            last_fence_seq,
            trust_root,
            term_mark,
            term_proof,
            current_root,
            shards: _,
        } = state;
        StateMeta {
            cluster_id: cluster_id.clone(),
            authority_term: *authority_term,
            last_fence_seq: *last_fence_seq,
            trust_root: trust_root.clone(),
            term_mark: *term_mark,
            term_proof: term_proof.clone(),
            current_root: current_root.clone(),
        }
    }

    fn into_state(self, shards: BTreeMap<String, ShardRecord>) -> AuthorityState {
        let StateMeta {
            cluster_id,
            authority_term,
            last_fence_seq,
            trust_root,
            term_mark,
            term_proof,
            current_root,
        } = self;
        AuthorityState {
            cluster_id,
            authority_term,
            last_fence_seq,
            trust_root,
            term_mark,
            term_proof,
            current_root,
            shards,
        }
    }
}

/// A snapshot's bytes, as written (borrowing the live state).
#[derive(Serialize)]
struct SnapshotPayloadRef<'a> {
    last_applied: &'a Option<LogId>,
    last_membership: &'a StoredMembership,
    state: &'a AuthorityState,
}

/// A snapshot's bytes, as read. Same field names as [`SnapshotPayloadRef`].
#[derive(Deserialize)]
struct SnapshotPayload {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    state: AuthorityState,
}

/// What one `apply` batch changed, merged over its entries.
#[derive(Default)]
struct Changes {
    all: bool,
    meta: bool,
    scopes: BTreeSet<String>,
    membership: bool,
}

impl Changes {
    fn add(&mut self, touched: Touched) {
        match touched {
            Touched::Nothing => {}
            Touched::Meta => self.meta = true,
            Touched::Scopes(scopes) => {
                self.meta = true;
                self.scopes.extend(scopes);
            }
            Touched::All => self.all = true,
        }
    }
}

fn read(machine: &RwLock<Machine>) -> RwLockReadGuard<'_, Machine> {
    // A panic while holding the lock cannot leave a half-written Machine
    // visible for long: the node stops. Reading on is the useful choice.
    machine.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(machine: &RwLock<Machine>) -> RwLockWriteGuard<'_, Machine> {
    machine.write().unwrap_or_else(PoisonError::into_inner)
}

/// One transaction with everything a batch touched, committed without an
/// fsync ([`begin_deferred`]): every entry it applies is in the durable
/// log, so a crash that loses it only means those entries are applied
/// again on start (openraft re-applies from the durable `last_applied` up
/// to the committed index), with the same results. A snapshot is stored,
/// and the log purged behind it, only by durable commits, which persist
/// this one first.
fn persist_applied(db: &Database, machine: &Machine, changes: &Changes) -> Result<(), StoreError> {
    let txn = begin_deferred(db)?;
    {
        let mut meta = txn.open_table(SM_META)?;
        if changes.all || changes.meta || !changes.scopes.is_empty() {
            let scalars = encode("state", &StateMeta::of(&machine.state))?;
            meta.insert(KEY_STATE, scalars.as_slice())?;
        }
        meta.insert(
            KEY_LAST_APPLIED,
            encode("last applied log id", &machine.last_applied)?.as_slice(),
        )?;
        if changes.membership {
            meta.insert(
                KEY_LAST_MEMBERSHIP,
                encode("last membership", &machine.last_membership)?.as_slice(),
            )?;
        }
    }
    if changes.all {
        write_all_shards(&txn, &machine.state)?;
    } else if !changes.scopes.is_empty() {
        let mut shards = txn.open_table(SHARDS)?;
        for scope in &changes.scopes {
            match machine.state.shards.get(scope) {
                Some(record) => {
                    shards.insert(scope.as_str(), encode("shard", record)?.as_slice())?;
                }
                None => {
                    shards.remove(scope.as_str())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Replaces the whole `shards` table with the state's shards.
fn write_all_shards(txn: &WriteTransaction, state: &AuthorityState) -> Result<(), StoreError> {
    let mut shards = txn.open_table(SHARDS)?;
    shards.retain(|_, _| false)?;
    for (scope, record) in &state.shards {
        shards.insert(scope.as_str(), encode("shard", record)?.as_slice())?;
    }
    Ok(())
}

/// One durable transaction replacing state, shards and current snapshot.
fn persist_installed(
    db: &Database,
    machine: &Machine,
    meta: &SnapshotMeta,
    data: &[u8],
) -> Result<(), StoreError> {
    let txn = begin_durable(db)?;
    {
        let mut sm_meta = txn.open_table(SM_META)?;
        sm_meta.insert(
            KEY_STATE,
            encode("state", &StateMeta::of(&machine.state))?.as_slice(),
        )?;
        sm_meta.insert(
            KEY_LAST_APPLIED,
            encode("last applied log id", &machine.last_applied)?.as_slice(),
        )?;
        sm_meta.insert(
            KEY_LAST_MEMBERSHIP,
            encode("last membership", &machine.last_membership)?.as_slice(),
        )?;
    }
    write_all_shards(&txn, &machine.state)?;
    {
        let mut snapshot = txn.open_table(SNAPSHOT)?;
        snapshot.insert(KEY_SNAPSHOT_META, encode("snapshot meta", meta)?.as_slice())?;
        snapshot.insert(KEY_SNAPSHOT_DATA, data)?;
    }
    txn.commit()?;
    Ok(())
}

/// Stores a freshly built snapshot as the current one, unless the current
/// one is newer (installed while this one was being built); returns its
/// meta with a fresh id either way.
fn persist_built(
    db: &Database,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    data: &[u8],
) -> Result<SnapshotMeta, StoreError> {
    let txn = begin_durable(db)?;
    let meta = {
        let mut snapshot = txn.open_table(SNAPSHOT)?;
        let counter = get_decoded::<u64>(&snapshot, KEY_SNAPSHOT_COUNTER, "snapshot counter")?
            .unwrap_or(0)
            .saturating_add(1);
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{counter}", id.leader_id.term, id.index),
            None => format!("0-0-{counter}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        let current: Option<SnapshotMeta> =
            get_decoded(&snapshot, KEY_SNAPSHOT_META, "snapshot meta")?;
        snapshot.insert(
            KEY_SNAPSHOT_COUNTER,
            encode("snapshot counter", &counter)?.as_slice(),
        )?;
        if current.is_none_or(|current| current.last_log_id <= meta.last_log_id) {
            snapshot.insert(
                KEY_SNAPSHOT_META,
                encode("snapshot meta", &meta)?.as_slice(),
            )?;
            snapshot.insert(KEY_SNAPSHOT_DATA, data)?;
        }
        meta
    };
    txn.commit()?;
    Ok(meta)
}

/// Decodes and checks a received snapshot against its meta.
fn decode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> Result<Machine, StoreError> {
    if data.len() > SNAPSHOT_BYTES_MAX {
        return Err(StoreError::Invalid(format!(
            "snapshot {} is {} bytes, over the {SNAPSHOT_BYTES_MAX}-byte limit",
            meta.snapshot_id,
            data.len()
        )));
    }
    let payload: SnapshotPayload = decode(format_args!("snapshot {}", meta.snapshot_id), data)?;
    if payload.last_applied != meta.last_log_id || payload.last_membership != meta.last_membership {
        return Err(StoreError::Invalid(format!(
            "snapshot {} holds state up to {:?} but its meta says {:?}",
            meta.snapshot_id, payload.last_applied, meta.last_log_id
        )));
    }
    let machine = Machine {
        state: payload.state,
        last_applied: payload.last_applied,
        last_membership: payload.last_membership,
    };
    check_machine(&machine)?;
    Ok(machine)
}

/// The state machine as stored.
fn read_machine(db: &Database) -> Result<Machine, StoreError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(SM_META)?;
    let scalars: Option<StateMeta> = get_decoded(&meta, KEY_STATE, "state")?;
    let last_applied: Option<LogId> =
        get_decoded::<Option<LogId>>(&meta, KEY_LAST_APPLIED, "last applied log id")?.flatten();
    let last_membership: StoredMembership =
        get_decoded(&meta, KEY_LAST_MEMBERSHIP, "last membership")?.unwrap_or_default();
    let table = txn.open_table(SHARDS)?;
    let mut shards = BTreeMap::new();
    for item in table.iter()? {
        let (scope, record) = item?;
        let scope = scope.value().to_string();
        let record: ShardRecord = decode(format_args!("shard {scope}"), record.value())?;
        shards.insert(scope, record);
    }
    let state = scalars
        .unwrap_or_else(|| StateMeta::of(&AuthorityState::default()))
        .into_state(shards);
    let machine = Machine {
        state,
        last_applied,
        last_membership,
    };
    check_machine(&machine)?;
    Ok(machine)
}

/// Invariants of a stored or received state (paired with the checks of
/// `AuthorityState::apply` when it was written).
fn check_machine(machine: &Machine) -> Result<(), StoreError> {
    let state = &machine.state;
    if state.shards.len() > SHARDS_MAX {
        return Err(StoreError::Invalid(format!(
            "{} shards, over the limit of {SHARDS_MAX}",
            state.shards.len()
        )));
    }
    if state.cluster_id.is_none() && !state.shards.is_empty() {
        return Err(StoreError::Invalid(
            "shards are present but the state has no cluster".to_string(),
        ));
    }
    for (scope, record) in &state.shards {
        if record.authority_term > state.authority_term {
            return Err(StoreError::Invalid(format!(
                "shard {scope} is of authority term {}, above the state's term {}",
                record.authority_term, state.authority_term
            )));
        }
    }
    Ok(())
}

/// The current snapshot, if one was built or installed.
fn read_current_snapshot(db: &Database) -> Result<Option<Snapshot>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    let meta: Option<SnapshotMeta> = get_decoded(&table, KEY_SNAPSHOT_META, "snapshot meta")?;
    let data = table.get(KEY_SNAPSHOT_DATA)?;
    check_snapshot_parts(meta.as_ref(), data.as_ref().map(|data| data.value().len()))?;
    Ok(match (meta, data) {
        (Some(meta), Some(data)) => Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.value().to_vec())),
        }),
        _ => None,
    })
}

/// Open-time check of the current snapshot: its meta decodes and its data
/// is present and within bounds (the data is decoded only when used).
fn check_snapshot(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    let meta: Option<SnapshotMeta> = get_decoded(&table, KEY_SNAPSHOT_META, "snapshot meta")?;
    let data_len = table.get(KEY_SNAPSHOT_DATA)?.map(|data| data.value().len());
    check_snapshot_parts(meta.as_ref(), data_len)
}

/// A stored snapshot is both meta and data, or neither; data is bounded.
fn check_snapshot_parts(
    meta: Option<&SnapshotMeta>,
    data_len: Option<usize>,
) -> Result<(), StoreError> {
    match (meta, data_len) {
        (None, None) => Ok(()),
        (Some(_), Some(len)) if len <= SNAPSHOT_BYTES_MAX => Ok(()),
        (Some(meta), Some(len)) => Err(StoreError::Invalid(format!(
            "snapshot {} is {len} bytes, over the {SNAPSHOT_BYTES_MAX}-byte limit",
            meta.snapshot_id
        ))),
        (Some(meta), None) => Err(StoreError::Invalid(format!(
            "snapshot {} has meta but no data",
            meta.snapshot_id
        ))),
        (None, Some(_)) => Err(StoreError::Invalid(
            "snapshot data without meta".to_string(),
        )),
    }
}
