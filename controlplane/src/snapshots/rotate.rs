//! `RotateSigningKey`: moving a cluster's shards to a new snapshot-signing
//! key.
//!
//! 1. Before the transaction, off the async threads: the next key
//!    generation is written to the keys directory (key 0600, root chained
//!    to the newest and signed by it and by the new key), or the newest one
//!    on disk is taken when the group has not reached it yet (a rotation
//!    that did not finish is resumed).
//! 2. In one fenced transaction: the root is recorded in
//!    `cluster_trust_roots`, then every scope is re-signed under the new
//!    generation and published, `trust/root` (carrying the whole chain)
//!    first: the group follows the chain and from then on refuses
//!    envelopes of the retired key (`STALE_TRUST_GENERATION`).
//!
//! Promotion and rejoin orders stay signed by the generation-1 key, which
//! every storage node pinned at bootstrap.

use super::{Asked, Mode, Publisher};
use crate::audit::Action;
use crate::auth::Principal;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::fencing;
use rap_proto::envelope::Scope;
use rap_proto::ids::{ClusterId, TrustGeneration};
use rap_proto::pb;

/// Audit action of a rotation.
pub const ACTION_ROTATE: &str = "cluster.rotate-signing-key";

/// Rotates `request.cluster_id`'s snapshot-signing key (platform
/// principals).
pub async fn rotate_signing_key(
    ctx: &Context,
    principal: &Principal,
    request: &pb::RotateSigningKeyRequest,
) -> Result<pb::RotateSigningKeyResponse> {
    let action = Action::new(
        principal.actor(),
        ACTION_ROTATE,
        Some(&request.cluster_id),
        "",
    )
    .with_step_up(principal);
    let checked = principal
        .require_platform()
        .and_then(|()| Ok(ClusterId::new(request.cluster_id.as_str())?));
    let checked = match checked {
        Ok(cluster) => prepare(ctx, &cluster)
            .await
            .map(|prepared| (cluster, prepared)),
        Err(e) => Err(e),
    };
    let actor = principal.actor();
    fencing::run(
        &ctx.pool,
        &ctx.authority,
        action,
        checked,
        async |tx, fence, (cluster, (keys, target))| {
            let cluster_id = cluster.as_str();
            let signer = keys.shard_signer(target)?;
            let key_id = signer.key_id().0.to_hex();
            super::publish::record_roots_up_to(tx, &keys, cluster_id, target, &actor).await?;
            let publisher = Publisher {
                authority: &ctx.authority,
                keys: &keys,
                cluster: &cluster,
                fence: &fence,
                actor: &actor,
                sign_under: Some(target),
            };
            let outcome = publisher.publish(tx, Asked::All, Mode::Resign).await?;
            if !outcome
                .published
                .iter()
                .any(|p| p.scope == Scope::TrustRoot.to_string())
            {
                return Err(Error::Internal(
                    "the rotation published no trust/root shard".into(),
                ));
            }
            tracing::info!(cluster_id, generation = target.0, key_id = %key_id, republished = outcome.published.len(), "snapshot-signing key rotated");
            let republished = u32::try_from(outcome.published.len()).unwrap_or(u32::MAX);
            Ok((
                pb::RotateSigningKeyResponse {
                    trust_generation: target.0,
                    key_id: key_id.clone(),
                    republished,
                },
                serde_json::json!({
                    "trust_generation": target.0,
                    "key_id": key_id,
                    "republished": republished,
                }),
            ))
        },
    )
    .await
}

/// Reads the group's generation, then writes (or resumes) the generation
/// after it on a blocking thread; returns the keys and that generation.
async fn prepare(
    ctx: &Context,
    cluster: &ClusterId,
) -> Result<(crate::keys::ClusterKeys, TrustGeneration)> {
    let peers = {
        let mut conn = ctx.pool.acquire().await?;
        crate::clusters::require_exists(&mut conn, cluster.as_str()).await?;
        fencing::storage_peers(&mut conn, cluster.as_str()).await?
    };
    let group = TrustGeneration(
        ctx.authority
            .shard_heads(
                cluster.as_str(),
                &peers,
                vec![Scope::TrustRoot.to_string()],
                false,
            )
            .await?
            .trust_generation
            .max(1),
    );
    let mut keys = crate::clusters::load_keys(&ctx.keys_dir, cluster).await?;
    tokio::task::spawn_blocking(move || {
        let target = keys.generation_after(group)?;
        Ok((keys, target))
    })
    .await
    .map_err(|e| Error::Internal(format!("writing the next key generation: {e}")))?
}
