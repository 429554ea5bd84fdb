//! The Raft log and the vote: [`LogStore`], the single writer openraft
//! drives, and [`LogReader`], the read-only handle its replication tasks
//! use.

use super::tables::{
    KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOG, LOG_META, StoreError, begin_deferred,
    begin_durable, decode, encode, get_decoded,
};
use super::{LOG_ENTRY_BYTES_MAX, REPLICATION_BATCH_BYTES_MAX};
use crate::typ::{Entry, LogId, StorageError, TypeConfig, Vote};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};
use redb::{Database, ReadableDatabase, ReadableTable};
use std::fmt::{self, Debug};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The node's Raft log, vote and committed log id, in the shared redb
/// file. Every write is one durable transaction; an append is acknowledged
/// to openraft only after its commit.
///
/// Invariant: the stored log is contiguous, starts right after the last
/// purged index (when one is recorded), and every entry is stored under its
/// own index. [`super::open`] checks this before a `LogStore` exists;
/// `append` refuses a batch with an inner hole or one that would overwrite
/// a present entry (see `check_append` for the one case it only logs).
pub struct LogStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    /// Cached from `log_meta`; the file is the truth, and only this
    /// writer changes it.
    last_purged: Option<LogId>,
    /// Id of the last entry present; `None` when the log is empty.
    last_entry: Option<LogId>,
    /// Times each append's durable commit (the node's metrics).
    append_timing: Option<prometheus_client::metrics::histogram::Histogram>,
}

/// A read-only handle on the log, cheap to clone, for openraft's
/// replication tasks. Batches from [`RaftLogReader::limited_get_log_entries`]
/// are bounded by [`REPLICATION_BATCH_BYTES_MAX`].
#[derive(Clone)]
pub struct LogReader {
    db: Arc<Database>,
    path: Arc<PathBuf>,
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.path)
            .field("last_purged", &self.last_purged)
            .field("last_entry", &self.last_entry)
            .finish()
    }
}

impl fmt::Debug for LogReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogReader")
            .field("path", &self.path)
            .finish()
    }
}

impl LogStore {
    /// Loads and checks the log of an initialised file (see the module
    /// doc of `store`): every entry decodes, sits under its index, and the
    /// indexes are contiguous from the last purged one.
    pub(super) fn load(db: Arc<Database>, path: Arc<PathBuf>) -> crate::Result<Self> {
        let (last_purged, last_entry) =
            scan(&db).map_err(|e| e.into_open_error(&path, "raft log"))?;
        Ok(LogStore {
            db,
            path,
            last_purged,
            last_entry,
            append_timing: None,
        })
    }

    /// Times every append (its durable commit) into `histogram`.
    pub fn timed(mut self, histogram: prometheus_client::metrics::histogram::Histogram) -> Self {
        self.append_timing = Some(histogram);
        self
    }

    /// Path of the redb file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Id of the last entry in the log, or the last purged one when the log
    /// is empty (what openraft calls the last log id).
    pub fn last_log_id(&self) -> Option<LogId> {
        self.last_entry.or(self.last_purged)
    }

    fn reader(&self) -> LogReader {
        LogReader {
            db: self.db.clone(),
            path: self.path.clone(),
        }
    }

    /// Checks a batch before it is written: its indexes are contiguous and
    /// it never overwrites a present entry (openraft truncates first).
    ///
    /// A batch that starts past the next index is written, with an error
    /// logged: openraft never does this, but its conformance suite does
    /// (it appends after a purge that ran ahead of the log), and the open
    /// check refuses such a log at the next start anyway.
    fn check_append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let mut previous: Option<LogId> = None;
        for entry in entries {
            if let Some(previous) = previous
                && Some(entry.log_id.index) != previous.index.checked_add(1)
            {
                return Err(StoreError::Invalid(format!(
                    "append batch is not contiguous: entry {} follows {previous}",
                    entry.log_id
                )));
            }
            previous = Some(entry.log_id);
        }
        let (Some(first), Some(next)) = (
            entries.first(),
            self.last_log_id().map(|id| id.index.saturating_add(1)),
        ) else {
            return Ok(());
        };
        if let Some(last) = self.last_entry
            && first.log_id.index <= last.index
        {
            return Err(StoreError::Invalid(format!(
                "append of entry {} would overwrite entry {last} without a truncate",
                first.log_id
            )));
        }
        if first.log_id.index != next {
            tracing::error!(
                path = %self.path.display(), first = %first.log_id, next,
                "append does not continue the raft log; the next start will refuse this log"
            );
        }
        Ok(())
    }

    fn do_append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        self.check_append(entries)?;
        let txn = begin_durable(&self.db)?;
        {
            let mut log = txn.open_table(LOG)?;
            for entry in entries {
                let bytes = encode("log entry", entry)?;
                if bytes.len() > LOG_ENTRY_BYTES_MAX {
                    return Err(StoreError::Invalid(format!(
                        "entry {} is {} bytes, over the {LOG_ENTRY_BYTES_MAX}-byte limit",
                        entry.log_id,
                        bytes.len()
                    )));
                }
                log.insert(entry.log_id.index, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Deletes entries from `since` on; returns the new last entry.
    fn do_truncate(&self, since: u64) -> Result<Option<LogId>, StoreError> {
        let txn = begin_durable(&self.db)?;
        let last = {
            let mut log = txn.open_table(LOG)?;
            log.retain_in(since.., |_, _| false)?;
            match log.last()? {
                Some((key, value)) => Some(decode_entry(key.value(), value.value())?.log_id),
                None => None,
            }
        };
        txn.commit()?;
        Ok(last)
    }

    fn do_purge(&self, upto: &LogId) -> Result<(), StoreError> {
        let txn = begin_durable(&self.db)?;
        {
            let mut log = txn.open_table(LOG)?;
            log.retain_in(..=upto.index, |_, _| false)?;
            let mut meta = txn.open_table(LOG_META)?;
            meta.insert(
                KEY_LAST_PURGED,
                encode("last purged log id", upto)?.as_slice(),
            )?;
        }
        txn.commit()?;
        Ok(())
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &str,
        what: &'static str,
        value: Option<&T>,
    ) -> Result<(), StoreError> {
        self.put_meta_in(begin_durable(&self.db)?, key, what, value)
    }

    /// [`Self::put_meta`] committed without an fsync ([`begin_deferred`]).
    fn put_meta_deferred<T: serde::Serialize>(
        &self,
        key: &str,
        what: &'static str,
        value: Option<&T>,
    ) -> Result<(), StoreError> {
        self.put_meta_in(begin_deferred(&self.db)?, key, what, value)
    }

    fn put_meta_in<T: serde::Serialize>(
        &self,
        txn: redb::WriteTransaction,
        key: &str,
        what: &'static str,
        value: Option<&T>,
    ) -> Result<(), StoreError> {
        {
            let mut meta = txn.open_table(LOG_META)?;
            match value {
                Some(value) => {
                    meta.insert(key, encode(what, value)?.as_slice())?;
                }
                None => {
                    meta.remove(key)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        what: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(LOG_META)?;
        get_decoded(&meta, key, what)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.reader().try_get_log_entries(range).await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.reader().limited_get_log_entries(start, end).await
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(start) => *start,
            Bound::Excluded(start) => match start.checked_add(1) {
                Some(start) => start,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(end) => end.checked_add(1),
            Bound::Excluded(end) => Some(*end),
            Bound::Unbounded => None,
        };
        read_entries(&self.db, start, end, None).map_err(|e| read_logs_error(&self.path, e).into())
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        read_entries(
            &self.db,
            start,
            Some(end),
            Some(REPLICATION_BATCH_BYTES_MAX),
        )
        .map_err(|e| read_logs_error(&self.path, e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: self.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, "vote", Some(vote))
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE, "vote")
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    /// Saved without an fsync: the committed index is volatile in Raft
    /// (a restarted node learns it again from the leader, or re-derives it
    /// when it leads), and openraft takes `max(committed, last_applied)`
    /// on start. The next durable commit (an append, a vote) persists it.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta_deferred(KEY_COMMITTED, "committed log id", committed.as_ref())
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.get_meta(KEY_COMMITTED, "committed log id")
            .map_err(|e| StorageIOError::read(&e).into())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|entry| entry.log_id) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let started = std::time::Instant::now();
        if let Err(e) = self.do_append(&entries) {
            tracing::error!(path = %self.path.display(), error = %e, "append to the raft log");
            return Err(StorageIOError::write_logs(&e).into());
        }
        if let Some(timing) = &self.append_timing {
            timing.observe(started.elapsed().as_secs_f64());
        }
        self.last_entry = Some(last);
        // Durable: the transaction above committed with fsync.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, since: LogId) -> Result<(), StorageError> {
        match self.do_truncate(since.index) {
            Ok(last) => {
                self.last_entry = last;
                Ok(())
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "truncate the raft log");
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn purge(&mut self, upto: LogId) -> Result<(), StorageError> {
        if let Some(purged) = self.last_purged
            && upto.index <= purged.index
        {
            // Already purged this far; never move the mark backwards.
            return Ok(());
        }
        if let Err(e) = self.do_purge(&upto) {
            tracing::error!(path = %self.path.display(), error = %e, "purge the raft log");
            return Err(StorageIOError::write_logs(&e).into());
        }
        self.last_purged = Some(upto);
        if self.last_entry.is_some_and(|last| last.index <= upto.index) {
            self.last_entry = None;
        }
        Ok(())
    }
}

fn read_logs_error(path: &Path, error: StoreError) -> StorageIOError<u64> {
    tracing::error!(path = %path.display(), error = %error, "read the raft log");
    StorageIOError::read_logs(&error)
}

/// Entries with index in `[start, end)` (`end` `None`: to the last one).
/// With `bytes_max`, stops before the entry that would take the batch over
/// it, but always returns at least one entry when one exists.
fn read_entries(
    db: &Database,
    start: u64,
    end: Option<u64>,
    bytes_max: Option<usize>,
) -> Result<Vec<Entry>, StoreError> {
    if end.is_some_and(|end| end <= start) {
        return Ok(Vec::new());
    }
    let txn = db.begin_read()?;
    let log = txn.open_table(LOG)?;
    let range = match end {
        Some(end) => log.range(start..end)?,
        None => log.range(start..)?,
    };
    let mut entries = Vec::new();
    let mut bytes_total = 0usize;
    for item in range {
        let (key, value) = item?;
        let bytes = value.value();
        if let Some(bytes_max) = bytes_max
            && !entries.is_empty()
            && bytes_total.saturating_add(bytes.len()) > bytes_max
        {
            break;
        }
        bytes_total = bytes_total.saturating_add(bytes.len());
        entries.push(decode_entry(key.value(), bytes)?);
    }
    Ok(entries)
}

/// Decodes the entry stored under `index` and checks it belongs there.
fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, StoreError> {
    if bytes.len() > LOG_ENTRY_BYTES_MAX {
        return Err(StoreError::Invalid(format!(
            "entry {index} is {} bytes, over the {LOG_ENTRY_BYTES_MAX}-byte limit",
            bytes.len()
        )));
    }
    let entry: Entry = decode(format_args!("entry {index}"), bytes)?;
    if entry.log_id.index != index {
        return Err(StoreError::Invalid(format!(
            "entry stored at index {index} carries log id {}",
            entry.log_id
        )));
    }
    Ok(entry)
}

/// Checks the whole log and the log metadata; returns the last purged log
/// id and the id of the last entry.
fn scan(db: &Database) -> Result<(Option<LogId>, Option<LogId>), StoreError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(LOG_META)?;
    let last_purged: Option<LogId> = get_decoded(&meta, KEY_LAST_PURGED, "last purged log id")?;
    let _: Option<Vote> = get_decoded(&meta, KEY_VOTE, "vote")?;
    let _: Option<LogId> = get_decoded(&meta, KEY_COMMITTED, "committed log id")?;

    let log = txn.open_table(LOG)?;
    let mut previous: Option<u64> = None;
    let mut last_entry = None;
    for item in log.iter()? {
        let (key, value) = item?;
        let index = key.value();
        match (previous, last_purged) {
            (Some(previous), _) if Some(index) != previous.checked_add(1) => {
                return Err(StoreError::Invalid(format!(
                    "gap in the log: entry {} is missing (entries {previous} and {index} are present)",
                    previous.saturating_add(1)
                )));
            }
            (None, Some(purged)) if Some(index) != purged.index.checked_add(1) => {
                return Err(StoreError::Invalid(if index <= purged.index {
                    format!(
                        "entry {index} is still present although the log was purged up to {}",
                        purged.index
                    )
                } else {
                    format!(
                        "gap in the log: entry {} is missing (purged up to {}, first entry is {index})",
                        purged.index.saturating_add(1),
                        purged.index
                    )
                }));
            }
            _ => {}
        }
        last_entry = Some(decode_entry(index, value.value())?.log_id);
        previous = Some(index);
    }
    Ok((last_purged, last_entry))
}
