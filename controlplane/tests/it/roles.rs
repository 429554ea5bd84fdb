//! Role assignments and service desired states: fenced mutations against a
//! real PostgreSQL and a real 3-voter authority group. Every refusal is
//! typed, changes nothing and is audited.

use rap_controlplane::error::Error;
use rap_controlplane::{roles, workloads};
use rap_proto::pb;
use rap_testkit::platform::Platform;

fn assign_request(p: &Platform, node: &str, role: &str, org: &str) -> pb::AssignRoleRequest {
    pb::AssignRoleRequest {
        cluster_id: p.cluster.clone(),
        node_id: node.to_string(),
        role: role.to_string(),
        org_id: org.to_string(),
    }
}

fn remove_request(p: &Platform, node: &str, role: &str, org: &str) -> pb::RemoveRoleRequest {
    pb::RemoveRoleRequest {
        cluster_id: p.cluster.clone(),
        node_id: node.to_string(),
        role: role.to_string(),
        org_id: org.to_string(),
    }
}

fn desired(
    p: &Platform,
    node: &str,
    service: &str,
    state: &str,
) -> pb::SetServiceDesiredStateRequest {
    pb::SetServiceDesiredStateRequest {
        cluster_id: p.cluster.clone(),
        node_id: node.to_string(),
        service: service.to_string(),
        desired_state: state.to_string(),
    }
}

async fn assignments(p: &Platform) -> i64 {
    p.count("SELECT count(*) FROM node_role_assignments").await
}

/// Asserts that the newest `action` audit event is a refusal whose reason
/// mentions `needle`.
async fn last_refusal(p: &Platform, action: &str, needle: &str) {
    let events = p.audit_events(action).await;
    let (result, reason) = events.last().unwrap_or_else(|| panic!("no {action} event"));
    assert_eq!(result, "refused", "{action}: {reason}");
    assert!(
        reason.contains(needle),
        "{action}: {reason:?} lacks {needle:?}"
    );
}

// Goal: an assignment is explicit, fenced and recorded with its fence; the
// capability alone grants nothing and every precondition is enforced.
// Method: one enrolled node with the entry capability; assign, then try
// every refusal and check that nothing was written and the refusal audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_is_fenced_and_every_precondition_is_enforced() {
    let p = Platform::start().await;
    let node = p.enroll(&["can_accept_client_ingress"]).await;
    // The capability alone grants nothing.
    assert_eq!(assignments(&p).await, 0);

    let assigned = roles::assign(
        &p.ctx,
        &p.owner,
        &assign_request(&p, &node, "entry-node", ""),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            assigned.node_id.as_str(),
            assigned.role.as_str(),
            assigned.status.as_str()
        ),
        (node.as_str(), "entry-node", "active")
    );
    assert_eq!(assigned.assigned_by, p.owner.id);
    // The row carries the fence the audit event carries.
    let (row_term, row_seq): (i64, i64) = sqlx::query_as(
        "SELECT fence_term, fence_seq FROM node_role_assignments WHERE node_id = $1",
    )
    .bind(&node)
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap();
    let (audit_term, audit_seq): (i64, i64) = sqlx::query_as(
        "SELECT fence_term, fence_seq FROM cluster_audit_events WHERE action = 'role.assign' AND result = 'ok'",
    )
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!((row_term, row_seq), (audit_term, audit_seq));
    assert_eq!(row_term, 1);
    assert!(row_seq > 0);
    let last_seq: i64 =
        sqlx::query_scalar("SELECT last_seq FROM cluster_authority_terms WHERE ended_at IS NULL")
            .fetch_one(&p.ctx.pool)
            .await
            .unwrap();
    assert_eq!(last_seq, row_seq, "the assignment used the newest fence");

    // Duplicate.
    let e = roles::assign(
        &p.ctx,
        &p.owner,
        &assign_request(&p, &node, "entry-node", ""),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e}");
    last_refusal(&p, "role.assign", "already exists").await;
    assert_eq!(assignments(&p).await, 1);

    // No capability for the role.
    let e = roles::assign(
        &p.ctx,
        &p.owner,
        &assign_request(&p, &node, "rdp-worker", ""),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "MISSING_CAPABILITY", "{e}");
    assert!(e.to_string().contains("can_run_rdp_worker"), "{e}");
    last_refusal(&p, "role.assign", "can_run_rdp_worker").await;
    assert_eq!(assignments(&p).await, 1);

    // No membership in the cluster.
    let e = roles::assign(
        &p.ctx,
        &p.owner,
        &assign_request(&p, "n-stranger", "entry-node", ""),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "NO_MEMBERSHIP", "{e}");
    last_refusal(&p, "role.assign", "no active membership").await;

    // Unknown organization.
    let e = roles::assign(
        &p.ctx,
        &p.owner,
        &assign_request(&p, &node, "entry-node", "no-such-org"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "NOT_FOUND", "{e}");
    last_refusal(&p, "role.assign", "no-such-org").await;

    // Unknown role: refused before any fence, with the known roles listed.
    let e = roles::assign(
        &p.ctx,
        &p.owner,
        &assign_request(&p, &node, "superuser", ""),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "INVALID_ARGUMENT", "{e}");
    assert!(
        e.to_string().contains("entry-node") && e.to_string().contains("vpn-exit"),
        "{e}"
    );
    last_refusal(&p, "role.assign", "known roles").await;

    // Unknown cluster: NOT_FOUND from the fenced part.
    let mut other = assign_request(&p, &node, "entry-node", "");
    other.cluster_id = "no-such-cluster".into();
    let e = roles::assign(&p.ctx, &p.owner, &other).await.unwrap_err();
    assert_eq!(e.code(), "NOT_FOUND", "{e}");
    assert_eq!(assignments(&p).await, 1);

    // An org-admin may not assign or list (platform objects).
    let org_admin = p.principal("org-admin", Some("acme")).await;
    let e = roles::assign(
        &p.ctx,
        &org_admin,
        &assign_request(&p, &node, "entry-node", "acme"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "PERMISSION_DENIED", "{e}");
    last_refusal(&p, "role.assign", "permission denied").await;
    assert_eq!(assignments(&p).await, 1);

    // A disabled organization gets no new assignments.
    sqlx::query("INSERT INTO organizations (org_id, name, status) VALUES ('dormant', 'Dormant', 'disabled')")
        .execute(&p.ctx.pool)
        .await
        .unwrap();
    let e = roles::assign(
        &p.ctx,
        &p.owner,
        &assign_request(&p, &node, "entry-node", "dormant"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "FAILED_PRECONDITION", "{e}");
    last_refusal(&p, "role.assign", "disabled").await;
    assert_eq!(assignments(&p).await, 1);

    // The same role restricted to an existing org is another assignment.
    let restricted = roles::assign(
        &p.ctx,
        &p.owner,
        &assign_request(&p, &node, "entry-node", "acme"),
    )
    .await
    .unwrap();
    assert_eq!(restricted.org_id, "acme");
    assert_eq!(assignments(&p).await, 2);
    let ok = p
        .audit_events("role.assign")
        .await
        .into_iter()
        .filter(|(r, _)| r == "ok")
        .count();
    assert_eq!(ok, 2);

    // List, filtered by node, and paged.
    let all = roles::list(
        &p.ctx,
        &p.owner,
        &pb::ListRolesRequest {
            cluster_id: p.cluster.clone(),
            node_id: node.clone(),
            page: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(all.assignments.len(), 2);
    assert!(all.next_page_token.is_empty());
    let first = roles::list(
        &p.ctx,
        &p.owner,
        &pb::ListRolesRequest {
            cluster_id: p.cluster.clone(),
            node_id: String::new(),
            page: Some(pb::PageRequest {
                page_size: 1,
                page_token: String::new(),
            }),
        },
    )
    .await
    .unwrap();
    assert_eq!(first.assignments.len(), 1);
    assert!(!first.next_page_token.is_empty());
    let second = roles::list(
        &p.ctx,
        &p.owner,
        &pb::ListRolesRequest {
            cluster_id: p.cluster.clone(),
            node_id: String::new(),
            page: Some(pb::PageRequest {
                page_size: 1,
                page_token: first.next_page_token.clone(),
            }),
        },
    )
    .await
    .unwrap();
    assert_eq!(second.assignments.len(), 1);
    assert_ne!(first.assignments[0], second.assignments[0]);
    let none = roles::list(
        &p.ctx,
        &p.owner,
        &pb::ListRolesRequest {
            cluster_id: p.cluster.clone(),
            node_id: "n-stranger".into(),
            page: None,
        },
    )
    .await
    .unwrap();
    assert!(none.assignments.is_empty());

    // Remove: fenced, keeps history, a second removal is NOT_FOUND.
    let removed = roles::remove(
        &p.ctx,
        &p.owner,
        &remove_request(&p, &node, "entry-node", ""),
    )
    .await
    .unwrap();
    assert_eq!(removed.status, "removed");
    let (status, by, seq): (String, Option<String>, i64) = sqlx::query_as(
        "SELECT status, removed_by, fence_seq FROM node_role_assignments WHERE node_id = $1 AND organization_id IS NULL",
    )
    .bind(&node)
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), by.as_deref()),
        ("removed", Some(p.owner.id.as_str()))
    );
    assert!(seq > row_seq, "the removal records its own, newer fence");
    let fenced_removals = p.count("SELECT count(*) FROM cluster_audit_events WHERE action = 'role.remove' AND result = 'ok' AND fence_seq IS NOT NULL").await;
    assert_eq!(fenced_removals, 1);
    let e = roles::remove(
        &p.ctx,
        &p.owner,
        &remove_request(&p, &node, "entry-node", ""),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "NOT_FOUND", "{e}");
    last_refusal(&p, "role.remove", "not found").await;
    let listed = roles::list(
        &p.ctx,
        &p.owner,
        &pb::ListRolesRequest {
            cluster_id: p.cluster.clone(),
            node_id: node.clone(),
            page: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        listed.assignments.len(),
        1,
        "only the active, org-restricted one is left"
    );
    assert_eq!(listed.assignments[0].org_id, "acme");
    // Assigning again after a removal works (a new row).
    roles::assign(
        &p.ctx,
        &p.owner,
        &assign_request(&p, &node, "entry-node", ""),
    )
    .await
    .unwrap();
    assert_eq!(assignments(&p).await, 3);
}

// Goal: a desired state is a fenced mutation with a version that counts
// real changes, and without quorum it is refused with NO_QUORUM and nothing
// changes; enabling a service whose role the node lacks, or one not in
// the catalog, is refused with SERVICE_NOT_ALLOWED, audited, nothing
// stored. Method: enable before the role is assigned and an unknown
// service; assign; set, repeat, change; then stop 2 of 3 voters and try
// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_state_is_fenced_and_refused_without_quorum() {
    let p = Platform::start().await;
    let node = p.enroll(&["can_run_rdp_worker"]).await;
    for service in ["rdp-worker", "web"] {
        let e =
            workloads::set_desired_state(&p.ctx, &p.owner, &desired(&p, &node, service, "enabled"))
                .await
                .unwrap_err();
        assert_eq!(e.code(), "SERVICE_NOT_ALLOWED", "{service}: {e}");
        last_refusal(&p, "service.desired-state", service).await;
    }
    assert_eq!(
        p.count("SELECT count(*) FROM node_service_instances").await,
        0,
        "nothing stored"
    );
    roles::assign(
        &p.ctx,
        &p.owner,
        &assign_request(&p, &node, "rdp-worker", ""),
    )
    .await
    .unwrap();

    let set = workloads::set_desired_state(
        &p.ctx,
        &p.owner,
        &desired(&p, &node, "rdp-worker", "enabled"),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            set.desired_state.as_str(),
            set.reported_state.as_str(),
            set.version
        ),
        ("enabled", "unknown", 1)
    );
    let again = workloads::set_desired_state(
        &p.ctx,
        &p.owner,
        &desired(&p, &node, "rdp-worker", "enabled"),
    )
    .await
    .unwrap();
    assert_eq!(again.version, 1, "no change, no new version");
    let changed = workloads::set_desired_state(
        &p.ctx,
        &p.owner,
        &desired(&p, &node, "rdp-worker", "disabled"),
    )
    .await
    .unwrap();
    assert_eq!(
        (changed.desired_state.as_str(), changed.version),
        ("disabled", 2)
    );
    let fenced = p.count("SELECT count(*) FROM cluster_audit_events WHERE action = 'service.desired-state' AND result = 'ok' AND fence_term = 1").await;
    assert_eq!(fenced, 3);

    // Bad input and missing membership.
    let e =
        workloads::set_desired_state(&p.ctx, &p.owner, &desired(&p, &node, "rdp-worker", "maybe"))
            .await
            .unwrap_err();
    assert_eq!(e.code(), "INVALID_ARGUMENT", "{e}");
    last_refusal(&p, "service.desired-state", "enabled, disabled").await;
    let e = workloads::set_desired_state(
        &p.ctx,
        &p.owner,
        &desired(&p, &node, "Bad Service", "enabled"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "INVALID_ARGUMENT", "{e}");
    let e = workloads::set_desired_state(
        &p.ctx,
        &p.owner,
        &desired(&p, "n-stranger", "rdp-worker", "enabled"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "NO_MEMBERSHIP", "{e}");
    last_refusal(&p, "service.desired-state", "no active membership").await;
    assert_eq!(
        p.count("SELECT count(*) FROM node_service_instances").await,
        1
    );

    let listed = workloads::list(
        &p.ctx,
        &p.owner,
        &pb::ListServicesRequest {
            cluster_id: p.cluster.clone(),
            node_id: node.clone(),
            page: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.services, vec![changed.clone()]);

    // Minority: 2 of 3 voters down.
    p.stop_voters(2).await;
    let seq_before = p
        .count("SELECT last_seq FROM cluster_authority_terms WHERE ended_at IS NULL")
        .await;
    let e = workloads::set_desired_state(
        &p.ctx,
        &p.owner,
        &desired(&p, &node, "rdp-worker", "enabled"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "NO_QUORUM", "{e}");
    match &e {
        Error::NoQuorum {
            reachable_voters,
            total_voters,
        } => {
            assert_eq!(*total_voters, 3);
            assert!(*reachable_voters < 2, "{e}");
        }
        other => panic!("expected NO_QUORUM, got {other}"),
    }
    last_refusal(&p, "service.desired-state", "no quorum").await;
    let (state, version): (String, i64) = sqlx::query_as(
        "SELECT desired_state, version FROM node_service_instances WHERE node_id = $1",
    )
    .bind(&node)
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!(
        (state.as_str(), version),
        ("disabled", 2),
        "nothing changed"
    );
    assert_eq!(
        p.count("SELECT last_seq FROM cluster_authority_terms WHERE ended_at IS NULL")
            .await,
        seq_before
    );
    // Role mutations are refused the same way.
    let e = roles::assign(
        &p.ctx,
        &p.owner,
        &assign_request(&p, &node, "rdp-worker", ""),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "NO_QUORUM", "{e}");
    assert_eq!(assignments(&p).await, 1, "only the one made with quorum");
    // Reads still work.
    let listed = workloads::list(
        &p.ctx,
        &p.owner,
        &pb::ListServicesRequest {
            cluster_id: p.cluster.clone(),
            node_id: String::new(),
            page: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.services, vec![changed]);
}
