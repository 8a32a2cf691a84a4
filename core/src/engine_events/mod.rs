//! The engines' own KV events: vLLM's and SGLang's ZeroMQ + msgpack streams, decoded and
//! mapped onto the index, without I/O (the sockets are `kvroute-net`'s `engine_zmq`).
//!
//! One engine DP rank publishes numbered batches `[topic, seq, payload]` on a PUB socket
//! and keeps the newest ones for a replay socket. Per (endpoint, rank), a message goes:
//!
//! ```text
//! frames --decode--> EngineMessage --sequence::SeqTracker--> Apply / Clear / RequestReplay
//!   Apply(batch) --block_mapper::BlockMapper--> (tier, KvEventData)s --> IngestSink
//! ```
//!
//! - [`message`]: the typed values (batch, `BlockStored`, `BlockRemoved`, `AllBlocksCleared`,
//!   medium), hashes already normalised to `u64`.
//! - [`decode`] / [`encode`]: msgpack (the `rmp` crate) to values and back, every shape of
//!   the four captured releases (`data/engine-events/`); bounded, typed errors.
//! - [`sequence`]: gaps, replays, restarts and late joins on `crate::ingest::RankCursor`.
//! - [`block_mapper`]: tiers from `medium`, block identity (LoRA, salt, extra keys) folded
//!   as a request's, hybrid groups, page sizes re-chunked into router blocks.
//! - [`rank_stream`]: the three above for one rank, applying to a sink.

pub mod block_mapper;
pub mod decode;
pub mod encode;
#[cfg(test)]
mod fixture_tests;
pub mod message;
pub mod rank_stream;
pub mod sequence;

pub use message::{BlockRemoved, BlockStored, EngineEvent, EngineMessage, EventBatch, Medium};
