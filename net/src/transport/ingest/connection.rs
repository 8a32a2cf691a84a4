//! One publisher connection on the router: the handshake (within `handshake_timeout`,
//! holding a `max_handshakes` slot), then a `max_connections` slot (none free: closed at
//! once), its worker grant, the `Hello` on
//! the first unidirectional stream, one [`RankTask`] per authorised rank, the rest of the
//! control stream (a `Goodbye` closes the connection), and any further unidirectional
//! stream, which has no place in the protocol: it is read up to its first frame or error,
//! counted in `rejected_frames` and stopped, and nothing else is affected. When the
//! connection ends its ranks are released and their grace timers started.

use std::collections::BTreeSet;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kvroute_core::wire::{Frame, GoodbyeCode, Hello};
use kvroute_core::RankKey;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use super::rank_stream::RankTask;
use super::registry::ConnId;
use super::ServerContext;
use crate::tls::{peer_worker_grant, WorkerGrant};
use crate::transport::config::TlsMode;
use crate::transport::frame_io::{FrameReader, ReadFault};
use crate::transport::metrics::bump;

fn close_code(code: GoodbyeCode) -> quinn::VarInt {
    quinn::VarInt::from_u32(u32::from(code.0))
}

/// Adds one to a gauge for as long as it lives (also when its task is aborted).
struct GaugeGuard<'a>(&'a AtomicU64);

impl<'a> GaugeGuard<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        bump(gauge);
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one incoming connection to its end. `handshake_slot` is its place under
/// `max_handshakes`, given back once the handshake is over.
pub(crate) async fn serve(server: Arc<ServerContext>, incoming: quinn::Incoming, handshake_slot: OwnedSemaphorePermit) {
    let peer = incoming.remote_address();
    let handshake = {
        let _in_flight = GaugeGuard::new(&server.metrics.handshakes_in_flight);
        // On timeout the dropped future closes the half-made connection.
        tokio::time::timeout(server.config.handshake_timeout, incoming.into_future()).await
    };
    drop(handshake_slot);
    let conn = match handshake {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            bump(&server.metrics.handshakes_failed);
            tracing::debug!(%peer, %error, "handshake failed");
            return;
        }
        Err(_) => {
            bump(&server.metrics.handshakes_failed);
            tracing::debug!(%peer, timeout = ?server.config.handshake_timeout, "handshake timed out");
            return;
        }
    };
    let grant = match &server.config.tls {
        TlsMode::InsecureLoopback => WorkerGrant::all(),
        TlsMode::Mutual(_) => match peer_worker_grant(&conn) {
            Ok(grant) => grant,
            Err(error) => {
                bump(&server.metrics.rejected_unauthorized);
                tracing::warn!(peer = %conn.remote_address(), %error, "refusing publisher");
                conn.close(close_code(GoodbyeCode::PROTOCOL_ERROR), b"unreadable worker grant");
                return;
            }
        },
    };
    let Ok(_slot) = Arc::clone(&server.connection_slots).try_acquire_owned() else {
        bump(&server.metrics.connections_refused);
        server.note_refusal(peer, "max_connections", server.config.max_connections);
        conn.close(close_code(GoodbyeCode::BUSY), b"max_connections reached");
        return;
    };
    bump(&server.metrics.connections_total);
    let _open = GaugeGuard::new(&server.metrics.connections_open);
    let conn_id = server.next_conn_id();
    let mut tasks = JoinSet::new();
    let Some((claimed, publisher_name)) = accept_hello(&server, &conn, &grant, conn_id, &mut tasks).await else {
        return;
    };
    let mut shutdown = server.shutdown.clone();
    loop {
        tokio::select! {
            stream = conn.accept_uni() => match stream {
                Ok(stream) => {
                    tasks.spawn(reject_stray_stream(server.clone(), stream));
                }
                Err(reason) => {
                    // A killed publisher shows up here after the QUIC idle timeout.
                    tracing::info!(
                        publisher = %publisher_name, peer = %peer, workers = %grant, %reason,
                        ranks = claimed.len(), "publisher disconnected"
                    );
                    break;
                }
            },
            _ = shutdown.wait_for(|down| *down) => {
                conn.close(close_code(GoodbyeCode::NORMAL), b"router shutting down");
                break;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
    if !*server.shutdown.borrow() {
        let released: Vec<(RankKey, u64)> = claimed
            .into_iter()
            .filter_map(|rank| server.registry.release(rank, conn_id).map(|generation| (rank, generation)))
            .collect();
        server.start_grace(released);
    }
}

/// Reads the `Hello`, claims the authorised ranks and starts their tasks (and the control
/// stream's reader); returns the ranks claimed and the publisher's name, `None` when the
/// connection was refused.
async fn accept_hello(
    server: &Arc<ServerContext>,
    conn: &quinn::Connection,
    grant: &WorkerGrant,
    conn_id: ConnId,
    tasks: &mut JoinSet<()>,
) -> Option<(Vec<RankKey>, String)> {
    let config = &server.config;
    let first = tokio::time::timeout(config.hello_timeout, async {
        let control = conn.accept_uni().await.ok()?;
        let mut reader = FrameReader::new(control, config.max_frame_len);
        let frame = reader.next().await;
        Some((reader, frame))
    })
    .await;
    let (reader, hello) = match first {
        Ok(Some((reader, Ok(Some(Frame::Hello(hello)))))) => (reader, hello),
        Ok(None) | Ok(Some((_, Err(ReadFault::Stream(_))))) => return None,
        Err(_) => return refuse(server, conn, "no Hello in time"),
        Ok(Some((_, Ok(Some(frame))))) => {
            return refuse(server, conn, &format!("expected Hello, got {:?}", frame.frame_type()))
        }
        Ok(Some((_, Ok(None)))) => return refuse(server, conn, "control stream ended before Hello"),
        Ok(Some((_, Err(ReadFault::Wire(error))))) => return refuse(server, conn, &error.to_string()),
    };
    let Hello { incarnation, publisher_name, ranks, .. } = hello;
    let ranks: BTreeSet<RankKey> = ranks.into_iter().collect();
    if ranks.len() > config.max_ranks_per_connection {
        bump(&server.metrics.rejected_frames);
        tracing::warn!(publisher = %publisher_name, ranks = ranks.len(), "refusing publisher: too many ranks");
        conn.close(close_code(GoodbyeCode::PROTOCOL_ERROR), b"too many ranks");
        return None;
    }
    tracing::info!(
        publisher = %publisher_name, peer = %conn.remote_address(), workers = %grant, incarnation,
        ranks = ranks.len(), "publisher connected"
    );
    let grant = Arc::new(grant.clone());
    let mut claimed = Vec::with_capacity(ranks.len());
    for rank in ranks {
        if !grant.allows(rank.worker) {
            bump(&server.metrics.rejected_unauthorized);
            tracing::warn!(publisher = %publisher_name, %rank, "rank refused: the certificate does not allow its worker");
            continue;
        }
        let (slot, generation) = server.registry.claim(rank, conn_id, incarnation);
        claimed.push(rank);
        let task =
            RankTask { server: server.clone(), conn: conn.clone(), rank, slot, generation, grant: grant.clone() };
        tasks.spawn(task.run());
    }
    tasks.spawn(read_control(server.clone(), conn.clone(), reader));
    Some((claimed, publisher_name))
}

/// Refuses a connection whose control stream does not start with a `Hello`.
fn refuse<T>(server: &ServerContext, conn: &quinn::Connection, why: &str) -> Option<T> {
    bump(&server.metrics.rejected_frames);
    tracing::warn!(peer = %conn.remote_address(), %why, "refusing publisher");
    conn.close(close_code(GoodbyeCode::PROTOCOL_ERROR), b"expected Hello");
    None
}

/// The control stream after `Hello`: a `Goodbye` (or any other frame, or bad bytes)
/// closes the connection; its end alone does not.
async fn read_control(server: Arc<ServerContext>, conn: quinn::Connection, mut reader: FrameReader) {
    match reader.next().await {
        Ok(Some(Frame::Goodbye(goodbye))) => {
            tracing::info!(code = goodbye.code.0, message = %goodbye.message, "publisher said goodbye");
            conn.close(close_code(GoodbyeCode::NORMAL), b"goodbye");
        }
        Ok(Some(frame)) => {
            bump(&server.metrics.rejected_frames);
            tracing::warn!(frame = ?frame.frame_type(), "unexpected frame on the control stream");
            conn.close(close_code(GoodbyeCode::PROTOCOL_ERROR), b"unexpected control frame");
        }
        Err(ReadFault::Wire(error)) => {
            bump(&server.metrics.rejected_frames);
            tracing::warn!(%error, "bad bytes on the control stream");
            conn.close(close_code(GoodbyeCode::PROTOCOL_ERROR), b"bad control frame");
        }
        Ok(None) | Err(ReadFault::Stream(_)) => {}
    }
}

/// A unidirectional stream besides the control stream: refused at its first frame or
/// error (or after the Hello timeout), counted, stopped.
async fn reject_stray_stream(server: Arc<ServerContext>, stream: quinn::RecvStream) {
    let mut reader = FrameReader::new(stream, server.config.max_frame_len);
    let first = tokio::time::timeout(server.config.hello_timeout, reader.next()).await;
    if !matches!(first, Ok(Err(ReadFault::Stream(_)))) {
        bump(&server.metrics.rejected_frames);
    }
    tracing::debug!("stray stream refused");
    reader.stop(GoodbyeCode::PROTOCOL_ERROR);
}
