//! Encodes [`EventBatch`]es as msgpack payloads exactly as vLLM and SGLang write them:
//! the counterpart of [`super::decode`], used by tests, benches and the test publisher.
//!
//! Every format writes the batch as a 3-element array `[ts (float64), events,
//! dp_rank (int or nil)]`; the formats differ in how an event is laid out
//! ([`EngineFormat`]; byte for byte as in data/engine-events/, see its README):
//! - `VllmMap` (vLLM 0.34): `BlockStored` is a map with a `map16` header (as msgspec
//!   writes it, even for 11 entries): `type, block_hashes, parent_block_hash, token_ids,
//!   block_size, lora_id, medium, lora_name` always, then `extra_keys, group_idx,
//!   kv_cache_spec_kind, kv_cache_spec_sliding_window` each only when not `None`.
//!   `BlockRemoved` is `{type, block_hashes, medium, group_idx?}`, `AllBlocksCleared`
//!   `{type}` (fixmap headers).
//! - `VllmArray` (vLLM 0.23): `BlockStored` is the 12-element array `[tag, block_hashes,
//!   parent, token_ids, block_size, lora_id, medium, lora_name, extra_keys, group_idx,
//!   kv_cache_spec_kind, kv_cache_spec_sliding_window]`, `BlockRemoved` `[tag,
//!   block_hashes, medium, group_idx]`, `AllBlocksCleared` `[tag]`.
//! - `SglangMap` (SGLang 0.5.23): `{type, block_hashes, parent_block_hash, token_ids,
//!   block_size, lora_id, medium?, cache_salt?, lora_name?}`, `{type, block_hashes,
//!   medium?}`, `{type}`.
//! - `SglangArray` (SGLang 0.5.19): `[tag, block_hashes, parent, token_ids, block_size,
//!   lora_id, medium]` plus `{"cache_salt": salt}` as an 8th element when salted;
//!   `[tag, block_hashes, medium]`; `[tag]`.
//!
//! Values: vLLM writes hashes as unsigned ints, SGLang as signed (`u64 as i64`); every
//! integer takes its shortest msgpack form, strings and containers the shortest header
//! (as msgpack-python and msgspec do). Fields a format cannot carry are dropped
//! ([`representable`] says what decoding the bytes gives back). Writing goes through
//! `rmp::encode` into an `rmp::encode::ByteBuf`, whose writes cannot fail.

use std::convert::Infallible;

use rmp::encode::{self, ByteBuf, RmpWrite, ValueWriteError};
use rmp::Marker;

use super::message::{BlockRemoved, BlockStored, EngineEvent, EventBatch, Medium};
use crate::hashing::KeyValue;

/// Which engine release's encoding to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineFormat {
    /// vLLM 0.34: map events.
    VllmMap,
    /// vLLM 0.23 (the last release with arrays): positional array events.
    VllmArray,
    /// SGLang 0.5.23: map events.
    SglangMap,
    /// SGLang 0.5.19 (the last release with arrays): positional array events.
    SglangArray,
}

impl EngineFormat {
    /// Every format.
    pub const ALL: [EngineFormat; 4] =
        [EngineFormat::VllmMap, EngineFormat::VllmArray, EngineFormat::SglangMap, EngineFormat::SglangArray];

    /// Short name (`vllm-map`, `vllm-array`, `sglang-map`, `sglang-array`).
    pub fn name(self) -> &'static str {
        match self {
            EngineFormat::VllmMap => "vllm-map",
            EngineFormat::VllmArray => "vllm-array",
            EngineFormat::SglangMap => "sglang-map",
            EngineFormat::SglangArray => "sglang-array",
        }
    }

    fn is_vllm(self) -> bool {
        matches!(self, EngineFormat::VllmMap | EngineFormat::VllmArray)
    }
}

/// The msgpack payload of `batch` in `format` (`unknown_events` is not written).
pub fn encode_batch(batch: &EventBatch, format: EngineFormat) -> Vec<u8> {
    let mut out = Vec::new();
    encode_batch_into(batch, format, &mut out);
    out
}

/// Appends the msgpack payload of `batch` in `format` to `out`.
pub fn encode_batch_into(batch: &EventBatch, format: EngineFormat, out: &mut Vec<u8>) {
    let mut writer = Writer { buf: ByteBuf::from_vec(std::mem::take(out)), signed_hashes: !format.is_vllm() };
    writer.array(3);
    encode::write_f64(&mut writer.buf, batch.ts).written();
    writer.array(batch.events.len());
    for event in &batch.events {
        match format {
            EngineFormat::VllmMap => writer.vllm_map_event(event),
            EngineFormat::VllmArray => writer.vllm_array_event(event),
            EngineFormat::SglangMap => writer.sglang_map_event(event),
            EngineFormat::SglangArray => writer.sglang_array_event(event),
        }
    }
    match batch.dp_rank {
        Some(rank) => writer.uint(u64::from(rank)),
        None => writer.nil(),
    }
    *out = writer.buf.into_vec();
}

/// What decoding `encode_batch(batch, format)` gives back: `batch` without the fields
/// `format` cannot carry (vLLM: `cache_salt`; SGLang: `extra_keys`, `group_idx`, the KV
/// cache spec; SGLang arrays also `lora_name`), with `unknown_events` 0 and extra-key
/// integers msgpack cannot hold (outside `i64` and `u64`) as nil.
pub fn representable(batch: &EventBatch, format: EngineFormat) -> EventBatch {
    let events = batch
        .events
        .iter()
        .map(|event| match event {
            EngineEvent::Stored(stored) => representable_stored(stored, format).into(),
            EngineEvent::Removed(removed) => EngineEvent::Removed(BlockRemoved {
                group_idx: if format.is_vllm() { removed.group_idx } else { None },
                ..removed.clone()
            }),
            EngineEvent::AllCleared => EngineEvent::AllCleared,
        })
        .collect();
    EventBatch { ts: batch.ts, events, dp_rank: batch.dp_rank, unknown_events: 0 }
}

fn representable_stored(stored: &BlockStored, format: EngineFormat) -> BlockStored {
    let mut kept = stored.clone();
    if format.is_vllm() {
        kept.cache_salt = None;
        if let Some(per_block) = &mut kept.extra_keys {
            per_block.iter_mut().flatten().flatten().for_each(nil_unencodable_ints);
        }
    } else {
        kept.extra_keys = None;
        kept.group_idx = None;
        kept.kv_cache_spec_kind = None;
        kept.sliding_window = None;
        if format == EngineFormat::SglangArray {
            kept.lora_name = None;
        }
    }
    kept
}

fn nil_unencodable_ints(value: &mut KeyValue) {
    match value {
        KeyValue::Int(int) if i64::try_from(*int).is_err() && u64::try_from(*int).is_err() => *value = KeyValue::Nil,
        KeyValue::Array(items) => items.iter_mut().for_each(nil_unencodable_ints),
        _ => {}
    }
}

/// Unwraps the result of a write into a [`ByteBuf`], which cannot fail.
trait Written<T> {
    fn written(self) -> T;
}

impl<T> Written<T> for Result<T, Infallible> {
    fn written(self) -> T {
        match self {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }
}

impl<T> Written<T> for Result<T, ValueWriteError<Infallible>> {
    fn written(self) -> T {
        match self {
            Ok(value) => value,
            Err(ValueWriteError::InvalidMarkerWrite(never) | ValueWriteError::InvalidDataWrite(never)) => {
                match never {}
            }
        }
    }
}

/// A container length or string size as msgpack's `u32` (anything larger cannot be
/// encoded; no decoded value comes near it).
fn len32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// The payload being written.
struct Writer {
    buf: ByteBuf,
    /// SGLang's hashes are `i64` on the wire, vLLM's `u64`.
    signed_hashes: bool,
}

impl Writer {
    fn array(&mut self, len: usize) {
        encode::write_array_len(&mut self.buf, len32(len)).written();
    }

    fn map(&mut self, len: usize) {
        encode::write_map_len(&mut self.buf, len32(len)).written();
    }

    /// A `map16` header whatever the length (vLLM's `BlockStored`).
    fn map16(&mut self, len: u16) {
        self.buf.write_u8(Marker::Map16.to_u8()).written();
        self.buf.write_bytes(&len.to_be_bytes()).written();
    }

    fn nil(&mut self) {
        encode::write_nil(&mut self.buf).written();
    }

    fn uint(&mut self, value: u64) {
        encode::write_uint(&mut self.buf, value).written();
    }

    fn sint(&mut self, value: i64) {
        encode::write_sint(&mut self.buf, value).written();
    }

    fn str(&mut self, value: &str) {
        encode::write_str_len(&mut self.buf, len32(value.len())).written();
        self.buf.write_bytes(value.as_bytes()).written();
    }

    fn opt_str(&mut self, value: Option<&str>) {
        match value {
            Some(value) => self.str(value),
            None => self.nil(),
        }
    }

    fn opt_sint(&mut self, value: Option<i64>) {
        match value {
            Some(value) => self.sint(value),
            None => self.nil(),
        }
    }

    fn opt_uint(&mut self, value: Option<u64>) {
        match value {
            Some(value) => self.uint(value),
            None => self.nil(),
        }
    }

    fn medium(&mut self, medium: Option<Medium>) {
        self.opt_str(medium.map(Medium::as_str));
    }

    fn hash(&mut self, hash: u64) {
        if self.signed_hashes {
            // Two's complement, as SGLang sends its hashes.
            self.sint(hash as i64);
        } else {
            self.uint(hash);
        }
    }

    fn opt_hash(&mut self, hash: Option<u64>) {
        match hash {
            Some(hash) => self.hash(hash),
            None => self.nil(),
        }
    }

    fn hashes(&mut self, hashes: &[u64]) {
        self.array(hashes.len());
        for &hash in hashes {
            self.hash(hash);
        }
    }

    fn tokens(&mut self, tokens: &[u32]) {
        self.array(tokens.len());
        for &token in tokens {
            self.uint(u64::from(token));
        }
    }

    fn key_value(&mut self, value: &KeyValue) {
        match value {
            KeyValue::Nil => self.nil(),
            KeyValue::Bool(flag) => encode::write_bool(&mut self.buf, *flag).written(),
            KeyValue::Int(int) => {
                if let Ok(signed) = i64::try_from(*int) {
                    self.sint(signed);
                } else if let Ok(unsigned) = u64::try_from(*int) {
                    self.uint(unsigned);
                } else {
                    // No msgpack integer holds it.
                    self.nil();
                }
            }
            KeyValue::Float(float) => encode::write_f64(&mut self.buf, *float).written(),
            KeyValue::Str(text) => self.str(text),
            KeyValue::Bin(bytes) => {
                encode::write_bin_len(&mut self.buf, len32(bytes.len())).written();
                self.buf.write_bytes(bytes).written();
            }
            KeyValue::Array(items) => {
                self.array(items.len());
                for item in items {
                    self.key_value(item);
                }
            }
        }
    }

    fn extra_keys(&mut self, extra_keys: &Option<Vec<Option<Vec<KeyValue>>>>) {
        let Some(per_block) = extra_keys else { return self.nil() };
        self.array(per_block.len());
        for entry in per_block {
            match entry {
                Some(keys) => {
                    self.array(keys.len());
                    for key in keys {
                        self.key_value(key);
                    }
                }
                None => self.nil(),
            }
        }
    }

    /// The fields every format writes first, after the class name.
    fn stored_head(&mut self, stored: &BlockStored, named: bool) {
        if named {
            self.str("block_hashes");
        }
        self.hashes(&stored.block_hashes);
        if named {
            self.str("parent_block_hash");
        }
        self.opt_hash(stored.parent);
        if named {
            self.str("token_ids");
        }
        self.tokens(&stored.token_ids);
        if named {
            self.str("block_size");
        }
        self.uint(u64::from(stored.block_size));
        if named {
            self.str("lora_id");
        }
        self.opt_sint(stored.lora_id);
    }

    fn vllm_map_event(&mut self, event: &EngineEvent) {
        match event {
            EngineEvent::Stored(stored) => {
                let optional = [
                    stored.extra_keys.is_some(),
                    stored.group_idx.is_some(),
                    stored.kv_cache_spec_kind.is_some(),
                    stored.sliding_window.is_some(),
                ];
                self.map16(8 + optional.iter().filter(|&&present| present).count() as u16);
                self.str("type");
                self.str("BlockStored");
                self.stored_head(stored, true);
                self.str("medium");
                self.medium(stored.medium);
                self.str("lora_name");
                self.opt_str(stored.lora_name.as_deref());
                if stored.extra_keys.is_some() {
                    self.str("extra_keys");
                    self.extra_keys(&stored.extra_keys);
                }
                if let Some(group_idx) = stored.group_idx {
                    self.str("group_idx");
                    self.uint(u64::from(group_idx));
                }
                if let Some(kind) = &stored.kv_cache_spec_kind {
                    self.str("kv_cache_spec_kind");
                    self.str(kind);
                }
                if let Some(window) = stored.sliding_window {
                    self.str("kv_cache_spec_sliding_window");
                    self.uint(window);
                }
            }
            EngineEvent::Removed(removed) => {
                self.map(3 + usize::from(removed.group_idx.is_some()));
                self.str("type");
                self.str("BlockRemoved");
                self.str("block_hashes");
                self.hashes(&removed.block_hashes);
                self.str("medium");
                self.medium(removed.medium);
                if let Some(group_idx) = removed.group_idx {
                    self.str("group_idx");
                    self.uint(u64::from(group_idx));
                }
            }
            EngineEvent::AllCleared => self.cleared_map(),
        }
    }

    fn vllm_array_event(&mut self, event: &EngineEvent) {
        match event {
            EngineEvent::Stored(stored) => {
                self.array(12);
                self.str("BlockStored");
                self.stored_head(stored, false);
                self.medium(stored.medium);
                self.opt_str(stored.lora_name.as_deref());
                self.extra_keys(&stored.extra_keys);
                self.opt_uint(stored.group_idx.map(u64::from));
                self.opt_str(stored.kv_cache_spec_kind.as_deref());
                self.opt_uint(stored.sliding_window);
            }
            EngineEvent::Removed(removed) => {
                self.array(4);
                self.str("BlockRemoved");
                self.hashes(&removed.block_hashes);
                self.medium(removed.medium);
                self.opt_uint(removed.group_idx.map(u64::from));
            }
            EngineEvent::AllCleared => self.cleared_array(),
        }
    }

    fn sglang_map_event(&mut self, event: &EngineEvent) {
        match event {
            EngineEvent::Stored(stored) => {
                let optional = [stored.medium.is_some(), stored.cache_salt.is_some(), stored.lora_name.is_some()];
                self.map(6 + optional.iter().filter(|&&present| present).count());
                self.str("type");
                self.str("BlockStored");
                self.stored_head(stored, true);
                if let Some(medium) = stored.medium {
                    self.str("medium");
                    self.str(medium.as_str());
                }
                if let Some(salt) = &stored.cache_salt {
                    self.str("cache_salt");
                    self.str(salt);
                }
                if let Some(lora_name) = &stored.lora_name {
                    self.str("lora_name");
                    self.str(lora_name);
                }
            }
            EngineEvent::Removed(removed) => {
                self.map(2 + usize::from(removed.medium.is_some()));
                self.str("type");
                self.str("BlockRemoved");
                self.str("block_hashes");
                self.hashes(&removed.block_hashes);
                if let Some(medium) = removed.medium {
                    self.str("medium");
                    self.str(medium.as_str());
                }
            }
            EngineEvent::AllCleared => self.cleared_map(),
        }
    }

    fn sglang_array_event(&mut self, event: &EngineEvent) {
        match event {
            EngineEvent::Stored(stored) => {
                self.array(7 + usize::from(stored.cache_salt.is_some()));
                self.str("BlockStored");
                self.stored_head(stored, false);
                self.medium(stored.medium);
                if let Some(salt) = &stored.cache_salt {
                    // SGLang's `metadata`.
                    self.map(1);
                    self.str("cache_salt");
                    self.str(salt);
                }
            }
            EngineEvent::Removed(removed) => {
                self.array(3);
                self.str("BlockRemoved");
                self.hashes(&removed.block_hashes);
                self.medium(removed.medium);
            }
            EngineEvent::AllCleared => self.cleared_array(),
        }
    }

    fn cleared_map(&mut self) {
        self.map(1);
        self.str("type");
        self.str("AllBlocksCleared");
    }

    fn cleared_array(&mut self) {
        self.array(1);
        self.str("AllBlocksCleared");
    }
}
