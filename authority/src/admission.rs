//! Whom a storage node admits (what `crate::slot::NodeSlot` answers as a
//! [`crate::access::GroupView`]): the members of its group, the peers an authorized caller
//! told it to expect while it holds no group, and nobody whose certificate
//! the cluster revoked.
//!
//! What do we store? [`ExpectedPeers`] keeps one small file,
//! `<data-dir>/expected-peers`: one storage node id per line, written
//! durably when a bootstrap, a promotion order or `PrepareJoin` names the
//! members a node that holds no group (new, or restarted empty) may hear
//! from. It only counts while the node has no membership of its own; from
//! the first membership entry on, the membership decides.
//!
//! Revocations are read from the group's own `trust/revocations` shard
//! (verified when it was applied), decoded once per new version
//! ([`Revocations`]).

use crate::error::{Error, Result};
use crate::network::PEERS_MAX;
use crate::store::StateView;
use rap_core::files::{self, Overwrite};
use rap_proto::ids::{ClusterId, LogIndex, NodeId};
use rap_proto::revocations::REVOCATIONS_SCOPE;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

/// The file of [`ExpectedPeers`] under the data directory.
pub const EXPECTED_PEERS_FILE: &str = "expected-peers";

/// Largest expected-peers file read: [`PEERS_MAX`] ids and newlines.
const EXPECTED_PEERS_BYTES_MAX: u64 = (PEERS_MAX as u64) * 64;

/// The storage nodes a node that holds no group yet may hear from.
#[derive(Debug)]
pub struct ExpectedPeers {
    path: PathBuf,
    peers: RwLock<BTreeSet<NodeId>>,
}

impl ExpectedPeers {
    /// Loads `<data_dir>/expected-peers` (none: nobody expected).
    pub fn load(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(EXPECTED_PEERS_FILE);
        let peers = match files::read_bounded(&path, EXPECTED_PEERS_BYTES_MAX) {
            Ok(bytes) => parse(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(Error::Storage(e.to_string())),
        };
        Ok(ExpectedPeers {
            path,
            peers: RwLock::new(peers),
        })
    }

    /// Whether `id` is expected.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }

    /// The expected peers, in order.
    pub fn list(&self) -> Vec<NodeId> {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Replaces the expected peers (durably, before it takes effect).
    /// `why` is logged.
    pub fn set(&self, peers: BTreeSet<NodeId>, cluster_id: &ClusterId, why: &str) -> Result<()> {
        if peers.len() > PEERS_MAX {
            return Err(Error::Oversize {
                what: "expected peers",
                limit: PEERS_MAX,
                got: peers.len(),
            });
        }
        let mut text = String::new();
        for id in &peers {
            text.push_str(id.as_str());
            text.push('\n');
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Storage(format!("create {}: {e}", dir.display())))?;
        }
        files::write_file(&self.path, text.as_bytes(), 0o644, Overwrite::Replace)
            .map_err(|e| Error::Storage(e.to_string()))?;
        tracing::info!(
            cluster_id = %cluster_id,
            peers = ?peers.iter().map(NodeId::as_str).collect::<Vec<_>>(),
            why,
            "expected peers set"
        );
        *self.peers.write().unwrap_or_else(PoisonError::into_inner) = peers;
        Ok(())
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<BTreeSet<NodeId>> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::Storage(format!("{} is not UTF-8", path.display())))?;
    let mut peers = BTreeSet::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let id =
            NodeId::new(line).map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
        peers.insert(id);
    }
    if peers.len() > PEERS_MAX {
        return Err(Error::Storage(format!(
            "{} lists more than {PEERS_MAX} peers",
            path.display()
        )));
    }
    Ok(peers)
}

/// The serials of the group's `trust/revocations` shard, decoded once per
/// applied version.
#[derive(Debug, Default)]
pub struct Revocations {
    cached: RwLock<Option<(LogIndex, Arc<HashSet<String>>)>>,
}

impl Revocations {
    /// Whether `serial_hex` is revoked according to `view`'s newest
    /// revocation list. A list that does not decode revokes nothing (it
    /// was verified when applied, so that is a bug, logged at ERROR).
    pub fn is_revoked(&self, view: &StateView, cluster_id: &ClusterId, serial_hex: &str) -> bool {
        let Some(index) = view.read(|s| s.shards.get(REVOCATIONS_SCOPE).map(|r| r.log_index))
        else {
            return false;
        };
        if let Some((cached, serials)) =
            &*self.cached.read().unwrap_or_else(PoisonError::into_inner)
            && *cached == index
        {
            return serials.contains(serial_hex);
        }
        let serials = Arc::new(decode(view, cluster_id));
        let revoked = serials.contains(serial_hex);
        *self.cached.write().unwrap_or_else(PoisonError::into_inner) = Some((index, serials));
        revoked
    }
}

fn decode(view: &StateView, cluster_id: &ClusterId) -> HashSet<String> {
    match view.shard(REVOCATIONS_SCOPE) {
        Some(record) => revoked_serials(&record.envelope, cluster_id),
        None => HashSet::new(),
    }
}

/// The revoked certificate serials of a verified `trust/revocations`
/// envelope. One that does not decode revokes nothing (it was verified
/// when it was kept, so that is a bug, logged at ERROR).
pub fn revoked_serials(envelope: &[u8], cluster_id: &ClusterId) -> HashSet<String> {
    let body = rap_proto::envelope::decode(envelope)
        .map_err(|e| e.to_string())
        .and_then(|envelope| {
            rap_proto::revocations::decode(&envelope.body, cluster_id).map_err(|e| e.to_string())
        });
    match body {
        Ok(list) => list
            .revoked
            .into_iter()
            .map(|entry| entry.certificate_serial)
            .collect(),
        Err(error) => {
            tracing::error!(cluster_id = %cluster_id, %error, "the kept revocation list does not decode");
            HashSet::new()
        }
    }
}
