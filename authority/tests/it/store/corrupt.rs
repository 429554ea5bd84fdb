//! A damaged store refuses to start, with an error that names the file and
//! the damage, and never a panic.

use super::{TestResult, acquire, entry, log_id, normal};
use openraft::EntryPayload;
use openraft::RaftLogReader;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use rap_authority::Error;
use rap_authority::store::{self, RAFT_DB_FILE};
use rap_authority::typ::Entry;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::Path;

/// The log table, as the store lays it out (see `store`'s module doc).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// The state machine's scalar table.
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");

/// Writes blank entries `1..=count` (term 1) and closes the store.
async fn write_blank_log(dir: &Path, count: u64) -> TestResult {
    let (mut log, _state_machine) = store::open(dir)?;
    let entries: Vec<Entry> = (1..=count)
        .map(|index| entry(1, index, EntryPayload::Blank))
        .collect();
    log.blocking_append(entries).await?;
    Ok(())
}

/// Changes the closed store with one raw redb transaction.
fn raw_edit(dir: &Path, edit: impl FnOnce(&redb::WriteTransaction) -> TestResult) -> TestResult {
    let db = Database::create(dir.join(RAFT_DB_FILE))?;
    let txn = db.begin_write()?;
    edit(&txn)?;
    txn.commit()?;
    Ok(())
}

/// The message of the storage error `open` must return.
fn refusal(dir: &Path) -> TestResult<String> {
    match store::open(dir) {
        Ok(_) => Err("a damaged store opened".into()),
        Err(Error::Storage(message)) => {
            eprintln!("refused: {message}");
            Ok(message)
        }
        Err(other) => Err(format!("expected a storage error, got: {other}").into()),
    }
}

fn assert_corrupt_log(message: &str, dir: &Path, detail: &str) {
    let prefix = format!("corrupt raft log in {}", dir.join(RAFT_DB_FILE).display());
    assert!(message.starts_with(&prefix), "{message}");
    assert!(
        message.contains(detail),
        "{message} (expected to mention {detail:?})"
    );
}

#[tokio::test]
async fn missing_middle_entry_is_refused() -> TestResult {
    // Goal: a log with a hole is never served shortened.
    // Method: write entries 1..=5, delete key 3 with a raw redb
    // transaction, reopen: the error names the file and index 3.
    let dir = tempfile::tempdir()?;
    write_blank_log(dir.path(), 5).await?;
    raw_edit(dir.path(), |txn| {
        txn.open_table(LOG)?.remove(3)?;
        Ok(())
    })?;
    let message = refusal(dir.path())?;
    assert_corrupt_log(&message, dir.path(), "entry 3 is missing");
    Ok(())
}

#[tokio::test]
async fn missing_entry_after_purge_is_refused() -> TestResult {
    // Goal: the first entry must follow the last purged index.
    // Method: write 1..=5, purge up to 2, delete key 3 raw, reopen.
    let dir = tempfile::tempdir()?;
    write_blank_log(dir.path(), 5).await?;
    {
        let (mut log, _state_machine) = store::open(dir.path())?;
        log.purge(log_id(1, 2)).await?;
    }
    raw_edit(dir.path(), |txn| {
        txn.open_table(LOG)?.remove(3)?;
        Ok(())
    })?;
    let message = refusal(dir.path())?;
    assert_corrupt_log(&message, dir.path(), "entry 3 is missing (purged up to 2");
    Ok(())
}

#[tokio::test]
async fn entry_under_another_index_is_refused() -> TestResult {
    // Goal: every entry sits under its own index.
    // Method: copy entry 5's bytes over key 4 raw, reopen.
    let dir = tempfile::tempdir()?;
    write_blank_log(dir.path(), 5).await?;
    raw_edit(dir.path(), |txn| {
        let mut log = txn.open_table(LOG)?;
        let fifth = log.get(5)?.ok_or("entry 5 missing")?.value().to_vec();
        log.insert(4, fifth.as_slice())?;
        Ok(())
    })?;
    let message = refusal(dir.path())?;
    assert_corrupt_log(
        &message,
        dir.path(),
        "entry stored at index 4 carries log id",
    );
    Ok(())
}

#[tokio::test]
async fn undecodable_entry_is_refused() -> TestResult {
    // Goal: an entry that does not decode stops the start.
    // Method: overwrite key 2 with bytes that are not an entry, reopen.
    let dir = tempfile::tempdir()?;
    write_blank_log(dir.path(), 5).await?;
    raw_edit(dir.path(), |txn| {
        txn.open_table(LOG)?
            .insert(2, [0xc1u8, 0xff, 0x00].as_slice())?;
        Ok(())
    })?;
    let message = refusal(dir.path())?;
    assert_corrupt_log(&message, dir.path(), "entry 2 does not decode");
    Ok(())
}

#[tokio::test]
async fn undecodable_state_is_refused() -> TestResult {
    // Goal: a state machine that does not decode stops the start too.
    // Method: overwrite `sm_meta/state` with garbage, reopen.
    let dir = tempfile::tempdir()?;
    write_blank_log(dir.path(), 1).await?;
    raw_edit(dir.path(), |txn| {
        txn.open_table(SM_META)?
            .insert("state", [0xc1u8].as_slice())?;
        Ok(())
    })?;
    let message = refusal(dir.path())?;
    let prefix = format!(
        "corrupt raft state machine in {}",
        dir.path().join(RAFT_DB_FILE).display()
    );
    assert!(message.starts_with(&prefix), "{message}");
    Ok(())
}

/// A distinctive string stored inside one log entry, to find its bytes.
const MARKER: &str = "corruption-marker-7f3a9c1e5b2d40681e2f";

/// Writes 40 entries, the 20th carrying [`MARKER`], and closes the store.
async fn write_marked_log(dir: &Path) -> TestResult<Vec<Entry>> {
    let (mut log, _state_machine) = store::open(dir)?;
    let entries: Vec<Entry> = (1..=40)
        .map(|index| {
            if index == 20 {
                normal(1, index, acquire(MARKER))
            } else {
                entry(1, index, EntryPayload::Blank)
            }
        })
        .collect();
    log.blocking_append(entries).await?;
    Ok(log.try_get_log_entries(..).await?)
}

#[tokio::test]
async fn overwritten_entry_bytes_are_refused() -> TestResult {
    // Goal: bytes changed on disk underneath redb (bit rot, a stray
    // write) are caught by page checksums at open: a clear error, no
    // panic, no silently different log.
    // Method: write a log whose 20th entry carries a marker string, close
    // it, overwrite every copy of the marker in raft.redb (the page in the
    // middle of the log), reopen.
    let dir = tempfile::tempdir()?;
    write_marked_log(dir.path()).await?;
    let path = dir.path().join(RAFT_DB_FILE);
    let mut bytes = std::fs::read(&path)?;
    let positions: Vec<usize> = bytes
        .windows(MARKER.len())
        .enumerate()
        .filter(|(_, window)| *window == MARKER.as_bytes())
        .map(|(position, _)| position)
        .collect();
    assert!(
        !positions.is_empty(),
        "marker not found in {}",
        path.display()
    );
    for position in &positions {
        bytes[*position..*position + MARKER.len()].fill(b'#');
    }
    std::fs::write(&path, &bytes)?;

    let message = refusal(dir.path())?;
    assert_corrupt_log(&message, dir.path(), "redb");
    Ok(())
}

#[tokio::test]
async fn overwritten_blocks_anywhere_never_panic_nor_change_the_log() -> TestResult {
    // Goal: whatever block of the file's used pages is overwritten, `open`
    // either refuses with a storage error naming the file, or (the block
    // held nothing live) serves exactly the log that was written; it never
    // panics.
    // Method: write a small log, find every 4 KiB page of raft.redb that
    // holds a non-zero byte, and for each overwrite 512 bytes at its start
    // and at its middle with 0xA5, each time in a fresh copy of the file in
    // a fresh directory; open under catch_unwind and check the outcome.
    let dir = tempfile::tempdir()?;
    let written = super::debug_of(&write_marked_log(dir.path()).await?);
    let pristine = std::fs::read(dir.path().join(RAFT_DB_FILE))?;
    let page = 4096usize;
    let block = 512usize;
    let offsets: Vec<usize> = pristine
        .chunks(page)
        .enumerate()
        .filter(|(_, bytes)| bytes.len() == page && bytes.iter().any(|byte| *byte != 0))
        .flat_map(|(number, _)| [number * page, number * page + page / 2])
        .collect();
    assert!(!offsets.is_empty(), "no used page in the file");
    let (mut refused, mut intact) = (0, 0);
    for offset in &offsets {
        let offset = *offset;
        let mut bytes = pristine.clone();
        bytes[offset..offset + block].fill(0xA5);
        // A fresh directory each time: a refused file's handle (and lock)
        // stays open until the process ends.
        let damaged = tempfile::tempdir()?;
        let path = damaged.path().join(RAFT_DB_FILE);
        std::fs::write(&path, &bytes)?;

        let outcome = std::panic::catch_unwind(|| store::open(damaged.path()));
        match outcome {
            Err(_) => panic!("open panicked with a block overwritten at offset {offset}"),
            Ok(Err(Error::Storage(message))) => {
                assert!(
                    message.contains(&path.display().to_string()),
                    "offset {offset}: {message}"
                );
                refused += 1;
            }
            Ok(Err(other)) => panic!("offset {offset}: unexpected error {other}"),
            Ok(Ok((mut log, _state_machine))) => {
                let served = super::debug_of(&log.try_get_log_entries(..).await?);
                assert_eq!(served, written, "offset {offset}: the log changed");
                intact += 1;
            }
        }
    }
    eprintln!(
        "{} bytes, {} blocks overwritten in used pages: {refused} refused, {intact} held nothing live",
        pristine.len(),
        offsets.len()
    );
    assert!(refused > 0, "no overwrite was detected");
    Ok(())
}
