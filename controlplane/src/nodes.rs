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
use rap_proto::envelope::{Digest, ReaderSelector, Scope, ShardDraft};
use rap_proto::ids::{ClusterId, NodeId, SnapshotVersion, TrustGeneration};
use rap_proto::limits::REVOCATIONS_MAX;
use rap_proto::pb;
use rap_proto::revocations::REVOCATIONS_SCOPE;
use rap_proto::time::UnixMillis;

/// Validity of a published revocation list (re-published on every change;
/// a list older than this is refused by verifiers).
pub const REVOCATIONS_VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;

fn node_pb(cluster_id: &str, row: db::nodes::NodeOverview) -> pb::Node {
    pb::Node {
        node_id: row.node_id,
        cluster_id: cluster_id.to_string(),
        membership_status: row.membership_status,
        identity_status: row.identity_status,
        certificate_serial: row.certificate_serial,
        certificate_not_after_unix_ms: row.certificate_not_after_unix_ms,
        capabilities: crate::enrollment::capabilities_from_json(&row.capabilities),
        roles: row.roles,
        group_id: row.group_id,
        last_heartbeat_unix_ms: row.last_heartbeat_unix_ms,
        health: row.health,
    }
}

/// Lists a cluster's nodes (platform principals).
pub async fn list(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ListNodesRequest,
) -> Result<(Vec<pb::Node>, String)> {
    principal.require_platform()?;
    ClusterId::new(request.cluster_id.as_str())?;
    let page = Page::from_pb(request.page.as_ref());
    let mut conn = ctx.pool.acquire().await?;
    let rows = db::nodes::list(&mut conn, &request.cluster_id, &page.after, page.limit()).await?;
    let mut nodes: Vec<pb::Node> = rows
        .into_iter()
        .map(|r| node_pb(&request.cluster_id, r))
        .collect();
    let next = page.finish(&mut nodes, |n| n.node_id.clone());
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
    row.map(|r| node_pb(cluster_id, r))
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
    );
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
            db::roles::remove_all_of_node(tx, cluster_id, node_id, &actor).await?;
            let version =
                publish_revocations(tx, &ctx.authority, keys, cluster_id, &fence, &actor).await?;
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

/// Signs and publishes the next version of `trust/revocations` within the
/// fenced transaction `tx`; records it in `snapshot_publications`.
async fn publish_revocations(
    tx: &mut sqlx::PgConnection,
    authority: &fencing::AuthorityClients,
    keys: crate::clusters::PreloadedKeys,
    cluster_id: &str,
    fence: &rap_core::Fence,
    actor: &str,
) -> Result<u64> {
    let limit = i64::try_from(REVOCATIONS_MAX).unwrap_or(i64::MAX - 1) + 1;
    let revoked = db::nodes::revoked_certificates(tx, cluster_id, limit).await?;
    if revoked.len() > REVOCATIONS_MAX {
        return Err(Error::Oversize {
            what: "revocation list",
            limit: REVOCATIONS_MAX,
            got: revoked.len(),
        });
    }
    let body = rap_proto::revocations::encode(
        &ClusterId::new(cluster_id)?,
        revoked
            .into_iter()
            .map(|row| pb::RevokedCertificate {
                node_id: row.node_id,
                certificate_serial: row.certificate_serial,
                revoked_at_unix_ms: row.revoked_at_unix_ms,
            })
            .collect(),
    )?;
    let previous = db::snapshots::latest(tx, cluster_id, REVOCATIONS_SCOPE).await?;
    let (version, prev_hash) = match previous {
        Some(latest) => (
            u64::try_from(latest.version).unwrap_or(0) + 1,
            Some(Digest::from_slice(
                "previous header hash",
                &latest.header_hash,
            )?),
        ),
        None => (1, None),
    };
    let cluster = ClusterId::new(cluster_id)?;
    let keys = keys.take(&cluster).await?;
    let now = UnixMillis::now();
    let sealed = rap_proto::envelope::seal(
        ShardDraft {
            cluster_id: cluster,
            scope: Scope::TrustRevocations,
            version: SnapshotVersion(version),
            authority_term: fence.authority_term,
            issued_at: now,
            expires_at: now.plus_ms(REVOCATIONS_VALIDITY_MS),
            prev_hash,
            readers: vec![ReaderSelector::AllNodes],
            body,
        },
        keys.signer(),
        TrustGeneration(1),
    )?;
    let peers = fencing::storage_peers(tx, cluster_id).await?;
    authority
        .publish(cluster_id, &peers, fence.to_pb(), vec![sealed.bytes])
        .await?;
    db::snapshots::insert(
        tx,
        cluster_id,
        db::snapshots::Publication {
            scope: REVOCATIONS_SCOPE,
            version: i64::try_from(version).unwrap_or(i64::MAX),
            authority_term: i64::try_from(fence.authority_term.0).unwrap_or(i64::MAX),
            fence_seq: i64::try_from(fence.seq.0).unwrap_or(i64::MAX),
            content_hash: &sealed.header.content_hash.0[..],
            header_hash: &sealed.header_hash.0[..],
            published_by: actor,
        },
    )
    .await?;
    Ok(version)
}
