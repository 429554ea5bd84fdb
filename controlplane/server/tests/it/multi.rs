//! Two real `rap-controlplane serve` processes on one PostgreSQL (and one
//! keys directory): what one decides, the other must respect at once.
//! Approvals and promotions race through both; a revocation through one
//! is refused by the other's agent API within a second.

use rap_controlplane::enrollment;
use rap_controlplane::tls::client_tls_config;
use rap_proto::pb;
use rap_proto::pb::admin_service_client::AdminServiceClient;
use rap_proto::pb::agent_service_client::AgentServiceClient;
use rap_testkit::platform::{AgentKey, Platform, free_addr, http_get, wait_for_minority};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Longest wait for a process to answer `/readyz` (hang guard).
const READY_GUARD: Duration = Duration::from_secs(30);
/// How soon a revocation through one process must be refused by another.
const REVOCATION_SEEN_WITHIN: Duration = Duration::from_secs(1);
/// Pause between heartbeats while waiting for the refusal (well within a
/// node's heartbeat burst over that second).
const HEARTBEAT_POLL: Duration = Duration::from_millis(150);

/// One `rap-controlplane serve` child process; killed when dropped.
struct Serve {
    child: tokio::process::Child,
    addr: SocketAddr,
    http: SocketAddr,
    log: std::path::PathBuf,
}

impl Serve {
    /// Starts the real binary on the platform's database and keys; waits
    /// until `/readyz` answers 200.
    async fn start(p: &Platform, name: &str) -> Serve {
        let addr = free_addr();
        let http = free_addr();
        let log = p.dir.path().join(format!("{name}.log"));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rap-controlplane"))
            .args([
                "serve",
                "--listen",
                &addr.to_string(),
                "--http-listen",
                &http.to_string(),
            ])
            .env("RAP_DATABASE_URL", &p.db.url)
            .env("RAP_KEYS_DIR", &p.ctx.keys_dir)
            .env("RUST_LOG", "info,sqlx=warn,rap_controlplane=debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let serve = Serve {
            child,
            addr,
            http,
            log,
        };
        let started = Instant::now();
        loop {
            if let Some((status, _)) = http_get(http, "/readyz").await
                && status.contains("200")
            {
                return serve;
            }
            assert!(
                started.elapsed() < READY_GUARD,
                "hang guard: {name} not ready; its log:\n{}",
                serve.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An admin client over TLS pinned to the platform CA.
    async fn admin(&self, p: &Platform) -> AdminServiceClient<Channel> {
        let platform_ca = std::fs::read_to_string(p.ctx.keys_dir.join("platform/ca.pem")).unwrap();
        AdminServiceClient::new(
            channel(
                self.addr,
                client_tls_config(&platform_ca, "localhost", None),
            )
            .await,
        )
    }

    /// The value of gauge `name` on `/metrics`.
    async fn gauge(&self, name: &str) -> Option<String> {
        let (_, body) = http_get(self.http, "/metrics").await?;
        body.lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .map(str::to_string)
    }

    /// Waits until this process answers identity checks from its cache
    /// (its identity listener is current; hang guard 20 s).
    async fn wait_for_identity_cache(&self) {
        let started = Instant::now();
        while self.gauge("rap_cp_identity_cache_in_use").await.as_deref() != Some("1") {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "hang guard: the identity cache never came into use; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn channel(addr: SocketAddr, tls: ClientTlsConfig) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn code_of(status: &tonic::Status) -> String {
    rap_core::codes::error_detail(status)
        .map(|d| d.code)
        .unwrap_or_default()
}

/// (result, reason) of every audit event with `action` on `target`.
async fn events(p: &Platform, action: &str, target: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT result, reason FROM cluster_audit_events
          WHERE action = $1 AND target = $2 ORDER BY event_id",
    )
    .bind(action)
    .bind(target)
    .fetch_all(&p.ctx.pool)
    .await
    .unwrap()
}

/// Exactly one of two answers is Ok; returns (the Ok, the refusal).
fn one_winner<T: std::fmt::Debug>(
    a: Result<T, tonic::Status>,
    b: Result<T, tonic::Status>,
) -> (T, tonic::Status) {
    match (a, b) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
        (a, b) => panic!("expected exactly one winner: {a:?} / {b:?}"),
    }
}

// Goal: two processes approving the same join request at once: exactly
// one approval wins, the other is refused FAILED_PRECONDITION ("not
// pending"), the database holds one node, one identity and one membership,
// and both outcomes are audited. Method: a pending request; the same
// ApproveJoinRequest sent through both processes concurrently (tokio::join);
// then the rows and the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_approvals_through_two_processes_have_one_winner() {
    let p = Platform::start().await;
    let one = Serve::start(&p, "cp1").await;
    let two = Serve::start(&p, "cp2").await;
    let (_key, id) = p.join(&["can_run_rdp_worker"]).await;
    let (mut admin1, mut admin2) = (one.admin(&p).await, two.admin(&p).await);
    let request = pb::ReviewJoinRequestRequest {
        join_request_id: id.clone(),
        node_id: "rdp-1".into(),
        ..Default::default()
    };
    let identities_before = p.count("SELECT count(*) FROM node_identities").await;

    let (a, b) = tokio::join!(
        admin1.approve_join_request(bearer(request.clone(), &p.owner_token)),
        admin2.approve_join_request(bearer(request.clone(), &p.owner_token)),
    );
    let (won, lost) = one_winner(a, b);
    let won = won.into_inner();
    assert_eq!(won.node_id, "rdp-1");
    assert_eq!(won.status, pb::JoinRequestStatus::Approved as i32);
    assert_eq!(code_of(&lost), "FAILED_PRECONDITION", "{lost:?}");
    assert!(lost.message().contains("not pending"), "{lost:?}");

    assert_eq!(
        p.count("SELECT count(*) FROM node_identities").await,
        identities_before + 1
    );
    assert_eq!(
        p.count("SELECT count(*) FROM node_identities WHERE node_id = 'rdp-1' AND identity_status = 'active'")
            .await,
        1
    );
    assert_eq!(
        p.count("SELECT count(*) FROM cluster_memberships WHERE node_id = 'rdp-1'")
            .await,
        1
    );
    assert_eq!(
        p.count("SELECT count(*) FROM nodes WHERE node_id = 'rdp-1'")
            .await,
        1
    );
    let results: Vec<String> = events(&p, "join-request.approve", &id)
        .await
        .into_iter()
        .map(|(result, reason)| {
            if result == "refused" {
                assert!(reason.contains("not pending"), "{reason}");
            }
            result
        })
        .collect();
    let mut sorted = results.clone();
    sorted.sort();
    assert_eq!(sorted, ["ok", "refused"], "{results:?}");
}

// Goal: two processes promoting the same cluster at once: exactly one
// promotion wins (term 2 with the survivor, the other voters retired);
// the other waits for it and is refused FAILED_PRECONDITION naming the
// current term, as a second promotion in one process is; no third term is
// written and both outcomes are audited. Method: stop two of three voters,
// wait until s1 sees a minority, send the same PromotePartition (survivor
// s1, expected term 1) through both processes concurrently; then the
// authority rows, the storage roles and the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_promotions_through_two_processes_have_one_winner() {
    let p = Platform::start().await;
    let one = Serve::start(&p, "cp1").await;
    let two = Serve::start(&p, "cp2").await;
    p.stop_voters(2).await;
    wait_for_minority(&p, "s1").await;
    let (mut admin1, mut admin2) = (one.admin(&p).await, two.admin(&p).await);
    let request = pb::PromotePartitionRequest {
        cluster_id: p.cluster.clone(),
        survivors: vec!["s1".into()],
        expected_term: 1,
    };

    let (a, b) = tokio::join!(
        admin1.promote_partition(bearer(request.clone(), &p.owner_token)),
        admin2.promote_partition(bearer(request.clone(), &p.owner_token)),
    );
    let (won, lost) = one_winner(a, b);
    let won = won.into_inner();
    assert_eq!(won.authority_term, 2);
    assert_eq!(won.leader_id, "s1");
    assert_eq!(code_of(&lost), "FAILED_PRECONDITION", "{lost:?}");
    assert!(
        lost.message().contains("current authority term") && lost.message().contains("is 2"),
        "{lost:?}"
    );

    let terms: Vec<(i64, String, Vec<String>, bool)> = sqlx::query_as(
        "SELECT authority_term, reason, survivors, ended_at IS NOT NULL
           FROM cluster_authority_terms WHERE cluster_id = $1 ORDER BY authority_term",
    )
    .bind(&p.cluster)
    .fetch_all(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!(
        terms,
        vec![
            (
                1,
                "bootstrap".into(),
                vec!["s1".into(), "s2".into(), "s3".into()],
                true
            ),
            (2, "promotion".into(), vec!["s1".into()], false),
        ]
    );
    let roles: Vec<(String, String)> = sqlx::query_as(
        "SELECT node_id, role FROM storage_nodes WHERE cluster_id = $1 ORDER BY node_id",
    )
    .bind(&p.cluster)
    .fetch_all(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!(
        roles,
        [("s1", "voter"), ("s2", "retired"), ("s3", "retired")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let promotions = p.audit_events("authority.promote").await;
    assert_eq!(promotions.len(), 2, "{promotions:?}");
    assert_eq!(
        promotions.iter().filter(|(r, _)| r == "ok").count(),
        1,
        "{promotions:?}"
    );
    assert!(
        promotions
            .iter()
            .any(|(r, reason)| r == "refused" && reason.contains("not the expected 1")),
        "{promotions:?}"
    );
    // Neither process still holds the lock: a third promotion is refused
    // at once for the stale term, not after a wait.
    let started = Instant::now();
    let third = admin2
        .promote_partition(bearer(request, &p.owner_token))
        .await
        .unwrap_err();
    assert_eq!(code_of(&third), "FAILED_PRECONDITION", "{third:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Enrols an agent node `node_id` (approved in-process, through the same
/// database); returns its mTLS client configuration.
async fn agent_with_certificate(p: &Platform, node_id: &str) -> ClientTlsConfig {
    let (key, id) = p.join(&[]).await;
    enrollment::approve(
        &p.ctx,
        &p.owner,
        &pb::ReviewJoinRequestRequest {
            join_request_id: id.clone(),
            node_id: node_id.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let status = enrollment::status(&p.ctx, &key.status_request(&p.cluster, &id))
        .await
        .unwrap();
    let identity = status.identity.unwrap();
    let ca_pem: String =
        sqlx::query_scalar("SELECT ca_cert_pem FROM clusters WHERE cluster_id = $1")
            .bind(&p.cluster)
            .fetch_one(&p.ctx.pool)
            .await
            .unwrap();
    client_tls_config(
        &ca_pem,
        &format!("{}.cluster.rap", p.cluster),
        Some((&identity.certificate_chain_pem, &key_pem(&key))),
    )
}

/// PKCS#8 PEM of an agent's key.
fn key_pem(agent: &AgentKey) -> String {
    agent.pem()
}

fn heartbeat(p: &Platform, node_id: &str) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        cluster_id: p.cluster.clone(),
        node_id: node_id.into(),
        health: pb::NodeHealth::Healthy as i32,
        agent_version: "0.1.0".into(),
        sent_at_unix_ms: rap_proto::time::UnixMillis::now().0,
        ..Default::default()
    }
}

/// Sends heartbeats of `node` through `client` every [`HEARTBEAT_POLL`]
/// until one is refused CERTIFICATE_REVOKED; fails if
/// a heartbeat sent [`REVOCATION_SEEN_WITHIN`] or more after `revoked_at`
/// is still accepted (so a slow machine's late answers are no failure,
/// and the loop ends: every heartbeat after the deadline is refused or
/// fails the test).
async fn refused_within_a_second(
    client: &mut AgentServiceClient<Channel>,
    p: &Platform,
    node: &str,
    revoked_at: Instant,
    serve: &Serve,
) {
    let mut accepted = 0;
    let refusal = loop {
        let sent = revoked_at.elapsed();
        match client.heartbeat(heartbeat(p, node)).await {
            Err(status) if code_of(&status) == "CERTIFICATE_REVOKED" => break status,
            Ok(_) => accepted += 1,
            Err(status) => panic!("unexpected refusal: {status:?}"),
        }
        assert!(
            sent < REVOCATION_SEEN_WITHIN,
            "the other process still accepted the revoked node's heartbeat sent {} ms after the \
             revocation ({accepted} heartbeats accepted since); its log:\n{}",
            sent.as_millis(),
            serve.log_text()
        );
        tokio::time::sleep(HEARTBEAT_POLL).await;
    };
    assert_eq!(refusal.code(), tonic::Code::PermissionDenied);
    assert!(refusal.message().contains("was revoked"), "{refusal:?}");
}

/// RevokeNode `node` through `serve` as the owner.
async fn revoke_through(serve: &Serve, p: &Platform, node: &str) {
    serve
        .admin(p)
        .await
        .revoke_node(bearer(
            pb::RevokeNodeRequest {
                cluster_id: p.cluster.clone(),
                node_id: node.into(),
                reason: "two processes".into(),
            },
            &p.owner_token,
        ))
        .await
        .unwrap();
}

// Goal: a node revoked through process 1 is refused by process 2's agent
// API within a second, although process 2 had just accepted (and cached)
// its identity; another node is still accepted by both; the revocation is
// audited once. Method: two agents with certificates; both heartbeat to
// both processes once their identity caches are in use
// (`rap_cp_identity_cache_in_use 1`); RevokeNode through process 1; then
// heartbeats to process 2 every 150 ms until CERTIFICATE_REVOKED, failing if
// one is still accepted 1 s after the revocation returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_through_one_process_is_refused_by_the_other_within_a_second() {
    let p = Platform::start().await;
    let one = Serve::start(&p, "cp1").await;
    let two = Serve::start(&p, "cp2").await;
    let revoked_tls = agent_with_certificate(&p, "rdp-1").await;
    let kept_tls = agent_with_certificate(&p, "rdp-2").await;
    one.wait_for_identity_cache().await;
    two.wait_for_identity_cache().await;
    let mut revoked_on_two = AgentServiceClient::new(channel(two.addr, revoked_tls.clone()).await);
    let mut revoked_on_one = AgentServiceClient::new(channel(one.addr, revoked_tls).await);
    let mut kept_on_two = AgentServiceClient::new(channel(two.addr, kept_tls).await);
    for _ in 0..2 {
        revoked_on_two
            .heartbeat(heartbeat(&p, "rdp-1"))
            .await
            .unwrap();
    }
    revoked_on_one
        .heartbeat(heartbeat(&p, "rdp-1"))
        .await
        .unwrap();
    kept_on_two.heartbeat(heartbeat(&p, "rdp-2")).await.unwrap();

    revoke_through(&one, &p, "rdp-1").await;
    let revoked_at = Instant::now();
    refused_within_a_second(&mut revoked_on_two, &p, "rdp-1", revoked_at, &two).await;
    // The revoking process refuses it too; the other node is untouched.
    let own = revoked_on_one
        .heartbeat(heartbeat(&p, "rdp-1"))
        .await
        .unwrap_err();
    assert_eq!(code_of(&own), "CERTIFICATE_REVOKED", "{own:?}");
    kept_on_two.heartbeat(heartbeat(&p, "rdp-2")).await.unwrap();
    assert_eq!(
        p.count("SELECT count(*) FROM node_identities WHERE node_id = 'rdp-2' AND identity_status = 'active'")
            .await,
        1
    );
    assert_eq!(
        p.count("SELECT count(*) FROM node_identities WHERE node_id = 'rdp-1' AND identity_status = 'revoked'")
            .await,
        1
    );
    assert_eq!(
        p.count("SELECT count(*) FROM node_identities WHERE node_id = 'rdp-1' AND identity_status <> 'revoked'")
            .await,
        0
    );
    let audited = events(&p, "node.revoke", "rdp-1").await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0].0, "ok", "{audited:?}");
    // Both processes are still serving with their caches in use.
    one.wait_for_identity_cache().await;
    two.wait_for_identity_cache().await;
}

// Goal: the fallback when the listener connection drops: a revocation
// committed while process 2 has no listening session (its notification is
// lost) is still refused by process 2 within a second, the revocation is
// audited once, and process 2's listener comes back by itself (gauge back
// to 1; the loss is logged). Method: both caches in use and rdp-1 cached
// as active in process 2; every LISTEN backend of the database is ended
// (pg_terminate_backend), the revocation goes through process 1 at once,
// then heartbeats to process 2 as in the test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_while_the_listener_is_cut_is_still_refused_within_a_second() {
    let p = Platform::start().await;
    let one = Serve::start(&p, "cp1").await;
    let two = Serve::start(&p, "cp2").await;
    let tls = agent_with_certificate(&p, "rdp-1").await;
    one.wait_for_identity_cache().await;
    two.wait_for_identity_cache().await;
    let mut on_two = AgentServiceClient::new(channel(two.addr, tls).await);
    on_two.heartbeat(heartbeat(&p, "rdp-1")).await.unwrap();
    on_two.heartbeat(heartbeat(&p, "rdp-1")).await.unwrap();

    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND query ILIKE 'LISTEN%rap_cp_identities%'",
    )
    .fetch_all(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!(ended, [true, true], "one listener per process");
    revoke_through(&one, &p, "rdp-1").await;
    let revoked_at = Instant::now();
    refused_within_a_second(&mut on_two, &p, "rdp-1", revoked_at, &two).await;

    assert_eq!(
        p.count("SELECT count(*) FROM node_identities WHERE node_id = 'rdp-1' AND identity_status = 'revoked'")
            .await,
        1
    );
    let audited = events(&p, "node.revoke", "rdp-1").await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0].0, "ok", "{audited:?}");
    one.wait_for_identity_cache().await;
    two.wait_for_identity_cache().await;
    assert!(
        two.log_text().contains("identity listener lost"),
        "{}",
        two.log_text()
    );
    // Still refused once the listener is back (the cache was emptied).
    let again = on_two.heartbeat(heartbeat(&p, "rdp-1")).await.unwrap_err();
    assert_eq!(code_of(&again), "CERTIFICATE_REVOKED", "{again:?}");
}

// Goal: the promotion lock itself: while one holder has a cluster's lock a
// second taker waits (another cluster's lock is free), and when the
// holder's connection dies (a crashed process) PostgreSQL releases the
// lock and the waiter gets it. Method: lock_promotion on the platform's
// pool; a second one for the same cluster is still waiting after 1 s; the
// holder's backend (pg_locks, advisory, granted) is ended with
// pg_terminate_backend; the waiter then finishes (hang guard 10 s). No
// authority row changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_promotion_lock_holder_releases_the_lock() {
    use rap_controlplane::db::coordination::{lock_promotion, promotion_lock_key};
    let p = Platform::without_storage("c1", rap_core::tls::NODE_CERT_VALIDITY_DEFAULT).await;
    let terms_before = p
        .count("SELECT count(*) FROM cluster_authority_terms")
        .await;
    let held = lock_promotion(&p.ctx.pool, "c1").await.unwrap();
    let other = tokio::time::timeout(Duration::from_secs(5), lock_promotion(&p.ctx.pool, "c2"))
        .await
        .expect("another cluster's lock is free")
        .unwrap();
    other.release().await;

    let pool = p.ctx.pool.clone();
    let mut waiter = tokio::spawn(async move { lock_promotion(&pool, "c1").await });
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut waiter)
            .await
            .is_err(),
        "the second taker must wait while the lock is held"
    );
    // The key as pg_locks shows it: classid = high 32 bits, objid = low.
    let key = promotion_lock_key("c1");
    let holders: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_locks
          WHERE locktype = 'advisory' AND granted
            AND ((classid::bigint << 32) | objid::bigint) = $1",
    )
    .bind(key)
    .fetch_all(&p.ctx.pool)
    .await
    .unwrap();
    assert_eq!(holders.len(), 1, "{holders:?}");
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(holders[0])
        .fetch_one(&p.ctx.pool)
        .await
        .unwrap();
    assert!(ended);
    let taken = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("hang guard: the lock of a dead holder was not released")
        .unwrap()
        .unwrap();
    taken.release().await;
    drop(held);
    assert_eq!(
        p.count("SELECT count(*) FROM cluster_authority_terms")
            .await,
        terms_before
    );
}

// Goal: a cluster created through one process is served by the other's
// TLS listener too (its server certificate for `<cluster>.cluster.rap`),
// without a restart, within the refresh interval. Method: CreateCluster
// through process 1; then TLS connections to process 2 that pin the new
// cluster's CA under its server name, until one handshake succeeds (a
// listener that never learns the cluster has no certificate for that name,
// and the test fails at the deadline); the audit row of the creation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_created_through_one_process_is_served_by_the_other() {
    let p = Platform::start().await;
    let one = Serve::start(&p, "cp1").await;
    let two = Serve::start(&p, "cp2").await;
    let mut admin1 = one.admin(&p).await;
    admin1
        .create_cluster(bearer(
            pb::CreateClusterRequest {
                cluster_id: "c2".into(),
                name: "second".into(),
            },
            &p.owner_token,
        ))
        .await
        .unwrap();
    let ca_pem = std::fs::read_to_string(p.ctx.keys_dir.join("clusters/c2/ca.pem")).unwrap();
    let deadline = rap_controlplane::server::CLUSTER_REFRESH_INTERVAL + Duration::from_secs(5);
    let started = Instant::now();
    loop {
        let connected = Endpoint::from_shared(format!("https://{}", two.addr))
            .unwrap()
            .tls_config(client_tls_config(&ca_pem, "c2.cluster.rap", None))
            .unwrap()
            .connect()
            .await;
        match connected {
            Ok(_) => break,
            Err(e) => assert!(
                started.elapsed() < deadline,
                "process 2 still does not serve cluster c2 after {:?}: {e}; its log:\n{}",
                started.elapsed(),
                two.log_text()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        events(&p, "cluster.create", "c2").await,
        vec![("ok".to_string(), String::new())]
    );
}
