//! The machine's floors, measured in the same run: a 4 KiB write plus
//! `fdatasync` in the benchmark's directory, a loopback TCP round trip and
//! an empty gRPC round trip (plaintext and TLS, one connection).

use crate::load::percentile;
use crate::pingpb::Empty;
use crate::pingpb::ping_client::PingClient;
use crate::pingpb::ping_server::{Ping, PingServer};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `count` writes of 4 KiB, one after another into a file of `dir` whose
/// blocks were written and synced before (as a preallocated WAL segment),
/// each followed by `fdatasync`: sorted latencies.
pub fn fsync_4k(dir: &Path, count: usize) -> anyhow::Result<Vec<Duration>> {
    let path = dir.join("fsync-floor.bin");
    let mut file = std::fs::File::create(&path)?;
    let block = [0x5a_u8; 4096];
    for _ in 0..count {
        file.write_all(&block)?;
    }
    file.sync_all()?;
    file.seek(SeekFrom::Start(0))?;
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        latencies.push(t0.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    latencies.sort();
    Ok(latencies)
}

/// A 4 KiB write + `fdatasync` every 20 ms on its own thread, while a
/// measurement runs: what the disk gives anyone at that moment.
pub struct FsyncProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Duration>>,
}

impl FsyncProbe {
    /// Starts probing in a file of `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<FsyncProbe> {
        use std::sync::atomic::Ordering;
        let path = dir.join("fsync-probe.bin");
        let mut file = std::fs::File::create(&path)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let block = [0x5a_u8; 4096];
            let mut latencies = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                if file
                    .write_all(&block)
                    .and_then(|()| file.sync_data())
                    .is_err()
                {
                    break;
                }
                latencies.push(t0.elapsed());
                if file.stream_position().is_ok_and(|at| at >= 4 << 20) {
                    let _ = file.seek(SeekFrom::Start(0));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            drop(file);
            let _ = std::fs::remove_file(&path);
            latencies
        });
        Ok(FsyncProbe { stop, thread })
    }

    /// Stops probing: the latencies seen (unsorted).
    pub fn finish(self) -> Vec<Duration> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The 1-minute load average (from /proc/loadavg), if readable.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

/// `count` 1-byte ping-pongs over one loopback TCP connection (nodelay):
/// sorted latencies.
pub async fn tcp_rtt(count: usize) -> anyhow::Result<Vec<Duration>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let echo = tokio::spawn(async move {
        if let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            let mut byte = [0u8; 1];
            while socket.read_exact(&mut byte).await.is_ok() {
                if socket.write_all(&byte).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut latencies = Vec::with_capacity(count);
    let mut byte = [1u8; 1];
    for _ in 0..count {
        let t0 = Instant::now();
        stream.write_all(&byte).await?;
        stream.read_exact(&mut byte).await?;
        latencies.push(t0.elapsed());
    }
    drop(stream);
    let _ = echo.await;
    latencies.sort();
    Ok(latencies)
}

struct Pong;

#[tonic::async_trait]
impl Ping for Pong {
    async fn ping(
        &self,
        _request: tonic::Request<Empty>,
    ) -> Result<tonic::Response<Empty>, tonic::Status> {
        Ok(tonic::Response::new(Empty {}))
    }
}

/// Server and client TLS for the gRPC floor: (server identity, client
/// config).
pub type PingTls = (
    tonic::transport::ServerTlsConfig,
    tonic::transport::ClientTlsConfig,
);

/// `count` empty unary calls over one connection to an in-process tonic
/// server on loopback (TLS when `tls` is given): sorted latencies.
pub async fn grpc_rtt(count: usize, tls: Option<PingTls>) -> anyhow::Result<Vec<Duration>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let incoming = tokio_stream_of(listener);
    let mut server = tonic::transport::Server::builder();
    let (scheme, client_tls) = match tls {
        Some((server_tls, client_tls)) => {
            server = server.tls_config(server_tls)?;
            ("https", Some(client_tls))
        }
        None => ("http", None),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve = tokio::spawn(
        server
            .add_service(PingServer::new(Pong))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}"))?;
    if let Some(client_tls) = client_tls {
        endpoint = endpoint.tls_config(client_tls)?;
    }
    let mut client = PingClient::new(endpoint.connect().await?);
    for _ in 0..100 {
        client.ping(Empty {}).await?;
    }
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = Instant::now();
        client.ping(Empty {}).await?;
        latencies.push(t0.elapsed());
    }
    drop(client);
    let _ = stop.send(());
    let _ = serve.await;
    latencies.sort();
    Ok(latencies)
}

/// The accepted connections of `listener` as the stream tonic serves.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(socket, _)| {
            let _ = socket.set_nodelay(true);
            socket
        });
        Some((accepted, listener))
    })
}

/// p50 and p99 of sorted `latencies`.
pub fn p50_p99(latencies: &[Duration]) -> (Duration, Duration) {
    (percentile(latencies, 50), percentile(latencies, 99))
}
