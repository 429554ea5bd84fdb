//! Nodes of a cluster: inventory for platform operators, and revocation.
//!
//! Revocation (fenced): the node's identities are revoked, its memberships
//! in the cluster become `revoked`, its active roles are removed, and a new
//! version of the cluster's `trust/revocations` scope (every revoked node
//! id and certificate serial, readable by all nodes) is signed with the
//! cluster's snapshot key and published to the authority group under the
//! same fence, all before the transaction commits: the revocation is in
//! PostgreSQL only if the group accepted the shard.

use crate::audit::{self, Action};
use crate::auth::Principal;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::fencing;
use crate::keys::ClusterKeys;
use crate::limits::REASON_BYTES_MAX;
use crate::page::Page;
use rap_proto::envelope::{Digest, ReaderSelector, Scope, ShardDraft};
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId, SnapshotVersion, TrustGeneration};
use rap_proto::limits::REVOCATIONS_MAX;
use rap_proto::pb;
use rap_proto::revocations::REVOCATIONS_SCOPE;
use rap_proto::time::UnixMillis;

/// Validity of a published revocation list (re-published on every change;
/// a list older than this is refused by verifiers).
pub const REVOCATIONS_VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;

const NODE_QUERY: &str = "
    SELECT m.node_id, m.membership_status,
           coalesce(i.identity_status, 'none'), coalesce(i.certificate_serial, ''),
           coalesce((extract(epoch FROM i.certificate_not_after) * 1000)::bigint, 0),
           coalesce(m.group_id, ''),
           coalesce((extract(epoch FROM h.received_at) * 1000)::bigint, 0),
           coalesce(h.health, 'unknown'),
           coalesce((SELECT jsonb_agg(jsonb_build_object('name', c.capability, 'detail', c.detail) ORDER BY c.capability)
                       FROM node_capabilities c WHERE c.cluster_id = m.cluster_id AND c.node_id = m.node_id), '[]'::jsonb),
           coalesce((SELECT array_agg(r.role || coalesce('@' || r.organization_id, '') ORDER BY r.role)
                       FROM node_role_assignments r
                      WHERE r.cluster_id = m.cluster_id AND r.node_id = m.node_id AND r.status = 'active'), '{}')
      FROM cluster_memberships m
      LEFT JOIN LATERAL (SELECT * FROM node_identities i
                          WHERE i.cluster_id = m.cluster_id AND i.node_id = m.node_id
                          ORDER BY (i.identity_status = 'active') DESC, i.identity_id DESC LIMIT 1) i ON true
      LEFT JOIN node_heartbeat_latest h ON h.cluster_id = m.cluster_id AND h.node_id = m.node_id
     WHERE m.cluster_id = $1
       AND m.membership_id = (SELECT max(m2.membership_id) FROM cluster_memberships m2
                               WHERE m2.cluster_id = m.cluster_id AND m2.node_id = m.node_id)";

type NodeRow = (
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    String,
    serde_json::Value,
    Vec<String>,
);

fn node_pb(cluster_id: &str, row: NodeRow) -> pb::Node {
    let (node_id, membership, identity, serial, not_after, group, seen, health, caps, roles) = row;
    pb::Node {
        node_id,
        cluster_id: cluster_id.to_string(),
        membership_status: membership,
        identity_status: identity,
        certificate_serial: serial,
        certificate_not_after_unix_ms: not_after,
        capabilities: crate::enrollment::capabilities_from_json(&caps),
        roles,
        group_id: group,
        last_heartbeat_unix_ms: seen,
        health,
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
    let rows: Vec<NodeRow> = sqlx::query_as(&format!(
        "{NODE_QUERY} AND m.node_id > $2 ORDER BY m.node_id LIMIT $3"
    ))
    .bind(&request.cluster_id)
    .bind(&page.after)
    .bind(page.limit())
    .fetch_all(&ctx.pool)
    .await?;
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
    let row: Option<NodeRow> = sqlx::query_as(&format!("{NODE_QUERY} AND m.node_id = $2"))
        .bind(cluster_id)
        .bind(node_id)
        .fetch_optional(pool)
        .await?;
    row.map(|r| node_pb(cluster_id, r))
        .ok_or_else(|| Error::not_found("node", format!("{cluster_id}/{node_id}")))
}

/// Revokes a node in a cluster (fenced; see the module docs). Returns the
/// node as it is afterwards.
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
    if let Err(e) = precheck {
        audit::record_refusal(&ctx.pool, &action, &e).await;
        return Err(e);
    }
    let cluster_id = request.cluster_id.clone();
    let node_id = request.node_id.clone();
    let reason = request.reason.clone();
    let keys_dir = ctx.keys_dir.clone();
    let authority = ctx.authority.clone();
    let actor = principal.actor();
    let serials = fencing::run(&ctx.pool, &ctx.authority, action, move |tx, fence| {
        Box::pin(async move {
            let serials: Vec<String> = sqlx::query_scalar(
                "UPDATE node_identities SET identity_status = 'revoked', revoked_at = now()
                  WHERE cluster_id = $1 AND node_id = $2 AND identity_status IN ('active', 'rotated')
                  RETURNING certificate_serial",
            )
            .bind(&cluster_id)
            .bind(&node_id)
            .fetch_all(&mut **tx)
            .await?;
            let memberships = sqlx::query(
                "UPDATE cluster_memberships SET membership_status = 'revoked'
                  WHERE cluster_id = $1 AND node_id = $2 AND membership_status <> 'revoked'",
            )
            .bind(&cluster_id)
            .bind(&node_id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            // Every control plane process drops these serials on commit.
            crate::coordination::notify_identities_changed(tx, &serials).await?;
            if serials.is_empty() && memberships == 0 {
                let known: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM cluster_memberships WHERE cluster_id = $1 AND node_id = $2)",
                )
                .bind(&cluster_id)
                .bind(&node_id)
                .fetch_one(&mut **tx)
                .await?;
                return Err(if known {
                    Error::FailedPrecondition(format!("node {node_id} is already revoked in {cluster_id}"))
                } else {
                    Error::not_found("node", format!("{cluster_id}/{node_id}"))
                });
            }
            sqlx::query(
                "UPDATE node_role_assignments SET status = 'removed', removed_at = now(), removed_by = $3
                  WHERE cluster_id = $1 AND node_id = $2 AND status = 'active'",
            )
            .bind(&cluster_id)
            .bind(&node_id)
            .bind(&actor)
            .execute(&mut **tx)
            .await?;
            let version = publish_revocations(tx, &authority, &keys_dir, &cluster_id, fence, &actor).await?;
            tracing::info!(cluster_id = %cluster_id, node_id = %node_id, revocations_version = version, "node revoked");
            Ok((
                serials.clone(),
                serde_json::json!({"reason": reason, "serials": serials, "revocations_version": version}),
            ))
        })
    })
    .await?;
    ctx.forget_serials(&serials);
    get_unchecked(&ctx.pool, &request.cluster_id, &request.node_id).await
}

/// Signs and publishes the next version of `trust/revocations` within the
/// fenced transaction `tx`; records it in `snapshot_publications`.
async fn publish_revocations(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    authority: &fencing::AuthorityClients,
    keys_dir: &std::path::Path,
    cluster_id: &str,
    fence: audit::FenceRef,
    actor: &str,
) -> Result<u64> {
    let revoked: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT node_id, certificate_serial, (extract(epoch FROM revoked_at) * 1000)::bigint
           FROM node_identities WHERE cluster_id = $1 AND identity_status = 'revoked'
          ORDER BY identity_id LIMIT $2",
    )
    .bind(cluster_id)
    .bind(i64::try_from(REVOCATIONS_MAX).unwrap_or(i64::MAX) + 1)
    .fetch_all(&mut **tx)
    .await?;
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
            .map(
                |(node_id, certificate_serial, revoked_at_unix_ms)| pb::RevokedCertificate {
                    node_id,
                    certificate_serial,
                    revoked_at_unix_ms,
                },
            )
            .collect(),
    )?;
    let previous: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT version, header_hash FROM snapshot_publications
          WHERE cluster_id = $1 AND scope = $2 ORDER BY version DESC LIMIT 1",
    )
    .bind(cluster_id)
    .bind(REVOCATIONS_SCOPE)
    .fetch_optional(&mut **tx)
    .await?;
    let (version, prev_hash) = match previous {
        Some((v, hash)) => (
            u64::try_from(v).unwrap_or(0) + 1,
            Some(Digest::from_slice("previous header hash", &hash)?),
        ),
        None => (1, None),
    };
    let cluster = ClusterId::new(cluster_id)?;
    let keys = ClusterKeys::load(keys_dir, &cluster)?;
    let now = UnixMillis::now();
    let sealed = rap_proto::envelope::seal(
        ShardDraft {
            cluster_id: cluster,
            scope: Scope::TrustRevocations,
            version: SnapshotVersion(version),
            authority_term: AuthorityTerm(fence.term),
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
        .publish(
            cluster_id,
            &peers,
            fence.to_pb(cluster_id),
            vec![sealed.bytes],
        )
        .await?;
    sqlx::query(
        "INSERT INTO snapshot_publications
             (cluster_id, scope, version, authority_term, content_hash, header_hash, fence_seq, published_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(cluster_id)
    .bind(REVOCATIONS_SCOPE)
    .bind(i64::try_from(version).unwrap_or(i64::MAX))
    .bind(i64::try_from(fence.term).unwrap_or(i64::MAX))
    .bind(&sealed.header.content_hash.0[..])
    .bind(&sealed.header_hash.0[..])
    .bind(i64::try_from(fence.seq).unwrap_or(i64::MAX))
    .bind(actor)
    .execute(&mut **tx)
    .await?;
    Ok(version)
}
