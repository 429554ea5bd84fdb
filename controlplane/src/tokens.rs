//! Join tokens: `rapjt.<id>.<secret>`, scoped to one cluster, with a TTL
//! and a use limit; only `blake3(secret)` is stored. Creating and revoking
//! a token changes no trust by itself (a join still needs a fenced
//! approval), so these are audited but not fenced.

use crate::audit::{self, Action};
use crate::auth::Principal;
use crate::clusters::require_exists;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::limits::{
    JOIN_TOKEN_SECRET_BYTES, JOIN_TOKEN_TTL_DEFAULT, JOIN_TOKEN_TTL_MAX, JOIN_TOKEN_USES_MAX,
};
use crate::page::Page;
use crate::secret;
use rap_proto::ids::{ClusterId, NodeId};
use rap_proto::pb;

/// Token prefix of join tokens.
pub const JOIN_TOKEN_PREFIX: &str = "rapjt";

/// `node_join_tokens.scope` of an agent's join token.
pub const TOKEN_SCOPE_JOIN: &str = "join";
/// `node_join_tokens.scope` of a storage node's (single-use) token.
pub const TOKEN_SCOPE_STORAGE: &str = "storage";

const TOKEN_COLUMNS: &str = "token_id, cluster_id, (extract(epoch FROM expires_at) * 1000)::bigint,
    max_uses, used_count, created_by,
    coalesce((extract(epoch FROM revoked_at) * 1000)::bigint, 0)";

type TokenRow = (String, String, i64, i32, i32, String, i64);

fn token_pb(row: TokenRow) -> pb::JoinToken {
    let (token_id, cluster_id, expires, max_uses, used, created_by, revoked) = row;
    pb::JoinToken {
        token_id,
        cluster_id,
        expires_at_unix_ms: expires,
        max_uses: u32::try_from(max_uses).unwrap_or(0),
        used_count: u32::try_from(used).unwrap_or(0),
        created_by,
        revoked_at_unix_ms: revoked,
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
pub async fn create(
    ctx: &Context,
    principal: &Principal,
    request: &pb::CreateJoinTokenRequest,
) -> Result<pb::CreateJoinTokenResponse> {
    let cluster_id = request.cluster_id.as_str();
    let mut action = Action::new(principal.actor(), "join-token.create", Some(cluster_id), "");
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
            let live: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM node_identities
                                 WHERE cluster_id = $1 AND node_id = $2 AND identity_status = 'active')",
            )
            .bind(cluster_id)
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if live {
                return Err(Error::FailedPrecondition(format!(
                    "storage node {id} of {cluster_id} already has an active identity; it renews it itself (revoke it first to enrol a new key)"
                )));
            }
        }
        let fingerprint: String =
            sqlx::query_scalar("SELECT ca_fingerprint FROM clusters WHERE cluster_id = $1")
                .bind(cluster_id)
                .fetch_one(&mut *tx)
                .await?;
        let token = secret::generate::<JOIN_TOKEN_SECRET_BYTES>(JOIN_TOKEN_PREFIX)?;
        let scope = if storage_node.is_some() {
            TOKEN_SCOPE_STORAGE
        } else {
            TOKEN_SCOPE_JOIN
        };
        let row: TokenRow = sqlx::query_as(&format!(
            "INSERT INTO node_join_tokens
                 (token_id, cluster_id, token_hash, expires_at, max_uses, created_by, scope, storage_node_id)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5, $6, $7, $8)
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(&token.id)
        .bind(cluster_id)
        .bind(&token.hash[..])
        .bind(ttl as f64)
        .bind(i32::try_from(max_uses).unwrap_or(1))
        .bind(principal.actor())
        .bind(scope)
        .bind(storage_node.as_ref().map(NodeId::as_str))
        .fetch_one(&mut *tx)
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
    let rows: Vec<TokenRow> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS} FROM node_join_tokens
          WHERE ($1 = '' OR cluster_id = $1) AND token_id > $2 ORDER BY token_id LIMIT $3"
    ))
    .bind(&request.cluster_id)
    .bind(&page.after)
    .bind(page.limit())
    .fetch_all(&ctx.pool)
    .await?;
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
        let row: Option<TokenRow> = sqlx::query_as(&format!(
            "UPDATE node_join_tokens SET revoked_at = coalesce(revoked_at, now()),
                    revoked_by = coalesce(revoked_by, $2)
              WHERE token_id = $1 RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(token_id)
        .bind(principal.actor())
        .fetch_optional(&mut *tx)
        .await?;
        let row = row.ok_or_else(|| Error::not_found("join token", token_id))?;
        action.cluster_id = Some(row.1.clone());
        audit::record_ok(&mut tx, &action, None, serde_json::json!({})).await?;
        tx.commit().await?;
        Ok(token_pb(row))
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}
