//! The HTTP server: hyper's HTTP/1 connection driver with the [`Limits`] that keep slow, greedy
//! and hostile clients from tying the service up (a deadline for a request's head and one for its
//! body, a cap on open connections), and a graceful shutdown. `axum::serve` has no knobs for the
//! first three.
//!
//! The service runs it on [`Workers`]: one thread per core, each with its own single-threaded
//! tokio runtime and its own listening socket on the same port (`SO_REUSEPORT`, [`bind`]), as
//! nginx's workers with `reuseport` do. The kernel spreads new connections over the sockets'
//! accept queues; a connection then lives on one thread, so no task hops between cores and
//! nothing is stolen or woken across them. What the workers share: the [`Api`]'s state (rate
//! limiter, tokens, metrics), the cap on open connections (one semaphore) and the shutdown.
//!
//! HTTP ([`serve`]) and HTTPS ([`serve_tls`]) share one accept loop, generic over how a
//! connection's bytes reach hyper ([`Transport`]): the plain path is monomorphized with the TCP
//! stream as it is, no boxing, no TLS branch. Over HTTPS the handshake runs in the connection's
//! own task (a slow one never holds up accepting), holds a connection slot like any connection,
//! and must finish within the header read timeout; hyper's own deadline for the first request's
//! head starts after it.

use std::{
    future::Future, io, net::SocketAddr, num::NonZeroUsize, sync::Arc, thread, time::Duration,
};

use futures_util::future::try_join_all;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, oneshot},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Api, Limits, tls::Tls};

/// The largest request head (request line and headers) accepted; larger ones get hyper's 431.
/// Browsers and HTTP clients send well under 8 KiB; hyper's own default is ~400 KiB.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Connections the kernel holds, per listening socket, until a worker accepts them (tokio's own
/// default for its listeners).
const BACKLOG: i32 = 1024;

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

/// Serves `api` over HTTP on `listener` until `shutdown` fires; then stops accepting (new
/// connections are refused once the listener is dropped) and waits for open connections to
/// finish their in-flight request. The caller bounds that wait (`--shutdown-grace`).
///
/// Each connection holds one of `limits.max_connections` slots from accept to close; with none
/// free, accepting pauses and the kernel's backlog holds newcomers.
pub async fn serve(
    listener: TcpListener,
    api: Api,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = connection_slots(&limits);
    log_limits(Plain::SCHEME, &limits, 1);
    serve_with(listener, api, limits, Plain, slots, shutdown).await
}

/// [`serve`] over HTTPS: each connection starts with a TLS handshake that presents the pair
/// `tls` holds at that moment (a reload changes it for new connections only) and agrees on
/// `http/1.1` by ALPN. The handshake has `limits.header_read_timeout` to finish, and holds a
/// connection slot meanwhile.
pub async fn serve_tls(
    listener: TcpListener,
    api: Api,
    limits: Limits,
    tls: Tls,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = connection_slots(&limits);
    log_limits(TlsAcceptor::SCHEME, &limits, 1);
    serve_with(listener, api, limits, tls.acceptor(), slots, shutdown).await
}

/// The cap on open connections, one for all of a server's accept loops.
fn connection_slots(limits: &Limits) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(limits.max_connections.max(1)))
}

fn log_limits(scheme: &str, limits: &Limits, workers: usize) {
    info!(
        scheme,
        workers,
        max_connections = limits.max_connections,
        header_read_timeout_ms = limits.header_read_timeout.as_millis(),
        body_read_timeout_ms = limits.body_read_timeout.as_millis(),
        rate_limit = %limits
            .rate_limit
            .map_or_else(|| "off".to_owned(), |limit| limit.to_string()),
        "serving HTTP"
    );
}

async fn serve_with<T: Transport>(
    listener: TcpListener,
    api: Api,
    limits: Limits,
    transport: T,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let http = Arc::new(http1(&limits));
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
        let (http, api, transport) = (Arc::clone(&http), api.clone(), transport.clone());
        let (within, shutdown) = (limits.header_read_timeout, shutdown.clone());
        tokio::spawn(async move {
            if let Some(io) = transport.open(stream, within, &shutdown).await {
                let connection = watcher.watch(http.serve_connection(TokioIo::new(io), api));
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

/// The HTTP/1 settings every connection is served with: the head's deadline (which also ends
/// idle keep-alive connections) and size limit, keep-alive, half-closed clients.
pub fn http1(limits: &Limits) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Some clients (netcat, scripts) shut their sending side once the request is out and
        // wait for the answer: without this hyper would hang up on them unanswered.
        .half_close(true)
        .max_header_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    http
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

/// Binds `count` listening sockets to `addr`, all with `SO_REUSEPORT`: one accept queue for each
/// of the [`Workers`]. Port 0 picks one free port for all of them.
///
/// A port already in use is an error, even when its holder set `SO_REUSEPORT` too (a second
/// instance of the service would otherwise share the port in silence and answer from its own
/// projection): a plain bind of the address is tried first, and only then the group's.
pub fn bind(addr: SocketAddr, count: NonZeroUsize) -> io::Result<Vec<std::net::TcpListener>> {
    let probe = socket(addr, false)?;
    probe.bind(&addr.into())?;
    let addr = probe
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("the listener's address is not an IP address"))?;
    drop(probe);
    (0..count.get())
        .map(|_| {
            let socket = socket(addr, true)?;
            socket.bind(&addr.into())?;
            socket.listen(BACKLOG)?;
            Ok(socket.into())
        })
        .collect()
}

/// A non-blocking TCP socket for `addr`, with `SO_REUSEADDR` like tokio's and std's listeners
/// (a restart need not wait for the old connections' TIME_WAIT).
fn socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// The HTTP server on its own threads: one per listener given to [`Workers::spawn`], each with a
/// single-threaded tokio runtime that accepts from its own listener and serves those
/// connections to their end.
#[derive(Debug)]
pub struct Workers {
    done: Vec<oneshot::Receiver<io::Result<()>>>,
    abort: CancellationToken,
}

impl Workers {
    /// Starts one worker thread per listener (from [`bind`]), serving `api` over HTTP, or
    /// over HTTPS with `tls`, under `limits`: the connection cap counts the connections of all
    /// workers together. `shutdown` stops them as it stops [`serve`]: accepting ends, open
    /// connections finish their in-flight request.
    ///
    /// `nice`, when not zero, is added to the worker threads' nice value (Linux): the scheduler
    /// then gives the rest of the process (ingest, whose delay is the answers' staleness) the
    /// cores first when both want them.
    pub fn spawn(
        listeners: Vec<std::net::TcpListener>,
        api: Api,
        limits: Limits,
        tls: Option<Tls>,
        nice: i32,
        shutdown: CancellationToken,
    ) -> io::Result<Self> {
        let slots = connection_slots(&limits);
        let scheme = if tls.is_some() {
            TlsAcceptor::SCHEME
        } else {
            Plain::SCHEME
        };
        log_limits(scheme, &limits, listeners.len());
        let abort = CancellationToken::new();
        let mut done = Vec::with_capacity(listeners.len());
        for (i, listener) in listeners.into_iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            let worker = Worker {
                api: api.for_worker(),
                limits: limits.clone(),
                tls: tls.clone(),
                slots: Arc::clone(&slots),
                shutdown: shutdown.clone(),
                abort: abort.clone(),
            };
            thread::Builder::new()
                .name(format!("http-{i}"))
                .spawn(move || {
                    if nice != 0 {
                        lower_priority(nice);
                    }
                    // The receiver is gone only when nobody waits for the server any more.
                    let _ = tx.send(worker.run(listener));
                })?;
            done.push(rx);
        }
        Ok(Self { done, abort })
    }

    /// A token that, cancelled, ends every worker at once, open connections included (when the
    /// shutdown's grace period is over).
    pub fn abort_token(&self) -> CancellationToken {
        self.abort.clone()
    }

    /// Resolves once every worker has stopped (after the shutdown, each once its connections
    /// have finished), or at the first that fails.
    pub async fn join(self) -> io::Result<()> {
        try_join_all(self.done.into_iter().map(|done| async move {
            done.await
                .map_err(|_| io::Error::other("an HTTP worker thread panicked"))?
        }))
        .await
        .map(drop)
    }
}

/// What one worker thread serves with.
struct Worker {
    api: Api,
    limits: Limits,
    tls: Option<Tls>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    abort: CancellationToken,
}

impl Worker {
    /// Serves `listener` on a runtime of this thread alone; dropping the runtime at the end
    /// drops the connections still open after an abort.
    fn run(self, listener: std::net::TcpListener) -> io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let Self {
            api,
            limits,
            tls,
            slots,
            shutdown,
            abort,
        } = self;
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener)?;
            let serving = async move {
                match tls {
                    Some(tls) => {
                        serve_with(listener, api, limits, tls.acceptor(), slots, shutdown).await
                    }
                    None => serve_with(listener, api, limits, Plain, slots, shutdown).await,
                }
            };
            tokio::select! {
                result = serving => result,
                () = abort.cancelled() => Ok(()),
            }
        })
    }
}

/// Adds `nice` to the calling thread's nice value (on Linux, `setpriority` on a thread id sets
/// that thread's alone). Failing is harmless: the thread keeps the process's priority.
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    use rustix::process::{getpriority_process, setpriority_process};
    let thread = rustix::thread::gettid();
    let result = getpriority_process(Some(thread))
        .and_then(|now| setpriority_process(Some(thread), now.saturating_add(nice).min(19)));
    if let Err(e) = result {
        warn!("cannot lower an HTTP worker's priority: {e}");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}
