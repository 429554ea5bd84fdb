//! Node enrollment:
//! token + node public key + proof of possession → a `pending` join request
//! → fenced approval by a platform admin → node, identity, membership and
//! an X.509 node certificate from the cluster CA → the agent polls with a
//! fresh proof and receives identity, chain, trust root and bootstrap
//! storage endpoints. Certificate renewal runs over mTLS and is fenced.

use crate::audit::{self, Action};
use crate::auth::Principal;
use crate::context::Context;
use crate::db;
use crate::error::{Error, Result, TokenRefusal};
use crate::fencing;
use crate::keys::ClusterKeys;
use crate::limits::*;
use crate::page::Page;
use crate::secret;
use crate::tokens::{JOIN_TOKEN_PREFIX, TOKEN_SCOPE_JOIN, TOKEN_SCOPE_STORAGE};
use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message;
use rap_core::identity::{CONTROLPLANE_ID, IdentityKind, PeerIdentity};
use rap_proto::ids::{ClusterId, NodeId, RoleName};
use rap_proto::pb;
use rap_proto::time::UnixMillis;

pub use rap_proto::proof::{PURPOSE_JOIN, PURPOSE_RENEW, PURPOSE_STATUS, proof_message};

mod renewal;
mod review;

pub use renewal::{PeerCertificate, renew};
pub(crate) use review::check_reserved;
pub use review::{approve, expire_stale, get, list, reject, status_filter};
use review::{approve_locked, issue_identity};
/// Prefix of node ids derived from a key fingerprint.
pub const DERIVED_NODE_ID_PREFIX: &str = "n-";
/// Hex characters of the fingerprint in a derived node id.
pub const DERIVED_NODE_ID_HEX: usize = 12;

/// Applies the caller-kind table ([`rap_authority::access`]) to a
/// certificate-authenticated call of the control plane: agents heartbeat,
/// agents and storage nodes renew their own certificates, nobody else.
pub fn admit_caller(rpc: rap_authority::access::Rpc, identity: &PeerIdentity) -> Result<()> {
    use rap_authority::access::{Caller, decide_at_control_plane};
    use rap_core::identity::CertificateFacts;
    let caller = Caller::Certified(CertificateFacts {
        identity: identity.clone(),
        serial_hex: String::new(),
        not_before: std::time::UNIX_EPOCH,
        not_after: std::time::UNIX_EPOCH,
    });
    decide_at_control_plane(rpc, &caller).map_err(|e| Error::PermissionDenied(e.to_string()))
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
                rap_core::tls::server_sans(request.server_names.iter().map(String::as_str))
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
#[tracing::instrument(skip_all, fields(cluster_id = crate::audit::field(&request.cluster_id)))]
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
        let Some(db::join::TokenCheck {
            token_hash: stored,
            cluster_id: token_cluster,
            revoked,
            expired,
            used_count: used,
            max_uses: max,
            scope,
            storage_node_id: storage_node,
        }) = db::join::lock_token(&mut tx, &token_id).await?
        else {
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
        db::join::use_token(&mut tx, &token_id).await?;
        // This key's own stale pending request no longer blocks it.
        db::join::expire_stale(
            &mut tx,
            Some((request.cluster_id.as_str(), fingerprint.as_str())),
            JOIN_REQUEST_PENDING_MAX,
        )
        .await?;
        let id = format!("jr-{}", secret::random_id()?);
        let (requested_node, server_names) = match &joining {
            Joining::Agent => (None, Vec::new()),
            Joining::Storage { node_id, server_names } => (Some(node_id.to_string()), server_names.clone()),
        };
        let capabilities = capabilities_json(&request.capabilities);
        let facts_value = facts_json(&facts);
        let inserted = db::join::insert_request(
            &mut tx,
            db::join::NewRequest {
                join_request_id: &id,
                cluster_id: &request.cluster_id,
                token_id: &token_id,
                node_name: &facts.hostname,
                fingerprint: &fingerprint,
                public_key: &key[..],
                proof_nonce: &request.nonce,
                reported_capabilities: &capabilities,
                reported_facts: &facts_value,
                requested_roles: &request.requested_roles,
                kind: joining.kind(),
                requested_node_id: requested_node.as_deref(),
                server_names: &server_names,
            },
        )
        .await?;
        match inserted {
            db::join::RequestInserted::Yes => {}
            db::join::RequestInserted::NonceUsed => {
                return Err(Error::Replay("this join request (key and nonce) was submitted before".into()));
            }
            db::join::RequestInserted::PendingExists => {
                return Err(Error::Replay(
                    "a join request for this key is already pending; wait for its review".into(),
                ));
            }
        }
        if let Some(override_id) = override_id {
            db::join::use_override(&mut tx, override_id, &id).await?;
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
                approve_locked(
                    &mut tx,
                    crate::clusters::PreloadedKeys::later(&ctx.keys_dir),
                    ctx.node_cert_validity,
                    &id,
                    "",
                    &approval.actor,
                )
                .await?;
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
    let Some(db::nodes::RevokedKey {
        cluster_id: revoked_cluster,
        node_id: revoked_node,
    }) = db::nodes::revoked_key(tx, fingerprint).await?
    else {
        return Ok(None);
    };
    let allowed = db::join::lock_open_override(tx, cluster_id, fingerprint).await?;
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
#[tracing::instrument(skip_all, fields(cluster_id = crate::audit::field(&request.cluster_id)))]
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
        let inserted = db::join::insert_override(
            &mut tx,
            &request.cluster_id,
            &fingerprint,
            &principal.actor(),
            request.reason.trim(),
        )
        .await?;
        if !inserted {
            return Err(Error::AlreadyExists {
                kind: "unused override for this key",
                id: fingerprint,
            });
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
    let rows = db::nodes::key_history(conn, fingerprint, KEY_HISTORY_MAX).await?;
    Ok(rows
        .into_iter()
        .map(|row| pb::KeyHistoryEntry {
            cluster_id: row.cluster_id,
            node_id: row.node_id,
            kind: kind_pb(&row.kind) as i32,
            status: row.identity_status,
            issued_at_unix_ms: row.issued_at_unix_ms,
            revoked_at_unix_ms: row.revoked_at_unix_ms.unwrap_or(0),
        })
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

/// The agent's poll: a fresh proof by the request's key; on approval the
/// identity, chain, trust root and bootstrap storage endpoints.
#[tracing::instrument(skip_all, fields(cluster_id = crate::audit::field(&request.cluster_id)))]
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
        let mut conn = ctx.pool.acquire().await?;
        let row = db::join::poll(&mut conn, &request.join_request_id, JOIN_REQUEST_PENDING_MAX).await?;
        // A request of another key or cluster looks like no request at all.
        let db::join::Poll {
            cluster_id,
            status,
            reason,
            approved_node_id: node_id,
            ..
        } = row
            .filter(|row| row.cluster_id == request.cluster_id && row.fingerprint == fingerprint)
            .ok_or_else(|| Error::not_found("join request", request.join_request_id.as_str()))?;
        let mut response = pb::GetJoinStatusResponse {
            status: status_of(&status) as i32,
            reason,
            ..Default::default()
        };
        if let Some(node_id) = node_id {
            let identity =
                db::nodes::active_certificate(&mut conn, &cluster_id, &node_id, &fingerprint).await?;
            let Some(db::nodes::ActiveCertificate {
                certificate_pem: chain,
                not_after_unix_ms: not_after,
            }) = identity
            else {
                return Err(Error::FailedPrecondition(format!(
                    "node {node_id} was approved but its identity is no longer active (revoked or rotated)"
                )));
            };
            let trust_root = db::clusters::trust_root(&mut conn, &cluster_id).await?;
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
            response.bootstrap_endpoints = crate::clusters::storage_endpoints(&mut conn, &cluster_id).await?;
        }
        Ok(response)
    }
    .await;
    // Polls are frequent: only refusals are audited.
    audit::audited(&ctx.pool, &action, result).await
}
