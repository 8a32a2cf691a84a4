//! Approximate mode: for workers that publish no KV events, the router writes into the
//! index what it routed there itself, and forgets it after a TTL.
//!
//! For each routed prompt the chosen rank is credited with the prompt's blocks: the
//! router applies a synthetic `Stored` event to the device index under the rank's key,
//! with engine hashes chained along the prompt (so a block's identity includes its
//! position, as an engine's would) and event ids from a per-rank counter.
//!
//! Memory is bounded per rank, whatever the traffic:
//!
//! - `expiry` holds one entry per credited block: its latest expiry (`now + ttl`).
//!   Routing the same prefix again refreshes the entry, never adds one.
//! - `queue` lists `(expiry, block)` in the order they were set, which is expiry order
//!   (the TTL is fixed and the clock monotonic). A refresh appends a new entry and leaves
//!   the old one *stale* (its expiry is no longer the map's); stale entries are skipped
//!   when popped, and the queue is compacted once they outnumber the live ones, so it
//!   never holds more than about twice the blocks credited.
//! - A rank holds at most `max_blocks` blocks: past that, the least recently routed
//!   (the queue's front) are evicted, as a full KV cache evicts its oldest blocks.
//! - Expiry is incremental: each call pops at most a budget of queue entries (a record
//!   expires only its own rank); a sweep that runs out of budget goes on at the next.
//!   Maps and queues shrink when they fall to a quarter of their capacity, so memory is
//!   given back as blocks expire.
//!
//! The book sits behind a mutex, taken only when a decision lands on an approximate rank
//! (and by sweeps); the index write itself takes the index's writer lock. When the
//! worker's first real event arrives the router re-registers its ranks in the index
//! (dropping everything synthetic) and forgets them here.

use std::collections::{HashMap, VecDeque};

use crate::event::{KvEvent, KvEventData, StoredBlock};
use crate::ids::{BlockHash, EngineHash, RankKey};
use crate::index::KvIndex;

/// Queue entries one expiry call may pop (live or stale).
const EXPIRY_BUDGET: usize = 65_536;

/// Stale entries tolerated before a compaction, beyond the live count.
const COMPACT_SLACK: usize = 1024;

#[derive(Default)]
struct ApproxRank {
    next_event_id: u64,
    /// Latest expiry of each credited block.
    expiry: HashMap<EngineHash, u64>,
    /// `(expiry, block)` in the order set; see the module docs.
    queue: VecDeque<(u64, EngineHash)>,
}

impl ApproxRank {
    /// Pops up to `budget` queue entries that are due (`expiry <= now`) or, while the rank
    /// holds more than `max_blocks`, the oldest; returns the live blocks they remove and
    /// the entries popped.
    fn pop_due(&mut self, now_ms: u64, max_blocks: usize, budget: usize) -> (Vec<EngineHash>, usize) {
        let mut removed = Vec::new();
        let mut popped = 0;
        while popped < budget {
            let Some(&(at, block)) = self.queue.front() else { break };
            if at > now_ms && self.expiry.len() <= max_blocks {
                break;
            }
            self.queue.pop_front();
            popped += 1;
            if self.expiry.get(&block) == Some(&at) {
                self.expiry.remove(&block);
                removed.push(block);
            }
        }
        self.reclaim();
        (removed, popped)
    }

    /// Drops stale queue entries once they outnumber the live ones; shrinks what fell
    /// to a quarter of its capacity.
    fn reclaim(&mut self) {
        if self.queue.len() > 2 * self.expiry.len() + COMPACT_SLACK {
            let expiry = &self.expiry;
            self.queue.retain(|(at, block)| expiry.get(block) == Some(at));
        }
        if self.expiry.capacity() > 4 * self.expiry.len() + COMPACT_SLACK {
            self.expiry.shrink_to_fit();
        }
        if self.queue.capacity() > 4 * self.queue.len() + COMPACT_SLACK {
            self.queue.shrink_to_fit();
        }
    }

    fn remove_from(&mut self, index: &KvIndex, rank: RankKey, blocks: Vec<EngineHash>) {
        if blocks.is_empty() {
            return;
        }
        self.next_event_id += 1;
        index.apply(&KvEvent { rank, event_id: self.next_event_id, data: KvEventData::Removed { blocks } });
    }
}

/// What approximate mode holds, for gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApproxStats {
    /// Ranks with at least one credited block.
    pub ranks: usize,
    /// Blocks credited, over all ranks.
    pub blocks: usize,
    /// Expiry queue entries, live and stale, over all ranks.
    pub queued: usize,
}

pub(crate) struct ApproxBook {
    ttl_ms: u64,
    max_blocks: usize,
    ranks: HashMap<RankKey, ApproxRank>,
}

/// Engine hash of a block given its parent's: a position-aware chain.
fn chain(parent: u64, block: BlockHash) -> EngineHash {
    let mut z = parent.rotate_left(29) ^ block.0 ^ 0xA076_1D64_78BD_642F;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    EngineHash(z ^ (z >> 31))
}

impl ApproxBook {
    /// A book forgetting blocks `ttl_ms` after they were last routed, holding at most
    /// `max_blocks_per_rank` (at least 1) per rank.
    pub(crate) fn new(ttl_ms: u64, max_blocks_per_rank: usize) -> ApproxBook {
        ApproxBook { ttl_ms, max_blocks: max_blocks_per_rank.max(1), ranks: HashMap::new() }
    }

    /// Credits `rank` with `blocks` until `now + ttl` (the first `max_blocks` of a longer
    /// prompt), then expires or evicts what is due on that rank.
    pub(crate) fn record(&mut self, index: &KvIndex, rank: RankKey, blocks: &[BlockHash], now_ms: u64) {
        let expires = now_ms.saturating_add(self.ttl_ms);
        let max_blocks = self.max_blocks;
        let state = self.ranks.entry(rank).or_default();
        let mut parent: Option<EngineHash> = None;
        let mut run_parent: Option<EngineHash> = None;
        let mut run: Vec<StoredBlock> = Vec::new();
        let mut events = Vec::new();
        for &block in blocks.iter().take(max_blocks) {
            let engine = chain(parent.map_or(0, |p| p.0), block);
            match state.expiry.get_mut(&engine) {
                Some(at) => {
                    if !run.is_empty() {
                        events.push((run_parent, std::mem::take(&mut run)));
                    }
                    if *at == expires {
                        // Already queued at this expiry (the same prefix twice in one ms).
                        parent = Some(engine);
                        continue;
                    }
                    *at = expires;
                }
                None => {
                    if run.is_empty() {
                        run_parent = parent;
                    }
                    state.expiry.insert(engine, expires);
                    run.push(StoredBlock { engine_hash: engine, content_hash: block });
                }
            }
            state.queue.push_back((expires, engine));
            parent = Some(engine);
        }
        if !run.is_empty() {
            events.push((run_parent, run));
        }
        for (parent, blocks) in events {
            state.next_event_id += 1;
            index.apply(&KvEvent { rank, event_id: state.next_event_id, data: KvEventData::Stored { parent, blocks } });
        }
        let (removed, _) = state.pop_due(now_ms, max_blocks, EXPIRY_BUDGET);
        state.remove_from(index, rank, removed);
    }

    /// Removes blocks whose latest expiry is at or before `now`, popping at most a budget
    /// of queue entries over all ranks; returns whether it got through everything due
    /// (false: call again).
    pub(crate) fn expire(&mut self, index: &KvIndex, now_ms: u64) -> bool {
        let mut budget = EXPIRY_BUDGET;
        let max_blocks = self.max_blocks;
        for (&rank, state) in self.ranks.iter_mut() {
            let (removed, popped) = state.pop_due(now_ms, max_blocks, budget);
            state.remove_from(index, rank, removed);
            budget -= popped;
            if budget == 0 {
                return false;
            }
        }
        // Ranks stay (with their event counter, which the index needs to keep rising)
        // until `forget`; an idle one costs its shrunk map and queue.
        true
    }

    /// Forgets a rank (its worker switched to exact mode or left); the caller drops its
    /// blocks from the index.
    pub(crate) fn forget(&mut self, rank: RankKey) {
        self.ranks.remove(&rank);
    }

    pub(crate) fn stats(&self) -> ApproxStats {
        ApproxStats {
            ranks: self.ranks.values().filter(|r| !r.expiry.is_empty()).count(),
            blocks: self.ranks.values().map(|r| r.expiry.len()).sum(),
            queued: self.ranks.values().map(|r| r.queue.len()).sum(),
        }
    }
}

#[cfg(test)]
#[path = "approx_tests.rs"]
mod tests;
