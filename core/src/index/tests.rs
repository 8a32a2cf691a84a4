//! Exactness of the index against the reference model, under random event streams with
//! shared prefixes, holes, re-stores, copies, duplicates, unknown parents, clears, stale
//! ids, rank churn and worker removal.

use std::collections::HashMap;

use proptest::prelude::*;

use super::test_chains::{chain, mix, HeldChains};
use super::*;
use crate::event::{KvEventData, StoredBlock};
use crate::ids::EngineHash;
use crate::reference::ReferenceIndex;

const RANKS: [RankKey; 4] = [RankKey::new(1, 0), RankKey::new(1, 1), RankKey::new(2, 0), RankKey::new(7, 3)];

#[derive(Clone, Debug)]
enum Op {
    /// Store a chain of `contents` under a parent picked by `parent` (0 = root).
    Store {
        rank: usize,
        parent: usize,
        contents: Vec<u8>,
        odd_engine: u8,
    },
    Remove {
        rank: usize,
        picks: Vec<usize>,
        unknown: bool,
    },
    Clear {
        rank: usize,
    },
    Deregister {
        rank: usize,
    },
    RemoveWorker {
        rank: usize,
    },
    Stale {
        rank: usize,
    },
    Probe {
        rank: usize,
        pick: usize,
        cut: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4usize, any::<usize>(), prop::collection::vec(0..3u8, 1..7), any::<u8>())
            .prop_map(|(rank, parent, contents, odd_engine)| Op::Store { rank, parent, contents, odd_engine }),
        3 => (0..4usize, prop::collection::vec(any::<usize>(), 1..4), any::<bool>())
            .prop_map(|(rank, picks, unknown)| Op::Remove { rank, picks, unknown }),
        1 => (0..4usize).prop_map(|rank| Op::Clear { rank }),
        1 => (0..4usize).prop_map(|rank| Op::Deregister { rank }),
        1 => (0..4usize).prop_map(|rank| Op::RemoveWorker { rank }),
        1 => (0..4usize).prop_map(|rank| Op::Stale { rank }),
        3 => (0..4usize, any::<usize>(), 0..8usize).prop_map(|(rank, pick, cut)| Op::Probe { rank, pick, cut }),
    ]
}

/// Drives the index and the reference with the same events and compares them.
struct Harness {
    index: KvIndex,
    reference: ReferenceIndex,
    /// The reference restricted to each shard's ranks: a position held by ranks of two
    /// shards is a distinct block in each.
    shard_references: Vec<ReferenceIndex>,
    /// What each rank was told to store (test bookkeeping).
    chains: HeldChains,
    next_id: HashMap<RankKey, u64>,
    probes: Vec<Vec<BlockHash>>,
}

impl Harness {
    fn new(shards: usize) -> Self {
        let mut h = Harness {
            index: KvIndex::with_shards(shards),
            reference: ReferenceIndex::new(),
            shard_references: (0..shards).map(|_| ReferenceIndex::new()).collect(),
            chains: HeldChains::default(),
            next_id: HashMap::new(),
            probes: Vec::new(),
        };
        for r in RANKS {
            h.register(r);
        }
        h
    }

    fn register(&mut self, r: RankKey) {
        // Half the ranks come with a capacity hint: it must change nothing but memory.
        if r.worker.0 % 2 == 0 {
            self.index.register_rank_with_capacity(r, 3).unwrap();
        } else {
            self.index.register_rank(r).unwrap();
        }
        self.reference.register_rank(r);
        self.shard_reference(r).register_rank(r);
    }

    fn shard_reference(&mut self, r: RankKey) -> &mut ReferenceIndex {
        let shard = r.partition(self.shard_references.len());
        &mut self.shard_references[shard]
    }

    fn forget(&mut self, r: RankKey) {
        self.chains.forget_rank(r);
        self.next_id.remove(&r);
    }

    fn send(&mut self, rank: RankKey, data: KvEventData) {
        let id = self.next_id.entry(rank).or_insert(0);
        *id += 1;
        let event = KvEvent { rank, event_id: *id, data };
        self.index.apply(&event);
        self.reference.apply(&event);
        self.shard_reference(rank).apply(&event);
    }

    fn run(&mut self, op: &Op) {
        match op.clone() {
            Op::Store { rank, parent, contents, odd_engine } => {
                let r = RANKS[rank];
                let held = self.chains.held(r);
                let parent = if parent % 4 == 0 || held.is_empty() {
                    None
                } else if parent % 11 == 1 {
                    Some(EngineHash(0xdead)) // never stored: unknown parent
                } else {
                    Some(held[parent % held.len()])
                };
                // Engine hashes are mostly a function of the chain (shared across ranks);
                // some are odd (copies of a position) or repeat (duplicates).
                let blocks = chain(parent, &contents, |i, content, prev| match odd_engine % 8 {
                    0 if i == 0 => Some(EngineHash(mix(prev, content.0) ^ 0x5555)),
                    1 if i == 1 && !held.is_empty() => Some(held[odd_engine as usize % held.len()]),
                    _ => None,
                });
                let known_parent = parent.is_none_or(|p| self.chains.paths.contains_key(&(r, p)));
                if known_parent {
                    self.chains.record_store(r, parent, &blocks, &mut self.probes);
                }
                self.send(r, KvEventData::Stored { parent, blocks });
            }
            Op::Remove { rank, picks, unknown } => {
                let r = RANKS[rank];
                let mut gone = self.chains.take(r, &picks);
                if unknown {
                    gone.push(EngineHash(0xbeef));
                }
                self.send(r, KvEventData::Removed { blocks: gone });
            }
            Op::Clear { rank } => {
                let r = RANKS[rank];
                self.chains.forget_rank(r);
                self.send(r, KvEventData::Cleared);
            }
            Op::Deregister { rank } => {
                let r = RANKS[rank];
                assert!(self.index.deregister_rank(r));
                self.reference.deregister_rank(r);
                self.shard_reference(r).deregister_rank(r);
                self.forget(r);
                // Events for a missing rank are counted, then the rank comes back empty.
                self.send(r, KvEventData::Cleared);
                self.register(r);
            }
            Op::RemoveWorker { rank } => {
                let w = RANKS[rank].worker;
                let removed = self.index.remove_worker(w);
                assert_eq!(removed, RANKS.iter().filter(|k| k.worker == w).count());
                self.reference.remove_worker(w);
                for reference in &mut self.shard_references {
                    reference.remove_worker(w);
                }
                for r in RANKS.iter().filter(|k| k.worker == w) {
                    self.forget(*r);
                    self.register(*r);
                }
            }
            Op::Stale { rank } => {
                let r = RANKS[rank];
                let id = self.next_id.get(&r).copied().unwrap_or(0);
                let event = KvEvent { rank: r, event_id: id, data: KvEventData::Cleared };
                self.index.apply(&event);
                self.reference.apply(&event);
                self.shard_reference(r).apply(&event);
            }
            Op::Probe { rank, pick, cut } => {
                if let Some(p) = self.probes.get(pick % self.probes.len().max(1)) {
                    let mut q = p.clone();
                    q.truncate(q.len().saturating_sub(cut % 3));
                    q.push(BlockHash(rank as u64 + 100));
                    self.probes.push(q);
                }
            }
        }
    }

    fn check(&self) {
        for q in &self.probes {
            let by_key = self.index.find_matches(q).sorted();
            assert_eq!(by_key, self.reference.find_matches(q), "request {q:?}");
            // The by-slot form, through the identity map, names the same ranks by id
            // (register_rank is idempotent: it returns the id of a rank that is
            // registered, which every scored rank is).
            let ids = MAX_RANKS * self.index.shard_count();
            let identity: Vec<u32> = (0..ids as u32).collect();
            let mut by_id = vec![0u32; ids];
            self.index.find_depths_by_slot(q, &identity, &mut by_id);
            let by_id: Vec<(u32, u32)> =
                by_id.iter().enumerate().filter(|(_, &d)| d > 0).map(|(id, &d)| (id as u32, d)).collect();
            let mut translated: Vec<(RankKey, u32)> = by_id
                .iter()
                .map(|&(id, depth)| {
                    let key = by_key.iter().map(|e| e.0).find(|&k| self.index.register_rank(k) == Ok(RankId(id)));
                    (key.expect("every id scored by id is scored by key"), depth)
                })
                .collect();
            translated.sort_unstable();
            assert_eq!(translated, by_key, "by-id request {q:?}");
            // The by-slot form: slots in reverse id order, one slot left unmapped.
            let bound = by_id.iter().map(|&(id, _)| id as usize + 1).max().unwrap_or(0);
            let slot_of_id: Vec<u32> = (0..bound as u32).map(|id| bound as u32 - 1 - id).collect();
            let mut depths = vec![0u32; bound];
            self.index.find_depths_by_slot(q, &slot_of_id, &mut depths);
            let mut expected = vec![0u32; bound];
            for &(id, depth) in &by_id {
                expected[bound - 1 - id as usize] = depth;
            }
            assert_eq!(depths, expected, "by-slot request {q:?}");
            if bound > 0 {
                let mut short = vec![0u32; bound - 1];
                self.index.find_depths_by_slot(q, &slot_of_id, &mut short);
                assert_eq!(short[..], expected[..bound - 1], "slots past the array are skipped");
            }
        }
        assert_eq!(&self.index.counters(), self.reference.counters());
        let stats = self.index.stats();
        let distinct: usize = self.shard_references.iter().map(ReferenceIndex::distinct_blocks).sum();
        assert_eq!(stats.distinct_blocks, distinct);
        assert_eq!(stats.held_pairs, self.reference.held_pairs());
        assert_eq!(stats.empty_leaves, 0);
        let size = self.index.size();
        assert_eq!((size.nodes, size.ranks), (stats.nodes, stats.ranks));
        assert_eq!(size.held_blocks, self.reference.held_engine_blocks());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn index_equals_reference(ops in prop::collection::vec(op(), 1..60)) {
        check_against_reference(&ops, 1)?;
    }

    /// The same with the ranks spread over 2 or 3 shards.
    #[test]
    fn a_sharded_index_equals_reference(ops in prop::collection::vec(op(), 1..60), shards in 2..4usize) {
        check_against_reference(&ops, shards)?;
    }
}

/// Runs `ops` on an index of `shards` shards and the reference, comparing after each.
fn check_against_reference(ops: &[Op], shards: usize) -> Result<(), TestCaseError> {
    let mut h = Harness::new(shards);
    for op in ops {
        h.run(op);
        h.check();
    }
    // Dropping every rank leaves nothing but the root: no leaked nodes.
    for r in RANKS {
        h.index.deregister_rank(r);
    }
    prop_assert_eq!(h.index.stats().nodes, 0);
    Ok(())
}

#[test]
fn the_test_ranks_spread_over_every_shard_count_tried() {
    for shards in 2..4 {
        let used: std::collections::HashSet<usize> = RANKS.iter().map(|r| r.partition(shards)).collect();
        assert!(used.len() > 1, "{shards} shards: all test ranks in one");
    }
}

#[test]
fn empty_and_unknown_requests() {
    let index = KvIndex::new();
    assert!(index.find_matches(&[]).is_empty());
    assert!(index.find_matches(&[BlockHash(1)]).is_empty());
    let r = RankKey::new(3, 1);
    index.register_rank(r).unwrap();
    let stored = StoredBlock { engine_hash: EngineHash(9), content_hash: BlockHash(1) };
    index.apply(&KvEvent { rank: r, event_id: 1, data: KvEventData::Stored { parent: None, blocks: vec![stored] } });
    assert_eq!(index.find_matches(&[BlockHash(1), BlockHash(2)]).sorted(), vec![(r, 1)]);
    assert!(index.find_matches(&[BlockHash(2)]).is_empty());
}

#[test]
fn rank_limit_is_an_error() {
    let index = KvIndex::new();
    for i in 0..MAX_RANKS as u64 {
        index.register_rank(RankKey::new(i, 0)).unwrap();
    }
    assert_eq!(index.register_rank(RankKey::new(u64::MAX, 0)), Err(IndexError::TooManyRanks));
    // Re-registering an existing rank is idempotent.
    assert_eq!(index.register_rank(RankKey::new(5, 0)), Ok(RankId(5)));
}

#[test]
fn ranks_registered_together_are_live_together_and_stop_at_the_limit() {
    let index = KvIndex::new();
    let first = RankKey::new(0, 0);
    let first_id = index.register_rank(first).unwrap();
    // A batch: the registered rank keeps its id, the new ones get fresh ids, in order.
    let batch: Vec<RankKey> = (0..4).map(|dp| RankKey::new(0, dp)).collect();
    let ids: Vec<RankId> = index.register_ranks(&batch).into_iter().map(Result::unwrap).collect();
    assert_eq!(ids[0], first_id);
    assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), 4, "distinct ids");
    for (dp, &rank) in batch.iter().enumerate() {
        let stored = StoredBlock { engine_hash: EngineHash(dp as u64), content_hash: BlockHash(1) };
        index.apply(&KvEvent { rank, event_id: 1, data: KvEventData::Stored { parent: None, blocks: vec![stored] } });
    }
    let mut all: Vec<(RankKey, u32)> = batch.iter().map(|&r| (r, 1)).collect();
    all.sort_unstable();
    assert_eq!(index.find_matches(&[BlockHash(1)]).sorted(), all, "every rank of the batch is live");

    // Past the limit: the ranks before the full point are registered, the rest refused.
    let fill: Vec<RankKey> = (1..=MAX_RANKS as u64).map(|w| RankKey::new(w, 0)).collect();
    let outcomes = index.register_ranks(&fill);
    let room = MAX_RANKS - batch.len();
    assert!(outcomes[..room].iter().all(Result::is_ok));
    assert!(outcomes[room..].iter().all(|o| *o == Err(IndexError::TooManyRanks)));
    assert_eq!(index.register_rank(fill[room - 1]), outcomes[room - 1], "registered ones stay registered");

    // Deregistered together: they leave every lookup, and only registered ones count.
    assert_eq!(index.deregister_ranks(&[batch[1], batch[2], RankKey::new(u64::MAX, 9)]), 2);
    let left: Vec<(RankKey, u32)> = vec![(batch[0], 1), (batch[3], 1)];
    assert_eq!(index.find_matches(&[BlockHash(1)]).sorted(), left);
}

#[test]
fn a_removal_in_any_order_cuts_each_stretch_once() {
    // Two ranks hold one 8-block node; the second evicts blocks 2..8 in two touching
    // pieces, out of order. One cut must result (nodes 0..2 held by both, 2..8 by the
    // first), as if the blocks had come in chain order.
    let (a, b) = (RankKey::new(1, 0), RankKey::new(2, 0));
    let chain = |base: u64| -> Vec<StoredBlock> {
        (0..8).map(|i| StoredBlock { engine_hash: EngineHash(base + i), content_hash: BlockHash(i) }).collect()
    };
    for order in [[5u64, 6, 7, 2, 3, 4], [4, 3, 2, 7, 6, 5], [2, 7, 3, 6, 4, 5]] {
        let index = KvIndex::new();
        for (rank, base) in [(a, 100), (b, 200)] {
            index.register_rank(rank).unwrap();
            let data = KvEventData::Stored { parent: None, blocks: chain(base) };
            index.apply(&KvEvent { rank, event_id: 1, data });
        }
        assert_eq!(index.stats().nodes, 1);
        let removed = order.iter().map(|&i| EngineHash(200 + i)).collect();
        index.apply(&KvEvent { rank: b, event_id: 2, data: KvEventData::Removed { blocks: removed } });
        assert_eq!(index.stats().nodes, 2, "order {order:?}");
        let request: Vec<BlockHash> = (0..8).map(BlockHash).collect();
        assert_eq!(index.find_matches(&request).sorted(), vec![(a, 8), (b, 2)], "order {order:?}");
    }
}

#[test]
fn a_capacity_hint_reserves_the_rank_map_up_to_a_cap() {
    let index = KvIndex::new();
    let (a, b) = (RankKey::new(1, 0), RankKey::new(2, 0));
    let id = index.register_rank_with_capacity(a, 5000).unwrap();
    // Idempotent, with or without a hint; a bigger hint grows the reservation.
    assert_eq!(index.register_rank(a), Ok(id));
    assert_eq!(index.register_rank_with_capacity(a, 9000), Ok(id));
    let capacity = |rank: RankKey| {
        let w = index.only_shard().writer();
        let id = w.rank_ids[&rank];
        w.ranks[id as usize].as_ref().unwrap().entries.capacity()
    };
    assert!(capacity(a) >= 9000, "{}", capacity(a));
    // A hint in the wrong unit does not allocate without bound.
    index.register_rank_with_capacity(b, usize::MAX).unwrap();
    assert!((writer::MAX_RESERVED_BLOCKS..4 * writer::MAX_RESERVED_BLOCKS).contains(&capacity(b)), "{}", capacity(b));
}
