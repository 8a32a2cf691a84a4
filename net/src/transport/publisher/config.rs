//! [`PublisherConfig`]: which routers to feed, with which identity, which ranks, and how to
//! batch; [`BatchConfig`]; [`RouterTarget`]; the test-only [`FaultInjection`].

use std::net::SocketAddr;
use std::time::Duration;

use kvroute_core::publish::PublisherConfig as RankConfig;
use kvroute_core::wire::{self, DEFAULT_MAX_FRAME_LEN};
use kvroute_core::RankKey;

use crate::transport::config::{Backoff, QuicTuning, TlsMode};
use crate::transport::error::TransportError;

/// Longest accepted [`BatchConfig::max_delay`].
pub const MAX_BATCH_DELAY: Duration = Duration::from_secs(10);

/// One router to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterTarget {
    pub addr: SocketAddr,
    /// The name the router's certificate must carry (`localhost`, `router.internal`, or the
    /// IP written as text).
    pub server_name: String,
}

impl RouterTarget {
    pub fn new(addr: SocketAddr, server_name: impl Into<String>) -> Self {
        RouterTarget { addr, server_name: server_name.into() }
    }
}

/// How live deltas are batched into frames. A batch is written when it holds
/// `max_events` events or `max_bytes` encoded bytes, when `max_delay` has passed since its
/// first delta arrived, or at once when `max_delay` is zero and no more deltas are queued.
///
/// The default lingers 0: a batch is whatever queued while the previous write was in
/// flight, so batches grow with load and an idle rank's event leaves at once. A 1 ms
/// linger cost ~1.9 ms at p50 in the transport bench (tokio's timer has 1 ms ticks) for
/// no throughput gain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Longest a delta waits for company (at most 1 s). Default 0 (see above).
    pub max_delay: Duration,
    /// Default 4096.
    pub max_events: usize,
    /// Default 256 KiB.
    pub max_bytes: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_delay: Duration::ZERO, max_events: 4096, max_bytes: 256 << 10 }
    }
}

/// Test hook: drops or duplicates deltas right before they are encoded, so that the
/// router's gap detection and duplicate skipping can be exercised end to end. Applies to
/// live and resumed deltas, not to dumps or heartbeats.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultInjection {
    /// Deltas dropped per thousand.
    pub drop_per_mille: u32,
    /// Deltas sent twice per thousand.
    pub duplicate_per_mille: u32,
    pub seed: u64,
}

/// Publisher settings. [`PublisherConfig::new`] fills in the defaults.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    /// For the routers' logs (at most 255 bytes).
    pub name: String,
    /// Every router to feed; the publisher keeps one connection to each.
    pub routers: Vec<RouterTarget>,
    pub tls: TlsMode,
    /// The ranks this publisher publishes (announced in `Hello`).
    pub ranks: Vec<RankKey>,
    /// Per rank: the ring of recent deltas (how long a disconnected router can resume
    /// rather than take a dump) and the longest event kept as one delta.
    pub rank_state: RankConfig,
    /// Longest frame written; the routers' `max_frame_len` must be at least this.
    /// Default 1 MiB.
    pub max_frame_len: u32,
    pub batch: BatchConfig,
    /// Deltas queued per subscriber. A router that falls this far behind is cut (its
    /// stream reset) and subscribes again; nothing is buffered beyond. Default 65536.
    pub subscriber_queue: usize,
    /// A rank stream with nothing to send for this long carries a `Heartbeat` with the
    /// last sequence number, so a lost last batch is found within about this time.
    /// Default 250 ms.
    pub heartbeat_interval: Duration,
    /// Reconnection pacing. Default 50 ms doubling to 2 s.
    pub reconnect: Backoff,
    pub quic: QuicTuning,
    /// Local address of the UDP socket; `None`: any port on the unspecified address of the
    /// first router's address family.
    pub bind: Option<SocketAddr>,
    /// The incarnation announced in `Hello`; `None` (the default): a random one, as a new
    /// process must have.
    pub incarnation: Option<u64>,
    #[doc(hidden)]
    pub fault: Option<FaultInjection>,
}

impl PublisherConfig {
    /// Defaults for everything but the routers, the identity and the ranks.
    pub fn new(name: impl Into<String>, routers: Vec<RouterTarget>, tls: TlsMode, ranks: Vec<RankKey>) -> Self {
        PublisherConfig {
            name: name.into(),
            routers,
            tls,
            ranks,
            rank_state: RankConfig::default(),
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            batch: BatchConfig::default(),
            subscriber_queue: 1 << 16,
            heartbeat_interval: Duration::from_millis(250),
            reconnect: Backoff { initial: Duration::from_millis(50), max: Duration::from_secs(2) },
            quic: QuicTuning::default(),
            bind: None,
            incarnation: None,
            fault: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), TransportError> {
        let invalid = |reason: String| Err(TransportError::InvalidConfig(reason));
        if self.name.len() > wire::MAX_PUBLISHER_NAME_LEN {
            return invalid(format!("publisher name longer than {} bytes", wire::MAX_PUBLISHER_NAME_LEN));
        }
        if self.ranks.is_empty() || self.routers.is_empty() {
            return invalid("a publisher needs at least one rank and one router".into());
        }
        if self.subscriber_queue == 0 || self.batch.max_events == 0 || self.heartbeat_interval.is_zero() {
            return invalid("subscriber_queue, batch.max_events and heartbeat_interval must be above zero".into());
        }
        if self.batch.max_delay > MAX_BATCH_DELAY {
            return invalid(format!("batch.max_delay {:?} is above {MAX_BATCH_DELAY:?}", self.batch.max_delay));
        }
        // The longest delta (a Stored of max_event_blocks blocks) must fit one frame.
        let longest = wire::DELTAS_OVERHEAD
            + wire::event_encoded_len(&kvroute_core::KvEventData::Stored { parent: None, blocks: Vec::new() })
            + self.rank_state.max_event_blocks.max(1).saturating_mul(16);
        if longest > self.max_frame_len as usize {
            return invalid(format!(
                "rank_state.max_event_blocks ({}) makes deltas of {longest} bytes, above max_frame_len ({})",
                self.rank_state.max_event_blocks, self.max_frame_len
            ));
        }
        Ok(())
    }
}
