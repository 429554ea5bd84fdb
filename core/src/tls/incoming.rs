//! A TLS accept loop for tonic servers (storage nodes and the control
//! plane): every handshake runs in its own task, at most
//! [`TLS_HANDSHAKES_IN_FLIGHT_MAX`] at once and each cut off after
//! [`TLS_HANDSHAKE_TIMEOUT`], so a slow or silent client never blocks the
//! accept loop. tonic implements `Connected` for the streams it yields, so
//! `Request::peer_certs` (and the access layer) see the client
//! certificate. The server configuration is the caller's (see
//! [`super::live::server_config`]); because it is shared, certificate
//! changes behind it apply from the next handshake.

use super::TLS_HANDSHAKE_TIMEOUT;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// Most TLS handshakes in flight at once; further connections wait in the
/// kernel's accept queue until a handshake finishes or times out.
pub const TLS_HANDSHAKES_IN_FLIGHT_MAX: usize = 256;

/// Most finished handshakes queued for the gRPC server to pick up.
pub const TLS_ACCEPTED_QUEUE_MAX: usize = 64;

/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// accept loop does not spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts TCP connections on `listener` and runs each TLS handshake of
/// `acceptor` in its own task. Yields the established streams for
/// `Server::serve_with_incoming_shutdown`. Dropping the stream stops the
/// accept loop and closes the listening socket. Must be called inside a
/// tokio runtime.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> impl futures::Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(TLS_ACCEPTED_QUEUE_MAX);
    tokio::spawn(accept_loop(listener, acceptor, tx));
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|stream| (Ok(stream), rx))
    })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: tokio::sync::mpsc::Sender<TlsStream<TcpStream>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(TLS_HANDSHAKES_IN_FLIGHT_MAX));
    loop {
        let permit = tokio::select! {
            () = tx.closed() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = tx.closed() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                drop(permit);
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set");
        }
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    drop(permit);
                    // Fails only when the server stopped: the stream drops.
                    let _ = tx.send(stream).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    tracing::debug!("TLS accept loop stopped");
}
