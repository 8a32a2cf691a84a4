//! Engine-cache simulator: what a fleet of vLLM-like engines would hold in their paged KV
//! caches, and the KV events they would publish, when handed a stream of requests.
//!
//! Model (one [`RankCache`] per (worker, dp_rank); it matches vLLM's prefix cache and is
//! exactly consistent with the oracle in `crate::reference`):
//! - A request is a chain of block content hashes (full blocks only). Each block's identity
//!   is its [`engine_hash`], chained over the parent's engine hash, so a block's identity
//!   includes its whole prefix (vLLM's seeded SHA-256 plays this role in a real engine).
//! - The cache holds at most `capacity` blocks, keyed by engine hash. A request's blocks are
//!   referenced only during its prefill and become unreferenced right after (decode is not
//!   modelled); unreferenced blocks stay cached and are evicted in LRU order.
//! - [`RankCache::cached_prefix`]: the number of leading chain blocks all present.
//! - [`RankCache::prefill`], for a chain cut to its first `capacity` blocks (the rest is
//!   ignored, neither stored nor touched):
//!   1. every chain block already cached is referenced (taken off the LRU list): the cached
//!      prefix, and also a later block that survived while an earlier one was evicted (a
//!      "hole"; it is touched, not stored again);
//!   2. every other chain block is newly stored, in chain order; when the cache is full, the
//!      least-recently-used unreferenced block is evicted first (never one of this request);
//!   3. the request's blocks are released in reverse chain order onto the most-recently-used
//!      end, as vLLM frees a request's blocks: its tail is evicted before its head, and all
//!      of it after every block released earlier.
//! - Events of one prefill, in publish order: one [`KvEventData::Removed`] with every evicted
//!   engine hash in eviction order (omitted when nothing was evicted), then one
//!   [`KvEventData::Stored`] per maximal run of consecutive newly stored chain blocks, whose
//!   `parent` is the engine hash of the chain block just before the run (`None` at the
//!   chain's start). A parent is always a block of the request, so it is held when the
//!   event is applied, and a `Removed` never names a block the rank does not hold.
//! - Consequences: no event is an anomaly for the index (no unknown parent, unknown remove or
//!   duplicate store), and the blocks the index holds for a rank are exactly the cache's.
//!   Since a parent is always released after (more recently than) its children and a
//!   child is only referenced together with its parent, eviction takes leaves first and
//!   holes do not arise from prefills alone; the hole rule keeps the model exact anyway.
//! - Cost: every operation is O(blocks of the chain) amortised: a hash map from engine hash
//!   to a slab entry, plus an intrusive doubly-linked LRU list threaded through the slab.
//!
//! [`Fleet`] holds `workers x dp_size` rank caches, named `RankKey::new(w, r)`, and stamps
//! each rank's events with that rank and with event ids 1, 2, 3, ... per rank.
//!
//! [`EngineModel`] is one engine server (`dp_size` rank caches) as the HTTP engine
//! simulator runs it: rank choice, cached tokens, prefill queueing and decode timing on a
//! clock the caller hands in, and its events in the engines' own `BlockStored` /
//! `BlockRemoved` types.
//!
//! [`KvEventData::Removed`]: crate::event::KvEventData::Removed
//! [`KvEventData::Stored`]: crate::event::KvEventData::Stored

mod engine_model;
mod fleet;
mod rank_cache;

pub use engine_model::{Admission, EngineModel, EngineModelConfig, EngineModelError, EngineTiming, RankStats};
pub use fleet::{Fleet, FleetConfig, FleetPrefill};
pub use rank_cache::{PrefillOutcome, RankCache};

use crate::ids::{BlockHash, EngineHash};

/// Stands in for the parent of a chain's first block.
const ROOT_PARENT: u64 = 0x243f_6a88_85a3_08d3;

/// The engine's chained block hash (stands in for vLLM's seeded SHA-256): depends on the
/// parent's engine hash and the block's content hash.
///
/// For a fixed parent it is a bijection of the content hash (siblings never collide), and
/// for a fixed content hash a bijection of the parent's hash.
pub fn engine_hash(parent: Option<EngineHash>, content: BlockHash) -> EngineHash {
    let parent = parent.map_or(ROOT_PARENT, |p| p.0);
    let keyed = fmix64(parent ^ 0x1319_8a2e_0370_7344);
    EngineHash(fmix64(keyed ^ content.0.wrapping_mul(0xa409_3822_299f_31d1)))
}

/// MurmurHash3's 64-bit finaliser: a bijection with full avalanche.
fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_hash_depends_on_parent_and_content() {
        let a = engine_hash(None, BlockHash(1));
        assert_eq!(a, engine_hash(None, BlockHash(1)));
        assert_ne!(a, engine_hash(None, BlockHash(2)));
        let b = engine_hash(Some(a), BlockHash(1));
        assert_ne!(a, b);
        assert_ne!(b, engine_hash(Some(engine_hash(None, BlockHash(2))), BlockHash(1)));
        assert_ne!(engine_hash(None, BlockHash(0)), engine_hash(Some(EngineHash(0)), BlockHash(0)));
    }
}
