//! Role assignments: the explicit authorization of a node for a role in a
//! cluster, optionally restricted to one organization (seed "Roles and
//! capabilities").
//!
//! Capabilities are never permissions. A node *reports* what it can do
//! (`can_run_rdp_worker`, ...); that alone grants nothing. A platform
//! principal *assigns* a role, and the assignment is refused unless the
//! node has reported the capability the role needs ([`required_capability`])
//! and holds an active membership in the cluster. Assigning and removing
//! are fenced mutations (`role.assign`, `role.remove`): every check runs
//! inside the fenced transaction, so the checks and the write see the same
//! state, and the row records the fence it was written with.

use crate::audit::{self, Action};
use crate::auth::Principal;
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result};
use crate::fencing;
use crate::page::Page;
use rap_core::Fence;
use rap_proto::ids::{ClusterId, NodeId, OrgId, RoleName};
use rap_proto::pb;

/// Audit action of an assignment.
pub const ACTION_ASSIGN: &str = "role.assign";
/// Audit action of a removal.
pub const ACTION_REMOVE: &str = "role.remove";
/// Audit action of a (refused) list call.
pub const ACTION_LIST: &str = "role.list";

/// Every known role and the capability a node must have reported before
/// it may be assigned that role.
pub const ROLE_CAPABILITIES: &[(&str, &str)] = &[
    ("entry-node", "can_accept_client_ingress"),
    ("relay-node", "can_route_mesh"),
    ("rdp-worker", "can_run_rdp_worker"),
    ("vnc-worker", "can_run_vnc_worker"),
    ("vpn-exit", "can_run_vpn_exit"),
    ("vpn-connector", "can_run_vpn_connector"),
    ("file-storage-cache", "can_run_file_cache"),
    ("update-cache", "can_run_update_cache"),
    ("video-relay", "can_run_video_relay"),
];

/// The roles that carry mesh traffic: their holders get a `peers/<node>`
/// shard and see each other there; no other node sees mesh topology.
pub const MESH_ROLES: &[&str] = &["entry-node", "relay-node"];

/// Whether `role` carries mesh traffic ([`MESH_ROLES`]).
pub fn is_mesh_role(role: &str) -> bool {
    MESH_ROLES.contains(&role)
}

/// The capability `role` needs, or `None` for an unknown role.
pub fn required_capability(role: &str) -> Option<&'static str> {
    ROLE_CAPABILITIES
        .iter()
        .find(|(name, _)| *name == role)
        .map(|(_, capability)| *capability)
}

/// The names of every known role, comma-separated (for messages).
pub fn known_roles() -> String {
    ROLE_CAPABILITIES
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `role` and checks that it is a known role; returns it with the
/// capability it needs.
pub fn known_role(role: &str) -> Result<(RoleName, &'static str)> {
    let name = RoleName::new(role)?;
    let capability = required_capability(name.as_str()).ok_or_else(|| {
        Error::invalid(format!(
            "unknown role {:?}; known roles: {}",
            name.as_str(),
            known_roles()
        ))
    })?;
    Ok((name, capability))
}

/// Fails with `NO_MEMBERSHIP` unless `node_id` has an active membership in
/// `cluster_id`. The membership row is share-locked until the transaction
/// ends, so it cannot change under the caller's mutation.
pub async fn require_membership(
    conn: &mut sqlx::PgConnection,
    cluster_id: &str,
    node_id: &str,
) -> Result<()> {
    match db::nodes::lock_active_membership(conn, cluster_id, node_id).await? {
        Some(_) => Ok(()),
        None => Err(Error::NoMembership {
            cluster: cluster_id.to_string(),
            node: node_id.to_string(),
        }),
    }
}

/// A validated assign/remove request.
#[derive(Clone, Debug)]
struct Target {
    cluster_id: String,
    node_id: String,
    role: String,
    /// Empty when not restricted to an organization.
    org_id: String,
}

impl Target {
    /// How the assignment appears in audit events and messages
    /// (`node/role` or `node/role@org`; the audit cuts long input).
    fn describe(node_id: &str, role: &str, org_id: &str) -> String {
        if org_id.is_empty() {
            format!("{node_id}/{role}")
        } else {
            format!("{node_id}/{role}@{org_id}")
        }
    }

    fn label(&self) -> String {
        Target::describe(&self.node_id, &self.role, &self.org_id)
    }

    fn key(&self) -> db::roles::Key<'_> {
        db::roles::Key {
            cluster_id: &self.cluster_id,
            node_id: &self.node_id,
            role: &self.role,
            org_id: &self.org_id,
        }
    }

    fn org(&self) -> Option<&str> {
        Some(self.org_id.as_str()).filter(|o| !o.is_empty())
    }

    fn to_pb(&self, status: &str, assigned_by: String) -> pb::RoleAssignment {
        pb::RoleAssignment {
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id.clone(),
            role: self.role.clone(),
            org_id: self.org_id.clone(),
            status: status.to_string(),
            assigned_by,
        }
    }
}

/// The cheap part of a request's checks: id grammar (the caller checked
/// authorization first, so an org-admin learns nothing from the ids).
fn validate(cluster_id: &str, node_id: &str, role: RoleName, org_id: &str) -> Result<Target> {
    let cluster = ClusterId::new(cluster_id)?;
    let node = NodeId::new(node_id)?;
    let org = if org_id.is_empty() {
        String::new()
    } else {
        OrgId::new(org_id)?.as_str().to_string()
    };
    Ok(Target {
        cluster_id: cluster.as_str().to_string(),
        node_id: node.as_str().to_string(),
        role: role.as_str().to_string(),
        org_id: org,
    })
}

fn action(principal: &Principal, name: &'static str, cluster_id: &str, target: String) -> Action {
    let cluster = ClusterId::new(cluster_id).ok();
    Action::new(
        principal.actor(),
        name,
        cluster.as_ref().map(ClusterId::as_str),
        target,
    )
    .with_step_up(principal)
}

fn fence_columns(fence: &Fence) -> Result<(i64, i64)> {
    let term = i64::try_from(fence.authority_term.0)
        .map_err(|_| Error::StaleFence("term overflow".into()))?;
    let seq = i64::try_from(fence.seq.0).map_err(|_| Error::StaleFence("seq overflow".into()))?;
    Ok((term, seq))
}

/// Assigns a role to a node (fenced, `role.assign`). Platform principals
/// only. Refused with `NO_MEMBERSHIP` unless the node is an active member
/// of the cluster, `MISSING_CAPABILITY` unless it reported the role's
/// capability, `NOT_FOUND` for an unknown organization, `ALREADY_EXISTS`
/// when the same assignment is active already.
#[tracing::instrument(
    skip_all,
    fields(
        cluster_id = crate::audit::field(&request.cluster_id),
        node_id = crate::audit::field(&request.node_id),
    )
)]
pub async fn assign(
    ctx: &Context,
    principal: &Principal,
    request: &pb::AssignRoleRequest,
) -> Result<pb::RoleAssignment> {
    let label = Target::describe(&request.node_id, &request.role, &request.org_id);
    let action = action(principal, ACTION_ASSIGN, &request.cluster_id, label);
    let checked = principal.require_platform().and_then(|()| {
        let (role, capability) = known_role(&request.role)?;
        let target = validate(&request.cluster_id, &request.node_id, role, &request.org_id)?;
        // Owned: the apply step's input must not borrow (its future is Send
        // for every lifetime).
        Ok((target, capability.to_string()))
    });
    let assigned_by = principal.actor();
    fencing::run(
        &ctx.pool,
        &ctx.authority,
        action,
        checked,
        async |tx, fence, (target, capability): (Target, String)| {
            require_membership(tx, &target.cluster_id, &target.node_id).await?;
            if !db::nodes::has_capability(tx, &target.cluster_id, &target.node_id, &capability)
                .await?
            {
                return Err(Error::MissingCapability {
                    node: target.node_id.clone(),
                    role: target.role.clone(),
                    capability: capability.to_string(),
                });
            }
            if let Some(org) = target.org() {
                match db::orgs::status(tx, org).await?.as_deref() {
                    None => return Err(Error::not_found("organization", org)),
                    Some("active") => {}
                    Some(other) => {
                        return Err(Error::FailedPrecondition(format!(
                            "organization {org} is {other}; roles are assigned for active \
                         organizations only"
                        )));
                    }
                }
            }
            if db::roles::is_active(tx, target.key()).await? {
                return Err(Error::AlreadyExists {
                    kind: "role assignment",
                    id: target.label(),
                });
            }
            let (term, seq) = fence_columns(&fence)?;
            let inserted = db::roles::insert(tx, target.key(), &assigned_by, term, seq).await?;
            if inserted == db::roles::Inserted::AlreadyActive {
                return Err(Error::AlreadyExists {
                    kind: "role assignment",
                    id: target.label(),
                });
            }
            crate::snapshots::mark_node_change(
                tx,
                &target.cluster_id,
                &target.node_id,
                &[(target.role.clone(), target.org_id.clone())],
            )
            .await?;
            tracing::info!(
                cluster_id = %target.cluster_id,
                node_id = %target.node_id,
                role = %target.role,
                org_id = %target.org_id,
                term,
                seq,
                "role assigned"
            );
            let details = serde_json::json!({
                "node_id": target.node_id,
                "role": target.role,
                "org_id": target.org_id,
                "capability": capability,
            });
            Ok((target.to_pb("active", assigned_by), details))
        },
    )
    .await
}

/// Removes an active role assignment (fenced, `role.remove`). Platform
/// principals only; `NOT_FOUND` when no such assignment is active. The
/// row keeps its history (`status = 'removed'`, who and when) and records
/// the fence of the removal. The role need not be a known one, so that
/// assignments of a retired role can still be removed.
#[tracing::instrument(
    skip_all,
    fields(
        cluster_id = crate::audit::field(&request.cluster_id),
        node_id = crate::audit::field(&request.node_id),
    )
)]
pub async fn remove(
    ctx: &Context,
    principal: &Principal,
    request: &pb::RemoveRoleRequest,
) -> Result<pb::RoleAssignment> {
    let label = Target::describe(&request.node_id, &request.role, &request.org_id);
    let action = action(principal, ACTION_REMOVE, &request.cluster_id, label);
    let checked = principal.require_platform().and_then(|()| {
        let role = RoleName::new(request.role.as_str())?;
        validate(&request.cluster_id, &request.node_id, role, &request.org_id)
    });
    let removed_by = principal.actor();
    fencing::run(
        &ctx.pool,
        &ctx.authority,
        action,
        checked,
        async |tx, fence, target| {
            let (term, seq) = fence_columns(&fence)?;
            let assigned_by = db::roles::remove(tx, target.key(), &removed_by, term, seq).await?;
            let Some(assigned_by) = assigned_by else {
                return Err(Error::not_found("active role assignment", target.label()));
            };
            crate::snapshots::mark_node_change(
                tx,
                &target.cluster_id,
                &target.node_id,
                &[(target.role.clone(), target.org_id.clone())],
            )
            .await?;
            tracing::info!(
                cluster_id = %target.cluster_id,
                node_id = %target.node_id,
                role = %target.role,
                org_id = %target.org_id,
                term,
                seq,
                "role removed"
            );
            let details = serde_json::json!({
                "node_id": target.node_id,
                "role": target.role,
                "org_id": target.org_id,
            });
            Ok((target.to_pb("removed", assigned_by), details))
        },
    )
    .await
}

/// Lists the active role assignments (platform principals only; a refusal
/// is audited as `role.list`). `cluster_id` and `node_id` filter when set.
/// Pages are ordered by assignment; the page token is opaque.
pub async fn list(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ListRolesRequest,
) -> Result<pb::ListRolesResponse> {
    let target = if request.node_id.is_empty() {
        String::new()
    } else {
        format!(
            "node:{}",
            audit::cut(&request.node_id, audit::AUDIT_TARGET_BYTES_MAX / 2)
        )
    };
    let action = action(principal, ACTION_LIST, &request.cluster_id, target);
    let result = async {
        principal.require_platform()?;
        if !request.cluster_id.is_empty() {
            ClusterId::new(request.cluster_id.as_str())?;
        }
        if !request.node_id.is_empty() {
            NodeId::new(request.node_id.as_str())?;
        }
        let page = Page::from_pb(request.page.as_ref());
        let after: i64 = if page.after.is_empty() {
            0
        } else {
            page.after
                .parse()
                .map_err(|_| Error::invalid("page token is not one this server issued"))?
        };
        let mut conn = ctx.pool.acquire().await?;
        let mut rows = db::roles::list_active(
            &mut conn,
            &request.cluster_id,
            &request.node_id,
            after,
            page.limit(),
        )
        .await?;
        let next_page_token = page.finish(&mut rows, |row| row.assignment_id.to_string());
        let assignments = rows
            .into_iter()
            .map(|row| pb::RoleAssignment {
                cluster_id: row.cluster_id,
                node_id: row.node_id,
                role: row.role,
                org_id: row.org_id,
                status: row.status,
                assigned_by: row.assigned_by,
            })
            .collect();
        Ok(pb::ListRolesResponse {
            assignments,
            next_page_token,
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_has_a_capability_and_unknown_roles_have_none() {
        for (role, capability) in ROLE_CAPABILITIES {
            assert_eq!(required_capability(role), Some(*capability));
            assert!(RoleName::new(*role).is_ok(), "{role} is a valid id");
        }
        assert_eq!(required_capability("root"), None);
        assert_eq!(required_capability(""), None);
    }

    #[test]
    fn an_unknown_role_is_refused_with_the_known_ones_listed() {
        let error = known_role("superuser").unwrap_err();
        assert_eq!(error.code(), "INVALID_ARGUMENT");
        assert!(error.to_string().contains("entry-node"), "{error}");
        assert!(error.to_string().contains("video-relay"), "{error}");
    }
}
