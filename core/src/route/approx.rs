//! Approximate mode: for workers that publish no KV events, the router writes into the
//! index what it routed there itself, and forgets it after a TTL.
//!
//! For each routed prompt the chosen rank is credited with the prompt's blocks: the
//! router applies a synthetic `Stored` event to the device index under the rank's key,
//! with engine hashes chained along the prompt (so a block's identity includes its
//! position, as an engine's would) and event ids from a per-rank counter. Each credited
//! block gets an expiry `now + ttl`; routing the same prefix again refreshes it. A FIFO
//! of expiries (sorted, as the TTL is fixed and the clock monotonic) is drained on each
//! record and each sweep into `Removed` events for blocks whose latest expiry passed.
//!
//! The book sits behind a mutex, taken only when a decision lands on an approximate rank
//! (and by sweeps); the index write itself takes the index's writer lock. When the
//! worker's first real event arrives the router re-registers its ranks in the index
//! (dropping everything synthetic) and forgets them here.

use std::collections::{HashMap, VecDeque};

use crate::event::{KvEvent, KvEventData, StoredBlock};
use crate::ids::{BlockHash, EngineHash, RankKey};
use crate::index::KvIndex;

#[derive(Default)]
struct ApproxRank {
    next_event_id: u64,
    /// Latest expiry of each credited block.
    expiry: HashMap<EngineHash, u64>,
}

pub(crate) struct ApproxBook {
    ttl_ms: u64,
    ranks: HashMap<RankKey, ApproxRank>,
    queue: VecDeque<(u64, RankKey, EngineHash)>,
}

/// Engine hash of a block given its parent's: a position-aware chain.
fn chain(parent: u64, block: BlockHash) -> EngineHash {
    let mut z = parent.rotate_left(29) ^ block.0 ^ 0xA076_1D64_78BD_642F;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    EngineHash(z ^ (z >> 31))
}

impl ApproxBook {
    pub(crate) fn new(ttl_ms: u64) -> ApproxBook {
        ApproxBook { ttl_ms, ranks: HashMap::new(), queue: VecDeque::new() }
    }

    /// Credits `rank` with `blocks` until `now + ttl`.
    pub(crate) fn record(&mut self, index: &KvIndex, rank: RankKey, blocks: &[BlockHash], now_ms: u64) {
        self.expire(index, now_ms);
        let expires = now_ms.saturating_add(self.ttl_ms);
        let state = self.ranks.entry(rank).or_default();
        let mut parent: Option<EngineHash> = None;
        let mut run_parent: Option<EngineHash> = None;
        let mut run: Vec<StoredBlock> = Vec::new();
        let mut events = Vec::new();
        for &block in blocks {
            let engine = chain(parent.map_or(0, |p| p.0), block);
            if let Some(at) = state.expiry.get_mut(&engine) {
                *at = expires;
                if !run.is_empty() {
                    events.push((run_parent, std::mem::take(&mut run)));
                }
            } else {
                if run.is_empty() {
                    run_parent = parent;
                }
                state.expiry.insert(engine, expires);
                run.push(StoredBlock { engine_hash: engine, content_hash: block });
            }
            self.queue.push_back((expires, rank, engine));
            parent = Some(engine);
        }
        if !run.is_empty() {
            events.push((run_parent, run));
        }
        for (parent, blocks) in events {
            state.next_event_id += 1;
            index.apply(&KvEvent { rank, event_id: state.next_event_id, data: KvEventData::Stored { parent, blocks } });
        }
    }

    /// Removes blocks whose latest expiry is at or before `now`.
    pub(crate) fn expire(&mut self, index: &KvIndex, now_ms: u64) {
        let mut removed: HashMap<RankKey, Vec<EngineHash>> = HashMap::new();
        while let Some(&(at, rank, engine)) = self.queue.front() {
            if at > now_ms {
                break;
            }
            self.queue.pop_front();
            let Some(state) = self.ranks.get_mut(&rank) else { continue };
            if state.expiry.get(&engine) == Some(&at) {
                state.expiry.remove(&engine);
                removed.entry(rank).or_default().push(engine);
            }
        }
        for (rank, blocks) in removed {
            let Some(state) = self.ranks.get_mut(&rank) else { continue };
            state.next_event_id += 1;
            index.apply(&KvEvent { rank, event_id: state.next_event_id, data: KvEventData::Removed { blocks } });
        }
    }

    /// Forgets a rank (its worker switched to exact mode or left); the caller drops its
    /// blocks from the index.
    pub(crate) fn forget(&mut self, rank: RankKey) {
        self.ranks.remove(&rank);
        self.queue.retain(|&(_, r, _)| r != rank);
    }
}
