//! Join tokens: `rapjt.<id>.<secret>`, scoped to one cluster, with a TTL
//! and a use limit; only `blake3(secret)` is stored. Creating and revoking
//! a token changes no trust by itself (a join still needs a fenced
//! approval), so these are audited but not fenced.

use crate::audit::{self, Action};
use crate::auth::Principal;
use crate::clusters::require_exists;
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result};
use crate::limits::{
    JOIN_TOKEN_SECRET_BYTES, JOIN_TOKEN_TTL_DEFAULT, JOIN_TOKEN_TTL_MAX, JOIN_TOKEN_USES_MAX,
};
use crate::page::Page;
use crate::secret;
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::pb;

/// Token prefix of join tokens (the agent checks it too).
pub use rap_core::limits::JOIN_TOKEN_PREFIX;

/// `node_join_tokens.scope` of an agent's join token.
pub const TOKEN_SCOPE_JOIN: &str = "join";
/// `node_join_tokens.scope` of a storage node's (single-use) token.
pub const TOKEN_SCOPE_STORAGE: &str = "storage";

fn token_pb(row: db::join::JoinToken) -> pb::JoinToken {
    pb::JoinToken {
        token_id: row.token_id,
        cluster_id: row.cluster_id,
        expires_at_unix_ms: row.expires_at_unix_ms,
        max_uses: u32::try_from(row.max_uses).unwrap_or(0),
        used_count: u32::try_from(row.used_count).unwrap_or(0),
        created_by: row.created_by,
        revoked_at_unix_ms: row.revoked_at_unix_ms,
    }
}

/// The command an operator runs on the new host.
pub fn join_command(endpoint: &str, cluster_id: &str, raw: &str, ca_fingerprint: &str) -> String {
    format!(
        "rap-node-agent join --server {endpoint} --cluster {cluster_id} --token {raw} --ca-fingerprint {ca_fingerprint}"
    )
}

/// The command an operator runs on a new storage node (the advertised
/// address is the operator's to fill in).
pub fn storage_join_command(
    endpoint: &str,
    cluster_id: &str,
    node_id: &str,
    raw: &str,
    ca_fingerprint: &str,
) -> String {
    format!(
        "rap-configstore join --control-plane {endpoint} --cluster {cluster_id} --node-id {node_id} --token {raw} --ca-fingerprint {ca_fingerprint} --tls-dir /var/lib/rap-configstore/{node_id}/tls --advertise <host:port>"
    )
}

/// Creates a token; the raw token is in the response only.
#[tracing::instrument(skip_all, fields(cluster_id = crate::audit::field(&request.cluster_id)))]
pub async fn create(
    ctx: &Context,
    principal: &Principal,
    request: &pb::CreateJoinTokenRequest,
) -> Result<pb::CreateJoinTokenResponse> {
    let cluster_id = request.cluster_id.as_str();
    let mut action = Action::new(principal.actor(), "join-token.create", Some(cluster_id), "")
        .with_step_up(principal);
    let result = async {
        principal.require_platform()?;
        ClusterId::new(cluster_id)?;
        let ttl = if request.ttl_seconds == 0 {
            JOIN_TOKEN_TTL_DEFAULT.as_secs()
        } else {
            request.ttl_seconds
        };
        if ttl > JOIN_TOKEN_TTL_MAX.as_secs() {
            return Err(Error::invalid(format!(
                "ttl {ttl}s is longer than the limit {}s",
                JOIN_TOKEN_TTL_MAX.as_secs()
            )));
        }
        let max_uses = if request.max_uses == 0 { 1 } else { request.max_uses };
        if max_uses > JOIN_TOKEN_USES_MAX {
            return Err(Error::invalid(format!(
                "max uses {max_uses} is above the limit {JOIN_TOKEN_USES_MAX}"
            )));
        }
        let storage_node = match request.storage_node_id.as_str() {
            "" => None,
            id => {
                let id = NodeId::new(id)?;
                if max_uses != 1 {
                    return Err(Error::invalid("a storage node's token is single-use"));
                }
                Some(id)
            }
        };
        let mut tx = ctx.pool.begin().await?;
        require_exists(&mut tx, cluster_id).await?;
        if let Some(id) = &storage_node {
            crate::enrollment::check_reserved(&mut tx, crate::enrollment::KIND_STORAGE, id).await?;
            let live = db::nodes::has_active_identity(&mut tx, cluster_id, id.as_str()).await?;
            if live {
                return Err(Error::FailedPrecondition(format!(
                    "storage node {id} of {cluster_id} already has an active identity; it renews it itself (revoke it first to enrol a new key)"
                )));
            }
        }
        let fingerprint = db::clusters::ca_fingerprint(&mut tx, cluster_id).await?;
        let token = secret::generate::<JOIN_TOKEN_SECRET_BYTES>(JOIN_TOKEN_PREFIX)?;
        let scope = if storage_node.is_some() {
            TOKEN_SCOPE_STORAGE
        } else {
            TOKEN_SCOPE_JOIN
        };
        let row = db::join::insert_token(
            &mut tx,
            db::join::NewToken {
                token_id: &token.id,
                cluster_id,
                token_hash: &token.hash[..],
                ttl: std::time::Duration::from_secs(ttl),
                max_uses: i32::try_from(max_uses).unwrap_or(1),
                created_by: &principal.actor(),
                scope,
                storage_node_id: storage_node.as_ref().map(NodeId::as_str),
            },
        )
        .await?;
        action.target = token.id.clone();
        audit::record_ok(
            &mut tx,
            &action,
            None,
            serde_json::json!({
                "ttl_seconds": ttl, "max_uses": max_uses, "scope": scope,
                "storage_node_id": storage_node.as_ref().map(NodeId::as_str),
            }),
        )
        .await?;
        tx.commit().await?;
        let join_command = match &storage_node {
            Some(id) => storage_join_command(
                &ctx.public_endpoint,
                cluster_id,
                id.as_str(),
                &token.raw,
                &fingerprint,
            ),
            None => join_command(&ctx.public_endpoint, cluster_id, &token.raw, &fingerprint),
        };
        Ok(pb::CreateJoinTokenResponse {
            token: Some(token_pb(row)),
            join_command,
            raw_token: token.raw,
            ca_fingerprint: fingerprint,
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// Lists a cluster's tokens (never their secrets).
pub async fn list(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ListJoinTokensRequest,
) -> Result<(Vec<pb::JoinToken>, String)> {
    principal.require_platform()?;
    let page = Page::from_pb(request.page.as_ref());
    let mut conn = ctx.pool.acquire().await?;
    let rows =
        db::join::list_tokens(&mut conn, &request.cluster_id, &page.after, page.limit()).await?;
    let mut tokens: Vec<pb::JoinToken> = rows.into_iter().map(token_pb).collect();
    let next = page.finish(&mut tokens, |t| t.token_id.clone());
    Ok((tokens, next))
}

/// Revokes a token: later joins with it are refused (`TOKEN_REVOKED`).
pub async fn revoke(ctx: &Context, principal: &Principal, token_id: &str) -> Result<pb::JoinToken> {
    let mut action = Action::new(principal.actor(), "join-token.revoke", None, token_id);
    let result = async {
        principal.require_platform()?;
        let mut tx = ctx.pool.begin().await?;
        let row = db::join::revoke_token(&mut tx, token_id, &principal.actor()).await?;
        let row = row.ok_or_else(|| Error::not_found("join token", token_id))?;
        action.cluster_id = Some(row.cluster_id.clone());
        audit::record_ok(&mut tx, &action, None, serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(token_pb(row))
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}
