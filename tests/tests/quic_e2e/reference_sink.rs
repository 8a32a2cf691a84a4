//! [`ReferenceSink`]: the core reference model behind the [`IngestSink`] trait, one
//! `ReferenceIndex` per tier. Used both as a router fed over QUIC and as the expected
//! state fed directly with the engines' events.
//!
//! It numbers every rank's events itself (the model drops ids not above the last one, and
//! a replaced rank starts over), so it accepts events in order from any source.

use std::collections::HashMap;
use std::sync::Mutex;

use kvroute_core::event::{dump_events, DumpBlock};
use kvroute_core::reference::ReferenceIndex;
use kvroute_core::route::StorageTier;
use kvroute_core::{BlockHash, KvEvent, KvEventData, RankKey};
use kvroute_net::transport::IngestSink;

#[derive(Default)]
struct State {
    tiers: [ReferenceIndex; 3],
    next_id: HashMap<RankKey, u64>,
}

impl State {
    fn apply(&mut self, tier: StorageTier, rank: RankKey, data: KvEventData) {
        let id = self.next_id.entry(rank).or_insert(0);
        *id += 1;
        let index = &mut self.tiers[tier.index()];
        index.register_rank(rank);
        index.apply(&KvEvent { rank, event_id: *id, data });
    }
}

/// See the module docs.
#[derive(Default)]
pub struct ReferenceSink {
    state: Mutex<State>,
}

impl ReferenceSink {
    /// Applies an event as an engine published it.
    pub fn record(&self, tier: StorageTier, rank: RankKey, data: KvEventData) {
        self.state.lock().unwrap().apply(tier, rank, data);
    }

    /// Overlaps of `chain` in `tier`, sorted by rank.
    pub fn find_matches(&self, tier: StorageTier, chain: &[BlockHash]) -> Vec<(RankKey, u32)> {
        self.state.lock().unwrap().tiers[tier.index()].find_matches(chain)
    }
}

impl IngestSink for ReferenceSink {
    fn apply_batch(&self, tier: StorageTier, events: &[KvEvent]) {
        for event in events {
            self.record(tier, event.rank, event.data.clone());
        }
    }

    fn replace_rank(&self, tier: StorageTier, rank: RankKey, dump: &[DumpBlock]) {
        let mut state = self.state.lock().unwrap();
        state.tiers[tier.index()].deregister_rank(rank);
        for data in dump_events(dump) {
            state.apply(tier, rank, data);
        }
    }

    fn remove_rank(&self, rank: RankKey) {
        let mut state = self.state.lock().unwrap();
        for tier in StorageTier::ALL {
            state.tiers[tier.index()].deregister_rank(rank);
        }
    }
}
