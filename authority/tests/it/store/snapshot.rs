//! Snapshots: build on one store, install into a fresh one.

use super::{Cluster, TestResult, acquire, fence_of, log_id, membership, normal};
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use rap_authority::store;
use rap_authority::typ::Entry;
use rap_proto::ids::FenceSeq;
use std::io::Cursor;

/// Applies membership, Genesis, a fence and a publication to a new store
/// in `dir`; returns the store.
async fn populated(
    dir: &std::path::Path,
    cluster: &Cluster,
) -> TestResult<store::StateMachineStore> {
    let (_log, mut state_machine) = store::open(dir)?;
    let head: Vec<Entry> = vec![
        membership(1, 1),
        normal(1, 2, cluster.genesis()),
        normal(1, 3, acquire("publish")),
    ];
    let responses = state_machine.apply(head).await?;
    let fence = fence_of(&responses[2])?;
    state_machine
        .apply(vec![normal(1, 4, cluster.publish(&fence, "n1", 1)?)])
        .await?;
    Ok(state_machine)
}

#[tokio::test]
async fn built_snapshot_installs_into_a_fresh_store() -> TestResult {
    // Goal: a follower that installs a leader's snapshot holds the same
    // state, last applied id and membership, durably.
    // Method: populate store A, build a snapshot, install it into a fresh
    // store B, compare; reopen B and compare again; B's current snapshot
    // is A's.
    let cluster = Cluster::new()?;
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    let mut a = populated(dir_a.path(), &cluster).await?;
    let built = a.get_snapshot_builder().await.build_snapshot().await?;
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 4)));
    assert!(
        built.meta.snapshot_id.starts_with("1-4-"),
        "{}",
        built.meta.snapshot_id
    );
    let current = a.get_current_snapshot().await?.ok_or("A has no snapshot")?;
    assert_eq!(current.meta, built.meta);

    let (_log_b, mut b) = store::open(dir_b.path())?;
    let mut receiving = b.begin_receiving_snapshot().await?;
    *receiving = *current.snapshot;
    b.install_snapshot(&current.meta, receiving).await?;
    assert_eq!(b.state(), a.state());
    assert_eq!(b.last_applied(), a.last_applied());
    assert_eq!(b.last_membership(), a.last_membership());
    assert_eq!(b.view().last_fence_seq(), FenceSeq(1));
    let installed = b.get_current_snapshot().await?.ok_or("B has no snapshot")?;
    assert_eq!(installed.meta, built.meta);
    drop(b);
    drop(_log_b);

    let (_log_b, b) = store::open(dir_b.path())?;
    assert_eq!(b.state(), a.state());
    assert_eq!(b.last_applied(), Some(log_id(1, 4)));
    assert!(b.state().shards.contains_key("node/n1"));
    Ok(())
}

#[tokio::test]
async fn undecodable_snapshot_changes_nothing() -> TestResult {
    // Goal: a snapshot that does not decode (or does not match its meta)
    // is refused with a storage error and leaves state and current
    // snapshot as they were.
    // Method: populate a store and build a snapshot; install garbage bytes
    // under the same meta, then the real bytes under a meta that claims a
    // later index; both fail; state, last applied and current snapshot
    // are unchanged.
    let cluster = Cluster::new()?;
    let dir = tempfile::tempdir()?;
    let mut state_machine = populated(dir.path(), &cluster).await?;
    let built = state_machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await?;
    let state_before = state_machine.state();

    let garbage = Box::new(Cursor::new(vec![0xc1u8, 0x00, 0xff]));
    assert!(
        state_machine
            .install_snapshot(&built.meta, garbage)
            .await
            .is_err()
    );

    let mut lying_meta = built.meta.clone();
    lying_meta.last_log_id = Some(log_id(1, 9));
    lying_meta.snapshot_id = "1-9-1".to_string();
    let real_bytes = Box::new(Cursor::new(built.snapshot.into_inner()));
    assert!(
        state_machine
            .install_snapshot(&lying_meta, real_bytes)
            .await
            .is_err()
    );

    assert_eq!(state_machine.state(), state_before);
    assert_eq!(state_machine.last_applied(), Some(log_id(1, 4)));
    let current = state_machine
        .get_current_snapshot()
        .await?
        .ok_or("no snapshot")?;
    assert_eq!(current.meta, built.meta);
    Ok(())
}
