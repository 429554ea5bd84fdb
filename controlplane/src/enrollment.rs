//! Node enrollment (seed "Node Enrollment Flow", DESIGN.md §3 "Keys"):
//! token + node public key + proof of possession → a `pending` join request
//! → fenced approval by a platform admin → node, identity, membership and
//! an X.509 node certificate from the cluster CA → the agent polls with a
//! fresh proof and receives identity, chain, trust root and bootstrap
//! storage endpoints. Certificate renewal runs over mTLS and is fenced.

use crate::audit::{self, Action};
use crate::auth::Principal;
use crate::context::Context;
use crate::error::{Error, Result, TokenRefusal};
use crate::fencing;
use crate::keys::ClusterKeys;
use crate::limits::*;
use crate::page::Page;
use crate::secret;
use crate::tokens::JOIN_TOKEN_PREFIX;
use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message;
use rap_authority::tls::{NODE_CERT_VALIDITY_DEFAULT, PeerIdentity};
use rap_proto::ids::{ClusterId, NodeId, RoleName};
use rap_proto::pb;
use rap_proto::time::UnixMillis;

pub use rap_proto::proof::{PURPOSE_JOIN, PURPOSE_RENEW, PURPOSE_STATUS, proof_message};
/// Prefix of node ids derived from a key fingerprint.
pub const DERIVED_NODE_ID_PREFIX: &str = "n-";
/// Hex characters of the fingerprint in a derived node id.
pub const DERIVED_NODE_ID_HEX: usize = 12;

/// Checks a proof of possession: key shape, nonce length, timestamp
/// window, signature. Returns the key.
pub fn verify_proof(
    purpose: &str,
    cluster_id: &str,
    public_key: &[u8],
    timestamp_unix_ms: i64,
    nonce: &[u8],
    proof: &[u8],
    now: UnixMillis,
) -> Result<[u8; 32]> {
    let key: [u8; 32] = public_key.try_into().map_err(|_| {
        Error::invalid(format!(
            "node public key is {} bytes, not 32",
            public_key.len()
        ))
    })?;
    if nonce.len() < PROOF_NONCE_BYTES_MIN || nonce.len() > PROOF_NONCE_BYTES_MAX {
        return Err(Error::invalid(format!(
            "nonce is {} bytes; expected {PROOF_NONCE_BYTES_MIN}..={PROOF_NONCE_BYTES_MAX}",
            nonce.len()
        )));
    }
    let skew = i64::try_from(PROOF_CLOCK_SKEW.as_millis()).unwrap_or(i64::MAX);
    if (timestamp_unix_ms - now.0).abs() > skew {
        return Err(Error::Replay(format!(
            "proof timestamp {timestamp_unix_ms} is more than {}s from the server clock {}",
            PROOF_CLOCK_SKEW.as_secs(),
            now.0
        )));
    }
    let verifying = VerifyingKey::from_bytes(&key)
        .map_err(|_| Error::BadProof("not an ed25519 public key".into()))?;
    let signature = Signature::from_slice(proof)
        .map_err(|_| Error::BadProof(format!("signature is {} bytes, not 64", proof.len())))?;
    let message = proof_message(purpose, cluster_id, &key, timestamp_unix_ms, nonce);
    verifying
        .verify_strict(&message, &signature)
        .map_err(|_| Error::BadProof("the signature does not match the public key".into()))?;
    Ok(key)
}

fn check_facts(facts: &pb::NodeFacts) -> Result<()> {
    let size = facts.encoded_len();
    if size > FACTS_BYTES_MAX {
        return Err(Error::Oversize {
            what: "node facts",
            limit: FACTS_BYTES_MAX,
            got: size,
        });
    }
    if facts.labels.len() > FACT_LABELS_MAX {
        return Err(Error::Oversize {
            what: "fact labels",
            limit: FACT_LABELS_MAX,
            got: facts.labels.len(),
        });
    }
    for (k, v) in &facts.labels {
        let longest = k.len().max(v.len());
        if longest > FACT_LABEL_BYTES_MAX {
            return Err(Error::Oversize {
                what: "fact label",
                limit: FACT_LABEL_BYTES_MAX,
                got: longest,
            });
        }
    }
    for (what, value) in [
        ("hostname", &facts.hostname),
        ("os", &facts.os),
        ("arch", &facts.arch),
        ("agent version", &facts.agent_version),
    ] {
        if value.len() > TEXT_BYTES_MAX {
            return Err(Error::Oversize {
                what,
                limit: TEXT_BYTES_MAX,
                got: value.len(),
            });
        }
    }
    Ok(())
}

/// Checks reported capabilities (count, names, detail size).
pub fn check_capabilities(capabilities: &[pb::Capability]) -> Result<()> {
    if capabilities.len() > CAPABILITIES_MAX {
        return Err(Error::Oversize {
            what: "capabilities",
            limit: CAPABILITIES_MAX,
            got: capabilities.len(),
        });
    }
    for c in capabilities {
        let ok = !c.name.is_empty()
            && c.name.len() <= 63
            && c.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(Error::invalid(format!(
                "capability name {:?} is not [a-z0-9_]{{1,63}}",
                audit::cut(&c.name, 80)
            )));
        }
        if c.detail.len() > CAPABILITY_DETAIL_BYTES_MAX {
            return Err(Error::Oversize {
                what: "capability detail",
                limit: CAPABILITY_DETAIL_BYTES_MAX,
                got: c.detail.len(),
            });
        }
    }
    Ok(())
}

fn facts_json(facts: &pb::NodeFacts) -> serde_json::Value {
    let domain = facts.domain.clone().unwrap_or_default();
    serde_json::json!({
        "hostname": facts.hostname, "os": facts.os, "arch": facts.arch,
        "agent_version": facts.agent_version,
        "domain": {"region": domain.region, "zone": domain.zone, "host": domain.host},
        "labels": facts.labels,
    })
}

fn facts_from_json(value: &serde_json::Value) -> pb::NodeFacts {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    pb::NodeFacts {
        hostname: s(&value["hostname"]),
        os: s(&value["os"]),
        arch: s(&value["arch"]),
        agent_version: s(&value["agent_version"]),
        domain: Some(pb::FailureDomain {
            region: s(&value["domain"]["region"]),
            zone: s(&value["domain"]["zone"]),
            host: s(&value["domain"]["host"]),
        }),
        labels: value["labels"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), s(v))).collect())
            .unwrap_or_default(),
    }
}

fn capabilities_json(capabilities: &[pb::Capability]) -> serde_json::Value {
    serde_json::Value::Array(
        capabilities
            .iter()
            .map(|c| serde_json::json!({"name": c.name, "detail": c.detail}))
            .collect(),
    )
}

pub(crate) fn capabilities_from_json(value: &serde_json::Value) -> Vec<pb::Capability> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|c| pb::Capability {
                    name: c["name"].as_str().unwrap_or_default().to_string(),
                    detail: c["detail"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn is_unique_violation(error: &sqlx::Error, index: &str) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23505") && db.constraint() == Some(index))
}

/// A new join request: validates the proof, then the token (hash in
/// constant time, revocation, expiry, cluster scope, remaining uses)
/// atomically with `used_count`, and stores the request as `pending`.
pub async fn submit(
    ctx: &Context,
    request: &pb::SubmitJoinRequestRequest,
) -> Result<pb::SubmitJoinRequestResponse> {
    let parsed = secret::parse(JOIN_TOKEN_PREFIX, &request.token);
    let actor = parsed
        .as_ref()
        .map(|(id, _)| format!("join-token:{id}"))
        .unwrap_or_else(|| "anonymous".to_string());
    let cluster_for_audit = ClusterId::new(request.cluster_id.as_str())
        .ok()
        .map(|c| c.to_string());
    let mut action = Action::new(
        actor,
        "join-request.submit",
        cluster_for_audit.as_deref(),
        "",
    );
    let result = async {
        ClusterId::new(request.cluster_id.as_str())?;
        let facts = request.facts.clone().unwrap_or_default();
        check_facts(&facts)?;
        check_capabilities(&request.capabilities)?;
        if request.requested_roles.len() > REQUESTED_ROLES_MAX {
            return Err(Error::Oversize { what: "requested roles", limit: REQUESTED_ROLES_MAX, got: request.requested_roles.len() });
        }
        for role in &request.requested_roles {
            RoleName::new(role.as_str())?;
        }
        let key = verify_proof(
            PURPOSE_JOIN,
            &request.cluster_id,
            &request.node_public_key,
            request.timestamp_unix_ms,
            &request.nonce,
            &request.proof,
            UnixMillis::now(),
        )?;
        let (token_id, hash) = parsed.clone().ok_or(Error::Token(TokenRefusal::Malformed))?;
        let fingerprint = crate::keys::public_key_fingerprint(&key);
        action.target = format!("key:{}", &fingerprint[..16]);

        let mut tx = ctx.pool.begin().await?;
        // The row lock makes check-and-count atomic under concurrent joins.
        let row: Option<(Vec<u8>, String, bool, bool, i32, i32)> = sqlx::query_as(
            "SELECT token_hash, cluster_id, revoked_at IS NOT NULL, expires_at <= now(), used_count, max_uses
               FROM node_join_tokens WHERE token_id = $1 FOR UPDATE",
        )
        .bind(&token_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((stored, token_cluster, revoked, expired, used, max)) = row else {
            return Err(Error::Token(TokenRefusal::Unknown));
        };
        if !secret::hash_matches(&hash, &stored) {
            return Err(Error::Token(TokenRefusal::Unknown));
        }
        if token_cluster != request.cluster_id {
            return Err(Error::Token(TokenRefusal::WrongCluster));
        }
        if revoked {
            return Err(Error::Token(TokenRefusal::Revoked));
        }
        if expired {
            return Err(Error::Token(TokenRefusal::Expired));
        }
        if used >= max {
            return Err(Error::Token(TokenRefusal::Exhausted));
        }
        sqlx::query("UPDATE node_join_tokens SET used_count = used_count + 1 WHERE token_id = $1")
            .bind(&token_id)
            .execute(&mut *tx)
            .await?;
        // This key's own stale pending request no longer blocks it.
        sqlx::query(
            "UPDATE node_join_requests SET status = 'expired'
              WHERE cluster_id = $1 AND fingerprint = $2 AND status = 'pending'
                AND created_at <= now() - make_interval(secs => $3)",
        )
        .bind(&request.cluster_id)
        .bind(&fingerprint)
        .bind(JOIN_REQUEST_PENDING_MAX.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        let id = format!("jr-{}", secret::random_id()?);
        let inserted = sqlx::query(
            "INSERT INTO node_join_requests
                 (join_request_id, cluster_id, token_id, node_name, fingerprint, public_key, proof_nonce,
                  reported_capabilities, reported_facts, requested_roles)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&id)
        .bind(&request.cluster_id)
        .bind(&token_id)
        .bind(&facts.hostname)
        .bind(&fingerprint)
        .bind(&key[..])
        .bind(&request.nonce)
        .bind(capabilities_json(&request.capabilities))
        .bind(facts_json(&facts))
        .bind(&request.requested_roles)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e, "node_join_requests_nonce_once") => {
                return Err(Error::Replay("this join request (key and nonce) was submitted before".into()));
            }
            Err(e) if is_unique_violation(&e, "node_join_requests_one_pending") => {
                return Err(Error::Replay(
                    "a join request for this key is already pending; wait for its review".into(),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        action.target = id.clone();
        audit::record_ok(&mut tx, &action, None, serde_json::json!({"fingerprint": fingerprint, "hostname": facts.hostname})).await?;
        tx.commit().await?;
        tracing::info!(cluster_id = %request.cluster_id, join_request_id = %id, "join request pending");
        Ok(pb::SubmitJoinRequestResponse {
            join_request_id: id,
            status: pb::JoinRequestStatus::Pending as i32,
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

fn status_of(text: &str) -> pb::JoinRequestStatus {
    match text {
        "pending" => pb::JoinRequestStatus::Pending,
        "approved" => pb::JoinRequestStatus::Approved,
        "rejected" => pb::JoinRequestStatus::Rejected,
        "expired" => pb::JoinRequestStatus::Expired,
        _ => pb::JoinRequestStatus::Unspecified,
    }
}

/// The status filter of a list call as stored text (`None` = all).
fn status_filter(status: i32) -> Option<&'static str> {
    match pb::JoinRequestStatus::try_from(status).unwrap_or(pb::JoinRequestStatus::Unspecified) {
        pb::JoinRequestStatus::Unspecified => None,
        pb::JoinRequestStatus::Pending => Some("pending"),
        pb::JoinRequestStatus::Approved => Some("approved"),
        pb::JoinRequestStatus::Rejected => Some("rejected"),
        pb::JoinRequestStatus::Expired => Some("expired"),
    }
}

const REQUEST_COLUMNS: &str = "join_request_id, cluster_id, token_id, fingerprint, reported_facts,
    reported_capabilities, requested_roles, status, coalesce(reviewed_by, ''),
    coalesce(rejection_reason, ''), (extract(epoch FROM created_at) * 1000)::bigint,
    coalesce(approved_node_id, '')";

type RequestRow = (
    String,
    String,
    String,
    String,
    serde_json::Value,
    serde_json::Value,
    Vec<String>,
    String,
    String,
    String,
    i64,
    String,
);

fn request_pb(row: RequestRow) -> pb::JoinRequest {
    let (id, cluster, token, fp, facts, caps, roles, status, reviewer, reason, created, node) = row;
    pb::JoinRequest {
        join_request_id: id,
        cluster_id: cluster,
        token_id: token,
        fingerprint: fp,
        facts: Some(facts_from_json(&facts)),
        capabilities: capabilities_from_json(&caps),
        requested_roles: roles,
        status: status_of(&status) as i32,
        reviewer,
        reason,
        created_at_unix_ms: created,
        node_id: node,
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
    let rows: Vec<RequestRow> = sqlx::query_as(&format!(
        "SELECT {REQUEST_COLUMNS} FROM node_join_requests
          WHERE ($1 = '' OR cluster_id = $1) AND ($2::text IS NULL OR status = $2)
            AND join_request_id > $3
          ORDER BY join_request_id LIMIT $4"
    ))
    .bind(&request.cluster_id)
    .bind(status_filter(request.status))
    .bind(&page.after)
    .bind(page.limit())
    .fetch_all(&ctx.pool)
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

async fn get_unchecked(pool: &sqlx::PgPool, id: &str) -> Result<pb::JoinRequest> {
    let row: Option<RequestRow> = sqlx::query_as(&format!(
        "SELECT {REQUEST_COLUMNS} FROM node_join_requests WHERE join_request_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.map(request_pb)
        .ok_or_else(|| Error::not_found("join request", id))
}

async fn request_cluster(pool: &sqlx::PgPool, id: &str) -> Result<String> {
    sqlx::query_scalar("SELECT cluster_id FROM node_join_requests WHERE join_request_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| Error::not_found("join request", id))
}

/// Marks pending requests older than [`JOIN_REQUEST_PENDING_MAX`] as
/// `expired` (they can no longer be approved; the key may join again).
/// Run before requests are listed (a poll reads a stale request as
/// expired, a new join of the same key marks it). Only ever takes trust away,
/// so it needs no fence.
pub async fn expire_stale(pool: &sqlx::PgPool) -> Result<u64> {
    let expired = sqlx::query(
        "UPDATE node_join_requests SET status = 'expired'
          WHERE status = 'pending' AND created_at <= now() - make_interval(secs => $1)",
    )
    .bind(JOIN_REQUEST_PENDING_MAX.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected();
    if expired > 0 {
        tracing::info!(expired, "stale join requests expired");
    }
    Ok(expired)
}

/// Locks a request and checks it is pending.
async fn lock_pending(
    tx: &mut sqlx::PgConnection,
    id: &str,
) -> Result<(String, String, Vec<u8>, serde_json::Value, String)> {
    type Row = (
        String,
        String,
        Vec<u8>,
        serde_json::Value,
        String,
        String,
        bool,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT status, fingerprint, public_key, reported_capabilities, node_name, cluster_id,
                created_at <= now() - make_interval(secs => $2)
           FROM node_join_requests WHERE join_request_id = $1 FOR UPDATE",
    )
    .bind(id)
    .bind(JOIN_REQUEST_PENDING_MAX.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, fp, key, caps, name, cluster, too_old)) = row else {
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
    Ok((fp, cluster, key, caps, name))
}

/// Writes a new active identity with a fresh certificate for `key`.
async fn issue_identity(
    conn: &mut sqlx::PgConnection,
    keys: &ClusterKeys,
    cluster_id: &str,
    node_id: &NodeId,
    key: &[u8; 32],
) -> Result<crate::keys::IssuedCertificate> {
    let issued = keys.issue_node_certificate(node_id, key, NODE_CERT_VALIDITY_DEFAULT)?;
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as f64)
            .unwrap_or(0.0)
    };
    sqlx::query(
        "INSERT INTO node_identities
             (cluster_id, node_id, public_key, fingerprint, certificate_serial,
              certificate_not_before, certificate_not_after, certificate_pem)
         VALUES ($1, $2, $3, $4, $5, to_timestamp($6 / 1000), to_timestamp($7 / 1000), $8)",
    )
    .bind(cluster_id)
    .bind(node_id.as_str())
    .bind(&key[..])
    .bind(crate::keys::public_key_fingerprint(key))
    .bind(&issued.serial_hex)
    .bind(ms(issued.not_before))
    .bind(ms(issued.not_after))
    .bind(&issued.chain_pem)
    .execute(&mut *conn)
    .await?;
    Ok(issued)
}

/// Approves a pending request (fenced): node, identity, membership,
/// capabilities and the node certificate, in one transaction.
pub async fn approve(
    ctx: &Context,
    principal: &Principal,
    request: &pb::ReviewJoinRequestRequest,
) -> Result<pb::JoinRequest> {
    let id = request.join_request_id.clone();
    let (action, check) = review_action(ctx, principal, &id, "join-request.approve").await;
    if let Err(e) = check {
        audit::record_refusal(&ctx.pool, &action, &e).await;
        return Err(e);
    }
    let requested_node = request.node_id.clone();
    let keys_dir = ctx.keys_dir.clone();
    let reviewer = principal.actor();
    fencing::run(&ctx.pool, &ctx.authority, action, move |tx, _fence| {
        Box::pin(async move {
            let (fingerprint, cluster_id, key, caps, hostname) = lock_pending(tx, &id).await?;
            let key: [u8; 32] = key.as_slice().try_into().map_err(|_| Error::Internal("stored key is not 32 bytes".into()))?;
            let node_id = if requested_node.is_empty() {
                format!("{DERIVED_NODE_ID_PREFIX}{}", &fingerprint[..DERIVED_NODE_ID_HEX])
            } else {
                requested_node
            };
            let node = NodeId::new(node_id.as_str())?;
            sqlx::query("INSERT INTO nodes (node_id, display_name) VALUES ($1, $2) ON CONFLICT (node_id) DO NOTHING")
                .bind(node.as_str())
                .bind(audit::cut(&hostname, TEXT_BYTES_MAX))
                .execute(&mut **tx)
                .await?;
            let (enrolled, member): (String, bool) = sqlx::query_as(
                "SELECT enrollment_status, EXISTS (SELECT 1 FROM cluster_memberships
                         WHERE cluster_id = $2 AND node_id = $1 AND membership_status = 'active')
                   FROM nodes WHERE node_id = $1",
            )
            .bind(node.as_str())
            .bind(&cluster_id)
            .fetch_one(&mut **tx)
            .await?;
            if enrolled != "enrolled" {
                return Err(Error::FailedPrecondition(format!("node {node} is revoked; approve with another --node-id")));
            }
            if member {
                return Err(Error::FailedPrecondition(format!(
                    "node {node} is already an active member of {cluster_id}; approve with another --node-id"
                )));
            }
            let keys = ClusterKeys::load(&keys_dir, &ClusterId::new(cluster_id.as_str())?)?;
            let issued = issue_identity(tx, &keys, &cluster_id, &node, &key).await?;
            sqlx::query("INSERT INTO cluster_memberships (cluster_id, node_id) VALUES ($1, $2)")
                .bind(&cluster_id)
                .bind(node.as_str())
                .execute(&mut **tx)
                .await?;
            for cap in capabilities_from_json(&caps) {
                sqlx::query(
                    "INSERT INTO node_capabilities (cluster_id, node_id, capability, detail, source)
                     VALUES ($1, $2, $3, $4, 'join')
                     ON CONFLICT (cluster_id, node_id, capability) DO UPDATE
                       SET detail = EXCLUDED.detail, reported_at = now()",
                )
                .bind(&cluster_id)
                .bind(node.as_str())
                .bind(&cap.name)
                .bind(&cap.detail)
                .execute(&mut **tx)
                .await?;
            }
            sqlx::query(
                "UPDATE node_join_requests SET status = 'approved', reviewed_by = $2, reviewed_at = now(),
                        approved_node_id = $3 WHERE join_request_id = $1",
            )
            .bind(&id)
            .bind(&reviewer)
            .bind(node.as_str())
            .execute(&mut **tx)
            .await?;
            tracing::info!(cluster_id = %cluster_id, node_id = %node, serial = %issued.serial_hex, "join request approved");
            Ok((id.clone(), serde_json::json!({"node_id": node.as_str(), "certificate_serial": issued.serial_hex})))
        })
    })
    .await?;
    get_unchecked(&ctx.pool, &request.join_request_id).await
}

/// The audit action of a review of request `id`, and the checks every
/// review makes before its fence: a platform principal, an existing request.
async fn review_action(
    ctx: &Context,
    principal: &Principal,
    id: &str,
    name: &'static str,
) -> (Action, Result<()>) {
    let cluster = request_cluster(&ctx.pool, id).await;
    let action = Action::new(
        principal.actor(),
        name,
        cluster.as_ref().ok().map(String::as_str),
        id,
    );
    let check = principal.require_platform().and(cluster.map(|_| ()));
    (action, check)
}

/// Rejects a pending request with a reason (fenced).
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
    if let Err(e) = precheck {
        audit::record_refusal(&ctx.pool, &action, &e).await;
        return Err(e);
    }
    let reason = request.reason.clone();
    let reviewer = principal.actor();
    fencing::run(&ctx.pool, &ctx.authority, action, move |tx, _fence| {
        Box::pin(async move {
            lock_pending(tx, &id).await?;
            sqlx::query(
                "UPDATE node_join_requests SET status = 'rejected', reviewed_by = $2, reviewed_at = now(),
                        rejection_reason = $3 WHERE join_request_id = $1",
            )
            .bind(&id)
            .bind(&reviewer)
            .bind(&reason)
            .execute(&mut **tx)
            .await?;
            Ok(((), serde_json::json!({"reason": reason})))
        })
    })
    .await?;
    get_unchecked(&ctx.pool, &request.join_request_id).await
}

/// The agent's poll: a fresh proof by the request's key; on approval the
/// identity, chain, trust root and bootstrap storage endpoints.
pub async fn status(
    ctx: &Context,
    request: &pb::GetJoinStatusRequest,
) -> Result<pb::GetJoinStatusResponse> {
    let action = Action::new(
        "anonymous",
        "join-request.status",
        ClusterId::new(request.cluster_id.as_str())
            .ok()
            .map(|c| c.to_string())
            .as_deref(),
        request.join_request_id.as_str(),
    );
    let result = async {
        let key = verify_proof(
            PURPOSE_STATUS,
            &request.cluster_id,
            &request.node_public_key,
            request.timestamp_unix_ms,
            &request.nonce,
            &request.proof,
            UnixMillis::now(),
        )?;
        let fingerprint = crate::keys::public_key_fingerprint(&key);
        // Polls are frequent: a stale pending request reads as expired
        // here without a write (list and a new join mark it).
        let row: Option<(String, String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT cluster_id, fingerprint,
                    CASE WHEN status = 'pending' AND created_at <= now() - make_interval(secs => $2)
                         THEN 'expired' ELSE status END,
                    coalesce(rejection_reason, ''), approved_node_id
               FROM node_join_requests WHERE join_request_id = $1",
        )
        .bind(&request.join_request_id)
        .bind(JOIN_REQUEST_PENDING_MAX.as_secs_f64())
        .fetch_optional(&ctx.pool)
        .await?;
        // A request of another key or cluster looks like no request at all.
        let (cluster_id, _, status, reason, node_id) = row
            .filter(|(c, fp, ..)| *c == request.cluster_id && *fp == fingerprint)
            .ok_or_else(|| Error::not_found("join request", request.join_request_id.as_str()))?;
        let mut response = pb::GetJoinStatusResponse {
            status: status_of(&status) as i32,
            reason,
            ..Default::default()
        };
        if let Some(node_id) = node_id {
            let identity: Option<(String, i64)> = sqlx::query_as(
                "SELECT certificate_pem, (extract(epoch FROM certificate_not_after) * 1000)::bigint
                   FROM node_identities
                  WHERE cluster_id = $1 AND node_id = $2 AND fingerprint = $3 AND identity_status = 'active'",
            )
            .bind(&cluster_id)
            .bind(&node_id)
            .bind(&fingerprint)
            .fetch_optional(&ctx.pool)
            .await?;
            let Some((chain, not_after)) = identity else {
                return Err(Error::FailedPrecondition(format!(
                    "node {node_id} was approved but its identity is no longer active (revoked or rotated)"
                )));
            };
            let trust_root: Vec<u8> = sqlx::query_scalar("SELECT trust_root FROM clusters WHERE cluster_id = $1")
                .bind(&cluster_id)
                .fetch_one(&ctx.pool)
                .await?;
            response.identity = Some(pb::NodeIdentity {
                node_id,
                cluster_id: cluster_id.clone(),
                certificate_chain_pem: chain,
                not_after_unix_ms: not_after,
            });
            response.trust_root = Some(
                pb::SignedTrustRoot::decode(trust_root.as_slice())
                    .map_err(|e| Error::Internal(format!("stored trust root: {e}")))?,
            );
            response.bootstrap_endpoints = crate::clusters::storage_endpoints(&ctx.pool, &cluster_id).await?;
        }
        Ok(response)
    }
    .await;
    // Polls are frequent: only refusals are audited.
    audit::audited(&ctx.pool, &action, result).await
}

/// The client certificate of an mTLS call, as renewal checks it.
#[derive(Clone, Debug)]
pub struct PeerCertificate {
    /// Cluster and node of its URI SAN.
    pub identity: PeerIdentity,
    /// Its serial (lowercase hex of the DER serial bytes).
    pub serial: String,
    /// Its raw public key (whose possession the handshake proved).
    pub public_key: Vec<u8>,
}

/// Certificate renewal over mTLS (fenced): the caller's certificate must be
/// the node's active one; the node may rotate its key (the proof is then
/// by the new key). The old identity becomes `rotated`.
pub async fn renew(
    ctx: &Context,
    peer: Option<PeerCertificate>,
    request: &pb::RenewCertificateRequest,
) -> Result<pb::RenewCertificateResponse> {
    let actor = peer
        .as_ref()
        .map(|p| format!("node:{}", p.identity.node_id))
        .unwrap_or_else(|| "anonymous".into());
    let cluster_ok = ClusterId::new(request.cluster_id.as_str())
        .ok()
        .map(|c| c.to_string());
    let action = Action::new(
        actor,
        "node.certificate.renew",
        cluster_ok.as_deref(),
        request.node_id.as_str(),
    );
    let precheck = async {
        let PeerCertificate {
            identity,
            serial,
            public_key,
        } = peer.clone().ok_or_else(|| {
            Error::Unauthenticated("renewal needs the node's current certificate (mTLS)".into())
        })?;
        if identity.cluster_id.as_str() != request.cluster_id
            || identity.node_id.as_str() != request.node_id
        {
            return Err(Error::PermissionDenied(format!(
                "certificate of {} / {} may not renew {} / {}",
                identity.cluster_id, identity.node_id, request.cluster_id, request.node_id
            )));
        }
        let current: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT public_key FROM node_identities
              WHERE cluster_id = $1 AND node_id = $2 AND certificate_serial = $3 AND public_key = $4
                AND identity_status = 'active'",
        )
        .bind(&request.cluster_id)
        .bind(&request.node_id)
        .bind(&serial)
        .bind(&public_key)
        .fetch_optional(&ctx.pool)
        .await?;
        let current = current.ok_or_else(|| {
            Error::PermissionDenied(
                "this certificate is not the node's active one (revoked or rotated)".into(),
            )
        })?;
        let key = if request.new_public_key.is_empty() {
            current.clone()
        } else {
            request.new_public_key.clone()
        };
        let key = verify_proof(
            PURPOSE_RENEW,
            &request.cluster_id,
            &key,
            request.timestamp_unix_ms,
            &request.nonce,
            &request.proof,
            UnixMillis::now(),
        )?;
        Ok((key, serial))
    }
    .await;
    let (key, serial) = match precheck {
        Ok(v) => v,
        Err(e) => {
            audit::record_refusal(&ctx.pool, &action, &e).await;
            return Err(e);
        }
    };
    let keys_dir = ctx.keys_dir.clone();
    let cluster_id = request.cluster_id.clone();
    let node_id = request.node_id.clone();
    let old_serial = serial.clone();
    let identity =     fencing::run(&ctx.pool, &ctx.authority, action, move |tx, _fence| {
        Box::pin(async move {
            let rotated = sqlx::query(
                "UPDATE node_identities SET identity_status = 'rotated', rotated_at = now()
                  WHERE cluster_id = $1 AND node_id = $2 AND certificate_serial = $3 AND identity_status = 'active'",
            )
            .bind(&cluster_id)
            .bind(&node_id)
            .bind(&serial)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if rotated != 1 {
                return Err(Error::PermissionDenied("this certificate is no longer the node's active one".into()));
            }
            let keys = ClusterKeys::load(&keys_dir, &ClusterId::new(cluster_id.as_str())?)?;
            let node = NodeId::new(node_id.as_str())?;
            let issued = issue_identity(tx, &keys, &cluster_id, &node, &key).await?;
            let not_after = issued
                .not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            let identity = pb::NodeIdentity {
                node_id: node_id.clone(),
                cluster_id: cluster_id.clone(),
                certificate_chain_pem: issued.chain_pem.clone(),
                not_after_unix_ms: not_after,
            };
            Ok((identity, serde_json::json!({"old_serial": serial, "new_serial": issued.serial_hex})))
        })
    })
    .await?;
    ctx.forget_serials(&[old_serial]);
    Ok(pb::RenewCertificateResponse {
        identity: Some(identity),
    })
}
