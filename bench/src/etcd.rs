//! The etcd side: a 3-member etcd cluster of processes on 127.0.0.1
//! (plaintext, or mutual TLS on client and peer URLs with certificates
//! made here), clients of the generated subset of its v3 API, and the
//! same operations and scenarios as the rap side.

use crate::etcdpb::kv_client::KvClient;
use crate::etcdpb::maintenance_client::MaintenanceClient;
use crate::etcdpb::watch_client::WatchClient;
use crate::etcdpb::{
    PutRequest, RangeRequest, StatusRequest, WatchCreateRequest, WatchRequest, watch_request,
};
use crate::fanout::SendTimes;
use crate::load::{Op, first_success, settle};
use crate::{GUARD, record_pid};
use crate::{PROBE_DEADLINE, PROBE_EVERY};
use anyhow::Context;
use rap_testkit::cluster::{free_port, join_all};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long a client waits for its TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// PEM files of a mutual-TLS set-up: one CA, one certificate for every
/// member (client and peer URLs, SAN 127.0.0.1 and localhost), one for
/// the clients.
#[derive(Clone)]
pub struct Tls {
    /// The CA certificate (PEM) and its path.
    pub ca_pem: String,
    ca_path: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    /// The client certificate (PEM).
    pub client_cert_pem: String,
    /// The client key (PEM).
    pub client_key_pem: String,
    /// The server certificate and key (PEM), for the gRPC floor.
    pub server_pem: (String, String),
}

impl Tls {
    /// Makes the CA and certificates in `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Tls> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "bench etcd CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |name: &str, sans: Vec<String>| -> anyhow::Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let server = leaf("etcd", vec!["localhost".into(), "127.0.0.1".into()])?;
        let client = leaf("bench", vec!["bench".into()])?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        Ok(Tls {
            ca_path: write("ca.pem", &ca_cert.pem())?,
            server_cert: write("server.pem", &server.0)?,
            server_key: write("server.key", &server.1)?,
            ca_pem: ca_cert.pem(),
            client_cert_pem: client.0,
            client_key_pem: client.1,
            server_pem: server,
        })
    }

    /// A tonic client configuration presenting the client certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(
                &self.client_cert_pem,
                &self.client_key_pem,
            ))
            .domain_name("localhost")
    }
}

/// One etcd member.
pub struct Member {
    /// Its name (`e1`, ...).
    pub name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Its member id, once a Status call told it.
    id: u64,
}

/// A 3-member etcd cluster (see the module docs).
pub struct EtcdCluster {
    /// The members, `e1`, `e2`, `e3`.
    pub members: Vec<Member>,
    bin: PathBuf,
    tls: Option<Tls>,
    pid_file: PathBuf,
    token: String,
    heartbeat_ms: u64,
    election_ms: u64,
}

impl EtcdCluster {
    /// Prepares (starts nothing) 3 members of `bin` under `dir`, with TLS
    /// when `tls` is given; every pid is appended to `pid_file`.
    pub fn new(
        bin: &Path,
        dir: &Path,
        tls: Option<Tls>,
        pid_file: &Path,
        heartbeat_ms: u64,
        election_ms: u64,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let members = (1..=3)
            .map(|i| Member {
                name: format!("e{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.join(format!("e{i}")),
                log: dir.join(format!("e{i}.log")),
                child: None,
                id: 0,
            })
            .collect();
        Ok(EtcdCluster {
            members,
            bin: bin.to_path_buf(),
            token: format!("bench-{}", dir.display()),
            tls,
            pid_file: pid_file.to_path_buf(),
            heartbeat_ms,
            election_ms,
        })
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Whether clients and peers speak TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let scheme = self.scheme();
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={scheme}://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let m = &self.members[index];
        let client_url = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer_url = format!("{scheme}://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)?;
        let mut command = Command::new(&self.bin);
        command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", &self.heartbeat_ms.to_string()])
            .args(["--election-timeout", &self.election_ms.to_string()])
            .args(["--logger", "zap", "--log-level", "warn"]);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca_path)
                .arg("--client-cert-auth")
                .arg("--peer-cert-file")
                .arg(&tls.server_cert)
                .arg("--peer-key-file")
                .arg(&tls.server_key)
                .arg("--peer-trusted-ca-file")
                .arg(&tls.ca_path)
                .arg("--peer-client-cert-auth");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        record_pid(Some(&self.pid_file), child.id());
        self.members[index].child = Some(child);
        Ok(())
    }

    /// A new channel (lazily connected) to member `index`.
    pub fn channel(&self, index: usize) -> Channel {
        let address = format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.members[index].client_port
        );
        let mut endpoint = Endpoint::from_shared(address)
            .expect("endpoint")
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.client_config()).expect("tls");
        }
        endpoint.connect_lazy()
    }

    /// Member `index`'s (own id, leader id) by Status.
    async fn status(&self, index: usize) -> Option<(u64, u64)> {
        let mut client = MaintenanceClient::new(self.channel(index));
        let call = tokio::time::timeout(Duration::from_secs(1), client.status(StatusRequest {}));
        let response = call.await.ok()?.ok()?.into_inner();
        Some((response.header?.member_id, response.leader))
    }

    /// Starts every member that is not running and waits until all three
    /// follow one leader; returns its index.
    pub async fn heal(&mut self) -> anyhow::Result<usize> {
        for index in 0..self.members.len() {
            if self.members[index].child.is_none() {
                self.spawn(index)?;
            }
        }
        self.wait_leader(&[0, 1, 2]).await
    }

    /// Waits until the running members of `among` name one leader among
    /// them; returns its index.
    pub async fn wait_leader(&mut self, among: &[usize]) -> anyhow::Result<usize> {
        let started = Instant::now();
        loop {
            for &index in among {
                self.check_alive(index)?;
            }
            let mut views = Vec::new();
            for &index in among {
                if self.members[index].child.is_some() {
                    views.push((index, self.status(index).await));
                }
            }
            for (index, view) in &views {
                if let Some((id, _)) = view {
                    self.members[*index].id = *id;
                }
            }
            if let Some(Some((_, leader))) = views.first().map(|(_, v)| *v)
                && leader != 0
                && views
                    .iter()
                    .all(|(_, v)| matches!(v, Some((_, l)) if *l == leader))
                && let Some(index) = self.members.iter().position(|m| m.id == leader)
            {
                return Ok(index);
            }
            anyhow::ensure!(
                started.elapsed() < GUARD,
                "etcd: no leader within {GUARD:?}; see {}",
                self.members[among[0]].log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_alive(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(child) = self.members[index].child.as_mut()
            && let Ok(Some(exit)) = child.try_wait()
        {
            self.members[index].child = None;
            let log = rap_testkit::cluster::tail(&self.members[index].log, 20);
            anyhow::bail!("etcd {} exited ({exit}):\n{log}", self.members[index].name);
        }
        Ok(())
    }

    /// `kill -9` member `index` and reap it.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -9` every member.
    pub fn kill_all(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }

    /// A put op on member `index`: `value` under `key`.
    pub fn put_op(&self, index: usize, key: &str, value: Vec<u8>) -> PutOp {
        PutOp {
            kv: KvClient::new(self.channel(index)),
            key: key.as_bytes().to_vec(),
            value,
        }
    }

    /// A serializable get op of `key` on member `index`.
    pub fn get_op(&self, index: usize, key: &str) -> GetOp {
        GetOp {
            kv: KvClient::new(self.channel(index)),
            key: key.as_bytes().to_vec(),
        }
    }

    /// One failover run: the window from kill -9 of the leader until a put
    /// succeeds on a survivor (a put is started on each survivor every
    /// [`PROBE_EVERY`], each with [`PROBE_DEADLINE`]), the time until a
    /// survivor named a new leader, and (old leader, new leader).
    pub async fn failover(&mut self) -> anyhow::Result<(Duration, Duration, (String, String))> {
        let leader = self.heal().await?;
        let old_id = self.members[leader].id;
        let old = self.members[leader].name.clone();
        let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let mut probes = Vec::new();
        for &index in &survivors {
            let mut op = self.put_op(index, "failover", vec![0; 256]);
            op.call().await.map_err(anyhow::Error::msg)?;
            probes.push(op);
        }
        let watchers: Vec<MaintenanceClient<Channel>> = survivors
            .iter()
            .map(|&i| MaintenanceClient::new(self.channel(i)))
            .collect();
        self.kill(leader);
        let killed = Instant::now();
        let elected = crate::load::first_true(killed, Duration::from_millis(5), GUARD, || {
            let clients = watchers.clone();
            async move {
                for mut client in clients {
                    let call = client.status(StatusRequest {});
                    if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), call).await
                        && s.get_ref().leader != 0
                        && s.get_ref().leader != old_id
                    {
                        return true;
                    }
                }
                false
            }
        });
        let probing = first_success(&probes, killed, PROBE_EVERY, PROBE_DEADLINE, GUARD);
        let (window, elected) = tokio::join!(probing, elected);
        let window =
            window.with_context(|| format!("etcd: no put within {GUARD:?} of the kill"))?;
        let elected = elected.unwrap_or(GUARD);
        let new_leader = self.wait_leader(&survivors).await?;
        Ok((
            window,
            elected,
            (old, self.members[new_leader].name.clone()),
        ))
    }

    /// Kills 2 of 3 (both followers, or the leader and one follower) and
    /// times one put on the survivor with a client deadline of `deadline`:
    /// (duration, what it said).
    pub async fn minority(
        &mut self,
        isolated_leader: bool,
        deadline: Duration,
    ) -> anyhow::Result<(Duration, String)> {
        let leader = self.heal().await?;
        let survivor = if isolated_leader {
            leader
        } else {
            (leader + 1) % self.members.len()
        };
        let mut op = self.put_op(survivor, "minority", vec![0; 256]);
        op.call().await.map_err(anyhow::Error::msg)?;
        for index in 0..self.members.len() {
            if index != survivor {
                self.kill(index);
            }
        }
        let t0 = Instant::now();
        let outcome = match tokio::time::timeout(deadline, op.call()).await {
            Ok(Ok(())) => "SUCCEEDED (!)".to_string(),
            Ok(Err(message)) => message,
            Err(_) => format!("client deadline ({} s)", deadline.as_secs()),
        };
        Ok((t0.elapsed(), outcome))
    }

    /// Fan-out: `watchers` watch streams of one key (spread over the
    /// members, `per_channel` streams per connection), then `updates` puts
    /// of it one after another on the leader (the value starts with the
    /// update's number). Returns the latencies from the start of each put
    /// to its arrival at each watcher (sorted), and the deliveries missing.
    pub async fn fanout(
        &self,
        leader: usize,
        watchers: usize,
        per_channel: usize,
        updates: u64,
        value_len: usize,
    ) -> anyhow::Result<(Vec<Duration>, u64)> {
        let key = b"fanout".to_vec();
        let base = Instant::now();
        let sent = Arc::new(SendTimes::new(updates + 1));
        let mut channels = Vec::new();
        let mut handles = Vec::new();
        for w in 0..watchers {
            let c = w / per_channel.max(1);
            if channels.len() <= c {
                channels.push(self.channel(c % self.members.len()));
            }
            let mut client = WatchClient::new(channels[c].clone());
            let create = WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: key.clone(),
                        ..Default::default()
                    },
                )),
            };
            let requests = futures::StreamExt::chain(
                futures::stream::iter([create]),
                futures::stream::pending(),
            );
            let mut stream = client.watch(requests).await?.into_inner();
            // The first answer confirms the watch.
            let created = stream.message().await?;
            anyhow::ensure!(
                created.is_some_and(|r| r.created),
                "etcd: the watch was not created"
            );
            handles.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Ok(Ok(Some(response))) =
                    tokio::time::timeout(Duration::from_secs(10), stream.message()).await
                {
                    let at = base.elapsed();
                    let mut last = false;
                    for event in response.events {
                        let Some(number) = event
                            .kv
                            .and_then(|kv| kv.value.get(..8).map(<[u8]>::to_vec))
                            .and_then(|b| <[u8; 8]>::try_from(b).ok())
                            .map(u64::from_le_bytes)
                        else {
                            continue;
                        };
                        seen.push((number, at));
                        last |= number >= updates;
                    }
                    if last {
                        break;
                    }
                }
                seen
            }));
        }
        let mut kv = KvClient::new(self.channel(leader));
        for number in 1..=updates {
            let mut value = vec![0u8; value_len.max(8)];
            value[..8].copy_from_slice(&number.to_le_bytes());
            sent.mark(number, base.elapsed());
            kv.put(PutRequest {
                key: key.clone(),
                value,
                lease: 0,
            })
            .await
            .context("etcd: put an update")?;
        }
        Ok(sent.collect(join_all(handles).await, 1..=updates))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// A put of one key in a loop.
#[derive(Clone)]
pub struct PutOp {
    kv: KvClient<Channel>,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Op for PutOp {
    async fn call(&mut self) -> Result<(), String> {
        let request = PutRequest {
            key: self.key.clone(),
            value: self.value.clone(),
            lease: 0,
        };
        settle(self.kv.put(request).await, describe)
    }
}

/// A serializable get of one key in a loop.
pub struct GetOp {
    kv: KvClient<Channel>,
    key: Vec<u8>,
}

impl Op for GetOp {
    async fn call(&mut self) -> Result<(), String> {
        let request = RangeRequest {
            key: self.key.clone(),
            serializable: true,
            ..Default::default()
        };
        settle(self.kv.range(request).await, describe)
    }
}

/// A failed etcd call in one short line: gRPC code and message.
pub fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
