//! gRPC over turmoil's simulated TCP: the client [`connector`] every
//! channel dials through, and the server side's [`incoming`] stream of
//! accepted connections for `serve_with_incoming`.
//!
//! Shard reads go under mutual TLS, as in production: [`tls_incoming`]
//! does the server's handshakes over accepted turmoil connections, and
//! [`TurmoilTls`] the client's, with the product's own pinned connector
//! ([`PinnedConnector::handshake`]).
//!
//! Nothing here knows about the authority group: it is the seam where the
//! real tonic stack meets the simulated network, the same stack production
//! runs over `tokio::net`.

use futures::Stream;
use hyper_util::rt::TokioIo;
use rap_authority::network::Connector;
use rap_core::tls::TLS_HANDSHAKE_TIMEOUT;
use rap_core::tls::pin::{PinnedConnector, TlsDialer};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::Service;
use tonic::codegen::http::Uri;
use tonic::transport::Endpoint;
use tonic::transport::server::{Connected, TcpConnectInfo};
use turmoil::net::{TcpListener, TcpStream};

/// A [`Connector`] that dials through turmoil: every channel it makes
/// connects lazily with `Endpoint::connect_with_connector_lazy`, keeping the
/// endpoint's keepalive and timeouts. Must be used (the channel polled)
/// from inside a simulated host.
pub fn connector() -> Connector {
    Arc::new(|endpoint: &Endpoint| endpoint.connect_with_connector_lazy(TurmoilConnector))
}

/// The tower service behind [`connector`]: `Uri` → a turmoil TCP stream to
/// its `host:port` (host names resolve through turmoil's DNS).
#[derive(Clone, Copy, Debug, Default)]
pub struct TurmoilConnector;

type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

impl Service<Uri> for TurmoilConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{uri} has no host"))
            })?;
            let port = uri.port_u16().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{uri} has no port"))
            })?;
            let stream = TcpStream::connect((host, port)).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// An accepted turmoil connection, as tonic's server wants it.
#[derive(Debug)]
pub struct Accepted(TcpStream);

impl Connected for Accepted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.0.local_addr().ok(),
            remote_addr: self.0.peer_addr().ok(),
        }
    }
}

impl AsyncRead for Accepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The connections `listener` accepts, for `Server::serve_with_incoming`.
/// An accept error is passed on (tonic logs it and keeps accepting).
pub fn incoming(listener: TcpListener) -> impl Stream<Item = io::Result<Accepted>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener
            .accept()
            .await
            .map(|(stream, _peer)| Accepted(stream));
        Some((accepted, listener))
    })
}

/// Handshakes in progress or accepted and not yet taken, per listener.
pub const TLS_ACCEPTED_QUEUE_MAX: usize = 64;

/// The TLS connections `listener` accepts, each handshake in a task of its
/// own (bounded by [`TLS_HANDSHAKE_TIMEOUT`]) so a peer that stalls holds
/// up nobody; a failed handshake is dropped, as in production.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> impl Stream<Item = io::Result<tokio_rustls::server::TlsStream<Accepted>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(TLS_ACCEPTED_QUEUE_MAX);
    tokio::spawn(async move {
        while let Ok((stream, _peer)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake = acceptor.accept(Accepted(stream));
                if let Ok(Ok(tls)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
                    let _ = tx.send(Ok(tls)).await;
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|stream| (stream, rx))
    })
}

/// tonic's connector for a TLS channel over turmoil: dials the `Uri`'s
/// `host:port` through turmoil, then hands the stream to the product's
/// pinned connector for the handshake (which checks the server's
/// certificate as in production).
#[derive(Clone, Debug)]
pub struct TurmoilTls(pub PinnedConnector);

type TlsConnectFuture = Pin<
    Box<
        dyn Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send,
    >,
>;

impl Service<Uri> for TurmoilTls {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = TlsConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.0.clone();
        let dial = TurmoilConnector.call(uri.clone());
        Box::pin(async move {
            let stream = dial.await?.into_inner();
            let host = uri.host().unwrap_or_default();
            Ok(TokioIo::new(connector.handshake(host, stream).await?))
        })
    }
}

/// The product's TLS dialer hook, dialling through turmoil.
pub fn tls_dialer() -> TlsDialer {
    Arc::new(|endpoint: Endpoint, connector: PinnedConnector| {
        endpoint.connect_with_connector_lazy(TurmoilTls(connector))
    })
}
