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
//! - `reference` (feature `reference`, and in tests): the simple oracle for exactness.

pub mod event;
pub mod hashing;
pub mod ids;
pub mod index;
#[cfg(any(test, feature = "reference"))]
pub mod reference;
pub mod route;
pub mod sim;
pub mod trace;

pub use event::{KvEvent, KvEventData, StoredBlock};
pub use ids::{BlockHash, DpRank, EngineHash, RankId, RankKey, WorkerId};
pub use index::{EventCounters, KvIndex, OverlapScores};
