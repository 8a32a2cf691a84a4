//! Decodes the KV-event messages vLLM and SGLang publish (ZeroMQ frames, msgpack payload)
//! into [`EngineMessage`]s, without I/O and without trusting a byte of the input.
//!
//! A live PUB message is three frames, `[topic, seq, payload]` ([`decode_message`]): the
//! topic (at most [`DecodeLimits::max_topic_bytes`]), the batch counter as 8 bytes
//! big-endian, and one msgpack value (at most [`DecodeLimits::max_payload_bytes`]). A
//! reply of the replay ROUTER socket ([`decode_replay_reply`]) is the same three frames
//! (vLLM >= 0.34, SGLang 0.5.23) or `[seq, payload]` (older), the caller having removed
//! the leading empty delimiter; the end of a replay is seq `ff * 8` with an empty payload.
//!
//! The payload ([`decode_batch`]) is an `EventBatch`, written by the engines as
//! `[ts, events, dp_rank]`; also accepted are `[ts, events]`, longer arrays (the rest is
//! skipped) and a map with keys `ts`, `events`, `data_parallel_rank` / `attn_dp_rank`.
//! Each event is either a positional array tagged by its class name,
//! `["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id,
//! medium, lora_name | {cache_salt}, extra_keys, group_idx, kv_cache_spec_kind,
//! kv_cache_spec_sliding_window, ...]` / `["BlockRemoved", block_hashes, medium,
//! group_idx, ...]` / `["AllBlocksCleared", ...]` (older releases stop early: everything
//! after `block_size` is optional), or a map `{"type": "BlockStored", "block_hashes": ..}`
//! whose keys come in any order and may be absent when default. data/engine-events/
//! README.md has every shape; the [`encode`](super::encode) module writes each of them.
//!
//! How it is walked: one pass over the payload with a cursor (`msgpack::Reader`) that
//! peeks at the next msgpack marker and reads values with `rmp`'s low-level functions.
//! Known fields are decoded straight into the typed values (hashes normalised to `u64`,
//! one `Vec` of hashes and one of token ids per event, no per-block allocation); unknown
//! fields, trailing array elements and events of an unknown class are skipped without
//! being materialised (a skipped event is counted in [`EventBatch::unknown_events`]).
//! A map event whose `type` is not its first key is scanned once for it, then decoded.
//!
//! Against hostile input: every length is checked against the bytes left before anything
//! is sliced or allocated (a container of `n` elements needs at least `n` bytes), skipping
//! is iterative, nested extra keys are depth-limited, no arithmetic can overflow and no
//! input makes it panic (`fuzz/fuzz_targets/engine_message_decode.rs`). Failures are a
//! typed [`DecodeError`] whose [`DecodeError::reason`] is a stable metrics label.

mod events;
mod msgpack;
#[cfg(test)]
mod tests;

use std::fmt;

use super::message::{EngineMessage, EventBatch};

/// Size limits applied before any payload byte is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted payload frame (default 16 MiB).
    pub max_payload_bytes: usize,
    /// Largest accepted topic frame (default 1024 bytes).
    pub max_topic_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_payload_bytes: 16 << 20, max_topic_bytes: 1024 }
    }
}

/// Why a message, reply or payload could not be decoded. Payload errors carry the byte
/// offset in the payload where the offending value starts (or where input ran out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not the number of frames the message has (`expected` says which counts are valid).
    Frames { expected: &'static str, got: usize },
    /// The seq frame is not 8 bytes long.
    Seq { len: usize },
    /// A frame (`"topic"` or `"payload"`) over its [`DecodeLimits`] limit.
    Oversize { frame: &'static str, len: usize, limit: usize },
    /// Not msgpack: truncated, the reserved marker `0xc1`, or bytes after the payload's value.
    Msgpack { offset: usize, detail: &'static str },
    /// Valid msgpack of the wrong type or structure (a required field missing, an event
    /// neither array nor map, a string that is not UTF-8, extra keys nested too deep, ...).
    Shape { offset: usize, detail: &'static str },
    /// A block hash that is neither an integer nor a non-empty bin.
    Hash { offset: usize, detail: &'static str },
    /// A token id that is not an integer in `0..=u32::MAX`.
    Token { offset: usize, detail: &'static str },
    /// `block_size` not an integer in `1..=u32::MAX`, or `token_ids` not
    /// `block_hashes.len() * block_size` long.
    BlockSize { offset: usize, detail: &'static str },
    /// The batch's `dp_rank` is an integer outside `0..=u32::MAX`.
    Rank { offset: usize, detail: &'static str },
}

impl DecodeError {
    /// Every value [`DecodeError::reason`] can return (to pre-register metric labels).
    pub const REASONS: [&'static str; 9] =
        ["frames", "seq", "oversize", "msgpack", "shape", "hash", "token", "block_size", "rank"];

    /// A short, stable snake_case label for the kind of failure (a Prometheus label value).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Frames { .. } => "frames",
            DecodeError::Seq { .. } => "seq",
            DecodeError::Oversize { .. } => "oversize",
            DecodeError::Msgpack { .. } => "msgpack",
            DecodeError::Shape { .. } => "shape",
            DecodeError::Hash { .. } => "hash",
            DecodeError::Token { .. } => "token",
            DecodeError::BlockSize { .. } => "block_size",
            DecodeError::Rank { .. } => "rank",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Frames { expected, got } => write!(f, "expected {expected} frames, got {got}"),
            DecodeError::Seq { len } => write!(f, "seq frame is {len} bytes, not 8"),
            DecodeError::Oversize { frame, len, limit } => {
                write!(f, "{frame} frame of {len} bytes is over the limit of {limit}")
            }
            DecodeError::Msgpack { offset, detail } => write!(f, "malformed msgpack at byte {offset}: {detail}"),
            DecodeError::Shape { offset, detail } => write!(f, "unexpected shape at byte {offset}: {detail}"),
            DecodeError::Hash { offset, detail } => write!(f, "bad block hash at byte {offset}: {detail}"),
            DecodeError::Token { offset, detail } => write!(f, "bad token id at byte {offset}: {detail}"),
            DecodeError::BlockSize { offset, detail } => write!(f, "bad block_size at byte {offset}: {detail}"),
            DecodeError::Rank { offset, detail } => write!(f, "bad dp_rank at byte {offset}: {detail}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// One reply of the replay ROUTER socket.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplayReply {
    /// A buffered batch, byte-identical to the one published live.
    Batch(EngineMessage),
    /// The end marker: seq `ff ff ff ff ff ff ff ff` with an empty payload.
    End,
}

/// Decodes a live PUB message: frames `[topic, seq (8 bytes big-endian), payload]`.
pub fn decode_message(frames: &[&[u8]], limits: &DecodeLimits) -> Result<EngineMessage, DecodeError> {
    match frames {
        [topic, seq, payload] => decode_parts(topic, seq, payload, limits),
        _ => Err(DecodeError::Frames { expected: "3", got: frames.len() }),
    }
}

/// Decodes a payload alone (one msgpack `EventBatch`, nothing after it).
pub fn decode_batch(payload: &[u8], limits: &DecodeLimits) -> Result<EventBatch, DecodeError> {
    if payload.len() > limits.max_payload_bytes {
        return Err(DecodeError::Oversize { frame: "payload", len: payload.len(), limit: limits.max_payload_bytes });
    }
    let mut reader = msgpack::Reader::new(payload);
    let batch = events::read_batch(&mut reader)?;
    if reader.remaining() != 0 {
        return Err(DecodeError::Msgpack { offset: reader.offset(), detail: "bytes after the batch" });
    }
    Ok(batch)
}

/// Decodes one reply of the replay ROUTER socket, its leading empty delimiter frame
/// already removed: `[topic, seq, payload]` (vLLM >= 0.34, SGLang 0.5.23) or
/// `[seq, payload]` (older releases, topic empty). Seq `ff * 8` with an empty payload is
/// [`ReplayReply::End`]; with a non-empty payload it is an ordinary batch.
pub fn decode_replay_reply(frames: &[&[u8]], limits: &DecodeLimits) -> Result<ReplayReply, DecodeError> {
    let (topic, seq, payload): (&[u8], &[u8], &[u8]) = match frames {
        [topic, seq, payload] => (topic, seq, payload),
        [seq, payload] => (&[], seq, payload),
        _ => return Err(DecodeError::Frames { expected: "2 or 3", got: frames.len() }),
    };
    check_topic(topic, limits)?;
    if read_seq(seq)? == u64::MAX && payload.is_empty() {
        return Ok(ReplayReply::End);
    }
    decode_parts(topic, seq, payload, limits).map(ReplayReply::Batch)
}

fn decode_parts(topic: &[u8], seq: &[u8], payload: &[u8], limits: &DecodeLimits) -> Result<EngineMessage, DecodeError> {
    check_topic(topic, limits)?;
    let seq = read_seq(seq)?;
    let batch = decode_batch(payload, limits)?;
    Ok(EngineMessage { topic: topic.to_vec(), seq, batch })
}

fn check_topic(topic: &[u8], limits: &DecodeLimits) -> Result<(), DecodeError> {
    if topic.len() > limits.max_topic_bytes {
        return Err(DecodeError::Oversize { frame: "topic", len: topic.len(), limit: limits.max_topic_bytes });
    }
    Ok(())
}

fn read_seq(frame: &[u8]) -> Result<u64, DecodeError> {
    let bytes: [u8; 8] = frame.try_into().map_err(|_| DecodeError::Seq { len: frame.len() })?;
    Ok(u64::from_be_bytes(bytes))
}
