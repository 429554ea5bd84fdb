//! openraft's storage conformance suite against the redb store.

use openraft::StorageIOError;
use openraft::testing::{StoreBuilder, Suite};
use rap_authority::store::{self, LogStore, StateMachineStore};
use rap_authority::typ::{StorageError, TypeConfig};
use tempfile::TempDir;

/// Opens a fresh store in its own temporary directory for every case; the
/// directory is the guard the suite drops after the case.
struct FreshStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for FreshStore {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let (log, state_machine) =
            store::open(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, state_machine))
    }
}

#[test]
fn openraft_storage_suite() -> super::TestResult {
    // Goal: the log store and state machine keep every promise openraft's
    // storage API makes (log state, purge/truncate, vote, membership,
    // apply, snapshot build and transfer).
    // Method: openraft's own `Suite::test_all`, each case on a fresh file.
    // Not a tokio test: the suite starts a runtime per case itself.
    Suite::test_all(FreshStore)?;
    Ok(())
}
