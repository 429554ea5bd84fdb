//! redb-backed Raft storage: the log store and the state machine of one
//! node's authority group.
//!
//! What do we store? One redb file per node, `<data_dir>/raft.redb`
//! ([`RAFT_DB_FILE`]), shared by the [`LogStore`] and the
//! [`StateMachineStore`]. Every value is MessagePack with field names
//! (`rmp_serde::to_vec_named`): openraft's types skip fields when they are
//! empty, so only a self-describing format reads them back.
//!
//! | table       | key                          | value                                   |
//! |-------------|------------------------------|-----------------------------------------|
//! | `meta`      | `"format"`                   | store format ([`STORE_FORMAT`])         |
//! | `log`       | log index (u64)              | `openraft::Entry<TypeConfig>`           |
//! | `log_meta`  | `"vote"`, `"committed"`, `"last_purged"` | `Vote`, `LogId`, `LogId`    |
//! | `sm_meta`   | `"state"`                    | the scalar part of [`AuthorityState`]   |
//! |             | `"last_applied"`             | `Option<LogId>`                         |
//! |             | `"last_membership"`          | `StoredMembership`                      |
//! | `shards`    | scope (`node/n1`, ...)       | [`ShardRecord`]                         |
//! | `snapshot`  | `"meta"`, `"data"`, `"counter"` | `SnapshotMeta`, raw snapshot bytes, u64 |
//!
//! A snapshot's bytes are `{last_applied, last_membership, state}` with
//! field names; its id is `<raft term>-<index>-<counter>`.
//!
//! **Durability.** Every write is one redb write transaction. Appends,
//! votes, truncations, purges and snapshots commit durably (fsync before
//! `commit` returns): appended entries are acknowledged
//! (`LogFlushed::log_io_completed`) and `save_vote` returns only after
//! that commit. The applied state (`apply`) and the committed index
//! (`save_committed`) commit without an fsync: the next durable commit
//! persists them, and a crash before it loses them whole; both are rebuilt
//! from the durable log on start (openraft re-applies from the durable
//! `last_applied` to the committed index, and takes `max(committed,
//! last_applied)`). The log is purged only behind a snapshot stored
//! durably, so no applied entry is ever missing from both. The calls are blocking and
//! made inline (no `spawn_blocking`), so a deterministic simulation runs
//! them in a fixed order, and no transaction is ever held across an
//! `.await`.
//!
//! **Atomicity.** One `apply` batch is one transaction: the touched shards,
//! the scalar state, `last_applied` and the membership commit together or
//! not at all. If the commit fails the in-memory state is reloaded from the
//! file, so memory never runs ahead of disk. A snapshot is installed with
//! one transaction that replaces state, shards and the current snapshot,
//! and only then is the in-memory state swapped.
//!
//! **Refusing a damaged store.** [`open`] verifies every redb page checksum
//! (`Database::check_integrity`, one read of the whole file), decodes every
//! log entry, checks that the log is contiguous, starts right after the
//! last purged index, and that each entry sits under its own index, and
//! decodes the state machine. Any failure is
//! `Error::Storage("corrupt raft log in <path>: ...")` (or `corrupt raft
//! state machine in ...`): a node never serves a shortened log. redb 3.1
//! panics on some damaged pages instead of returning an error, so `open`
//! is a panic boundary that reports those the same way.
//!
//! **Shared view.** [`StateMachineStore::view`] returns a [`StateView`], a
//! cheap clone of an `Arc<RwLock<..>>` over the applied state, for the
//! service layer to read without going through Raft:
//! [`StateView::authority_term`], [`StateView::last_fence_seq`],
//! [`StateView::cluster_id`], [`StateView::shard`] (one scope's record),
//! [`StateView::scopes`], [`StateView::last_applied`],
//! [`StateView::last_membership`], [`StateView::state`] (a full clone) and
//! [`StateView::read`] (a closure over `&AuthorityState`, no clone). The
//! view only shows state that is committed (in the durable log of a
//! quorum) and written to the file: `apply` holds the write lock until its
//! transaction has committed.
//!
//! [`AuthorityState`]: crate::state::AuthorityState
//! [`ShardRecord`]: crate::state::ShardRecord

mod log_store;
mod state_machine;
mod tables;

pub use log_store::{LogReader, LogStore};
pub use state_machine::{AppliedMark, SnapshotBuilder, StateMachineStore, StateView};

use crate::error::{Error, Result};
use crate::limits::{PUBLISH_BYTES_MAX, RAFT_RPC_BYTES_MAX};
use redb::Database;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Name of the redb file inside a node's data directory.
pub const RAFT_DB_FILE: &str = "raft.redb";

/// Version of the table layout above. `open` refuses a file of another
/// format rather than misreading it.
pub const STORE_FORMAT: u64 = 1;

/// Largest encoded log entry stored or read back. No entry can be larger
/// than the largest Raft RPC that carries it; a bigger value on disk is
/// damage, not data.
pub const LOG_ENTRY_BYTES_MAX: usize = RAFT_RPC_BYTES_MAX;

/// Most bytes of encoded entries one `limited_get_log_entries` call (one
/// append-entries batch) returns; a single larger entry is still returned
/// alone. openraft 0.9 gives an AppendEntries RPC one heartbeat interval
/// to complete (send, the follower's fsync, answer); a batch of hundreds
/// of large entries did not fit, timed out again and again under load,
/// and the leader's quorum lease lapsed (`NO_QUORUM 3/3`). 4 MiB makes it
/// in a few milliseconds on loopback.
pub const REPLICATION_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Largest snapshot built, received or installed (256 MiB). A cluster's
/// shards are small signed documents (a few KiB each, at most
/// `ENVELOPE_BYTES_MAX`); 256 MiB holds tens of thousands of typical ones.
/// A state that outgrows it is refused with a storage error rather than
/// shipped as an unbounded message.
pub const SNAPSHOT_BYTES_MAX: usize = 256 * 1024 * 1024;

const _: () = assert!(REPLICATION_BATCH_BYTES_MAX < RAFT_RPC_BYTES_MAX);
const _: () = assert!(LOG_ENTRY_BYTES_MAX >= PUBLISH_BYTES_MAX);
const _: () = assert!(SNAPSHOT_BYTES_MAX >= RAFT_RPC_BYTES_MAX);

/// Opens (or creates) the node's Raft storage in `data_dir` and returns
/// its log store and state machine, both backed by one shared redb file.
///
/// Refuses a damaged file (bad page checksum, a gap in the log, an entry
/// that does not decode or sits under another index, an unreadable state
/// machine) with `Error::Storage` naming the file and what is wrong. A
/// panic inside redb while it reads a damaged file is caught and reported
/// the same way; the refused file's handle is then leaked (see
/// `open_verified`), so the process should exit rather than retry.
pub fn open(data_dir: &Path) -> Result<(LogStore, StateMachineStore)> {
    open_on(data_dir, None)
}

/// Opens the bytes of a Raft store file. Production has none and opens
/// the file itself; the simulator hands in a disk that loses what was not
/// synced when its host crashes (redb's own storage trait, so the store
/// code is the same either way).
pub type DiskOpener =
    Arc<dyn Fn(&Path) -> std::io::Result<Box<dyn redb::StorageBackend>> + Send + Sync>;

/// [`open`] on `disk`'s bytes for the store file, when given.
pub fn open_on(
    data_dir: &Path,
    disk: Option<&DiskOpener>,
) -> Result<(LogStore, StateMachineStore)> {
    std::fs::create_dir_all(data_dir).map_err(|e| {
        Error::Storage(format!(
            "create raft data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    let path: Arc<PathBuf> = Arc::new(data_dir.join(RAFT_DB_FILE));
    // redb 3.1 trusts its pages until they are verified, and a few of its
    // code paths (debug-build page walks on open, asserts on a file that
    // failed its check) panic on damaged bytes instead of returning an
    // error. A damaged file must be a clear refusal, so the whole open,
    // which is the first read of every page, is a panic boundary.
    // (A custom disk is only read here; after a panic the caller refuses
    // the store and does not use the disk's state again.)
    let opened =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open_verified(&path, disk)));
    let (log, state_machine) = match opened {
        Ok(result) => result?,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string());
            return Err(Error::Storage(format!(
                "corrupt raft log in {}: redb panicked reading the file: {what}",
                path.display()
            )));
        }
    };
    tracing::info!(
        path = %path.display(),
        last_log = ?log.last_log_id(),
        last_applied = ?state_machine.last_applied(),
        "raft store opened"
    );
    Ok((log, state_machine))
}

/// Opens the file, verifies every page checksum, then loads and checks
/// the log and the state machine.
fn open_verified(
    path: &Arc<PathBuf>,
    disk: Option<&DiskOpener>,
) -> Result<(LogStore, StateMachineStore)> {
    let created = match disk {
        None => Database::create(path.as_path()),
        Some(opener) => {
            let backend = opener(path.as_path())
                .map_err(|e| Error::Storage(format!("open raft store {}: {e}", path.display())))?;
            redb::Builder::new().create_with_backend(OpenedDisk(backend))
        }
    };
    let mut db = created.map_err(|e| open_error(path, e.into()))?;
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => {
            // Only redb's allocator bookkeeping was rebuilt: a failed page
            // checksum after the last (two-phase) commit is the `Err` arm.
            tracing::warn!(path = %path.display(), "raft store: redb repaired its allocator state");
        }
        Err(e) => {
            // redb 3.1: a Database whose integrity check failed panics when
            // dropped (its closing commit asserts that the file needs no
            // recovery). The node refuses to start, so leak the handle.
            std::mem::forget(db);
            return Err(open_error(path, e.into()));
        }
    }
    let db = Arc::new(db);
    tables::init(&db).map_err(|e| e.into_open_error(path, "raft log"))?;
    let log = LogStore::load(db.clone(), path.clone())?;
    let state_machine = StateMachineStore::load(db, path.clone())?;
    Ok((log, state_machine))
}

/// A [`DiskOpener`]'s backend, as the type redb's builder takes.
#[derive(Debug)]
struct OpenedDisk(Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for OpenedDisk {
    fn len(&self) -> std::result::Result<u64, std::io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::result::Result<(), std::io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::result::Result<(), std::io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> std::result::Result<(), std::io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), std::io::Error> {
        self.0.write(offset, data)
    }

    fn close(&self) -> std::result::Result<(), std::io::Error> {
        self.0.close()
    }
}

/// The error of opening the file itself, with corruption named as such.
fn open_error(path: &Path, error: redb::Error) -> Error {
    match error {
        redb::Error::Corrupted(what) => Error::Storage(format!(
            "corrupt raft log in {}: redb: {what}",
            path.display()
        )),
        redb::Error::DatabaseAlreadyOpen => Error::Storage(format!(
            "raft store {} is already open (is another process using this data directory?)",
            path.display()
        )),
        other => Error::Storage(format!("open raft store {}: {other}", path.display())),
    }
}
