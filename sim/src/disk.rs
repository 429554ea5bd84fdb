//! The simulated disk under each storage node's Raft store: bytes in
//! memory, behind redb's own storage trait (`rap_authority::store::
//! DiskOpener`), that lose what was not synced when their host crashes.
//!
//! A host's page cache survives a killed process, so on a real file a
//! crash of the process alone loses nothing; losing power does. The
//! simulation crashes hosts as a power loss: the writes since the last
//! `sync_data` are undone, all but a prefix of them whose length is drawn
//! from the seed (the device had written those before the power went, in
//! order). What `fsync` promised survives; nothing else is promised.
//!
//! A store file is known by the inode of a placeholder file at its real
//! path, so that promotion, which renames the file out of the way and
//! opens a fresh one, sees a fresh disk file, and the retired one keeps
//! its bytes.
//!
//! **Limits:** [`DISK_FILE_BYTES_MAX`] per file, [`UNSYNCED_WRITES_MAX`]
//! writes between two syncs (redb syncs every durable commit).

use crate::seed::SimRng;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Largest simulated store file (256 MiB): far above what a run writes.
pub const DISK_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// Most writes kept for undoing between two syncs; past it the file
/// refuses writes (a run that writes this much without a sync is broken).
pub const UNSYNCED_WRITES_MAX: usize = 1_000_000;

/// One undoable change since the last sync.
#[derive(Debug)]
enum Change {
    /// Bytes at `offset` were overwritten; `old` is what was there (the
    /// part beyond the old length is absent from `old`).
    Write { offset: u64, old: Vec<u8> },
    /// The length changed from `old_len`; `cut` holds the bytes a
    /// shrink removed.
    Resize { old_len: u64, cut: Vec<u8> },
}

#[derive(Debug, Default)]
struct FileBytes {
    bytes: Vec<u8>,
    /// Changes since the last sync, oldest first.
    unsynced: Vec<Change>,
}

impl FileBytes {
    fn resize(&mut self, len: u64) -> io::Result<()> {
        if len > DISK_FILE_BYTES_MAX {
            return Err(io::Error::other(format!(
                "simulated file of {len} bytes is over {DISK_FILE_BYTES_MAX}"
            )));
        }
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let old_len = self.bytes.len() as u64;
        let cut = self
            .bytes
            .get(len..)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        self.record(Change::Resize { old_len, cut })?;
        self.bytes.resize(len, 0);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= DISK_FILE_BYTES_MAX)
            .ok_or_else(|| io::Error::other("simulated write beyond the file limit"))?;
        if end > self.bytes.len() as u64 {
            self.resize(end)?;
        }
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let stop = start + data.len();
        let old = self.bytes[start..stop].to_vec();
        self.record(Change::Write { offset, old })?;
        self.bytes[start..stop].copy_from_slice(data);
        Ok(())
    }

    fn record(&mut self, change: Change) -> io::Result<()> {
        if self.unsynced.len() >= UNSYNCED_WRITES_MAX {
            return Err(io::Error::other(format!(
                "more than {UNSYNCED_WRITES_MAX} writes without a sync"
            )));
        }
        self.unsynced.push(change);
        Ok(())
    }

    /// Power loss: keeps the first `kept` unsynced changes, undoes the
    /// rest, newest first.
    fn lose_power(&mut self, kept: usize) {
        while self.unsynced.len() > kept {
            match self.unsynced.pop() {
                Some(Change::Write { offset, old }) => {
                    let start = usize::try_from(offset).unwrap_or(usize::MAX);
                    if let Some(target) = self.bytes.get_mut(start..start + old.len()) {
                        target.copy_from_slice(&old);
                    }
                }
                Some(Change::Resize { old_len, cut }) => {
                    // A grow is undone by the shrink; a shrink gets its
                    // bytes back at the end.
                    let old_len = usize::try_from(old_len).unwrap_or(0);
                    self.bytes.resize(old_len.saturating_sub(cut.len()), 0);
                    self.bytes.extend_from_slice(&cut);
                }
                None => break,
            }
        }
        self.unsynced.clear();
    }
}

/// The files of one disk: in the order they were first opened (a power
/// loss draws for them in that order, which the seed fixes; inode numbers
/// differ from run to run), and by inode.
#[derive(Default)]
struct Files {
    in_order: Vec<Arc<Mutex<FileBytes>>>,
    by_inode: BTreeMap<u64, usize>,
}

/// The disk of one storage node, shared by its incarnations.
#[derive(Clone, Default)]
pub struct SimDisk {
    files: Arc<Mutex<Files>>,
    /// Bumped by every power loss: a backend opened before it (a dead
    /// incarnation's redb, dropped after the crash) writes nothing.
    power_cycles: Arc<AtomicU64>,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDisk")
            .field("power_cycles", &self.power_cycles.load(Ordering::SeqCst))
            .finish()
    }
}

impl SimDisk {
    /// A new, empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// The opener a node's options take.
    pub fn opener(&self) -> rap_authority::store::DiskOpener {
        let disk = self.clone();
        Arc::new(
            move |path: &Path| -> io::Result<Box<dyn redb::StorageBackend>> {
                Ok(Box::new(disk.open(path)?))
            },
        )
    }

    fn open(&self, path: &Path) -> io::Result<SimFile> {
        if !path.exists() {
            std::fs::write(path, b"")?;
        }
        let inode = std::fs::metadata(path)?.ino();
        let bytes = {
            let mut files = self.lock_files();
            let next = files.in_order.len();
            let index = *files.by_inode.entry(inode).or_insert(next);
            if index == next {
                files.in_order.push(Arc::default());
            }
            files.in_order[index].clone()
        };
        Ok(SimFile {
            bytes,
            power_cycle: self.power_cycles.load(Ordering::SeqCst),
            power_cycles: self.power_cycles.clone(),
        })
    }

    /// The power goes: from now on the backends opened so far write
    /// nothing, and each file keeps of its unsynced changes only a prefix
    /// drawn from `rng`. Returns how many unsynced changes were lost.
    pub fn lose_power(&self, rng: &mut SimRng) -> usize {
        self.lose_power_keeping(|unsynced| rng.index(unsynced + 1))
    }

    /// [`SimDisk::lose_power`] keeping `kept(unsynced)` changes per file.
    fn lose_power_keeping(&self, mut kept: impl FnMut(usize) -> usize) -> usize {
        self.power_cycles.fetch_add(1, Ordering::SeqCst);
        let mut lost = 0;
        for file in &self.lock_files().in_order {
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            let unsynced = file.unsynced.len();
            let keep = kept(unsynced).min(unsynced);
            lost += unsynced - keep;
            file.lose_power(keep);
        }
        lost
    }

    fn lock_files(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One open store file (what redb holds).
struct SimFile {
    bytes: Arc<Mutex<FileBytes>>,
    /// The power cycle this file was opened in.
    power_cycle: u64,
    power_cycles: Arc<AtomicU64>,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("power_cycle", &self.power_cycle)
            .finish()
    }
}

impl SimFile {
    fn lock(&self) -> std::sync::MutexGuard<'_, FileBytes> {
        self.bytes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the power went since this file was opened: it belongs to a
    /// dead incarnation, whose writes never reach the disk.
    fn dead(&self) -> bool {
        self.power_cycles.load(Ordering::SeqCst) != self.power_cycle
    }
}

impl redb::StorageBackend for SimFile {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.lock().bytes.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let file = self.lock();
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let source = start
            .checked_add(out.len())
            .and_then(|end| file.bytes.get(start..end))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(source);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        if self.dead() {
            return Ok(());
        }
        self.lock().resize(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        if !self.dead() {
            self.lock().unsynced.clear();
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        if self.dead() {
            return Ok(());
        }
        self.lock().write(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::StorageBackend;

    // Goal: synced bytes survive a power loss, unsynced ones beyond the
    // kept prefix do not, a shrink is undone with its bytes, and a file
    // opened before the loss writes nothing after it. Method: write,
    // sync, write more, lose power keeping nothing, read back.
    #[test]
    fn power_loss_keeps_what_was_synced() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("raft.redb");
        let disk = SimDisk::new();
        let file = disk.open(&path)?;
        file.write(0, b"durable!")?;
        file.sync_data()?;
        file.write(4, b"XXXXXXXXXX")?;
        file.set_len(6)?;
        assert_eq!(file.len()?, 6);
        assert_eq!(disk.lose_power_keeping(|_| 0), 3);
        let after = disk.open(&path)?;
        let mut out = [0u8; 8];
        after.read(0, &mut out)?;
        assert_eq!(&out, b"durable!");
        file.write(0, b"zombie!!")?;
        after.read(0, &mut out)?;
        assert_eq!(
            &out, b"durable!",
            "a dead incarnation wrote after the crash"
        );
        // A renamed file keeps its bytes; the path opens a fresh one.
        std::fs::rename(&path, dir.path().join("retired.redb"))?;
        let fresh = disk.open(&path)?;
        assert_eq!(fresh.len()?, 0);
        Ok(())
    }

    // Goal: a prefix of the unsynced changes survives, in order. Method:
    // three unsynced writes, keep the first two.
    #[test]
    fn a_prefix_of_unsynced_writes_survives() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let disk = SimDisk::new();
        let file = disk.open(&dir.path().join("raft.redb"))?;
        file.write(0, b"aaa")?;
        file.sync_data()?;
        file.write(0, b"b")?;
        file.write(1, b"c")?;
        file.write(2, b"d")?;
        assert_eq!(disk.lose_power_keeping(|_| 2), 1);
        let after = disk.open(&dir.path().join("raft.redb"))?;
        let mut out = [0u8; 3];
        after.read(0, &mut out)?;
        assert_eq!(&out, b"bca");
        Ok(())
    }
}
