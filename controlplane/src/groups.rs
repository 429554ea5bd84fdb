//! Node groups: cluster-scoped inventory folders (seed "Node groups").
//!
//! Groups are inventory only and grant nothing: no role, no permission, no
//! trust and no placement follows from a node's group. That is why their
//! mutations are audited but NOT fenced (unlike role assignments, which
//! authorize a node and go through [`crate::fencing`]).
//!
//! A group's id is its name: `CreateGroupRequest` has no separate id, so
//! the name must itself be a valid rap id (a DNS label). A node's
//! membership sits in at most one group; groups form a tree whose cycles
//! the database refuses (trigger `node_groups_no_cycle`, HINT
//! `rap:group_cycle`), mapped here to `GROUP_CYCLE`.

use crate::audit::{self, Action};
use crate::auth::Principal;
use crate::clusters::require_exists;
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result};
use crate::roles::require_membership;
use rap_proto::ids::{ClusterId, GroupId, NodeId};
use rap_proto::pb;
use std::collections::BTreeMap;

/// Audit action of a group creation.
pub const ACTION_CREATE: &str = "group.create";
/// Audit action of a move (node into a group, or group under a group).
pub const ACTION_MOVE: &str = "group.move";
/// Audit action of a (refused) list call.
pub const ACTION_LIST: &str = "group.list";
/// Most groups one cluster may have (a list returns them all at once).
pub const GROUPS_PER_CLUSTER_MAX: i64 = 10_000;

fn cluster_for_audit(cluster_id: &str) -> Option<String> {
    ClusterId::new(cluster_id).ok().map(String::from)
}

/// Parses a group name, which is the group's id.
fn group_id(name: &str, what: &str) -> Result<GroupId> {
    GroupId::new(name).map_err(|e| {
        Error::invalid(format!(
            "{what}: group names are ids here (lowercase a-z, 0-9 and '-', 1..63 characters, \
             no leading or trailing '-'): {e}"
        ))
    })
}

async fn require_group(
    conn: &mut sqlx::PgConnection,
    cluster_id: &str,
    group_id: &str,
) -> Result<()> {
    if db::groups::exists(conn, cluster_id, group_id).await? {
        Ok(())
    } else {
        Err(Error::not_found(
            "group",
            format!("{cluster_id}/{group_id}"),
        ))
    }
}

/// One group with the node ids of its active memberships.
async fn load(
    conn: &mut sqlx::PgConnection,
    cluster_id: &str,
    group_id: &str,
) -> Result<pb::NodeGroup> {
    let Some(db::groups::Group {
        name,
        parent_group_id: parent,
        ..
    }) = db::groups::get(conn, cluster_id, group_id).await?
    else {
        return Err(Error::not_found(
            "group",
            format!("{cluster_id}/{group_id}"),
        ));
    };
    let node_ids = db::groups::member_ids(conn, cluster_id, group_id).await?;
    Ok(pb::NodeGroup {
        group_id: group_id.to_string(),
        cluster_id: cluster_id.to_string(),
        name,
        parent_group_id: parent.unwrap_or_default(),
        node_ids,
    })
}

/// Creates a group (platform principals; audited, not fenced). The name is
/// the id and must be a valid rap id; `parent_group_id`, when set, must
/// name an existing group of the same cluster.
pub async fn create(
    ctx: &Context,
    principal: &Principal,
    request: &pb::CreateGroupRequest,
) -> Result<pb::NodeGroup> {
    let cluster = cluster_for_audit(&request.cluster_id);
    let action = Action::new(
        principal.actor(),
        ACTION_CREATE,
        cluster.as_deref(),
        request.name.as_str(),
    );
    let result = async {
        principal.require_platform()?;
        let cluster_id = ClusterId::new(request.cluster_id.as_str())?;
        let group = group_id(&request.name, "group name")?;
        let parent = if request.parent_group_id.is_empty() {
            None
        } else {
            Some(group_id(&request.parent_group_id, "parent group")?)
        };
        let cluster_id = cluster_id.as_str();
        let mut tx = ctx.pool.begin().await?;
        require_exists(&mut tx, cluster_id).await?;
        let count = db::groups::count(&mut tx, cluster_id).await?;
        if count >= GROUPS_PER_CLUSTER_MAX {
            return Err(Error::FailedPrecondition(format!(
                "cluster {cluster_id} has {count} groups, the limit is {GROUPS_PER_CLUSTER_MAX}"
            )));
        }
        if let Some(parent) = &parent {
            require_group(&mut tx, cluster_id, parent.as_str()).await?;
        }
        let parent_id = parent.as_ref().map(GroupId::as_str);
        let inserted = db::groups::insert(&mut tx, cluster_id, group.as_str(), parent_id)
            .await
            .map_err(|e| {
                crate::auth::foreign_key_to_not_found(e, "group", parent_id.unwrap_or(""))
            })?;
        if !inserted {
            return Err(Error::AlreadyExists {
                kind: "group",
                id: format!("{cluster_id}/{group}"),
            });
        }
        audit::record_ok(
            &mut tx,
            &action,
            None,
            serde_json::json!({"parent_group_id": parent.as_ref().map(GroupId::as_str)}),
        )
        .await?;
        let created = load(&mut tx, cluster_id, group.as_str()).await?;
        tx.commit().await?;
        Ok(created)
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// What a move request moves.
enum Moved {
    Node(NodeId),
    Group(GroupId),
}

/// Moves a node's active membership into a group, or a group under another
/// group (platform principals; audited, not fenced). Exactly one of
/// `node_id` / `child_group_id` must be set. A node without an active
/// membership is `NO_MEMBERSHIP`; a move that would make the tree cyclic
/// (including a group under itself) is `GROUP_CYCLE` and changes nothing.
/// Returns the destination group.
pub async fn move_to(
    ctx: &Context,
    principal: &Principal,
    request: &pb::MoveToGroupRequest,
) -> Result<pb::NodeGroup> {
    let cluster = cluster_for_audit(&request.cluster_id);
    let target = if request.node_id.is_empty() {
        format!("group:{}", request.child_group_id)
    } else {
        format!("node:{}", request.node_id)
    };
    let action = Action::new(principal.actor(), ACTION_MOVE, cluster.as_deref(), target);
    let result = async {
        principal.require_platform()?;
        let cluster_id = ClusterId::new(request.cluster_id.as_str())?;
        let destination = group_id(&request.group_id, "destination group")?;
        let moved = match (
            request.node_id.is_empty(),
            request.child_group_id.is_empty(),
        ) {
            (false, true) => Moved::Node(NodeId::new(request.node_id.as_str())?),
            (true, false) => Moved::Group(group_id(&request.child_group_id, "child group")?),
            _ => {
                return Err(Error::invalid(
                    "set exactly one of node_id (move a node) or child_group_id (move a group)",
                ));
            }
        };
        let cluster_id = cluster_id.as_str();
        let mut tx = ctx.pool.begin().await?;
        require_exists(&mut tx, cluster_id).await?;
        require_group(&mut tx, cluster_id, destination.as_str()).await?;
        let details = match &moved {
            Moved::Node(node) => {
                require_membership(&mut tx, cluster_id, node.as_str()).await?;
                let previous =
                    db::groups::group_of_node(&mut tx, cluster_id, node.as_str()).await?;
                db::groups::place_node(&mut tx, cluster_id, node.as_str(), destination.as_str())
                    .await?;
                let roles = db::roles::active_of_node(&mut tx, cluster_id, node.as_str()).await?;
                crate::snapshots::mark_node_change(&mut tx, cluster_id, node.as_str(), &roles)
                    .await?;
                serde_json::json!({
                    "node_id": node.as_str(),
                    "from": previous.flatten(),
                    "to": destination.as_str(),
                })
            }
            Moved::Group(child) => {
                if child == &destination {
                    return Err(Error::GroupCycle(format!(
                        "group {child} cannot be moved under itself"
                    )));
                }
                // Concurrent moves of one cluster's groups run one at a time,
                // so the trigger's view of the tree is not stale.
                db::groups::lock_tree(&mut tx, cluster_id).await?;
                let previous = db::groups::lock_parent(&mut tx, cluster_id, child.as_str()).await?;
                let Some(previous) = previous else {
                    return Err(Error::not_found("group", format!("{cluster_id}/{child}")));
                };
                let moved = db::groups::set_parent(
                    &mut tx,
                    cluster_id,
                    child.as_str(),
                    destination.as_str(),
                )
                .await?;
                if moved == db::groups::Reparented::Cycle {
                    return Err(Error::GroupCycle(format!(
                        "moving group {child} under {destination} would make a cycle: \
                         {destination} is {child} or lies below it; nothing was changed"
                    )));
                }
                serde_json::json!({
                    "group_id": child.as_str(),
                    "from": previous,
                    "to": destination.as_str(),
                })
            }
        };
        audit::record_ok(&mut tx, &action, None, details).await?;
        let group = load(&mut tx, cluster_id, destination.as_str()).await?;
        tx.commit().await?;
        Ok(group)
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// Lists every group of a cluster with the node ids of its active
/// memberships, ordered by group id (platform principals; a refusal is
/// audited as `group.list`).
pub async fn list(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ListGroupsRequest,
) -> Result<pb::ListGroupsResponse> {
    let cluster = cluster_for_audit(&request.cluster_id);
    let action = Action::new(principal.actor(), ACTION_LIST, cluster.as_deref(), "");
    let result = async {
        principal.require_platform()?;
        let cluster_id = ClusterId::new(request.cluster_id.as_str())?;
        let cluster_id = cluster_id.as_str();
        let mut conn = ctx.pool.acquire().await?;
        require_exists(&mut conn, cluster_id).await?;
        let rows = db::groups::list(&mut conn, cluster_id, GROUPS_PER_CLUSTER_MAX).await?;
        let members = db::groups::placements(&mut conn, cluster_id).await?;
        let mut nodes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for db::groups::Placement { group_id, node_id } in members {
            nodes.entry(group_id).or_default().push(node_id);
        }
        let groups = rows
            .into_iter()
            .map(|row| pb::NodeGroup {
                node_ids: nodes.remove(&row.group_id).unwrap_or_default(),
                group_id: row.group_id,
                cluster_id: cluster_id.to_string(),
                name: row.name,
                parent_group_id: row.parent_group_id.unwrap_or_default(),
            })
            .collect();
        Ok(pb::ListGroupsResponse { groups })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}
