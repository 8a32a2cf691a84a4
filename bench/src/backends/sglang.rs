//! The SGLang model gateway's index (`kv-index` 2.0.0): `ChainIndex`, driven as its own
//! Mooncake replay and the gateway drive it. Each (worker, dp_rank) is interned as one
//! `ChainIndex` worker named `"{worker}:{dp_rank}"` (the index has no notion of DP ranks;
//! the bench's replay keys its streams the same way) and decoded back to the rank key
//! through a table. The `ChainBlockMap` of every rank (its engine hash -> place map, needed
//! for removals) is owned by the replay's event lane of that rank and applied to from that
//! lane's thread only; lanes are the caller's threads, so there are no extra threads. At the
//! end of a lane its maps are parked in the backend, since they are part of the index's
//! memory.
//!
//! Event mapping: a store is `apply_stored(worker, [StoredBlock { seq_hash: engine hash,
//! content_hash }], parent engine hash, map)` (an `Err` is a rejected event), a removal
//! `apply_removed(worker, engine hashes, map)`, a clear `apply_cleared`. Lookups use
//! `score_into` (the allocation-free form of `find_matches`) over the request's content
//! hashes. An apply is visible to every lookup that starts after it returns.

use std::sync::Mutex;

use kv_index::{ChainBlockMap, ChainIndex, ContentHash, SequenceHash, StoredBlock};
use kvroute_core::event::KvEventData;
use kvroute_core::ids::{BlockHash, RankKey};

use crate::backend::{Backend, BuildContext, LaneReport};
use crate::schedule::{Schedule, ScheduledEvent};

/// Most workers one `ChainIndex` takes.
pub const MAX_RANKS: usize = 1024;

/// `ChainIndex` under test.
pub struct SglangChain {
    index: ChainIndex,
    /// Interned id -> rank.
    names: Vec<RankKey>,
    /// Rank -> interned id.
    ids: std::collections::HashMap<RankKey, u32>,
    /// Lane maps kept after their lane finished (part of the index's memory).
    parked: Mutex<Vec<Vec<ChainBlockMap>>>,
}

/// The native payload: what the gateway's event monitor hands the index.
pub enum SglangEvent {
    Stored { worker: u32, parent: Option<SequenceHash>, blocks: Vec<StoredBlock> },
    Removed { worker: u32, hashes: Vec<SequenceHash> },
    Cleared { worker: u32 },
}

/// One lane: the block maps of its ranks, indexed by interned id.
pub struct SglangLane {
    maps: Vec<ChainBlockMap>,
    applied: u64,
    rejected: u64,
}

impl Backend for SglangChain {
    type Hash = ContentHash;
    type Event = SglangEvent;
    type Lane<'a> = SglangLane;

    fn build(ctx: &BuildContext<'_>) -> Result<Self, String> {
        if ctx.ranks.len() > MAX_RANKS {
            return Err(format!(
                "kv-index ChainIndex takes at most {MAX_RANKS} workers; the fleet has {} ranks",
                ctx.ranks.len()
            ));
        }
        let index = ChainIndex::with_max_workers(ctx.ranks.len().max(1));
        let mut names = vec![RankKey::new(0, 0); ctx.ranks.len()];
        let mut ids = std::collections::HashMap::new();
        for &rank in ctx.ranks {
            let id = index
                .intern_worker(&format!("{}:{}", rank.worker.0, rank.dp_rank.0))
                .map_err(|e| format!("kv-index: {e}"))?;
            if id as usize >= names.len() {
                names.resize(id as usize + 1, RankKey::new(0, 0));
            }
            names[id as usize] = rank;
            ids.insert(rank, id);
        }
        Ok(SglangChain { index, names, ids, parked: Mutex::new(Vec::new()) })
    }

    fn hash(hash: BlockHash) -> ContentHash {
        ContentHash(hash.0)
    }

    fn prepare(&self, _schedule: &Schedule, scheduled: &ScheduledEvent) -> SglangEvent {
        let event = &scheduled.event;
        let worker = self.ids[&event.rank];
        match &event.data {
            KvEventData::Stored { parent, blocks } => SglangEvent::Stored {
                worker,
                parent: parent.map(|p| SequenceHash(p.0)),
                blocks: blocks
                    .iter()
                    .map(|b| StoredBlock {
                        seq_hash: SequenceHash(b.engine_hash.0),
                        content_hash: ContentHash(b.content_hash.0),
                    })
                    .collect(),
            },
            KvEventData::Removed { blocks } => {
                SglangEvent::Removed { worker, hashes: blocks.iter().map(|h| SequenceHash(h.0)).collect() }
            }
            KvEventData::Cleared => SglangEvent::Cleared { worker },
        }
    }

    fn new_lane(&self, _lane: usize, _ranks: &[RankKey]) -> SglangLane {
        SglangLane { maps: (0..self.names.len()).map(|_| ChainBlockMap::new()).collect(), applied: 0, rejected: 0 }
    }

    fn submit(&self, lane: &mut SglangLane, event: SglangEvent) {
        match event {
            SglangEvent::Stored { worker, parent, blocks } => {
                let map = &mut lane.maps[worker as usize];
                if self.index.apply_stored(worker, &blocks, parent, map).is_err() {
                    lane.rejected += 1;
                }
            }
            SglangEvent::Removed { worker, hashes } => {
                self.index.apply_removed(worker, &hashes, &mut lane.maps[worker as usize]);
            }
            SglangEvent::Cleared { worker } => {
                self.index.apply_cleared(worker, &mut lane.maps[worker as usize]);
            }
        }
        lane.applied += 1;
    }

    fn visible(&self, lane: &mut SglangLane) -> u64 {
        lane.applied
    }

    fn finish_lane(&self, lane: SglangLane) -> LaneReport {
        let report = LaneReport { rejected_events: lane.rejected };
        self.parked.lock().unwrap_or_else(|e| e.into_inner()).push(lane.maps);
        report
    }

    fn find(&self, hashes: &[ContentHash], out: &mut Vec<(RankKey, u32)>) {
        let names = &self.names;
        self.index.score_into(
            hashes,
            |content| content.0,
            false,
            |worker, overlap| {
                if overlap > 0 {
                    out.push((names[worker as usize], overlap));
                }
            },
        );
    }

    fn notes(&self) -> Vec<String> {
        let s = self.index.stats();
        vec![format!(
            "distinct blocks {} | runs live {} | arena bytes {} (chunks {}) slab bytes {} | splits: hole {} mid-run store {} prefix holders {} | engine conflicts {} landing mismatches {} moved hashes {}",
            self.index.entry_count(),
            s.runs_live,
            s.arena_bytes,
            s.arena_chunk_bytes,
            s.slab_bytes,
            s.splits_by_hole,
            s.splits_by_mid_run_store,
            s.splits_by_prefix_holders,
            s.engine_conflicts,
            s.landing_mismatches,
            s.moved_hashes
        )]
    }
}
