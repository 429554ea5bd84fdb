//! Snapshot-signing key generations of one cluster after genesis:
//! `signing-g<N>.key` (0600) and `trust-root-g<N>.bin` for N ≥ 2 in the
//! cluster's keys directory, each root chained to the one before it.
//!
//! Generation 1 (`signing.key`, `trust-root.bin`) is the genesis pinned at
//! join and at bootstrap; it keeps signing promotion and rejoin orders (a
//! storage node that missed a rotation must still believe the order that
//! fences it). Shards are signed under the generation the authority group
//! is at ([`ClusterKeys::shard_signer`]).

use super::*;
use rap_proto::ids::TrustGeneration;

/// Most snapshot-signing key generations of one cluster.
pub const KEY_GENERATIONS_MAX: u64 = 1024;

/// One generation after genesis: its verified root and its key.
pub(super) struct Generation {
    pub(super) root: VerifiedTrustRoot,
    pub(super) signer: SnapshotSigner,
}

fn key_file(generation: u64) -> String {
    format!("signing-g{generation}.key")
}

fn root_file(generation: u64) -> String {
    format!("trust-root-g{generation}.bin")
}

/// Loads every generation after `genesis` found in `dir`, in order,
/// checking each root's chain and that it names its key. A key file
/// without its root (a rotation cut short before the root was written) is
/// no generation.
pub(super) fn load(dir: &Path, genesis: &VerifiedTrustRoot) -> Result<Vec<Generation>> {
    let mut generations: Vec<Generation> = Vec::new();
    for n in 2..=KEY_GENERATIONS_MAX {
        let root_path = dir.join(root_file(n));
        if !root_path.exists() {
            break;
        }
        let previous = generations.last().map(|g| &g.root).unwrap_or(genesis);
        let bytes = read_bounded(&root_path, TRUST_ROOT_FILE_BYTES_MAX).map_err(file_error)?;
        let root = previous
            .verify_rotation(&bytes)
            .map_err(|e| Error::Keys(format!("{}: {e}", root_path.display())))?;
        let key_path = dir.join(key_file(n));
        let signer = rap_core::files::read_signing_key(&key_path)
            .map_err(|e| Error::Keys(format!("{}: {e}", key_path.display())))?;
        if root.key(&signer.key_id()).is_none() {
            return Err(Error::Keys(format!(
                "{} does not name the key in {}",
                root_path.display(),
                key_path.display()
            )));
        }
        generations.push(Generation { root, signer });
    }
    Ok(generations)
}

impl ClusterKeys {
    /// The newest key generation on disk (1 before any rotation).
    pub fn latest_generation(&self) -> TrustGeneration {
        self.generations
            .last()
            .map(|g| g.root.generation())
            .unwrap_or(TrustGeneration(1))
    }

    /// The key that signs shards under `generation`, if this control plane
    /// holds it.
    pub fn shard_signer(&self, generation: TrustGeneration) -> Result<&SnapshotSigner> {
        if generation == TrustGeneration(1) {
            return Ok(self.signer());
        }
        self.generations
            .iter()
            .find(|g| g.root.generation() == generation)
            .map(|g| &g.signer)
            .ok_or_else(|| {
                Error::Keys(format!(
                    "the authority group of {} is at trust generation {generation}, and {} holds no key of it",
                    self.cluster_id(),
                    self.dir().display()
                ))
            })
    }

    /// The trust root of `generation` (encoded), if held.
    pub fn root_bytes(&self, generation: TrustGeneration) -> Option<&[u8]> {
        if generation == TrustGeneration(1) {
            return Some(self.trust_root_bytes());
        }
        self.generations
            .iter()
            .find(|g| g.root.generation() == generation)
            .map(|g| g.root.bytes())
    }

    /// The generation a rotation moves a group at `group` to: the newest
    /// one on disk when it is newer than `group` (a rotation that did not
    /// finish is resumed, never skipped), otherwise a new one — a new key
    /// (0600) and a root holding it, signed by the newest generation's key
    /// and by itself, both durable before this returns. Holds the keys
    /// directory's lock, so two control planes never write one generation
    /// twice. Blocking (file writes with fsync): call it off the async
    /// threads.
    pub fn generation_after(&mut self, group: TrustGeneration) -> Result<TrustGeneration> {
        let _lock = KeysDirLock::take(self.dir())?;
        self.generations = load(self.dir(), self.trust_root())?;
        if self.latest_generation() > group {
            return Ok(self.latest_generation());
        }
        let next = self.latest_generation().0 + 1;
        if next > KEY_GENERATIONS_MAX {
            return Err(Error::Oversize {
                what: "signing-key generations",
                limit: usize::try_from(KEY_GENERATIONS_MAX).unwrap_or(usize::MAX),
                got: usize::try_from(next).unwrap_or(usize::MAX),
            });
        }
        let (current_root, current_signer) = match self.generations.last() {
            Some(g) => (&g.root, &g.signer),
            None => (self.trust_root(), self.signer()),
        };
        let signer = SnapshotSigner::generate()
            .map_err(|e| Error::Keys(format!("generate signing key: {e}")))?;
        let root = TrustRoot::rotate(
            current_root,
            &[&signer],
            &[current_signer],
            UnixMillis::now(),
        )
        .map_err(|e| Error::Internal(format!("rotated trust root: {e}")))?;
        let key_path = self.dir().join(key_file(next));
        // A key left by a rotation cut short before its root was written.
        if key_path.exists() {
            std::fs::remove_file(&key_path).map_err(|e| io_error("remove", &key_path, e))?;
        }
        rap_core::files::write_signing_key(&key_path, &signer)
            .map_err(|e| Error::Keys(format!("{}: {e}", key_path.display())))?;
        write_file(
            &self.dir().join(root_file(next)),
            root.bytes(),
            0o644,
            Overwrite::Never,
        )
        .map_err(file_error)?;
        tracing::info!(cluster_id = %self.cluster_id(), generation = next, "snapshot-signing key generation written");
        self.generations.push(Generation { root, signer });
        Ok(TrustGeneration(next))
    }
}
