//! The standard gRPC health and reflection services of real storage
//! nodes, called with generic clients (tonic-health's `HealthClient`,
//! tonic-reflection's client), as `grpc-health-probe` and `grpcurl` do.

use crate::bin;
use crate::shards::{issue, node_cert};
use rap_core::identity::PeerIdentity;
use rap_core::tls::TlsFiles;
use rap_testkit::cluster::{Cluster, code_of, http_get, metric_value, run};
use rap_testkit::probes::{
    ServingStatus, check, file_containing_symbol, list_services, list_services_v1alpha,
    next_status, watch,
};
use rap_testkit::shards::storage_channel;
use std::collections::BTreeSet;

const AUTHORITY: &str = "rap.v1.AuthorityService";
const SHARD: &str = "rap.v1.ShardService";
const RAFT: &str = "rap.v1.RaftService";
const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|name| name.to_string()).collect()
}

// Goal: gRPC health says what /readyz says, for the whole server and each
// service by name: a voter before bootstrap and a cache replica without
// an assignment are NOT_SERVING (/readyz 503), a voter of a group with a
// leader SERVING (/readyz 200), and a Watch sees the change; reflection
// lists exactly the services each server runs and gives the file of
// `rap.v1.AuthorityService`; the access table applies: an operator's
// certificate is refused reflection on a cache replica (PERMISSION_DENIED,
// CALLER_NOT_ADMITTED, counted on its /metrics) while it may ask its
// health, and a node agent's certificate is admitted to both.
// Method: 3 voters and 1 cache replica, started without bootstrap; health
// checked and watched with the operator's certificate, then the group
// bootstrapped; reflection v1 and v1alpha with a node agent's and a
// storage node's certificates.
#[test]
fn health_follows_readiness_and_reflection_lists_the_services() {
    run(async {
        let mut cluster = Cluster::new(bin(), 3);
        let cache = cluster.add_cache("k1", 1);
        cluster.start_all().await;
        cluster.start_cache(cache).await;
        let operator = TlsFiles::in_dir(&cluster.admin_tls_dir);
        let s1 = &cluster.nodes[0];
        let at_s1 = storage_channel(&operator, &s1.address(), &s1.id);

        // Before bootstrap: not ready, everywhere.
        assert_eq!(cluster.http(0, "/readyz").await.0, 503);
        for service in ["", AUTHORITY, SHARD, RAFT] {
            let status = check(&at_s1, service).await.expect("Check");
            assert_eq!(status, ServingStatus::NotServing, "{service:?}");
        }
        let not_served = check(&at_s1, "rap.v1.AdminService")
            .await
            .expect_err("AdminService is not served here");
        assert_eq!(not_served.code(), tonic::Code::NotFound);
        let mut changes = watch(&at_s1, "").await.expect("Watch");
        assert_eq!(
            next_status(&mut changes).await.expect("first item"),
            Some(ServingStatus::NotServing)
        );

        cluster.bootstrap().await.expect("bootstrap");
        cluster.wait_leader(&cluster.all()).await;
        assert_eq!(
            next_status(&mut changes).await.expect("next item"),
            Some(ServingStatus::Serving)
        );
        assert_eq!(cluster.http(0, "/readyz").await.0, 200);
        for service in ["", AUTHORITY, SHARD, RAFT] {
            let status = check(&at_s1, service).await.expect("Check");
            assert_eq!(status, ServingStatus::Serving, "{service:?}");
        }

        // Reflection on a voter, for a node agent and a storage node.
        let agent = node_cert(&cluster, "n1");
        let agent_at_s1 = storage_channel(&agent, &s1.address(), &s1.id);
        let voter_services = names(&[
            AUTHORITY,
            SHARD,
            RAFT,
            HEALTH,
            REFLECTION,
            REFLECTION_V1ALPHA,
        ]);
        let listed: BTreeSet<String> = list_services(&agent_at_s1)
            .await
            .expect("ListServices")
            .into_iter()
            .collect();
        assert_eq!(listed, voter_services);
        let files = file_containing_symbol(&agent_at_s1, AUTHORITY)
            .await
            .expect("FileContainingSymbol");
        assert!(
            files.iter().any(|file| file
                .windows(b"rap/v1/authority.proto".len())
                .any(|w| w == b"rap/v1/authority.proto")),
            "the file of {AUTHORITY}"
        );
        let storage = TlsFiles::in_dir(&cluster.nodes[1].tls_dir);
        let storage_at_s1 = storage_channel(&storage, &s1.address(), &s1.id);
        let listed: BTreeSet<String> = list_services_v1alpha(&storage_at_s1)
            .await
            .expect("v1alpha ListServices")
            .into_iter()
            .collect();
        assert_eq!(listed, voter_services);

        // The cache replica: no assignment yet, so not ready.
        let k1 = &cluster.caches[cache];
        let at_k1 = storage_channel(&operator, &k1.address(), &k1.id);
        let (code, body) = http_get(k1.http, "/readyz").await.expect("/readyz");
        assert_eq!(code, 503, "{body}");
        for service in ["", SHARD] {
            let status = check(&at_k1, service).await.expect("Check");
            assert_eq!(status, ServingStatus::NotServing, "{service:?}");
        }
        let refused = list_services(&at_k1)
            .await
            .expect_err("an operator uses nothing on a cache replica");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert_eq!(code_of(&refused), "CALLER_NOT_ADMITTED", "{refused:?}");
        let control_plane = issue(
            &cluster,
            "controlplane",
            &PeerIdentity::control_plane(cluster.cluster_id.clone()),
        );
        let cp_at_k1 = storage_channel(&control_plane, &k1.address(), &k1.id);
        let refused = list_services_v1alpha(&cp_at_k1)
            .await
            .expect_err("nor does the control plane");
        assert_eq!(code_of(&refused), "CALLER_NOT_ADMITTED", "{refused:?}");
        let (_, metrics) = http_get(k1.http, "/metrics").await.expect("/metrics");
        let counted = metric_value(
            &metrics,
            "rap_refusals_total",
            &[("reason", "CALLER_NOT_ADMITTED")],
        );
        assert_eq!(counted, Some(2.0), "{metrics}");
        let agent_at_k1 = storage_channel(&agent, &k1.address(), &k1.id);
        let listed: BTreeSet<String> = list_services(&agent_at_k1)
            .await
            .expect("ListServices")
            .into_iter()
            .collect();
        assert_eq!(
            listed,
            names(&[SHARD, HEALTH, REFLECTION, REFLECTION_V1ALPHA])
        );
    });
}
