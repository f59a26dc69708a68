//! The HTTP server: hyper's HTTP/1 connection driver with the [`Limits`] that keep slow, greedy
//! and hostile clients from tying the service up (a deadline for a request's head and one for its
//! body, a cap on open connections), and a graceful shutdown. `axum::serve` has no knobs for the
//! first three.

use std::{sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::Limits;

/// The largest request head (request line and headers) accepted; larger ones get hyper's 431.
/// Browsers and HTTP clients send well under 8 KiB; hyper's own default is ~400 KiB.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Serves `router` on `listener` until `shutdown` fires; then stops accepting (new connections
/// are refused once the listener is dropped) and waits for open connections to finish their
/// in-flight request. The caller bounds that wait (`--shutdown-grace`).
///
/// Each connection holds one of `limits.max_connections` slots from accept to close; with none
/// free, accepting pauses and the kernel's backlog holds newcomers.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
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
        max_connections = limits.max_connections,
        header_read_timeout_ms = limits.header_read_timeout.as_millis(),
        body_read_timeout_ms = limits.body_read_timeout.as_millis(),
        rate_limit = %limits
            .rate_limit
            .map_or_else(|| "off".to_owned(), |limit| limit.to_string()),
        "serving HTTP"
    );
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
        let connection = graceful.watch(http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        ));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Timeouts, resets and unparsable requests end here: the client's doing.
                debug!("connection closed: {e}");
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
