//! Node groups: inventory folders (audited, not fenced, grant nothing)
//! against a real PostgreSQL, including the database's cycle trigger.

use rap_controlplane::groups;
use rap_proto::pb;
use rap_testkit::platform::Platform;

fn create(p: &Platform, name: &str, parent: &str) -> pb::CreateGroupRequest {
    pb::CreateGroupRequest {
        cluster_id: p.cluster.clone(),
        name: name.to_string(),
        parent_group_id: parent.to_string(),
    }
}

fn move_node(p: &Platform, group: &str, node: &str) -> pb::MoveToGroupRequest {
    pb::MoveToGroupRequest {
        cluster_id: p.cluster.clone(),
        group_id: group.to_string(),
        node_id: node.to_string(),
        child_group_id: String::new(),
    }
}

fn move_group(p: &Platform, group: &str, child: &str) -> pb::MoveToGroupRequest {
    pb::MoveToGroupRequest {
        cluster_id: p.cluster.clone(),
        group_id: group.to_string(),
        node_id: String::new(),
        child_group_id: child.to_string(),
    }
}

async fn tree(p: &Platform) -> Vec<pb::NodeGroup> {
    groups::list(
        &p.ctx,
        &p.owner,
        &pb::ListGroupsRequest {
            cluster_id: p.cluster.clone(),
        },
    )
    .await
    .unwrap()
    .groups
}

fn parent_of<'a>(tree: &'a [pb::NodeGroup], group: &str) -> &'a str {
    tree.iter()
        .find(|g| g.group_id == group)
        .map(|g| g.parent_group_id.as_str())
        .unwrap()
}

// Goal: groups are a tree the operator can build and rearrange, and a
// cyclic move is refused with GROUP_CYCLE, audited, with the tree
// unchanged. Method: build eu > eu-west, asia; move a node and a group;
// then try every bad move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_create_move_and_refuse_cycles() {
    let p = Platform::start().await;
    let node = p.enroll(&["can_route_mesh"]).await;

    let eu = groups::create(&p.ctx, &p.owner, &create(&p, "eu", ""))
        .await
        .unwrap();
    assert_eq!(
        (
            eu.group_id.as_str(),
            eu.name.as_str(),
            eu.parent_group_id.as_str()
        ),
        ("eu", "eu", "")
    );
    let west = groups::create(&p.ctx, &p.owner, &create(&p, "eu-west", "eu"))
        .await
        .unwrap();
    assert_eq!(west.parent_group_id, "eu");
    groups::create(&p.ctx, &p.owner, &create(&p, "asia", ""))
        .await
        .unwrap();
    let ok = p
        .audit_events("group.create")
        .await
        .into_iter()
        .filter(|(r, _)| r == "ok")
        .count();
    assert_eq!(ok, 3);
    // Not fenced: no fence on the events.
    assert_eq!(p.count("SELECT count(*) FROM cluster_audit_events WHERE action LIKE 'group.%' AND fence_seq IS NOT NULL").await, 0);

    // Bad creations.
    let e = groups::create(&p.ctx, &p.owner, &create(&p, "Bad Name", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "INVALID_ARGUMENT");
    assert!(e.to_string().contains("group names are ids"), "{e}");
    let e = groups::create(&p.ctx, &p.owner, &create(&p, "eu", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "ALREADY_EXISTS", "{e}");
    let e = groups::create(&p.ctx, &p.owner, &create(&p, "orphan", "no-such-parent"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "NOT_FOUND", "{e}");
    let mut elsewhere = create(&p, "x", "");
    elsewhere.cluster_id = "no-such-cluster".into();
    assert_eq!(
        groups::create(&p.ctx, &p.owner, &elsewhere)
            .await
            .unwrap_err()
            .code(),
        "NOT_FOUND"
    );
    let refused = p
        .audit_events("group.create")
        .await
        .into_iter()
        .filter(|(r, _)| r == "refused")
        .count();
    assert_eq!(refused, 4);
    assert_eq!(p.count("SELECT count(*) FROM node_groups").await, 3);

    // Move a node (its active membership) into eu-west, then on to asia.
    let moved = groups::move_to(&p.ctx, &p.owner, &move_node(&p, "eu-west", &node))
        .await
        .unwrap();
    assert_eq!(
        (moved.group_id.as_str(), moved.node_ids.clone()),
        ("eu-west", vec![node.clone()])
    );
    groups::move_to(&p.ctx, &p.owner, &move_node(&p, "asia", &node))
        .await
        .unwrap();
    let listed = tree(&p).await;
    assert_eq!(
        listed
            .iter()
            .find(|g| g.group_id == "asia")
            .unwrap()
            .node_ids,
        vec![node.clone()]
    );
    assert!(
        listed
            .iter()
            .find(|g| g.group_id == "eu-west")
            .unwrap()
            .node_ids
            .is_empty()
    );
    let e = groups::move_to(&p.ctx, &p.owner, &move_node(&p, "asia", "n-stranger"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "NO_MEMBERSHIP", "{e}");
    let e = groups::move_to(&p.ctx, &p.owner, &move_node(&p, "no-such-group", &node))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "NOT_FOUND", "{e}");

    // Move a group: asia under eu-west (eu > eu-west > asia).
    let moved = groups::move_to(&p.ctx, &p.owner, &move_group(&p, "eu-west", "asia"))
        .await
        .unwrap();
    assert_eq!(moved.group_id, "eu-west");
    let before = tree(&p).await;
    assert_eq!(parent_of(&before, "asia"), "eu-west");
    assert_eq!(parent_of(&before, "eu-west"), "eu");
    assert_eq!(parent_of(&before, "eu"), "");

    // Cycles: eu under its grandchild, eu-west under its child, a group
    // under itself. All refused, audited, tree unchanged.
    for (destination, child) in [("asia", "eu"), ("asia", "eu-west"), ("eu", "eu")] {
        let e = groups::move_to(&p.ctx, &p.owner, &move_group(&p, destination, child))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "GROUP_CYCLE", "{child} under {destination}: {e}");
        assert!(e.to_string().contains(child), "{e}");
        let (result, reason) = p.audit_events("group.move").await.pop().unwrap();
        assert_eq!(result, "refused");
        assert!(
            reason.contains("cycle") || reason.contains("itself"),
            "{reason}"
        );
    }
    assert_eq!(tree(&p).await, before, "the tree is unchanged");

    // Exactly one of node / group.
    let mut both = move_node(&p, "eu", &node);
    both.child_group_id = "asia".into();
    assert_eq!(
        groups::move_to(&p.ctx, &p.owner, &both)
            .await
            .unwrap_err()
            .code(),
        "INVALID_ARGUMENT"
    );
    let neither = move_node(&p, "eu", "");
    assert_eq!(
        groups::move_to(&p.ctx, &p.owner, &neither)
            .await
            .unwrap_err()
            .code(),
        "INVALID_ARGUMENT"
    );

    // Groups grant nothing: the node in a group has no role.
    assert_eq!(
        p.count("SELECT count(*) FROM node_role_assignments").await,
        0
    );

    // An org-admin may not touch or see groups.
    let org_admin = p.principal("org-admin", Some("acme")).await;
    let e = groups::create(&p.ctx, &org_admin, &create(&p, "mine", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "PERMISSION_DENIED");
    let e = groups::list(
        &p.ctx,
        &org_admin,
        &pb::ListGroupsRequest {
            cluster_id: p.cluster.clone(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), "PERMISSION_DENIED");
    let (result, _) = p.audit_events("group.list").await.pop().unwrap();
    assert_eq!(result, "refused");
    assert_eq!(tree(&p).await, before);
}
