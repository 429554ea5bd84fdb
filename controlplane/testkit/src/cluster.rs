//! A cluster of real `rap-configstore` processes on 127.0.0.1, for the
//! multi-process tests of `rap-configstore` and the benchmark drivers
//! (`bench/`). The caller names the binary (see the crate docs).
//!
//! [`Cluster::new`] makes a temporary directory with a development CA
//! (`ClusterCa`, one certificate per node plus one for the `admin` client), a
//! genesis trust root and its signing key, and picks free ports; nothing
//! runs yet. [`Cluster::launch`] starts every node and bootstraps the group.
//! Nodes are child processes whose stdout and stderr go to
//! `<dir>/<node>.log` (appended across restarts); [`Cluster::kill`] is
//! `kill -9` followed by `wait`. Dropping the cluster kills every child;
//! when the drop happens during a panic, the tail of every node's log is
//! printed so a failing test says what the nodes saw.
//!
//! Every call the harness makes to a node is wrapped in a hang guard
//! ([`HANG_GUARD`]): a node that does not answer fails the test with the
//! name of the step instead of hanging the test binary.

use rap_authority::client::authority_client;
use rap_authority::network::NetworkConfig;
use rap_core::codes::error_detail;
use rap_core::tls::live::LiveIdentity;
use rap_core::tls::pin::{ExpectedPeer, PeerTls};
use rap_core::tls::{ClusterCa, TlsFiles};
use rap_proto::envelope::{ReaderSelector, SealedEnvelope, ShardDraft, SnapshotSigner, TrustRoot};
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId, SnapshotVersion, TrustGeneration};
use rap_proto::pb;
use rap_proto::pb::authority_service_client::AuthorityServiceClient;
use rap_proto::time::UnixMillis;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// Longest any single step may take before the test fails as hung. It is a
/// hang guard, not a performance bound: the figures live in
/// `scripts/bench-authority.sh`.
pub const HANG_GUARD: Duration = Duration::from_secs(10);

/// Leader heartbeat of the test nodes (short, so elections are quick).
pub const HEARTBEAT_MS: u64 = 50;
/// Minimum election timeout of the test nodes.
pub const ELECTION_MIN_MS: u64 = 300;
/// Maximum election timeout of the test nodes.
pub const ELECTION_MAX_MS: u64 = 600;

/// Lines of each node log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// Ports are picked below Linux's ephemeral range (32768+), so an outgoing
/// connection never takes a port a stopped node will bind again.
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// A client of one node's `AuthorityService`.
pub type Client = AuthorityServiceClient<Channel>;

/// Ports handed out by this process, never handed out twice.
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// One test at a time: every test runs a whole cluster, and two clusters
/// on two cores make elections flaky.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs one multi-process test: alone (one cluster at a time), on its own
/// two-worker runtime.
pub fn run<F: Future<Output = ()>>(test: F) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the test runtime");
    runtime.block_on(test);
}

/// A random number (std's per-process random hash keys, no extra crate).
fn random_u64(salt: u64) -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(salt);
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// A port on 127.0.0.1 that nothing listens on now and that this process
/// has not handed out before.
pub fn free_port() -> u16 {
    let mut guard = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let used = guard.get_or_insert_with(HashSet::new);
    let span = u64::from(PORT_RANGE.end - PORT_RANGE.start);
    for attempt in 0..10_000u64 {
        let offset = u16::try_from(random_u64(attempt) % span).unwrap_or(0);
        let port = PORT_RANGE.start + offset;
        if used.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            used.insert(port);
            return port;
        }
    }
    panic!("no free port in {PORT_RANGE:?} after 10000 attempts");
}

/// Polls `check` every `every` until it returns `Some`, or panics after
/// `guard` with `what` (a hang guard, not a performance assertion).
pub async fn eventually<T, F, Fut>(what: &str, guard: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if started.elapsed() > guard {
            panic!("hang guard: {what} did not happen within {guard:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Awaits `future` or panics with `what` after [`HANG_GUARD`].
pub async fn guarded<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(value) => value,
        Err(_) => panic!("hang guard: {what} did not finish within {HANG_GUARD:?}"),
    }
}

/// The `rap.v1.ErrorDetail` code of a refusal ("" when it has none).
pub fn code_of(status: &tonic::Status) -> String {
    error_detail(status).map(|d| d.code).unwrap_or_default()
}

/// One storage node of the cluster.
#[derive(Debug)]
pub struct NodeProc {
    /// Node id (`s1`, `s2`, ...).
    pub id: String,
    /// gRPC address (RaftService + AuthorityService).
    pub grpc: SocketAddr,
    /// HTTP address (/metrics, /healthz, /readyz).
    pub http: SocketAddr,
    /// Raft data directory.
    pub data_dir: PathBuf,
    /// ca.pem, node.pem, node.key.
    pub tls_dir: PathBuf,
    /// stdout + stderr of every incarnation.
    pub log: PathBuf,
    /// Its failure domain `i`: labels `r<i>`/`z<i>`/`h<i>`.
    pub domain: usize,
    /// More `serve` flags for every start (e.g. `--dial-via` of a
    /// fault-injection harness).
    pub extra_args: Vec<String>,
    /// The address others are told to dial it by, when not its listener
    /// (a proxy in front of it); `None`: [`NodeProc::grpc`].
    pub advertise: Option<SocketAddr>,
    child: Option<Child>,
    starts: u32,
}

impl NodeProc {
    /// Whether the process runs (as far as this harness knows).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `host:port` of the gRPC listener.
    pub fn address(&self) -> String {
        self.grpc.to_string()
    }

    /// `host:port` others are told to dial it by: [`NodeProc::advertise`]
    /// when set, else its listener.
    pub fn advertised(&self) -> String {
        self.advertise.unwrap_or(self.grpc).to_string()
    }

    fn voter_spec(&self, index: usize) -> pb::VoterSpec {
        pb::VoterSpec {
            node_id: self.id.clone(),
            address: self.advertised(),
            domain: Some(pb::FailureDomain {
                region: format!("r{index}"),
                zone: format!("z{index}"),
                host: format!("h{index}"),
            }),
        }
    }
}

/// A cluster of `rap-configstore` processes (see the module docs).
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    bin: PathBuf,
    /// The cluster CA's directory (certificates of cache replicas).
    ca_dir: PathBuf,
    /// The cluster id (`c1`).
    pub cluster_id: ClusterId,
    /// The nodes, in order `s1`, `s2`, ...
    pub nodes: Vec<NodeProc>,
    /// Cache replicas ([`Cluster::add_cache`]): not voters, filled from
    /// the nodes above.
    pub caches: Vec<NodeProc>,
    net: NetworkConfig,
    /// The genesis snapshot-signing key.
    pub signer: SnapshotSigner,
    /// The encoded genesis trust root.
    pub trust_root: Vec<u8>,
    /// The admin client's TLS directory (for the CLI).
    pub admin_tls_dir: PathBuf,
    /// Raft timing the nodes start with.
    pub timing: Timing,
    /// A file every spawned pid is appended to (the benchmark script's
    /// cleanup trap reads it), if any.
    pub pid_file: Option<PathBuf>,
}

/// What a cluster is made from: its id, the directory of its CA
/// (`ClusterCa`), its genesis snapshot-signing key and trust root.
pub struct KeyMaterial {
    /// The cluster id.
    pub cluster_id: ClusterId,
    /// The CA's directory.
    pub ca_dir: PathBuf,
    /// The genesis snapshot-signing key.
    pub signer: SnapshotSigner,
    /// The encoded genesis trust root (naming `signer`).
    pub trust_root: Vec<u8>,
}

/// Raft timing of the nodes, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Minimum election timeout.
    pub election_min_ms: u64,
    /// Maximum election timeout.
    pub election_max_ms: u64,
}

impl Default for Timing {
    /// The tests' short timing ([`HEARTBEAT_MS`], [`ELECTION_MIN_MS`],
    /// [`ELECTION_MAX_MS`]).
    fn default() -> Self {
        Timing {
            heartbeat_ms: HEARTBEAT_MS,
            election_min_ms: ELECTION_MIN_MS,
            election_max_ms: ELECTION_MAX_MS,
        }
    }
}

/// Seals shards of one cluster under one signing key (see
/// [`Cluster::sealer`]).
pub struct Sealer {
    /// The cluster the shards belong to.
    pub cluster_id: ClusterId,
    /// The snapshot-signing key.
    pub signer: SnapshotSigner,
}

impl Sealer {
    /// Seals `scope` with readers `readers`, `version` (with `prev`),
    /// authority term `term` and `body`, valid for an hour.
    pub fn seal(
        &self,
        scope: &str,
        readers: &[&str],
        version: u64,
        prev: Option<rap_proto::envelope::Digest>,
        term: u64,
        body: &[u8],
    ) -> SealedEnvelope {
        let now = UnixMillis::now();
        rap_proto::envelope::seal(
            ShardDraft {
                cluster_id: self.cluster_id.clone(),
                scope: scope.parse().expect("valid scope"),
                version: SnapshotVersion(version),
                authority_term: AuthorityTerm(term),
                issued_at: now,
                expires_at: UnixMillis(now.0 + 3_600_000),
                prev_hash: prev,
                readers: readers
                    .iter()
                    .map(|r| r.parse::<ReaderSelector>().expect("valid reader"))
                    .collect(),
                body: body.to_vec(),
            },
            &self.signer,
            TrustGeneration(1),
        )
        .expect("seal the shard")
    }
}

impl Cluster {
    /// Creates the directory, CA, certificates, trust root and ports of
    /// `count` nodes that will run `bin`. Starts nothing.
    pub fn new(bin: &Path, count: usize) -> Cluster {
        Self::new_in(bin, count, None)
    }

    /// Like [`Cluster::new`], in a fresh directory under `parent` (the
    /// benchmark keeps it next to its pid file).
    pub fn new_in(bin: &Path, count: usize, parent: Option<&Path>) -> Cluster {
        rap_core::tls::install_crypto_provider();
        let dir = match parent {
            Some(parent) => tempfile::Builder::new()
                .prefix("rap-cluster-")
                .tempdir_in(parent),
            None => tempfile::Builder::new().prefix("rap-cluster-").tempdir(),
        }
        .expect("create the cluster directory");
        let cluster_id = ClusterId::new("c1").expect("valid cluster id");
        let ca_dir = dir.path().join("ca");
        ClusterCa::create(&ca_dir, &cluster_id).expect("create the dev CA");
        let signer = SnapshotSigner::generate().expect("generate the signing key");
        let trust_root = TrustRoot::genesis(&cluster_id, &[&signer], UnixMillis::now())
            .expect("genesis trust root")
            .bytes()
            .to_vec();
        Self::assemble(
            bin,
            count,
            dir,
            KeyMaterial {
                cluster_id,
                ca_dir,
                signer,
                trust_root,
            },
        )
    }

    /// Like [`Cluster::new`], with a cluster, CA, genesis signing key and
    /// trust root made elsewhere (a control plane's keys directory): the
    /// nodes' and the admin client's certificates are issued by that CA.
    pub fn with_keys(bin: &Path, count: usize, keys: KeyMaterial) -> Cluster {
        rap_core::tls::install_crypto_provider();
        let dir = tempfile::Builder::new()
            .prefix("rap-cluster-")
            .tempdir()
            .expect("create the cluster directory");
        Self::assemble(bin, count, dir, keys)
    }

    fn assemble(bin: &Path, count: usize, dir: tempfile::TempDir, keys: KeyMaterial) -> Cluster {
        let root = dir.path().to_path_buf();
        let KeyMaterial {
            cluster_id,
            ca_dir,
            signer,
            trust_root,
        } = keys;
        let ca = ClusterCa::load(&ca_dir).expect("the cluster CA");
        let certs = root.join("certs");
        let mut nodes = Vec::with_capacity(count);
        for index in 1..=count {
            let id = format!("s{index}");
            let tls_dir = certs.join(&id);
            ca.issue_storage(
                &tls_dir,
                &NodeId::new(id.as_str()).expect("valid node id"),
                &[],
            )
            .expect("issue a node certificate");
            nodes.push(NodeProc {
                grpc: SocketAddr::from(([127, 0, 0, 1], free_port())),
                http: SocketAddr::from(([127, 0, 0, 1], free_port())),
                data_dir: root.join(&id),
                log: root.join(format!("{id}.log")),
                tls_dir,
                id,
                domain: index,
                child: None,
                starts: 0,
                extra_args: Vec::new(),
                advertise: None,
            });
        }
        let admin_tls_dir = certs.join("admin");
        ca.issue_operator(
            &admin_tls_dir,
            &NodeId::new("admin").expect("valid node id"),
        )
        .expect("issue the admin certificate");
        let net = NetworkConfig {
            tls: Some(
                PeerTls::new(
                    LiveIdentity::load(TlsFiles::in_dir(&admin_tls_dir))
                        .expect("admin certificate"),
                )
                .expect("admin TLS client"),
            ),
            ..NetworkConfig::default()
        };
        Cluster {
            dir: Some(dir),
            root,
            bin: bin.to_path_buf(),
            ca_dir,
            cluster_id,
            nodes,
            caches: Vec::new(),
            net,
            signer,
            trust_root,
            admin_tls_dir,
            timing: Timing::default(),
            pid_file: None,
        }
    }

    /// Starts every node, bootstraps the group through the first one and
    /// waits for a leader with a quorum.
    pub async fn launch(bin: &Path, count: usize) -> Cluster {
        let mut cluster = Cluster::new(bin, count);
        cluster.up().await;
        cluster
    }

    /// Starts every node, bootstraps the group and waits for a leader;
    /// returns the leader's index.
    pub async fn up(&mut self) -> usize {
        self.start_all().await;
        self.bootstrap().await.expect("bootstrap the group");
        self.wait_leader(&self.all()).await
    }

    /// The cluster's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Indexes of every node.
    pub fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }

    /// Indexes of the nodes that run.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running())
            .collect()
    }

    /// The index of the node called `id`.
    pub fn index_of(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Starts every node that is not running.
    pub async fn start_all(&mut self) {
        for index in 0..self.nodes.len() {
            if !self.nodes[index].is_running() {
                self.spawn(index);
            }
        }
        for index in 0..self.nodes.len() {
            self.wait_healthy(index).await;
        }
    }

    /// Starts node `index` and waits until it serves `/healthz`.
    pub async fn start(&mut self, index: usize) {
        self.spawn(index);
        self.wait_healthy(index).await;
    }

    fn spawn(&mut self, index: usize) {
        let extra = self.nodes[index].extra_args.clone();
        let child = self.spawn_proc(&self.nodes[index], &extra);
        self.nodes[index].starts += 1;
        self.nodes[index].child = Some(child);
    }

    /// Starts `node` (`serve` with its labels and the cluster's timing,
    /// then `extra`), appending to its log and to the pid file.
    fn spawn_proc(&self, node: &NodeProc, extra: &[String]) -> Child {
        assert!(node.child.is_none(), "{} is already running", node.id);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open the node log");
        let _ = writeln!(
            log,
            "===== harness: start #{} of {} =====",
            node.starts + 1,
            node.id
        );
        let stderr = log.try_clone().expect("clone the log handle");
        let domain = node.domain;
        let child = Command::new(&self.bin)
            .arg("serve")
            .args(["--node-id", &node.id])
            .args(["--cluster-id", self.cluster_id.as_str()])
            .args(["--listen", &node.grpc.to_string()])
            .args(["--http-listen", &node.http.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--tls-dir")
            .arg(&node.tls_dir)
            .args(["--region", &format!("r{domain}")])
            .args(["--zone", &format!("z{domain}")])
            .args(["--host", &format!("h{domain}")])
            .args(["--heartbeat-ms", &self.timing.heartbeat_ms.to_string()])
            .args([
                "--election-timeout-min-ms",
                &self.timing.election_min_ms.to_string(),
            ])
            .args([
                "--election-timeout-max-ms",
                &self.timing.election_max_ms.to_string(),
            ])
            .args(extra)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        if let Some(pid_file) = &self.pid_file {
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(pid_file)
                .expect("open the pid file");
            let _ = writeln!(file, "{}", child.id());
        }
        child
    }

    /// Adds cache replica `id` in failure domain `domain` (a storage
    /// certificate from the cluster CA, its ports and directories); starts
    /// nothing. Returns its index in [`Cluster::caches`].
    pub fn add_cache(&mut self, id: &str, domain: usize) -> usize {
        let ca = ClusterCa::load(&self.ca_dir).expect("the cluster CA");
        let tls_dir = self.root.join("certs").join(id);
        ca.issue_storage(&tls_dir, &NodeId::new(id).expect("valid node id"), &[])
            .expect("issue a cache certificate");
        self.caches.push(NodeProc {
            grpc: SocketAddr::from(([127, 0, 0, 1], free_port())),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            data_dir: self.root.join(id),
            log: self.root.join(format!("{id}.log")),
            tls_dir,
            id: id.to_string(),
            domain,
            child: None,
            starts: 0,
            extra_args: Vec::new(),
            advertise: None,
        });
        self.caches.len() - 1
    }

    /// Starts cache replica `index`, filled from every node of the
    /// cluster, and waits until it serves `/healthz`.
    pub async fn start_cache(&mut self, index: usize) {
        let trust_root = self.root.join("trust-root.bin");
        std::fs::write(&trust_root, &self.trust_root).expect("write the trust root");
        let mut extra = vec![
            "--cache-trust-root".to_string(),
            trust_root.display().to_string(),
        ];
        for node in &self.nodes {
            extra.push("--cache-voter".into());
            extra.push(format!("{}={}", node.id, node.advertised()));
        }
        let child = self.spawn_proc(&self.caches[index], &extra);
        let cache = &mut self.caches[index];
        cache.starts += 1;
        cache.child = Some(child);
        wait_healthy(&mut self.caches[index]).await;
    }

    /// `kill -9` cache replica `index` and reap it.
    pub fn kill_cache(&mut self, index: usize) {
        if let Some(mut child) = self.caches[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_healthy(&mut self, index: usize) {
        wait_healthy(&mut self.nodes[index]).await;
    }

    /// `kill -9` node `index` and reap it.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -9` every node and every cache replica.
    pub fn kill_all(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
        for index in 0..self.caches.len() {
            self.kill_cache(index);
        }
    }

    /// The voter list of every node, with labels `r<i>`/`z<i>`/`h<i>`.
    pub fn voter_specs(&self) -> Vec<pb::VoterSpec> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| n.voter_spec(i + 1))
            .collect()
    }

    /// Sends `Bootstrap` with every node as a voter to every node.
    pub async fn bootstrap(&self) -> Result<pb::BootstrapGroupResponse, tonic::Status> {
        self.bootstrap_voters(&self.all()).await
    }

    /// Sends `Bootstrap` with the nodes `voters` as the voters to each of
    /// them.
    pub async fn bootstrap_voters(
        &self,
        voters: &[usize],
    ) -> Result<pb::BootstrapGroupResponse, tonic::Status> {
        let specs = self.voter_specs();
        let request = pb::BootstrapGroupRequest {
            cluster_id: self.cluster_id.to_string(),
            voters: voters.iter().map(|&i| specs[i].clone()).collect(),
            trust_root: self.trust_root.clone(),
            allow_single_voter: false,
        };
        // Every voter initializes the same membership (a node admits Raft
        // RPCs only from members of its group); the first refusal wins.
        let calls = voters.iter().map(|&index| {
            let mut client = self.client(index);
            let request = request.clone();
            async move {
                match tokio::time::timeout(HANG_GUARD * 3, client.bootstrap(request)).await {
                    Ok(result) => result.map(tonic::Response::into_inner),
                    Err(_) => panic!("hang guard: bootstrap did not answer"),
                }
            }
        });
        let mut answer = None;
        for result in futures::future::join_all(calls).await {
            match result {
                Ok(response) => answer = Some(response),
                Err(status) if code_of(&status) == "ALREADY_INITIALIZED" => {}
                Err(status) => return Err(status),
            }
        }
        answer.ok_or_else(|| tonic::Status::failed_precondition("every voter already initialized"))
    }

    /// A new client (its own lazily connected channel) of node `index`,
    /// pinned to that node's storage identity.
    pub fn client(&self, index: usize) -> Client {
        authority_client(
            &self.net,
            &self.nodes[index].address(),
            &ExpectedPeer::storage_named(&self.nodes[index].id),
        )
        .expect("authority client")
    }

    /// The network settings of the admin client (mTLS).
    pub fn network(&self) -> &NetworkConfig {
        &self.net
    }

    /// Node `index`'s `Status`.
    pub async fn status(&self, index: usize) -> Result<pb::AuthorityStatusResponse, tonic::Status> {
        let request = pb::AuthorityStatusRequest {
            cluster_id: self.cluster_id.to_string(),
        };
        let mut client = self.client(index);
        guarded("Status", client.status(request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// Waits until one of `among` reports itself leader with a quorum
    /// (view healthy or degraded) and every other running node of `among`
    /// names it; returns its index.
    pub async fn wait_leader(&self, among: &[usize]) -> usize {
        eventually(
            "a leader with a quorum",
            HANG_GUARD,
            Duration::from_millis(25),
            || async {
                let mut statuses = Vec::new();
                for &index in among {
                    if !self.nodes[index].is_running() {
                        continue;
                    }
                    statuses.push((index, self.status(index).await.ok()?));
                }
                let (leader, _) = statuses.iter().find(|(index, s)| {
                    s.leader_id == self.nodes[*index].id && has_quorum_view(s)
                })?;
                let leader_id = &self.nodes[*leader].id;
                statuses
                    .iter()
                    .all(|(_, s)| &s.leader_id == leader_id)
                    .then_some(*leader)
            },
        )
        .await
    }

    /// Node `index`'s authority term, once it has applied its group's
    /// first entry: a node that has not yet (a follower right after the
    /// bootstrap, a survivor the seed has not added) reports 0, which no
    /// caller wants as "the term".
    pub async fn authority_term(&self, index: usize) -> u64 {
        eventually(
            "an authority term above 0",
            HANG_GUARD,
            Duration::from_millis(25),
            || async {
                self.status(index)
                    .await
                    .ok()
                    .map(|s| s.authority_term)
                    .filter(|term| *term > 0)
            },
        )
        .await
    }

    /// `GET path` on node `index`'s HTTP listener: (status code, body).
    pub async fn http(&self, index: usize, path: &str) -> (u16, String) {
        guarded("HTTP GET", http_get(self.nodes[index].http, path))
            .await
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.nodes[index].id))
    }

    /// Sum over the running nodes of the metric `name` restricted to the
    /// given label values (0 where a node has no such line).
    pub async fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut sum = 0.0;
        for index in self.running() {
            let (code, body) = self.http(index, "/metrics").await;
            assert_eq!(code, 200, "/metrics of {}", self.nodes[index].id);
            sum += metric_value(&body, name, labels).unwrap_or(0.0);
        }
        sum
    }

    /// A [`Sealer`] of shards under the genesis key (a copy of it, so
    /// tasks seal without borrowing the cluster).
    pub fn sealer(&self) -> Sealer {
        Sealer {
            cluster_id: self.cluster_id.clone(),
            signer: SnapshotSigner::from_secret_bytes(&self.signer.to_secret_bytes()),
        }
    }

    /// Runs the `rap-configstore` CLI with `args`: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(&self.bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the rap-configstore CLI");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// The tail of every node's log.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for node in self.nodes.iter().chain(&self.caches) {
            out.push_str(&format!(
                "----- {} ({}) -----\n{}\n",
                node.id,
                node.log.display(),
                tail(&node.log, LOG_TAIL_LINES)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            eprintln!("===== node logs (last {LOG_TAIL_LINES} lines each) =====");
            eprintln!("{}", self.log_tails());
        }
        // RAP_KEEP_TEST_DIRS keeps the nodes' data and logs (a failed
        // test's, or a benchmark's to read after it).
        if std::env::var_os("RAP_KEEP_TEST_DIRS").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

/// Waits until `node` serves `/healthz`; panics with its log if it exits
/// first (hang guard).
async fn wait_healthy(node: &mut NodeProc) {
    let started = Instant::now();
    loop {
        if let Some(child) = node.child.as_mut()
            && let Ok(Some(exit)) = child.try_wait()
        {
            node.child = None;
            panic!(
                "{} exited during start-up ({exit}):\n{}",
                node.id,
                tail(&node.log, LOG_TAIL_LINES)
            );
        }
        if let Ok((200, _)) = http_get(node.http, "/healthz").await {
            return;
        }
        assert!(
            started.elapsed() < HANG_GUARD,
            "hang guard: {} did not serve /healthz within {HANG_GUARD:?}",
            node.id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a status shows a group with a quorum.
pub fn has_quorum_view(status: &pb::AuthorityStatusResponse) -> bool {
    matches!(
        pb::PartitionView::try_from(status.partition_view),
        Ok(pb::PartitionView::Healthy) | Ok(pb::PartitionView::Degraded)
    )
}

/// The value of the first `name{...}` line whose labels include `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let rest = rest.strip_prefix('{')?;
            let (label_text, value) = rest.split_once("} ")?;
            labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|l| l == format!("{k}=\"{v}\"")))
                .then_some(value)
        })
        .find_map(|value| value.trim().parse().ok())
}

/// The last `lines` lines of a file (or why it could not be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Err(e) = File::open(path).and_then(|mut f| f.read_to_string(&mut text)) {
        return format!("(cannot read {}: {e})", path.display());
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A minimal HTTP/1.1 GET (no client library): (status code, body).
pub async fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line")
        })?;
    Ok((code, body.to_string()))
}

/// `AcquireFence` on `client` for cluster `cluster` at `expected_term`.
pub async fn acquire(
    client: &mut Client,
    cluster: &str,
    expected_term: u64,
    purpose: &str,
) -> Result<pb::FencingToken, tonic::Status> {
    let request = pb::AcquireFenceRequest {
        cluster_id: cluster.to_string(),
        purpose: purpose.to_string(),
        expected_term,
    };
    let response = guarded("AcquireFence", client.acquire_fence(request)).await?;
    response
        .into_inner()
        .fence
        .ok_or_else(|| tonic::Status::internal("AcquireFence answered without a fence"))
}

/// `PublishShards` of `envelopes` under `fence` on `client`.
pub async fn publish(
    client: &mut Client,
    fence: pb::FencingToken,
    envelopes: Vec<Vec<u8>>,
) -> Result<Vec<pb::PublishedShard>, tonic::Status> {
    let request = pb::PublishShardsRequest {
        fence: Some(fence),
        envelopes,
    };
    guarded("PublishShards", client.publish_shards(request))
        .await
        .map(|r| r.into_inner().published)
}

/// Awaits spawned tasks in order; a task that panicked fails the caller
/// with the same panic.
pub async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.await {
            Ok(value) => out.push(value),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("task failed: {e}"),
        }
    }
    out
}

/// Whether a failed write may succeed if retried: `UNAVAILABLE` (no
/// quorum, leader unknown, connection refused), or `UNKNOWN` without an
/// `ErrorDetail` (tonic's code for a connection that broke mid-call).
/// Everything else is a refusal.
pub fn is_retryable(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown => error_detail(status).is_none(),
        _ => false,
    }
}

/// Whether a failure was answered by a node (it has gRPC response
/// headers) yet carries no `rap.v1.ErrorDetail`: a transport error the
/// node passed through instead of a typed refusal.
pub fn is_untyped_node_answer(status: &tonic::Status) -> bool {
    status.metadata().get("content-type").is_some() && error_detail(status).is_none()
}
