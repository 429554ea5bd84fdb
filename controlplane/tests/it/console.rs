//! The web console in a real browser: headless Chromium (DevTools
//! protocol over a pipe, `rap_testkit::browser`) against the real control
//! plane server with its console listener, PostgreSQL and a 3-voter
//! authority group. Screenshots of every page are written to
//! `<target>/tmp/console-screenshots/`.

use rap_controlplane::auth::{self, Kind};
use rap_controlplane::console::{Access, ROUTES};
use rap_controlplane::totp;
use rap_testkit::browser::{Browser, chromium};
use rap_testkit::platform::Platform;

fn shots_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

/// The browser, or `None` (test skipped, said loudly) when this machine
/// has no Chromium; under CI a missing Chromium fails the test
/// (scripts/test.sh installs it).
async fn browser() -> Option<Browser> {
    match chromium() {
        Some(binary) => Some(Browser::launch(&binary, &shots_dir()).await),
        None if std::env::var_os("CI").is_some() => {
            panic!("no chromium on PATH: scripts/test.sh installs Debian's chromium package")
        }
        None => {
            eprintln!(
                "SKIPPED: no chromium on PATH (apt-get install chromium, or set RAP_CHROMIUM)"
            );
            None
        }
    }
}

async fn raw_token(p: &Platform, kind: Kind) -> String {
    let mut conn = p.ctx.pool.acquire().await.unwrap();
    let id = format!("p-{}", rap_controlplane::secret::random_id().unwrap());
    auth::create_principal(&mut conn, &id, &kind, "console test")
        .await
        .unwrap()
}

async fn sign_in(b: &mut Browser, base: &str, token: &str) {
    b.goto(&format!("{base}/signin")).await;
    b.submit("#signin button", &[("token", token)]).await;
}

async fn refused_count(p: &Platform, action: &str, code: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM cluster_audit_events
          WHERE action = $1 AND result = 'refused' AND details->>'code' = $2",
    )
    .bind(action)
    .bind(code)
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap()
}

/// The last page answered `status`, else the test fails showing it.
async fn expect_status(b: &mut Browser, status: u16, what: &str) {
    if b.status != status {
        let got = b.status;
        panic!("{what}: {got} instead of {status}: {}", b.text().await);
    }
}

fn secret_from_base32(text: &str) -> Vec<u8> {
    data_encoding::BASE32_NOPAD
        .decode(text.trim().as_bytes())
        .expect("base32 secret")
}

fn code(secret: &[u8], steps_ahead: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    totp::code_at(secret, totp::step_of(now) + steps_ahead)
}

// Goal: the console works for an operator end to end in a real browser,
// and refuses what it must: a page without a session goes to sign-in;
// the owner signs in and every page renders with its data (screenshots);
// TOTP is enrolled on the account page (QR code); approving a join
// request without a fresh step-up is refused with STEP_UP_REQUIRED,
// audited, and leaves the request pending; after a step-up it is
// approved and its audit row says step_up; a role is assigned and its
// audit row is on the audit page; a form posted without its CSRF token is
// refused (audited, nothing changed); an idle session is sent back to
// sign-in; an organization admin gets 403 on every core page (audited)
// and sees only its organization. Method: real control plane + console,
// PostgreSQL, authority group; Chromium driven over its DevTools pipe;
// the database read for what changed; time moved by editing the session
// and step-up rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser() {
    let p = Platform::start().await;
    let cp = p.serve_console().await;
    let Some(mut b) = browser().await else {
        return;
    };
    let base = format!("https://{}", cp.console_addr.unwrap());
    let (_key, pending) = p.join(&["can_run_rdp_worker"]).await;
    let agent = p.enroll(&["can_run_vnc_worker"]).await;

    // No session: sent to sign-in.
    b.goto(&format!("{base}/nodes")).await;
    assert!(
        b.url().await.contains("/signin?next=%2Fnodes"),
        "{}",
        b.url().await
    );
    b.screenshot("00-signin").await;
    // A wrong token: refused and audited, no session.
    b.submit("#signin button", &[("token", "rapat.nope.nope")])
        .await;
    assert_eq!(b.status, 401);
    assert_eq!(b.text_of("#code").await, "UNAUTHENTICATED");

    // The owner signs in (on the page that refused the wrong token) and
    // lands on the page asked for.
    b.submit("#signin button", &[("token", &p.owner_token)])
        .await;
    expect_status(&mut b, 200, "").await;
    assert!(b.url().await.ends_with("/nodes"), "{}", b.url().await);
    assert!(
        b.text().await.contains(&agent),
        "the nodes page lists {agent}"
    );
    let signed_in: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cluster_audit_events WHERE action = 'console.sign-in' AND result = 'ok'",
    )
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!(signed_in, 1);

    // Every page renders (one answer each), with a screenshot.
    for (shot, route) in (1..).zip(ROUTES.iter().filter(|r| !r.post)) {
        let url = match route.path {
            "/node" => format!("{base}/node?cluster=c1&node={agent}"),
            "/org" => format!("{base}/org"),
            path => format!("{base}{path}"),
        };
        b.goto(&url).await;
        expect_status(&mut b, 200, route.path).await;
        assert!(
            b.text().await.contains(route.title),
            "{} shows its title",
            route.path
        );
        b.screenshot(&format!(
            "{shot:02}-{}",
            route.title.to_lowercase().replace(' ', "-")
        ))
        .await;
    }
    b.goto(&format!("{base}/")).await;
    assert!(b.text().await.contains("c1"));
    b.goto(&format!("{base}/join-requests")).await;
    assert!(
        b.text().await.contains(&pending),
        "the pending request is listed"
    );
    // Sorted by a column on request: the header link says so.
    b.goto(&format!("{base}/nodes?sort=0&dir=desc")).await;
    assert!(b.text().await.contains("Node ▼"));

    // TOTP enrolment on the account page: QR code and secret; the first
    // code confirms it.
    b.goto(&format!("{base}/account")).await;
    b.navigate_by("document.querySelector('#enroll').click()")
        .await;
    expect_status(&mut b, 200, "").await;
    assert_eq!(
        b.eval("document.querySelectorAll('svg.qr path').length")
            .await,
        1
    );
    b.screenshot("20-totp-enrolment").await;
    let secret = secret_from_base32(&b.text_of("#secret").await);
    b.submit(
        "form[action='/account/totp/confirm'] button",
        &[("code", &code(&secret, 0))],
    )
    .await;
    assert!(
        b.url().await.contains("done=principal.totp-confirm"),
        "{}",
        b.text().await
    );

    // The confirmation stepped the token up; its window is over now.
    sqlx::query("UPDATE admin_api_tokens SET stepped_up_until = now() - interval '1 second'")
        .execute(&p.ctx.pool)
        .await
        .unwrap();
    b.goto(&format!("{base}/join-requests")).await;
    b.submit(&format!("#approve-{pending}"), &[("node_id", "rdp-1")])
        .await;
    assert_eq!(b.status, 403);
    assert_eq!(b.text_of("#code").await, "STEP_UP_REQUIRED");
    b.screenshot("21-step-up-required").await;
    assert_eq!(
        refused_count(&p, "join-request.approve", "STEP_UP_REQUIRED").await,
        1
    );
    let status: String =
        sqlx::query_scalar("SELECT status FROM node_join_requests WHERE join_request_id = $1")
            .bind(&pending)
            .fetch_one(&p.ctx.pool)
            .await
            .unwrap();
    assert_eq!(status, "pending", "nothing changed");

    // Step up with the next code (a code is good once), then approve.
    b.submit("#step-up button", &[("code", &code(&secret, 1))])
        .await;
    assert!(
        b.url().await.contains("/join-requests"),
        "{}",
        b.url().await
    );
    b.submit(&format!("#approve-{pending}"), &[("node_id", "rdp-1")])
        .await;
    expect_status(&mut b, 200, "").await;
    assert!(b.text_of("#done").await.contains("join-request.approve"));
    b.screenshot("22-approved").await;
    let step_up: Option<bool> = sqlx::query_scalar(
        "SELECT (details->>'step_up')::boolean FROM cluster_audit_events
          WHERE action = 'join-request.approve' AND result = 'ok' AND target = $1",
    )
    .bind(&pending)
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!(
        step_up,
        Some(true),
        "the audit row says the step-up was used"
    );

    // A role, and its audit row on the audit page.
    b.goto(&format!("{base}/roles")).await;
    b.submit(
        "#assign button",
        &[("cluster", "c1"), ("node", "rdp-1"), ("role", "rdp-worker")],
    )
    .await;
    expect_status(&mut b, 200, "").await;
    assert!(b.text_of("#done").await.contains("role.assign"));
    b.navigate_by("document.querySelector('#done a').click()")
        .await;
    let audit = b.text().await;
    assert!(
        audit.contains("role.assign") && audit.contains("rdp-1"),
        "{audit}"
    );
    b.screenshot("23-audit-of-the-role").await;
    // The node's own timeline holds its role too (targets under the node).
    b.goto(&format!("{base}/node?cluster=c1&node=rdp-1")).await;
    let timeline = b.text().await;
    assert!(timeline.contains("rdp-1/rdp-worker"), "{timeline}");

    // A form without its CSRF token: refused, audited, nothing changed.
    let roles_before = p
        .count("SELECT count(*) FROM node_role_assignments WHERE status = 'active'")
        .await;
    b.goto(&format!("{base}/roles")).await;
    b.navigate_by(
        "(() => { const f = document.createElement('form'); f.method = 'post'; \
         f.action = '/roles/assign'; for (const [k, v] of [['cluster','c1'],['node','rdp-1'],\
         ['role','rdp-worker'],['org','other']]) { const i = document.createElement('input'); \
         i.name = k; i.value = v; f.appendChild(i); } document.body.appendChild(f); f.submit(); })()",
    )
    .await;
    assert_eq!(b.status, 403);
    assert_eq!(b.text_of("#code").await, "PERMISSION_DENIED");
    assert!(b.text().await.contains("CSRF"));
    assert_eq!(
        p.count("SELECT count(*) FROM node_role_assignments WHERE status = 'active'")
            .await,
        roles_before
    );
    let csrf_refusals = p
        .count(
            "SELECT count(*) FROM cluster_audit_events WHERE action = 'role.assign' \
             AND result = 'refused' AND reason LIKE '%CSRF%'",
        )
        .await;
    assert_eq!(csrf_refusals, 1);

    // An idle session ends: back to sign-in, with the reason.
    sqlx::query("UPDATE console_sessions SET last_seen_at = now() - interval '1 hour'")
        .execute(&p.ctx.pool)
        .await
        .unwrap();
    b.goto(&format!("{base}/nodes")).await;
    assert!(b.url().await.contains("/signin"), "{}", b.url().await);
    assert!(b.text_of("#ended").await.contains("session ended"));
    assert_eq!(p.count("SELECT count(*) FROM console_sessions").await, 0);

    // An organization admin: its organization only; 403 on every core
    // page, each refusal audited.
    p.principal("org-admin", Some("acme")).await;
    let org_token = raw_token(&p, Kind::OrgAdmin("acme".into())).await;
    sign_in(&mut b, &base, &org_token).await;
    assert!(b.url().await.ends_with("/org"), "{}", b.url().await);
    let org_page = b.text().await;
    assert!(org_page.contains("acme"), "{org_page}");
    assert!(
        !org_page.contains("c1") || !org_page.contains(&agent),
        "{org_page}"
    );
    b.screenshot("30-organization-view").await;
    let before = refused_count(&p, "console.view", "PERMISSION_DENIED").await;
    let core: Vec<&str> = ROUTES
        .iter()
        .filter(|r| !r.post && r.access == Access::Platform)
        .map(|r| r.path)
        .collect();
    for path in &core {
        b.goto(&format!("{base}{path}")).await;
        expect_status(&mut b, 403, path).await;
        assert!(
            !b.text().await.contains(&agent),
            "{path} shows nothing of the core"
        );
    }
    b.screenshot("31-organization-admin-refused").await;
    assert_eq!(
        refused_count(&p, "console.view", "PERMISSION_DENIED").await - before,
        core.len() as i64
    );
    // A core form too (its CSRF token is the session's own).
    b.goto(&format!("{base}/account")).await;
    b.navigate_by(
        "(() => { const f = document.querySelector('form[action=\"/signout\"]'); \
         f.action = '/roles/assign'; f.submit(); })()",
    )
    .await;
    assert_eq!(b.status, 403);

    // Sign out ends the session.
    b.goto(&format!("{base}/org")).await;
    b.navigate_by("document.querySelector('form[action=\"/signout\"] button').click()")
        .await;
    assert!(b.url().await.contains("/signin"));
    b.goto(&format!("{base}/org")).await;
    assert!(b.url().await.contains("/signin"), "{}", b.url().await);
}
