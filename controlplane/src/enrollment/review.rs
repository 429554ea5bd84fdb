//! Review of join requests: listing, approval (fenced: node, identity,
//! membership, capabilities and certificate in one transaction) and
//! rejection; expiry of stale requests.

use super::*;

/// The status filter of a list call as stored text (`None` = all).
pub fn status_filter(status: i32) -> Option<&'static str> {
    match pb::JoinRequestStatus::try_from(status).unwrap_or(pb::JoinRequestStatus::Unspecified) {
        pb::JoinRequestStatus::Unspecified => None,
        pb::JoinRequestStatus::Pending => Some("pending"),
        pb::JoinRequestStatus::Approved => Some("approved"),
        pb::JoinRequestStatus::Rejected => Some("rejected"),
        pb::JoinRequestStatus::Expired => Some("expired"),
    }
}

pub(super) fn request_pb(row: db::join::Request) -> pb::JoinRequest {
    pb::JoinRequest {
        join_request_id: row.join_request_id,
        cluster_id: row.cluster_id,
        token_id: row.token_id,
        fingerprint: row.fingerprint,
        facts: Some(facts_from_json(&row.reported_facts)),
        capabilities: capabilities_from_json(&row.reported_capabilities),
        requested_roles: row.requested_roles,
        status: status_of(&row.status) as i32,
        reviewer: row.reviewer,
        reason: row.reason,
        created_at_unix_ms: row.created_at_unix_ms,
        node_id: row.node_id,
        kind: kind_pb(&row.kind) as i32,
        requested_node_id: row.requested_node_id,
        server_names: row.server_names,
        key_history: Vec::new(),
    }
}

/// Lists join requests (platform principals).
pub async fn list(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ListJoinRequestsRequest,
) -> Result<(Vec<pb::JoinRequest>, String)> {
    principal.require_platform()?;
    expire_stale(&ctx.pool).await?;
    let page = Page::from_pb(request.page.as_ref());
    let mut conn = ctx.pool.acquire().await?;
    let rows = db::join::list_requests(
        &mut conn,
        &request.cluster_id,
        status_filter(request.status),
        &page.after,
        page.limit(),
    )
    .await?;
    let mut requests: Vec<pb::JoinRequest> = rows.into_iter().map(request_pb).collect();
    let next = page.finish(&mut requests, |r| r.join_request_id.clone());
    Ok((requests, next))
}

/// One join request (platform principals).
pub async fn get(ctx: &Context, principal: &Principal, id: &str) -> Result<pb::JoinRequest> {
    principal.require_platform()?;
    get_unchecked(&ctx.pool, id).await
}

/// One join request with its key's history.
pub(super) async fn get_unchecked(pool: &sqlx::PgPool, id: &str) -> Result<pb::JoinRequest> {
    let mut conn = pool.acquire().await?;
    let row = db::join::get_request(&mut conn, id).await?;
    let mut request = row
        .map(request_pb)
        .ok_or_else(|| Error::not_found("join request", id))?;
    request.key_history = key_history(&mut conn, &request.fingerprint).await?;
    Ok(request)
}

pub(super) async fn request_cluster(pool: &sqlx::PgPool, id: &str) -> Result<String> {
    db::join::request_cluster(&mut *pool.acquire().await?, id)
        .await?
        .ok_or_else(|| Error::not_found("join request", id))
}

/// Marks pending requests older than [`JOIN_REQUEST_PENDING_MAX`] as
/// `expired` (they can no longer be approved; the key may join again).
/// Run before requests are listed (a poll reads a stale request as
/// expired, a new join of the same key marks it). Only ever takes trust away,
/// so it needs no fence.
pub async fn expire_stale(pool: &sqlx::PgPool) -> Result<u64> {
    let expired =
        db::join::expire_stale(&mut *pool.acquire().await?, None, JOIN_REQUEST_PENDING_MAX).await?;
    if expired > 0 {
        tracing::info!(expired, "stale join requests expired");
    }
    Ok(expired)
}

/// A pending join request, locked.
pub(super) struct Pending {
    fingerprint: String,
    cluster_id: String,
    public_key: Vec<u8>,
    capabilities: serde_json::Value,
    hostname: String,
    kind: String,
    requested_node_id: Option<String>,
    server_names: Vec<String>,
}

/// Locks a request and checks it is pending.
pub(super) async fn lock_pending(tx: &mut sqlx::PgConnection, id: &str) -> Result<Pending> {
    let Some(db::join::Review {
        status,
        fingerprint,
        public_key,
        reported_capabilities: capabilities,
        node_name: hostname,
        cluster_id,
        too_old,
        kind,
        requested_node_id,
        server_names,
    }) = db::join::lock_for_review(tx, id, JOIN_REQUEST_PENDING_MAX).await?
    else {
        return Err(Error::not_found("join request", id));
    };
    if status == "pending" && too_old {
        return Err(Error::FailedPrecondition(format!(
            "join request {id} expired (pending longer than {} days); the node must join again",
            JOIN_REQUEST_PENDING_MAX.as_secs() / 86_400
        )));
    }
    if status != "pending" {
        return Err(Error::FailedPrecondition(format!(
            "join request {id} is {status}, not pending"
        )));
    }
    Ok(Pending {
        fingerprint,
        cluster_id,
        public_key,
        capabilities,
        hostname,
        kind,
        requested_node_id,
        server_names,
    })
}

/// Refuses giving `node_id` to a node of `kind` when it is reserved: the
/// control plane's id always; for an agent, an id that is or will be a
/// storage node's (a storage identity, a recorded storage node, an unused
/// storage token); for a storage node, an id an agent holds.
pub(crate) async fn check_reserved(
    conn: &mut sqlx::PgConnection,
    kind: &str,
    node_id: &NodeId,
) -> Result<()> {
    if node_id.as_str() == CONTROLPLANE_ID {
        return Err(Error::ReservedId(format!(
            "{CONTROLPLANE_ID:?} is the control plane's id"
        )));
    }
    let other_kind = if kind == KIND_STORAGE {
        KIND_NODE
    } else {
        KIND_STORAGE
    };
    let held = db::nodes::id_held_as(conn, node_id.as_str(), other_kind).await?;
    let storage_elsewhere =
        kind == KIND_NODE && db::storage_nodes::is_storage_id(conn, node_id.as_str()).await?;
    if held || storage_elsewhere {
        let owner = if kind == KIND_STORAGE {
            "an agent"
        } else {
            "a storage node"
        };
        return Err(Error::ReservedId(format!(
            "node id {node_id} belongs to {owner}; choose another id"
        )));
    }
    Ok(())
}

/// Writes a new active identity with a fresh certificate for `key`.
pub(super) async fn issue_identity(
    conn: &mut sqlx::PgConnection,
    keys: &ClusterKeys,
    identity: &PeerIdentity,
    key: &[u8; 32],
    server_names: &[String],
    validity: std::time::Duration,
) -> Result<crate::keys::IssuedCertificate> {
    let cluster_id = identity.cluster_id.as_str();
    let node_id = &identity.node_id;
    let issued = keys.issue_certificate(identity, key, validity, server_names)?;
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as f64)
            .unwrap_or(0.0)
    };
    let kind = match identity.kind {
        IdentityKind::Storage => KIND_STORAGE,
        _ => KIND_NODE,
    };
    db::nodes::insert_identity(
        conn,
        db::nodes::NewIdentity {
            cluster_id,
            node_id: node_id.as_str(),
            public_key: &key[..],
            fingerprint: &crate::keys::public_key_fingerprint(key),
            certificate_serial: &issued.serial_hex,
            not_before_unix_ms: ms(issued.not_before),
            not_after_unix_ms: ms(issued.not_after),
            certificate_pem: &issued.chain_pem,
            kind,
        },
    )
    .await?;
    Ok(issued)
}

/// Approves a pending request (fenced): node, identity, membership,
/// capabilities and the node certificate (an agent's), or the storage
/// identity (a storage node's), in one transaction.
#[tracing::instrument(
    skip_all,
    fields(
        join_request_id = crate::audit::field(&request.join_request_id),
        node_id = crate::audit::field(&request.node_id),
    )
)]
pub async fn approve(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ReviewJoinRequestRequest,
) -> Result<pb::JoinRequest> {
    let id = request.join_request_id.clone();
    let (action, check) = review_action(ctx, principal, &id, "join-request.approve").await;
    let reviewer = principal.actor();
    // The keys are read before the fenced transaction begins.
    let check = match (check, action.cluster_id.as_deref()) {
        (Ok(()), Some(cluster_id)) => {
            Ok(crate::clusters::PreloadedKeys::load(&ctx.keys_dir, cluster_id).await)
        }
        (Ok(()), None) => Ok(crate::clusters::PreloadedKeys::later(&ctx.keys_dir)),
        (Err(e), _) => Err(e),
    };
    fencing::run(
        &ctx.pool,
        &ctx.authority,
        action,
        check,
        async |tx, _fence, keys| {
            let validity = ctx.node_cert_validity;
            approve_locked(tx, keys, validity, &id, &request.node_id, &reviewer).await
        },
    )
    .await?;
    get_unchecked(&ctx.pool, &request.join_request_id).await
}

/// The approval itself, inside the caller's transaction (fenced by an
/// operator's approval, or a storage bootstrap token's before the group
/// exists): locks the pending request; for an agent, the node id
/// (`requested_node`, else derived from the key), node, identity,
/// membership and capabilities; for a storage node, its own id (the
/// token's) and a storage identity with its server names. Returns the
/// request id and the audit details.
pub(super) async fn approve_locked(
    tx: &mut sqlx::PgConnection,
    keys: crate::clusters::PreloadedKeys,
    validity: std::time::Duration,
    id: &str,
    requested_node: &str,
    reviewer: &str,
) -> Result<(String, serde_json::Value)> {
    let pending = lock_pending(tx, id).await?;
    let key: [u8; 32] = pending
        .public_key
        .as_slice()
        .try_into()
        .map_err(|_| Error::Internal("stored key is not 32 bytes".into()))?;
    let cluster_id = pending.cluster_id.clone();
    let storage = pending.kind == KIND_STORAGE;
    let node_id = match (&pending.requested_node_id, requested_node.is_empty()) {
        (Some(own), true) => own.clone(),
        (Some(own), false) if own == requested_node => own.clone(),
        (Some(own), false) => {
            return Err(Error::invalid(format!(
                "a storage node keeps the id its token was made for ({own}); approve without --node-id"
            )));
        }
        (None, true) => format!(
            "{DERIVED_NODE_ID_PREFIX}{}",
            &pending.fingerprint[..DERIVED_NODE_ID_HEX]
        ),
        (None, false) => requested_node.to_string(),
    };
    let node = NodeId::new(node_id.as_str())?;
    check_reserved(tx, &pending.kind, &node).await?;
    db::nodes::insert_node(
        tx,
        node.as_str(),
        audit::cut(&pending.hostname, TEXT_BYTES_MAX),
    )
    .await?;
    let db::nodes::Standing {
        enrollment_status: enrolled,
        member,
        has_identity,
    } = db::nodes::standing(tx, &cluster_id, node.as_str()).await?;
    if enrolled != "enrolled" {
        return Err(Error::FailedPrecondition(format!(
            "node {node} is revoked; approve with another --node-id"
        )));
    }
    if member || has_identity {
        return Err(Error::FailedPrecondition(format!(
            "node {node} is already an active member of {cluster_id}; approve with another --node-id"
        )));
    }
    let keys = keys.take(&ClusterId::new(cluster_id.as_str())?).await?;
    let identity = if storage {
        PeerIdentity::storage(keys.cluster_id().clone(), node.clone())
    } else {
        PeerIdentity::node(keys.cluster_id().clone(), node.clone())
    }
    .map_err(|e| Error::invalid(e.to_string()))?;
    let issued =
        issue_identity(tx, &keys, &identity, &key, &pending.server_names, validity).await?;
    // Storage nodes are members of their cluster too (listed, revoked like
    // any node); what they may call is decided by their certificate's kind.
    db::nodes::insert_membership(tx, &cluster_id, node.as_str()).await?;
    if !storage {
        for cap in capabilities_from_json(&pending.capabilities) {
            db::nodes::upsert_join_capability(
                tx,
                &cluster_id,
                node.as_str(),
                &cap.name,
                &cap.detail,
            )
            .await?;
        }
        // Its own scope, and the caches that now hold what it reads.
        crate::snapshots::mark_node_change(tx, &cluster_id, node.as_str(), &[]).await?;
    }
    db::join::approve(tx, id, reviewer, node.as_str()).await?;
    tracing::info!(cluster_id = %cluster_id, node_id = %node, kind = %pending.kind, serial = %issued.serial_hex, "join request approved");
    Ok((
        id.to_string(),
        serde_json::json!({
            "node_id": node.as_str(), "kind": pending.kind,
            "certificate_serial": issued.serial_hex, "server_names": pending.server_names,
        }),
    ))
}

/// The audit action of a review of request `id`, and the checks every
/// review makes before its fence: a platform principal, an existing request.
pub(super) async fn review_action(
    ctx: &Context,
    principal: &Principal,
    id: &str,
    name: &'static str,
) -> (Action, Result<()>) {
    let cluster = match rap_proto::ids::JoinRequestId::new(id) {
        Ok(_) => request_cluster(&ctx.pool, id).await,
        Err(e) => Err(e.into()),
    };
    let action = Action::new(
        principal.actor(),
        name,
        cluster.as_ref().ok().map(String::as_str),
        id,
    )
    .with_step_up(principal);
    let check = principal.require_platform().and(cluster.map(|_| ()));
    (action, check)
}

/// Rejects a pending request with a reason (fenced).
#[tracing::instrument(
    skip_all,
    fields(
        join_request_id = crate::audit::field(&request.join_request_id),
    )
)]
pub async fn reject(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ReviewJoinRequestRequest,
) -> Result<pb::JoinRequest> {
    let id = request.join_request_id.clone();
    let (action, check) = review_action(ctx, principal, &id, "join-request.reject").await;
    let precheck = check.and_then(|()| {
        if request.reason.trim().is_empty() {
            Err(Error::invalid("a rejection needs a reason"))
        } else if request.reason.len() > REASON_BYTES_MAX {
            Err(Error::Oversize {
                what: "reason",
                limit: REASON_BYTES_MAX,
                got: request.reason.len(),
            })
        } else {
            Ok(())
        }
    });
    let reason = &request.reason;
    let reviewer = principal.actor();
    fencing::run(
        &ctx.pool,
        &ctx.authority,
        action,
        precheck,
        async |tx, _fence, ()| {
            lock_pending(tx, &id).await?;
            db::join::reject(tx, &id, &reviewer, reason).await?;
            Ok(((), serde_json::json!({"reason": reason})))
        },
    )
    .await?;
    get_unchecked(&ctx.pool, &request.join_request_id).await
}
