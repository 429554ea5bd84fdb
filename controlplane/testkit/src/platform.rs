//! The test platform: a fresh PostgreSQL database (rap-pgtest, migrated),
//! a keys directory, one cluster whose authority group is three real
//! `rap-configstore` nodes over mTLS (certificates from the cluster's CA),
//! bootstrapped through the control plane. The nodes run in-process, or
//! ([`StorageMode::Processes`]) as processes of the shipped binary that a
//! test can `kill -9` ([`Platform::kill_storage`]).
//!
//! Environment: [`PLATFORM_DATABASE_URL_ENV`] (benchmarks only).

use ed25519_dalek::{Signer, SigningKey};
use rap_controlplane::auth::{self, Kind, Principal};
use rap_controlplane::context::Context;
use rap_controlplane::fencing::{AuthorityClients, StoragePeer, StorageTransport};
use rap_controlplane::keys::ClusterKeys;
use rap_controlplane::{clusters, enrollment, tokens};
use rap_proto::ids::ClusterId;
use rap_proto::pb;
use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::Duration;

/// Benchmarks only: an empty database (on a durable server) to use
/// instead of a fresh private one.
pub const PLATFORM_DATABASE_URL_ENV: &str = "RAP_PLATFORM_DATABASE_URL";

/// Voters of the test cluster.
pub const VOTERS: usize = 3;

static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback address nothing listens on, not handed out before in this
/// process.
pub fn free_addr() -> SocketAddr {
    let mut guard = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let used = guard.get_or_insert_with(HashSet::new);
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        if used.insert(addr.port()) {
            return addr;
        }
    }
}

/// How a platform runs its storage nodes.
#[derive(Clone, Debug, Default)]
pub enum StorageMode {
    /// On tasks of the test's runtime.
    #[default]
    InProcess,
    /// As `<binary> serve --config <file>` processes (the binary is a
    /// `rap-configstore` command line); each one's log is
    /// `<platform dir>/<node>.log`.
    Processes(std::path::PathBuf),
}

struct StorageNode {
    id: String,
    /// Its HTTP address (`/metrics`, `/healthz`, `/readyz`).
    http: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    process: Option<std::process::Child>,
}

impl StorageNode {
    /// Serves `config` as `mode` says; files of a process go to `dir`.
    fn start(
        mode: &StorageMode,
        config: rap_configstore::config::Config,
        dir: &std::path::Path,
    ) -> StorageNode {
        match mode {
            StorageMode::InProcess => StorageNode::spawn(config),
            StorageMode::Processes(bin) => StorageNode::launch(bin, config, dir),
        }
    }

    /// Runs `config` as a process of `bin` (config file and log in `dir`).
    fn launch(
        bin: &std::path::Path,
        config: rap_configstore::config::Config,
        dir: &std::path::Path,
    ) -> StorageNode {
        let id = config.node_id.clone();
        let http = config.http_listen;
        let file = dir.join(format!("{id}.toml"));
        std::fs::write(&file, config.to_toml().unwrap()).unwrap();
        let log = std::fs::File::create(dir.join(format!("{id}.log"))).unwrap();
        let child = std::process::Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        StorageNode {
            id,
            http,
            stop: None,
            task: None,
            process: Some(child),
        }
    }

    /// Stops it: an in-process node is asked to stop (the task to wait
    /// for is returned), a process is killed with SIGKILL and reaped.
    fn halt(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.task.take()
    }

    /// Serves `config` (a voter or a cache replica) on a task of this
    /// runtime until stopped.
    fn spawn(config: rap_configstore::config::Config) -> StorageNode {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let id = config.node_id.clone();
        let http = config.http_listen;
        let label = id.clone();
        let task = tokio::spawn(async move {
            let result = rap_configstore::server::serve(config, async move {
                let _ = stopped.await;
            })
            .await;
            if let Err(e) = result {
                eprintln!("storage node {label} stopped with: {e:#}");
            }
        });
        StorageNode {
            id,
            http,
            stop: Some(stop),
            task: Some(task),
            process: None,
        }
    }
}

/// One test platform (see the module docs).
pub struct Platform {
    /// The control plane's shared state.
    pub ctx: Context,
    /// The first platform owner.
    pub owner: Principal,
    /// The bootstrapped cluster.
    pub cluster: String,
    /// The owner's raw API token.
    pub owner_token: String,
    /// The database (kept alive).
    pub db: rap_pgtest::TestDatabase,
    /// The keys directory and the storage nodes' data.
    pub dir: tempfile::TempDir,
    nodes: Mutex<Vec<StorageNode>>,
    /// How the storage nodes run.
    storage_mode: StorageMode,
    /// Cache replicas started by [`Platform::start_cache`], by id.
    caches: Mutex<Vec<(String, StorageNode)>>,
}

/// A node agent's key, as `rap-node-agent` would hold it.
pub struct AgentKey {
    /// The private key (never leaves the "node").
    pub key: SigningKey,
}

impl AgentKey {
    /// A fresh random key.
    pub fn generate() -> AgentKey {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).unwrap();
        AgentKey {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// Its public key.
    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// A fresh nonce.
    pub fn nonce() -> Vec<u8> {
        let mut nonce = vec![0u8; 16];
        getrandom::fill(&mut nonce).unwrap();
        nonce
    }

    /// A signed join request for `cluster` with `token`.
    pub fn join_request(
        &self,
        cluster: &str,
        token: &str,
        capabilities: &[&str],
    ) -> pb::SubmitJoinRequestRequest {
        let now = rap_proto::time::UnixMillis::now().0;
        let nonce = Self::nonce();
        let proof = self.sign(enrollment::PURPOSE_JOIN, cluster, now, &nonce);
        pb::SubmitJoinRequestRequest {
            token: token.to_string(),
            cluster_id: cluster.to_string(),
            node_public_key: self.public().to_vec(),
            facts: Some(pb::NodeFacts {
                hostname: "host-a".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                agent_version: "0.1.0".into(),
                ..Default::default()
            }),
            capabilities: capabilities
                .iter()
                .map(|c| pb::Capability {
                    name: c.to_string(),
                    detail: String::new(),
                })
                .collect(),
            requested_roles: vec![],
            timestamp_unix_ms: now,
            nonce,
            proof,
            kind: pb::NodeKind::Agent as i32,
            node_id: String::new(),
            server_names: vec![],
        }
    }

    /// A signed join request of storage node `node` for `cluster` with its
    /// storage `token`, naming 127.0.0.1 and localhost as server names.
    pub fn storage_join_request(
        &self,
        cluster: &str,
        token: &str,
        node: &str,
    ) -> pb::SubmitJoinRequestRequest {
        let mut request = self.join_request(cluster, token, &[]);
        request.kind = pb::NodeKind::Storage as i32;
        request.node_id = node.to_string();
        request.server_names = vec!["127.0.0.1".into(), "localhost".into()];
        request
    }

    /// Its private key as PKCS#8 PEM (what a node keeps in `node.key`).
    pub fn pem(&self) -> String {
        // PKCS#8 v1 of an ed25519 seed: SEQUENCE { version 0, algorithm
        // 1.3.101.112, OCTET STRING { OCTET STRING seed } }.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&self.key.to_bytes());
        rcgen::KeyPair::try_from(der.as_slice())
            .unwrap()
            .serialize_pem()
    }

    /// A signed status poll.
    pub fn status_request(&self, cluster: &str, join_request_id: &str) -> pb::GetJoinStatusRequest {
        let now = rap_proto::time::UnixMillis::now().0;
        let nonce = Self::nonce();
        pb::GetJoinStatusRequest {
            join_request_id: join_request_id.to_string(),
            cluster_id: cluster.to_string(),
            node_public_key: self.public().to_vec(),
            timestamp_unix_ms: now,
            proof: self.sign(enrollment::PURPOSE_STATUS, cluster, now, &nonce),
            nonce,
        }
    }

    /// A proof of possession for `purpose`.
    pub fn sign(&self, purpose: &str, cluster: &str, now: i64, nonce: &[u8]) -> Vec<u8> {
        let message = enrollment::proof_message(purpose, cluster, &self.public(), now, nonce);
        self.key.sign(&message).to_bytes().to_vec()
    }
}

/// A join token of `cluster` valid for 10 minutes: for agents, or with a
/// `storage_node` id a storage token for that node.
pub async fn join_token(
    ctx: &Context,
    owner: &Principal,
    cluster: &str,
    max_uses: u32,
    storage_node: &str,
) -> Result<String, rap_controlplane::error::Error> {
    tokens::create(
        ctx,
        owner,
        &pb::CreateJoinTokenRequest {
            cluster_id: cluster.to_string(),
            ttl_seconds: 600,
            max_uses,
            storage_node_id: storage_node.to_string(),
        },
    )
    .await
    .map(|t| t.raw_token)
}

/// Enrols storage node `node` of `cluster` the way `rap-configstore join`
/// does: a single-use storage token, a key made "on the node" (here), a
/// join request with its proof, approved at once while the cluster has no
/// authority group (and by `owner` once it has one); writes `ca.pem`,
/// `node.pem`, `node.key` into `dir`.
pub async fn enrol_storage(
    ctx: &Context,
    owner: &Principal,
    cluster: &str,
    node: &str,
    dir: &std::path::Path,
) -> rap_core::tls::TlsFiles {
    let token = join_token(ctx, owner, cluster, 1, node).await.unwrap();
    let key = AgentKey::generate();
    let submitted = enrollment::submit(ctx, &key.storage_join_request(cluster, &token, node))
        .await
        .unwrap();
    if submitted.status != pb::JoinRequestStatus::Approved as i32 {
        enrollment::approve(
            ctx,
            owner,
            &pb::ReviewJoinRequestRequest {
                join_request_id: submitted.join_request_id.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let answer = enrollment::status(
        ctx,
        &key.status_request(cluster, &submitted.join_request_id),
    )
    .await
    .unwrap();
    let identity = answer.identity.unwrap();
    let keys = ClusterKeys::load(&ctx.keys_dir, &ClusterId::new(cluster).unwrap()).unwrap();
    let files = rap_core::tls::TlsFiles::in_dir(dir);
    std::fs::create_dir_all(dir).unwrap();
    write_private(&files.key, key.pem().as_bytes());
    std::fs::write(&files.cert, identity.certificate_chain_pem).unwrap();
    std::fs::write(&files.ca, keys.ca_cert_pem()).unwrap();
    files
}

/// Writes a private key file with mode 0600.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(bytes).unwrap();
}

fn storage_config(
    cluster: &str,
    node: &str,
    listen: SocketAddr,
    dir: &std::path::Path,
    tls: &rap_core::tls::TlsFiles,
) -> rap_configstore::config::Config {
    use rap_configstore::config::{Config, Labels, Timing, Tls};
    Config {
        node_id: node.to_string(),
        cluster_id: cluster.to_string(),
        listen,
        http_listen: free_addr(),
        data_dir: dir.join(format!("data-{node}")),
        labels: Labels {
            zone: format!("zone-{node}"),
            ..Labels::default()
        },
        // Generous timing: many groups share 2 cores in a test run.
        timing: Timing {
            heartbeat_ms: 100,
            election_timeout_min_ms: 800,
            election_timeout_max_ms: 1600,
            ..Timing::default()
        },
        tls: Some(Tls {
            ca: tls.ca.clone(),
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        }),
        ..Config::default()
    }
}

impl Platform {
    /// A platform with cluster `c1`, bootstrapped.
    pub async fn start() -> Platform {
        Self::start_cluster("c1").await
    }

    /// A platform with the given cluster, bootstrapped.
    pub async fn start_cluster(cluster: &str) -> Platform {
        Self::start_with(cluster, StorageMode::InProcess).await
    }

    /// A platform with the given cluster, bootstrapped, its storage nodes
    /// (and cache replicas) run as `mode` says.
    pub async fn start_with(cluster: &str, mode: StorageMode) -> Platform {
        let mut platform =
            Self::without_storage(cluster, rap_core::tls::NODE_CERT_VALIDITY_DEFAULT).await;
        platform.storage_mode = mode;
        platform.start_storage().await;
        platform
    }

    /// A platform whose cluster exists but has no storage node and no
    /// authority group yet; the control plane issues node certificates
    /// valid for `node_cert_validity`.
    pub async fn without_storage(cluster: &str, node_cert_validity: Duration) -> Platform {
        rap_core::tls::install_crypto_provider();
        // Benchmarks point this at a durable server (the test servers run
        // without fsync); tests always get a fresh private database.
        let db = match std::env::var(PLATFORM_DATABASE_URL_ENV) {
            Ok(url) => rap_pgtest::TestDatabase {
                url,
                name: "external".into(),
            },
            Err(_) => rap_pgtest::fresh_database().await.unwrap(),
        };
        let pool = db.pool().await.unwrap();
        rap_controlplane::db::migrate(&pool).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let ctx = Context {
            pool: pool.clone(),
            keys_dir: keys_dir.clone(),
            authority: AuthorityClients::new(StorageTransport::MutualTls {
                keys_dir: keys_dir.clone(),
            }),
            public_endpoint: "127.0.0.1:7443".into(),
            tls: None,
            identities: None,
            node_cert_validity,
            require_step_up: false,
        };
        let owner_token = auth::create_first_owner(&pool).await.unwrap().unwrap();
        let owner = auth::authenticate(&pool, Some(&format!("Bearer {owner_token}")))
            .await
            .unwrap();
        clusters::create(&ctx, &owner, cluster, "test cluster")
            .await
            .unwrap();
        Platform {
            ctx,
            owner,
            cluster: cluster.to_string(),
            owner_token,
            db,
            dir,
            nodes: Mutex::new(Vec::new()),
            storage_mode: StorageMode::InProcess,
            caches: Mutex::new(Vec::new()),
        }
    }

    /// Enrols [`VOTERS`] in-process storage nodes, starts them and
    /// bootstraps the group through the control plane; waits for a fence.
    async fn start_storage(&self) {
        let (ctx, owner, cluster, dir) = (&self.ctx, &self.owner, self.cluster.as_str(), &self.dir);
        let mut nodes = Vec::new();
        let mut voters = Vec::new();
        for i in 1..=VOTERS {
            let node = format!("s{i}");
            let tls = enrol_storage(
                ctx,
                owner,
                cluster,
                &node,
                &dir.path().join(format!("tls-{node}")),
            )
            .await;
            let listen = free_addr();
            let config = storage_config(cluster, &node, listen, dir.path(), &tls);
            config.validate().unwrap();
            nodes.push(StorageNode::start(&self.storage_mode, config, dir.path()));
            voters.push(pb::VoterSpec {
                node_id: node.clone(),
                address: listen.to_string(),
                domain: Some(pb::FailureDomain {
                    region: "r1".into(),
                    zone: format!("zone-{node}"),
                    host: node.clone(),
                }),
            });
        }
        self.nodes.lock().unwrap().extend(nodes);
        // The nodes need a moment to listen.
        self.bootstrap(voters).await;
        // Wait until the group grants fences (a leader exists).
        self.wait_for_fence().await;
    }

    /// Bootstraps the cluster's group through the control plane on
    /// `voters`, retrying while they start listening (hang guard 10 s).
    pub async fn bootstrap(&self, voters: Vec<pb::VoterSpec>) {
        let request = pb::BootstrapClusterRequest {
            cluster_id: self.cluster.clone(),
            voters,
            allow_single_voter: false,
        };
        let mut last = None;
        for _ in 0..100 {
            match clusters::bootstrap(&self.ctx, &self.owner, &request).await {
                Ok(answer) => {
                    assert_eq!(answer.authority_term, 1);
                    return;
                }
                Err(e) => {
                    last = Some(e.to_string());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        panic!("bootstrap failed: {last:?}");
    }

    /// Polls the group with real fences until one is granted (hang guard
    /// 20 s).
    pub async fn wait_for_fence(&self) {
        let peers = self.storage_peers().await;
        for _ in 0..200 {
            if self
                .ctx
                .authority
                .acquire_fence(&self.cluster, &peers, 1, "test-wait")
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("hang guard: the authority group granted no fence within 20 s");
    }

    /// Waits until no scope of any cluster is dirty: the publisher task of
    /// a served control plane has published what the set-up's mutations
    /// touched (and taken its fences). Hang guard: 20 s.
    pub async fn wait_for_publisher(&self) {
        for _ in 0..200 {
            if self.count("SELECT count(*) FROM snapshot_dirty").await == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("hang guard: dirty scopes were not published within 20 s");
    }

    /// The cluster's recorded storage nodes but its cache replicas, by
    /// node id.
    pub async fn storage_peers(&self) -> Vec<StoragePeer> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT node_id, address FROM storage_nodes
              WHERE cluster_id = $1 AND role <> 'cache' ORDER BY node_id",
        )
        .bind(&self.cluster)
        .fetch_all(&self.ctx.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(node_id, address)| StoragePeer { node_id, address })
            .collect()
    }

    /// Stops `n` storage nodes (from the last); with n = 2 the group has
    /// no quorum.
    pub async fn stop_voters(&self, n: usize) {
        let tasks: Vec<_> = {
            let mut nodes = self.nodes.lock().unwrap();
            let len = nodes.len();
            nodes[len - n..]
                .iter_mut()
                .filter_map(StorageNode::halt)
                .collect()
        };
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// Stops storage node or cache replica `id` at once: a process (see
    /// [`StorageMode::Processes`]) gets SIGKILL, as `kill -9` would send;
    /// an in-process node is stopped. Panics when no such node runs.
    pub async fn kill_storage(&self, id: &str) {
        let task = {
            let mut nodes = self.nodes.lock().unwrap();
            let mut caches = self.caches.lock().unwrap();
            let node = nodes
                .iter_mut()
                .chain(caches.iter_mut().map(|(_, node)| node))
                .find(|node| node.id == id)
                .unwrap_or_else(|| panic!("no storage node {id} on this platform"));
            node.halt()
        };
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// The HTTP addresses (`/metrics`, `/healthz`, `/readyz`) of the
    /// voters, by node id.
    pub fn voter_http(&self) -> Vec<(String, SocketAddr)> {
        self.nodes
            .lock()
            .unwrap()
            .iter()
            .map(|node| (node.id.clone(), node.http))
            .collect()
    }

    /// A join token for the platform's cluster.
    pub async fn token(&self, max_uses: u32) -> String {
        join_token(&self.ctx, &self.owner, &self.cluster, max_uses, "")
            .await
            .unwrap()
    }

    /// Enrols storage node `id`, registers it as a cache replica in region
    /// `r1`, zone `zone` (`AddCacheReplica`), and starts it in-process,
    /// filled from the voters; returns its gRPC and HTTP addresses. It
    /// stops with the platform (or [`Platform::stop_cache`]).
    pub async fn start_cache(&self, id: &str, zone: &str) -> (SocketAddr, SocketAddr) {
        let (ctx, owner, cluster, dir) = (&self.ctx, &self.owner, self.cluster.as_str(), &self.dir);
        let tls = enrol_storage(
            ctx,
            owner,
            cluster,
            id,
            &dir.path().join(format!("tls-{id}")),
        )
        .await;
        let listen = free_addr();
        rap_controlplane::caches::add(
            ctx,
            owner,
            &pb::AddCacheReplicaRequest {
                cluster_id: cluster.to_string(),
                cache: Some(pb::StorageEndpoint {
                    node_id: id.to_string(),
                    address: listen.to_string(),
                    domain: Some(pb::FailureDomain {
                        region: "r1".into(),
                        zone: zone.to_string(),
                        host: id.to_string(),
                    }),
                }),
            },
        )
        .await
        .unwrap();
        let trust_root = dir.path().join("trust-root.bin");
        std::fs::write(&trust_root, self.genesis().await).unwrap();
        let mut config = storage_config(cluster, id, listen, dir.path(), &tls);
        config.labels.zone = zone.to_string();
        config.cache = Some(rap_configstore::config::Cache {
            trust_root,
            voters: self
                .storage_peers()
                .await
                .into_iter()
                .map(|peer| format!("{}={}", peer.node_id, peer.address))
                .collect(),
        });
        config.validate().unwrap();
        let http = config.http_listen;
        self.caches.lock().unwrap().push((
            id.to_string(),
            StorageNode::start(&self.storage_mode, config, self.dir.path()),
        ));
        (listen, http)
    }

    /// Stops cache replica `id` (started by [`Platform::start_cache`]).
    pub async fn stop_cache(&self, id: &str) {
        let task = {
            let mut caches = self.caches.lock().unwrap();
            caches
                .iter_mut()
                .find(|(cache, _)| cache == id)
                .and_then(|(_, node)| node.halt())
        };
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// A pending join request by a fresh key; returns (key, request id).
    pub async fn join(&self, capabilities: &[&str]) -> (AgentKey, String) {
        let key = AgentKey::generate();
        let token = self.token(1).await;
        let answer = enrollment::submit(
            &self.ctx,
            &key.join_request(&self.cluster, &token, capabilities),
        )
        .await
        .unwrap();
        (key, answer.join_request_id)
    }

    /// The whole enrollment of a fresh node with `capabilities`, approved
    /// by the owner; returns the node id.
    pub async fn enroll(&self, capabilities: &[&str]) -> String {
        let (_key, id) = self.join(capabilities).await;
        let approved = enrollment::approve(
            &self.ctx,
            &self.owner,
            &pb::ReviewJoinRequestRequest {
                join_request_id: id,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        approved.node_id
    }

    /// The cluster's genesis trust root, as PostgreSQL holds it.
    pub async fn genesis(&self) -> Vec<u8> {
        let mut conn = self.ctx.pool.acquire().await.unwrap();
        rap_controlplane::db::clusters::trust_root(&mut conn, &self.cluster)
            .await
            .unwrap()
    }

    /// A fresh reader's verifier of the cluster, opened on its genesis
    /// trust root, with its marks in the returned directory.
    pub async fn genesis_verifier(
        &self,
    ) -> (
        tempfile::TempDir,
        rap_proto::envelope::Verifier<rap_core::marks::FileHighWaterStore>,
    ) {
        let state = tempfile::tempdir().unwrap();
        let verifier = rap_proto::envelope::Verifier::open(
            ClusterId::new(self.cluster.as_str()).unwrap(),
            &self.genesis().await,
            None,
            rap_core::marks::FileHighWaterStore::open(state.path()).unwrap(),
            rap_proto::envelope::VerifierOptions::default(),
        )
        .unwrap();
        (state, verifier)
    }

    /// Assigns `role` (no organization) to `node` as the owner.
    pub async fn assign_role(&self, node: &str, role: &str) {
        rap_controlplane::roles::assign(
            &self.ctx,
            &self.owner,
            &pb::AssignRoleRequest {
                cluster_id: self.cluster.clone(),
                node_id: node.to_string(),
                role: role.to_string(),
                org_id: String::new(),
            },
        )
        .await
        .unwrap();
    }

    /// Sets the desired state (`enabled`, `disabled`) of `service` on
    /// `node` as the owner.
    pub async fn set_service(&self, node: &str, service: &str, desired_state: &str) {
        rap_controlplane::workloads::set_desired_state(
            &self.ctx,
            &self.owner,
            &pb::SetServiceDesiredStateRequest {
                cluster_id: self.cluster.clone(),
                node_id: node.to_string(),
                service: service.to_string(),
                desired_state: desired_state.to_string(),
            },
        )
        .await
        .unwrap();
    }

    /// Removes `role` (no organization) from `node` as the owner.
    pub async fn remove_role(&self, node: &str, role: &str) {
        rap_controlplane::roles::remove(
            &self.ctx,
            &self.owner,
            &pb::RemoveRoleRequest {
                cluster_id: self.cluster.clone(),
                node_id: node.to_string(),
                role: role.to_string(),
                org_id: String::new(),
            },
        )
        .await
        .unwrap();
    }

    /// Creates a principal (and its organization when missing).
    pub async fn principal(&self, kind: &str, org: Option<&str>) -> Principal {
        if let Some(org) = org {
            sqlx::query(
                "INSERT INTO organizations (org_id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING",
            )
            .bind(org)
            .execute(&self.ctx.pool)
            .await
            .unwrap();
        }
        let kind = Kind::parse(kind, org).unwrap();
        let id = format!("p-{}", rap_controlplane::secret::random_id().unwrap());
        let mut conn = self.ctx.pool.acquire().await.unwrap();
        let raw = auth::create_principal(&mut conn, &id, &kind, "test")
            .await
            .unwrap();
        auth::authenticate(&self.ctx.pool, Some(&format!("Bearer {raw}")))
            .await
            .unwrap()
    }

    /// (result, reason) of every audit event with `action`, oldest first,
    /// leaving out the platform's own set-up (its storage nodes' join
    /// requests and their approvals).
    pub async fn audit_events(&self, action: &str) -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT result, reason FROM cluster_audit_events
              WHERE action = $1 AND coalesce(details->>'kind', '') <> 'storage'
              ORDER BY event_id",
        )
        .bind(action)
        .fetch_all(&self.ctx.pool)
        .await
        .unwrap()
    }

    /// `SELECT count(*) ...` helper.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.ctx.pool)
            .await
            .unwrap()
    }
}

/// A running control plane (`server::serve` with its TLS listener) on a
/// free port; stopped when dropped.
pub struct ControlPlane {
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Its HTTP address (`/metrics`, `/healthz`, `/readyz`).
    pub http_addr: SocketAddr,
    /// The web console's HTTPS address, when it serves one.
    pub console_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ControlPlane {
    /// Runs the rapctl binary `rapctl` (the caller's
    /// `env!("CARGO_BIN_EXE_rapctl")`) against this server with the API
    /// token `token`; returns (exit code, stdout, stderr).
    pub async fn run_rapctl(
        &self,
        rapctl: &std::path::Path,
        p: &Platform,
        token: &str,
        args: &[&str],
    ) -> (i32, String, String) {
        let token_file = p.dir.path().join(format!(
            "token-{}",
            rap_controlplane::secret::random_id().unwrap()
        ));
        std::fs::write(&token_file, token).unwrap();
        let output = tokio::process::Command::new(rapctl)
            .args(args)
            .arg("--endpoint")
            .arg(format!("https://{}", self.addr))
            .arg("--ca")
            .arg(p.ctx.keys_dir.join("platform/ca.pem"))
            .arg("--token-file")
            .arg(&token_file)
            .env_remove("RAP_SERVER_NAME")
            .output()
            .await
            .unwrap_or_else(|e| panic!("run {}: {e}", rapctl.display()));
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

/// GET `path` on `addr` over plain HTTP/1.0; returns (status line, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// GET `path` on the web console at `addr` over HTTPS/1.1, trusting only
/// the console certificate in `cert_pem` (self-signed); returns (status
/// line, header lines, body).
pub async fn https_get(
    addr: SocketAddr,
    path: &str,
    cert_pem: &std::path::Path,
) -> Option<(String, String, String)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    rap_core::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    let der = CertificateDer::from_pem_file(cert_pem).ok()?;
    roots.add(der).ok()?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
    let mut tls = connector.connect(name, tcp).await.ok()?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n")?;
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Some((status.to_string(), headers.to_string(), body.to_string()))
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Platform {
    /// Starts the real control plane server on this platform's database
    /// and keys, and waits until it listens.
    pub async fn serve(&self) -> ControlPlane {
        self.serve_at(free_addr(), free_addr()).await
    }

    /// [`Platform::serve`] on the given addresses (to start it again where
    /// its clients know it); waits until the old listener is gone.
    pub async fn serve_at(&self, addr: SocketAddr, http_addr: SocketAddr) -> ControlPlane {
        self.serve_with(addr, http_addr, None).await
    }

    /// [`Platform::serve`] with the web console on a free port too.
    pub async fn serve_console(&self) -> ControlPlane {
        self.serve_with(free_addr(), free_addr(), Some(free_addr()))
            .await
    }

    async fn serve_with(
        &self,
        addr: SocketAddr,
        http_addr: SocketAddr,
        console_addr: Option<SocketAddr>,
    ) -> ControlPlane {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let config = rap_controlplane::server::Config {
            database_url: self.db.url.clone(),
            listen: addr,
            http_listen: http_addr,
            console_listen: console_addr,
            keys_dir: self.ctx.keys_dir.clone(),
            node_cert_validity_s: self.ctx.node_cert_validity.as_secs(),
            require_step_up: self.ctx.require_step_up,
            ..rap_controlplane::server::Config::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = rap_controlplane::server::serve(config, shutdown).await {
                eprintln!("control plane stopped: {e}");
            }
        });
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(console) = console_addr {
            for _ in 0..200 {
                if tokio::net::TcpStream::connect(console).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        ControlPlane {
            addr,
            http_addr,
            console_addr,
            stop: Some(stop),
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if let Ok(mut nodes) = self.nodes.lock() {
            for node in nodes.iter_mut() {
                node.halt();
            }
        }
        if let Ok(mut caches) = self.caches.lock() {
            for (_, node) in caches.iter_mut() {
                node.halt();
            }
        }
    }
}

/// Waits until storage node `node` of the platform's cluster sees its
/// group as a minority (hang guard 30 s).
pub async fn wait_for_minority(p: &Platform, node: &str) {
    const HANG_GUARD: Duration = Duration::from_secs(30);
    const POLL: Duration = Duration::from_millis(100);
    let address: String = sqlx::query_scalar(
        "SELECT address FROM storage_nodes WHERE cluster_id = $1 AND node_id = $2",
    )
    .bind(&p.cluster)
    .bind(node)
    .fetch_one(&p.ctx.pool)
    .await
    .unwrap();
    let network = p.ctx.authority.network(&p.cluster).unwrap();
    let started = std::time::Instant::now();
    loop {
        let mut client = rap_authority::client::authority_client(
            &network,
            &address,
            &rap_core::tls::pin::ExpectedPeer::storage_named(node),
        )
        .unwrap();
        if let Ok(answer) = client
            .status(pb::AuthorityStatusRequest {
                cluster_id: p.cluster.clone(),
            })
            .await
            && answer.get_ref().partition_view == pb::PartitionView::Minority as i32
        {
            return;
        }
        assert!(
            started.elapsed() < HANG_GUARD,
            "hang guard: {node} never saw a minority"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A heartbeat of `node` in `cluster` saying `health`, received `ago_ms`
/// before now, written by the control plane's own heartbeat writer (as
/// `AgentService.Heartbeat` hands it over).
pub async fn heartbeat(
    heartbeats: &rap_controlplane::heartbeats::Heartbeats,
    cluster: &str,
    node: &str,
    health: pb::NodeHealth,
    ago_ms: i64,
) {
    use rap_controlplane::heartbeats::{Heartbeat, now_unix_ms};
    let received = now_unix_ms() - ago_ms;
    let request = pb::HeartbeatRequest {
        cluster_id: cluster.into(),
        node_id: node.into(),
        health: health as i32,
        agent_version: "0.1.0".into(),
        sent_at_unix_ms: received,
        ..Default::default()
    };
    heartbeats
        .submit_and_wait(Heartbeat::from_request(&request, received).unwrap())
        .await
        .unwrap();
}
