//! Node enrollment:
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
use crate::tokens::{JOIN_TOKEN_PREFIX, TOKEN_SCOPE_JOIN, TOKEN_SCOPE_STORAGE};
use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message;
use rap_authority::identity::{CONTROLPLANE_ID, IdentityKind, PeerIdentity};
use rap_proto::ids::{ClusterId, NodeId, RoleName};
use rap_proto::pb;
use rap_proto::time::UnixMillis;

pub use rap_proto::proof::{PURPOSE_JOIN, PURPOSE_RENEW, PURPOSE_STATUS, proof_message};
/// Prefix of node ids derived from a key fingerprint.
pub const DERIVED_NODE_ID_PREFIX: &str = "n-";
/// Hex characters of the fingerprint in a derived node id.
pub const DERIVED_NODE_ID_HEX: usize = 12;

/// Applies the caller-kind table ([`rap_authority::access`]) to a
/// certificate-authenticated call of the control plane: agents heartbeat,
/// agents and storage nodes renew their own certificates, nobody else.
pub fn admit_caller(rpc: rap_authority::access::Rpc, identity: &PeerIdentity) -> Result<()> {
    use rap_authority::access::{Caller, NoGroup, decide};
    use rap_authority::identity::CertificateFacts;
    let caller = Caller::Certified(CertificateFacts {
        identity: identity.clone(),
        serial_hex: String::new(),
        not_before: std::time::UNIX_EPOCH,
        not_after: std::time::UNIX_EPOCH,
    });
    decide(rpc, &caller, false, &NoGroup(identity.cluster_id.clone()))
        .map_err(|e| Error::PermissionDenied(e.to_string()))
}

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

/// What a join request asks to become, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Joining {
    /// An agent (its id is given at approval, or derived from its key).
    Agent,
    /// Storage node `node_id` with these server names.
    Storage {
        node_id: NodeId,
        server_names: Vec<String>,
    },
}

impl Joining {
    fn of(request: &pb::SubmitJoinRequestRequest) -> Result<Joining> {
        match pb::NodeKind::try_from(request.kind).unwrap_or(pb::NodeKind::Unspecified) {
            pb::NodeKind::Unspecified | pb::NodeKind::Agent => {
                if !request.node_id.is_empty() || !request.server_names.is_empty() {
                    return Err(Error::invalid(
                        "an agent's join request names no node id and no server names (the id is given at approval)",
                    ));
                }
                Ok(Joining::Agent)
            }
            pb::NodeKind::Storage => {
                let node_id = NodeId::new(request.node_id.as_str())?;
                if node_id.as_str() == CONTROLPLANE_ID {
                    return Err(Error::ReservedId(format!(
                        "{CONTROLPLANE_ID:?} is the control plane's id"
                    )));
                }
                if !request.requested_roles.is_empty() || !request.capabilities.is_empty() {
                    return Err(Error::invalid(
                        "a storage node requests no roles and reports no capabilities",
                    ));
                }
                // Checks count, form (DNS name or IP address) and length.
                rap_authority::tls::server_sans(request.server_names.iter().map(String::as_str))
                    .map_err(|e| Error::invalid(format!("server names: {e}")))?;
                Ok(Joining::Storage {
                    node_id,
                    server_names: request
                        .server_names
                        .iter()
                        .map(|n| n.to_ascii_lowercase())
                        .collect(),
                })
            }
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Joining::Agent => KIND_NODE,
            Joining::Storage { .. } => KIND_STORAGE,
        }
    }
}

/// `kind` of an agent's join request and identity in PostgreSQL.
pub const KIND_NODE: &str = "node";
/// `kind` of a storage node's join request and identity in PostgreSQL.
pub const KIND_STORAGE: &str = "storage";

/// A new join request: validates the proof, then the token (hash in
/// constant time, revocation, expiry, cluster scope, kind, remaining uses)
/// atomically with `used_count`, refuses a key whose certificate was
/// revoked (unless a platform owner allowed it once), and stores the
/// request as `pending`. A storage node's request is approved at once
/// while its cluster has no authority group yet (the first voters: there
/// is nothing to fence against); otherwise it waits for an operator like
/// an agent's.
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
        let joining = Joining::of(request)?;
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
        type TokenRow = (Vec<u8>, String, bool, bool, i32, i32, String, Option<String>);
        let row: Option<TokenRow> = sqlx::query_as(
            "SELECT token_hash, cluster_id, revoked_at IS NOT NULL, expires_at <= now(), used_count, max_uses,
                    scope, storage_node_id
               FROM node_join_tokens WHERE token_id = $1 FOR UPDATE",
        )
        .bind(&token_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((stored, token_cluster, revoked, expired, used, max, scope, storage_node)) = row else {
            return Err(Error::Token(TokenRefusal::Unknown));
        };
        if !secret::hash_matches(&hash, &stored) {
            return Err(Error::Token(TokenRefusal::Unknown));
        }
        if token_cluster != request.cluster_id {
            return Err(Error::Token(TokenRefusal::WrongCluster));
        }
        let scope_matches = match &joining {
            Joining::Agent => scope == TOKEN_SCOPE_JOIN,
            Joining::Storage { node_id, .. } => {
                scope == TOKEN_SCOPE_STORAGE && storage_node.as_deref() == Some(node_id.as_str())
            }
        };
        if !scope_matches {
            return Err(Error::Token(TokenRefusal::WrongScope));
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
        let override_id = check_key_not_revoked(&mut tx, &request.cluster_id, &fingerprint).await?;
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
        let (requested_node, server_names) = match &joining {
            Joining::Agent => (None, Vec::new()),
            Joining::Storage { node_id, server_names } => (Some(node_id.to_string()), server_names.clone()),
        };
        let inserted = sqlx::query(
            "INSERT INTO node_join_requests
                 (join_request_id, cluster_id, token_id, node_name, fingerprint, public_key, proof_nonce,
                  reported_capabilities, reported_facts, requested_roles, kind, requested_node_id, server_names)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
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
        .bind(joining.kind())
        .bind(&requested_node)
        .bind(&server_names)
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
        if let Some(override_id) = override_id {
            sqlx::query(
                "UPDATE revoked_key_overrides SET used_by_request = $2, used_at = now() WHERE override_id = $1",
            )
            .bind(override_id)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        }
        action.target = id.clone();
        audit::record_ok(
            &mut tx,
            &action,
            None,
            serde_json::json!({
                "fingerprint": fingerprint, "hostname": facts.hostname, "kind": joining.kind(),
                "requested_node_id": requested_node, "revoked_key_override": override_id,
            }),
        )
        .await?;
        let mut status = pb::JoinRequestStatus::Pending;
        if matches!(joining, Joining::Storage { .. })
            && crate::clusters::current_term(&mut tx, &request.cluster_id).await?.is_none()
        {
            // The first voters: no authority group exists to fence this
            // approval; the single-use token made for this node id is the
            // operator's decision.
            let approval = Action::new(
                format!("storage-token:{token_id}"),
                "join-request.approve",
                Some(&request.cluster_id),
                &id,
            );
            let (_, mut details) =
                approve_locked(&mut tx, &ctx.keys_dir, ctx.node_cert_validity, &id, "", &approval.actor).await?;
            details["unfenced"] = serde_json::json!(
                "storage bootstrap token: the cluster's authority group does not exist yet"
            );
            audit::record_ok(&mut tx, &approval, None, details).await?;
            status = pb::JoinRequestStatus::Approved;
        }
        tx.commit().await?;
        tracing::info!(cluster_id = %request.cluster_id, join_request_id = %id, kind = joining.kind(), status = ?status, "join request submitted");
        Ok(pb::SubmitJoinRequestResponse {
            join_request_id: id,
            status: status as i32,
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// Refuses a key that had a revoked certificate in any cluster, unless a
/// platform owner allowed it once for `cluster_id`; returns that override
/// (locked; the caller marks it used).
async fn check_key_not_revoked(
    tx: &mut sqlx::PgConnection,
    cluster_id: &str,
    fingerprint: &str,
) -> Result<Option<i64>> {
    let revoked: Option<(String, String)> = sqlx::query_as(
        "SELECT cluster_id, node_id FROM node_identities
          WHERE fingerprint = $1 AND identity_status = 'revoked' ORDER BY identity_id LIMIT 1",
    )
    .bind(fingerprint)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((revoked_cluster, revoked_node)) = revoked else {
        return Ok(None);
    };
    let allowed: Option<i64> = sqlx::query_scalar(
        "SELECT override_id FROM revoked_key_overrides
          WHERE cluster_id = $1 AND fingerprint = $2 AND used_at IS NULL FOR UPDATE",
    )
    .bind(cluster_id)
    .bind(fingerprint)
    .fetch_optional(&mut *tx)
    .await?;
    match allowed {
        Some(id) => Ok(Some(id)),
        None => Err(Error::KeyRevoked(format!(
            "this key's certificate as {revoked_node} in {revoked_cluster} was revoked; a platform owner must allow it first (rapctl join-request allow-revoked-key --cluster {cluster_id} --fingerprint {fingerprint} --reason ...)"
        ))),
    }
}

/// A platform owner lets a key whose certificate was revoked submit one
/// more join request to `cluster_id` (audited). Refused for a key that
/// was never revoked, and while an earlier permission is unused.
pub async fn allow_revoked_key(
    ctx: &Context,
    principal: &Principal,
    request: &pb::AllowRevokedKeyRequest,
) -> Result<pb::AllowRevokedKeyResponse> {
    let action = Action::new(
        principal.actor(),
        "join-request.allow-revoked-key",
        ClusterId::new(request.cluster_id.as_str())
            .ok()
            .map(|c| c.to_string())
            .as_deref(),
        audit::cut(&request.fingerprint, 64).to_string(),
    );
    let result = async {
        principal.require_owner()?;
        ClusterId::new(request.cluster_id.as_str())?;
        let fingerprint = request.fingerprint.to_ascii_lowercase();
        if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid("a key fingerprint is 64 hex characters"));
        }
        if request.reason.trim().is_empty() {
            return Err(Error::invalid("an override needs a reason"));
        }
        if request.reason.len() > crate::limits::TEXT_BYTES_MAX {
            return Err(Error::Oversize {
                what: "reason",
                limit: crate::limits::TEXT_BYTES_MAX,
                got: request.reason.len(),
            });
        }
        let mut tx = ctx.pool.begin().await?;
        crate::clusters::require_exists(&mut tx, &request.cluster_id).await?;
        let history = key_history(&mut tx, &fingerprint).await?;
        if !history.iter().any(|entry| entry.status == "revoked") {
            return Err(Error::FailedPrecondition(format!(
                "no certificate of key {fingerprint} was revoked; it needs no override"
            )));
        }
        let inserted = sqlx::query(
            "INSERT INTO revoked_key_overrides (cluster_id, fingerprint, allowed_by, reason)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&request.cluster_id)
        .bind(&fingerprint)
        .bind(principal.actor())
        .bind(request.reason.trim())
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e, "revoked_key_overrides_one_open") => {
                return Err(Error::AlreadyExists {
                    kind: "unused override for this key",
                    id: fingerprint,
                });
            }
            Err(e) => return Err(e.into()),
        }
        audit::record_ok(
            &mut tx,
            &action,
            None,
            serde_json::json!({"fingerprint": fingerprint, "reason": request.reason.trim()}),
        )
        .await?;
        tx.commit().await?;
        Ok(pb::AllowRevokedKeyResponse {
            fingerprint,
            key_history: history,
        })
    }
    .await;
    audit::audited(&ctx.pool, &action, result).await
}

/// Every identity a key (by fingerprint) had, in any cluster, oldest
/// first, at most [`KEY_HISTORY_MAX`].
async fn key_history(
    conn: &mut sqlx::PgConnection,
    fingerprint: &str,
) -> Result<Vec<pb::KeyHistoryEntry>> {
    let rows: Vec<(String, String, String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT cluster_id, node_id, kind, identity_status,
                (extract(epoch FROM created_at) * 1000)::bigint,
                (extract(epoch FROM revoked_at) * 1000)::bigint
           FROM node_identities WHERE fingerprint = $1 ORDER BY identity_id LIMIT $2",
    )
    .bind(fingerprint)
    .bind(KEY_HISTORY_MAX)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(cluster_id, node_id, kind, status, issued, revoked)| pb::KeyHistoryEntry {
                cluster_id,
                node_id,
                kind: kind_pb(&kind) as i32,
                status,
                issued_at_unix_ms: issued,
                revoked_at_unix_ms: revoked.unwrap_or(0),
            },
        )
        .collect())
}

fn kind_pb(kind: &str) -> pb::NodeKind {
    match kind {
        KIND_STORAGE => pb::NodeKind::Storage,
        _ => pb::NodeKind::Agent,
    }
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
    coalesce(approved_node_id, ''), kind, coalesce(requested_node_id, ''), server_names";

/// A `node_join_requests` row as [`REQUEST_COLUMNS`] selects it.
struct RequestRow {
    join_request_id: String,
    cluster_id: String,
    token_id: String,
    fingerprint: String,
    reported_facts: serde_json::Value,
    reported_capabilities: serde_json::Value,
    requested_roles: Vec<String>,
    status: String,
    reviewer: String,
    reason: String,
    created_at_unix_ms: i64,
    node_id: String,
    kind: String,
    requested_node_id: String,
    server_names: Vec<String>,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for RequestRowByPosition {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> sqlx::Result<Self> {
        use sqlx::Row;
        Ok(RequestRowByPosition(RequestRow {
            join_request_id: row.try_get(0)?,
            cluster_id: row.try_get(1)?,
            token_id: row.try_get(2)?,
            fingerprint: row.try_get(3)?,
            reported_facts: row.try_get(4)?,
            reported_capabilities: row.try_get(5)?,
            requested_roles: row.try_get(6)?,
            status: row.try_get(7)?,
            reviewer: row.try_get(8)?,
            reason: row.try_get(9)?,
            created_at_unix_ms: row.try_get(10)?,
            node_id: row.try_get(11)?,
            kind: row.try_get(12)?,
            requested_node_id: row.try_get(13)?,
            server_names: row.try_get(14)?,
        }))
    }
}

/// [`RequestRow`] read by column position (the select list has
/// expressions, not plain column names).
struct RequestRowByPosition(RequestRow);

fn request_pb(RequestRowByPosition(row): RequestRowByPosition) -> pb::JoinRequest {
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
    let rows: Vec<RequestRowByPosition> = sqlx::query_as(&format!(
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

/// One join request with its key's history.
async fn get_unchecked(pool: &sqlx::PgPool, id: &str) -> Result<pb::JoinRequest> {
    let mut conn = pool.acquire().await?;
    let row: Option<RequestRowByPosition> = sqlx::query_as(&format!(
        "SELECT {REQUEST_COLUMNS} FROM node_join_requests WHERE join_request_id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let mut request = row
        .map(request_pb)
        .ok_or_else(|| Error::not_found("join request", id))?;
    request.key_history = key_history(&mut conn, &request.fingerprint).await?;
    Ok(request)
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

/// A pending join request, locked.
struct Pending {
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
async fn lock_pending(tx: &mut sqlx::PgConnection, id: &str) -> Result<Pending> {
    type Row = (
        String,
        String,
        Vec<u8>,
        serde_json::Value,
        String,
        String,
        bool,
        String,
        Option<String>,
        Vec<String>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT status, fingerprint, public_key, reported_capabilities, node_name, cluster_id,
                created_at <= now() - make_interval(secs => $2), kind, requested_node_id, server_names
           FROM node_join_requests WHERE join_request_id = $1 FOR UPDATE",
    )
    .bind(id)
    .bind(JOIN_REQUEST_PENDING_MAX.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((
        status,
        fingerprint,
        public_key,
        capabilities,
        hostname,
        cluster_id,
        too_old,
        kind,
        requested_node_id,
        server_names,
    )) = row
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
    let held: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM node_identities WHERE node_id = $1 AND kind = $2)",
    )
    .bind(node_id.as_str())
    .bind(other_kind)
    .fetch_one(&mut *conn)
    .await?;
    let storage_elsewhere: bool = kind == KIND_NODE
        && sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM storage_nodes WHERE node_id = $1)
                 OR EXISTS (SELECT 1 FROM node_join_tokens
                             WHERE storage_node_id = $1 AND revoked_at IS NULL
                               AND used_count < max_uses AND expires_at > now())",
        )
        .bind(node_id.as_str())
        .fetch_one(&mut *conn)
        .await?;
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
async fn issue_identity(
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
    sqlx::query(
        "INSERT INTO node_identities
             (cluster_id, node_id, public_key, fingerprint, certificate_serial,
              certificate_not_before, certificate_not_after, certificate_pem, kind)
         VALUES ($1, $2, $3, $4, $5, to_timestamp($6 / 1000), to_timestamp($7 / 1000), $8, $9)",
    )
    .bind(cluster_id)
    .bind(node_id.as_str())
    .bind(&key[..])
    .bind(crate::keys::public_key_fingerprint(key))
    .bind(&issued.serial_hex)
    .bind(ms(issued.not_before))
    .bind(ms(issued.not_after))
    .bind(&issued.chain_pem)
    .bind(kind)
    .execute(&mut *conn)
    .await?;
    Ok(issued)
}

/// Approves a pending request (fenced): node, identity, membership,
/// capabilities and the node certificate (an agent's), or the storage
/// identity (a storage node's), in one transaction.
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
    let validity = ctx.node_cert_validity;
    let reviewer = principal.actor();
    fencing::run(&ctx.pool, &ctx.authority, action, move |tx, _fence| {
        Box::pin(async move {
            approve_locked(tx, &keys_dir, validity, &id, &requested_node, &reviewer).await
        })
    })
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
async fn approve_locked(
    tx: &mut sqlx::PgConnection,
    keys_dir: &std::path::Path,
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
    sqlx::query("INSERT INTO nodes (node_id, display_name) VALUES ($1, $2) ON CONFLICT (node_id) DO NOTHING")
        .bind(node.as_str())
        .bind(audit::cut(&pending.hostname, TEXT_BYTES_MAX))
        .execute(&mut *tx)
        .await?;
    let (enrolled, member, has_identity): (String, bool, bool) = sqlx::query_as(
        "SELECT enrollment_status,
                EXISTS (SELECT 1 FROM cluster_memberships
                         WHERE cluster_id = $2 AND node_id = $1 AND membership_status = 'active'),
                EXISTS (SELECT 1 FROM node_identities
                         WHERE cluster_id = $2 AND node_id = $1 AND identity_status = 'active')
           FROM nodes WHERE node_id = $1",
    )
    .bind(node.as_str())
    .bind(&cluster_id)
    .fetch_one(&mut *tx)
    .await?;
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
    let keys = ClusterKeys::load(keys_dir, &ClusterId::new(cluster_id.as_str())?)?;
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
    sqlx::query("INSERT INTO cluster_memberships (cluster_id, node_id) VALUES ($1, $2)")
        .bind(&cluster_id)
        .bind(node.as_str())
        .execute(&mut *tx)
        .await?;
    if !storage {
        for cap in capabilities_from_json(&pending.capabilities) {
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
            .execute(&mut *tx)
            .await?;
        }
    }
    sqlx::query(
        "UPDATE node_join_requests SET status = 'approved', reviewed_by = $2, reviewed_at = now(),
                approved_node_id = $3 WHERE join_request_id = $1",
    )
    .bind(id)
    .bind(reviewer)
    .bind(node.as_str())
    .execute(&mut *tx)
    .await?;
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
async fn review_action(
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
        rap_proto::ids::JoinRequestId::new(request.join_request_id.as_str())?;
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
    /// Cluster, kind and id of its URI SAN.
    pub identity: PeerIdentity,
    /// Its serial (lowercase hex of the DER serial bytes).
    pub serial: String,
    /// Its raw public key (whose possession the handshake proved).
    pub public_key: Vec<u8>,
    /// Its DNS name and IP address SANs (a storage node's server names,
    /// which a renewal keeps).
    pub server_names: Vec<String>,
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
            server_names,
        } = peer.clone().ok_or_else(|| {
            Error::Unauthenticated("renewal needs the node's current certificate (mTLS)".into())
        })?;
        admit_caller(rap_authority::access::Rpc::RenewCertificate, &identity)?;
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
        Ok((key, serial, identity, server_names))
    }
    .await;
    let (key, serial, identity, server_names) = match precheck {
        Ok(v) => v,
        Err(e) => {
            audit::record_refusal(&ctx.pool, &action, &e).await;
            return Err(e);
        }
    };
    let rotation = Rotation {
        keys_dir: ctx.keys_dir.clone(),
        validity: ctx.node_cert_validity,
        serial: serial.clone(),
        identity: identity.clone(),
        key,
        server_names,
    };
    let identity = if identity.kind == IdentityKind::Storage {
        // A storage node must be able to renew while its group has no
        // quorum: promotion needs the survivors' certificates. Renewing
        // keeps the same node, kind and names and requires the active
        // certificate, so it grants nothing new; it is audited.
        fencing::run_unfenced(
            &ctx.pool,
            action,
            "storage renewal must work while the group has no quorum",
            move |tx| Box::pin(async move { rotation.apply(tx).await }),
        )
        .await?
    } else {
        fencing::run(&ctx.pool, &ctx.authority, action, move |tx, _fence| {
            Box::pin(async move { rotation.apply(tx).await })
        })
        .await?
    };
    let old_serial = serial;
    ctx.forget_serials(&[old_serial]);
    Ok(pb::RenewCertificateResponse {
        identity: Some(identity),
    })
}

/// One renewal: the caller's active certificate becomes `rotated` and a
/// new one is issued for `key` (the same identity and server names).
struct Rotation {
    keys_dir: std::path::PathBuf,
    validity: std::time::Duration,
    serial: String,
    identity: PeerIdentity,
    key: [u8; 32],
    server_names: Vec<String>,
}

impl Rotation {
    async fn apply(
        self,
        tx: &mut sqlx::PgConnection,
    ) -> Result<(pb::NodeIdentity, serde_json::Value)> {
        let cluster_id = self.identity.cluster_id.to_string();
        let node_id = self.identity.node_id.to_string();
        let rotated = sqlx::query(
            "UPDATE node_identities SET identity_status = 'rotated', rotated_at = now()
              WHERE cluster_id = $1 AND node_id = $2 AND certificate_serial = $3 AND identity_status = 'active'",
        )
        .bind(&cluster_id)
        .bind(&node_id)
        .bind(&self.serial)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if rotated != 1 {
            return Err(Error::PermissionDenied(
                "this certificate is no longer the node's active one".into(),
            ));
        }
        // Every control plane process drops the old serial on commit.
        crate::coordination::notify_identities_changed(tx, std::slice::from_ref(&self.serial))
            .await?;
        let keys = ClusterKeys::load(&self.keys_dir, &self.identity.cluster_id)?;
        let issued = issue_identity(
            tx,
            &keys,
            &self.identity,
            &self.key,
            &self.server_names,
            self.validity,
        )
        .await?;
        let not_after = issued
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let identity = pb::NodeIdentity {
            node_id,
            cluster_id,
            certificate_chain_pem: issued.chain_pem.clone(),
            not_after_unix_ms: not_after,
        };
        Ok((
            identity,
            serde_json::json!({"old_serial": self.serial, "new_serial": issued.serial_hex, "kind": self.identity.kind.as_str()}),
        ))
    }
}
