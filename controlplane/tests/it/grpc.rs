//! The control plane as agents and operators reach it: the real server
//! (`server::serve`) with its TLS listener, against a real PostgreSQL and
//! a real 3-voter authority group. Admin calls carry bearer tokens over
//! TLS pinned to the platform CA; agents pin their cluster's CA (SNI
//! `<cluster>.cluster.rap`), enroll, heartbeat and renew over mTLS.

use rap_controlplane::enrollment;
use rap_controlplane::tls::client_tls_config;
use rap_proto::pb;
use rap_proto::pb::admin_service_client::AdminServiceClient;
use rap_proto::pb::agent_service_client::AgentServiceClient;
use rap_proto::pb::enrollment_service_client::EnrollmentServiceClient;
use rap_testkit::platform::{AgentKey, Platform};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// A connected channel to `addr` over `tls`.
pub(crate) async fn channel(addr: std::net::SocketAddr, tls: ClientTlsConfig) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn code_of(status: &tonic::Status) -> String {
    rap_core::codes::error_detail(status)
        .map(|d| d.code)
        .unwrap_or_default()
}

/// PKCS#8 PEM of an ed25519 key (what the agent writes to disk).
fn key_pem(agent: &AgentKey) -> String {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(agent.key.as_bytes());
    rcgen::KeyPair::try_from(der.as_slice())
        .unwrap()
        .serialize_pem()
}

// Goal: the product works over the wire as a user meets it. Method: real
// server, real TLS, one node's whole life: token, join, approve, poll,
// heartbeat, renew, revoke; plus authentication and org-admin refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_heartbeat_renew_over_tls() {
    let p = Platform::start().await;
    let server = p.serve().await;
    let platform_ca = std::fs::read_to_string(p.ctx.keys_dir.join("platform/ca.pem")).unwrap();
    let admin_channel = channel(
        server.addr,
        client_tls_config(&platform_ca, "localhost", None),
    )
    .await;
    let mut admin = AdminServiceClient::new(admin_channel);

    // No token, a forged token: refused and audited.
    let anonymous = admin
        .list_clusters(pb::ListClustersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    let forged = admin
        .list_clusters(bearer(
            pb::ListClustersRequest::default(),
            "rapat.0011223344556677.00",
        ))
        .await
        .unwrap_err();
    assert_eq!(code_of(&forged), "UNAUTHENTICATED");
    assert!(p.count("SELECT count(*) FROM cluster_audit_events WHERE actor = 'anonymous' AND result = 'refused'").await >= 2);

    let clusters = admin
        .list_clusters(bearer(pb::ListClustersRequest::default(), &p.owner_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(clusters.clusters.len(), 1);
    let cluster = &clusters.clusters[0];
    assert_eq!(cluster.authority_term, 1);
    assert_eq!(cluster.storage_nodes.len(), 3);

    let token = admin
        .create_join_token(bearer(
            pb::CreateJoinTokenRequest {
                cluster_id: p.cluster.clone(),
                ttl_seconds: 600,
                max_uses: 1,
                storage_node_id: String::new(),
            },
            &p.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(token.join_command.starts_with("rap-node-agent join"));

    // The agent pins the cluster CA (its fingerprint is in the join
    // command) and reaches the control plane by the cluster's server name.
    let ca_pem: String =
        sqlx::query_scalar("SELECT ca_cert_pem FROM clusters WHERE cluster_id = $1")
            .bind(&p.cluster)
            .fetch_one(&p.ctx.pool)
            .await
            .unwrap();
    let der = rustls::pki_types::CertificateDer::from(
        x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
            .unwrap()
            .1
            .contents,
    );
    assert_eq!(
        rap_controlplane::keys::certificate_fingerprint(der.as_ref()),
        token.ca_fingerprint
    );
    let server_name = format!("{}.cluster.rap", p.cluster);
    let mut enroll = EnrollmentServiceClient::new(
        channel(server.addr, client_tls_config(&ca_pem, &server_name, None)).await,
    );
    let agent = AgentKey::generate();
    let submitted = enroll
        .submit_join_request(agent.join_request(
            &p.cluster,
            &token.raw_token,
            &["can_run_rdp_worker"],
        ))
        .await
        .unwrap()
        .into_inner();

    let approved = admin
        .approve_join_request(bearer(
            pb::ReviewJoinRequestRequest {
                join_request_id: submitted.join_request_id.clone(),
                node_id: "rdp-1".into(),
                ..Default::default()
            },
            &p.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.node_id, "rdp-1");
    let status = enroll
        .get_join_status(agent.status_request(&p.cluster, &submitted.join_request_id))
        .await
        .unwrap()
        .into_inner();
    let identity = status.identity.unwrap();

    // Heartbeat over mTLS with the issued certificate.
    let key = key_pem(&agent);
    let mtls = client_tls_config(
        &ca_pem,
        &server_name,
        Some((&identity.certificate_chain_pem, &key)),
    );
    let mut agent_api = AgentServiceClient::new(channel(server.addr, mtls.clone()).await);
    let heartbeat = pb::HeartbeatRequest {
        cluster_id: p.cluster.clone(),
        node_id: "rdp-1".into(),
        health: pb::NodeHealth::Healthy as i32,
        agent_version: "0.1.0".into(),
        sent_at_unix_ms: rap_proto::time::UnixMillis::now().0,
        ..Default::default()
    };
    let answer = agent_api
        .heartbeat(heartbeat.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(answer.next_interval_ms > 0);
    assert_eq!(p.count("SELECT count(*) FROM node_heartbeat_latest WHERE node_id = 'rdp-1' AND health = 'healthy'").await, 1);
    // A heartbeat for another node with this certificate is refused.
    let other = agent_api
        .heartbeat(pb::HeartbeatRequest {
            node_id: "someone-else".into(),
            ..heartbeat.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), tonic::Code::PermissionDenied);

    // Renewal over mTLS: a new certificate, the old identity rotated.
    let now = rap_proto::time::UnixMillis::now().0;
    let nonce = AgentKey::nonce();
    let mut renew_client = EnrollmentServiceClient::new(channel(server.addr, mtls).await);
    let renewed = renew_client
        .renew_certificate(pb::RenewCertificateRequest {
            cluster_id: p.cluster.clone(),
            node_id: "rdp-1".into(),
            new_public_key: vec![],
            timestamp_unix_ms: now,
            proof: agent.sign(enrollment::PURPOSE_RENEW, &p.cluster, now, &nonce),
            nonce,
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        renewed.identity.unwrap().certificate_chain_pem,
        identity.certificate_chain_pem
    );
    assert_eq!(p.count("SELECT count(*) FROM node_identities WHERE node_id = 'rdp-1' AND identity_status = 'rotated'").await, 1);
    // Renewal without a client certificate is refused.
    let anonymous_renew = enroll
        .renew_certificate(pb::RenewCertificateRequest {
            cluster_id: p.cluster.clone(),
            node_id: "rdp-1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code_of(&anonymous_renew), "UNAUTHENTICATED");

    // An org admin reaching for platform objects: refused and audited.
    admin
        .create_organization(bearer(
            pb::CreateOrganizationRequest {
                org_id: "acme".into(),
                name: "Acme".into(),
            },
            &p.owner_token,
        ))
        .await
        .unwrap();
    let created = admin
        .create_principal(bearer(
            pb::CreatePrincipalRequest {
                principal_id: "acme-admin".into(),
                kind: "org-admin".into(),
                org_id: "acme".into(),
                name: "Acme admin".into(),
            },
            &p.owner_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let denied = admin
        .list_nodes(bearer(
            pb::ListNodesRequest {
                cluster_id: p.cluster.clone(),
                ..Default::default()
            },
            &created.raw_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let audited = p.count("SELECT count(*) FROM cluster_audit_events WHERE actor = 'acme-admin' AND action = 'node.list' AND result = 'refused'").await;
    assert_eq!(audited, 1);

    // Revocation: the renewed identity is revoked; a renewal with it is
    // refused from now on.
    admin
        .revoke_node(bearer(
            pb::RevokeNodeRequest {
                cluster_id: p.cluster.clone(),
                node_id: "rdp-1".into(),
                reason: "test".into(),
            },
            &p.owner_token,
        ))
        .await
        .unwrap();
    assert_eq!(p.count("SELECT count(*) FROM node_identities WHERE node_id = 'rdp-1' AND identity_status = 'revoked'").await, 2);
}
