//! Everything written survives dropping the store and opening it again.

use super::{Cluster, TestResult, VOTER, acquire, debug_of, fence_of, log_id, membership, normal};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{EntryPayload, RaftLogReader};
use rap_authority::request::Response;
use rap_authority::store;
use rap_authority::typ::{Entry, Vote};
use rap_proto::ids::{AuthorityTerm, FenceSeq};

#[tokio::test]
async fn log_vote_state_and_last_applied_survive_reopen() -> TestResult {
    // Goal: a restarted node sees exactly the log, vote, committed id,
    // replicated state and last applied id it had before, and goes on
    // granting fences where it stopped.
    // Method: append a membership entry, Genesis (real trust root), two
    // fences, a publication, a blank and one more fence; save a vote; apply
    // all but the last; drop both halves; reopen and compare; then apply
    // the last entry (fence seq 3) and check a re-applied entry is refused.
    let dir = tempfile::tempdir()?;
    let cluster = Cluster::new()?;

    let (mut log, mut state_machine) = store::open(dir.path())?;
    let head: Vec<Entry> = vec![
        membership(1, 1),
        normal(1, 2, cluster.genesis()),
        normal(1, 3, acquire("first")),
        normal(1, 4, acquire("second")),
    ];
    log.blocking_append(head.clone()).await?;
    let responses = state_machine.apply(head.clone()).await?;
    assert_eq!(responses[0], Response::Done);
    assert_eq!(responses[1], Response::Done);
    let first = fence_of(&responses[2])?;
    let second = fence_of(&responses[3])?;
    assert_eq!((first.seq, second.seq), (FenceSeq(1), FenceSeq(2)));
    assert_eq!(second.log_index.0, 4);

    let tail: Vec<Entry> = vec![
        normal(1, 5, cluster.publish(&second, "n1", 1)?),
        super::entry(2, 6, EntryPayload::Blank),
        normal(2, 7, acquire("after restart")),
    ];
    log.blocking_append(tail.clone()).await?;
    let published = state_machine.apply(tail[..2].to_vec()).await?;
    assert!(
        matches!(&published[0], Response::Published(shards) if shards.len() == 1),
        "publication refused: {published:?}"
    );
    let vote = Vote::new_committed(2, VOTER);
    log.save_vote(&vote).await?;
    log.save_committed(Some(log_id(2, 6))).await?;

    let entries_before = log.try_get_log_entries(..).await?;
    let state_before = state_machine.state();
    let membership_before = state_machine.last_membership();
    assert_eq!(state_before.authority_term, AuthorityTerm(1));
    assert_eq!(state_before.last_fence_seq, FenceSeq(2));
    assert!(state_before.shards.contains_key("node/n1"));
    assert_eq!(state_machine.last_applied(), Some(log_id(2, 6)));
    drop(log);
    drop(state_machine);

    let (mut log, mut state_machine) = store::open(dir.path())?;
    assert_eq!(
        debug_of(&log.try_get_log_entries(..).await?),
        debug_of(&entries_before)
    );
    assert_eq!(entries_before.len(), 7);
    assert_eq!(log.read_vote().await?, Some(vote));
    assert_eq!(log.read_committed().await?, Some(log_id(2, 6)));
    let log_state = log.get_log_state().await?;
    assert_eq!(log_state.last_log_id, Some(log_id(2, 7)));
    assert_eq!(log_state.last_purged_log_id, None);
    assert_eq!(state_machine.state(), state_before);
    assert_eq!(state_machine.last_applied(), Some(log_id(2, 6)));
    assert_eq!(state_machine.last_membership(), membership_before);
    assert_eq!(
        state_machine.applied_state().await?,
        (Some(log_id(2, 6)), membership_before)
    );

    // The shared view reads the same state without Raft.
    let view = state_machine.view();
    assert_eq!(view.last_fence_seq(), FenceSeq(2));
    assert_eq!(view.authority_term(), AuthorityTerm(1));
    assert_eq!(view.cluster_id(), Some(cluster.id.clone()));
    assert_eq!(view.scopes(), vec!["node/n1".to_string()]);
    assert_eq!(
        view.shard("node/n1").map(|record| record.log_index.0),
        Some(5)
    );

    // Granting goes on where it stopped, and the view follows.
    let third = state_machine.apply(vec![tail[2].clone()]).await?;
    let third = fence_of(&third[0])?;
    assert_eq!((third.seq, third.log_index.0), (FenceSeq(3), 7));
    assert_eq!(view.last_fence_seq(), FenceSeq(3));
    assert_eq!(view.last_applied(), Some(log_id(2, 7)));

    // An entry at or below last applied is refused and changes nothing.
    let again = state_machine.apply(vec![head[2].clone()]).await;
    assert!(again.is_err(), "re-applying entry 3 must fail");
    assert_eq!(state_machine.last_applied(), Some(log_id(2, 7)));
    assert_eq!(view.last_fence_seq(), FenceSeq(3));
    Ok(())
}

#[tokio::test]
async fn purge_and_truncate_survive_reopen() -> TestResult {
    // Goal: purge and truncate are durable and a reopened log reports the
    // same log state (last purged id included).
    // Method: append 1..=10, purge up to 3, truncate from 8, reopen,
    // compare state and entries; append 8 again; an overwrite of 7 and a
    // batch with a hole are refused and change nothing.
    let dir = tempfile::tempdir()?;
    let (mut log, _state_machine) = store::open(dir.path())?;
    let entries: Vec<Entry> = (1..=10)
        .map(|index| super::entry(1, index, EntryPayload::Blank))
        .collect();
    log.blocking_append(entries).await?;
    log.purge(log_id(1, 3)).await?;
    log.truncate(log_id(1, 8)).await?;
    let before = log.get_log_state().await?;
    assert_eq!(before.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(before.last_log_id, Some(log_id(1, 7)));
    drop(log);
    drop(_state_machine);

    let (mut log, _state_machine) = store::open(dir.path())?;
    assert_eq!(log.get_log_state().await?, before);
    let indexes: Vec<u64> = log
        .try_get_log_entries(..)
        .await?
        .iter()
        .map(|entry| entry.log_id.index)
        .collect();
    assert_eq!(indexes, vec![4, 5, 6, 7]);
    log.blocking_append([super::entry(2, 8, EntryPayload::Blank)])
        .await?;
    // Overwriting a present entry without a truncate is refused, and so
    // is a batch with a hole inside it.
    let overwrite = log
        .blocking_append([super::entry(2, 7, EntryPayload::Blank)])
        .await;
    assert!(overwrite.is_err(), "appending 7 over 7 must fail");
    let holed = log
        .blocking_append([
            super::entry(2, 9, EntryPayload::Blank),
            super::entry(2, 11, EntryPayload::Blank),
        ])
        .await;
    assert!(holed.is_err(), "a batch 9, 11 must fail");
    assert_eq!(log.get_log_state().await?.last_log_id, Some(log_id(2, 8)));
    Ok(())
}
