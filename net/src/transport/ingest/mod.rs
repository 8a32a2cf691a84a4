//! The router side: an ingest server that accepts publisher connections and feeds their
//! ranks' events into an [`IngestSink`] (the router's index).
//!
//! Shape: [`IngestServer::start`] binds a quinn endpoint and spawns an accept loop on the
//! current tokio runtime. Handshakes and established connections have separate bounds, so
//! a flood of connection attempts cannot lock out real publishers: at most
//! [`IngestConfig::max_handshakes`] handshakes run at once (past half of them an
//! unvalidated address gets a stateless QUIC Retry, at the cap attempts are refused), and
//! at most [`IngestConfig::max_connections`] connections are held once established (one
//! more is closed; counted in `connections_refused`). Each accepted connection is served
//! by one task (`connection`) which completes the handshake within
//! [`IngestConfig::handshake_timeout`], reads the
//! publisher's `Hello`, claims its authorised ranks in the `registry` and spawns one task
//! per rank (`rank_stream`) that subscribes and hands each frame to core's sans-IO
//! `RankSession` (through the rank's slot, `session`). Events of one rank are applied in order by its one task; a
//! newer connection announcing the rank supersedes the older task. [`IngestHandle`] gives
//! the bound address, the [`IngestMetrics`], the ranks' cursors and `shutdown`.
//!
//! Modules: `config`, `registry` (rank ownership, grace), `session` (a rank's slot:
//! core's session, its claim generation, counters), `rank_stream` (subscribe, read, resubscribe), `connection`.

mod config;
mod connection;
mod rank_stream;
mod registry;
mod session;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvroute_core::RankKey;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

pub use config::{IngestConfig, RankCursorState, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HANDSHAKES};
use registry::Registry;

use super::error::TransportError;
use super::metrics::{bump, IngestMetrics};
use super::quic;
use kvroute_core::ingest::IngestSink;

/// How long `shutdown` waits for connections to close.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// Shortest time between two warnings about refused connections.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What every task of one server shares.
pub(crate) struct ServerContext {
    pub(crate) config: IngestConfig,
    pub(crate) sink: Arc<dyn IngestSink>,
    pub(crate) metrics: Arc<IngestMetrics>,
    pub(crate) registry: Registry,
    /// `true` once shutting down.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Established connections: `config.max_connections` permits.
    pub(crate) connection_slots: Arc<Semaphore>,
    /// Refusals of either bound, logged at a bounded rate.
    pub(crate) refusals: std::sync::Mutex<RefusalLog>,
    next_conn: AtomicU64,
}

impl ServerContext {
    pub(crate) fn next_conn_id(&self) -> registry::ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts nothing; logs one refusal through the rate-limited log.
    pub(crate) fn note_refusal(&self, peer: SocketAddr, bound: &'static str, limit: usize) {
        self.refusals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).note(peer, bound, limit);
    }

    /// Starts the grace timer of released ranks: after `config.grace`, each one still
    /// unowned at its generation is removed from the sink.
    pub(crate) fn start_grace(self: &Arc<Self>, released: Vec<(RankKey, u64)>) {
        if released.is_empty() {
            return;
        }
        let server = self.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(server.config.grace) => {}
                _ = shutdown.wait_for(|down| *down) => return,
            }
            for (rank, generation) in released {
                if server.registry.expire(rank, generation, &*server.sink) {
                    bump(&server.metrics.ranks_removed_after_grace);
                    tracing::info!(%rank, "publisher gone past the grace period: rank removed");
                }
            }
        });
    }
}

/// Entry point of the router side: [`IngestServer::start`].
pub struct IngestServer;

impl IngestServer {
    /// Binds `config.listen` and starts accepting publishers, applying their events to
    /// `sink`. Must be called inside a tokio runtime (the server runs on it).
    pub fn start(config: IngestConfig, sink: Arc<dyn IngestSink>) -> Result<IngestHandle, TransportError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        config.validate()?;
        let endpoint = {
            let _guard = runtime.enter();
            quic::server_endpoint(config.listen, &config.tls, &config.quic)?
        };
        let local_addr = endpoint.local_addr().map_err(|error| TransportError::Bind { addr: config.listen, error })?;
        let (shutdown_tx, shutdown) = watch::channel(false);
        let server = Arc::new(ServerContext {
            registry: Registry::with_cursors(&config.initial_cursors),
            connection_slots: Arc::new(Semaphore::new(config.max_connections)),
            refusals: std::sync::Mutex::new(RefusalLog::default()),
            config,
            sink,
            metrics: Arc::new(IngestMetrics::default()),
            shutdown,
            next_conn: AtomicU64::new(0),
        });
        let accept = {
            let _guard = runtime.enter();
            server.start_grace(server.registry.unowned());
            runtime.spawn(accept_loop(server.clone(), endpoint.clone()))
        };
        Ok(IngestHandle { server, endpoint, local_addr, shutdown: shutdown_tx, accept: Some(accept) })
    }
}

/// Takes each connection attempt: refused at once while `config.max_connections` are
/// established; else a handshake slot (of `config.max_handshakes`) for it, a Retry first
/// when half the slots are busy and its address is unvalidated, a refusal when none is
/// free. The established connection's own slot is taken by its task.
async fn accept_loop(server: Arc<ServerContext>, endpoint: quinn::Endpoint) {
    let mut connections = JoinSet::new();
    let mut shutdown = server.shutdown.clone();
    let max_handshakes = server.config.max_handshakes;
    let handshake_slots = Arc::new(Semaphore::new(max_handshakes));
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    if server.connection_slots.available_permits() == 0 {
                        // Checked again once the handshake is done (`connection::serve`);
                        // refusing here spares a handshake that could only be closed.
                        bump(&server.metrics.connections_refused);
                        server.note_refusal(incoming.remote_address(), "max_connections", server.config.max_connections);
                        incoming.refuse();
                        continue;
                    }
                    let in_progress = max_handshakes - handshake_slots.available_permits();
                    if in_progress >= retry_threshold(max_handshakes) && incoming.may_retry() {
                        // Stateless: nothing is held until the client comes back with the
                        // token, which proves it receives at its address.
                        bump(&server.metrics.handshakes_retried);
                        if let Err(error) = incoming.retry() {
                            error.into_incoming().ignore();
                        }
                        continue;
                    }
                    match Arc::clone(&handshake_slots).try_acquire_owned() {
                        Ok(slot) => {
                            connections.spawn(connection::serve(server.clone(), incoming, slot));
                        }
                        Err(_) => {
                            bump(&server.metrics.handshakes_refused);
                            server.note_refusal(incoming.remote_address(), "max_handshakes", max_handshakes);
                            incoming.refuse();
                        }
                    }
                }
                None => break,
            },
            _ = shutdown.wait_for(|down| *down) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Connections see the shutdown and close themselves.
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, async { while connections.join_next().await.is_some() {} }).await;
}

/// Handshakes in progress from which an unvalidated address is sent a Retry: half the cap
/// (at least one), so that validated clients always find free slots during a flood.
fn retry_threshold(max_handshakes: usize) -> usize {
    (max_handshakes / 2).max(1)
}

/// Logs refused connections at warn level at most once per [`REFUSAL_LOG_INTERVAL`] (with
/// how many were refused since), so that a flood of connection attempts does not flood
/// the log too; the others at debug level.
#[derive(Default)]
pub(crate) struct RefusalLog {
    last_warning: Option<Instant>,
    refused_since: u64,
}

impl RefusalLog {
    /// Notes one refusal of `peer` because the bound `limit` (named `bound`) was reached.
    pub(crate) fn note(&mut self, peer: SocketAddr, bound: &'static str, limit: usize) {
        self.refused_since += 1;
        let now = Instant::now();
        if self.last_warning.is_none_or(|last| now.duration_since(last) >= REFUSAL_LOG_INTERVAL) {
            tracing::warn!(%peer, bound, limit, refused = self.refused_since, "publisher connection limit reached: refusing");
            self.last_warning = Some(now);
            self.refused_since = 0;
        } else {
            tracing::debug!(%peer, bound, limit, "publisher connection refused: limit reached");
        }
    }
}

/// A running ingest server. Dropping it shuts the server down without waiting.
pub struct IngestHandle {
    server: Arc<ServerContext>,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
}

impl IngestHandle {
    /// The bound address (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's counters (live; call `snapshot()` on them).
    pub fn metrics(&self) -> Arc<IngestMetrics> {
        self.server.metrics.clone()
    }

    /// Every synchronised rank's position, by rank: save them with a snapshot of the index
    /// and pass them as [`IngestConfig::initial_cursors`] on restart.
    pub fn cursors(&self) -> Vec<RankCursorState> {
        self.server.registry.cursors()
    }

    /// One rank's position now, as a function that stays valid after the handle is shut
    /// down (a snapshot writer keeps it, and reads each rank before and after exporting it).
    pub fn cursor_reader(&self) -> impl Fn(RankKey) -> Option<RankCursorState> + Send + Sync + 'static {
        let server = Arc::clone(&self.server);
        move |rank| server.registry.cursor_of(rank)
    }

    /// Closes every connection and stops. The sink keeps what it holds (no rank is removed).
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        self.endpoint.close(0u32.into(), b"router shutting down");
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.endpoint.wait_idle()).await;
    }
}

impl Drop for IngestHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        self.endpoint.close(0u32.into(), b"router shutting down");
    }
}
