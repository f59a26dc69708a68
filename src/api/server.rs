//! The HTTP server: hyper's HTTP/1 connection driver with the [`Limits`] that keep slow, greedy
//! and hostile clients from tying the service up (a deadline for a request's head and one for its
//! body, a cap on open connections), and a graceful shutdown. `axum::serve` has no knobs for the
//! first three.
//!
//! HTTP ([`serve`]) and HTTPS ([`serve_tls`]) share one accept loop, generic over how a
//! connection's bytes reach hyper ([`Transport`]): the plain path is monomorphized with the TCP
//! stream as it is, no boxing, no TLS branch. Over HTTPS the handshake runs in the connection's
//! own task (a slow one never holds up accepting), holds a connection slot like any connection,
//! and must finish within the header read timeout; hyper's own deadline for the first request's
//! head starts after it.

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::{Limits, tls::Tls};

/// The largest request head (request line and headers) accepted; larger ones get hyper's 431.
/// Browsers and HTTP clients send well under 8 KiB; hyper's own default is ~400 KiB.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// How an accepted TCP connection becomes the byte stream hyper speaks HTTP/1.1 over.
trait Transport: Clone + Send + 'static {
    /// The stream hyper reads and writes.
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    /// For the logs.
    const SCHEME: &'static str;

    /// The stream over `tcp`, or `None` when the connection is to be dropped (a failed or
    /// too slow TLS handshake, a shutdown meanwhile).
    fn open(
        &self,
        tcp: TcpStream,
        within: Duration,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Option<Self::Io>> + Send;
}

/// HTTP: the TCP stream as it is.
#[derive(Clone, Copy)]
struct Plain;

impl Transport for Plain {
    type Io = TcpStream;
    const SCHEME: &'static str = "http";

    #[inline]
    fn open(
        &self,
        tcp: TcpStream,
        _within: Duration,
        _shutdown: &CancellationToken,
    ) -> impl Future<Output = Option<TcpStream>> + Send {
        std::future::ready(Some(tcp))
    }
}

/// HTTPS: a rustls handshake first, with the pair [`Tls`] presents at that moment.
impl Transport for TlsAcceptor {
    type Io = TlsStream<TcpStream>;
    const SCHEME: &'static str = "https";

    async fn open(
        &self,
        tcp: TcpStream,
        within: Duration,
        shutdown: &CancellationToken,
    ) -> Option<Self::Io> {
        // The client speaks first (ClientHello): one that opens TCP and says nothing is cut off
        // at the same deadline as one that never sends a request head.
        tokio::select! {
            () = shutdown.cancelled() => None,
            handshake = tokio::time::timeout(within, self.accept(tcp)) => match handshake {
                Ok(Ok(stream)) => Some(stream),
                // Plain HTTP to the TLS port, scanners, clients that distrust the certificate.
                Ok(Err(e)) => {
                    debug!("TLS handshake failed: {e}");
                    None
                }
                Err(_) => {
                    debug!("TLS handshake timed out");
                    None
                }
            },
        }
    }
}

/// Serves `router` over HTTP on `listener` until `shutdown` fires; then stops accepting (new
/// connections are refused once the listener is dropped) and waits for open connections to
/// finish their in-flight request. The caller bounds that wait (`--shutdown-grace`).
///
/// Each connection holds one of `limits.max_connections` slots from accept to close; with none
/// free, accepting pauses and the kernel's backlog holds newcomers.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, limits, Plain, shutdown).await
}

/// [`serve`] over HTTPS: each connection starts with a TLS handshake that presents the pair
/// `tls` holds at that moment (a reload changes it for new connections only) and agrees on
/// `http/1.1` by ALPN. The handshake has `limits.header_read_timeout` to finish, and holds a
/// connection slot meanwhile.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Tls,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, limits, tls.acceptor(), shutdown).await
}

async fn serve_with<T: Transport>(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    transport: T,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Some clients (netcat, scripts) shut their sending side once the request is out and
        // wait for the answer: without this hyper would hang up on them unanswered.
        .half_close(true)
        .max_header_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    info!(
        scheme = T::SCHEME,
        max_connections = limits.max_connections,
        header_read_timeout_ms = limits.header_read_timeout.as_millis(),
        body_read_timeout_ms = limits.body_read_timeout.as_millis(),
        rate_limit = %limits
            .rate_limit
            .map_or_else(|| "off".to_owned(), |limit| limit.to_string()),
        "serving HTTP"
    );
    let http = Arc::new(http);
    loop {
        let slot = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                // Never closed: the semaphore lives in this function.
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    accept_failed(e, &shutdown).await;
                    continue;
                }
            },
        };
        // Answers are small and written whole: Nagle's algorithm would only delay them.
        let _ = stream.set_nodelay(true);
        // Taken here, before the shutdown can start: the drain then waits for this connection
        // too, handshake included.
        let watcher = graceful.watcher();
        let (http, router, transport) = (Arc::clone(&http), router.clone(), transport.clone());
        let (within, shutdown) = (limits.header_read_timeout, shutdown.clone());
        tokio::spawn(async move {
            if let Some(io) = transport.open(stream, within, &shutdown).await {
                let connection = watcher.watch(
                    http.serve_connection(TokioIo::new(io), TowerToHyperService::new(router)),
                );
                if let Err(e) = connection.await {
                    // Timeouts, resets and unparsable requests end here: the client's doing.
                    debug!("connection closed: {e}");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A failed accept: a client that gave up is nothing; anything else (out of file descriptors)
/// is logged and accepting pauses a second, since retrying at once would spin.
async fn accept_failed(e: std::io::Error, shutdown: &CancellationToken) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    error!("cannot accept a connection: {e}");
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
}
