//! The engines' KV-event messages as typed values: what [`super::decode`] produces from
//! the msgpack bytes vLLM and SGLang publish, and what [`super::encode`] writes back.
//!
//! Values are normalised as they are decoded: block hashes (unsigned, signed or bytes on
//! the wire) are `u64`; `data_parallel_rank` / `attn_dp_rank` are one field; SGLang's
//! `cache_salt` (a field, or `metadata.cache_salt` in older releases) is `cache_salt`.
//! Fields an engine leaves out are `None`; unknown fields and keys are not kept.

use crate::hashing::KeyValue;

/// One message of an engine's PUB socket: `[topic, seq, payload]`.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineMessage {
    pub topic: Vec<u8>,
    /// The publisher's batch counter (8 bytes big-endian on the wire), from 0 per process.
    pub seq: u64,
    pub batch: EventBatch,
}

/// The payload: vLLM's and SGLang's `EventBatch`.
#[derive(Clone, Debug, PartialEq)]
pub struct EventBatch {
    pub ts: f64,
    pub events: Vec<EngineEvent>,
    /// `data_parallel_rank` (vLLM) or `attn_dp_rank` (SGLang); `None` when absent or nil.
    pub dp_rank: Option<u32>,
    /// Events of a type this decoder does not know: skipped, counted here.
    pub unknown_events: u32,
}

/// One KV-cache event, tagged by the engine's class name. `BlockStored` is boxed: it is
/// five times the size of a `BlockRemoved`, and vLLM sends a removal per evicted block,
/// so an unboxed enum would copy a stored event's size for every one of them.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    Stored(Box<BlockStored>),
    Removed(BlockRemoved),
    AllCleared,
}

impl From<BlockStored> for EngineEvent {
    fn from(stored: BlockStored) -> Self {
        EngineEvent::Stored(Box::new(stored))
    }
}

/// Where the engine says the blocks live (`medium`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Medium {
    /// `GPU`.
    Gpu,
    /// `CPU_PINNED` (SGLang's host cache).
    CpuPinned,
    /// `CPU` (vLLM's CPU offloading).
    Cpu,
    /// `DISK` (SGLang).
    Disk,
    /// `STORAGE` (vLLM).
    Storage,
    /// `EXTERNAL` (SGLang: a remote store).
    External,
    /// Any other string.
    Other,
}

impl Medium {
    /// The medium a string names (exact, upper case, as the engines send it).
    pub fn parse(name: &str) -> Medium {
        Medium::known(name.as_bytes()).unwrap_or(Medium::Other)
    }

    /// The medium of one of the names the engines send, from its bytes; `None` for any
    /// other name.
    pub fn known(name: &[u8]) -> Option<Medium> {
        match name {
            b"GPU" => Some(Medium::Gpu),
            b"CPU_PINNED" => Some(Medium::CpuPinned),
            b"CPU" => Some(Medium::Cpu),
            b"DISK" => Some(Medium::Disk),
            b"STORAGE" => Some(Medium::Storage),
            b"EXTERNAL" => Some(Medium::External),
            _ => None,
        }
    }

    /// The string the engines send for this medium (`Other` has none; "OTHER").
    pub fn as_str(self) -> &'static str {
        match self {
            Medium::Gpu => "GPU",
            Medium::CpuPinned => "CPU_PINNED",
            Medium::Cpu => "CPU",
            Medium::Disk => "DISK",
            Medium::Storage => "STORAGE",
            Medium::External => "EXTERNAL",
            Medium::Other => "OTHER",
        }
    }
}

/// `BlockStored`: `block_hashes.len()` blocks stored as a chain, the first under
/// `parent` (root when `None`); block `i`'s tokens are
/// `token_ids[i * block_size..(i + 1) * block_size]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BlockStored {
    pub block_hashes: Vec<u64>,
    pub parent: Option<u64>,
    pub token_ids: Vec<u32>,
    pub block_size: u32,
    /// Deprecated by vLLM in favour of `lora_name`.
    pub lora_id: Option<i64>,
    /// `None` when absent or nil.
    pub medium: Option<Medium>,
    pub lora_name: Option<String>,
    /// Per block (vLLM): `None` for a block with no extra keys, else its keys in order.
    /// `None` as a whole when the event has no `extra_keys` field (or it is nil).
    pub extra_keys: Option<Vec<Option<Vec<KeyValue>>>>,
    /// The KV-cache group of a hybrid model (vLLM).
    pub group_idx: Option<u32>,
    /// `kv_cache_spec_kind` (vLLM), e.g. `full_attention` or `sliding_window`.
    pub kv_cache_spec_kind: Option<String>,
    /// `kv_cache_spec_sliding_window` (vLLM).
    pub sliding_window: Option<u64>,
    /// SGLang's cache salt (`cache_salt`, or `metadata.cache_salt` in 0.5.19).
    pub cache_salt: Option<String>,
}

/// `BlockRemoved`: the blocks with these hashes were evicted from `medium`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BlockRemoved {
    pub block_hashes: Vec<u64>,
    pub medium: Option<Medium>,
    pub group_idx: Option<u32>,
}

impl EngineEvent {
    /// Block hashes the event carries (the unit of "block events").
    pub fn block_count(&self) -> usize {
        match self {
            EngineEvent::Stored(s) => s.block_hashes.len(),
            EngineEvent::Removed(r) => r.block_hashes.len(),
            EngineEvent::AllCleared => 0,
        }
    }
}

impl EventBatch {
    /// Block hashes over all the batch's events.
    pub fn block_count(&self) -> usize {
        self.events.iter().map(EngineEvent::block_count).sum()
    }
}
