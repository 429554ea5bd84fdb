//! Organizations, principals and the org-safe projection against a real
//! PostgreSQL and a real 3-voter authority group: an org-admin sees its own
//! organization's logical endpoints and services with a safe status, and
//! nothing else; every attempt at more is refused and audited.

use rap_controlplane::{orgs, roles, workloads};
use rap_proto::pb;
use rap_testkit::platform::Platform;

fn endpoint(
    p: &Platform,
    org: &str,
    name: &str,
    kind: &str,
    role: &str,
) -> pb::AddOrgEndpointRequest {
    pb::AddOrgEndpointRequest {
        org_id: org.into(),
        cluster_id: p.cluster.clone(),
        name: name.into(),
        kind: kind.into(),
        role: role.into(),
    }
}

async fn assign(p: &Platform, node: &str, role: &str, org: &str) {
    roles::assign(
        &p.ctx,
        &p.owner,
        &pb::AssignRoleRequest {
            cluster_id: p.cluster.clone(),
            node_id: node.into(),
            role: role.into(),
            org_id: org.into(),
        },
    )
    .await
    .unwrap();
}

/// Writes the latest heartbeat of `node`, `age_seconds` old.
async fn heartbeat(p: &Platform, node: &str, health: &str, age_seconds: f64) {
    sqlx::query(
        "INSERT INTO node_heartbeat_latest (cluster_id, node_id, received_at, health)
         VALUES ($1, $2, now() - make_interval(secs => $4), $3)
         ON CONFLICT (cluster_id, node_id) DO UPDATE SET received_at = EXCLUDED.received_at, health = EXCLUDED.health",
    )
    .bind(&p.cluster)
    .bind(node)
    .bind(health)
    .bind(age_seconds)
    .execute(&p.ctx.pool)
    .await
    .unwrap();
}

async fn last_event(p: &Platform, action: &str) -> (String, String) {
    p.audit_events(action)
        .await
        .pop()
        .unwrap_or_else(|| panic!("no {action} event"))
}

fn status_of<'a>(view: &'a pb::OrgView, endpoint: &str) -> &'a str {
    view.endpoints
        .iter()
        .find(|e| e.name == endpoint)
        .map(|e| e.status.as_str())
        .unwrap()
}

// Goal: organizations, endpoints and principals are managed by platform
// principals only, with every refusal audited and no token in the audit.
// Method: the owner creates; a platform-admin and an org-admin try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_endpoints_and_principals() {
    let p = Platform::start().await;
    let admin = p.principal("platform-admin", None).await;

    let acme = orgs::create_org(
        &p.ctx,
        &p.owner,
        &pb::CreateOrganizationRequest {
            org_id: "acme".into(),
            name: "Acme Corp".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (acme.org_id.as_str(), acme.name.as_str()),
        ("acme", "Acme Corp")
    );
    orgs::create_org(
        &p.ctx,
        &p.owner,
        &pb::CreateOrganizationRequest {
            org_id: "globex".into(),
            name: String::new(),
        },
    )
    .await
    .unwrap();
    let e = orgs::create_org(
        &p.ctx,
        &p.owner,
        &pb::CreateOrganizationRequest {
            org_id: "acme".into(),
            name: String::new(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "ALREADY_EXISTS");
    let e = orgs::create_org(
        &p.ctx,
        &admin,
        &pb::CreateOrganizationRequest {
            org_id: "initech".into(),
            name: String::new(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.code(),
        "PERMISSION_DENIED",
        "only the owner creates organizations"
    );
    assert_eq!(last_event(&p, "org.create").await.0, "refused");
    assert_eq!(p.count("SELECT count(*) FROM organizations").await, 2);

    // Endpoints: platform principals, known roles, real org and cluster.
    let added = orgs::add_endpoint(
        &p.ctx,
        &admin,
        &endpoint(&p, "acme", "Office Moscow", "ingress", "entry-node"),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            added.name.as_str(),
            added.kind.as_str(),
            added.role.as_str()
        ),
        ("Office Moscow", "ingress", "entry-node")
    );
    for (request, code) in [
        (
            endpoint(&p, "acme", "Office Moscow", "ingress", "entry-node"),
            "ALREADY_EXISTS",
        ),
        (
            endpoint(&p, "acme", "x", "sideways", "entry-node"),
            "INVALID_ARGUMENT",
        ),
        (
            endpoint(&p, "acme", "x", "ingress", "superuser"),
            "INVALID_ARGUMENT",
        ),
        (
            endpoint(&p, "acme", "", "ingress", "entry-node"),
            "INVALID_ARGUMENT",
        ),
        (
            endpoint(&p, "acme", &"n".repeat(101), "ingress", "entry-node"),
            "OVERSIZE",
        ),
        (
            endpoint(&p, "no-such-org", "x", "ingress", "entry-node"),
            "NOT_FOUND",
        ),
    ] {
        let e = orgs::add_endpoint(&p.ctx, &admin, &request)
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{request:?}: {e}");
        assert_eq!(last_event(&p, "org.endpoint.add").await.0, "refused");
    }
    assert_eq!(p.count("SELECT count(*) FROM org_endpoints").await, 1);

    // Principals: the owner only; the raw token is returned once and never
    // written anywhere.
    let created = orgs::create_principal(
        &p.ctx,
        &p.owner,
        &pb::CreatePrincipalRequest {
            principal_id: "alice".into(),
            kind: "org-admin".into(),
            org_id: "acme".into(),
            name: "Alice".into(),
        },
    )
    .await
    .unwrap();
    assert!(created.raw_token.starts_with("rapat."));
    let principal = created.principal.unwrap();
    assert_eq!(
        (principal.kind.as_str(), principal.org_id.as_str()),
        ("org-admin", "acme")
    );
    let secret = created.raw_token.rsplit('.').next().unwrap().to_string();
    let leaked = p
        .count(&format!("SELECT count(*) FROM cluster_audit_events WHERE details::text LIKE '%{secret}%' OR reason LIKE '%{secret}%' OR target LIKE '%{secret}%'"))
        .await;
    assert_eq!(leaked, 0);
    let (result, _) = last_event(&p, "principal.create").await;
    assert_eq!(result, "ok");
    let alice = rap_controlplane::auth::authenticate(
        &p.ctx.pool,
        Some(&format!("Bearer {}", created.raw_token)),
    )
    .await
    .unwrap();
    let me = orgs::whoami(&p.ctx, &alice, &pb::WhoAmIRequest {})
        .await
        .unwrap();
    assert_eq!(
        (
            me.principal_id.as_str(),
            me.kind.as_str(),
            me.org_id.as_str()
        ),
        ("alice", "org-admin", "acme")
    );

    for (who, request, code) in [
        (
            &admin,
            pb::CreatePrincipalRequest {
                principal_id: "bob".into(),
                kind: "platform-owner".into(),
                ..Default::default()
            },
            "PERMISSION_DENIED",
        ),
        (
            &alice,
            pb::CreatePrincipalRequest {
                principal_id: "bob".into(),
                kind: "org-admin".into(),
                org_id: "acme".into(),
                ..Default::default()
            },
            "PERMISSION_DENIED",
        ),
        (
            &p.owner,
            pb::CreatePrincipalRequest {
                principal_id: "alice".into(),
                kind: "platform-admin".into(),
                ..Default::default()
            },
            "ALREADY_EXISTS",
        ),
        (
            &p.owner,
            pb::CreatePrincipalRequest {
                principal_id: "bob".into(),
                kind: "org-admin".into(),
                org_id: "no-such-org".into(),
                ..Default::default()
            },
            "NOT_FOUND",
        ),
        (
            &p.owner,
            pb::CreatePrincipalRequest {
                principal_id: "bob".into(),
                kind: "org-admin".into(),
                ..Default::default()
            },
            "INVALID_ARGUMENT",
        ),
    ] {
        let e = orgs::create_principal(&p.ctx, who, &request)
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{request:?}: {e}");
        assert_eq!(last_event(&p, "principal.create").await.0, "refused");
    }
    assert_eq!(
        p.count("SELECT count(*) FROM admin_principals WHERE principal_id = 'bob'")
            .await,
        0
    );

    // An org-admin may not add endpoints (platform objects), even to its own org.
    let e = orgs::add_endpoint(
        &p.ctx,
        &alice,
        &endpoint(&p, "acme", "mine", "ingress", "entry-node"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "PERMISSION_DENIED");

    // Listing: platform sees all, an org-admin only its own.
    let all = orgs::list_orgs(&p.ctx, &admin, &pb::ListOrganizationsRequest { page: None })
        .await
        .unwrap();
    assert_eq!(
        all.organizations
            .iter()
            .map(|o| o.org_id.as_str())
            .collect::<Vec<_>>(),
        vec!["acme", "globex"]
    );
    let own = orgs::list_orgs(&p.ctx, &alice, &pb::ListOrganizationsRequest { page: None })
        .await
        .unwrap();
    assert_eq!(
        own.organizations
            .iter()
            .map(|o| o.org_id.as_str())
            .collect::<Vec<_>>(),
        vec!["acme"]
    );
}

// Goal: the org-safe projection shows the org's logical endpoints and
// services with a safe status that follows the serving nodes' health, and
// never a node id, storage node, fence, CA fingerprint or another org's
// endpoint; an org-admin is refused (and audited) for another org's view
// and for platform objects. Method: two orgs with endpoints and
// org-restricted role assignments on real enrolled nodes; heartbeats
// written fresh, stale and absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_admin_sees_only_the_org_safe_projection() {
    let p = Platform::start().await;
    for org in ["acme", "globex"] {
        orgs::create_org(
            &p.ctx,
            &p.owner,
            &pb::CreateOrganizationRequest {
                org_id: org.into(),
                name: org.into(),
            },
        )
        .await
        .unwrap();
    }
    orgs::add_endpoint(
        &p.ctx,
        &p.owner,
        &endpoint(&p, "acme", "Office Moscow", "ingress", "entry-node"),
    )
    .await
    .unwrap();
    orgs::add_endpoint(
        &p.ctx,
        &p.owner,
        &endpoint(&p, "acme", "Acme Egress Pool", "egress", "vpn-exit"),
    )
    .await
    .unwrap();
    orgs::add_endpoint(
        &p.ctx,
        &p.owner,
        &endpoint(&p, "globex", "Globex HQ", "ingress", "entry-node"),
    )
    .await
    .unwrap();
    orgs::add_endpoint(
        &p.ctx,
        &p.owner,
        &endpoint(&p, "globex", "Globex Exit", "egress", "vpn-exit"),
    )
    .await
    .unwrap();

    let entry = p.enroll(&["can_accept_client_ingress"]).await;
    let exit = p.enroll(&["can_run_vpn_exit"]).await;
    let shared = p.enroll(&["can_route_mesh"]).await;
    assign(&p, &entry, "entry-node", "acme").await;
    assign(&p, &exit, "vpn-exit", "globex").await;
    assign(&p, &shared, "relay-node", "").await;
    heartbeat(&p, &entry, "healthy", 1.0).await;
    heartbeat(&p, &exit, "healthy", 1.0).await;
    heartbeat(&p, &shared, "healthy", 1.0).await;

    let alice = p.principal("org-admin", Some("acme")).await;
    let view = orgs::org_view(
        &p.ctx,
        &alice,
        &pb::GetOrgViewRequest {
            org_id: "acme".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(view.org_id, "acme");
    let own = orgs::org_view(
        &p.ctx,
        &alice,
        &pb::GetOrgViewRequest {
            org_id: String::new(),
        },
    )
    .await
    .unwrap();
    assert_eq!(own, view, "an org-admin's empty org id means its own");
    let mut names: Vec<&str> = view.endpoints.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, vec!["Acme Egress Pool", "Office Moscow"]);
    assert_eq!(status_of(&view, "Office Moscow"), "available");
    assert_eq!(
        status_of(&view, "Acme Egress Pool"),
        "unavailable",
        "globex's exit node does not serve acme"
    );
    assert_eq!(
        view.services,
        vec![pb::OrgServiceStatus {
            service: "entry-node".into(),
            status: "available".into()
        }]
    );

    // Nothing the org may not see, anywhere in the answer.
    let text = format!("{view:?}");
    for node in [&entry, &exit, &shared] {
        assert!(
            !text.contains(node.as_str()),
            "node id {node} leaked: {text}"
        );
    }
    for other in ["Globex", "globex", "vpn-exit\"", "relay-node"] {
        assert!(!text.contains(other), "{other} leaked: {text}");
    }
    let secrets: Vec<(String, String)> =
        sqlx::query_as("SELECT ca_fingerprint, signing_key_id FROM clusters")
            .fetch_all(&p.ctx.pool)
            .await
            .unwrap();
    for (ca, key) in secrets {
        assert!(
            !text.contains(&ca) && !text.contains(&key),
            "trust material leaked: {text}"
        );
    }
    let storage: Vec<(String, String)> =
        sqlx::query_as("SELECT node_id, address FROM storage_nodes")
            .fetch_all(&p.ctx.pool)
            .await
            .unwrap();
    for (id, address) in storage {
        assert!(
            !text.contains(&format!("\"{id}\"")) && !text.contains(&address),
            "storage node leaked: {text}"
        );
    }
    for word in ["term", "fence", "seq", "fingerprint"] {
        assert!(!text.to_lowercase().contains(word), "{word} leaked: {text}");
    }

    // The status follows health: a stale heartbeat → degraded; an
    // unrestricted node of the role also serves the org.
    heartbeat(&p, &entry, "healthy", 5.0 * 60.0).await;
    let view = orgs::org_view(
        &p.ctx,
        &alice,
        &pb::GetOrgViewRequest {
            org_id: "acme".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(status_of(&view, "Office Moscow"), "degraded");
    assert_eq!(view.services[0].status, "degraded");
    heartbeat(&p, &entry, "unhealthy", 1.0).await;
    let view = orgs::org_view(
        &p.ctx,
        &alice,
        &pb::GetOrgViewRequest {
            org_id: "acme".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(status_of(&view, "Office Moscow"), "degraded");
    let second_entry = p.enroll(&["can_accept_client_ingress"]).await;
    assign(&p, &second_entry, "entry-node", "").await;
    heartbeat(&p, &second_entry, "healthy", 1.0).await;
    let view = orgs::org_view(
        &p.ctx,
        &alice,
        &pb::GetOrgViewRequest {
            org_id: "acme".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(status_of(&view, "Office Moscow"), "available");
    assert!(!format!("{view:?}").contains(second_entry.as_str()));

    // The platform sees any org's view; the org-admin of another org not.
    let globex = orgs::org_view(
        &p.ctx,
        &p.owner,
        &pb::GetOrgViewRequest {
            org_id: "globex".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(status_of(&globex, "Globex Exit"), "available");
    let e = orgs::org_view(
        &p.ctx,
        &alice,
        &pb::GetOrgViewRequest {
            org_id: "globex".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "PERMISSION_DENIED");
    assert!(!e.to_string().contains("Globex"), "{e}");
    let (result, reason) = last_event(&p, "org.view").await;
    assert_eq!(result, "refused");
    assert!(reason.contains("permission denied"), "{reason}");
    let e = orgs::org_view(
        &p.ctx,
        &p.owner,
        &pb::GetOrgViewRequest {
            org_id: "no-such-org".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "NOT_FOUND");

    // Platform objects: refused and audited.
    let e = roles::list(
        &p.ctx,
        &alice,
        &pb::ListRolesRequest {
            cluster_id: p.cluster.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "PERMISSION_DENIED");
    assert_eq!(last_event(&p, "role.list").await.0, "refused");
    let e = workloads::list(
        &p.ctx,
        &alice,
        &pb::ListServicesRequest {
            cluster_id: p.cluster.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "PERMISSION_DENIED");
    assert_eq!(last_event(&p, "service.list").await.0, "refused");
    let e = workloads::set_desired_state(
        &p.ctx,
        &alice,
        &pb::SetServiceDesiredStateRequest {
            cluster_id: p.cluster.clone(),
            node_id: entry.clone(),
            service: "entry-node".into(),
            desired_state: "disabled".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "PERMISSION_DENIED");
    assert_eq!(last_event(&p, "service.desired-state").await.0, "refused");
    assert_eq!(
        p.count("SELECT count(*) FROM node_service_instances").await,
        0
    );
    let e = roles::remove(
        &p.ctx,
        &alice,
        &pb::RemoveRoleRequest {
            cluster_id: p.cluster.clone(),
            node_id: entry.clone(),
            role: "entry-node".into(),
            org_id: "acme".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "PERMISSION_DENIED");
    assert_eq!(last_event(&p, "role.remove").await.0, "refused");
    assert_eq!(
        p.count("SELECT count(*) FROM node_role_assignments WHERE status = 'active'")
            .await,
        4
    );
}
