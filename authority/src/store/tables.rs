//! The redb tables, their keys, the value codec (MessagePack with field
//! names) and the store's internal error.

use super::STORE_FORMAT;
use crate::error::Error;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Display;
use std::path::Path;

/// `"format"` → the store format.
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Log index → entry.
pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Vote, committed and last purged log ids.
pub(super) const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");
/// Scalar state, last applied log id, last membership.
pub(super) const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
/// Scope → shard record.
pub(super) const SHARDS: TableDefinition<&str, &[u8]> = TableDefinition::new("shards");
/// The current snapshot: meta, data, build counter.
pub(super) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub(super) const KEY_FORMAT: &str = "format";
pub(super) const KEY_VOTE: &str = "vote";
pub(super) const KEY_COMMITTED: &str = "committed";
pub(super) const KEY_LAST_PURGED: &str = "last_purged";
pub(super) const KEY_STATE: &str = "state";
pub(super) const KEY_LAST_APPLIED: &str = "last_applied";
pub(super) const KEY_LAST_MEMBERSHIP: &str = "last_membership";
pub(super) const KEY_SNAPSHOT_META: &str = "meta";
pub(super) const KEY_SNAPSHOT_DATA: &str = "data";
pub(super) const KEY_SNAPSHOT_COUNTER: &str = "counter";

/// What can go wrong inside the store. Converted at the edge: to
/// `openraft::StorageError` for Raft, to `crate::Error::Storage` on open.
#[derive(Debug, thiserror::Error)]
pub(super) enum StoreError {
    /// redb failed (I/O, corruption, ...).
    #[error("redb: {0}")]
    Redb(#[from] redb::Error),
    /// A value could not be encoded.
    #[error("encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: rmp_serde::encode::Error,
    },
    /// A stored value does not decode.
    #[error("{what} does not decode: {source}")]
    Decode {
        what: String,
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// Stored values that decode but break an invariant of the store.
    #[error("{0}")]
    Invalid(String),
    /// A well-formed store this binary does not read.
    #[error("{0}")]
    Unsupported(String),
}

macro_rules! from_redb {
    ($($error:ty),*) => {
        $(impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                StoreError::Redb(error.into())
            }
        })*
    };
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl StoreError {
    /// Whether the file's content is damaged (as opposed to an I/O or
    /// environment failure).
    pub(super) fn is_corruption(&self) -> bool {
        match self {
            StoreError::Redb(redb::Error::Corrupted(_))
            | StoreError::Decode { .. }
            | StoreError::Invalid(_) => true,
            StoreError::Redb(_) | StoreError::Encode { .. } | StoreError::Unsupported(_) => false,
        }
    }

    /// The crate error of a failed `open`; `part` names what was being
    /// loaded ("raft log", "raft state machine").
    pub(super) fn into_open_error(self, path: &Path, part: &str) -> Error {
        if self.is_corruption() {
            Error::Storage(format!("corrupt {part} in {}: {self}", path.display()))
        } else {
            Error::Storage(format!("open raft store {}: {self}", path.display()))
        }
    }
}

/// Encodes `value` as MessagePack with field names.
pub(super) fn encode<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(value).map_err(|source| StoreError::Encode { what, source })
}

/// Decodes a stored value; `what` names it in the error.
pub(super) fn decode<T: DeserializeOwned>(
    what: impl Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(|source| StoreError::Decode {
        what: what.to_string(),
        source,
    })
}

/// Creates every table and checks (or, in a new file, writes) the format.
pub(super) fn init(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let log = txn.open_table(LOG)?;
        let log_meta = txn.open_table(LOG_META)?;
        let sm_meta = txn.open_table(SM_META)?;
        let shards = txn.open_table(SHARDS)?;
        let snapshot = txn.open_table(SNAPSHOT)?;
        let stored = match meta.get(KEY_FORMAT)? {
            Some(bytes) => Some(decode::<u64>("store format", bytes.value())?),
            None => None,
        };
        match stored {
            Some(format) if format == STORE_FORMAT => {}
            Some(format) => {
                return Err(StoreError::Unsupported(format!(
                    "store format {format}, this binary reads format {STORE_FORMAT}"
                )));
            }
            None => {
                let empty = log.is_empty()?
                    && log_meta.is_empty()?
                    && sm_meta.is_empty()?
                    && shards.is_empty()?
                    && snapshot.is_empty()?;
                if !empty {
                    return Err(StoreError::Invalid(
                        "the store holds data but no format marker".to_string(),
                    ));
                }
                meta.insert(
                    KEY_FORMAT,
                    encode("store format", &STORE_FORMAT)?.as_slice(),
                )?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Begins a write transaction that commits durably: `commit` returns only
/// after redb's fsync. (Immediate is redb's default; it is set here so the
/// rule does not depend on a default.)
pub(super) fn begin_durable(db: &Database) -> Result<redb::WriteTransaction, StoreError> {
    begin(db, redb::Durability::Immediate)
}

/// Begins a write transaction whose commit does not fsync: it is made
/// durable by the next durable commit of the same file (redb persists
/// every commit before a durable one), and until then a crash loses it
/// whole, never half. Only for what the durable Raft log can rebuild: the
/// applied state (replayed from the log after a restart) and the
/// committed index (volatile in Raft; openraft re-derives it).
pub(super) fn begin_deferred(db: &Database) -> Result<redb::WriteTransaction, StoreError> {
    begin(db, redb::Durability::None)
}

fn begin(
    db: &Database,
    durability: redb::Durability,
) -> Result<redb::WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(durability).map_err(redb::Error::from)?;
    Ok(txn)
}

/// Reads and decodes `key` of a `&str → bytes` table.
pub(super) fn get_decoded<T: DeserializeOwned>(
    table: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    key: &str,
    what: &str,
) -> Result<Option<T>, StoreError> {
    match table.get(key)? {
        Some(bytes) => Ok(Some(decode(what, bytes.value())?)),
        None => Ok(None),
    }
}
