//! A durable file store of an envelope verifier's high-water marks
//! ([`HighWaterStore`]): one JSON file in a directory, replaced atomically
//! ([`files::write_file`] with [`Overwrite::Replace`]) on every change.
//! For tools, tests and single-purpose readers with a handful of scopes
//! (it rewrites the whole file per change); the agent and the storage
//! nodes keep their marks in their own databases.

use crate::files::{self, Overwrite};
use rap_proto::envelope::{HighWaterStore, Scope, ScopeMark, TermMark};
use rap_proto::error::{Error, Result};
use rap_proto::ids::ClusterId;
use rap_proto::limits::{MARKED_CLUSTERS_MAX, MARKED_SCOPES_MAX};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest state file [`FileHighWaterStore`] will read (64 MiB).
const STATE_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;
const STATE_FILE_NAME: &str = "high-water.json";
/// The state file is not secret, but nobody else needs to write it.
const STATE_FILE_MODE: u32 = 0o644;

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
        let state = match files::read_bounded(&path, STATE_FILE_BYTES_MAX) {
            Ok(text) => serde_json::from_slice(&text).map_err(|e| Error::Store {
                context: format!(
                    "parse {} (corrupt store; refusing to start)",
                    path.display()
                ),
                source: Box::new(e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileState::default(),
            Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                return Err(Error::Oversize {
                    what: "high-water state file",
                    limit: usize::try_from(STATE_FILE_BYTES_MAX).unwrap_or(usize::MAX),
                    got: usize::try_from(STATE_FILE_BYTES_MAX + 1).unwrap_or(usize::MAX),
                });
            }
            Err(e) => return Err(store_error(format!("read {}", path.display()))(e)),
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
        files::write_file(&path, &text, STATE_FILE_MODE, Overwrite::Replace)
            .map_err(store_error(format!("replace {}", path.display())))?;
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
