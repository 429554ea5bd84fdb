//! Enrollment end to end against a real PostgreSQL and a real 3-voter
//! authority group: the happy path, every bad input (typed, nothing
//! changed, refusal audited), concurrency, and minority refusal.

use rap_controlplane::error::Error;
use rap_controlplane::{clusters, enrollment, nodes, tokens};
use rap_proto::pb;
use rap_testkit::platform::{AgentKey, Platform};

fn approve_request(id: &str) -> pb::ReviewJoinRequestRequest {
    pb::ReviewJoinRequestRequest {
        join_request_id: id.to_string(),
        ..Default::default()
    }
}

// Goal: the whole flow works for a real user. Method: token → join request
// with proof → pending → fenced approval → the agent's poll returns an
// identity whose certificate names the node, carries the node's own key
// and chains to the cluster CA, plus trust root and storage endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_approve_and_poll_end_to_end() {
    let p = Platform::start().await;
    let token = tokens::create(
        &p.ctx,
        &p.owner,
        &pb::CreateJoinTokenRequest {
            cluster_id: p.cluster.clone(),
            ttl_seconds: 600,
            max_uses: 1,
            storage_node_id: String::new(),
        },
    )
    .await
    .unwrap();
    assert!(token.raw_token.starts_with("rapjt."));
    assert!(
        token.join_command.contains(&token.raw_token)
            && token.join_command.contains(&token.ca_fingerprint)
    );
    // The raw secret is stored nowhere.
    let secret = token.raw_token.rsplit('.').next().unwrap().to_string();
    let leaked = p.count(&format!("SELECT count(*) FROM node_join_tokens WHERE encode(token_hash, 'hex') = '{secret}' OR token_id = '{secret}'")).await;
    assert_eq!(leaked, 0);

    let agent = AgentKey::generate();
    let submitted = enrollment::submit(
        &p.ctx,
        &agent.join_request(&p.cluster, &token.raw_token, &["can_run_rdp_worker"]),
    )
    .await
    .unwrap();
    assert_eq!(submitted.status, pb::JoinRequestStatus::Pending as i32);
    let poll = enrollment::status(
        &p.ctx,
        &agent.status_request(&p.cluster, &submitted.join_request_id),
    )
    .await
    .unwrap();
    assert_eq!(poll.status, pb::JoinRequestStatus::Pending as i32);
    assert!(poll.identity.is_none());

    let approved = enrollment::approve(
        &p.ctx,
        &p.owner,
        &approve_request(&submitted.join_request_id),
    )
    .await
    .unwrap();
    assert_eq!(approved.status, pb::JoinRequestStatus::Approved as i32);
    assert_eq!(approved.reviewer, p.owner.id);
    let node_id = approved.node_id.clone();

    let poll = enrollment::status(
        &p.ctx,
        &agent.status_request(&p.cluster, &submitted.join_request_id),
    )
    .await
    .unwrap();
    assert_eq!(poll.status, pb::JoinRequestStatus::Approved as i32);
    let identity = poll.identity.unwrap();
    assert_eq!(identity.node_id, node_id);
    use rustls::pki_types::pem::PemObject;
    let pems: Vec<rustls::pki_types::CertificateDer> =
        rustls::pki_types::CertificateDer::pem_slice_iter(
            identity.certificate_chain_pem.as_bytes(),
        )
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(pems.len(), 2, "node certificate then cluster CA");
    let peer = rap_core::identity::PeerIdentity::from_cert_der(pems[0].as_ref()).unwrap();
    assert_eq!(
        (peer.cluster_id.as_str(), peer.node_id.as_str()),
        (p.cluster.as_str(), node_id.as_str())
    );
    let (_, cert) = x509_parser::parse_x509_certificate(pems[0].as_ref()).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        &agent.public()[..]
    );
    let (_, ca) = x509_parser::parse_x509_certificate(pems[1].as_ref()).unwrap();
    cert.verify_signature(Some(ca.public_key())).unwrap();
    assert!(poll.trust_root.is_some());
    assert_eq!(poll.bootstrap_endpoints.len(), 3);

    // The rows, and the audit trail with the fence.
    let q = |t: &str| format!("SELECT count(*) FROM {t} WHERE node_id = '{node_id}'");
    assert_eq!(p.count(&q("cluster_memberships")).await, 1);
    assert_eq!(
        p.count(&(q("node_identities") + " AND identity_status = 'active'"))
            .await,
        1
    );
    assert_eq!(
        p.count(&(q("node_capabilities") + " AND capability = 'can_run_rdp_worker'"))
            .await,
        1
    );
    let fenced = p.count("SELECT count(*) FROM cluster_audit_events WHERE action = 'join-request.approve' AND result = 'ok' AND fence_term = 1 AND fence_seq > 0").await;
    assert_eq!(fenced, 1);
    let (term, seq): (i64, i64) = sqlx::query_as("SELECT authority_term, last_seq FROM cluster_authority_terms WHERE cluster_id = $1 AND ended_at IS NULL")
        .bind(&p.cluster)
        .fetch_one(&p.ctx.pool)
        .await
        .unwrap();
    assert_eq!(term, 1);
    assert!(seq >= 1);
}

async fn refused_submit(p: &Platform, request: &pb::SubmitJoinRequestRequest) -> Error {
    let before = p.count("SELECT count(*) FROM node_join_requests").await;
    let uses = p
        .count("SELECT coalesce(sum(used_count), 0) FROM node_join_tokens")
        .await;
    let error = enrollment::submit(&p.ctx, request).await.unwrap_err();
    assert_eq!(
        p.count("SELECT count(*) FROM node_join_requests").await,
        before,
        "{error}: a request was stored"
    );
    assert_eq!(
        p.count("SELECT coalesce(sum(used_count), 0) FROM node_join_tokens")
            .await,
        uses,
        "{error}: a use was counted"
    );
    error
}

// Goal: every kind of bad token is refused with its own code, changes
// nothing, and is audited. Method: one platform, one case after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_typed_and_audited() {
    let p = Platform::start().await;
    let agent = AgentKey::generate();

    let malformed = refused_submit(&p, &agent.join_request(&p.cluster, "not-a-token", &[])).await;
    assert_eq!(malformed.code(), "TOKEN_MALFORMED");

    let unknown = refused_submit(
        &p,
        &agent.join_request(&p.cluster, "rapjt.0011223344556677.deadbeef", &[]),
    )
    .await;
    assert_eq!(unknown.code(), "TOKEN_UNKNOWN");

    let good = p.token(1).await;
    let (_, id, _) = {
        let mut parts = good.split('.');
        (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
            (),
        )
    };
    let wrong_secret = format!("rapjt.{id}.{}", "ab".repeat(32));
    let forged = refused_submit(&p, &agent.join_request(&p.cluster, &wrong_secret, &[])).await;
    assert_eq!(forged.code(), "TOKEN_UNKNOWN");

    let expired = p.token(1).await;
    let expired_id = expired.split('.').nth(1).unwrap().to_string();
    sqlx::query("UPDATE node_join_tokens SET created_at = now() - interval '2 hours', expires_at = now() - interval '1 hour' WHERE token_id = $1")
        .bind(&expired_id)
        .execute(&p.ctx.pool)
        .await
        .unwrap();
    assert_eq!(
        refused_submit(&p, &agent.join_request(&p.cluster, &expired, &[]))
            .await
            .code(),
        "TOKEN_EXPIRED"
    );

    let revoked = p.token(1).await;
    tokens::revoke(&p.ctx, &p.owner, revoked.split('.').nth(1).unwrap())
        .await
        .unwrap();
    assert_eq!(
        refused_submit(&p, &agent.join_request(&p.cluster, &revoked, &[]))
            .await
            .code(),
        "TOKEN_REVOKED"
    );

    let once = p.token(1).await;
    enrollment::submit(
        &p.ctx,
        &AgentKey::generate().join_request(&p.cluster, &once, &[]),
    )
    .await
    .unwrap();
    assert_eq!(
        refused_submit(&p, &agent.join_request(&p.cluster, &once, &[]))
            .await
            .code(),
        "TOKEN_EXHAUSTED"
    );

    // A token of another cluster, used for this one.
    clusters::create(&p.ctx, &p.owner, "c2", "other")
        .await
        .unwrap();
    let foreign = tokens::create(
        &p.ctx,
        &p.owner,
        &pb::CreateJoinTokenRequest {
            cluster_id: "c2".into(),
            ttl_seconds: 600,
            max_uses: 1,
            storage_node_id: String::new(),
        },
    )
    .await
    .unwrap()
    .raw_token;
    assert_eq!(
        refused_submit(&p, &agent.join_request(&p.cluster, &foreign, &[]))
            .await
            .code(),
        "TOKEN_WRONG_CLUSTER"
    );

    let refused = p.audit_events("join-request.submit").await;
    let codes: Vec<&str> = refused
        .iter()
        .filter(|(r, _)| r == "refused")
        .map(|(_, reason)| reason.as_str())
        .collect();
    assert_eq!(codes.len(), 7, "{refused:?}");
}

// Goal: proofs and replays. Method: a proof by another key, a proof over
// other content, a replayed request, a stale timestamp, oversized facts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_proofs_replays_and_oversize_are_refused() {
    let p = Platform::start().await;
    let token = p.token(5).await;
    let agent = AgentKey::generate();
    let other = AgentKey::generate();

    let mut wrong_key = agent.join_request(&p.cluster, &token, &[]);
    wrong_key.proof = other.sign(
        enrollment::PURPOSE_JOIN,
        &p.cluster,
        wrong_key.timestamp_unix_ms,
        &wrong_key.nonce,
    );
    assert_eq!(refused_submit(&p, &wrong_key).await.code(), "BAD_PROOF");

    let mut other_cluster = agent.join_request(&p.cluster, &token, &[]);
    other_cluster.proof = agent.sign(
        enrollment::PURPOSE_JOIN,
        "c9",
        other_cluster.timestamp_unix_ms,
        &other_cluster.nonce,
    );
    assert_eq!(refused_submit(&p, &other_cluster).await.code(), "BAD_PROOF");

    let mut stale = agent.join_request(&p.cluster, &token, &[]);
    stale.timestamp_unix_ms -= 3600 * 1000;
    stale.proof = agent.sign(
        enrollment::PURPOSE_JOIN,
        &p.cluster,
        stale.timestamp_unix_ms,
        &stale.nonce,
    );
    assert_eq!(refused_submit(&p, &stale).await.code(), "REPLAY");

    let mut big = agent.join_request(&p.cluster, &token, &[]);
    big.facts.as_mut().unwrap().labels = (0..200)
        .map(|i| (format!("k{i}"), "v".repeat(100)))
        .collect();
    assert_eq!(refused_submit(&p, &big).await.code(), "OVERSIZE");

    let mut bad_cap = agent.join_request(&p.cluster, &token, &[]);
    bad_cap.capabilities = (0..100)
        .map(|i| pb::Capability {
            name: format!("c{i}"),
            detail: String::new(),
        })
        .collect();
    assert_eq!(refused_submit(&p, &bad_cap).await.code(), "OVERSIZE");

    let good = agent.join_request(&p.cluster, &token, &[]);
    enrollment::submit(&p.ctx, &good).await.unwrap();
    // The same signed request again: refused, and no use is counted.
    assert_eq!(refused_submit(&p, &good).await.code(), "REPLAY");

    let refused = p.count("SELECT count(*) FROM cluster_audit_events WHERE action = 'join-request.submit' AND result = 'refused'").await;
    assert_eq!(refused, 6);
}

// Goal: only a pending request can be reviewed; concurrent approvals of
// one request: exactly one wins. Method: 8 approvals at once, then a
// reject of the approved request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_approvals_exactly_one_wins() {
    let p = std::sync::Arc::new(Platform::start().await);
    let (_key, id) = p.join(&[]).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let p = p.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            enrollment::approve(&p.ctx, &p.owner, &approve_request(&id)).await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), "FAILED_PRECONDITION", "{e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(
        p.count("SELECT count(*) FROM node_identities WHERE kind = 'node'")
            .await,
        1
    );
    assert_eq!(p.count("SELECT count(*) FROM cluster_memberships WHERE node_id NOT IN (SELECT node_id FROM node_identities WHERE kind = 'storage')").await, 1);

    let again = enrollment::reject(
        &p.ctx,
        &p.owner,
        &pb::ReviewJoinRequestRequest {
            join_request_id: id.clone(),
            reason: "late".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(again.code(), "FAILED_PRECONDITION");
    let refusals = p.count("SELECT count(*) FROM cluster_audit_events WHERE action IN ('join-request.approve', 'join-request.reject') AND result = 'refused'").await;
    assert_eq!(refusals, 8);
}

// Goal: max_uses holds under concurrent joins. Method: a 3-use token, 12
// joins at once with different keys: exactly 3 pending requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_uses_is_never_exceeded_under_concurrent_joins() {
    let p = std::sync::Arc::new(Platform::start().await);
    let token = p.token(3).await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let p = p.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            enrollment::submit(
                &p.ctx,
                &AgentKey::generate().join_request(&p.cluster, &token, &[]),
            )
            .await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), "TOKEN_EXHAUSTED", "{e}"),
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(
        p.count("SELECT used_count::bigint FROM node_join_tokens WHERE scope = 'join'")
            .await,
        3
    );
    assert_eq!(
        p.count("SELECT count(*) FROM node_join_requests WHERE kind = 'node'")
            .await,
        3
    );
}

// Goal: a minority cannot approve (Golden Rule 9). Method: stop 2 of 3
// voters; the approval is refused with NO_QUORUM, the request stays
// pending, nothing was written, the refusal is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_without_quorum_is_refused_and_changes_nothing() {
    let p = Platform::start().await;
    let (_key, id) = p.join(&[]).await;
    p.stop_voters(2).await;
    let error = enrollment::approve(&p.ctx, &p.owner, &approve_request(&id))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "NO_QUORUM", "{error}");
    let Error::NoQuorum { total_voters, .. } = error else {
        unreachable!()
    };
    assert_eq!(total_voters, 3);
    assert_eq!(
        p.count("SELECT count(*) FROM node_join_requests WHERE status = 'pending'")
            .await,
        1
    );
    assert_eq!(p.count("SELECT count(*) FROM nodes WHERE node_id NOT IN (SELECT node_id FROM node_identities WHERE kind = 'storage')").await, 0);
    assert_eq!(
        p.count("SELECT count(*) FROM node_identities WHERE kind = 'node'")
            .await,
        0
    );
    assert_eq!(
        p.count("SELECT last_seq FROM cluster_authority_terms")
            .await,
        0
    );
    let audited = p.audit_events("join-request.approve").await;
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].0, "refused");
    assert!(audited[0].1.contains("no quorum"), "{audited:?}");
}

// Goal: reject with a reason reaches the agent; revocation revokes the
// identity and membership and publishes trust/revocations to the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_and_revoke() {
    let p = Platform::start().await;
    let (agent, id) = p.join(&[]).await;
    let missing_reason = enrollment::reject(
        &p.ctx,
        &p.owner,
        &pb::ReviewJoinRequestRequest {
            join_request_id: id.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(missing_reason.code(), "INVALID_ARGUMENT");
    enrollment::reject(
        &p.ctx,
        &p.owner,
        &pb::ReviewJoinRequestRequest {
            join_request_id: id.clone(),
            reason: "unknown host".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let poll = enrollment::status(&p.ctx, &agent.status_request(&p.cluster, &id))
        .await
        .unwrap();
    assert_eq!(poll.status, pb::JoinRequestStatus::Rejected as i32);
    assert_eq!(poll.reason, "unknown host");
    // Another key cannot poll someone else's request.
    let stranger = AgentKey::generate();
    assert_eq!(
        enrollment::status(&p.ctx, &stranger.status_request(&p.cluster, &id))
            .await
            .unwrap_err()
            .code(),
        "NOT_FOUND"
    );

    let node = p.enroll(&[]).await;
    let revoke = |reason: &str| pb::RevokeNodeRequest {
        cluster_id: p.cluster.clone(),
        node_id: node.clone(),
        reason: reason.into(),
    };
    let revoked = nodes::revoke(&p.ctx, &p.owner, &revoke("decommissioned"))
        .await
        .unwrap();
    assert_eq!(revoked.identity_status, "revoked");
    assert_eq!(revoked.membership_status, "revoked");
    assert_eq!(p.count("SELECT count(*) FROM snapshot_publications WHERE scope = 'trust/revocations' AND version = 1").await, 1);
    let again = nodes::revoke(&p.ctx, &p.owner, &revoke("again"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), "FAILED_PRECONDITION");
    // A second revocation publishes version 2, chained to version 1.
    let second = p.enroll(&[]).await;
    nodes::revoke(
        &p.ctx,
        &p.owner,
        &pb::RevokeNodeRequest {
            cluster_id: p.cluster.clone(),
            node_id: second,
            reason: "lost".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        p.count("SELECT max(version) FROM snapshot_publications WHERE scope = 'trust/revocations'")
            .await,
        2
    );
}

fn peer_of(chain_pem: &str) -> enrollment::PeerCertificate {
    use rustls::pki_types::pem::PemObject;
    let leaf = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    enrollment::PeerCertificate {
        identity: rap_core::identity::PeerIdentity::from_cert_der(leaf.as_ref()).unwrap(),
        serial: hex::encode(cert.raw_serial()),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        server_names: Vec::new(),
    }
}

fn renew_request(
    p: &Platform,
    node: &str,
    signer: &AgentKey,
    new_key: Option<&AgentKey>,
) -> pb::RenewCertificateRequest {
    let now = rap_proto::time::UnixMillis::now().0;
    let nonce = AgentKey::nonce();
    let key = new_key
        .map(|k| k.public())
        .unwrap_or_else(|| signer.public());
    let message =
        enrollment::proof_message(enrollment::PURPOSE_RENEW, &p.cluster, &key, now, &nonce);
    use ed25519_dalek::Signer;
    pb::RenewCertificateRequest {
        cluster_id: p.cluster.clone(),
        node_id: node.to_string(),
        new_public_key: new_key.map(|k| k.public().to_vec()).unwrap_or_default(),
        timestamp_unix_ms: now,
        proof: signer.key.sign(&message).to_bytes().to_vec(),
        nonce,
    }
}

// Goal: renewal rotates the node key when asked, the old certificate is
// then useless, and a renewal proof or certificate of the wrong key or
// node is refused. Method: call renew with the peer certificate an mTLS
// handshake would have shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_rotates_keys_and_refuses_foreign_proofs() {
    let p = Platform::start().await;
    let (agent, id) = p.join(&[]).await;
    let node = enrollment::approve(&p.ctx, &p.owner, &approve_request(&id))
        .await
        .unwrap()
        .node_id;
    let chain = enrollment::status(&p.ctx, &agent.status_request(&p.cluster, &id))
        .await
        .unwrap()
        .identity
        .unwrap()
        .certificate_chain_pem;
    let peer = peer_of(&chain);

    // A proof by another key than the one named.
    let stranger = AgentKey::generate();
    let mut forged = renew_request(&p, &node, &agent, None);
    forged.proof = renew_request(&p, &node, &stranger, None).proof;
    let error = enrollment::renew(&p.ctx, Some(peer.clone()), &forged)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "BAD_PROOF");
    // The certificate of this node asking for another node.
    let error = enrollment::renew(
        &p.ctx,
        Some(peer.clone()),
        &renew_request(&p, "someone-else", &agent, None),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), "PERMISSION_DENIED");
    // The right serial presented with another key (a certificate minted by
    // another CA for this node's URI and serial).
    let mut other_key = peer.clone();
    other_key.public_key = stranger.public().to_vec();
    let error = enrollment::renew(
        &p.ctx,
        Some(other_key),
        &renew_request(&p, &node, &agent, None),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), "PERMISSION_DENIED");
    assert_eq!(
        p.count("SELECT count(*) FROM node_identities WHERE identity_status = 'active' AND kind = 'node'")
            .await,
        1
    );

    // Rotation to a new key, proven by the new key.
    let next = AgentKey::generate();
    let renewed = enrollment::renew(
        &p.ctx,
        Some(peer.clone()),
        &renew_request(&p, &node, &next, Some(&next)),
    )
    .await
    .unwrap();
    let new_peer = peer_of(&renewed.identity.unwrap().certificate_chain_pem);
    assert_eq!(new_peer.public_key, next.public().to_vec());
    assert_eq!(
        p.count("SELECT count(*) FROM node_identities WHERE identity_status = 'rotated'")
            .await,
        1
    );
    // The old certificate can no longer renew.
    let error = enrollment::renew(&p.ctx, Some(peer), &renew_request(&p, &node, &agent, None))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "PERMISSION_DENIED");
    let refused = p.count("SELECT count(*) FROM cluster_audit_events WHERE action = 'node.certificate.renew' AND result = 'refused'").await;
    assert_eq!(refused, 4);
    let ok = p.count("SELECT count(*) FROM cluster_audit_events WHERE action = 'node.certificate.renew' AND result = 'ok' AND fence_seq IS NOT NULL").await;
    assert_eq!(ok, 1);
}

// Goal: a request nobody reviewed expires: it cannot be approved, the
// agent's poll says expired, and the same key may join again. Method: age
// a pending request past the limit by SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_requests_expire() {
    let p = Platform::start().await;
    let (agent, id) = p.join(&[]).await;
    sqlx::query("UPDATE node_join_requests SET created_at = now() - interval '8 days' WHERE join_request_id = $1")
        .bind(&id)
        .execute(&p.ctx.pool)
        .await
        .unwrap();
    let error = enrollment::approve(&p.ctx, &p.owner, &approve_request(&id))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "FAILED_PRECONDITION");
    assert!(error.to_string().contains("expired"), "{error}");
    assert_eq!(p.count("SELECT count(*) FROM nodes WHERE node_id NOT IN (SELECT node_id FROM node_identities WHERE kind = 'storage')").await, 0);
    let poll = enrollment::status(&p.ctx, &agent.status_request(&p.cluster, &id))
        .await
        .unwrap();
    assert_eq!(poll.status, pb::JoinRequestStatus::Expired as i32);
    // The key is free to ask again.
    let token = p.token(1).await;
    enrollment::submit(&p.ctx, &agent.join_request(&p.cluster, &token, &[]))
        .await
        .unwrap();
}
