//! The engines' own KV events: vLLM's and SGLang's ZeroMQ + msgpack streams, decoded and
//! mapped onto the index, without I/O.
//!
//! (Module overview written once the parts land.)

pub mod block_mapper;
pub mod decode;
pub mod encode;
#[cfg(test)]
mod fixture_tests;
pub mod message;
pub mod rank_stream;
pub mod sequence;

pub use message::{BlockRemoved, BlockStored, EngineEvent, EngineMessage, EventBatch, Medium};
