//! Promotion after loss of the majority, the old side coming back, and
//! rejoin.

use crate::bin;
use rap_proto::envelope::{Digest, SnapshotSigner};
use rap_proto::pb;
use rap_proto::time::UnixMillis;
use rap_testkit::cluster::{Cluster, HANG_GUARD, acquire, code_of, eventually, publish, run};
use std::time::Duration;

fn view_of(status: &pb::AuthorityStatusResponse) -> pb::PartitionView {
    pb::PartitionView::try_from(status.partition_view).unwrap_or_default()
}

// Goal: after the majority is lost, a signed promotion re-forms the group
// from the survivor at term 2 with its state; term-1 fences and envelopes
// are useless; a forged order and a promotion while a quorum exists are
// refused; the old majority, restarted, ends up fenced and grants nothing
// at term 2; a rejoin brings one old member into term 2.
// Method: 3 real processes; publish v1 and take a fence at term 1; refuse a
// promotion while healthy; kill -9 two; refuse a forged order; promote via
// the CLI; check fences, REPLAY of v1 (so the state moved), STALE_FENCE of
// the old fence; restart the old two and wait for FENCED; rejoin one.
#[test]
fn promotion_fences_the_old_side_and_rejoin_brings_it_back() {
    run(async {
        let mut cluster = Cluster::launch(bin(), 3).await;
        let cluster_id = cluster.cluster_id.to_string();
        let key_file = cluster.root().join("signing.key");
        rap_core::files::write_signing_key(&key_file, &cluster.signer).expect("write the key file");
        let key_file = key_file.display().to_string();
        let admin = cluster.admin_tls_dir.display().to_string();
        let survivor = 0;
        let mut client = cluster.client(survivor);
        let old_fence = acquire(&mut client, &cluster_id, 1, "before")
            .await
            .expect("fence at term 1");
        let v1 = cluster
            .sealer()
            .seal("node/n1", &["node:n1"], 1, None, 1, b"v1");
        let published = publish(&mut client, old_fence.clone(), vec![v1.bytes.clone()])
            .await
            .expect("publish v1 at term 1");
        // The survivor's state seeds the new term: wait until it applied v1
        // (the leader answers once a majority holds it, which may be the
        // two nodes about to be killed).
        let v1_index = published[0].log_index;
        eventually(
            "the survivor applied v1",
            HANG_GUARD,
            Duration::from_millis(20),
            || async {
                let status = cluster.status(survivor).await.ok()?;
                (status.applied_index >= v1_index).then_some(())
            },
        )
        .await;

        let survivor_spec = format!("s1={}", cluster.nodes[survivor].address());
        let promote = |cluster: &Cluster| {
            cluster.cli(&[
                "promote",
                "--cluster",
                &cluster_id,
                "--tls-dir",
                &admin,
                "--key",
                &key_file,
                "--survivor",
                &survivor_spec,
            ])
        };
        let (code, _, stderr) = promote(&cluster);
        assert_eq!(code, 1, "promotion with a quorum must be refused");
        assert!(stderr.contains("still sees a quorum"), "{stderr}");

        cluster.kill(1);
        cluster.kill(2);
        eventually(
            "the survivor sees a minority",
            HANG_GUARD,
            Duration::from_millis(50),
            || async {
                let status = cluster.status(survivor).await.ok()?;
                (view_of(&status) == pb::PartitionView::Minority).then_some(())
            },
        )
        .await;

        // A forged order (a stranger's key) is refused and changes nothing.
        let stranger = SnapshotSigner::generate().expect("key");
        let status = cluster.status(survivor).await.expect("status");
        let forged = rap_proto::orders::sign_promotion(
            &pb::PromotionOrder {
                cluster_id: cluster_id.clone(),
                current_term: 1,
                new_term: 2,
                survivors: vec!["s1".into()],
                seed: Digest::of(b"forged").0.to_vec(),
                issued_at_unix_ms: UnixMillis::now().0,
                seed_node_id: "s1".into(),
                seed_applied_index: status.applied_index,
            },
            &stranger,
        );
        let refused = client.promote(forged).await.expect_err("forged order");
        assert_eq!(code_of(&refused), "UNKNOWN_KEY", "{refused:?}");
        assert_eq!(cluster.authority_term(survivor).await, 1);

        let (code, stdout, stderr) = promote(&cluster);
        assert_eq!(code, 0, "promote: {stdout}{stderr}");
        assert_eq!(cluster.authority_term(survivor).await, 2);
        let fence = acquire(&mut client, &cluster_id, 2, "after")
            .await
            .expect("fence at term 2");
        assert_eq!((fence.authority_term, fence.seq), (2, 1));
        // The old fence is useless, and the state came along (v1 replays).
        let stale = publish(
            &mut client,
            old_fence,
            vec![
                cluster
                    .sealer()
                    .seal("node/n2", &["node:n2"], 1, None, 1, b"x")
                    .bytes,
            ],
        )
        .await
        .expect_err("old-term fence");
        assert_eq!(code_of(&stale), "STALE_FENCE");
        let replay = publish(&mut client, fence.clone(), vec![v1.bytes.clone()])
            .await
            .expect_err("v1 again");
        assert_eq!(code_of(&replay), "REPLAY", "the seed's state must carry v1");
        let old_term_envelope =
            cluster
                .sealer()
                .seal("node/n3", &["node:n3"], 1, None, 1, b"term 1");
        let mismatch = publish(&mut client, fence.clone(), vec![old_term_envelope.bytes])
            .await
            .expect_err("term-1 envelope");
        assert_eq!(code_of(&mismatch), "TERM_MISMATCH");

        // The old majority comes back with its term-1 state: it gets fenced.
        cluster.start(1).await;
        cluster.start(2).await;
        for index in [1, 2] {
            eventually(
                "an old member is fenced",
                HANG_GUARD,
                Duration::from_millis(50),
                || async {
                    let mut old = cluster.client(index);
                    let status = cluster.status(index).await.ok()?;
                    if view_of(&status) != pb::PartitionView::Fenced {
                        // Poke it: its Raft traffic towards s1 is what fences it.
                        let _ = acquire(&mut old, &cluster_id, 1, "old side").await;
                        return None;
                    }
                    let refused = acquire(&mut old, &cluster_id, 1, "old side").await.err()?;
                    (code_of(&refused) == "FENCED").then_some(())
                },
            )
            .await;
        }
        assert_eq!(cluster.authority_term(survivor).await, 2);

        // Rejoin s2 into term 2: retire its state, add it back.
        let old_spec = format!(
            "s2={},region=r1,zone=z1,host=h1",
            cluster.nodes[1].address()
        );
        let (code, stdout, stderr) = cluster.cli(&[
            "rejoin",
            "--endpoint",
            &cluster.nodes[survivor].address(),
            "--cluster",
            &cluster_id,
            "--tls-dir",
            &admin,
            "--key",
            &key_file,
            "--node",
            &old_spec,
        ]);
        assert_eq!(code, 0, "rejoin: {stdout}{stderr}");
        let mut rejoined = cluster.client(1);
        let started = std::time::Instant::now();
        let fence = loop {
            match acquire(&mut rejoined, &cluster_id, 2, "rejoined").await {
                Ok(fence) => break fence,
                Err(status) if started.elapsed() < HANG_GUARD => {
                    let _ = status;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => {
                    panic!("hang guard: no fence through the rejoined member: {status:?}")
                }
            }
        };
        assert_eq!(fence.authority_term, 2);
        assert!(
            cluster.nodes[1].data_dir.join("retired").is_dir(),
            "the old member's raft storage is kept under retired/"
        );
    });
}
