//! The seam between the daemon and the QUIC KV event ingest ([`crate::transport`]):
//! [`start_ingest`] starts an [`IngestServer`] beside the HTTP API, applying events to the
//! router, and hands back a [`RunningIngest`] — its counters for `/metrics`
//! (`kvroute_ingest_*`) and a way to stop it at shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use kvroute_core::route::Router;

use super::config::ServeConfig;
use super::error::ServeError;
use super::metrics::{IngestCounterSource, MetricKind, MetricSample};
use crate::transport::{IngestConfig, IngestHandle, IngestMetrics, IngestServer, IngestSink, RankCursorState};

/// A future the daemon awaits at shutdown.
pub type StopFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A started ingest.
pub struct RunningIngest {
    /// Read at each `/metrics` scrape.
    pub counters: Arc<dyn IngestCounterSource>,
    /// Stops accepting connections and closes the open ones.
    pub stop: Box<dyn FnOnce() -> StopFuture + Send>,
    /// Where it listens (the port the system chose, for port 0).
    pub local_addr: std::net::SocketAddr,
    /// Each rank's position in its publisher's stream, for snapshots.
    pub cursors: super::snapshots::CursorSource,
}

impl RunningIngest {
    /// Wraps a started server.
    pub fn from_handle(handle: IngestHandle) -> RunningIngest {
        let metrics = handle.metrics();
        let local_addr = handle.local_addr();
        RunningIngest {
            counters: Arc::new(move || ingest_samples(&metrics)),
            cursors: Arc::new(handle.cursor_reader()),
            stop: Box::new(move || Box::pin(handle.shutdown())),
            local_addr,
        }
    }
}

/// Starts the QUIC ingest on `config.ingest_listen` (TLS per `config.tls`, frames up to
/// `config.max_frame_len`, at most `config.max_publisher_connections` connections and
/// `config.max_publisher_handshakes` handshakes),
/// applying events to `router`.
/// `initial_cursors` (from a restored snapshot) make publishers resume instead of dump.
pub async fn start_ingest(
    config: &ServeConfig,
    router: Arc<Router>,
    initial_cursors: Vec<RankCursorState>,
) -> Result<Option<RunningIngest>, ServeError> {
    let mut ingest = IngestConfig::new(config.ingest_listen, config.tls.clone());
    ingest.max_frame_len = config.max_frame_len;
    ingest.grace = config.publisher_grace;
    ingest.max_connections = config.max_publisher_connections;
    ingest.max_handshakes = config.max_publisher_handshakes;
    ingest.initial_cursors = initial_cursors;
    let sink: Arc<dyn IngestSink> = router;
    let handle = IngestServer::start(ingest, sink).map_err(|error| ServeError::Ingest(Box::new(error)))?;
    tracing::info!(addr = %handle.local_addr(), "QUIC ingest listening");
    Ok(Some(RunningIngest::from_handle(handle)))
}

/// The ingest's counters as `/metrics` samples (`connections_open` and
/// `handshakes_in_flight` are gauges).
fn ingest_samples(metrics: &IngestMetrics) -> Vec<MetricSample> {
    metrics
        .snapshot()
        .fields()
        .into_iter()
        .map(|(name, value)| {
            let (kind, help) = describe(name);
            MetricSample { name, help, kind, value }
        })
        .collect()
}

fn describe(name: &str) -> (MetricKind, &'static str) {
    use MetricKind::{Counter, Gauge};
    match name {
        "events_applied" => (Counter, "KV events applied to the index from Deltas frames (duplicates skipped)."),
        "block_events_applied" => (Counter, "Block hashes carried by the applied events (stored plus removed)."),
        "deltas_frames" => (Counter, "Deltas frames received."),
        "gaps" => (Counter, "Sequence gaps seen (a lost batch; the rank resubscribes)."),
        "resumes" => (Counter, "Subscriptions sent with a resume position."),
        "dumps" => (Counter, "Rank dumps completed and applied."),
        "dump_blocks" => (Counter, "Blocks received in dumps."),
        "rejected_frames" => (Counter, "Streams closed for frames that do not decode or arrive out of order."),
        "rejected_unauthorized" => (Counter, "Ranks or frames for workers the publisher's certificate does not allow."),
        "connections_open" => (Gauge, "Publisher connections open now."),
        "connections_total" => (Counter, "Publisher connections accepted since start."),
        "handshakes_failed" => (Counter, "QUIC/TLS handshakes that failed or timed out."),
        "handshakes_in_flight" => (Gauge, "QUIC/TLS handshakes in progress now."),
        "handshakes_retried" => (
            Counter,
            "Connection attempts from unvalidated addresses sent a QUIC Retry (half of max_publisher_handshakes busy).",
        ),
        "handshakes_refused" => (Counter, "Connection attempts refused: max_publisher_handshakes in progress."),
        "connections_refused" => {
            (Counter, "Publisher connection attempts refused: max_publisher_connections were established.")
        }
        "ranks_removed_after_grace" => {
            (Counter, "Ranks removed after their publisher stayed away past the grace period.")
        }
        _ => (Counter, "QUIC ingest counter."),
    }
}
