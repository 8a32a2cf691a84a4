//! The event layer of the decoder: an `EventBatch` and its events, in every shape vLLM and
//! SGLang have published, read from a [`Reader`] positioned at the payload's first byte.
//!
//! Batch: an array `[ts, events, dp_rank?, ...]` (at least two elements; the rank is
//! optional, later elements are skipped) or a map with keys `ts` (required), `events`
//! (required), `data_parallel_rank` / `attn_dp_rank` (nil or an int; unknown keys skipped).
//! `ts` is any number; `dp_rank` an int in `0..=u32::MAX` or nil.
//!
//! Event, by its first byte:
//! - an array: element 0 is the class name, then the fields by position. `BlockStored`
//!   needs positions 1-4 (`block_hashes`, `parent_block_hash`, `token_ids`,
//!   `block_size`); 5 `lora_id`, 6 `medium`, 7 `lora_name`, 8 `extra_keys`, 9 `group_idx`,
//!   10 `kv_cache_spec_kind`, 11 `kv_cache_spec_sliding_window` are read when present,
//!   later ones skipped. Position 7 is the one ambiguity: vLLM puts `lora_name` (str or
//!   nil) there, SGLang 0.5.19 its `metadata` map `{cache_salt}`: a map is read as SGLang
//!   metadata, and then the elements after it (SGLang defines none) are skipped.
//!   `BlockRemoved` needs position 1 (`block_hashes`), reads 2 `medium`, 3 `group_idx`.
//! - a map: the class name is the value of key `type`. Engines write it first, which is
//!   the fast path; otherwise the map is scanned once for `type`, then read again from its
//!   start. Fields are matched by name in any order; absent ones keep their default,
//!   unknown ones (SGLang's `session_id`, anything newer) are skipped. `BlockStored` needs
//!   `block_hashes`, `token_ids` and `block_size`; `BlockRemoved` needs `block_hashes`.
//!
//! An event with an unknown class name is skipped whole and counted; an event that is
//! neither an array nor a map, or a class name that is not a string, is a `shape` error.
//! `BlockStored` must carry `block_hashes.len() * block_size` token ids (`block_size`).

use rmp::Marker;

use super::msgpack::{IntRead, Kind, Reader};
use super::DecodeError;
use crate::engine_events::message::{BlockRemoved, BlockStored, EngineEvent, EventBatch, Medium};
use crate::hashing::KeyValue;

/// Encoded size of the shortest event that becomes an [`EngineEvent`]:
/// `["AllBlocksCleared"]` (array header, str header, 16 bytes). Bounds the events `Vec`
/// reserved up front, whose elements are much larger than their encoding.
const MIN_EVENT_BYTES: usize = 18;

/// Array positions of `BlockStored`'s fields (0 is the class name).
mod stored_at {
    pub const REQUIRED: usize = 5;
    pub const LORA_ID: usize = 5;
    pub const MEDIUM: usize = 6;
    pub const LORA_NAME_OR_METADATA: usize = 7;
    pub const EXTRA_KEYS: usize = 8;
    pub const GROUP_IDX: usize = 9;
    pub const KV_CACHE_SPEC_KIND: usize = 10;
    pub const SLIDING_WINDOW: usize = 11;
}

/// Array positions of `BlockRemoved`'s fields.
mod removed_at {
    pub const REQUIRED: usize = 2;
    pub const MEDIUM: usize = 2;
    pub const GROUP_IDX: usize = 3;
}

/// An event's class name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventClass {
    Stored,
    Removed,
    AllCleared,
    Unknown,
}

impl EventClass {
    fn of(name: &[u8]) -> EventClass {
        match name {
            b"BlockStored" => EventClass::Stored,
            b"BlockRemoved" => EventClass::Removed,
            b"AllBlocksCleared" => EventClass::AllCleared,
            _ => EventClass::Unknown,
        }
    }
}

/// Reads a whole `EventBatch`.
pub(super) fn read_batch(reader: &mut Reader<'_>) -> Result<EventBatch, DecodeError> {
    let at = reader.offset();
    let mut batch = EventBatch { ts: 0.0, events: Vec::new(), dp_rank: None, unknown_events: 0 };
    match reader.peek()? {
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
            let len = reader.array_len(Kind::Shape, "batch")?;
            if len < 2 {
                return Err(Kind::Shape.at(at, "batch array shorter than [ts, events]"));
            }
            batch.ts = reader.number("ts is not a number")?;
            read_events(reader, &mut batch)?;
            if len > 2 {
                batch.dp_rank = read_dp_rank(reader)?;
            }
            reader.skip_values(len.saturating_sub(3))?;
        }
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
            let pairs = reader.map_len()?;
            let (mut has_ts, mut has_events) = (false, false);
            for _ in 0..pairs {
                match reader.map_key()? {
                    Some(b"ts") => {
                        batch.ts = reader.number("ts is not a number")?;
                        has_ts = true;
                    }
                    Some(b"events") => {
                        batch.events.clear();
                        batch.unknown_events = 0;
                        read_events(reader, &mut batch)?;
                        has_events = true;
                    }
                    Some(b"data_parallel_rank" | b"attn_dp_rank") => batch.dp_rank = read_dp_rank(reader)?,
                    _ => reader.skip_value()?,
                }
            }
            if !has_ts {
                return Err(Kind::Shape.at(at, "batch map without ts"));
            }
            if !has_events {
                return Err(Kind::Shape.at(at, "batch map without events"));
            }
        }
        Marker::Reserved => return Err(Kind::Msgpack.at(at, "reserved marker 0xc1")),
        _ => return Err(Kind::Shape.at(at, "batch is neither an array nor a map")),
    }
    Ok(batch)
}

fn read_dp_rank(reader: &mut Reader<'_>) -> Result<Option<u32>, DecodeError> {
    if reader.eat_nil() {
        return Ok(None);
    }
    let at = reader.offset();
    match reader.int_u32()? {
        IntRead::Value(rank) => Ok(Some(rank)),
        IntRead::OutOfRange => Err(Kind::Rank.at(at, "dp_rank outside 0..=u32::MAX")),
        IntRead::NotInt => Err(Kind::Shape.at(at, "dp_rank is neither an int nor nil")),
    }
}

/// Reads the events array into `batch` (known events pushed, unknown ones counted).
fn read_events(reader: &mut Reader<'_>, batch: &mut EventBatch) -> Result<(), DecodeError> {
    let count = reader.array_len(Kind::Shape, "events is not an array")?;
    batch.events.reserve(count.min(reader.remaining() / MIN_EVENT_BYTES));
    for _ in 0..count {
        let at = reader.offset();
        let event = match reader.peek()? {
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => read_array_event(reader)?,
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => read_map_event(reader)?,
            Marker::Reserved => return Err(Kind::Msgpack.at(at, "reserved marker 0xc1")),
            _ => return Err(Kind::Shape.at(at, "event is neither an array nor a map")),
        };
        match event {
            Some(event) => batch.events.push(event),
            None => batch.unknown_events = batch.unknown_events.saturating_add(1),
        }
    }
    Ok(())
}

/// A positional event; `None` for an unknown class (skipped).
fn read_array_event(reader: &mut Reader<'_>) -> Result<Option<EngineEvent>, DecodeError> {
    let at = reader.offset();
    let len = reader.array_len(Kind::Shape, "event")?;
    if len == 0 {
        return Err(Kind::Shape.at(at, "empty event array"));
    }
    let class = EventClass::of(reader.str_bytes(Kind::Shape, "event class name is not a string")?);
    match class {
        EventClass::Stored => read_stored_array(reader, len, at).map(|stored| Some(stored.into())),
        EventClass::Removed => read_removed_array(reader, len, at).map(|removed| Some(EngineEvent::Removed(removed))),
        EventClass::AllCleared => reader.skip_values(len - 1).map(|()| Some(EngineEvent::AllCleared)),
        EventClass::Unknown => reader.skip_values(len - 1).map(|()| None),
    }
}

/// `BlockStored` by position; the class name (position 0) is read, `len` counts it.
fn read_stored_array(reader: &mut Reader<'_>, len: usize, at: usize) -> Result<BlockStored, DecodeError> {
    if len < stored_at::REQUIRED {
        return Err(Kind::Shape.at(at, "BlockStored array without its required fields"));
    }
    let mut stored = BlockStored {
        block_hashes: reader.hashes()?,
        parent: reader.opt_hash()?,
        token_ids: reader.tokens()?,
        block_size: read_block_size(reader)?,
        ..BlockStored::default()
    };
    for position in stored_at::REQUIRED..len {
        match position {
            stored_at::LORA_ID => stored.lora_id = read_lora_id(reader)?,
            stored_at::MEDIUM => stored.medium = read_medium(reader)?,
            stored_at::LORA_NAME_OR_METADATA => {
                if let Marker::FixMap(_) | Marker::Map16 | Marker::Map32 = reader.peek()? {
                    // SGLang 0.5.19's `metadata`; it defines nothing after it.
                    stored.cache_salt = read_sglang_metadata(reader)?;
                    reader.skip_values(len - position - 1)?;
                    break;
                }
                stored.lora_name = read_opt_string(reader, "lora_name is neither a string, nil nor a map")?;
            }
            stored_at::EXTRA_KEYS => stored.extra_keys = read_extra_keys(reader)?,
            stored_at::GROUP_IDX => stored.group_idx = read_group_idx(reader)?,
            stored_at::KV_CACHE_SPEC_KIND => {
                stored.kv_cache_spec_kind = read_opt_string(reader, "kv_cache_spec_kind is not a string")?;
            }
            stored_at::SLIDING_WINDOW => stored.sliding_window = read_sliding_window(reader)?,
            _ => {
                reader.skip_values(len - position)?;
                break;
            }
        }
    }
    check_token_count(&stored, at)?;
    Ok(stored)
}

/// `BlockRemoved` by position; `len` counts the class name.
fn read_removed_array(reader: &mut Reader<'_>, len: usize, at: usize) -> Result<BlockRemoved, DecodeError> {
    if len < removed_at::REQUIRED {
        return Err(Kind::Shape.at(at, "BlockRemoved array without block_hashes"));
    }
    let mut removed = BlockRemoved { block_hashes: reader.hashes()?, ..BlockRemoved::default() };
    for position in removed_at::REQUIRED..len {
        match position {
            removed_at::MEDIUM => removed.medium = read_medium(reader)?,
            removed_at::GROUP_IDX => removed.group_idx = read_group_idx(reader)?,
            _ => {
                reader.skip_values(len - position)?;
                break;
            }
        }
    }
    Ok(removed)
}

/// A map event; `None` for an unknown class (skipped).
fn read_map_event(reader: &mut Reader<'_>) -> Result<Option<EngineEvent>, DecodeError> {
    let at = reader.offset();
    let pairs = reader.map_len()?;
    if pairs == 0 {
        return Err(Kind::Shape.at(at, "event map without type"));
    }
    let fields_start = *reader;
    let (class, pairs_left) = match reader.map_key()? {
        Some(b"type") => (EventClass::of(reader.str_bytes(Kind::Shape, "event type is not a string")?), pairs - 1),
        _ => {
            // `type` is not first: find it, then read every field from the start.
            *reader = fields_start;
            let mut scan = fields_start;
            (find_type(&mut scan, pairs, at)?, pairs)
        }
    };
    match class {
        EventClass::Stored => read_stored_map(reader, pairs_left, at).map(|stored| Some(stored.into())),
        EventClass::Removed => {
            read_removed_map(reader, pairs_left, at).map(|removed| Some(EngineEvent::Removed(removed)))
        }
        EventClass::AllCleared => {
            reader.skip_values(pairs_left.saturating_mul(2)).map(|()| Some(EngineEvent::AllCleared))
        }
        EventClass::Unknown => reader.skip_values(pairs_left.saturating_mul(2)).map(|()| None),
    }
}

/// The class named by the first `type` key among `pairs` map entries.
fn find_type(reader: &mut Reader<'_>, pairs: usize, at: usize) -> Result<EventClass, DecodeError> {
    for _ in 0..pairs {
        match reader.map_key()? {
            Some(b"type") => {
                return Ok(EventClass::of(reader.str_bytes(Kind::Shape, "event type is not a string")?));
            }
            _ => reader.skip_value()?,
        }
    }
    Err(Kind::Shape.at(at, "event map without type"))
}

/// `BlockStored` fields by name (`type`, seen already, is skipped if met again).
fn read_stored_map(reader: &mut Reader<'_>, pairs: usize, at: usize) -> Result<BlockStored, DecodeError> {
    let mut stored = BlockStored::default();
    let (mut block_hashes, mut token_ids, mut block_size) = (None, None, None);
    for _ in 0..pairs {
        match reader.map_key()? {
            Some(b"block_hashes") => block_hashes = Some(reader.hashes()?),
            Some(b"parent_block_hash") => stored.parent = reader.opt_hash()?,
            Some(b"token_ids") => token_ids = Some(reader.tokens()?),
            Some(b"block_size") => block_size = Some(read_block_size(reader)?),
            Some(b"lora_id") => stored.lora_id = read_lora_id(reader)?,
            Some(b"medium") => stored.medium = read_medium(reader)?,
            Some(b"lora_name") => stored.lora_name = read_opt_string(reader, "lora_name is not a string")?,
            Some(b"extra_keys") => stored.extra_keys = read_extra_keys(reader)?,
            Some(b"group_idx") => stored.group_idx = read_group_idx(reader)?,
            Some(b"kv_cache_spec_kind") => {
                stored.kv_cache_spec_kind = read_opt_string(reader, "kv_cache_spec_kind is not a string")?;
            }
            Some(b"kv_cache_spec_sliding_window") => stored.sliding_window = read_sliding_window(reader)?,
            Some(b"cache_salt") => stored.cache_salt = read_opt_string(reader, "cache_salt is not a string")?,
            _ => reader.skip_value()?,
        }
    }
    stored.block_hashes = block_hashes.ok_or_else(|| Kind::Shape.at(at, "BlockStored map without block_hashes"))?;
    stored.token_ids = token_ids.ok_or_else(|| Kind::Shape.at(at, "BlockStored map without token_ids"))?;
    stored.block_size = block_size.ok_or_else(|| Kind::Shape.at(at, "BlockStored map without block_size"))?;
    check_token_count(&stored, at)?;
    Ok(stored)
}

/// `BlockRemoved` fields by name.
fn read_removed_map(reader: &mut Reader<'_>, pairs: usize, at: usize) -> Result<BlockRemoved, DecodeError> {
    let mut removed = BlockRemoved::default();
    let mut block_hashes = None;
    for _ in 0..pairs {
        match reader.map_key()? {
            Some(b"block_hashes") => block_hashes = Some(reader.hashes()?),
            Some(b"medium") => removed.medium = read_medium(reader)?,
            Some(b"group_idx") => removed.group_idx = read_group_idx(reader)?,
            _ => reader.skip_value()?,
        }
    }
    removed.block_hashes = block_hashes.ok_or_else(|| Kind::Shape.at(at, "BlockRemoved map without block_hashes"))?;
    Ok(removed)
}

/// `block_size`: an int in `1..=u32::MAX`.
fn read_block_size(reader: &mut Reader<'_>) -> Result<u32, DecodeError> {
    let at = reader.offset();
    match reader.int_u32()? {
        IntRead::Value(0) => Err(Kind::BlockSize.at(at, "block_size is 0")),
        IntRead::Value(size) => Ok(size),
        IntRead::OutOfRange => Err(Kind::BlockSize.at(at, "block_size outside 1..=u32::MAX")),
        IntRead::NotInt => Err(Kind::BlockSize.at(at, "block_size is not an int")),
    }
}

/// `token_ids` covers every block: `block_hashes.len() * block_size` ids.
fn check_token_count(stored: &BlockStored, at: usize) -> Result<(), DecodeError> {
    match stored.block_hashes.len().checked_mul(stored.block_size as usize) {
        Some(expected) if expected == stored.token_ids.len() => Ok(()),
        _ => Err(Kind::BlockSize.at(at, "token_ids is not block_hashes.len() * block_size long")),
    }
}

fn read_lora_id(reader: &mut Reader<'_>) -> Result<Option<i64>, DecodeError> {
    reader.opt_int(Reader::int_i64, Kind::Shape, "lora_id is neither an i64 nor nil")
}

fn read_group_idx(reader: &mut Reader<'_>) -> Result<Option<u32>, DecodeError> {
    reader.opt_int(Reader::int_u32, Kind::Shape, "group_idx is neither a u32 nor nil")
}

fn read_sliding_window(reader: &mut Reader<'_>) -> Result<Option<u64>, DecodeError> {
    reader.opt_int(Reader::int_u64, Kind::Shape, "kv_cache_spec_sliding_window is neither a u64 nor nil")
}

/// `medium`: a known name is matched on its bytes (every removal carries one); any other
/// string must still be UTF-8, and is `Other`.
fn read_medium(reader: &mut Reader<'_>) -> Result<Option<Medium>, DecodeError> {
    if reader.eat_nil() {
        return Ok(None);
    }
    let at = reader.offset();
    let name = reader.str_bytes(Kind::Shape, "medium is neither a string nor nil")?;
    match Medium::known(name) {
        Some(medium) => Ok(Some(medium)),
        None if std::str::from_utf8(name).is_ok() => Ok(Some(Medium::Other)),
        None => Err(Kind::Shape.at(at, "string is not UTF-8")),
    }
}

fn read_opt_string(reader: &mut Reader<'_>, what: &'static str) -> Result<Option<String>, DecodeError> {
    Ok(reader.opt_str(what)?.map(str::to_owned))
}

/// SGLang 0.5.19's `metadata` map: its `cache_salt` (other keys skipped).
fn read_sglang_metadata(reader: &mut Reader<'_>) -> Result<Option<String>, DecodeError> {
    let pairs = reader.map_len()?;
    let mut cache_salt = None;
    for _ in 0..pairs {
        match reader.map_key()? {
            Some(b"cache_salt") => cache_salt = read_opt_string(reader, "cache_salt is not a string")?,
            _ => reader.skip_value()?,
        }
    }
    Ok(cache_salt)
}

/// `extra_keys`: nil, or one entry per block, each nil or an array of key values.
fn read_extra_keys(reader: &mut Reader<'_>) -> Result<Option<Vec<Option<Vec<KeyValue>>>>, DecodeError> {
    if reader.eat_nil() {
        return Ok(None);
    }
    let blocks = reader.array_len(Kind::Shape, "extra_keys is neither an array nor nil")?;
    let mut per_block = Vec::with_capacity(blocks);
    for _ in 0..blocks {
        if reader.eat_nil() {
            per_block.push(None);
            continue;
        }
        let count = reader.array_len(Kind::Shape, "an extra_keys entry is neither an array nor nil")?;
        let mut keys = Vec::with_capacity(count);
        for _ in 0..count {
            // Inside two containers: the extra_keys list and the block's entry.
            keys.push(reader.key_value(2)?);
        }
        per_block.push(Some(keys));
    }
    Ok(Some(per_block))
}
