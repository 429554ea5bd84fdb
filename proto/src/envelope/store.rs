//! High-water marks: what a verifier must remember across restarts.
//!
//! What do we store? Per cluster: the highest (trust generation, authority
//! term) accepted, the current trust root, and per scope the (trust
//! generation, version, header hash) of the newest accepted envelope. A mark
//! is made durable *before* the envelope's body is handed out, so a crash
//! can never let an older version in afterwards.
//!
//! [`HighWaterStore`] is the seam: the agent backs it with sled, storage
//! nodes with redb; [`FileHighWaterStore`] is a small durable file store
//! (atomic replace + fsync) for tools, tests and single-purpose readers.

use super::digest::Digest;
use super::scope::Scope;
use crate::error::{Error, Result};
use crate::ids::{AuthorityTerm, ClusterId, SnapshotVersion, TrustGeneration};
use crate::limits::{MARKED_CLUSTERS_MAX, MARKED_SCOPES_MAX};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The newest accepted envelope of one scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeMark {
    /// Trust generation it was signed under.
    pub trust_generation: TrustGeneration,
    /// Its version.
    pub version: SnapshotVersion,
    /// blake3 of its header bytes (detects forks and chains the next one).
    pub header_hash: Digest,
}

/// The highest authority term accepted in a cluster, with the trust
/// generation it was accepted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermMark {
    /// Trust generation of the envelope that raised it.
    pub trust_generation: TrustGeneration,
    /// The term.
    pub authority_term: AuthorityTerm,
}

/// Durable storage of a verifier's marks. Every `record_*` call is durable
/// when it returns `Ok`; on `Err` nothing may have changed.
pub trait HighWaterStore {
    /// The mark of `scope` in `cluster`, if any envelope was accepted.
    fn scope_mark(&self, cluster: &ClusterId, scope: &Scope) -> Result<Option<ScopeMark>>;
    /// The term mark of `cluster`, if any envelope was accepted.
    fn term_mark(&self, cluster: &ClusterId) -> Result<Option<TermMark>>;
    /// Records an accepted envelope: both marks, atomically and durably.
    fn record_accept(
        &mut self,
        cluster: &ClusterId,
        scope: &Scope,
        scope_mark: ScopeMark,
        term_mark: TermMark,
    ) -> Result<()>;
    /// The current trust root (encoded `SignedTrustRoot`), if one was stored.
    fn trust_root(&self, cluster: &ClusterId) -> Result<Option<Vec<u8>>>;
    /// Replaces the current trust root, durably.
    fn record_trust_root(&mut self, cluster: &ClusterId, signed_root: &[u8]) -> Result<()>;
}

/// Largest state file [`FileHighWaterStore`] will read (64 MiB).
const STATE_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;
const STATE_FILE_NAME: &str = "high-water.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileState {
    clusters: BTreeMap<ClusterId, ClusterState>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterState {
    term: Option<TermMark>,
    trust_root_hex: Option<String>,
    scopes: BTreeMap<String, ScopeMark>,
}

/// A [`HighWaterStore`] in one JSON file in a directory, replaced
/// atomically (write temp, fsync, rename, fsync directory) on every change.
/// Meant for a handful of scopes; it rewrites the whole file per change.
#[derive(Debug)]
pub struct FileHighWaterStore {
    dir: PathBuf,
    state: FileState,
}

fn store_error(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Store {
        context,
        source: Box::new(e),
    }
}

impl FileHighWaterStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(store_error(format!("create store dir {}", dir.display())))?;
        let path = dir.join(STATE_FILE_NAME);
        let state = match std::fs::File::open(&path) {
            Ok(file) => {
                let mut text = String::new();
                file.take(STATE_FILE_BYTES_MAX + 1)
                    .read_to_string(&mut text)
                    .map_err(store_error(format!("read {}", path.display())))?;
                if text.len() as u64 > STATE_FILE_BYTES_MAX {
                    return Err(Error::Oversize {
                        what: "high-water state file",
                        limit: STATE_FILE_BYTES_MAX as usize,
                        got: text.len(),
                    });
                }
                serde_json::from_str(&text).map_err(|e| Error::Store {
                    context: format!(
                        "parse {} (corrupt store; refusing to start)",
                        path.display()
                    ),
                    source: Box::new(e),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileState::default(),
            Err(e) => return Err(store_error(format!("open {}", path.display()))(e)),
        };
        Ok(FileHighWaterStore {
            dir: dir.to_path_buf(),
            state,
        })
    }

    /// Applies `change` to a copy of the state, writes it durably, and only
    /// then adopts it.
    fn update(&mut self, change: impl FnOnce(&mut FileState) -> Result<()>) -> Result<()> {
        let mut next = self.state.clone();
        change(&mut next)?;
        if next.clusters.len() > MARKED_CLUSTERS_MAX {
            return Err(Error::Oversize {
                what: "clusters in high-water store",
                limit: MARKED_CLUSTERS_MAX,
                got: next.clusters.len(),
            });
        }
        let text = serde_json::to_vec_pretty(&next).map_err(|e| Error::Store {
            context: "encode high-water state".to_string(),
            source: Box::new(e),
        })?;
        let path = self.dir.join(STATE_FILE_NAME);
        let tmp = self.dir.join(format!("{STATE_FILE_NAME}.tmp"));
        let mut file = std::fs::File::create(&tmp)
            .map_err(store_error(format!("create {}", tmp.display())))?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(store_error(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(store_error(format!("replace {}", path.display())))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(store_error(format!("sync dir {}", self.dir.display())))?;
        self.state = next;
        Ok(())
    }
}

impl HighWaterStore for FileHighWaterStore {
    fn scope_mark(&self, cluster: &ClusterId, scope: &Scope) -> Result<Option<ScopeMark>> {
        Ok(self
            .state
            .clusters
            .get(cluster)
            .and_then(|c| c.scopes.get(&scope.to_string()))
            .copied())
    }

    fn term_mark(&self, cluster: &ClusterId) -> Result<Option<TermMark>> {
        Ok(self.state.clusters.get(cluster).and_then(|c| c.term))
    }

    fn record_accept(
        &mut self,
        cluster: &ClusterId,
        scope: &Scope,
        scope_mark: ScopeMark,
        term_mark: TermMark,
    ) -> Result<()> {
        self.update(|state| {
            let entry = state.clusters.entry(cluster.clone()).or_default();
            entry.scopes.insert(scope.to_string(), scope_mark);
            if entry.scopes.len() > MARKED_SCOPES_MAX {
                return Err(Error::Oversize {
                    what: "scopes in high-water store",
                    limit: MARKED_SCOPES_MAX,
                    got: entry.scopes.len(),
                });
            }
            entry.term = Some(term_mark);
            Ok(())
        })
    }

    fn trust_root(&self, cluster: &ClusterId) -> Result<Option<Vec<u8>>> {
        let Some(text) = self
            .state
            .clusters
            .get(cluster)
            .and_then(|c| c.trust_root_hex.as_ref())
        else {
            return Ok(None);
        };
        hex::decode(text).map(Some).map_err(|e| Error::Store {
            context: format!("decode stored trust root of {cluster}"),
            source: Box::new(e),
        })
    }

    fn record_trust_root(&mut self, cluster: &ClusterId, signed_root: &[u8]) -> Result<()> {
        self.update(|state| {
            state
                .clusters
                .entry(cluster.clone())
                .or_default()
                .trust_root_hex = Some(hex::encode(signed_root));
            Ok(())
        })
    }
}
