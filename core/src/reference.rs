//! A deliberately simple, single-threaded model of the index's semantics: the oracle
//! that the concurrent index, the benches and the end-to-end tests are checked against.
//!
//! Shape: a position is a path of content hashes from the root, interned as a
//! [`PositionId`] through `(parent position, content hash) -> position`. Each rank keeps
//! `engine hash -> position` and a count of how many of its engine hashes sit at each
//! position (an engine may hold two copies of the same content under different engine
//! hashes, e.g. different LoRA adapters; the position is held while any copy is).
//!
//! Rules (the index follows them exactly):
//! - `Stored { parent, blocks }`: `parent` must be an engine hash the rank holds, else the
//!   whole event is dropped and counted as `unknown_parent`. Blocks are placed as a chain
//!   under the parent's position (or the root). A block whose engine hash the rank already
//!   holds is a `duplicate_store`: it is left where it is, and the chain continues from it.
//! - `Removed { blocks }`: each engine hash the rank holds is forgotten; an unknown one is
//!   counted as `unknown_remove`.
//! - `Cleared`: the rank forgets everything. Removing a worker clears all its ranks.
//! - An event whose id is not above the rank's last applied id is skipped (`stale_event`);
//!   an event for an unregistered rank is counted as `unknown_rank`.
//! - Overlap of a rank for a request: the number of leading request blocks `i` such that
//!   the rank holds every position `0..i` of the request's path. Only ranks with a
//!   non-zero overlap are reported.

use std::collections::{BTreeMap, HashMap};

use crate::event::{KvEvent, KvEventData};
use crate::ids::{BlockHash, EngineHash, RankKey};
use crate::index::EventCounters;

type PositionId = u32;
const ROOT: PositionId = 0;

#[derive(Default)]
struct RankModel {
    blocks: HashMap<EngineHash, PositionId>,
    copies: HashMap<PositionId, u32>,
    last_event_id: Option<u64>,
}

/// The single-threaded oracle. See the module docs for the rules.
#[derive(Default)]
pub struct ReferenceIndex {
    positions: HashMap<(PositionId, BlockHash), PositionId>,
    ranks: BTreeMap<RankKey, RankModel>,
    counters: EventCounters,
}

impl ReferenceIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register_rank(&mut self, rank: RankKey) {
        self.ranks.entry(rank).or_default();
    }

    pub fn deregister_rank(&mut self, rank: RankKey) {
        self.ranks.remove(&rank);
    }

    /// Removes every rank of `worker`.
    pub fn remove_worker(&mut self, worker: crate::ids::WorkerId) {
        self.ranks.retain(|k, _| k.worker != worker);
    }

    pub fn counters(&self) -> &EventCounters {
        &self.counters
    }

    fn position(&mut self, parent: PositionId, content: BlockHash) -> PositionId {
        let next = self.positions.len() as PositionId + 1;
        *self.positions.entry((parent, content)).or_insert(next)
    }

    pub fn apply(&mut self, event: &KvEvent) {
        let Some(model) = self.ranks.get_mut(&event.rank) else {
            self.counters.unknown_rank += 1;
            return;
        };
        if model.last_event_id.is_some_and(|last| event.event_id <= last) {
            self.counters.stale_event += 1;
            return;
        }
        model.last_event_id = Some(event.event_id);
        self.counters.events_applied += 1;
        match &event.data {
            KvEventData::Stored { parent, blocks } => {
                let mut at = match parent {
                    None => ROOT,
                    Some(p) => match model.blocks.get(p) {
                        Some(&pos) => pos,
                        None => {
                            self.counters.unknown_parent += 1;
                            return;
                        }
                    },
                };
                for block in blocks {
                    let model = self.ranks.get_mut(&event.rank).unwrap();
                    if let Some(&pos) = model.blocks.get(&block.engine_hash) {
                        self.counters.duplicate_store += 1;
                        at = pos;
                        continue;
                    }
                    let pos = self.position(at, block.content_hash);
                    let model = self.ranks.get_mut(&event.rank).unwrap();
                    model.blocks.insert(block.engine_hash, pos);
                    *model.copies.entry(pos).or_insert(0) += 1;
                    self.counters.blocks_stored += 1;
                    at = pos;
                }
            }
            KvEventData::Removed { blocks } => {
                for hash in blocks {
                    match model.blocks.remove(hash) {
                        Some(pos) => {
                            let count = model.copies.get_mut(&pos).unwrap();
                            *count -= 1;
                            if *count == 0 {
                                model.copies.remove(&pos);
                            }
                            self.counters.blocks_removed += 1;
                        }
                        None => self.counters.unknown_remove += 1,
                    }
                }
            }
            KvEventData::Cleared => {
                model.blocks.clear();
                model.copies.clear();
            }
        }
    }

    /// Overlap of every rank with a non-zero overlap, sorted by rank.
    pub fn find_matches(&self, request: &[BlockHash]) -> Vec<(RankKey, u32)> {
        let mut path = Vec::with_capacity(request.len());
        let mut at = ROOT;
        for content in request {
            match self.positions.get(&(at, *content)) {
                Some(&pos) => {
                    path.push(pos);
                    at = pos;
                }
                None => break,
            }
        }
        let mut out = Vec::new();
        for (key, model) in &self.ranks {
            let depth = path.iter().take_while(|pos| model.copies.contains_key(pos)).count();
            if depth > 0 {
                out.push((*key, depth as u32));
            }
        }
        out
    }

    /// Number of distinct positions held by at least one rank.
    pub fn distinct_blocks(&self) -> usize {
        let mut held = std::collections::HashSet::new();
        for model in self.ranks.values() {
            held.extend(model.copies.keys().copied());
        }
        held.len()
    }

    /// Number of (rank, position) pairs held.
    pub fn held_pairs(&self) -> usize {
        self.ranks.values().map(|m| m.copies.len()).sum()
    }

    /// Number of (rank, engine hash) pairs held (two engine hashes of one position count
    /// twice).
    pub fn held_engine_blocks(&self) -> usize {
        self.ranks.values().map(|m| m.blocks.len()).sum()
    }
}
