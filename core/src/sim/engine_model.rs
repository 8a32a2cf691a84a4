//! One simulated inference engine (a vLLM or SGLang server with `dp_size` data-parallel
//! ranks), as the HTTP engine simulator in `kvroute-net` drives it: which rank serves a
//! request, how many of its prompt tokens were cached, when its first and later output
//! tokens are due, and the KV events the rank publishes, in the engines' own event types.
//!
//! Shape: one [`RankCache`] per rank (the paged prefix cache, LRU eviction; see the module
//! doc of `sim`) plus, per rank, the time its prefill queue is busy until and its count of
//! requests in flight. The model is sans-IO: every call takes `now`, the time since the
//! engine started, from the caller's clock, and answers with times on that same clock.
//!
//! A request ([`EngineModel::admit`]):
//! 1. Rank: the one the request names (vLLM's `X-data-parallel-rank`, SGLang's
//!    `routed_dp_rank` / `data_parallel_rank`), checked against `dp_size`; without one, the
//!    engine's own balancer picks the rank with the fewest requests in flight (lowest rank
//!    on ties), as vLLM's internal DP load balancer does by queue length.
//! 2. Blocks: the full `block_size`-token blocks of the prompt, hashed with the router's
//!    block hasher in the request's LoRA namespace, chained into engine hashes
//!    ([`super::engine_hash`]). A trailing partial block is neither cached nor stored.
//! 3. Cache: the rank's [`RankCache::prefill`] reuses the cached prefix and stores the rest.
//!    Cached tokens are the cached prefix in tokens, at most `prompt - 1`, rounded down to
//!    whole blocks: like vLLM, an engine always computes at least the last prompt token.
//! 4. Timing: prefills on one rank run one after another (a rank's compute is the
//!    bottleneck, whatever its batching): a prefill starts at `max(now, busy_until)` and
//!    takes `prefill_overhead + uncached tokens x prefill_per_token`; the first output token
//!    is due when it ends, each next one `decode_per_token` later (decode runs batched, so
//!    requests in flight do not slow each other in this model).
//! 5. Events: the cache's `Removed` and `Stored` events become the engine's
//!    [`BlockRemoved`] and [`BlockStored`] (engine hashes, the parent's, the stored blocks'
//!    token ids, `block_size`, `lora_name`, medium GPU), in publish order, for the caller
//!    to send on that rank's stream as soon as the request is admitted (the engines publish
//!    a block once it is allocated and hashed, before its prefill finishes).
//!
//! Disaggregated serving: a prefill server admits as above; a decode server admits with
//! [`EngineModel::admit_transferred`] once the request's KV has arrived from the prefill
//! side: no cache lookup and no events (the prefill rank holds and publishes the
//! prompt's blocks), the whole prompt counts as cached, the first token is due one decode
//! step later.
//!
//! [`EngineModel::release`] ends a request (finished, failed or cancelled): the rank has
//! one request fewer in flight. Stats per rank: requests, prompt and cached tokens, blocks
//! held.

use std::time::Duration;

use super::engine_hash;
use super::rank_cache::RankCache;
use crate::engine_events::message::{BlockRemoved, BlockStored, EngineEvent, Medium};
use crate::event::KvEventData;
use crate::hashing::{BlockHasher, HashError};
use crate::ids::EngineHash;

/// How long the simulated GPU takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineTiming {
    /// Fixed cost of one prefill (scheduling, one forward pass).
    pub prefill_overhead: Duration,
    /// Cost of each prompt token not found in the cache.
    pub prefill_per_token: Duration,
    /// Time between two output tokens of one request.
    pub decode_per_token: Duration,
}

impl Default for EngineTiming {
    /// About an 8B model on one recent data-centre GPU: 20,000 prefill tokens/s, 10 ms
    /// between output tokens, 2 ms per prefill step.
    fn default() -> Self {
        EngineTiming {
            prefill_overhead: Duration::from_millis(2),
            prefill_per_token: Duration::from_micros(50),
            decode_per_token: Duration::from_millis(10),
        }
    }
}

/// The shape of one simulated engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineModelConfig {
    /// Data-parallel ranks (each with its own cache and prefill queue).
    pub dp_size: u32,
    /// Tokens per KV block (vLLM's `block_size`, SGLang's `page_size`).
    pub block_size: u32,
    /// Blocks each rank's cache holds.
    pub capacity_blocks: usize,
    /// Longest prompt accepted, in tokens.
    pub max_prompt_tokens: usize,
    pub timing: EngineTiming,
}

impl Default for EngineModelConfig {
    fn default() -> Self {
        EngineModelConfig {
            dp_size: 1,
            block_size: 16,
            capacity_blocks: 16_384,
            max_prompt_tokens: 131_072,
            timing: EngineTiming::default(),
        }
    }
}

/// Why a configuration or a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineModelError {
    /// `dp_size` was 0.
    NoRanks,
    /// `block_size` was 0.
    ZeroBlockSize,
    /// `capacity_blocks` was 0.
    NoCapacity,
    /// The request named a rank the engine does not have.
    RankOutOfRange { rank: u32, dp_size: u32 },
    /// The prompt had no tokens.
    EmptyPrompt,
    /// The prompt was longer than `max_prompt_tokens`.
    PromptTooLong { tokens: usize, max: usize },
}

impl std::fmt::Display for EngineModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineModelError::NoRanks => f.write_str("dp_size must be at least 1"),
            EngineModelError::ZeroBlockSize => f.write_str("block_size must be at least 1"),
            EngineModelError::NoCapacity => f.write_str("capacity_blocks must be at least 1"),
            EngineModelError::RankOutOfRange { rank, dp_size } => {
                write!(f, "data-parallel rank {rank} is out of range: this engine has ranks 0..{dp_size}")
            }
            EngineModelError::EmptyPrompt => f.write_str("the prompt has no tokens"),
            EngineModelError::PromptTooLong { tokens, max } => {
                write!(f, "the prompt has {tokens} tokens, more than this engine's limit of {max}")
            }
        }
    }
}

impl std::error::Error for EngineModelError {}

impl From<HashError> for EngineModelError {
    fn from(_: HashError) -> Self {
        EngineModelError::ZeroBlockSize
    }
}

/// What the engine does with one admitted request.
#[derive(Clone, Debug, PartialEq)]
pub struct Admission {
    /// The rank serving it.
    pub rank: u32,
    pub prompt_tokens: usize,
    /// Prompt tokens found in the rank's cache (not computed again).
    pub cached_tokens: usize,
    /// When its prefill starts (after the rank's earlier prefills).
    pub prefill_start: Duration,
    /// When its first output token is due (its prefill ends).
    pub first_token_at: Duration,
    /// Between later output tokens.
    pub decode_per_token: Duration,
    /// The rank's KV events for it, in publish order (may be empty).
    pub events: Vec<EngineEvent>,
}

impl Admission {
    /// When output token `index` (0 = the first) is due.
    pub fn token_due(&self, index: u32) -> Duration {
        self.first_token_at + self.decode_per_token * index
    }
}

/// Counters of one rank.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RankStats {
    pub requests: u64,
    pub in_flight: u32,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub blocks_held: usize,
}

#[derive(Clone, Debug)]
struct RankState {
    cache: RankCache,
    /// End of the last prefill queued on this rank.
    busy_until: Duration,
    stats: RankStats,
}

/// A simulated engine with `dp_size` ranks (see the module doc).
#[derive(Clone, Debug)]
pub struct EngineModel {
    config: EngineModelConfig,
    hasher: BlockHasher,
    ranks: Vec<RankState>,
}

impl EngineModel {
    pub fn new(config: EngineModelConfig) -> Result<EngineModel, EngineModelError> {
        if config.dp_size == 0 {
            return Err(EngineModelError::NoRanks);
        }
        if config.capacity_blocks == 0 {
            return Err(EngineModelError::NoCapacity);
        }
        let hasher = BlockHasher::new(config.block_size as usize)?;
        let rank = RankState {
            cache: RankCache::new(config.capacity_blocks),
            busy_until: Duration::ZERO,
            stats: RankStats::default(),
        };
        let ranks = vec![rank; config.dp_size as usize];
        Ok(EngineModel { config, hasher, ranks })
    }

    pub fn config(&self) -> &EngineModelConfig {
        &self.config
    }

    /// The rank the engine's own balancer would pick: fewest requests in flight, lowest
    /// rank on ties.
    pub fn least_loaded_rank(&self) -> u32 {
        let (rank, _) = self
            .ranks
            .iter()
            .enumerate()
            .min_by_key(|(index, state)| (state.stats.in_flight, *index))
            .unwrap_or((0, &self.ranks[0]));
        rank as u32
    }

    /// Admits one request at `now` on `rank` (or the least loaded one): see the module doc.
    pub fn admit(
        &mut self,
        now: Duration,
        rank: Option<u32>,
        tokens: &[u32],
        lora_name: Option<&str>,
    ) -> Result<Admission, EngineModelError> {
        if tokens.is_empty() {
            return Err(EngineModelError::EmptyPrompt);
        }
        if tokens.len() > self.config.max_prompt_tokens {
            return Err(EngineModelError::PromptTooLong { tokens: tokens.len(), max: self.config.max_prompt_tokens });
        }
        let dp_size = self.config.dp_size;
        let rank = match rank {
            Some(rank) if rank >= dp_size => return Err(EngineModelError::RankOutOfRange { rank, dp_size }),
            Some(rank) => rank,
            None => self.least_loaded_rank(),
        };
        let block_size = self.config.block_size as usize;
        let lora_name = lora_name.filter(|name| !name.is_empty());
        let chain = self.hasher.with_namespace(lora_name, None).hash_blocks(tokens);
        let state = &mut self.ranks[rank as usize];
        let outcome = state.cache.prefill(&chain);

        let cached_blocks = outcome.cached_blocks.min((tokens.len() - 1) / block_size);
        let cached_tokens = cached_blocks * block_size;
        let timing = self.config.timing;
        let uncached = u32::try_from(tokens.len() - cached_tokens).unwrap_or(u32::MAX);
        let prefill_start = now.max(state.busy_until);
        let first_token_at = prefill_start + timing.prefill_overhead + timing.prefill_per_token * uncached;
        state.busy_until = first_token_at;
        state.stats.requests += 1;
        state.stats.in_flight += 1;
        state.stats.prompt_tokens += tokens.len() as u64;
        state.stats.cached_tokens += cached_tokens as u64;
        state.stats.blocks_held = state.cache.len();

        let events = engine_events(&outcome.events, &chain, tokens, block_size, lora_name);
        Ok(Admission {
            rank,
            prompt_tokens: tokens.len(),
            cached_tokens,
            prefill_start,
            first_token_at,
            decode_per_token: timing.decode_per_token,
            events,
        })
    }

    /// Admits a decode-only request at `now` whose KV arrived from a prefill server (see
    /// the module doc) on `rank` (or the least loaded one).
    pub fn admit_transferred(
        &mut self,
        now: Duration,
        rank: Option<u32>,
        prompt_tokens: usize,
    ) -> Result<Admission, EngineModelError> {
        if prompt_tokens == 0 {
            return Err(EngineModelError::EmptyPrompt);
        }
        if prompt_tokens > self.config.max_prompt_tokens {
            return Err(EngineModelError::PromptTooLong { tokens: prompt_tokens, max: self.config.max_prompt_tokens });
        }
        let dp_size = self.config.dp_size;
        let rank = match rank {
            Some(rank) if rank >= dp_size => return Err(EngineModelError::RankOutOfRange { rank, dp_size }),
            Some(rank) => rank,
            None => self.least_loaded_rank(),
        };
        let state = &mut self.ranks[rank as usize];
        state.stats.requests += 1;
        state.stats.in_flight += 1;
        state.stats.prompt_tokens += prompt_tokens as u64;
        state.stats.cached_tokens += prompt_tokens as u64;
        let decode_per_token = self.config.timing.decode_per_token;
        Ok(Admission {
            rank,
            prompt_tokens,
            cached_tokens: prompt_tokens,
            prefill_start: now,
            first_token_at: now + decode_per_token,
            decode_per_token,
            events: Vec::new(),
        })
    }

    /// One request on `rank` ended (finished, failed or cancelled). A rank with none in
    /// flight is left at zero.
    pub fn release(&mut self, rank: u32) {
        if let Some(state) = self.ranks.get_mut(rank as usize) {
            state.stats.in_flight = state.stats.in_flight.saturating_sub(1);
        }
    }

    /// Every rank's counters, by rank.
    pub fn stats(&self) -> Vec<RankStats> {
        self.ranks.iter().map(|state| state.stats).collect()
    }

    /// Prompt tokens `rank` would find cached now (what `admit` would report), or `None`
    /// for a rank out of range.
    pub fn cached_tokens(&self, rank: u32, tokens: &[u32], lora_name: Option<&str>) -> Option<usize> {
        let held = self.held_prefix_blocks(rank, tokens, lora_name)?;
        let block_size = self.config.block_size as usize;
        Some(held.min(tokens.len().saturating_sub(1) / block_size) * block_size)
    }

    /// Leading full blocks of `tokens` (in the LoRA's namespace) that `rank`'s cache holds:
    /// what a router fed this rank's events should credit it with. `None` for a rank out
    /// of range.
    pub fn held_prefix_blocks(&self, rank: u32, tokens: &[u32], lora_name: Option<&str>) -> Option<usize> {
        let state = self.ranks.get(rank as usize)?;
        let chain = self.hasher.with_namespace(lora_name.filter(|name| !name.is_empty()), None).hash_blocks(tokens);
        Some(state.cache.cached_prefix(&chain))
    }
}

/// The cache's events for one prefill as the engine publishes them. A `Stored` run's
/// first block follows its parent in the request's chain (or starts it), which gives the
/// run's token ids.
fn engine_events(
    events: &[KvEventData],
    chain: &[crate::ids::BlockHash],
    tokens: &[u32],
    block_size: usize,
    lora_name: Option<&str>,
) -> Vec<EngineEvent> {
    let mut engine_hashes: Vec<EngineHash> = Vec::with_capacity(chain.len());
    let mut parent = None;
    for &content in chain {
        let hash = engine_hash(parent, content);
        engine_hashes.push(hash);
        parent = Some(hash);
    }
    let position = |hash: EngineHash| engine_hashes.iter().position(|&h| h == hash);
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        match event {
            KvEventData::Removed { blocks } => out.push(EngineEvent::Removed(BlockRemoved {
                block_hashes: blocks.iter().map(|hash| hash.0).collect(),
                medium: Some(Medium::Gpu),
                group_idx: None,
            })),
            KvEventData::Stored { parent, blocks } => {
                let start = parent.and_then(position).map_or(0, |index| index + 1);
                let end = (start + blocks.len()).min(chain.len());
                out.push(EngineEvent::from(BlockStored {
                    block_hashes: blocks.iter().map(|block| block.engine_hash.0).collect(),
                    parent: parent.map(|hash| hash.0),
                    token_ids: tokens[start * block_size..end * block_size].to_vec(),
                    block_size: block_size as u32,
                    medium: Some(Medium::Gpu),
                    lora_name: lora_name.map(str::to_owned),
                    ..BlockStored::default()
                }))
            }
            KvEventData::Cleared => out.push(EngineEvent::AllCleared),
        }
    }
    out
}

#[cfg(test)]
#[path = "engine_model_tests.rs"]
mod tests;
