//! Identities: workers, data-parallel ranks, the dense id the index gives each
//! (worker, dp_rank) pair, and the two kinds of block hash.
//!
//! A routing target is a [`RankKey`] (worker and DP rank), never a worker alone:
//! a request sent to the right worker but the wrong rank gets no cache hit.
//! Inside the index each registered `RankKey` is mapped to a small dense
//! [`RankId`] so that "which ranks hold this block" is a bitset.

use std::fmt;

/// An inference engine instance (vLLM, SGLang, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct WorkerId(pub u64);

/// A data-parallel rank inside one worker: `0..dp_size` (or `start..start+dp_size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct DpRank(pub u32);

/// The routing target: one KV cache, named by its worker and DP rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct RankKey {
    pub worker: WorkerId,
    pub dp_rank: DpRank,
}

impl RankKey {
    pub const fn new(worker: u64, dp_rank: u32) -> Self {
        RankKey { worker: WorkerId(worker), dp_rank: DpRank(dp_rank) }
    }

    /// Which of `parts` (at least 1) this rank falls in: a fixed mix of worker and DP rank,
    /// so any set of ranks spreads about evenly. The index's shards and the replay's event
    /// lanes both partition ranks with it, so lane `i` feeds shard `i` alone.
    pub fn partition(self, parts: usize) -> usize {
        if parts <= 1 {
            // One part (an index of one shard, on every event): no mix, no division.
            return 0;
        }
        let mut x = self.worker.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(self.dp_rank.0);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        (x % parts as u64) as usize
    }
}

impl fmt::Display for RankKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.worker.0, self.dp_rank.0)
    }
}

/// Dense index-internal id of a registered [`RankKey`]; the bit position in rank sets.
/// Ids are reused after a rank is deregistered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RankId(pub u32);

/// Content hash of one block: a hash of its token ids alone, computable by the router
/// from a request (see [`crate::hashing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
#[repr(transparent)]
pub struct BlockHash(pub u64);

/// The engine's own (chained, seeded) hash of a block. Opaque to the router: used only to
/// resolve `parent` links and `Removed` events of the rank that sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
#[repr(transparent)]
pub struct EngineHash(pub u64);
