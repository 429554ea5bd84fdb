//! Who may hold which identity: storage nodes enrolled like agents
//! (storage tokens, fenced approval once the group exists), reserved ids,
//! and keys whose certificate was revoked.

use rap_controlplane::error::Error;
use rap_controlplane::{enrollment, nodes};
use rap_proto::pb;
use rap_testkit::platform::{AgentKey, Platform, join_token};

fn approve(id: &str, node_id: &str) -> pb::ReviewJoinRequestRequest {
    pb::ReviewJoinRequestRequest {
        join_request_id: id.to_string(),
        node_id: node_id.to_string(),
        ..Default::default()
    }
}

async fn storage_token(p: &Platform, node: &str) -> Result<String, Error> {
    join_token(&p.ctx, &p.owner, &p.cluster, 1, node).await
}

/// Agent identities, agent nodes and pending requests: what a refused
/// approval must leave as it was.
async fn agent_rows(p: &Platform) -> (i64, i64, i64) {
    (
        p.count("SELECT count(*) FROM node_identities WHERE kind = 'node'").await,
        p.count("SELECT count(*) FROM cluster_memberships WHERE node_id NOT IN (SELECT node_id FROM node_identities WHERE kind = 'storage')").await,
        p.count("SELECT count(*) FROM node_join_requests WHERE status = 'pending'").await,
    )
}

// Goal (finding 5): ids that are not an agent's to take are refused at
// approval with RESERVED_ID, audited, nothing changed: the control
// plane's id and a storage node's id; a storage token cannot be made for
// an agent's id; an agent token cannot enrol a storage node nor a storage
// token an agent (TOKEN_WRONG_SCOPE).
// Method: one pending agent request approved with --node-id s1, then
// controlplane; tokens and requests of the wrong kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_ids_and_token_scopes() {
    let p = Platform::start().await;
    let (_key, id) = p.join(&[]).await;
    let before = agent_rows(&p).await;
    for reserved in ["s1", "controlplane"] {
        let error = enrollment::approve(&p.ctx, &p.owner, &approve(&id, reserved))
            .await
            .unwrap_err();
        assert_eq!(error.code(), "RESERVED_ID", "{reserved}: {error}");
        assert_eq!(
            agent_rows(&p).await,
            before,
            "{reserved}: something changed"
        );
    }
    let refusals = p.audit_events("join-request.approve").await;
    assert_eq!(refusals.len(), 2);
    assert!(
        refusals.iter().all(|(result, _)| result == "refused"),
        "{refusals:?}"
    );

    // The request can still be approved under an id of its own.
    let approved = enrollment::approve(&p.ctx, &p.owner, &approve(&id, "edge-1"))
        .await
        .unwrap();
    assert_eq!(approved.node_id, "edge-1");
    let error = storage_token(&p, "edge-1").await.unwrap_err();
    assert_eq!(error.code(), "RESERVED_ID", "{error}");
    let error = storage_token(&p, "controlplane").await.unwrap_err();
    assert_eq!(error.code(), "RESERVED_ID", "{error}");

    let agent_token = p.token(1).await;
    let key = AgentKey::generate();
    let error = enrollment::submit(
        &p.ctx,
        &key.storage_join_request(&p.cluster, &agent_token, "s9"),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), "TOKEN_WRONG_SCOPE");
    let for_s9 = storage_token(&p, "s9").await.unwrap();
    let error = enrollment::submit(&p.ctx, &key.join_request(&p.cluster, &for_s9, &[]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "TOKEN_WRONG_SCOPE");
    let error = enrollment::submit(&p.ctx, &key.storage_join_request(&p.cluster, &for_s9, "s8"))
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        "TOKEN_WRONG_SCOPE",
        "a token made for s9 enrols only s9"
    );
}

// Goal: once the cluster's group exists, a storage node's join request
// waits for an operator, whose approval is fenced and issues a storage
// identity with the requested server names; the node keeps the id its
// token was made for.
// Method: storage token for s4 after bootstrap; submit; approve with
// another --node-id (refused), then without; check the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_join_after_bootstrap_needs_a_fenced_approval() {
    let p = Platform::start().await;
    let token = storage_token(&p, "s4").await.unwrap();
    let key = AgentKey::generate();
    let submitted = enrollment::submit(&p.ctx, &key.storage_join_request(&p.cluster, &token, "s4"))
        .await
        .unwrap();
    assert_eq!(submitted.status, pb::JoinRequestStatus::Pending as i32);
    let error = enrollment::approve(&p.ctx, &p.owner, &approve(&submitted.join_request_id, "s5"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "INVALID_ARGUMENT", "{error}");
    let approved = enrollment::approve(&p.ctx, &p.owner, &approve(&submitted.join_request_id, ""))
        .await
        .unwrap();
    assert_eq!(approved.node_id, "s4");
    assert_eq!(approved.kind, pb::NodeKind::Storage as i32);
    assert_eq!(approved.server_names, vec!["127.0.0.1", "localhost"]);
    let fenced = p
        .count("SELECT count(*) FROM cluster_audit_events WHERE action = 'join-request.approve' AND result = 'ok' AND target = (SELECT join_request_id FROM node_join_requests WHERE requested_node_id = 's4') AND fence_seq IS NOT NULL")
        .await;
    assert_eq!(fenced, 1, "the approval carries a fence");
    let poll = enrollment::status(
        &p.ctx,
        &key.status_request(&p.cluster, &submitted.join_request_id),
    )
    .await
    .unwrap();
    let chain = poll.identity.unwrap().certificate_chain_pem;
    use rustls::pki_types::pem::PemObject;
    let leaf = rustls::pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        rap_core::identity::PeerIdentity::from_cert_der(leaf.as_ref())
            .unwrap()
            .uri(),
        "rap://cluster/c1/storage/s4"
    );
}

// Goal (finding 5): a key whose certificate was revoked cannot enrol
// again: its new join request is refused with KEY_REVOKED, audited,
// nothing stored; only a platform owner may allow it (a platform admin is
// refused, audited), once; the allowed request shows the key's history
// with the revocation; the next attempt after that is refused again.
// Method: enrol and revoke an agent; the same key joins with a new token;
// allow by admin, then owner; join; reject; join again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_needs_an_owners_override() {
    let p = Platform::start().await;
    let (key, id) = p.join(&[]).await;
    let approved = enrollment::approve(&p.ctx, &p.owner, &approve(&id, ""))
        .await
        .unwrap();
    nodes::revoke(
        &p.ctx,
        &p.owner,
        &pb::RevokeNodeRequest {
            cluster_id: p.cluster.clone(),
            node_id: approved.node_id.clone(),
            reason: "stolen host".into(),
        },
    )
    .await
    .unwrap();

    let requests = p
        .count("SELECT count(*) FROM node_join_requests WHERE kind = 'node'")
        .await;
    let token = p.token(5).await;
    let error = enrollment::submit(&p.ctx, &key.join_request(&p.cluster, &token, &[]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "KEY_REVOKED", "{error}");
    assert!(error.to_string().contains("allow-revoked-key"), "{error}");
    assert_eq!(
        p.count("SELECT count(*) FROM node_join_requests WHERE kind = 'node'")
            .await,
        requests,
        "nothing stored"
    );
    let refused = p
        .count("SELECT count(*) FROM cluster_audit_events WHERE action = 'join-request.submit' AND result = 'refused' AND reason LIKE '%revoked%'")
        .await;
    assert_eq!(refused, 1, "the refusal is audited");

    let allow = pb::AllowRevokedKeyRequest {
        cluster_id: p.cluster.clone(),
        fingerprint: approved.fingerprint.clone(),
        reason: "host reinstalled, key checked".into(),
    };
    let admin = p.principal("platform-admin", None).await;
    let error = enrollment::allow_revoked_key(&p.ctx, &admin, &allow)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "PERMISSION_DENIED");
    let allowed = enrollment::allow_revoked_key(&p.ctx, &p.owner, &allow)
        .await
        .unwrap();
    assert!(allowed.key_history.iter().any(|e| e.status == "revoked"));
    let audited = p.audit_events("join-request.allow-revoked-key").await;
    assert_eq!(
        audited.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        vec!["refused", "ok"]
    );

    let again = enrollment::submit(&p.ctx, &key.join_request(&p.cluster, &token, &[]))
        .await
        .unwrap();
    let shown = enrollment::get(&p.ctx, &p.owner, &again.join_request_id)
        .await
        .unwrap();
    let revoked: Vec<_> = shown
        .key_history
        .iter()
        .filter(|e| e.status == "revoked")
        .collect();
    assert_eq!(revoked.len(), 1, "{:?}", shown.key_history);
    assert_eq!(revoked[0].node_id, approved.node_id);
    assert!(revoked[0].revoked_at_unix_ms > 0);

    enrollment::reject(
        &p.ctx,
        &p.owner,
        &pb::ReviewJoinRequestRequest {
            join_request_id: again.join_request_id,
            reason: "not now".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let error = enrollment::submit(&p.ctx, &key.join_request(&p.cluster, &token, &[]))
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        "KEY_REVOKED",
        "the override was for one request"
    );
}
