//! [`IngestConfig`]: where the router listens, how it authenticates publishers, its
//! bounds and timers; [`RankCursorState`], a rank's saved position for restarts.

use std::net::SocketAddr;
use std::time::Duration;

use kvroute_core::wire::DEFAULT_MAX_FRAME_LEN;
use kvroute_core::RankKey;

use crate::transport::config::{Backoff, QuicTuning, TlsMode};
use crate::transport::error::TransportError;

/// Default of [`IngestConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of [`IngestConfig::max_handshakes`].
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;

/// Where the router stands in one rank's stream: every event up to `applied_seq` of the
/// publisher incarnation `incarnation` is in the index. Saved with a snapshot of the index
/// and handed back through [`IngestConfig::initial_cursors`], it lets a restarted router
/// resume instead of asking for a dump. `settled_seq` (at least `applied_seq`) bounds the
/// events a restored index may hold already: those after `applied_seq` up to it are
/// applied as replays (not counted as anomalies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RankCursorState {
    pub rank: RankKey,
    pub incarnation: u64,
    pub applied_seq: u64,
    #[serde(default)]
    pub settled_seq: u64,
}

impl RankCursorState {
    /// A position whose index holds exactly the events up to `applied_seq`.
    pub fn exact(rank: RankKey, incarnation: u64, applied_seq: u64) -> Self {
        RankCursorState { rank, incarnation, applied_seq, settled_seq: applied_seq }
    }
}

/// Ingest server settings. [`IngestConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    pub listen: SocketAddr,
    pub tls: TlsMode,
    /// How long the ranks of a publisher that disconnected stay in the index; a publisher
    /// back within it resumes (same incarnation) or dumps (new one) without its ranks ever
    /// leaving. Default 30 s.
    pub grace: Duration,
    /// Longest frame accepted; longer ones close their stream. Default 1 MiB.
    pub max_frame_len: u32,
    /// Most blocks one dump may carry (it is collected before it replaces the rank).
    /// Default 4 Mi.
    pub max_dump_blocks: u64,
    /// Most ranks one publisher connection may announce. Default 4096.
    pub max_ranks_per_connection: usize,
    /// A new connection must send its `Hello` within this time. Default 5 s.
    pub hello_timeout: Duration,
    /// Most established publisher connections held at once: a connection that completes
    /// its handshake beyond it is closed at once (counted in `connections_refused`); the
    /// connections already held are unaffected, and a slot frees when one of them ends.
    /// Handshakes in progress do not count here (see `max_handshakes`). Default 1024.
    pub max_connections: usize,
    /// Most QUIC/TLS handshakes in progress at once, apart from `max_connections`. Past
    /// half of it, a connection attempt from an address QUIC has not validated gets a
    /// stateless Retry (counted in `handshakes_retried`): a real client answers it at once,
    /// a flood of spoofed or fire-and-forget Initial packets holds nothing. At the cap,
    /// attempts are refused (counted in `handshakes_refused`). Default 64.
    pub max_handshakes: usize,
    /// A connection must complete its QUIC/TLS handshake within this time, or it is
    /// dropped (counted in `handshakes_failed`) and its handshake slot freed: well under
    /// the idle timeout, so half-open handshakes turn over fast. Default 3 s.
    pub handshake_timeout: Duration,
    /// Pacing of a rank's resubscriptions after a stream failed without progress
    /// (a gap after progress resubscribes at once). Default 10 ms doubling to 1 s.
    pub resubscribe: Backoff,
    pub quic: QuicTuning,
    /// Positions to start from (see [`RankCursorState`]). Ranks listed here whose
    /// publisher does not connect within the grace period are removed from the sink.
    pub initial_cursors: Vec<RankCursorState>,
}

impl IngestConfig {
    pub fn new(listen: SocketAddr, tls: TlsMode) -> Self {
        IngestConfig {
            listen,
            tls,
            grace: Duration::from_secs(30),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_dump_blocks: 4 << 20,
            max_ranks_per_connection: 4096,
            hello_timeout: Duration::from_secs(5),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            handshake_timeout: Duration::from_secs(3),
            resubscribe: Backoff { initial: Duration::from_millis(10), max: Duration::from_secs(1) },
            quic: QuicTuning::default(),
            initial_cursors: Vec::new(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), TransportError> {
        // A frame must at least hold its header and a Hello with a few ranks.
        if self.max_frame_len < 1024 {
            return Err(TransportError::InvalidConfig(format!(
                "max_frame_len {} is below the minimum of 1024",
                self.max_frame_len
            )));
        }
        if self.max_ranks_per_connection == 0
            || self.hello_timeout.is_zero()
            || self.max_connections == 0
            || self.max_handshakes == 0
            || self.handshake_timeout.is_zero()
        {
            return Err(TransportError::InvalidConfig(
                "max_ranks_per_connection, hello_timeout, max_connections, max_handshakes and handshake_timeout \
                 must be above zero"
                    .into(),
            ));
        }
        for (name, value) in [("max_connections", self.max_connections), ("max_handshakes", self.max_handshakes)] {
            if value > tokio::sync::Semaphore::MAX_PERMITS {
                return Err(TransportError::InvalidConfig(format!(
                    "{name} {value} is above the maximum of {}",
                    tokio::sync::Semaphore::MAX_PERMITS
                )));
            }
        }
        Ok(())
    }
}
