//! kvroute-core: the sans-IO heart of kvroute.
//!
//! Everything here is pure logic: no sockets, no files, no clocks it was not handed.
//! - [`ids`] and [`event`]: who holds what, and the events that say so.
//! - [`hashing`]: token ids to per-block content hashes (SIMD, plus an XXH3 mode
//!   compatible with Dynamo and the SGLang gateway).
//! - [`index`]: the lock-free, epoch-reclaimed radix tree answering "how many leading
//!   blocks of this request does each (worker, dp_rank) hold".
//! - [`route`]: routing decisions: best (worker, dp_rank) by overlap and load, request
//!   load tracking, prefill/decode disaggregation with SGLang bootstrap rooms.
//! - [`sim`] and [`trace`]: an engine-cache simulator and the Mooncake trace reader that
//!   turn a trace into the KV events an engine fleet would publish.
//! - [`wire`]: the versioned binary frame format of the KV event transport, with a
//!   bounded streaming decoder.
//! - [`publish`]: the publisher side of the transport: per-rank sequence numbers, a ring
//!   of recent deltas for resuming subscribers, and block-set dumps for the others.
//! - [`ingest`]: the router side: per-rank cursors that drop duplicates and detect gaps,
//!   and the replay of dumps as events.
//! - [`metrics_page`]: a Prometheus text page parsed into samples (engines' load metrics,
//!   kvroute's own `/metrics` in the soak bench).
//! - [`snapshot`]: the router's snapshot format (workers, per-rank blocks and cursors),
//!   checksummed, verified once and read zero-copy.
//! - `reference` (feature `reference`, and in tests): the simple oracle for exactness.

pub mod engine_events;
pub mod event;
pub mod hashing;
pub mod ids;
pub mod index;
pub mod ingest;
pub mod metrics_page;
pub mod publish;
#[cfg(any(test, feature = "reference"))]
pub mod reference;
pub mod route;
pub mod sim;
pub mod snapshot;
pub mod tier;
pub mod trace;
pub mod wire;
pub mod worker;

pub use event::{KvEvent, KvEventData, StoredBlock};
pub use ids::{BlockHash, DpRank, EngineHash, RankId, RankKey, WorkerId};
pub use index::{EventCounters, KvIndex, OverlapScores};
