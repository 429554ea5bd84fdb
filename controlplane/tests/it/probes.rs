//! The control plane's standard gRPC health and reflection services,
//! called with generic clients (tonic-health's `HealthClient`,
//! tonic-reflection's client) over its real TLS listener, as
//! `grpc-health-probe` and `grpcurl` do.

use crate::grpc::channel;
use rap_controlplane::keys::{ClusterKeys, NODE_CERT_VALIDITY_DEFAULT};
use rap_controlplane::tls::client_tls_config;
use rap_core::identity::PeerIdentity;
use rap_proto::ids::{ClusterId, NodeId};
use rap_testkit::cluster::code_of;
use rap_testkit::platform::Platform;
use rap_testkit::probes::{
    ServingStatus, check, file_containing_symbol, list_services, list_services_v1alpha,
    next_status, watch,
};
use std::collections::BTreeSet;

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|name| name.to_string()).collect()
}

// Goal: the control plane's gRPC health says what /readyz says (SERVING
// while the database answers, NOT_SERVING once it refuses connections,
// seen by Check and by a Watch), for the whole server and each service by
// name; reflection lists exactly its services and gives the file of
// `rap.v1.EnrollmentService`; the access table applies: callers without a
// certificate (like join requests) and node agents are admitted to both,
// the control plane's own certificate (a kind that calls nothing here)
// may ask health but is refused reflection with PERMISSION_DENIED and an
// audit row `grpc.reflection` refused, and nothing else is written.
// Method: a platform without storage nodes and the real server; an
// anonymous TLS client, a node agent's and the control plane's
// certificates of the cluster CA; then the test database stops taking
// connections (as `cli::readyz_gives_a_fixed_reason_...` does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_readiness_and_reflection_answers_the_table() {
    let p = Platform::without_storage("c1", NODE_CERT_VALIDITY_DEFAULT).await;
    let server = p.serve().await;
    let platform_ca = std::fs::read_to_string(p.ctx.keys_dir.join("platform/ca.pem")).unwrap();
    let anonymous = channel(
        server.addr,
        client_tls_config(&platform_ca, "localhost", None),
    )
    .await;
    let services = [
        "rap.v1.AdminService",
        "rap.v1.EnrollmentService",
        "rap.v1.AgentService",
    ];
    // NOT_SERVING until the first readiness check answered, then SERVING.
    let mut changes = watch(&anonymous, "").await.unwrap();
    let mut first = next_status(&mut changes).await.unwrap();
    if first == Some(ServingStatus::NotServing) {
        first = next_status(&mut changes).await.unwrap();
    }
    assert_eq!(first, Some(ServingStatus::Serving));
    for service in std::iter::once("").chain(services) {
        assert_eq!(
            check(&anonymous, service).await.unwrap(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let all = names(&[
        "rap.v1.AdminService",
        "rap.v1.EnrollmentService",
        "rap.v1.AgentService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]);
    let listed: BTreeSet<String> = list_services(&anonymous)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(listed, all);
    let files = file_containing_symbol(&anonymous, "rap.v1.EnrollmentService")
        .await
        .unwrap();
    let file_name = b"rap/v1/enrollment.proto";
    assert!(
        files
            .iter()
            .any(|file| file.windows(file_name.len()).any(|w| w == file_name))
    );

    // Certificates of the cluster CA, with SNI <cluster>.cluster.rap.
    let cluster = ClusterId::new("c1").unwrap();
    let keys = ClusterKeys::load(&p.ctx.keys_dir, &cluster).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let public: [u8; 32] = key.public_key_raw().try_into().unwrap();
    let agent_identity = PeerIdentity::node(cluster.clone(), NodeId::new("n-1").unwrap()).unwrap();
    let issued = keys
        .issue_certificate(&agent_identity, &public, NODE_CERT_VALIDITY_DEFAULT, &[])
        .unwrap();
    let key_pem = key.serialize_pem();
    let agent = channel(
        server.addr,
        client_tls_config(
            keys.ca_cert_pem(),
            &keys.server_name(),
            Some((issued.chain_pem.as_str(), key_pem.as_str())),
        ),
    )
    .await;
    assert_eq!(check(&agent, "").await.unwrap(), ServingStatus::Serving);
    let listed: BTreeSet<String> = list_services_v1alpha(&agent)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(listed, all);

    let own = keys.controlplane_tls();
    let (own_cert, own_key) = (
        std::fs::read_to_string(&own.cert).unwrap(),
        std::fs::read_to_string(&own.key).unwrap(),
    );
    let own = channel(
        server.addr,
        client_tls_config(
            keys.ca_cert_pem(),
            &keys.server_name(),
            Some((own_cert.as_str(), own_key.as_str())),
        ),
    )
    .await;
    assert_eq!(check(&own, "").await.unwrap(), ServingStatus::Serving);
    let events_before = p.count("SELECT count(*) FROM cluster_audit_events").await;
    let refused = list_services(&own).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(code_of(&refused), "PERMISSION_DENIED", "{refused:?}");
    let refused_v1alpha = list_services_v1alpha(&own).await.unwrap_err();
    assert_eq!(code_of(&refused_v1alpha), "PERMISSION_DENIED");
    let audited = p.audit_events("grpc.reflection").await;
    assert_eq!(audited.len(), 2, "{audited:?}");
    for (result, reason) in &audited {
        assert_eq!(result, "refused");
        assert!(reason.contains("controlplane"), "{reason}");
    }
    assert_eq!(
        p.count("SELECT count(*) FROM cluster_audit_events").await,
        events_before + 2,
        "only the refusals are written"
    );
    let actors: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT actor, cluster_id FROM cluster_audit_events WHERE action = 'grpc.reflection'",
    )
    .fetch_all(&p.ctx.pool)
    .await
    .unwrap();
    assert!(
        actors
            .iter()
            .all(|(actor, cluster)| actor == "controlplane:controlplane"
                && cluster.as_deref() == Some("c1")),
        "{actors:?}"
    );

    // The database stops taking connections: /readyz is 503, and health
    // follows within a readiness round.
    let admin_url =
        p.db.url
            .replacen(&format!("/{}?", p.db.name), "/postgres?", 1);
    assert_ne!(admin_url, p.db.url);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS false",
        p.db.name
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&p.db.name)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        next_status(&mut changes).await.unwrap(),
        Some(ServingStatus::NotServing)
    );
    for service in std::iter::once("").chain(services) {
        assert_eq!(
            check(&anonymous, service).await.unwrap(),
            ServingStatus::NotServing,
            "{service:?}"
        );
    }
    let (status, _) = rap_testkit::platform::http_get(server.http_addr, "/readyz")
        .await
        .unwrap();
    assert!(status.contains("503"), "{status}");

    // Let the harness drop the database.
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS true",
        p.db.name
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    drop(server);
}
