//! A fault-injecting TCP proxy of one directed link (`a` dials `b`
//! through it: `rap-configstore serve --dial-via b=<proxy>`). It passes
//! bytes both ways, cuts the link (open connections are dropped, new ones
//! closed at once), delays every chunk, or resets what is open. TLS runs
//! through it untouched: the connection is still pinned to `b`'s
//! certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Most connections one link carries at once.
pub const LINK_CONNECTIONS_MAX: usize = 64;
/// Bytes read per chunk.
const CHUNK_BYTES: usize = 16 * 1024;
/// Longest delay a link may be given.
pub const LINK_DELAY_MAX: Duration = Duration::from_secs(5);

/// What a link does to its traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Bytes flow.
    Pass,
    /// Nothing flows: open connections are dropped, new ones closed.
    Cut,
    /// Bytes flow, each chunk held this long first.
    Delay(Duration),
}

/// The state every connection of a link watches: its mode, and a
/// generation that drops every open connection when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    mode: LinkMode,
    generation: u64,
}

/// One directed link `from` → `to`.
#[derive(Debug)]
pub struct LinkProxy {
    /// The dialling node.
    pub from: String,
    /// The node dialled.
    pub to: String,
    /// Where `from` dials.
    pub listen: SocketAddr,
    state: watch::Sender<State>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `target`.
    pub async fn start(from: &str, to: &str, target: SocketAddr) -> std::io::Result<LinkProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let listen = listener.local_addr()?;
        let (state, watcher) = watch::channel(State {
            mode: LinkMode::Pass,
            generation: 0,
        });
        let task = tokio::spawn(accept_loop(listener, target, watcher));
        Ok(LinkProxy {
            from: from.to_string(),
            to: to.to_string(),
            listen,
            state,
            task,
        })
    }

    /// Sets the link's mode; cutting it drops what is open.
    pub fn set(&self, mode: LinkMode) {
        let mode = match mode {
            LinkMode::Delay(d) => LinkMode::Delay(d.min(LINK_DELAY_MAX)),
            other => other,
        };
        self.state.send_modify(|s| {
            if mode == LinkMode::Cut && s.mode != LinkMode::Cut {
                s.generation += 1;
            }
            s.mode = mode;
        });
    }

    /// Drops every open connection (a reset); the mode stays.
    pub fn reset(&self) {
        self.state.send_modify(|s| s.generation += 1);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state.send_modify(|s| {
            s.mode = LinkMode::Cut;
            s.generation += 1;
        });
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, state: watch::Receiver<State>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(LINK_CONNECTIONS_MAX));
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let now = *state.borrow();
        if now.mode == LinkMode::Cut {
            drop(inbound);
            continue;
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            drop(inbound);
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(outbound)) =
                tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target)).await
            else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            let generation = now.generation;
            tokio::select! {
                () = pump(in_read, out_write, state.clone(), generation) => {}
                () = pump(out_read, in_write, state.clone(), generation) => {}
            }
        });
    }
}

/// Copies `from` to `to` until either side closes or the link is cut or
/// reset (its generation moves past `generation`).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    generation: u64,
) {
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = state.wait_for(|s| s.generation != generation) => {
                let _ = changed;
                return;
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = *state.borrow();
        if now.generation != generation || now.mode == LinkMode::Cut {
            return;
        }
        if let LinkMode::Delay(delay) = now.mode {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream) -> bool {
        if s.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut b = [0u8; 4];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b)).await,
            Ok(Ok(_))
        ) && &b == b"ping"
    }

    // Goal: a link passes bytes, a cut drops the open connection and
    // closes new ones, healing lets new connections through, a delay
    // holds bytes. Method: an echo server behind the proxy.
    #[tokio::test]
    async fn a_link_passes_cuts_heals_and_delays() {
        let proxy = LinkProxy::start("a", "b", echo_server().await)
            .await
            .expect("proxy");
        let mut open = TcpStream::connect(proxy.listen).await.expect("connect");
        assert!(round_trip(&mut open).await, "passes");
        proxy.set(LinkMode::Cut);
        assert!(
            !round_trip(&mut open).await,
            "the open connection is dropped"
        );
        let mut fresh = TcpStream::connect(proxy.listen).await.expect("connect");
        assert!(!round_trip(&mut fresh).await, "new ones are closed");
        proxy.set(LinkMode::Pass);
        let mut healed = TcpStream::connect(proxy.listen).await.expect("connect");
        assert!(round_trip(&mut healed).await, "healed");
        proxy.set(LinkMode::Delay(Duration::from_millis(200)));
        let started = tokio::time::Instant::now();
        assert!(round_trip(&mut healed).await);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
