//! Service workloads: what the control plane wants each node to run
//! (`desired_state`) next to what the node's agent reports
//! (`reported_state`, written by heartbeats).
//!
//! Changing a desired state is a fenced mutation (`service.desired-state`):
//! it is refused with `NO_QUORUM` when the cluster's authority group has no
//! quorum, and nothing changes. `version` counts the changes of the
//! desired state (it starts at 1 and is bumped only when the state really
//! changes), so an agent can tell a new instruction from a repeated one.

use crate::audit::{self, Action};
use crate::auth::Principal;
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result};
use crate::fencing;
use crate::limits::HEARTBEAT_SERVICES_MAX;
use crate::page::Page;
use crate::roles::require_membership;
use rap_proto::ids::{ClusterId, NodeId, validate_id};
use rap_proto::pb;

/// Audit action of a desired-state change.
pub const ACTION_SET_DESIRED_STATE: &str = "service.desired-state";
/// Audit action of a (refused) list call.
pub const ACTION_LIST: &str = "service.list";
/// The desired states there are.
pub const DESIRED_STATES: &[&str] = &["enabled", "disabled"];
/// Most service instances one node may have (as many as a heartbeat may
/// report on).
pub const SERVICES_PER_NODE_MAX: usize = HEARTBEAT_SERVICES_MAX;
/// Separates node and service in a page token.
const PAGE_TOKEN_SEPARATOR: char = '/';

fn action(principal: &Principal, name: &'static str, cluster_id: &str, target: String) -> Action {
    let cluster = ClusterId::new(cluster_id).ok();
    Action::new(
        principal.actor(),
        name,
        cluster.as_ref().map(ClusterId::as_str),
        target,
    )
}

fn instance_pb(row: db::workloads::Instance) -> pb::ServiceInstance {
    pb::ServiceInstance {
        cluster_id: row.cluster_id,
        node_id: row.node_id,
        service: row.service,
        desired_state: row.desired_state,
        reported_state: row.reported_state,
        version: u64::try_from(row.version).unwrap_or(0),
    }
}

/// Sets the desired state (`enabled` or `disabled`) of a service on a node
/// (fenced, `service.desired-state`; platform principals only). The node
/// needs an active membership in the cluster (`NO_MEMBERSHIP`); enabling
/// needs a service of the catalog (`rap_proto::services`) whose role the
/// node holds (`SERVICE_NOT_ALLOWED`). The
/// instance is created on first use; `version` is bumped on a change.
#[tracing::instrument(
    skip_all,
    fields(
        cluster_id = crate::audit::field(&request.cluster_id),
        node_id = crate::audit::field(&request.node_id),
    )
)]
pub async fn set_desired_state(
    ctx: &Context,
    principal: &Principal,
    request: &pb::SetServiceDesiredStateRequest,
) -> Result<pb::ServiceInstance> {
    let action = action(
        principal,
        ACTION_SET_DESIRED_STATE,
        &request.cluster_id,
        format!("{}/{}", request.node_id, request.service),
    );
    let precheck = (|| {
        principal.require_platform()?;
        let cluster = ClusterId::new(request.cluster_id.as_str())?;
        let node = NodeId::new(request.node_id.as_str())?;
        validate_id("service name", &request.service)?;
        if !DESIRED_STATES.contains(&request.desired_state.as_str()) {
            return Err(Error::invalid(format!(
                "desired state {:?} is not one of {}",
                audit::cut(&request.desired_state, 40),
                DESIRED_STATES.join(", ")
            )));
        }
        Ok((cluster, node))
    })();
    let (service, desired) = (&request.service, &request.desired_state);
    fencing::run(
        &ctx.pool,
        &ctx.authority,
        action,
        precheck,
        async |tx, _fence, (cluster, node)| {
            let cluster_id = cluster.as_str();
            let node_id = node.as_str();
            require_membership(tx, cluster_id, node_id).await?;
            // Enabling needs a service of the catalog whose role the node
            // holds; disabling is always allowed.
            if desired == "enabled" {
                let roles = db::roles::active_of_node(tx, cluster_id, node_id).await?;
                let why = match rap_proto::services::roles_for(service) {
                    None => Some(format!(
                        "it is not a known service (known: {})",
                        rap_proto::services::SERVICE_ROLES
                            .iter()
                            .map(|(s, _)| *s)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                    Some(allowed)
                        if !rap_proto::services::allowed(
                            service,
                            roles.iter().map(|(r, _)| r.as_str()),
                        ) =>
                    {
                        Some(format!(
                            "assign one of its roles first ({}): rapctl role assign",
                            allowed.join(", ")
                        ))
                    }
                    Some(_) => None,
                };
                if let Some(why) = why {
                    return Err(Error::ServiceNotAllowed {
                        service: service.clone(),
                        node: node_id.to_string(),
                        why,
                    });
                }
            }
            let previous =
                db::workloads::lock_desired_state(tx, cluster_id, node_id, service).await?;
            if previous.is_none() {
                let count = db::workloads::count_of_node(tx, cluster_id, node_id).await?;
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                if count >= SERVICES_PER_NODE_MAX {
                    return Err(Error::Oversize {
                        what: "services of one node",
                        limit: SERVICES_PER_NODE_MAX,
                        got: count.saturating_add(1),
                    });
                }
            }
            let row =
                db::workloads::set_desired_state(tx, cluster_id, node_id, service, desired).await?;
            crate::snapshots::mark(
                tx,
                cluster_id,
                &[rap_proto::envelope::Scope::Node(node.clone())],
            )
            .await?;
            let instance = instance_pb(row);
            tracing::info!(
                cluster_id,
                node_id,
                service = %service,
                desired = %desired,
                version = instance.version,
                "service desired state set"
            );
            let details = serde_json::json!({
                "node_id": node_id,
                "service": service,
                "from": previous,
                "to": desired,
                "version": instance.version,
            });
            Ok((instance, details))
        },
    )
    .await
}

/// Lists a cluster's service instances, optionally of one node, ordered by
/// node and service (platform principals only; a refusal is audited as
/// `service.list`).
pub async fn list(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ListServicesRequest,
) -> Result<pb::ListServicesResponse> {
    let target = if request.node_id.is_empty() {
        String::new()
    } else {
        format!("node:{}", request.node_id)
    };
    let action = action(principal, ACTION_LIST, &request.cluster_id, target);
    let result = async {
        principal.require_platform()?;
        let cluster = ClusterId::new(request.cluster_id.as_str())?;
        if !request.node_id.is_empty() {
            NodeId::new(request.node_id.as_str())?;
        }
        let page = Page::from_pb(request.page.as_ref());
        let (after_node, after_service) = if page.after.is_empty() {
            (String::new(), String::new())
        } else {
            page.after
                .split_once(PAGE_TOKEN_SEPARATOR)
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .ok_or_else(|| Error::invalid("page token is not one this server issued"))?
        };
        let mut conn = ctx.pool.acquire().await?;
        let rows = db::workloads::list(
            &mut conn,
            cluster.as_str(),
            &request.node_id,
            &after_node,
            &after_service,
            page.limit(),
        )
        .await?;
        let mut services: Vec<pb::ServiceInstance> = rows.into_iter().map(instance_pb).collect();
        let next_page_token = page.finish(&mut services, |s| {
            format!("{}{PAGE_TOKEN_SEPARATOR}{}", s.node_id, s.service)
        });
        Ok(pb::ListServicesResponse {
            services,
            next_page_token,
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}
