//! One rank's paged KV cache: prefix-cached blocks keyed by engine hash, evicted in LRU
//! order (see the module docs of [`crate::sim`] for the model).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::engine_hash;
use crate::event::{KvEventData, StoredBlock};
use crate::ids::{BlockHash, EngineHash};

/// "No entry" in the LRU links.
const NIL: usize = usize::MAX;

/// Hasher for engine hashes, which are already uniformly mixed 64-bit values: one
/// multiply-fold instead of SipHash.
#[derive(Default)]
struct EngineHashHasher(u64);

impl Hasher for EngineHashHasher {
    fn finish(&self) -> u64 {
        let product = u128::from(self.0) * 0x9e37_79b9_7f4a_7c15;
        (product as u64) ^ ((product >> 64) as u64)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 ^= value;
    }
}

type EngineHashMap<V> = HashMap<EngineHash, V, BuildHasherDefault<EngineHashHasher>>;

/// A cached block: its engine hash and its links in the LRU list. A block off the list
/// (`linked == false`) is referenced by the request being prefilled.
#[derive(Clone, Debug)]
struct Entry {
    engine_hash: EngineHash,
    /// Towards the least-recently-used end.
    prev: usize,
    /// Towards the most-recently-used end.
    next: usize,
    linked: bool,
}

/// What one prefill did to a rank's cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefillOutcome {
    /// Leading chain blocks found cached (the prefix the prefill reused).
    pub cached_blocks: usize,
    /// Blocks newly stored.
    pub stored_blocks: usize,
    /// Blocks evicted to make room.
    pub evicted_blocks: usize,
    /// The engine's events in publish order (without rank or event id; see [`super::Fleet`]).
    pub events: Vec<KvEventData>,
}

/// One rank's paged KV cache: `capacity` blocks, prefix-cached by engine hash;
/// unreferenced blocks are evicted in LRU order as vLLM does.
#[derive(Clone, Debug)]
pub struct RankCache {
    capacity: usize,
    /// Engine hash to its slot in `entries`.
    slots: EngineHashMap<usize>,
    /// Slab of entries; slots in `vacant` are unused.
    entries: Vec<Entry>,
    vacant: Vec<usize>,
    /// Least-recently-used end of the list of unreferenced blocks (evicted first).
    lru_head: usize,
    /// Most-recently-used end.
    lru_tail: usize,
    /// Scratch for one prefill: the chain's engine hashes and their slots.
    chain_hashes: Vec<EngineHash>,
    chain_slots: Vec<usize>,
}

impl RankCache {
    pub fn new(capacity_blocks: usize) -> Self {
        RankCache {
            capacity: capacity_blocks,
            slots: EngineHashMap::default(),
            entries: Vec::new(),
            vacant: Vec::new(),
            lru_head: NIL,
            lru_tail: NIL,
            chain_hashes: Vec::new(),
            chain_slots: Vec::new(),
        }
    }

    /// Most blocks the cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks the cache holds now.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether the block with this engine hash is cached.
    pub fn contains(&self, engine_hash: EngineHash) -> bool {
        self.slots.contains_key(&engine_hash)
    }

    /// Leading blocks of `chain` (content hashes) this cache would reuse: stops at the
    /// first block not cached.
    pub fn cached_prefix(&self, chain: &[BlockHash]) -> usize {
        let mut parent = None;
        for (depth, &content) in chain.iter().enumerate() {
            let hash = engine_hash(parent, content);
            if !self.slots.contains_key(&hash) {
                return depth;
            }
            parent = Some(hash);
        }
        chain.len()
    }

    /// Prefill of one request: reuse the cached prefix, store the remaining blocks,
    /// evicting LRU blocks to make room. Returns the engine's events (without rank or id)
    /// in publish order. Only the first `capacity` blocks of a longer chain are stored.
    pub fn prefill(&mut self, chain: &[BlockHash]) -> PrefillOutcome {
        let chain = &chain[..chain.len().min(self.capacity)];
        let mut outcome = PrefillOutcome::default();
        if chain.is_empty() {
            return outcome;
        }

        // 1. Reference every chain block already cached.
        let mut hashes = std::mem::take(&mut self.chain_hashes);
        let mut chain_slots = std::mem::take(&mut self.chain_slots);
        hashes.clear();
        chain_slots.clear();
        let mut parent = None;
        let mut in_prefix = true;
        for &content in chain {
            let hash = engine_hash(parent, content);
            parent = Some(hash);
            hashes.push(hash);
            match self.slots.get(&hash) {
                Some(&slot) => {
                    self.unlink(slot);
                    chain_slots.push(slot);
                    if in_prefix {
                        outcome.cached_blocks += 1;
                    }
                }
                None => {
                    chain_slots.push(NIL);
                    in_prefix = false;
                }
            }
        }

        // 2. Store the others in chain order, evicting unreferenced LRU blocks for room.
        let mut evicted = Vec::new();
        let mut stored_runs: Vec<KvEventData> = Vec::new();
        let mut run: Vec<StoredBlock> = Vec::new();
        let mut run_parent = None;
        for (position, (&content, &hash)) in chain.iter().zip(&hashes).enumerate() {
            if chain_slots[position] == NIL {
                // Cached after all only if the chain repeats an engine hash (a 64-bit collision).
                if let Some(&slot) = self.slots.get(&hash) {
                    chain_slots[position] = slot;
                } else if let Some(slot) = self.store(hash, &mut evicted) {
                    chain_slots[position] = slot;
                    if run.is_empty() {
                        run_parent = position.checked_sub(1).map(|p| hashes[p]);
                    }
                    run.push(StoredBlock { engine_hash: hash, content_hash: content });
                    outcome.stored_blocks += 1;
                    continue;
                } else {
                    // No room even after eviction: cannot happen (the chain fits), but stop cleanly.
                    break;
                }
            }
            if !run.is_empty() {
                stored_runs.push(KvEventData::Stored { parent: run_parent, blocks: std::mem::take(&mut run) });
            }
        }
        if !run.is_empty() {
            stored_runs.push(KvEventData::Stored { parent: run_parent, blocks: run });
        }

        // 3. Release the request's blocks, tail first, onto the most-recently-used end.
        for &slot in chain_slots.iter().rev() {
            if slot != NIL && !self.entries[slot].linked {
                self.push_most_recent(slot);
            }
        }

        outcome.evicted_blocks = evicted.len();
        if !evicted.is_empty() {
            outcome.events.push(KvEventData::Removed { blocks: evicted });
        }
        outcome.events.append(&mut stored_runs);
        self.chain_hashes = hashes;
        self.chain_slots = chain_slots;
        outcome
    }

    /// Stores `hash` (referenced, off the LRU list), evicting the least-recently-used
    /// unreferenced block first when the cache is full. `None` when there is no room.
    fn store(&mut self, hash: EngineHash, evicted: &mut Vec<EngineHash>) -> Option<usize> {
        if self.slots.len() >= self.capacity {
            let victim = self.lru_head;
            if victim == NIL {
                return None;
            }
            self.unlink(victim);
            let victim_hash = self.entries[victim].engine_hash;
            self.slots.remove(&victim_hash);
            self.vacant.push(victim);
            evicted.push(victim_hash);
        }
        let entry = Entry { engine_hash: hash, prev: NIL, next: NIL, linked: false };
        let slot = match self.vacant.pop() {
            Some(slot) => {
                self.entries[slot] = entry;
                slot
            }
            None => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
        };
        self.slots.insert(hash, slot);
        Some(slot)
    }

    /// Takes `slot` off the LRU list (no-op when it is not on it).
    fn unlink(&mut self, slot: usize) {
        let Entry { prev, next, linked, .. } = self.entries[slot];
        if !linked {
            return;
        }
        if prev == NIL {
            self.lru_head = next;
        } else {
            self.entries[prev].next = next;
        }
        if next == NIL {
            self.lru_tail = prev;
        } else {
            self.entries[next].prev = prev;
        }
        let entry = &mut self.entries[slot];
        entry.prev = NIL;
        entry.next = NIL;
        entry.linked = false;
    }

    /// Puts an unlinked `slot` at the most-recently-used end.
    fn push_most_recent(&mut self, slot: usize) {
        let tail = self.lru_tail;
        {
            let entry = &mut self.entries[slot];
            entry.prev = tail;
            entry.next = NIL;
            entry.linked = true;
        }
        if tail == NIL {
            self.lru_head = slot;
        } else {
            self.entries[tail].next = slot;
        }
        self.lru_tail = slot;
    }

    /// Engine hashes from least to most recently used.
    #[cfg(test)]
    pub(crate) fn lru_order(&self) -> Vec<EngineHash> {
        let mut out = Vec::with_capacity(self.len());
        let mut at = self.lru_head;
        while at != NIL {
            out.push(self.entries[at].engine_hash);
            at = self.entries[at].next;
        }
        out
    }

    /// Evicts one block regardless of LRU order (to make a hole in tests). Returns whether
    /// it was cached.
    #[cfg(test)]
    pub(crate) fn evict_for_test(&mut self, hash: EngineHash) -> bool {
        let Some(slot) = self.slots.remove(&hash) else {
            return false;
        };
        self.unlink(slot);
        self.vacant.push(slot);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;
    use crate::event::KvEvent;
    use crate::ids::RankKey;
    use crate::reference::ReferenceIndex;

    fn chain(contents: &[u64]) -> Vec<BlockHash> {
        contents.iter().map(|&c| BlockHash(c)).collect()
    }

    fn hashes(contents: &[u64]) -> Vec<EngineHash> {
        let mut parent = None;
        contents
            .iter()
            .map(|&c| {
                let hash = engine_hash(parent, BlockHash(c));
                parent = Some(hash);
                hash
            })
            .collect()
    }

    fn stored(parent: Option<EngineHash>, contents: &[u64], all: &[u64]) -> KvEventData {
        // `contents` is a slice of `all` (the whole chain); engine hashes come from `all`.
        let start = all.windows(contents.len()).position(|w| w == contents).expect("run is part of the chain");
        let engine = hashes(all);
        KvEventData::Stored {
            parent,
            blocks: contents
                .iter()
                .enumerate()
                .map(|(i, &c)| StoredBlock { engine_hash: engine[start + i], content_hash: BlockHash(c) })
                .collect(),
        }
    }

    #[test]
    fn first_prefill_stores_the_chain_as_one_run() {
        let mut cache = RankCache::new(8);
        let outcome = cache.prefill(&chain(&[1, 2, 3]));
        assert_eq!(outcome.cached_blocks, 0);
        assert_eq!(outcome.stored_blocks, 3);
        assert_eq!(outcome.evicted_blocks, 0);
        assert_eq!(outcome.events, vec![stored(None, &[1, 2, 3], &[1, 2, 3])]);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.cached_prefix(&chain(&[1, 2, 3, 4])), 3);
        assert_eq!(cache.cached_prefix(&chain(&[1, 9, 3])), 1);
        assert_eq!(cache.cached_prefix(&chain(&[2])), 0);
        assert_eq!(cache.cached_prefix(&[]), 0);

        // A shared prefix is reused; the rest is stored under the prefix's last block.
        let outcome = cache.prefill(&chain(&[1, 2, 7, 8]));
        assert_eq!((outcome.cached_blocks, outcome.stored_blocks), (2, 2));
        let parent = hashes(&[1, 2])[1];
        assert_eq!(outcome.events, vec![stored(Some(parent), &[7, 8], &[1, 2, 7, 8])]);
        assert!(cache.contains(parent));
        assert!(!cache.contains(EngineHash(1)));

        // Fully cached: no events.
        let outcome = cache.prefill(&chain(&[1, 2, 3]));
        assert_eq!(outcome, PrefillOutcome { cached_blocks: 3, ..Default::default() });
        assert!(!cache.is_empty());
        assert_eq!(cache.capacity(), 8);
    }

    #[test]
    fn requests_are_released_tail_first_and_evicted_oldest_first() {
        let mut cache = RankCache::new(4);
        cache.prefill(&chain(&[1, 2]));
        cache.prefill(&chain(&[3, 4]));
        let [a1, a2] = hashes(&[1, 2])[..] else { unreachable!() };
        let [b1, b2] = hashes(&[3, 4])[..] else { unreachable!() };
        // LRU to MRU: the first request's tail, its head, then the second's tail, head.
        assert_eq!(cache.lru_order(), vec![a2, a1, b2, b1]);

        let outcome = cache.prefill(&chain(&[5]));
        assert_eq!(outcome.events[0], KvEventData::Removed { blocks: vec![a2] });
        let outcome = cache.prefill(&chain(&[6, 7]));
        assert_eq!(outcome.events[0], KvEventData::Removed { blocks: vec![a1, b2] });
        assert_eq!(outcome.events[1], stored(None, &[6, 7], &[6, 7]));
        assert_eq!(outcome.events.len(), 2);
        assert_eq!(cache.len(), 4);
        assert!(cache.contains(b1) && !cache.contains(b2) && !cache.contains(a1));
    }

    #[test]
    fn touching_a_prefix_makes_it_most_recent() {
        let mut cache = RankCache::new(5);
        cache.prefill(&chain(&[1, 2, 3]));
        cache.prefill(&chain(&[4, 5]));
        // Reuse [1, 2] of the first request: now its tail 3 is the oldest block.
        cache.prefill(&chain(&[1, 2]));
        let h = hashes(&[1, 2, 3]);
        let g = hashes(&[4, 5]);
        assert_eq!(cache.lru_order(), vec![h[2], g[1], g[0], h[1], h[0]]);
        let outcome = cache.prefill(&chain(&[1, 2, 9, 10]));
        assert_eq!(outcome.cached_blocks, 2);
        assert_eq!(outcome.events[0], KvEventData::Removed { blocks: vec![h[2], g[1]] });
        assert_eq!(outcome.events[1], stored(Some(h[1]), &[9, 10], &[1, 2, 9, 10]));
    }

    #[test]
    fn capacity_zero_holds_nothing() {
        let mut cache = RankCache::new(0);
        assert_eq!(cache.prefill(&chain(&[1, 2, 3])), PrefillOutcome::default());
        assert_eq!(cache.prefill(&[]), PrefillOutcome::default());
        assert!(cache.is_empty());
        assert_eq!(cache.cached_prefix(&chain(&[1])), 0);
    }

    #[test]
    fn capacity_one_keeps_the_head_of_the_last_request() {
        let mut cache = RankCache::new(1);
        let outcome = cache.prefill(&chain(&[1, 2, 3]));
        assert_eq!(outcome.events, vec![stored(None, &[1], &[1])]);
        assert_eq!(outcome.stored_blocks, 1);
        assert_eq!(cache.cached_prefix(&chain(&[1, 2, 3])), 1);
        let outcome = cache.prefill(&chain(&[1, 5]));
        assert_eq!(outcome, PrefillOutcome { cached_blocks: 1, ..Default::default() });
        let outcome = cache.prefill(&chain(&[2]));
        assert_eq!(outcome.events, vec![KvEventData::Removed { blocks: hashes(&[1]) }, stored(None, &[2], &[2])]);
        assert_eq!((outcome.cached_blocks, outcome.stored_blocks, outcome.evicted_blocks), (0, 1, 1));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn chain_longer_than_capacity_stores_its_head_only() {
        let mut cache = RankCache::new(3);
        cache.prefill(&chain(&[9]));
        let outcome = cache.prefill(&chain(&[1, 2, 3, 4, 5]));
        assert_eq!(outcome.evicted_blocks, 1);
        assert_eq!(outcome.events[1], stored(None, &[1, 2, 3], &[1, 2, 3, 4, 5]));
        assert_eq!(cache.cached_prefix(&chain(&[1, 2, 3, 4, 5])), 3);
    }

    #[test]
    fn a_block_after_a_hole_is_touched_not_stored() {
        let mut cache = RankCache::new(10);
        let full = [1, 2, 3, 4, 5];
        cache.prefill(&chain(&full));
        let h = hashes(&full);
        assert!(cache.evict_for_test(h[1]));
        assert!(cache.evict_for_test(h[3]));
        assert_eq!(cache.cached_prefix(&chain(&full)), 1);
        let outcome = cache.prefill(&chain(&[1, 2, 3, 4, 5, 6]));
        assert_eq!((outcome.cached_blocks, outcome.stored_blocks, outcome.evicted_blocks), (1, 3, 0));
        assert_eq!(
            outcome.events,
            vec![
                stored(Some(h[0]), &[2], &full),
                stored(Some(h[2]), &[4], &full),
                stored(Some(h[4]), &[6], &[1, 2, 3, 4, 5, 6]),
            ]
        );
        assert_eq!(cache.len(), 6);
        // All six released in reverse: head most recent.
        let all = hashes(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(cache.lru_order(), all.iter().rev().copied().collect::<Vec<_>>());
    }

    /// An O(capacity) model of the same LRU rules, to check the linked-list version.
    struct NaiveCache {
        capacity: usize,
        /// Least recently used first.
        order: Vec<EngineHash>,
    }

    impl NaiveCache {
        fn prefill(&mut self, contents: &[BlockHash]) -> Vec<EngineHash> {
            let mut parent = None;
            let chain: Vec<EngineHash> = contents[..contents.len().min(self.capacity)]
                .iter()
                .map(|&c| {
                    let h = engine_hash(parent, c);
                    parent = Some(h);
                    h
                })
                .collect();
            let members: HashSet<EngineHash> = chain.iter().copied().collect();
            let mut evicted = Vec::new();
            for h in &chain {
                if self.order.contains(h) {
                    continue;
                }
                if self.order.len() == self.capacity {
                    let victim = self.order.iter().position(|v| !members.contains(v)).expect("room");
                    evicted.push(self.order.remove(victim));
                }
                self.order.push(*h);
            }
            self.order.retain(|v| !members.contains(v));
            self.order.extend(chain.iter().rev());
            evicted
        }
    }

    fn evicted_of(outcome: &PrefillOutcome) -> Vec<EngineHash> {
        match outcome.events.first() {
            Some(KvEventData::Removed { blocks }) => blocks.clone(),
            _ => Vec::new(),
        }
    }

    /// Random chains over a tiny alphabet share prefixes often.
    fn chain_strategy() -> impl Strategy<Value = Vec<BlockHash>> {
        proptest::collection::vec((0u64..3).prop_map(BlockHash), 0..14)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        #[test]
        fn events_keep_the_reference_exactly_in_step(
            capacity in 0usize..12,
            steps in proptest::collection::vec((chain_strategy(), proptest::collection::vec(chain_strategy(), 0..4)), 1..40),
        ) {
            let rank = RankKey::new(3, 1);
            let mut reference = ReferenceIndex::new();
            reference.register_rank(rank);
            let mut cache = RankCache::new(capacity);
            let mut naive = NaiveCache { capacity, order: Vec::new() };
            let mut event_id = 0u64;
            for (request, queries) in &steps {
                let before = cache.cached_prefix(request);
                let outcome = cache.prefill(request);
                let expected_stored = request.len().min(capacity) - outcome.cached_blocks;
                prop_assert_eq!(outcome.cached_blocks, before.min(capacity));
                // Prefills alone never make holes, so everything after the prefix is new.
                prop_assert_eq!(outcome.stored_blocks, expected_stored);
                prop_assert_eq!(evicted_of(&outcome), naive.prefill(request));
                prop_assert_eq!(cache.lru_order(), naive.order.clone());
                prop_assert!(cache.len() <= capacity);
                prop_assert_eq!(cache.cached_prefix(request), request.len().min(capacity));

                let mut stored = 0;
                for (index, data) in outcome.events.iter().enumerate() {
                    match data {
                        KvEventData::Removed { blocks } => {
                            prop_assert_eq!(index, 0);
                            prop_assert_eq!(blocks.len(), outcome.evicted_blocks);
                        }
                        KvEventData::Stored { blocks, .. } => {
                            prop_assert!(!blocks.is_empty());
                            stored += blocks.len();
                        }
                        KvEventData::Cleared => prop_assert!(false, "no Cleared from a prefill"),
                    }
                    event_id += 1;
                    reference.apply(&KvEvent { rank, event_id, data: data.clone() });
                }
                prop_assert_eq!(stored, outcome.stored_blocks);

                let counters = reference.counters();
                prop_assert_eq!(counters.unknown_parent, 0);
                prop_assert_eq!(counters.unknown_remove, 0);
                prop_assert_eq!(counters.duplicate_store, 0);
                prop_assert_eq!(counters.stale_event, 0);
                prop_assert_eq!(reference.held_pairs(), cache.len());
                for query in queries.iter().chain(std::iter::once(request)) {
                    let overlap = reference.find_matches(query).iter().find(|(k, _)| *k == rank).map_or(0, |(_, d)| *d as usize);
                    prop_assert_eq!(overlap, cache.cached_prefix(query));
                }
            }
        }
    }
}
