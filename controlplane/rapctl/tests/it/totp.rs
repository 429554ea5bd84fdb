//! TOTP enrolment and step-up with the real rapctl against the real
//! server and PostgreSQL.

use crate::Rapctl;
use rap_controlplane::limits::TOTP_FAILURES_MAX;
use rap_controlplane::totp::{TOTP_STEP_SECONDS, code_at, step_of};
use rap_testkit::platform::{ControlPlane, Platform};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn now_step() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    step_of(now)
}

/// A code that is none of `secret`'s codes near now.
fn wrong_code(secret: &[u8]) -> String {
    let step = now_step();
    let near: Vec<String> = (step - 2..=step + 2).map(|s| code_at(secret, s)).collect();
    (0..10u32)
        .map(|n| format!("{:06}", 123_450 + n))
        .find(|code| !near.contains(code))
        .unwrap()
}

/// Runs rapctl with `token` at a terminal (`script` gives it one) typing
/// `input`: (exit code, everything the terminal showed).
async fn rapctl_at_terminal(
    server: &ControlPlane,
    p: &Platform,
    token: &str,
    args: &[&str],
    input: &str,
) -> (i32, String) {
    let token_file = p.dir.path().join("terminal-token");
    std::fs::write(&token_file, token).unwrap();
    let ca = p.ctx.keys_dir.join("platform/ca.pem");
    let endpoint = format!("https://{}", server.addr);
    let mut words: Vec<String> = vec![env!("CARGO_BIN_EXE_rapctl").to_string()];
    words.extend(args.iter().map(|a| a.to_string()));
    words.extend([
        "--endpoint".into(),
        endpoint,
        "--ca".into(),
        ca.display().to_string(),
        "--token-file".into(),
        token_file.display().to_string(),
    ]);
    let line = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = tokio::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_remove("RAP_SERVER_NAME")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (bsdutils) runs");
    use tokio::io::AsyncWriteExt as _;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

async fn join_tokens(p: &Platform) -> i64 {
    p.count("SELECT count(*) FROM node_join_tokens").await
}

// Goal: a principal enrols a TOTP with rapctl and from then on every
// high-risk command needs a fresh step-up: refused with STEP_UP_REQUIRED
// (nothing created, the refusal audited) on a token that did not step up,
// done after `rapctl step-up` with the audit row saying step-up was used;
// a code is good once, a wrong code is refused and audited, five refused
// codes in the window stop further tries (RATE_LIMITED); a principal
// without TOTP has nothing to step up with; enrolling again needs a
// step-up. Method: the real platform and binary; codes computed from the
// secret `enroll` prints, as an authenticator app does (RFC 6238); the
// owner's second and third API tokens made with `rapctl principal token
// create` (not stepped up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_enrolment_and_step_up() {
    let p = Platform::start().await;
    let server = p.serve().await;
    let create_token = ["token", "create", "--cluster", "c1", "--ttl", "10m"];

    // Without TOTP nothing changes for the owner.
    let (code, _, err) = server.rapctl(&p, &create_token).await;
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = server
        .rapctl(&p, &["principal", "totp", "enroll", "-o", "json"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("ONCE"), "{err}");
    let enrolled = json(&out);
    let uri = enrolled["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/rap:"), "{uri}");
    let secret = data_encoding::BASE32_NOPAD
        .decode(enrolled["secret_base32"].as_str().unwrap().as_bytes())
        .unwrap();
    assert_eq!(secret.len(), 20);
    // Unconfirmed: not in force yet.
    let (code, _, err) = server.rapctl(&p, &create_token).await;
    assert_eq!(code, 0, "{err}");

    // A wrong first code, then the right one.
    let (code, _, err) = server
        .rapctl(&p, &["principal", "totp", "confirm", &wrong_code(&secret)])
        .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("TOTP_INVALID") && err.contains("hint:"),
        "{err}"
    );
    assert_eq!(
        p.audit_events("principal.totp-confirm")
            .await
            .last()
            .unwrap()
            .0,
        "refused"
    );
    let step = now_step();
    let (code, out, err) = server
        .rapctl(
            &p,
            &[
                "principal",
                "totp",
                "confirm",
                &code_at(&secret, step),
                "-o",
                "json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["enrolled"], true, "{out}");
    let (code, out, err) = server.rapctl(&p, &["whoami", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["totp_enrolled"], true, "{out}");
    assert_eq!(json(&out)["stepped_up"], true, "{out}");

    // A second token of the owner has not stepped up: refused, audited,
    // nothing created.
    let owner = p.owner.id.clone();
    let new_token = async || {
        let (code, out, err) = server
            .rapctl(&p, &["principal", "token", "create", &owner, "-o", "json"])
            .await;
        assert_eq!(code, 0, "{err}");
        json(&out)["raw_token"].as_str().unwrap().to_string()
    };
    let second = new_token().await;
    let before = join_tokens(&p).await;
    let refusals = p.audit_events("join-token.create").await.len();
    let (code, _, err) = server.rapctl_as(&p, &second, &create_token).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("STEP_UP_REQUIRED") && err.contains("rapctl step-up"),
        "{err}"
    );
    assert_eq!(join_tokens(&p).await, before, "nothing created");
    let audited = p.audit_events("join-token.create").await;
    assert_eq!(audited.len(), refusals + 1);
    assert_eq!(audited.last().unwrap().0, "refused");

    // The code already used does not step up; the next one does.
    let (code, _, err) = server
        .rapctl_as(&p, &second, &["step-up", &code_at(&secret, step)])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("TOTP_INVALID"), "{err}");
    // At a terminal rapctl asks for the code itself, steps up and runs
    // the command again.
    let next = code_at(&secret, step + 1);
    let (code, shown) =
        rapctl_at_terminal(&server, &p, &second, &create_token, &format!("{next}\n")).await;
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains("TOTP code:") && shown.contains("running the command again"),
        "{shown}"
    );
    assert_eq!(join_tokens(&p).await, before + 1);
    let until: i64 = sqlx::query_scalar(
        "SELECT (extract(epoch FROM stepped_up_until) * 1000)::bigint
           FROM admin_api_tokens WHERE stepped_up_until IS NOT NULL
          ORDER BY stepped_up_until DESC LIMIT 1",
    )
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap();
    let now_ms = i64::try_from(now_step() * TOTP_STEP_SECONDS * 1000).unwrap();
    assert!(until > now_ms + 4 * 60_000, "{until}");
    let step_up_used: Option<bool> = sqlx::query_scalar(
        "SELECT (details->>'step_up')::boolean FROM cluster_audit_events
          WHERE action = 'join-token.create' AND result = 'ok'
          ORDER BY event_id DESC LIMIT 1",
    )
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!(step_up_used, Some(true));
    let (code, out, err) = server
        .rapctl(
            &p,
            &[
                "audit",
                "list",
                "--action",
                "join-token.create",
                "--result",
                "ok",
                "--limit",
                "1",
                "-o",
                "json",
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["events"][0]["details"]["step_up"], true, "{out}");
    // Replayed: refused.
    let (code, _, err) = server.rapctl_as(&p, &second, &["step-up", &next]).await;
    assert_eq!(code, 1);
    assert!(err.contains("TOTP_INVALID"), "{err}");

    // Enrolling again needs a step-up too.
    let third = new_token().await;
    let (code, _, err) = server
        .rapctl_as(&p, &third, &["principal", "totp", "enroll"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("STEP_UP_REQUIRED"), "{err}");
    // Stepped up, it may; the secret in force stays in force until the
    // new one is confirmed.
    let (code, _, err) = server
        .rapctl_as(&p, &second, &["principal", "totp", "enroll"])
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = server
        .rapctl_as(&p, &third, &["whoami", "-o", "json"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["totp_enrolled"], true, "{out}");
    let (code, _, err) = server.rapctl_as(&p, &third, &create_token).await;
    assert_eq!(code, 1);
    assert!(err.contains("STEP_UP_REQUIRED"), "{err}");

    // Guessing: after the budget of refused codes, even a right one is
    // refused until the window passes.
    let refused_so_far = p
        .audit_events("principal.step-up")
        .await
        .iter()
        .filter(|(result, _)| result == "refused")
        .count();
    for _ in refused_so_far..usize::try_from(TOTP_FAILURES_MAX).unwrap() {
        let (code, _, err) = server
            .rapctl_as(&p, &third, &["step-up", &wrong_code(&secret)])
            .await;
        assert_eq!(code, 1);
        assert!(err.contains("TOTP_INVALID"), "{err}");
    }
    let (code, _, err) = server
        .rapctl_as(&p, &third, &["step-up", &code_at(&secret, now_step() + 1)])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("RATE_LIMITED"), "{err}");

    // The wrong caller: a principal without TOTP has nothing to step up.
    let org_token = crate::org_admin_token(&server, &p, "acme").await;
    let (code, _, err) = server
        .rapctl_as(&p, &org_token, &["step-up", "123456"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("TOTP_NOT_ENROLLED"), "{err}");
}

// Goal: with `require-step-up` every principal needs TOTP for high-risk
// calls: one without it is refused with TOTP_NOT_ENROLLED (nothing
// created, refusal audited) but may enrol, and after confirming (which
// steps its token up) the call works. Method: a platform without storage
// (a join token needs none) served with require_step_up; the real rapctl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_step_up_asks_every_principal() {
    let mut p = Platform::without_storage("c1", std::time::Duration::from_secs(3600)).await;
    p.ctx.require_step_up = true;
    let server = p.serve().await;
    let create_token = ["token", "create", "--cluster", "c1", "--ttl", "10m"];

    let before = join_tokens(&p).await;
    let (code, _, err) = server.rapctl(&p, &create_token).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("TOTP_NOT_ENROLLED") && err.contains("totp enroll"),
        "{err}"
    );
    assert_eq!(join_tokens(&p).await, before);
    assert_eq!(
        p.audit_events("join-token.create").await.last().unwrap().0,
        "refused"
    );

    // The table form, as a person sees it: the secret and a QR code.
    let (code, out, err) = server.rapctl(&p, &["principal", "totp", "enroll"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Scan with your authenticator app"), "{out}");
    assert!(out.contains('\u{2588}'), "{out}");
    let base32 = out
        .lines()
        .find_map(|line| line.strip_prefix("SECRET"))
        .unwrap_or_else(|| panic!("no SECRET row in {out}"))
        .trim();
    let secret = data_encoding::BASE32_NOPAD
        .decode(base32.as_bytes())
        .unwrap();
    let (code, _, err) = server
        .rapctl(
            &p,
            &[
                "principal",
                "totp",
                "confirm",
                &code_at(&secret, now_step()),
            ],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = server.rapctl(&p, &create_token).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(join_tokens(&p).await, before + 1);

    // Who has enrolled: the owner now, a new org admin not; the org admin
    // may not list.
    let org_token = crate::org_admin_token(&server, &p, "acme").await;
    let (code, out, err) = server
        .rapctl(&p, &["principal", "list", "-o", "json"])
        .await;
    assert_eq!(code, 0, "{err}");
    let listed: Vec<(String, bool)> = json(&out)["principals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["totp_enrolled"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(listed.contains(&("platform-owner".into(), true)), "{out}");
    assert!(listed.contains(&("org-admin".into(), false)), "{out}");
    let (code, _, err) = server
        .rapctl_as(&p, &org_token, &["principal", "list"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    assert_eq!(
        p.audit_events("principal.list").await.last().unwrap().0,
        "refused"
    );
}
