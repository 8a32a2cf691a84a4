//! Our index, `kvroute_core::KvIndex`: events are applied on the replay's event lanes
//! (`KvIndex::apply` may be called from several threads, one thread per rank at a time, in
//! order, which the lanes guarantee), lookups call `KvIndex::find_matches` on the query
//! threads. An apply is visible to every lookup that starts after it returns.
//!
//! The index has one shard per event lane by default (`KvIndex::with_shards`; the
//! replay's `--kvroute-shards` sets another count), partitioned as the lanes are
//! (`RankKey::partition`): each lane writes its own tree under its own lock, the same
//! thread budget the peers' per-lane writers get. One lane: one shard, one tree.

use kvroute_core::event::KvEvent;
use kvroute_core::ids::{BlockHash, RankKey};
use kvroute_core::KvIndex;

use crate::backend::{Backend, BuildContext, LaneReport};
use crate::schedule::{Schedule, ScheduledEvent};

/// `KvIndex` under test.
pub struct KvrouteBackend {
    index: KvIndex,
}

/// Events applied so far.
pub struct KvrouteLane {
    applied: u64,
}

impl Backend for KvrouteBackend {
    type Hash = BlockHash;
    type Event = KvEvent;
    type Lane<'a> = KvrouteLane;

    fn build(ctx: &BuildContext<'_>) -> Result<Self, String> {
        let index = KvIndex::with_shards(ctx.kvroute_shards);
        // With each rank's capacity, as a frontend that knows its engines' cache sizes
        // registers them: the engine-hash maps are sized up front.
        for &rank in ctx.ranks {
            index.register_rank_with_capacity(rank, ctx.capacity_blocks).map_err(|e| format!("kvroute: {e}"))?;
        }
        Ok(KvrouteBackend { index })
    }

    fn hash(hash: BlockHash) -> BlockHash {
        hash
    }

    fn prepare(&self, _schedule: &Schedule, event: &ScheduledEvent) -> KvEvent {
        event.event.clone()
    }

    fn new_lane(&self, _lane: usize, _ranks: &[RankKey]) -> KvrouteLane {
        KvrouteLane { applied: 0 }
    }

    fn submit(&self, lane: &mut KvrouteLane, event: KvEvent) {
        self.index.apply(&event);
        lane.applied += 1;
    }

    fn visible(&self, lane: &mut KvrouteLane) -> u64 {
        lane.applied
    }

    fn finish_lane(&self, _lane: KvrouteLane) -> LaneReport {
        LaneReport::default()
    }

    fn find(&self, hashes: &[BlockHash], out: &mut Vec<(RankKey, u32)>) {
        // The index reports only non-zero overlaps, into the query thread's reused buffer.
        self.index.find_matches_into(hashes, out);
    }

    fn settle(&self) -> bool {
        self.index.flush_reclamation();
        true
    }

    fn notes(&self) -> Vec<String> {
        let c = self.index.counters();
        let s = self.index.stats();
        vec![format!(
            "counters: applied {} stored {} removed {} | anomalies: duplicate_store {} unknown_parent {} unknown_remove {} unknown_rank {} stale {} | distinct blocks {} nodes {}",
            c.events_applied,
            c.blocks_stored,
            c.blocks_removed,
            c.duplicate_store,
            c.unknown_parent,
            c.unknown_remove,
            c.unknown_rank,
            c.stale_event,
            s.distinct_blocks,
            s.nodes
        )]
    }
}
