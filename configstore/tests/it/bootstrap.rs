//! Group lifecycle: bootstrap refuses fewer than 3 voters unless told
//! this is development, and says how (issue 3 "Group lifecycle").

use crate::bin;
use crate::cluster::{Cluster, code_of, run};
use std::path::Path;

// Goal: a 2-voter bootstrap without allow_single_voter is refused, over
// gRPC and through the CLI, with a message that says what to do (use 3
// voters or --allow-single-voter), and leaves the nodes uninitialized;
// following the advice works.
// Method: start 2 nodes; Bootstrap over gRPC (INVALID_ARGUMENT,
// INVALID_REQUEST, message names "at least 3" and "--allow-single-voter");
// `rap-configstore bootstrap` with the same voters (exit 1, same advice on
// stderr); both nodes still answer /readyz 503 "not bootstrapped"; then
// the CLI with --allow-single-voter bootstraps and `fence --json` gets
// seq 1.
#[test]
fn bootstrap_refuses_two_voters_and_says_what_to_do() {
    run(async {
        let mut cluster = Cluster::new(bin(), 2);
        cluster.start_all().await;

        let status = cluster
            .bootstrap()
            .await
            .expect_err("two voters without allow_single_voter");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert_eq!(code_of(&status), "INVALID_REQUEST", "{status:?}");
        for advice in ["at least 3", "--allow-single-voter"] {
            assert!(
                status.message().contains(advice),
                "the refusal should say {advice:?}: {:?}",
                status.message()
            );
        }

        let trust_root = cluster.root().join("trust-root.bin");
        std::fs::write(&trust_root, &cluster.trust_root).expect("write the trust root");
        let endpoint = cluster.nodes[0].address();
        let voters: Vec<String> = cluster
            .voter_specs()
            .iter()
            .map(|v| {
                let d = v.domain.clone().unwrap_or_default();
                format!(
                    "{}={},region={},zone={},host={}",
                    v.node_id, v.address, d.region, d.zone, d.host
                )
            })
            .collect();
        let bootstrap_args = |extra: &[&str]| -> Vec<String> {
            let mut args = vec![
                "bootstrap".to_string(),
                "--endpoint".into(),
                endpoint.clone(),
                "--cluster".into(),
                cluster.cluster_id.to_string(),
                "--tls-dir".into(),
                path(&cluster.admin_tls_dir),
                "--trust-root".into(),
                path(&trust_root),
            ];
            for voter in &voters {
                args.push("--voter".into());
                args.push(voter.clone());
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        };
        let args = bootstrap_args(&[]);
        let (code, stdout, stderr) = cluster.cli(&refs(&args));
        assert_eq!(code, 1, "exit code; stdout {stdout:?}, stderr {stderr:?}");
        for advice in ["at least 3", "--allow-single-voter"] {
            assert!(
                stderr.contains(advice),
                "stderr should say {advice:?}: {stderr:?}"
            );
        }

        for index in cluster.all() {
            let (code, body) = cluster.http(index, "/readyz").await;
            assert_eq!(code, 503, "{}: {body}", cluster.nodes[index].id);
            assert!(body.contains("not bootstrapped"), "{body}");
            let status = cluster.status(index).await.expect("status");
            assert!(
                status.voters.is_empty(),
                "refused bootstrap left voters: {status:?}"
            );
        }

        // The advice works.
        let args = bootstrap_args(&["--allow-single-voter", "--json"]);
        let (code, stdout, stderr) = cluster.cli(&refs(&args));
        assert_eq!(code, 0, "bootstrap with --allow-single-voter: {stderr}");
        let answer: serde_json::Value = serde_json::from_str(&stdout).expect("bootstrap --json");
        assert_eq!(answer["authority_term"], 1, "{answer}");
        let fence_args = [
            "fence",
            "--endpoint",
            &endpoint,
            "--cluster",
            cluster.cluster_id.as_str(),
            "--tls-dir",
            &path(&cluster.admin_tls_dir),
            "--json",
        ];
        // Right after bootstrap the group may still be settling (a second
        // election under load): retry what is retryable, within the guard.
        let started = std::time::Instant::now();
        let (code, stdout, stderr) = loop {
            let (code, stdout, stderr) = cluster.cli(&fence_args);
            let settling = stderr.contains("NO_QUORUM") || stderr.contains("NOT_LEADER");
            if code == 0 || !settling || started.elapsed() > crate::cluster::HANG_GUARD {
                break (code, stdout, stderr);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(code, 0, "fence on the 2-voter group: {stderr}");
        let fence: serde_json::Value = serde_json::from_str(&stdout).expect("fence --json");
        assert_eq!(fence["seq"], 1, "{fence}");
        assert_eq!(fence["authority_term"], 1, "{fence}");
    });
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
