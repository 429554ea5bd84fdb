//! The agent's node-local store: a sled database per cluster membership,
//! at `<state-dir>/<cluster>/`[`STORE_DIR`], holding that cluster's tree
//! ([`ClusterStore`]). One host can hold isolated memberships in several
//! clusters: a key of cluster A is never visible through cluster B's
//! handle, and the `run` of each membership (one process per cluster, as
//! the systemd unit `rap-node-agent@<cluster>` starts them) holds its own
//! database lock.
//!
//! Layout: tree `cluster/<cluster_id>` holds
//!
//! * `shard/<scope>`: the newest verified envelope of the scope, exactly
//!   as signed ([`ClusterStore::put_shard`]);
//! * `endpoints`: the storage endpoints and their scores (JSON
//!   `Endpoints`, so scores survive a restart);
//! * `health`: the last health and degraded reason ([`HealthRecord`]);
//! * `pending-update`: a staged update's metadata ([`PendingUpdate`]);
//! * `identity`, `storage-endpoints`, `capabilities`: what the join wrote
//!   as files, imported on first open ([`ClusterStore::import_files`]);
//! * `meta/imported`: the import marker ([`ImportMarker`]).
//!
//! Every write a restart must see is followed by `flush()`. sled's flush
//! is not a full fsync, so the version/term high-water marks are not here
//! but in `rap_core::marks::FileHighWaterStore` (`<cluster>/marks/`),
//! written and fsynced before the envelope they admit is stored: a shard
//! lost here is read again, a mark lost would allow a rollback.
//!
//! Kept as files, not here: the node key and certificates (TLS loads them
//! from files and renewal rewrites them crash-safely, in order), the trust
//! root, `join-request.json` (the join's own resume state), and
//! `status.json` (`rap-node-agent status` runs as a separate process while
//! `run` holds this database's exclusive lock).

use crate::reads::endpoints::Endpoints;
use crate::state::{
    CAPABILITIES_FILE, CapabilityRecord, ClusterState, DIR_MODE, IDENTITY_FILE, IdentityRecord,
    STORAGE_ENDPOINTS_FILE, StateError, StorageEndpointRecord,
};
use rap_proto::ids::ClusterId;
use rap_proto::time::UnixMillis;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The database's directory under the state directory.
pub const STORE_DIR: &str = "agent.sled";
/// sled's page cache, bytes (its default is 1 GiB).
pub const CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// Largest envelope stored (the wire's envelope bound).
pub const SHARD_BYTES_MAX: usize = rap_proto::limits::ENVELOPE_BYTES_MAX;
/// Most envelopes one cluster keeps.
pub const SHARDS_MAX: usize = 256;
/// How long opening waits for a lock that this process itself may still
/// hold: sled releases a dropped database's lock only when its background
/// flusher stops, a little after the drop (an agent that reopens its
/// store in one process, tests, the simulator).
pub const LOCK_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(2);
/// Pause between two attempts to take the lock within [`LOCK_WAIT_MAX`].
pub const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);
/// Largest scope name used in a key.
pub const SCOPE_BYTES_MAX: usize = rap_proto::limits::SCOPE_BYTES_MAX;
/// Largest JSON record (endpoints, health, identity, ...).
pub const RECORD_BYTES_MAX: usize = 256 * 1024;
/// Largest old `shard.<scope>.bin` file imported.
pub const SHARD_FILE_BYTES_MAX: u64 = SHARD_BYTES_MAX as u64;

const SHARD_PREFIX: &str = "shard/";
const KEY_ENDPOINTS: &str = "endpoints";
const KEY_HEALTH: &str = "health";
const KEY_PENDING_UPDATE: &str = "pending-update";
const KEY_IDENTITY: &str = "identity";
const KEY_STORAGE_ENDPOINTS: &str = "storage-endpoints";
const KEY_CAPABILITIES: &str = "capabilities";
const KEY_IMPORTED: &str = "meta/imported";

/// A failure of the node-local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (`rap-node-agent run`) holds the database.
    #[error("{}: held by another process (is `rap-node-agent run` running?)", path.display())]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// sled failed.
    #[error("store: {op}: {source}")]
    Sled {
        /// What was being done.
        op: &'static str,
        /// The cause.
        source: sled::Error,
    },
    /// A value is larger than its limit.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// What.
        what: String,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A count limit was reached.
    #[error("at most {max} {what}")]
    TooMany {
        /// What.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// A stored value is unusable.
    #[error("store key {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An old state file could not be read for the import.
    #[error(transparent)]
    State(#[from] StateError),
}

impl StoreError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Locked { .. } => "STORE_LOCKED",
            StoreError::Sled { .. } => "STORE_IO",
            StoreError::TooLarge { .. } => "TOO_LARGE",
            StoreError::TooMany { .. } => "LIMIT",
            StoreError::Corrupt { .. } => "STORE_CORRUPT",
            StoreError::State(_) => "STATE",
        }
    }
}

fn sled_err(op: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |source| StoreError::Sled { op, source }
}

/// The last health `run` reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    /// `healthy` or `degraded`.
    pub health: String,
    /// Why it is degraded ('' when healthy).
    pub degraded_reason: String,
    /// When (Unix ms).
    pub at_unix_ms: i64,
}

/// A staged update, recorded before it is applied (workload updates are
/// still to come; nothing but tests writes it yet).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingUpdate {
    /// The scope whose version brings the update.
    pub scope: String,
    /// That version.
    pub version: u64,
    /// What is being updated.
    pub target: String,
    /// When it was staged (Unix ms).
    pub staged_at_unix_ms: i64,
}

/// What the import from the old files found (`meta/imported`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportMarker {
    /// The enrolled node the files were of ('' when there was no identity).
    pub node_id: String,
    /// Envelopes imported.
    pub shards: usize,
    /// When (Unix ms).
    pub at_unix_ms: i64,
}

/// The agent's database.
#[derive(Clone, Debug)]
pub struct AgentStore {
    db: sled::Db,
    path: PathBuf,
}

impl AgentStore {
    /// Opens (or creates) `<state_dir>/`[`STORE_DIR`]; refused with
    /// [`StoreError::Locked`] while another process holds it (after
    /// waiting up to [`LOCK_WAIT_MAX`] for the lock).
    pub fn open(state_dir: &Path) -> Result<AgentStore, StoreError> {
        let started = std::time::Instant::now();
        loop {
            match Self::open_once(state_dir) {
                Err(StoreError::Locked { .. }) if started.elapsed() < LOCK_WAIT_MAX => {
                    std::thread::sleep(LOCK_RETRY_PAUSE);
                }
                other => return other,
            }
        }
    }

    fn open_once(state_dir: &Path) -> Result<AgentStore, StoreError> {
        let path = state_dir.join(STORE_DIR);
        // Created owner-only, like the cluster directories.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&path)
            .map_err(|source| StateError::Io {
                op: "create directory",
                path: path.clone(),
                source,
            })?;
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|source| match &source {
                sled::Error::Io(e) if e.to_string().contains("could not acquire lock") => {
                    StoreError::Locked { path: path.clone() }
                }
                _ => StoreError::Sled {
                    op: "open the database",
                    source,
                },
            })?;
        Ok(AgentStore { db, path })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The handle of `cluster_id`'s tree (no import; see
    /// [`ClusterStore::open`]).
    pub fn cluster(&self, cluster_id: &ClusterId) -> Result<ClusterStore, StoreError> {
        let tree = self
            .db
            .open_tree(format!("cluster/{}", cluster_id.as_str()))
            .map_err(sled_err("open the cluster's tree"))?;
        Ok(ClusterStore {
            cluster_id: cluster_id.clone(),
            tree,
        })
    }
}

/// One cluster's part of the store.
#[derive(Clone, Debug)]
pub struct ClusterStore {
    cluster_id: ClusterId,
    /// The cluster's tree (it keeps the database open).
    tree: sled::Tree,
}

impl ClusterStore {
    /// Opens the store of `state`'s cluster membership (in its directory
    /// under `state_dir`), its tree, and imports the old files of `state`
    /// once ([`ClusterStore::import_files`]).
    pub fn open(
        state_dir: &Path,
        state: &ClusterState,
        cluster_id: &ClusterId,
    ) -> Result<ClusterStore, StoreError> {
        debug_assert!(state.dir().starts_with(state_dir));
        let store = AgentStore::open(state.dir())?.cluster(cluster_id)?;
        store.import_files(state)?;
        Ok(store)
    }

    /// The cluster.
    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }

    /// Makes every write so far survive a restart (sled's flush).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.tree.flush().map_err(sled_err("flush"))?;
        Ok(())
    }

    fn put_bytes(&self, key: &str, value: &[u8], max: usize) -> Result<(), StoreError> {
        if value.len() > max {
            return Err(StoreError::TooLarge {
                what: key.to_string(),
                len: value.len(),
                max,
            });
        }
        self.tree
            .insert(key.as_bytes(), value)
            .map_err(sled_err("insert"))?;
        self.flush()
    }

    fn get_bytes(&self, key: &str, max: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(value) = self.tree.get(key.as_bytes()).map_err(sled_err("get"))? else {
            return Ok(None);
        };
        if value.len() > max {
            return Err(StoreError::Corrupt {
                key: key.to_string(),
                reason: format!("{} bytes, more than {max}", value.len()),
            });
        }
        Ok(Some(value.to_vec()))
    }

    fn remove(&self, key: &str) -> Result<(), StoreError> {
        if self
            .tree
            .remove(key.as_bytes())
            .map_err(sled_err("remove"))?
            .is_some()
        {
            self.flush()?;
        }
        Ok(())
    }

    fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
            key: key.to_string(),
            reason: format!("encode JSON: {e}"),
        })?;
        self.put_bytes(key, &bytes, RECORD_BYTES_MAX)
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.get_bytes(key, RECORD_BYTES_MAX)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: key.to_string(),
                reason: format!("not valid JSON of the expected shape: {e}"),
            })
    }

    fn shard_key(scope: &str) -> Result<String, StoreError> {
        if scope.is_empty() || scope.len() > SCOPE_BYTES_MAX {
            return Err(StoreError::TooLarge {
                what: "scope".into(),
                len: scope.len(),
                max: SCOPE_BYTES_MAX,
            });
        }
        Ok(format!("{SHARD_PREFIX}{scope}"))
    }

    /// Keeps `envelope` as `scope`'s newest verified envelope (at most
    /// [`SHARD_BYTES_MAX`] bytes, [`SHARDS_MAX`] scopes), flushed.
    pub fn put_shard(&self, scope: &str, envelope: &[u8]) -> Result<(), StoreError> {
        let key = Self::shard_key(scope)?;
        if !self
            .tree
            .contains_key(key.as_bytes())
            .map_err(sled_err("get"))?
            && self.tree.scan_prefix(SHARD_PREFIX).count() >= SHARDS_MAX
        {
            return Err(StoreError::TooMany {
                what: "kept scopes",
                max: SHARDS_MAX,
            });
        }
        self.put_bytes(&key, envelope, SHARD_BYTES_MAX)
    }

    /// `scope`'s kept envelope.
    pub fn shard(&self, scope: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_bytes(&Self::shard_key(scope)?, SHARD_BYTES_MAX)
    }

    /// Every kept envelope, by scope (at most [`SHARDS_MAX`]; an
    /// oversized value is an error).
    pub fn shards(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(SHARD_PREFIX).take(SHARDS_MAX) {
            let (key, value) = item.map_err(sled_err("scan"))?;
            let key = String::from_utf8_lossy(&key).into_owned();
            if value.len() > SHARD_BYTES_MAX {
                return Err(StoreError::Corrupt {
                    key,
                    reason: format!("{} bytes, more than {SHARD_BYTES_MAX}", value.len()),
                });
            }
            let scope = key.trim_start_matches(SHARD_PREFIX).to_string();
            out.push((scope, value.to_vec()));
        }
        Ok(out)
    }

    /// Forgets `scope`'s envelope (its mark stays in the marks store).
    pub fn remove_shard(&self, scope: &str) -> Result<(), StoreError> {
        self.remove(&Self::shard_key(scope)?)
    }

    /// Saves the endpoints and their scores.
    pub fn put_endpoints(&self, endpoints: &Endpoints) -> Result<(), StoreError> {
        self.put_json(KEY_ENDPOINTS, endpoints)
    }

    /// The endpoints and scores saved last.
    pub fn endpoints(&self) -> Result<Option<Endpoints>, StoreError> {
        self.get_json(KEY_ENDPOINTS)
    }

    /// Saves the health `run` reports.
    pub fn put_health(&self, health: &HealthRecord) -> Result<(), StoreError> {
        self.put_json(KEY_HEALTH, health)
    }

    /// The health saved last.
    pub fn health(&self) -> Result<Option<HealthRecord>, StoreError> {
        self.get_json(KEY_HEALTH)
    }

    /// Records a staged update.
    pub fn put_pending_update(&self, update: &PendingUpdate) -> Result<(), StoreError> {
        self.put_json(KEY_PENDING_UPDATE, update)
    }

    /// The staged update, if any.
    pub fn pending_update(&self) -> Result<Option<PendingUpdate>, StoreError> {
        self.get_json(KEY_PENDING_UPDATE)
    }

    /// Forgets the staged update.
    pub fn clear_pending_update(&self) -> Result<(), StoreError> {
        self.remove(KEY_PENDING_UPDATE)
    }

    /// The enrolled identity (imported from `identity.json`).
    pub fn identity(&self) -> Result<Option<IdentityRecord>, StoreError> {
        self.get_json(KEY_IDENTITY)
    }

    /// The bootstrap storage endpoints the join stored.
    pub fn storage_endpoints(&self) -> Result<Vec<StorageEndpointRecord>, StoreError> {
        Ok(self.get_json(KEY_STORAGE_ENDPOINTS)?.unwrap_or_default())
    }

    /// The capabilities the join reported.
    pub fn capabilities(&self) -> Result<Vec<CapabilityRecord>, StoreError> {
        Ok(self.get_json(KEY_CAPABILITIES)?.unwrap_or_default())
    }

    /// The import marker, once the old files were imported.
    pub fn imported(&self) -> Result<Option<ImportMarker>, StoreError> {
        self.get_json(KEY_IMPORTED)
    }

    /// Imports what the files of `state` hold, once per enrollment:
    /// `identity.json` on every call (renewal rewrites it, as the last
    /// step of a key rotation, so the file stays the authority for it);
    /// `storage-endpoints.json`, `capabilities.json` and the old
    /// `shard.<scope>.bin` files when no marker names this node yet (the
    /// first start, or a new join). Then the marker is written and
    /// flushed, and only then the shard files are removed (a crash before
    /// that imports them again: idempotent). The JSON files stay for
    /// `join`. Returns the marker.
    pub fn import_files(&self, state: &ClusterState) -> Result<ImportMarker, StoreError> {
        let identity: Option<IdentityRecord> = state.read_json(IDENTITY_FILE)?;
        if let Some(identity) = &identity
            && self.identity()?.as_ref() != Some(identity)
        {
            self.put_json(KEY_IDENTITY, identity)?;
        }
        let node_id = identity.map(|i| i.node_id).unwrap_or_default();
        if let Some(marker) = self.imported()?
            && marker.node_id == node_id
        {
            return Ok(marker);
        }
        let endpoints: Vec<StorageEndpointRecord> =
            state.read_json(STORAGE_ENDPOINTS_FILE)?.unwrap_or_default();
        self.put_json(KEY_STORAGE_ENDPOINTS, &endpoints)?;
        let capabilities: Vec<CapabilityRecord> =
            state.read_json(CAPABILITIES_FILE)?.unwrap_or_default();
        self.put_json(KEY_CAPABILITIES, &capabilities)?;
        let files = old_shard_files(state.dir());
        let mut shards = 0;
        for (scope, path) in &files {
            match crate::state::read_bounded(path, SHARD_FILE_BYTES_MAX) {
                Ok(bytes) => match self.put_shard(scope, &bytes) {
                    Ok(()) => shards += 1,
                    // The reader checks each envelope against its mark
                    // anyway; one that does not fit is read again.
                    Err(e) => {
                        tracing::warn!(cluster_id = %self.cluster_id, node_id, scope, "an old shard file is not imported: {e}")
                    }
                },
                Err(e) => {
                    tracing::warn!(cluster_id = %self.cluster_id, node_id, scope, "an old shard file is not imported: {e}")
                }
            }
        }
        let marker = ImportMarker {
            node_id: node_id.clone(),
            shards,
            at_unix_ms: UnixMillis::now().0,
        };
        self.put_json(KEY_IMPORTED, &marker)?;
        for (_, path) in files {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(cluster_id = %self.cluster_id, node_id, "removing the imported {}: {e}", path.display());
            }
        }
        tracing::info!(cluster_id = %self.cluster_id, node_id, shards, "imported the node-local files into the store");
        Ok(marker)
    }
}

/// The old `shard.<scope>.bin` files of `dir` (`/` was written as `~`).
fn old_shard_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let scope = name
                .strip_prefix("shard.")
                .and_then(|n| n.strip_suffix(".bin"))?
                .replace('~', "/");
            Some((scope, entry.path()))
        })
        .take(SHARDS_MAX)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::reads::endpoints::Endpoint;

    fn id(s: &str) -> ClusterId {
        ClusterId::new(s).unwrap()
    }

    fn identity(node: &str, not_after: i64) -> IdentityRecord {
        IdentityRecord {
            node_id: node.into(),
            cluster_id: "c1".into(),
            not_after_unix_ms: not_after,
            server: "127.0.0.1:7443".into(),
            ca_fingerprint: "ca".into(),
            key_fingerprint: "key".into(),
        }
    }

    // Goal: two clusters in one database are isolated: a key written
    // through A's handle is invisible through B's. Method: the same scope
    // and records in both trees, then remove from one.
    #[test]
    fn clusters_are_namespaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = AgentStore::open(dir.path()).unwrap();
        let a = store.cluster(&id("ca")).unwrap();
        let b = store.cluster(&id("cb")).unwrap();
        a.put_shard("node/n1", b"from a").unwrap();
        assert_eq!(b.shard("node/n1").unwrap(), None);
        assert!(b.shards().unwrap().is_empty());
        b.put_shard("node/n1", b"from b").unwrap();
        a.put_health(&HealthRecord {
            health: "degraded".into(),
            degraded_reason: "x".into(),
            at_unix_ms: 1,
        })
        .unwrap();
        assert_eq!(b.health().unwrap(), None);
        a.remove_shard("node/n1").unwrap();
        assert_eq!(a.shard("node/n1").unwrap(), None);
        assert_eq!(b.shard("node/n1").unwrap().unwrap(), b"from b");
        assert_eq!(a.cluster_id().as_str(), "ca");
    }

    // Goal: every typed record round-trips, survives dropping and
    // reopening the database, and the database is exclusive while open.
    // Method: write all, drop, open again, read all.
    #[test]
    fn round_trips_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let update = PendingUpdate {
            scope: "role/web".into(),
            version: 7,
            target: "web".into(),
            staged_at_unix_ms: 5,
        };
        let health = HealthRecord {
            health: "healthy".into(),
            degraded_reason: String::new(),
            at_unix_ms: 9,
        };
        let mut endpoints = Endpoints::new(vec![Endpoint {
            node_id: "s1".into(),
            address: "127.0.0.1:1".into(),
            region: "r".into(),
            zone: "z".into(),
            role: "voter".into(),
        }]);
        endpoints.bad_envelope(0, "BAD_SIGNATURE");
        endpoints.succeeded(0, std::time::Duration::from_millis(4), Some(0.5));
        {
            let store = AgentStore::open(dir.path()).unwrap();
            assert!(matches!(
                AgentStore::open(dir.path()),
                Err(StoreError::Locked { .. })
            ));
            let c = store.cluster(&id("c1")).unwrap();
            c.put_shard("node/n1", b"v1").unwrap();
            c.put_shard("node/n1", b"v2").unwrap();
            c.put_shard("all-nodes", b"a").unwrap();
            c.put_pending_update(&update).unwrap();
            c.put_health(&health).unwrap();
            c.put_endpoints(&endpoints).unwrap();
        }
        let c = AgentStore::open(dir.path())
            .unwrap()
            .cluster(&id("c1"))
            .unwrap();
        assert_eq!(
            c.shards().unwrap(),
            vec![
                ("all-nodes".to_string(), b"a".to_vec()),
                ("node/n1".to_string(), b"v2".to_vec())
            ]
        );
        assert_eq!(c.pending_update().unwrap(), Some(update));
        c.clear_pending_update().unwrap();
        assert_eq!(c.pending_update().unwrap(), None);
        assert_eq!(c.health().unwrap(), Some(health));
        let kept = c.endpoints().unwrap().unwrap();
        assert_eq!(kept.list[0].bad_envelopes, 1);
        assert_eq!(kept.list[0].rtt_ms, Some(4.0));
    }

    // Goal: the limits hold: an oversized envelope or scope is refused,
    // one scope more than SHARDS_MAX is refused (replacing a kept one is
    // not), and nothing refused is stored. Method: fill one tree.
    #[test]
    fn limits_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let c = AgentStore::open(dir.path())
            .unwrap()
            .cluster(&id("c1"))
            .unwrap();
        let big = vec![0u8; SHARD_BYTES_MAX + 1];
        let err = c.put_shard("node/n1", &big).unwrap_err();
        assert_eq!(err.code(), "TOO_LARGE");
        assert_eq!(c.shard("node/n1").unwrap(), None);
        let long = "x".repeat(SCOPE_BYTES_MAX + 1);
        assert_eq!(c.put_shard(&long, b"v").unwrap_err().code(), "TOO_LARGE");
        for i in 0..SHARDS_MAX {
            c.put_shard(&format!("s/{i}"), b"v").unwrap();
        }
        assert_eq!(c.put_shard("s/one-more", b"v").unwrap_err().code(), "LIMIT");
        c.put_shard("s/0", b"replaced").unwrap();
        assert_eq!(c.shards().unwrap().len(), SHARDS_MAX);
    }

    // Goal: the first open imports the old files (identity, endpoints,
    // capabilities, shard.<scope>.bin), removes only the shard files, and
    // a second import changes nothing but a renewed identity; a new join
    // (another node id) imports again. Method: a directory laid out as
    // `join` and the old reader left it.
    #[test]
    fn imports_old_files_once() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = id("c1");
        let state = ClusterState::open(dir.path(), &cluster).unwrap();
        state
            .write_json(IDENTITY_FILE, &identity("n1", 10))
            .unwrap();
        let bootstrap = vec![StorageEndpointRecord {
            node_id: "s1".into(),
            address: "127.0.0.1:1".into(),
            region: "r".into(),
            zone: "z".into(),
            host: "h".into(),
        }];
        state
            .write_json(STORAGE_ENDPOINTS_FILE, &bootstrap)
            .unwrap();
        let caps = vec![CapabilityRecord {
            name: "gpu".into(),
            detail: String::new(),
        }];
        state.write_json(CAPABILITIES_FILE, &caps).unwrap();
        state.write("shard.node~n1.bin", b"env-n1").unwrap();
        state.write("shard.all-nodes.bin", b"env-all").unwrap();

        let c = ClusterStore::open(dir.path(), &state, &cluster).unwrap();
        assert_eq!(c.identity().unwrap(), Some(identity("n1", 10)));
        assert_eq!(c.storage_endpoints().unwrap(), bootstrap);
        assert_eq!(c.capabilities().unwrap(), caps);
        assert_eq!(c.shard("node/n1").unwrap().unwrap(), b"env-n1");
        assert_eq!(c.shard("all-nodes").unwrap().unwrap(), b"env-all");
        let marker = c.imported().unwrap().unwrap();
        assert_eq!((marker.node_id.as_str(), marker.shards), ("n1", 2));
        assert!(!state.path("shard.node~n1.bin").exists());
        assert!(state.path(IDENTITY_FILE).exists());
        assert!(state.path(STORAGE_ENDPOINTS_FILE).exists());

        // Again (a restart): nothing re-imported, kept state untouched,
        // a renewed identity.json followed.
        c.put_shard("node/n1", b"newer").unwrap();
        state
            .write_json(STORAGE_ENDPOINTS_FILE, &Vec::<StorageEndpointRecord>::new())
            .unwrap();
        state
            .write_json(IDENTITY_FILE, &identity("n1", 20))
            .unwrap();
        drop(c);
        let c = ClusterStore::open(dir.path(), &state, &cluster).unwrap();
        assert_eq!(c.imported().unwrap(), Some(marker));
        assert_eq!(c.shard("node/n1").unwrap().unwrap(), b"newer");
        assert_eq!(c.storage_endpoints().unwrap(), bootstrap);
        assert_eq!(c.identity().unwrap(), Some(identity("n1", 20)));

        // A new join: its files are imported.
        state
            .write_json(IDENTITY_FILE, &identity("n2", 30))
            .unwrap();
        c.import_files(&state).unwrap();
        assert_eq!(c.imported().unwrap().unwrap().node_id, "n2");
        assert!(c.storage_endpoints().unwrap().is_empty());
    }

    // Goal: an interrupted import (shards stored, no marker yet) is simply
    // done again: the same values, no duplicate. Method: put the shard
    // first, then import the same file.
    #[test]
    fn an_interrupted_import_is_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = id("c1");
        let state = ClusterState::open(dir.path(), &cluster).unwrap();
        state.write("shard.node~n1.bin", b"env").unwrap();
        let c = AgentStore::open(dir.path())
            .unwrap()
            .cluster(&cluster)
            .unwrap();
        c.put_shard("node/n1", b"env").unwrap();
        assert_eq!(c.imported().unwrap(), None);
        let marker = c.import_files(&state).unwrap();
        assert_eq!((marker.node_id.as_str(), marker.shards), ("", 1));
        assert_eq!(c.shards().unwrap().len(), 1);
        assert_eq!(c.import_files(&state).unwrap(), marker);
    }
}
