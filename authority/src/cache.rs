//! The shard store of a cache replica: a storage node that is not a voter
//! holds the shards placement assigns it, each verified before it is kept.
//!
//! What do we store? One redb file, `<data_dir>/cache.redb`
//! ([`CACHE_DB_FILE`]); values are MessagePack with field names.
//!
//! | table         | key                  | value                                   |
//! |---------------|----------------------|-----------------------------------------|
//! | `cache_meta`  | `"format"`           | store format ([`CACHE_FORMAT`])         |
//! |               | `"term"`             | the cluster's [`TermMark`]              |
//! |               | `"root"`             | the current trust root (encoded)        |
//! | `cache_marks` | scope                | its [`ScopeMark`] (kept after removal)  |
//! | `cache_shards`| scope                | the envelope, exactly as signed         |
//!
//! **Verify, then keep, atomically.** [`CacheStore::accept`] runs the same
//! [`Verifier`] as agents and the authority group (cluster, generation,
//! key, content hash, signature, term, version chain, validity), following
//! a `trust/root` envelope's chain first; the verifier's marks are staged
//! in memory and written with the envelope in one redb transaction
//! (fsync before commit returns). A refused envelope changes nothing, and
//! a crash never leaves a mark without its envelope or the reverse.
//!
//! **Removal keeps the mark.** When placement takes a scope away its
//! envelope is deleted but its mark stays, so the scope can never come back
//! at an older version.

use crate::error::{Error, Result};
use crate::limits::SHARDS_MAX;
use rap_proto::envelope::{
    HighWaterStore, Reader, Scope, ScopeMark, TermMark, Verifier, VerifierOptions, decode,
};
use rap_proto::ids::{ClusterId, NodeId, SnapshotVersion};
use rap_proto::time::UnixMillis;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Name of the redb file inside a cache replica's data directory.
pub const CACHE_DB_FILE: &str = "cache.redb";
/// Version of the table layout above.
pub const CACHE_FORMAT: u32 = 1;
/// Most envelopes [`CacheStore::accept_batch`] keeps in one transaction.
pub const ACCEPT_BATCH_MAX: usize = 256;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("cache_meta");
const MARKS: TableDefinition<&str, &[u8]> = TableDefinition::new("cache_marks");
const SHARDS: TableDefinition<&str, &[u8]> = TableDefinition::new("cache_shards");
const KEY_FORMAT: &str = "format";
const KEY_TERM: &str = "term";
const KEY_ROOT: &str = "root";

/// What [`CacheStore::accept`] kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The scope.
    pub scope: Scope,
    /// Its version.
    pub version: SnapshotVersion,
}

/// A cache replica's verified shards of one cluster.
#[derive(Debug)]
pub struct CacheStore {
    db: Database,
    path: PathBuf,
    cluster_id: ClusterId,
    node_id: NodeId,
    genesis: Vec<u8>,
    options: VerifierOptions,
}

impl CacheStore {
    /// Opens (or creates) the store in `dir` for storage node `node_id` of
    /// `cluster_id`, whose genesis trust root is `genesis` (checked now).
    pub fn open(
        dir: &Path,
        cluster_id: ClusterId,
        node_id: NodeId,
        genesis: &[u8],
        options: VerifierOptions,
    ) -> Result<CacheStore> {
        rap_proto::envelope::VerifiedTrustRoot::verify_genesis(genesis, &cluster_id, None)?;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Storage(format!("create {}: {e}", dir.display())))?;
        let path = dir.join(CACHE_DB_FILE);
        let db = Database::create(&path).map_err(|e| storage(&path, e))?;
        let store = CacheStore {
            db,
            path,
            cluster_id,
            node_id,
            genesis: genesis.to_vec(),
            options,
        };
        store.check_format()?;
        Ok(store)
    }

    fn check_format(&self) -> Result<()> {
        let tx = self.db.begin_write().map_err(|e| storage(&self.path, e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| storage(&self.path, e))?;
            tx.open_table(MARKS).map_err(|e| storage(&self.path, e))?;
            tx.open_table(SHARDS).map_err(|e| storage(&self.path, e))?;
            let format = meta
                .get(KEY_FORMAT)
                .map_err(|e| storage(&self.path, e))?
                .map(|v| decode_value::<u32>("format", v.value()))
                .transpose()?;
            match format {
                Some(CACHE_FORMAT) => {}
                Some(other) => {
                    return Err(Error::Storage(format!(
                        "{} has cache format {other}; this binary reads {CACHE_FORMAT}",
                        self.path.display()
                    )));
                }
                None => {
                    meta.insert(
                        KEY_FORMAT,
                        encode_value("format", &CACHE_FORMAT)?.as_slice(),
                    )
                    .map_err(|e| storage(&self.path, e))?;
                }
            }
        }
        tx.commit().map_err(|e| storage(&self.path, e))
    }

    /// Verifies `envelope` as a storage node of the cluster would (following
    /// a `trust/root` chain first) and keeps it with its marks in one
    /// durable transaction. A refusal is the verifier's typed error
    /// (`ROLLBACK`, `BAD_SIGNATURE`, `WRONG_CLUSTER`,
    /// `STALE_TRUST_GENERATION`, ...) and changes nothing.
    pub fn accept(&self, envelope: &[u8], now: UnixMillis) -> Result<Kept> {
        match self.accept_batch(&[envelope], now)?.pop() {
            Some(outcome) => outcome,
            None => Err(Error::Storage(
                "a batch of one envelope gave no outcome".into(),
            )),
        }
    }

    /// [`CacheStore::accept`] for up to [`ACCEPT_BATCH_MAX`] envelopes in
    /// order, kept in one durable transaction: one outcome per envelope
    /// (a refused one changes nothing, the others are kept); `Err` only
    /// when the store itself fails (then nothing is kept).
    pub fn accept_batch(&self, envelopes: &[&[u8]], now: UnixMillis) -> Result<Vec<Result<Kept>>> {
        if envelopes.len() > ACCEPT_BATCH_MAX {
            return Err(Error::Oversize {
                what: "envelopes in one cache batch",
                limit: ACCEPT_BATCH_MAX,
                got: envelopes.len(),
            });
        }
        let read = self.db.begin_read().map_err(|e| storage(&self.path, e))?;
        let staged = Staged {
            store: self,
            read: &read,
            marks: BTreeMap::new(),
            term: None,
            root: None,
        };
        let mut verifier = Verifier::open(
            self.cluster_id.clone(),
            &self.genesis,
            None,
            staged,
            self.options.clone(),
        )?;
        let mut outcomes = Vec::with_capacity(envelopes.len());
        let mut keep: Vec<(String, &[u8])> = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let outcome = self.verify_one(&mut verifier, envelope, &keep, now);
            if let Ok(kept) = &outcome {
                keep.push((kept.scope.to_string(), envelope));
            }
            outcomes.push(outcome);
        }
        let staged = verifier.into_store();
        let (marks, term, root) = (staged.marks, staged.term, staged.root);
        drop(read);
        if keep.is_empty() {
            return Ok(outcomes);
        }

        let tx = self.db.begin_write().map_err(|e| storage(&self.path, e))?;
        {
            for (key, envelope) in &keep {
                self.put_shard(&tx, key, envelope)?;
            }
            let mut table = tx.open_table(MARKS).map_err(|e| storage(&self.path, e))?;
            for (scope, mark) in &marks {
                table
                    .insert(scope.as_str(), encode_value("scope mark", mark)?.as_slice())
                    .map_err(|e| storage(&self.path, e))?;
            }
            let mut meta = tx.open_table(META).map_err(|e| storage(&self.path, e))?;
            if let Some(term) = term {
                meta.insert(KEY_TERM, encode_value("term mark", &term)?.as_slice())
                    .map_err(|e| storage(&self.path, e))?;
            }
            if let Some(root) = root {
                meta.insert(KEY_ROOT, root.as_slice())
                    .map_err(|e| storage(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| storage(&self.path, e))?;
        Ok(outcomes)
    }

    /// Verifies one envelope of a batch (following a `trust/root` chain
    /// first); `kept` are the batch's envelopes verified before it.
    fn verify_one(
        &self,
        verifier: &mut Verifier<Staged<'_>>,
        envelope: &[u8],
        kept: &[(String, &[u8])],
        now: UnixMillis,
    ) -> Result<Kept> {
        let decoded = decode(envelope)?;
        let scope = decoded.header.scope.clone();
        rap_proto::shards::follow_trust_roots(verifier, &self.cluster_id, envelope)?;
        let reader = Reader::StorageNode {
            node_id: self.node_id.clone(),
        };
        match verifier.verify(envelope, &scope, &reader, now) {
            Ok(accepted) => Ok(Kept {
                scope,
                version: accepted.header.version,
            }),
            // The very envelope accepted before (same header hash, and the
            // signature checked again), whose shard placement took away and
            // now gives back: keep it again, marks unchanged, unless it
            // expired meanwhile.
            Err(rap_proto::Error::Replay { .. })
                if self.get(&scope.to_string())?.is_none()
                    && !kept.iter().any(|(key, _)| *key == scope.to_string()) =>
            {
                let skew_ms = self.options.clock_skew_ms;
                let expires_at = decoded.header.expires_at;
                if now > expires_at.plus_ms(i64::try_from(skew_ms).unwrap_or(i64::MAX)) {
                    return Err(Error::Proto(rap_proto::Error::Expired {
                        scope,
                        expires_at,
                        now,
                        skew_ms,
                    }));
                }
                Ok(Kept {
                    scope,
                    version: decoded.header.version,
                })
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The cluster.
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }

    /// The storage node this store belongs to.
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// Writes the envelope of `key` in `tx`, refusing a new scope beyond
    /// [`SHARDS_MAX`].
    fn put_shard(&self, tx: &redb::WriteTransaction, key: &str, envelope: &[u8]) -> Result<()> {
        let mut shards = tx.open_table(SHARDS).map_err(|e| storage(&self.path, e))?;
        if shards
            .get(key)
            .map_err(|e| storage(&self.path, e))?
            .is_none()
            && shards.len().map_err(|e| storage(&self.path, e))? >= SHARDS_MAX as u64
        {
            return Err(Error::Oversize {
                what: "shards of a cache replica",
                limit: SHARDS_MAX,
                got: SHARDS_MAX + 1,
            });
        }
        shards
            .insert(key, envelope)
            .map_err(|e| storage(&self.path, e))?;
        Ok(())
    }

    /// The kept envelope of `scope`, exactly as signed.
    pub fn get(&self, scope: &str) -> Result<Option<Vec<u8>>> {
        let read = self.db.begin_read().map_err(|e| storage(&self.path, e))?;
        let shards = read
            .open_table(SHARDS)
            .map_err(|e| storage(&self.path, e))?;
        Ok(shards
            .get(scope)
            .map_err(|e| storage(&self.path, e))?
            .map(|v| v.value().to_vec()))
    }

    /// Deletes the envelope of `scope` (placement took it away); its mark
    /// stays. Returns whether one was kept.
    pub fn remove(&self, scope: &str) -> Result<bool> {
        let tx = self.db.begin_write().map_err(|e| storage(&self.path, e))?;
        let removed = {
            let mut shards = tx.open_table(SHARDS).map_err(|e| storage(&self.path, e))?;
            shards
                .remove(scope)
                .map_err(|e| storage(&self.path, e))?
                .is_some()
        };
        tx.commit().map_err(|e| storage(&self.path, e))?;
        Ok(removed)
    }

    /// Every kept scope, in order.
    pub fn scopes(&self) -> Result<Vec<String>> {
        let read = self.db.begin_read().map_err(|e| storage(&self.path, e))?;
        let shards = read
            .open_table(SHARDS)
            .map_err(|e| storage(&self.path, e))?;
        let mut scopes = Vec::new();
        for entry in shards.iter().map_err(|e| storage(&self.path, e))? {
            let (key, _) = entry.map_err(|e| storage(&self.path, e))?;
            scopes.push(key.value().to_string());
        }
        Ok(scopes)
    }
}

/// The verifier's view for one [`CacheStore::accept`]: reads through to
/// the file, writes staged in memory until the envelope is kept.
struct Staged<'a> {
    store: &'a CacheStore,
    read: &'a redb::ReadTransaction,
    marks: BTreeMap<String, ScopeMark>,
    term: Option<TermMark>,
    root: Option<Vec<u8>>,
}

impl Staged<'_> {
    fn stored(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<Option<Vec<u8>>> {
        let path = &self.store.path;
        let table = self.read.open_table(table).map_err(|e| storage(path, e))?;
        Ok(table
            .get(key)
            .map_err(|e| storage(path, e))?
            .map(|v| v.value().to_vec()))
    }
}

fn proto_store(e: Error) -> rap_proto::Error {
    rap_proto::Error::Store {
        context: "cache replica store".to_string(),
        source: e.to_string().into(),
    }
}

impl HighWaterStore for Staged<'_> {
    fn scope_mark(
        &self,
        _cluster: &ClusterId,
        scope: &Scope,
    ) -> rap_proto::Result<Option<ScopeMark>> {
        let key = scope.to_string();
        if let Some(mark) = self.marks.get(&key) {
            return Ok(Some(*mark));
        }
        self.stored(MARKS, &key)
            .and_then(|v| v.map(|v| decode_value("scope mark", &v)).transpose())
            .map_err(proto_store)
    }

    fn term_mark(&self, _cluster: &ClusterId) -> rap_proto::Result<Option<TermMark>> {
        if let Some(term) = self.term {
            return Ok(Some(term));
        }
        self.stored(META, KEY_TERM)
            .and_then(|v| v.map(|v| decode_value("term mark", &v)).transpose())
            .map_err(proto_store)
    }

    fn record_accept(
        &mut self,
        _cluster: &ClusterId,
        scope: &Scope,
        scope_mark: ScopeMark,
        term_mark: TermMark,
    ) -> rap_proto::Result<()> {
        self.marks.insert(scope.to_string(), scope_mark);
        self.term = Some(term_mark);
        Ok(())
    }

    fn trust_root(&self, _cluster: &ClusterId) -> rap_proto::Result<Option<Vec<u8>>> {
        if let Some(root) = &self.root {
            return Ok(Some(root.clone()));
        }
        self.stored(META, KEY_ROOT).map_err(proto_store)
    }

    fn record_trust_root(&mut self, _cluster: &ClusterId, root: &[u8]) -> rap_proto::Result<()> {
        self.root = Some(root.to_vec());
        Ok(())
    }
}

fn storage(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Storage(format!("{}: {e}", path.display()))
}

fn encode_value<T: serde::Serialize>(what: &str, value: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(value).map_err(|e| Error::Storage(format!("encode {what}: {e}")))
}

fn decode_value<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| Error::Storage(format!("stored {what} does not decode: {e}")))
}
