//! `rapctl cluster add-cache|remove-cache|cache-policy` and `rapctl node
//! set-location` against the served control plane.

use crate::Rapctl;
use rap_testkit::platform::Platform;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

// Goal: an operator places a node, registers a cache replica, sets the
// cache policy, reads the cache's published assignment and the placement
// report, and removes the cache with the real rapctl; a voter named as a
// cache is refused with its code and a hint, a policy above the maximum
// is a usage error. Method: real server and binary; one node and one
// cache in the node's zone, one replica per node; wait for the publisher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapctl_registers_places_and_removes_caches() {
    let p = Platform::start().await;
    let server = p.serve().await;
    let node = p.enroll(&["can_route_mesh"]).await;

    let (code, out, err) = server
        .rapctl(
            &p,
            &[
                "node",
                "set-location",
                "--cluster",
                "c1",
                &node,
                "--region",
                "r1",
                "--zone",
                "z1",
                "-o",
                "json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["zone"], "z1", "{out}");
    let (code, out, err) = server
        .rapctl(
            &p,
            &[
                "cluster",
                "add-cache",
                "c1",
                "--node",
                "cache-1=cache-1.example:7001,region=r1,zone=z1,host=h1",
                "-o",
                "json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let added = json(&out);
    assert_eq!(
        (added["role"].as_str(), added["existed"].as_bool()),
        (Some("cache"), Some(false)),
        "{out}"
    );
    let (code, _, err) = server
        .rapctl(
            &p,
            &["cluster", "add-cache", "c1", "--node", "s1=127.0.0.1:7001"],
        )
        .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("STORAGE_ROLE"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    let (code, out, err) = server
        .rapctl(
            &p,
            &[
                "cluster",
                "cache-policy",
                "c1",
                "--replicas",
                "1",
                "-o",
                "json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let policy = json(&out);
    assert_eq!(
        (
            policy["replicas"].as_u64(),
            policy["previous_replicas"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let (code, _, err) = server
        .rapctl(&p, &["cluster", "cache-policy", "c1", "--replicas", "6"])
        .await;
    assert_eq!(code, 2, "above the maximum is a usage error: {err}");

    p.wait_for_publisher().await;
    let file = p.dir.path().join("cache.env");
    let (code, _, err) = server
        .rapctl(
            &p,
            &[
                "snapshot",
                "get",
                "--cluster",
                "c1",
                "--scope",
                "cache/cache-1",
                "--out",
                file.to_str().unwrap(),
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = server
        .rapctl(&p, &["cluster", "placement", "c1", "-o", "json"])
        .await;
    assert_eq!(code, 0, "{err}");
    let report = json(&out);
    assert_eq!(report["cache_replicas"], 1, "{out}");
    assert_eq!(report["cache_replicas_per_node"], 1, "{out}");
    let node_class = report["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["class"] == "node")
        .unwrap();
    assert!(
        node_class["holders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == "cache-1"),
        "{out}"
    );
    let (code, out, err) = server.rapctl(&p, &["cluster", "placement", "c1"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 cache replicas, 1 per node"), "{out}");
    let (code, out, err) = server
        .rapctl(&p, &["node", "show", "--cluster", "c1", &node])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("r1/z1"), "{out}");

    let (code, out, err) = server
        .rapctl(
            &p,
            &["cluster", "remove-cache", "c1", "cache-1", "-o", "json"],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["role"], "retired", "{out}");
}
