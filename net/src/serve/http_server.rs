//! The daemon's HTTP server: axum's router over hyper HTTP/1 connections, with the
//! bounds `axum::serve` does not offer.
//!
//! - At most `max_connections` connections are open; one more is closed as soon as it is
//!   accepted and counted (`kvroute_http_connections_refused_total`), with a warning at
//!   the first refusal of a burst (then one per 1,000), so a flood of idle sockets cannot
//!   exhaust the process's file descriptors and starve `/healthz`.
//! - hyper's own `header_read_timeout` (with tokio's timer): a client must send a
//!   request's whole head within it, and it runs from the moment the connection waits for
//!   a request, so it also closes keep-alive connections idle that long.
//! - hyper's `max_header_size` and `max_buf_size`, both at [`MAX_READ_BUFFER`]: a
//!   request head larger than that is answered 431 and its connection closed, so each
//!   connection's read buffer stays near 64 KiB (hyper's default, ~400 KiB, times the
//!   connection cap would be 1.6 GB of slow-header flood); bodies stream through it in
//!   pieces. `max_buf_size` alone is not enough: hyper checks it only while a head is
//!   still incomplete, so a head that arrives whole in one read larger than the bound
//!   (the buffer's spare capacity can exceed it) was parsed and served;
//!   `max_header_size` also checks the length of a complete head.
//! - Graceful shutdown: on the stop signal the accept loop ends and every connection is
//!   asked to finish its request in flight and close (`graceful_shutdown`); the caller
//!   bounds the wait.
//!
//! Counters and the open-connections gauge live in [`HttpConnectionMetrics`].

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Default [`HttpServerLimits::max_connections`].
pub const DEFAULT_MAX_HTTP_CONNECTIONS: usize = 4096;
/// Largest read buffer of a connection, so also the largest request head.
pub const MAX_READ_BUFFER: usize = 64 << 10;
/// Default [`HttpServerLimits::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds of the HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpServerLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest wait for a request's head (also the longest idle keep-alive).
    pub header_read_timeout: Duration,
}

impl Default for HttpServerLimits {
    fn default() -> Self {
        HttpServerLimits {
            max_connections: DEFAULT_MAX_HTTP_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

/// Connection counters (Relaxed by design: independent counts).
#[derive(Debug, Default)]
pub struct HttpConnectionMetrics {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub open: AtomicU64,
    /// Requests answered 408: not done within the request timeout (a slow body).
    pub timed_out: AtomicU64,
}

/// Serves `app` on `listener` until `stop` turns true; see the module docs. Returns an
/// error only when accepting fails for another reason than a connection's own (out of
/// file descriptors is waited out, not returned).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpServerLimits,
    metrics: Arc<HttpConnectionMetrics>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    let mut refused_in_burst = 0u64;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) if is_out_of_descriptors(&error) => {
                tracing::warn!(%error, "HTTP accept: out of file descriptors; pausing accepts for 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.refused.fetch_add(1, Ordering::Relaxed);
            if refused_in_burst % 1000 == 0 {
                tracing::warn!(
                    %peer, max_connections = limits.max_connections, refused = refused_in_burst + 1,
                    "HTTP connection refused: too many open (max_http_connections)"
                );
            }
            refused_in_burst += 1;
            drop(stream);
            continue;
        };
        refused_in_burst = 0;
        metrics.accepted.fetch_add(1, Ordering::Relaxed);
        let (app, metrics, mut stop) = (app.clone(), Arc::clone(&metrics), stop.clone());
        connections.spawn(async move {
            let _slot = slot;
            metrics.open.fetch_add(1, Ordering::Relaxed);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_header_size(MAX_READ_BUFFER)
                .max_buf_size(MAX_READ_BUFFER);
            let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopped(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "HTTP connection ended with an error");
            }
            metrics.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone), holding no borrow after.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Errors of one connection that `accept` reports; the listener is fine.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}
