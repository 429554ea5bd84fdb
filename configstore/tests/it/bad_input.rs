//! Bad input over the wire: every refusal is typed (gRPC code plus a
//! `rap.v1.ErrorDetail` code), changes nothing, and is counted in
//! `/metrics` as `rap_refusals_total{reason="..."}` (issue 3 "Bad input").

use crate::bin;
use rap_proto::envelope::SnapshotSigner;
use rap_proto::ids::{AuthorityTerm, SnapshotVersion, TrustGeneration};
use rap_proto::pb;
use rap_proto::time::UnixMillis;
use rap_testkit::cluster::{Client, Cluster, acquire, code_of, guarded, publish, run};
use std::collections::BTreeMap;
use tonic::Code;

/// One bad request and the refusal it must get.
struct Case {
    name: &'static str,
    grpc: Code,
    reason: &'static str,
    call: Call,
}

enum Call {
    Fence(pb::AcquireFenceRequest),
    Publish(pb::PublishShardsRequest),
}

async fn send(client: &mut Client, call: &Call) -> Result<(), tonic::Status> {
    match call {
        Call::Fence(request) => acquire(
            client,
            &request.cluster_id,
            request.expected_term,
            &request.purpose,
        )
        .await
        .map(|f| panic!("granted {f:?}")),
        Call::Publish(request) => {
            let fence = request.fence.clone();
            match fence {
                Some(fence) => publish(client, fence, request.envelopes.clone())
                    .await
                    .map(|p| panic!("published {p:?}")),
                None => guarded("PublishShards", client.publish_shards(request.clone()))
                    .await
                    .map(|p| panic!("published {p:?}")),
            }
        }
    }
}

fn fence_request(cluster: &str, term: u64, purpose: &str) -> Call {
    Call::Fence(pb::AcquireFenceRequest {
        cluster_id: cluster.to_string(),
        purpose: purpose.to_string(),
        expected_term: term,
    })
}

fn publish_request(fence: Option<pb::FencingToken>, envelopes: Vec<Vec<u8>>) -> Call {
    Call::Publish(pb::PublishShardsRequest { fence, envelopes })
}

// Goal (issue 3 "Bad input"): a foreign cluster id, a wrong expected term,
// an oversized purpose, a fence of another cluster / an ungranted seq /
// another term / none at all, too many envelopes, and forged, tampered or
// malformed envelopes are each refused with their typed code, whether sent
// to the leader or to a follower (which forwards); nothing is applied, and
// each refusal is counted once in /metrics under its reason.
// Method: 3 voters; one valid fence; send every bad request to the leader
// and to a follower; check gRPC code and ErrorDetail code; then check that
// last_fence_seq did not move, that the genuine envelope still publishes as
// version 1 (so no refused one took its place), and that
// rap_refusals_total summed over the nodes grew by exactly 2 per case.
#[test]
fn bad_input_is_refused_typed_and_counted() {
    run(async {
        let cluster = Cluster::launch(bin(), 3).await;
        let c = cluster.cluster_id.to_string();
        let term = cluster.authority_term(0).await;
        let leader = cluster.wait_leader(&cluster.all()).await;
        let follower = (leader + 1) % cluster.nodes.len();
        let mut clients = [cluster.client(leader), cluster.client(follower)];
        let fence = acquire(&mut clients[0], &c, term, "valid")
            .await
            .expect("a valid fence");

        let genuine = cluster
            .sealer()
            .seal("node/n1", &["node:n1"], 1, None, term, b"genuine");
        let mut bad_signature = genuine.bytes.clone();
        if let Some(last) = bad_signature.last_mut() {
            *last ^= 0x01;
        }
        let mut bad_body = genuine.bytes.clone();
        let at = bad_body
            .windows(b"genuine".len())
            .position(|w| w == b"genuine")
            .expect("the body is in the envelope");
        bad_body[at] ^= 0x20;
        let forger = SnapshotSigner::generate().expect("a key outside the trust root");
        let now = UnixMillis::now();
        let forged = rap_proto::envelope::seal(
            rap_proto::envelope::ShardDraft {
                cluster_id: cluster.cluster_id.clone(),
                scope: "node/n1".parse().expect("scope"),
                version: SnapshotVersion(1),
                authority_term: AuthorityTerm(term),
                issued_at: now,
                expires_at: UnixMillis(now.0 + 3_600_000),
                prev_hash: None,
                readers: vec!["node:n1".parse().expect("reader")],
                body: b"forged".to_vec(),
            },
            &forger,
            TrustGeneration(1),
        )
        .expect("seal under the forger's key")
        .bytes;

        let other_cluster = pb::FencingToken {
            cluster_id: "c2".into(),
            ..fence.clone()
        };
        let ungranted = pb::FencingToken {
            seq: fence.seq + 1000,
            ..fence.clone()
        };
        let seq_zero = pb::FencingToken {
            seq: 0,
            ..fence.clone()
        };
        let other_term = pb::FencingToken {
            authority_term: term + 1,
            ..fence.clone()
        };
        let cases = vec![
            Case {
                name: "AcquireFence for a foreign cluster",
                grpc: Code::InvalidArgument,
                reason: "WRONG_CLUSTER",
                call: fence_request("c2", term, "foreign"),
            },
            Case {
                name: "AcquireFence with a wrong expected term",
                grpc: Code::FailedPrecondition,
                reason: "TERM_MISMATCH",
                call: fence_request(&c, term + 6, "wrong-term"),
            },
            Case {
                name: "AcquireFence with an oversized purpose",
                grpc: Code::OutOfRange,
                reason: "OVERSIZE",
                call: fence_request(&c, term, &"p".repeat(129)),
            },
            Case {
                name: "PublishShards under a fence of another cluster",
                grpc: Code::InvalidArgument,
                reason: "WRONG_CLUSTER",
                call: publish_request(Some(other_cluster), vec![genuine.bytes.clone()]),
            },
            Case {
                name: "PublishShards under an ungranted seq",
                grpc: Code::FailedPrecondition,
                reason: "UNKNOWN_FENCE",
                call: publish_request(Some(ungranted), vec![genuine.bytes.clone()]),
            },
            Case {
                name: "PublishShards under seq 0",
                grpc: Code::FailedPrecondition,
                reason: "UNKNOWN_FENCE",
                call: publish_request(Some(seq_zero), vec![genuine.bytes.clone()]),
            },
            Case {
                name: "PublishShards under a fence of another authority term",
                grpc: Code::FailedPrecondition,
                reason: "STALE_FENCE",
                call: publish_request(Some(other_term), vec![genuine.bytes.clone()]),
            },
            Case {
                name: "PublishShards without a fence",
                grpc: Code::InvalidArgument,
                reason: "INVALID_REQUEST",
                call: publish_request(None, vec![genuine.bytes.clone()]),
            },
            Case {
                name: "PublishShards with too many envelopes",
                grpc: Code::OutOfRange,
                reason: "OVERSIZE",
                call: publish_request(Some(fence.clone()), vec![Vec::new(); 257]),
            },
            Case {
                name: "PublishShards with a tampered signature",
                grpc: Code::FailedPrecondition,
                reason: "BAD_SIGNATURE",
                call: publish_request(Some(fence.clone()), vec![bad_signature]),
            },
            Case {
                name: "PublishShards with a tampered body",
                grpc: Code::FailedPrecondition,
                reason: "CONTENT_HASH_MISMATCH",
                call: publish_request(Some(fence.clone()), vec![bad_body]),
            },
            Case {
                name: "PublishShards signed by a key outside the trust root",
                grpc: Code::FailedPrecondition,
                reason: "UNKNOWN_KEY",
                call: publish_request(Some(fence.clone()), vec![forged]),
            },
            Case {
                name: "PublishShards with garbage bytes",
                grpc: Code::FailedPrecondition,
                reason: "MALFORMED",
                call: publish_request(Some(fence.clone()), vec![vec![0xff; 64]]),
            },
        ];

        let mut expected: BTreeMap<&str, f64> = BTreeMap::new();
        let mut before: BTreeMap<&str, f64> = BTreeMap::new();
        for case in &cases {
            *expected.entry(case.reason).or_default() += clients.len() as f64;
            if !before.contains_key(case.reason) {
                let count = cluster
                    .metric_sum("rap_refusals_total", &[("reason", case.reason)])
                    .await;
                before.insert(case.reason, count);
            }
        }

        for case in &cases {
            for (target, client) in ["leader", "follower"].iter().zip(clients.iter_mut()) {
                let status = send(client, &case.call)
                    .await
                    .expect_err("bad input was accepted");
                assert_eq!(
                    (status.code(), code_of(&status).as_str()),
                    (case.grpc, case.reason),
                    "{} (sent to the {target}): {status:?}",
                    case.name
                );
            }
        }

        let status = cluster.status(leader).await.expect("leader status");
        assert_eq!(
            status.last_fence_seq, fence.seq,
            "a refused request granted a fence"
        );
        let published = publish(&mut clients[1], fence.clone(), vec![genuine.bytes.clone()])
            .await
            .expect("the genuine envelope still publishes");
        assert_eq!(
            (published.len(), published[0].version),
            (1, 1),
            "{published:?}"
        );

        for (reason, want) in expected {
            let after = cluster
                .metric_sum("rap_refusals_total", &[("reason", reason)])
                .await;
            assert_eq!(
                after - before[reason],
                want,
                "rap_refusals_total{{reason=\"{reason}\"}} summed over the nodes"
            );
        }
    });
}
