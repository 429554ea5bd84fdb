//! `rapctl principal token|disable|enable` against the real server.

use crate::Rapctl;
use rap_controlplane::principals;
use rap_testkit::platform::Platform;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

// Goal: an operator runs the whole token and principal lifecycle with
// the real rapctl against the real server: create, list (table and
// JSON, own vs all), revoke, expired and disabled tokens refused with
// their codes and exit 1, the last owner protected, usage errors exit 2.
// Method: real server and binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapctl_principal_token_lifecycle() {
    let p = Platform::start().await;
    let server = p.serve().await;
    let (code, out, err) = server
        .rapctl(
            &p,
            &[
                "principal",
                "create",
                "ops",
                "--kind",
                "platform-admin",
                "-o",
                "json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let ops_first = json(&out)["raw_token"].as_str().unwrap().to_string();

    let (code, out, err) = server
        .rapctl(
            &p,
            &[
                "principal",
                "token",
                "create",
                "ops",
                "--ttl",
                "1d",
                "-o",
                "json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("shown once"), "{err}");
    let created = json(&out);
    let ops_token = created["raw_token"].as_str().unwrap().to_string();
    let token_id = created["token"]["token_id"].as_str().unwrap().to_string();
    let ttl = created["token"]["expires_at_unix_ms"].as_i64().unwrap()
        - created["token"]["created_at_unix_ms"].as_i64().unwrap();
    assert!((ttl - 86_400_000).abs() < 5_000, "{ttl}");

    // The owner sees every token; ops only its own two.
    let (code, out, err) = server
        .rapctl(&p, &["principal", "token", "list", "-o", "json"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["tokens"].as_array().unwrap().len(), 3, "{out}");
    let (code, out, err) = server
        .rapctl_as(
            &p,
            &ops_token,
            &["principal", "token", "list", "-o", "json"],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let own = json(&out);
    let own = own["tokens"].as_array().unwrap();
    assert_eq!(own.len(), 2, "{own:?}");
    assert!(own.iter().all(|t| t["principal_id"] == "ops"));
    assert!(!out.contains(ops_token.rsplit('.').next().unwrap()));
    // ... and may not list the owner's or make tokens.
    let (code, _, err) = server
        .rapctl_as(
            &p,
            &ops_token,
            &["principal", "token", "list", "--principal", "owner"],
        )
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    let (code, _, err) = server
        .rapctl_as(&p, &ops_token, &["principal", "token", "create", "ops"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    // Human table.
    let (code, out, err) = server
        .rapctl(&p, &["principal", "token", "list", "--principal", "ops"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("TOKEN ID"), "{out}");
    assert!(out.contains(&token_id) && out.contains("active"), "{out}");

    // Revoked: refused with its code, exit 1.
    let (code, out, err) = server
        .rapctl(
            &p,
            &["principal", "token", "revoke", &token_id, "-o", "json"],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["status"], "revoked");
    let (code, _, err) = server.rapctl_as(&p, &ops_token, &["whoami"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("API_TOKEN_REVOKED"), "{err}");
    assert!(err.contains("hint:"), "{err}");

    // Expired.
    sqlx::query(
        "UPDATE admin_api_tokens SET created_at = now() - interval '2 days',
                expires_at = now() - interval '1 day'
          WHERE principal_id = 'ops' AND revoked_at IS NULL",
    )
    .execute(&p.ctx.pool)
    .await
    .unwrap();
    let (code, _, err) = server.rapctl_as(&p, &ops_first, &["whoami"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("API_TOKEN_EXPIRED"), "{err}");
    assert!(!err.contains(ops_first.rsplit('.').next().unwrap()));

    // Disable / enable with a fresh token.
    let (code, out, err) = server
        .rapctl(&p, &["principal", "token", "create", "ops", "-o", "json"])
        .await;
    assert_eq!(code, 0, "{err}");
    let fresh = json(&out)["raw_token"].as_str().unwrap().to_string();
    let (code, out, err) = server
        .rapctl(
            &p,
            &["principal", "disable", "ops", "--reason", "left the team"],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("disabled"), "{out}");
    let (code, _, err) = server.rapctl_as(&p, &fresh, &["whoami"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("PRINCIPAL_DISABLED"), "{err}");
    let (code, out, err) = server
        .rapctl(&p, &["principal", "enable", "ops", "-o", "json"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["status"], "active");
    let (code, out, err) = server.rapctl_as(&p, &fresh, &["whoami"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ops"), "{out}");

    // The last owner.
    let (code, _, err) = server
        .rapctl(&p, &["principal", "disable", "owner", "--reason", "oops"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("last active platform-owner"), "{err}");
    let (code, _, err) = server.rapctl(&p, &["whoami"]).await;
    assert_eq!(code, 0, "{err}");

    // Usage errors.
    let (code, _, _) = server.rapctl(&p, &["principal", "disable", "ops"]).await;
    assert_eq!(code, 2);
    let (code, _, _) = server
        .rapctl(
            &p,
            &["principal", "token", "create", "ops", "--ttl", "400d"],
        )
        .await;
    assert_eq!(code, 2);

    assert_eq!(
        p.audit_events(principals::ACTION_TOKEN_CREATE)
            .await
            .iter()
            .filter(|(result, _)| result == "ok")
            .count(),
        2
    );
    assert!(
        p.audit_events(principals::ACTION_DISABLE)
            .await
            .iter()
            .any(|(result, reason)| result == "refused"
                && reason.contains("last active platform-owner"))
    );
}
