//! The state view announces every change of the applied state, after it is
//! visible: what `ShardService` watches wait on.

use super::{Cluster, TestResult, acquire, fence_of, membership, normal};
use openraft::storage::RaftStateMachine;
use std::time::{Duration, Instant};

#[tokio::test]
async fn applies_are_announced_after_they_are_visible() -> TestResult {
    // Goal: a reader waiting on `StateView::changes` wakes for an applied
    // batch, with the batch's last index, and then reads the new shard; a
    // batch refused as a re-apply announces nothing; the apply age restarts
    // at each announced apply.
    // Method: open a store, subscribe, apply genesis + a fence, then a
    // publication; check the announced index, the view and the age; apply
    // the publication again (refused) and check no announcement.
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::new()?;
    let (_log, mut state_machine) = rap_authority::store::open(dir.path())?;
    let view = state_machine.view();
    let mut changes = view.changes();
    assert_eq!(changes.borrow_and_update().index, 0);

    let responses = state_machine
        .apply(vec![
            membership(1, 1),
            normal(1, 2, cluster.genesis()),
            normal(1, 3, acquire("publish")),
        ])
        .await?;
    let fence = fence_of(&responses[2])?;
    assert!(changes.has_changed()?, "the batch is announced");
    assert_eq!(changes.borrow_and_update().index, 3);

    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(view.last_apply_age() >= Duration::from_millis(30));
    let waiter = {
        let mut changes = changes.clone();
        tokio::spawn(async move { changes.changed().await.map(|()| changes.borrow().index) })
    };
    let publication = normal(1, 4, cluster.publish(&fence, "n1", 1)?);
    let before = Instant::now();
    state_machine.apply(vec![publication.clone()]).await?;
    let woken = tokio::time::timeout(Duration::from_secs(5), waiter).await???;
    assert_eq!(woken, 4);
    assert!(view.shard("node/n1").is_some(), "visible once announced");
    assert!(
        view.last_apply_age() <= before.elapsed(),
        "the age counts from this apply"
    );

    changes.borrow_and_update();
    assert!(state_machine.apply(vec![publication]).await.is_err());
    assert!(!changes.has_changed()?, "a refused batch is not announced");
    Ok(())
}
