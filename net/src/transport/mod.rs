//! The QUIC KV-event transport: publishers next to the engines stream each rank's KV
//! events to every router; routers apply them to their index exactly once, in order,
//! across reconnects, restarts and lost batches.
//!
//! # Conversation (one QUIC connection per publisher and router)
//!
//! ```text
//! publisher                                    router
//!   connect (mutual TLS, ALPN kvroute-events/1) ->   grant = workers the client cert allows
//!   uni control stream: Hello{incarnation, ranks} -> ranks of other workers refused (counted)
//!                                              <-   per rank: bi stream, Subscribe{rank, resume_after}
//!   dump (DumpBegin, DumpBlocks.., DumpEnd)          (resume_after None, or the ring no longer covers it)
//!     or the ring's deltas after resume_after  ->   dump collected, then sink.replace_rank per tier
//!   live Deltas batches (linger <= max_delay)  ->   cursor: duplicates skipped, gap -> stream
//!   Heartbeat{rank, last_seq} when idle        ->     closed, Subscribe again from what was applied
//!   Goodbye on the control stream at shutdown  ->   connection closed; ranks kept for the grace period
//! ```
//!
//! # Publisher ([`Publisher::start`] -> [`PublisherHandle`])
//! Per rank a `RankPublisher` (sequence numbers, ring of recent deltas, block state for
//! dumps) behind a mutex with its subscribers' queues: registering a subscriber and taking
//! its dump or resumed deltas happen under that mutex, so nothing is lost or doubled
//! between the starting point and the live deltas. `publish` queues each delta on every
//! subscriber's bounded channel and never blocks; a subscriber whose queue is full is cut
//! (stream reset) and resubscribes, resuming from the ring. A writer task per subscription
//! batches live deltas ([`BatchConfig`]: what queued during the last write, plus up to
//! `max_delay` of linger, default 0, or `max_events` / `max_bytes`), and sends `Heartbeat{rank, last_seq}` after
//! `heartbeat_interval` (default 250 ms) of silence, so a lost *last* batch is found
//! within that time. One link task per router reconnects with backoff. The incarnation is
//! random per start: a restarted publisher makes every router ask for dumps.
//!
//! # Router ([`IngestServer::start`] -> [`IngestHandle`])
//! One task per connection and one per rank. A rank task drives the core
//! `RankCursor` and applies frames to the [`IngestSink`] under the rank's slot lock:
//! `Deltas` as one batch (numbered from core's process-wide increasing counter, since wire
//! sequence numbers restart per incarnation), dumps all at once at `DumpEnd` through
//! `replace_rank`, so lookups never see a half-replayed rank. A gap, a heartbeat ahead of
//! what was applied, a bad frame or a reset closes that stream only and the rank
//! subscribes again (`resume_after` = last applied; with backoff when nothing was applied).
//! Ranks or frames for workers the certificate does not allow are refused
//! (`rejected_unauthorized`). A publisher that disconnects keeps its ranks for
//! [`IngestConfig::grace`] (default 30 s); back within it, it resumes (same incarnation)
//! or dumps (new incarnation); past it, `remove_rank`. [`IngestHandle::cursors`] and
//! [`IngestConfig::initial_cursors`] carry positions across a router restart from a
//! snapshot. Counters: [`IngestMetrics`].
//!
//! # Bounds
//! Every buffer is bounded: decoders hold at most one frame (`max_frame_len`, default
//! 1 MiB); subscriber queues `subscriber_queue` deltas; a dump being collected
//! `max_dump_blocks`; ranks per connection `max_ranks_per_connection`; QUIC stream counts
//! by the transport parameters (routers accept no bidirectional and 4 unidirectional
//! streams from a publisher); connections a router holds `max_connections` (default 1024,
//! handshakes in progress included, each within `handshake_timeout`; the rest refused), and
//! connection attempts queued in quinn 1024. No peer byte can panic the router: every error
//! is a typed [`StreamError`] that closes its own stream.
//!
//! Modules: [`publisher`], [`ingest`], [`metrics`], [`config`] (shared settings),
//! [`error`]; internal: `frame_io` (frames on QUIC streams), `quic` (endpoints). The sink
//! trait ([`IngestSink`]), its `Router` implementation and the event numbering live in
//! core (`kvroute_core::ingest`), shared with the engines' ZeroMQ ingest.

pub mod config;
pub mod error;
mod frame_io;
pub mod ingest;
pub mod metrics;
pub mod publisher;
mod quic;

pub use config::{Backoff, QuicTuning, TlsMode, DEFAULT_UDP_RECEIVE_BUFFER};
pub use error::{PublishError, StreamError, TransportError};
pub use ingest::{IngestConfig, IngestHandle, IngestServer, RankCursorState};
pub use kvroute_core::ingest::IngestSink;
pub use metrics::{IngestMetrics, IngestMetricsSnapshot};
#[doc(hidden)]
pub use publisher::FaultInjection;
pub use publisher::{
    BatchConfig, Publisher, PublisherConfig, PublisherHandle, PublisherMetrics, PublisherMetricsSnapshot, RouterTarget,
};
