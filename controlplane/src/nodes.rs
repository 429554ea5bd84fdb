//! Nodes of a cluster: inventory for platform operators, and revocation.
//!
//! Revocation (fenced): the node's identities are revoked, its memberships
//! in the cluster become `revoked`, its active roles are removed, and a new
//! version of the cluster's `trust/revocations` scope (every revoked node
//! id and certificate serial, readable by all nodes) is signed with the
//! cluster's snapshot key and published to the authority group under the
//! same fence, all before the transaction commits: the revocation is in
//! PostgreSQL only if the group accepted the shard.

use crate::audit::Action;
use crate::auth::Principal;
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result};
use crate::fencing;
use crate::limits::REASON_BYTES_MAX;
use crate::page::Page;
use rap_proto::envelope::Scope;
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::pb;
use rap_proto::revocations::REVOCATIONS_SCOPE;

fn node_pb(row: db::nodes::NodeOverview) -> pb::Node {
    pb::Node {
        node_id: row.node_id,
        cluster_id: row.cluster_id,
        membership_status: row.membership_status,
        identity_status: row.identity_status,
        certificate_serial: row.certificate_serial,
        certificate_not_after_unix_ms: row.certificate_not_after_unix_ms,
        capabilities: crate::enrollment::capabilities_from_json(&row.capabilities),
        roles: row.roles,
        group_id: row.group_id,
        last_heartbeat_unix_ms: row.last_heartbeat_unix_ms,
        health: row.health,
        region: row.region,
        zone: row.zone,
    }
}

/// Lists a cluster's nodes, or every cluster's when none is named, by
/// cluster then node id (platform principals). The page token is
/// `<cluster>/<node>` of the last node of the page.
pub async fn list(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ListNodesRequest,
) -> Result<(Vec<pb::Node>, String)> {
    principal.require_platform()?;
    if !request.cluster_id.is_empty() {
        ClusterId::new(request.cluster_id.as_str())?;
    }
    let page = Page::from_pb(request.page.as_ref());
    let after = if page.after.is_empty() {
        ("", "")
    } else {
        page.after
            .split_once('/')
            .ok_or_else(|| Error::invalid("the page token is not one this call gave"))?
    };
    let mut conn = ctx.pool.acquire().await?;
    let rows = db::nodes::list(&mut conn, &request.cluster_id, after, page.limit()).await?;
    let mut nodes: Vec<pb::Node> = rows.into_iter().map(node_pb).collect();
    let next = page.finish(&mut nodes, |n| format!("{}/{}", n.cluster_id, n.node_id));
    Ok((nodes, next))
}

/// One node (platform principals).
pub async fn get(
    ctx: &Context,
    principal: &Principal,
    request: &pb::GetNodeRequest,
) -> Result<pb::Node> {
    principal.require_platform()?;
    get_unchecked(&ctx.pool, &request.cluster_id, &request.node_id).await
}

async fn get_unchecked(pool: &sqlx::PgPool, cluster_id: &str, node_id: &str) -> Result<pb::Node> {
    let row = db::nodes::get(&mut *pool.acquire().await?, cluster_id, node_id).await?;
    row.map(node_pb)
        .ok_or_else(|| Error::not_found("node", format!("{cluster_id}/{node_id}")))
}

/// Revokes a node in a cluster (fenced; see the module docs). Returns the
/// node as it is afterwards.
#[tracing::instrument(
    skip_all,
    fields(
        cluster_id = crate::audit::field(&request.cluster_id),
        node_id = crate::audit::field(&request.node_id),
    )
)]
pub async fn revoke(
    ctx: &Context,
    principal: &Principal,
    request: &pb::RevokeNodeRequest,
) -> Result<pb::Node> {
    let cluster_ok = ClusterId::new(request.cluster_id.as_str())
        .ok()
        .map(|c| c.to_string());
    let action = Action::new(
        principal.actor(),
        "node.revoke",
        cluster_ok.as_deref(),
        request.node_id.as_str(),
    )
    .with_step_up(principal);
    let precheck = principal.require_platform().and_then(|()| {
        ClusterId::new(request.cluster_id.as_str())?;
        NodeId::new(request.node_id.as_str())?;
        if request.reason.trim().is_empty() {
            return Err(Error::invalid("a revocation needs a reason"));
        }
        if request.reason.len() > REASON_BYTES_MAX {
            return Err(Error::Oversize {
                what: "reason",
                limit: REASON_BYTES_MAX,
                got: request.reason.len(),
            });
        }
        Ok(())
    });
    let (cluster_id, node_id, reason) = (&request.cluster_id, &request.node_id, &request.reason);
    let actor = principal.actor();
    // The keys are read before the fenced transaction begins.
    let precheck = match precheck {
        Ok(()) => Ok(crate::clusters::PreloadedKeys::load(&ctx.keys_dir, cluster_id).await),
        Err(e) => Err(e),
    };
    let serials = fencing::run(
        &ctx.pool,
        &ctx.authority,
        action,
        precheck,
        async |tx, fence, keys| {
            let serials = db::nodes::revoke_identities(tx, cluster_id, node_id).await?;
            let memberships = db::nodes::revoke_memberships(tx, cluster_id, node_id).await?;
            // Every control plane process drops these serials on commit.
            crate::db::coordination::notify_identities_changed(tx, &serials).await?;
            if serials.is_empty() && memberships == 0 {
                return Err(
                    if db::nodes::has_membership(tx, cluster_id, node_id).await? {
                        Error::FailedPrecondition(format!(
                            "node {node_id} is already revoked in {cluster_id}"
                        ))
                    } else {
                        Error::not_found("node", format!("{cluster_id}/{node_id}"))
                    },
                );
            }
            let roles = db::roles::active_of_node(tx, cluster_id, node_id).await?;
            db::roles::remove_all_of_node(tx, cluster_id, node_id, &actor).await?;
            // The revocation list, and every scope that listed the node,
            // are published before the transaction commits.
            crate::snapshots::mark(tx, cluster_id, &[Scope::TrustRevocations]).await?;
            crate::snapshots::mark_node_change(tx, cluster_id, node_id, &roles).await?;
            let cluster = ClusterId::new(cluster_id)?;
            let keys = keys.take(&cluster).await?;
            let publisher = crate::snapshots::Publisher {
                authority: &ctx.authority,
                keys: &keys,
                cluster: &cluster,
                fence: &fence,
                actor: &actor,
                sign_under: None,
            };
            let outcome = publisher
                .publish(
                    tx,
                    crate::snapshots::Asked::Dirty,
                    crate::snapshots::Mode::Changed,
                )
                .await?;
            let version = outcome
                .published
                .iter()
                .find(|p| p.scope == REVOCATIONS_SCOPE)
                .map(|p| p.version)
                .unwrap_or(0);
            tracing::info!(
                cluster_id = %cluster_id,
                node_id = %node_id,
                revocations_version = version,
                "node revoked"
            );
            Ok((
                serials.clone(),
                serde_json::json!({
                    "reason": reason,
                    "serials": serials,
                    "revocations_version": version,
                }),
            ))
        },
    )
    .await?;
    ctx.forget_serials(&serials);
    get_unchecked(&ctx.pool, &request.cluster_id, &request.node_id).await
}
