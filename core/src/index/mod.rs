//! TEMPORARY STUB: the public API of the concurrent index, backed by a mutex around the
//! reference model until the lock-free tree lands. Do not rely on its speed.

use std::sync::Mutex;

use crate::event::KvEvent;
use crate::ids::{BlockHash, RankKey, WorkerId};

/// What the index did with the events it was given. Anything but `events_applied`,
/// `blocks_stored` and `blocks_removed` is an anomaly in the stream, counted, never fatal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventCounters {
    pub events_applied: u64,
    pub blocks_stored: u64,
    pub blocks_removed: u64,
    /// A stored block whose engine hash the rank already held.
    pub duplicate_store: u64,
    /// A `Stored` whose parent the rank does not hold: the event was dropped.
    pub unknown_parent: u64,
    /// A removed engine hash the rank did not hold.
    pub unknown_remove: u64,
    /// An event for a rank that is not registered: dropped.
    pub unknown_rank: u64,
    /// An event whose id was not above the rank's last applied id: skipped.
    pub stale_event: u64,
}

/// For each rank with a non-zero overlap, the number of leading request blocks it holds.
/// Order is unspecified; [`OverlapScores::sorted`] orders by rank.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverlapScores {
    pub entries: Vec<(RankKey, u32)>,
}

impl OverlapScores {
    pub fn get(&self, rank: RankKey) -> u32 {
        self.entries.iter().find(|(k, _)| *k == rank).map_or(0, |(_, v)| *v)
    }
    pub fn sorted(mut self) -> Vec<(RankKey, u32)> {
        self.entries.sort_unstable();
        self.entries
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Sizes of the index, for leak checks and memory reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Distinct block positions held by at least one rank.
    pub distinct_blocks: usize,
    /// Tree nodes alive (excluding the root).
    pub nodes: usize,
    pub ranks: usize,
}

pub struct KvIndex {
    inner: Mutex<crate::reference::ReferenceIndex>,
}

impl Default for KvIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl KvIndex {
    pub fn new() -> Self {
        KvIndex { inner: Mutex::new(crate::reference::ReferenceIndex::new()) }
    }
    pub fn register_rank(&self, rank: RankKey) {
        self.inner.lock().unwrap().register_rank(rank)
    }
    pub fn deregister_rank(&self, rank: RankKey) {
        self.inner.lock().unwrap().deregister_rank(rank)
    }
    pub fn remove_worker(&self, worker: WorkerId) {
        self.inner.lock().unwrap().remove_worker(worker)
    }
    pub fn apply(&self, event: &KvEvent) {
        self.inner.lock().unwrap().apply(event)
    }
    pub fn find_matches(&self, request: &[BlockHash]) -> OverlapScores {
        OverlapScores { entries: self.inner.lock().unwrap().find_matches(request) }
    }
    pub fn counters(&self) -> EventCounters {
        self.inner.lock().unwrap().counters().clone()
    }
    pub fn stats(&self) -> IndexStats {
        let inner = self.inner.lock().unwrap();
        IndexStats { distinct_blocks: inner.distinct_blocks(), nodes: 0, ranks: 0 }
    }
}
