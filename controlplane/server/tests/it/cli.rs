//! The `rap-controlplane` binary as an operator runs it: `init`,
//! `migrate` and `serve` on a real database.

use rap_testkit::platform::http_get;
use std::process::Command;

fn controlplane(
    args: &[&str],
    database_url: &str,
    keys: &std::path::Path,
) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_rap-controlplane"))
        .args(args)
        .env("RAP_DATABASE_URL", database_url)
        .env("RAP_KEYS_DIR", keys)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

// Goal: `init` prints the first platform-owner token exactly once and the
// token works; `owner-token` and `reset-totp` break glass (audited);
// `migrate` is idempotent. Method: the real binary on a fresh
// database, twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_prints_the_owner_token_once_and_migrate_is_idempotent() {
    let db = rap_testkit::pg::fresh_database().await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (code, out, err) = controlplane(&["init"], &db.url, keys.path());
    assert_eq!(code, 0, "{err}");
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("rapat."))
        .unwrap_or_else(|| panic!("no token in {out}"))
        .trim_matches('\'')
        .to_string();
    let pool = db.pool().await.unwrap();
    let owner = rap_controlplane::auth::authenticate(&pool, Some(&format!("Bearer {token}")))
        .await
        .unwrap();
    assert_eq!(owner.kind, rap_controlplane::auth::Kind::PlatformOwner);
    // Only the hash is stored.
    let secret = token.rsplit('.').next().unwrap();
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM admin_api_tokens WHERE encode(token_hash, 'hex') = $1",
    )
    .bind(secret)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leaked, 0);

    // The first owner's token expires like every other.
    let expires_in_days: f64 = sqlx::query_scalar(
        "SELECT (extract(epoch FROM expires_at - now()) / 86400)::float8 FROM admin_api_tokens",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        (89.9..=90.1).contains(&expires_in_days),
        "{expires_in_days}"
    );
    assert!(out.contains("expires in 90 days"), "{out}");

    let (code, out, err) = controlplane(&["init"], &db.url, keys.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("rapat."),
        "a second init printed a token: {out}"
    );

    // Break glass: every owner token lapsed; owner-token issues a new one
    // (audited), init still prints none.
    sqlx::query(
        "UPDATE admin_api_tokens SET created_at = now() - interval '2 days',
                expires_at = now() - interval '1 day'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        rap_controlplane::auth::authenticate(&pool, Some(&format!("Bearer {token}")))
            .await
            .unwrap_err()
            .code(),
        "API_TOKEN_EXPIRED"
    );
    let (code, out, err) = controlplane(&["owner-token", "--ttl-days", "1"], &db.url, keys.path());
    assert_eq!(code, 0, "{err}");
    let fresh = out
        .split_whitespace()
        .find(|w| w.starts_with("rapat."))
        .unwrap_or_else(|| panic!("no token in {out}"))
        .to_string();
    let again = rap_controlplane::auth::authenticate(&pool, Some(&format!("Bearer {fresh}")))
        .await
        .unwrap();
    assert_eq!(again.id, "owner");
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cluster_audit_events
          WHERE action = 'api-token.create' AND actor = 'rap-controlplane-owner-token'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    // Break glass: an owner that lost its authenticator gets its TOTP
    // removed on the host (audited), and may enrol again.
    sqlx::query(
        "UPDATE admin_principals SET totp_sealed = decode(repeat('ab', 40), 'hex'),
                totp_confirmed_at = now(), totp_last_step = 1
          WHERE principal_id = 'owner'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (code, out, err) = controlplane(
        &["reset-totp", "--principal", "owner"],
        &db.url,
        keys.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed"), "{out}");
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM admin_principals
          WHERE totp_sealed IS NOT NULL OR totp_confirmed_at IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
    let reset: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cluster_audit_events
          WHERE action = 'principal.totp-reset' AND actor = 'rap-controlplane-reset-totp'
            AND target = 'owner'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(reset, 1);
    let (code, out, err) = controlplane(
        &["reset-totp", "--principal", "owner"],
        &db.url,
        keys.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("had no TOTP"), "{out}");
    // Neither break glass knows a principal that does not exist.
    for command in ["owner-token", "reset-totp"] {
        let (code, _, err) =
            controlplane(&[command, "--principal", "nobody"], &db.url, keys.path());
        assert_eq!(code, 1, "{command}");
        assert!(
            err.contains("NOT_FOUND") || err.contains("not found"),
            "{command}: {err}"
        );
    }

    let (code, out, err) = controlplane(&["migrate"], &db.url, keys.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied 0 migration"), "{out}");
    let (code, _, err) = controlplane(&["migrate"], "", keys.path());
    assert_eq!(code, 1);
    assert!(err.contains("RAP_DATABASE_URL"), "{err}");
}

// Goal: the real `rap-controlplane serve` process starts on a database,
// answers health, readiness and metrics, serves the web console over
// HTTPS when RAP_CONSOLE_LISTEN is set (its own ECDSA certificate, the
// security headers, sign-in for a caller without a session), and stops
// cleanly on SIGTERM. Method: spawn the binary, poll /readyz, read
// /metrics, GET the console pinned to its certificate, send SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_health_and_stops_on_sigterm() {
    let db = rap_testkit::pg::fresh_database().await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let grpc = rap_testkit::platform::free_addr();
    let http = rap_testkit::platform::free_addr();
    let console = rap_testkit::platform::free_addr();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rap-controlplane"))
        .args([
            "serve",
            "--listen",
            &grpc.to_string(),
            "--http-listen",
            &http.to_string(),
        ])
        .env("RAP_DATABASE_URL", &db.url)
        .env("RAP_KEYS_DIR", keys.path())
        .env("RAP_CONSOLE_LISTEN", console.to_string())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ready = None;
    for _ in 0..200 {
        if let Some(answer) = http_get(http, "/readyz").await {
            ready = Some(answer);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, body) = ready.expect("hang guard: /readyz did not answer within 10 s");
    assert!(status.contains("200"), "{status} {body}");
    let (status, metrics) = http_get(http, "/metrics").await.unwrap();
    assert!(status.contains("200"));
    assert!(
        metrics.contains("rap_cp_heartbeats_written_total 0"),
        "{metrics}"
    );
    // serve migrated the database and made the platform CA.
    assert!(keys.path().join("platform/ca.pem").exists());

    // The console: HTTPS with its own certificate; a page without a
    // session goes to sign-in; the sign-in page with the strict headers.
    let cert = keys.path().join("platform/console.pem");
    let (status, headers, _) = rap_testkit::platform::https_get(console, "/nodes", &cert)
        .await
        .expect("the console answers over HTTPS with its certificate");
    assert!(status.contains("303"), "{status}");
    assert!(
        headers
            .to_lowercase()
            .contains("location: /signin?next=%2fnodes"),
        "{headers}"
    );
    let (status, headers, body) = rap_testkit::platform::https_get(console, "/signin", &cert)
        .await
        .unwrap();
    assert!(status.contains("200"), "{status}");
    let headers = headers.to_lowercase();
    for expected in [
        "content-security-policy: default-src 'none'; style-src 'sha256-",
        "frame-ancestors 'none'",
        "x-frame-options: deny",
        "strict-transport-security:",
        "set-cookie: __host-rap-signin=",
        "httponly",
        "samesite=strict",
    ] {
        assert!(headers.contains(expected), "{expected} in {headers}");
    }
    assert!(body.contains("name=\"csrf\""), "{body}");

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("hang guard: serve did not stop within 20 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

// Goal: /readyz never serves database error text: when the database
// becomes unreachable it answers 503 with a fixed short reason, and the
// detail goes to the log at WARN. Method: the real binary; the database
// then refuses connections (ALLOW_CONNECTIONS false, backends ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_gives_a_fixed_reason_when_the_database_is_unreachable() {
    let db = rap_testkit::pg::fresh_database().await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let grpc = rap_testkit::platform::free_addr();
    let http = rap_testkit::platform::free_addr();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rap-controlplane"))
        .args([
            "serve",
            "--listen",
            &grpc.to_string(),
            "--http-listen",
            &http.to_string(),
        ])
        .env("RAP_DATABASE_URL", &db.url)
        .env("RAP_KEYS_DIR", keys.path())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ready = None;
    for _ in 0..200 {
        if let Some(answer) = http_get(http, "/readyz").await {
            ready = Some(answer);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, _) = ready.expect("hang guard: /readyz did not answer within 10 s");
    assert!(status.contains("200"), "{status}");

    // A connection to another database of the same server: the test
    // database can then refuse connections and end every session.
    let admin_url = db.url.replacen(&format!("/{}?", db.name), "/postgres?", 1);
    assert_ne!(admin_url, db.url);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS false",
        db.name
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = $1",
    )
    .bind(&db.name)
    .execute(&mut conn)
    .await
    .unwrap();
    let (status, body) = http_get(http, "/readyz").await.unwrap();
    assert!(status.contains("503"), "{status} {body}");
    assert_eq!(body, rap_controlplane::server::READYZ_DATABASE_UNAVAILABLE);

    let pid = child.id().unwrap().to_string();
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await;
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("hang guard: serve did not stop within 30 s of SIGTERM")
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("not ready")),
        "{log}"
    );
    // Let the harness drop the database.
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" WITH ALLOW_CONNECTIONS true",
        db.name
    ))
    .execute(&mut conn)
    .await
    .unwrap();
}

// Goal: `serve --insecure-plaintext` on a non-loopback address is refused
// before anything starts, naming the key to change and the explicit
// override. Method: the real binary with --listen 0.0.0.0:<port>.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_plaintext_on_a_non_loopback_address() {
    let keys = tempfile::tempdir().unwrap();
    let grpc = rap_testkit::platform::free_addr();
    let http = rap_testkit::platform::free_addr();
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_rap-controlplane"))
            .args([
                "serve",
                "--insecure-plaintext",
                "--listen",
                &format!("0.0.0.0:{}", grpc.port()),
                "--http-listen",
                &http.to_string(),
            ])
            .env("RAP_DATABASE_URL", "postgres://rap@127.0.0.1:1/rap")
            .env("RAP_KEYS_DIR", keys.path())
            .env_remove("RAP_INSECURE_PLAINTEXT_ALLOW_NON_LOOPBACK")
            .output(),
    )
    .await
    .expect("hang guard: serve did not exit")
    .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("insecure-plaintext"), "{err}");
    assert!(
        err.contains("insecure-plaintext-allow-non-loopback"),
        "{err}"
    );
}
