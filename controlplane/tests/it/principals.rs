//! Admin API tokens and principals: expiry, revocation, disabling, the
//! last owner, `last_used_at`, who may call what, and `rapctl principal
//! token|disable|enable` against the real server.

use rap_controlplane::Error;
use rap_controlplane::auth::{self, Principal};
use rap_controlplane::limits::{API_TOKEN_TTL_DEFAULT, API_TOKEN_TTL_MAX};
use rap_controlplane::principals;
use rap_proto::pb;
use rap_testkit::platform::Platform;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A principal of `kind` created by the owner, with its raw token.
async fn principal_with_token(
    p: &Platform,
    id: &str,
    kind: &str,
    org: &str,
) -> (Principal, String) {
    if !org.is_empty() {
        sqlx::query(
            "INSERT INTO organizations (org_id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING",
        )
        .bind(org)
        .execute(&p.ctx.pool)
        .await
        .unwrap();
    }
    let created = rap_controlplane::orgs::create_principal(
        &p.ctx,
        &p.owner,
        &pb::CreatePrincipalRequest {
            principal_id: id.into(),
            kind: kind.into(),
            org_id: org.into(),
            name: id.into(),
        },
    )
    .await
    .unwrap();
    let principal = auth::authenticate(&p.ctx.pool, Some(&bearer(&created.raw_token)))
        .await
        .unwrap();
    (principal, created.raw_token)
}

/// (result, actor) of the audit events of `action` on `target`.
async fn audited(p: &Platform, action: &str, target: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT result, actor FROM cluster_audit_events
          WHERE action = $1 AND target = $2 ORDER BY event_id",
    )
    .bind(action)
    .bind(target)
    .fetch_all(&p.ctx.pool)
    .await
    .unwrap()
}

// Goal: each lifecycle call checks its caller in one place: a
// platform-admin and an org-admin are refused (PERMISSION_DENIED) where a
// platform-owner is required and for other principals' tokens, nothing
// changes, and every refusal is audited with the caller as actor; their
// own tokens they may list and revoke. Method: library calls as each
// principal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_callers_are_refused_unchanged_and_audited() {
    let p = Platform::start().await;
    let (admin, _) = principal_with_token(&p, "ops", "platform-admin", "").await;
    let (org_admin, _) = principal_with_token(&p, "acme-admin", "org-admin", "acme").await;
    let owner_tokens = || async {
        p.count("SELECT count(*) FROM admin_api_tokens WHERE principal_id = 'owner'")
            .await
    };
    let owner_token_id: String = sqlx::query_scalar(
        "SELECT token_id::text FROM admin_api_tokens WHERE principal_id = 'owner' LIMIT 1",
    )
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap();
    let tokens_before = owner_tokens().await;

    for caller in [&admin, &org_admin] {
        let denied = |r: Result<_, Error>, what: &str| match r {
            Err(Error::PermissionDenied(_)) => {}
            other => panic!("{} {what}: {other:?}", caller.id),
        };
        denied(
            principals::create_token(
                &p.ctx,
                caller,
                &pb::CreateApiTokenRequest {
                    principal_id: "owner".into(),
                    ttl_seconds: 0,
                },
            )
            .await
            .map(|_| ()),
            "create for owner",
        );
        denied(
            principals::create_token(
                &p.ctx,
                caller,
                &pb::CreateApiTokenRequest {
                    principal_id: caller.id.clone(),
                    ttl_seconds: 0,
                },
            )
            .await
            .map(|_| ()),
            "create for itself",
        );
        denied(
            principals::set_enabled(&p.ctx, caller, "owner", false, "coup")
                .await
                .map(|_| ()),
            "disable owner",
        );
        denied(
            principals::set_enabled(&p.ctx, caller, &caller.id, true, "")
                .await
                .map(|_| ()),
            "enable",
        );
        denied(
            principals::list_tokens(
                &p.ctx,
                caller,
                &pb::ListApiTokensRequest {
                    principal_id: "owner".into(),
                    page: None,
                },
            )
            .await
            .map(|_| ()),
            "list the owner's",
        );
        denied(
            principals::revoke_token(
                &p.ctx,
                caller,
                &pb::RevokeApiTokenRequest {
                    token_id: owner_token_id.clone(),
                },
            )
            .await
            .map(|_| ()),
            "revoke the owner's",
        );
        // Its own: listed (only its own), and revocable.
        let own = principals::list_tokens(&p.ctx, caller, &pb::ListApiTokensRequest::default())
            .await
            .unwrap();
        assert_eq!(own.tokens.len(), 1, "{own:?}");
        assert!(own.tokens.iter().all(|t| t.principal_id == caller.id));
        let revoked = principals::revoke_token(
            &p.ctx,
            caller,
            &pb::RevokeApiTokenRequest {
                token_id: own.tokens[0].token_id.clone(),
            },
        )
        .await
        .unwrap();
        assert_eq!(revoked.status, "revoked");
        assert_eq!(revoked.revoked_by, caller.id);
    }
    // Nothing changed for the owner.
    assert_eq!(owner_tokens().await, tokens_before);
    assert_eq!(
        p.count("SELECT count(*) FROM admin_api_tokens WHERE principal_id = 'owner' AND revoked_at IS NOT NULL").await,
        0
    );
    assert_eq!(
        p.count("SELECT count(*) FROM admin_principals WHERE status <> 'active'")
            .await,
        0
    );
    // Every refusal audited with its caller.
    for caller in ["ops", "acme-admin"] {
        assert!(
            audited(&p, principals::ACTION_DISABLE, "owner")
                .await
                .contains(&("refused".into(), caller.into()))
        );
        assert!(
            audited(&p, principals::ACTION_TOKEN_CREATE, caller)
                .await
                .contains(&("refused".into(), caller.into()))
        );
        assert!(
            audited(&p, principals::ACTION_TOKEN_LIST, "owner")
                .await
                .contains(&("refused".into(), caller.into()))
        );
        assert!(
            audited(&p, principals::ACTION_TOKEN_REVOKE, &owner_token_id)
                .await
                .contains(&("refused".into(), caller.into()))
        );
        assert!(
            audited(&p, principals::ACTION_ENABLE, caller)
                .await
                .contains(&("refused".into(), caller.into()))
        );
    }
}

// Goal: authentication refuses revoked and expired tokens and disabled
// principals with distinct codes and no secret in the message; new
// tokens expire by default (90 days, at most 365); `last_used_at` is
// written at most once a minute; the last active owner cannot be
// disabled, also when two owners disable each other at once. Method:
// library calls and direct SQL to age tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_revoke_disable_and_record_last_use() {
    let p = Platform::start().await;
    let (ops, ops_raw) = principal_with_token(&p, "ops", "platform-admin", "").await;
    let secret = ops_raw.rsplit('.').next().unwrap().to_string();

    // Default and maximum TTL.
    let created = principals::create_token(
        &p.ctx,
        &p.owner,
        &pb::CreateApiTokenRequest {
            principal_id: "ops".into(),
            ttl_seconds: 0,
        },
    )
    .await
    .unwrap();
    let token = created.token.unwrap();
    let ttl_ms = token.expires_at_unix_ms - token.created_at_unix_ms;
    let default_ms = i64::try_from(API_TOKEN_TTL_DEFAULT.as_millis()).unwrap();
    assert!((ttl_ms - default_ms).abs() < 5_000, "{ttl_ms}");
    assert_eq!(token.created_by, "owner");
    assert_eq!(token.status, "active");
    let too_long = principals::create_token(
        &p.ctx,
        &p.owner,
        &pb::CreateApiTokenRequest {
            principal_id: "ops".into(),
            ttl_seconds: API_TOKEN_TTL_MAX.as_secs() + 1,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(too_long.code(), "INVALID_ARGUMENT");
    // Every stored token expires, the first owner's too.
    assert_eq!(
        p.count("SELECT count(*) FROM admin_api_tokens WHERE expires_at IS NULL OR expires_at > now() + interval '91 days'").await,
        0
    );

    // last_used_at: set on first use, not rewritten within the minute,
    // rewritten once older.
    let used = || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT (extract(epoch FROM last_used_at) * 1000000)::bigint FROM admin_api_tokens
              WHERE token_id = $1",
        )
        .bind(&token.token_id)
        .fetch_one(&p.ctx.pool)
        .await
        .unwrap()
    };
    assert_eq!(used().await, None);
    auth::authenticate(&p.ctx.pool, Some(&bearer(&created.raw_token)))
        .await
        .unwrap();
    let first = used().await.expect("recorded");
    for _ in 0..5 {
        auth::authenticate(&p.ctx.pool, Some(&bearer(&created.raw_token)))
            .await
            .unwrap();
    }
    assert_eq!(used().await, Some(first), "written again within the minute");
    sqlx::query(
        "UPDATE admin_api_tokens SET last_used_at = now() - interval '2 minutes' WHERE token_id = $1",
    )
    .bind(&token.token_id)
    .execute(&p.ctx.pool)
    .await
    .unwrap();
    let aged = used().await.unwrap();
    auth::authenticate(&p.ctx.pool, Some(&bearer(&created.raw_token)))
        .await
        .unwrap();
    assert!(used().await.unwrap() > aged);

    // Expired.
    sqlx::query(
        "UPDATE admin_api_tokens SET created_at = now() - interval '2 days',
                expires_at = now() - interval '1 day'
          WHERE token_id = (SELECT token_id FROM admin_api_tokens WHERE principal_id = 'ops'
                             AND token_id <> $1)",
    )
    .bind(&token.token_id)
    .execute(&p.ctx.pool)
    .await
    .unwrap();
    let expired = auth::authenticate(&p.ctx.pool, Some(&bearer(&ops_raw)))
        .await
        .unwrap_err();
    assert_eq!(expired.code(), "API_TOKEN_EXPIRED");
    assert!(!expired.to_string().contains(&secret));
    assert_eq!(
        tonic::Status::from(expired).code(),
        tonic::Code::Unauthenticated
    );

    // Revoked.
    principals::revoke_token(
        &p.ctx,
        &p.owner,
        &pb::RevokeApiTokenRequest {
            token_id: token.token_id.clone(),
        },
    )
    .await
    .unwrap();
    let revoked = auth::authenticate(&p.ctx.pool, Some(&bearer(&created.raw_token)))
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), "API_TOKEN_REVOKED");
    // Idempotent, and the first revocation stays.
    let again = principals::revoke_token(
        &p.ctx,
        &ops,
        &pb::RevokeApiTokenRequest {
            token_id: token.token_id.clone(),
        },
    )
    .await
    .unwrap();
    assert_eq!(again.revoked_by, "owner");

    // Disabled principal: refused until enabled.
    let fresh = principals::create_token(
        &p.ctx,
        &p.owner,
        &pb::CreateApiTokenRequest {
            principal_id: "ops".into(),
            ttl_seconds: 3600,
        },
    )
    .await
    .unwrap();
    let state = principals::set_enabled(&p.ctx, &p.owner, "ops", false, "left the team")
        .await
        .unwrap();
    assert_eq!(state.status, "disabled");
    let disabled = auth::authenticate(&p.ctx.pool, Some(&bearer(&fresh.raw_token)))
        .await
        .unwrap_err();
    assert_eq!(disabled.code(), "PRINCIPAL_DISABLED");
    // No token for a disabled principal.
    let refused = principals::create_token(
        &p.ctx,
        &p.owner,
        &pb::CreateApiTokenRequest {
            principal_id: "ops".into(),
            ttl_seconds: 0,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), "FAILED_PRECONDITION");
    principals::set_enabled(&p.ctx, &p.owner, "ops", true, "")
        .await
        .unwrap();
    auth::authenticate(&p.ctx.pool, Some(&bearer(&fresh.raw_token)))
        .await
        .unwrap();

    // The last active owner.
    let last = principals::set_enabled(&p.ctx, &p.owner, "owner", false, "oops")
        .await
        .unwrap_err();
    assert_eq!(last.code(), "FAILED_PRECONDITION");
    assert!(
        last.to_string().contains("last active platform-owner"),
        "{last}"
    );
    // Two owners disabling each other at once: one wins, one owner stays.
    let (owner2, _) = principal_with_token(&p, "owner2", "platform-owner", "").await;
    let (a, b) = tokio::join!(
        principals::set_enabled(&p.ctx, &p.owner, "owner2", false, "race"),
        principals::set_enabled(&p.ctx, &owner2, "owner", false, "race"),
    );
    assert!(a.is_ok() != b.is_ok(), "{a:?} / {b:?}");
    assert_eq!(
        p.count("SELECT count(*) FROM admin_principals WHERE kind = 'platform-owner' AND status = 'active'").await,
        1
    );
    // Mutations are audited.
    assert_eq!(
        audited(&p, principals::ACTION_DISABLE, "ops").await,
        vec![("ok".to_string(), "owner".to_string())]
    );
    assert_eq!(
        audited(&p, principals::ACTION_TOKEN_REVOKE, &token.token_id).await,
        vec![
            ("ok".to_string(), "owner".to_string()),
            ("ok".to_string(), "ops".to_string())
        ]
    );
}
