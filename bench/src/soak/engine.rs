//! [`Engine`]: one exact-mode worker's simulated inference engine: its ranks' KV caches,
//! the publisher that streams their events to the daemon, and the reference model of
//! what the daemon's index must then hold for them.
//!
//! Shape: each rank's cache is a `kvroute_core::sim::RankCache` of `capacity` blocks (LRU,
//! vLLM-like), so the blocks a worker holds, and hence the true index size, stay bounded
//! however long the soak runs. [`Engine::serve`] runs a prefill of a routed prompt on one
//! rank and, under the engine's one mutex, publishes every resulting `Stored`/`Removed`
//! event and applies it to the engine's own `ReferenceIndex` (core feature `reference`),
//! in the same order per rank. The reference is per engine so that a restart replaces it
//! whole, which keeps the soak's own memory bounded too.
//!
//! Lifecycle (driven by [`super::fleet`]):
//! - [`Engine::come_up`]: a (re)started engine: empty caches, an empty reference with the
//!   ranks registered, a new publisher (a new incarnation: the daemon asks for a dump,
//!   which replaces the ranks with exactly what this publisher has published);
//! - [`Engine::go_down`]: the publisher is taken out (the caller shuts it down or kills
//!   it); routes that land here meanwhile are not served. The reference keeps the ranks'
//!   blocks, as the daemon does during its publisher grace;
//! - [`Engine::forget`]: the grace ran out and the daemon removed the ranks: the
//!   reference forgets them too.

use std::sync::{Mutex, MutexGuard};

use kvroute_core::reference::ReferenceIndex;
use kvroute_core::route::StorageTier;
use kvroute_core::sim::RankCache;
use kvroute_core::{BlockHash, KvEvent, KvEventData, RankKey};
use kvroute_net::transport::PublisherHandle;

/// What [`Engine::serve`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// The engine is down (restarting or away): nothing cached, nothing published.
    Down,
    /// Served; the events carried this many block hashes.
    Published { block_events: u64 },
}

struct State {
    publisher: Option<PublisherHandle>,
    caches: Vec<RankCache>,
    reference: ReferenceIndex,
    /// The reference's event ids (increasing across the engine's ranks).
    next_id: u64,
    /// Anomalies the reference counted in earlier incarnations (it is replaced at each).
    past_anomalies: u64,
}

/// See the module docs.
pub struct Engine {
    pub worker: u64,
    dp_size: u32,
    capacity: usize,
    state: Mutex<State>,
}

/// Index anomalies of a reference: events the model itself found wrong (the engines'
/// events never are, so any is a bug of the soak).
fn anomalies(reference: &ReferenceIndex) -> u64 {
    let c = reference.counters();
    c.duplicate_store + c.unknown_parent + c.unknown_remove + c.unknown_rank + c.stale_event
}

impl Engine {
    /// A down engine with nothing cached.
    pub fn new(worker: u64, dp_size: u32, capacity: usize) -> Self {
        let state = State {
            publisher: None,
            caches: Vec::new(),
            reference: ReferenceIndex::new(),
            next_id: 0,
            past_anomalies: 0,
        };
        Engine { worker, dp_size, capacity, state: Mutex::new(state) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ranks(&self) -> Vec<RankKey> {
        (0..self.dp_size).map(|r| RankKey::new(self.worker, r)).collect()
    }

    /// Prefill of `chain` on rank `dp_rank`: its events are published and applied to the
    /// reference (see the module docs).
    pub fn serve(&self, dp_rank: u32, chain: &[BlockHash]) -> Served {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(publisher) = &state.publisher else { return Served::Down };
        let Some(cache) = state.caches.get_mut(dp_rank as usize) else { return Served::Down };
        let rank = RankKey::new(self.worker, dp_rank);
        let mut block_events = 0;
        for data in cache.prefill(chain).events {
            block_events += match &data {
                KvEventData::Stored { blocks, .. } => blocks.len() as u64,
                KvEventData::Removed { blocks } => blocks.len() as u64,
                KvEventData::Cleared => 0,
            };
            state.next_id += 1;
            state.reference.apply(&KvEvent { rank, event_id: state.next_id, data: data.clone() });
            // Only an unknown rank fails, and the publisher publishes exactly these ranks.
            let _ = publisher.publish(rank, StorageTier::Device, data);
        }
        Served::Published { block_events }
    }

    /// A fresh start (see the module docs) with `publisher`, already started.
    pub fn come_up(&self, publisher: PublisherHandle) {
        let mut state = self.lock();
        state.past_anomalies += anomalies(&state.reference);
        state.caches = (0..self.dp_size).map(|_| RankCache::new(self.capacity)).collect();
        state.reference = ReferenceIndex::new();
        for rank in self.ranks() {
            state.reference.register_rank(rank);
        }
        state.publisher = Some(publisher);
    }

    /// Takes the publisher out: the engine is down until [`Engine::come_up`].
    pub fn go_down(&self) -> Option<PublisherHandle> {
        self.lock().publisher.take()
    }

    /// The daemon removed the ranks after the grace: so does the reference.
    pub fn forget(&self) {
        let mut state = self.lock();
        state.past_anomalies += anomalies(&state.reference);
        state.reference = ReferenceIndex::new();
    }

    pub fn is_up(&self) -> bool {
        self.lock().publisher.is_some()
    }

    /// The running publisher, if up.
    pub fn publisher(&self) -> Option<PublisherHandle> {
        self.lock().publisher.clone()
    }

    /// The reference's overlaps of `chain` for this engine's ranks, sorted by rank.
    pub fn find_matches(&self, chain: &[BlockHash]) -> Vec<(RankKey, u32)> {
        self.lock().reference.find_matches(chain)
    }

    /// (rank, block) pairs the reference holds.
    pub fn held_pairs(&self) -> usize {
        self.lock().reference.held_pairs()
    }

    /// Anomalies the reference counted, over every incarnation (0 unless the soak is wrong).
    pub fn reference_anomalies(&self) -> u64 {
        let state = self.lock();
        state.past_anomalies + anomalies(&state.reference)
    }
}
