//! Fuzzes the index against the reference model: the input bytes are read as a stream of
//! operations (stores under known, unknown or no parents, removals, clears, stale ids,
//! rank removal and re-registration, lookups) over 4 ranks and a small content alphabet
//! so that chains share prefixes. After every operation each probed lookup, the counters
//! and the sizes must equal the reference's.
//! Run: `cargo +nightly fuzz run index_vs_reference` (from the repo root).
#![no_main]

use kvroute_core::event::{KvEvent, KvEventData, StoredBlock};
use kvroute_core::ids::{BlockHash, EngineHash, RankKey};
use kvroute_core::reference::ReferenceIndex;
use kvroute_core::KvIndex;
use libfuzzer_sys::fuzz_target;

const RANKS: [RankKey; 4] = [RankKey::new(1, 0), RankKey::new(1, 1), RankKey::new(2, 0), RankKey::new(3, 5)];

fuzz_target!(|data: &[u8]| {
    let index = KvIndex::new();
    let mut reference = ReferenceIndex::new();
    for r in RANKS {
        index.register_rank(r).unwrap();
        reference.register_rank(r);
    }
    let mut ids = [0u64; 4];
    let mut probes: Vec<Vec<BlockHash>> = Vec::new();
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let slot = (op & 3) as usize;
        let rank = RANKS[slot];
        let arg = bytes.next().unwrap_or(0);
        ids[slot] += 1;
        let data = match op >> 2 & 7 {
            0..=2 => {
                let len = 1 + (arg & 7) as usize;
                let parent = match arg >> 3 & 3 {
                    0 | 1 => None,
                    p => Some(EngineHash(bytes.next().unwrap_or(0) as u64 % 24 + p as u64)),
                };
                let mut prev = parent.map_or(0, |p| p.0);
                let mut path = Vec::new();
                let blocks = (0..len)
                    .map(|_| {
                        let c = BlockHash(bytes.next().unwrap_or(0) as u64 % 3);
                        // Small engine-hash space: duplicates and copies happen.
                        prev = (prev * 3 + c.0 + 1) % 24;
                        path.push(c);
                        StoredBlock { engine_hash: EngineHash(prev), content_hash: c }
                    })
                    .collect();
                probes.push(path);
                KvEventData::Stored { parent, blocks }
            }
            3 | 4 => KvEventData::Removed {
                blocks: (0..1 + (arg & 3)).map(|i| EngineHash((arg as u64 >> 2) % 24 + i as u64)).collect(),
            },
            5 => KvEventData::Cleared,
            6 => {
                ids[slot] = ids[slot].saturating_sub(2); // a stale or repeated id
                KvEventData::Cleared
            }
            _ => {
                index.deregister_rank(rank);
                reference.deregister_rank(rank);
                index.register_rank(rank).unwrap();
                reference.register_rank(rank);
                ids[slot] = 0;
                continue;
            }
        };
        let event = KvEvent { rank, event_id: ids[slot], data };
        index.apply(&event);
        reference.apply(&event);
        for q in &probes {
            assert_eq!(index.find_matches(q).sorted(), reference.find_matches(q));
        }
        assert_eq!(&index.counters(), reference.counters());
        let stats = index.stats();
        assert_eq!(stats.distinct_blocks, reference.distinct_blocks());
        assert_eq!(stats.held_pairs, reference.held_pairs());
        assert_eq!(stats.empty_leaves, 0);
    }
});
