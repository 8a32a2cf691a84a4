//! The backend adapters: ours and the peers', each a small [`Backend`](crate::backend::Backend)
//! implementation.
//!
//! - [`kvroute`]: `kvroute_core::KvIndex`, applied directly on the event lanes.
//! - [`dynamo`]: `dynamo-kv-router` 1.6.1 `ConcurrentRadixTreeCompressed` and
//!   `PositionalIndexer`, each behind the crate's `ThreadPoolIndexer`.
//! - [`sglang`]: `kv-index` 2.0.0 `ChainIndex` with one `ChainBlockMap` per rank, owned by the
//!   event lane of the rank.

pub mod dynamo;
pub mod kvroute;
pub mod sglang;
