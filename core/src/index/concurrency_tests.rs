//! Lookups racing writers. Each rank's overlap depends only on that rank's own events, so
//! for every probe we precompute, with one reference per rank, the overlap after each of
//! its events. A lookup reads each rank's applied-event count before and after it runs;
//! every score it returns must lie between the smallest and largest overlap the rank had
//! over that window (one more event may be in flight at either end). A torn read (a
//! stale child table with fresh holders, a half-published split) would fall outside.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;
use crate::event::{KvEventData, StoredBlock};
use crate::ids::EngineHash;
use crate::reference::ReferenceIndex;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn engine(prev: u64, content: u64) -> EngineHash {
    EngineHash((prev ^ content.rotate_left(21)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
}

/// Prompts sharing prefixes: a common system prompt, then families that branch.
fn prompts(rng: &mut Rng) -> Vec<Vec<BlockHash>> {
    let system: Vec<BlockHash> = (0..24).map(|i| BlockHash(1000 + i)).collect();
    (0..16)
        .map(|p| {
            let mut chain = system.clone();
            let family = p % 4;
            chain.extend((0..12).map(|i| BlockHash(5000 + family * 100 + i)));
            let own = 4 + rng.below(30);
            chain.extend((0..own).map(|i| BlockHash(90_000 + p * 1000 + i as u64)));
            chain
        })
        .collect()
}

fn events_for(rank: RankKey, rng: &mut Rng, prompts: &[Vec<BlockHash>], count: usize) -> Vec<KvEvent> {
    let mut held: Vec<EngineHash> = Vec::new();
    let mut events = Vec::new();
    for id in 1..=count as u64 {
        let roll = rng.below(10);
        let data = if roll < 5 || held.is_empty() {
            let chain = &prompts[rng.below(prompts.len())];
            let len = 1 + rng.below(chain.len());
            let mut prev = 0;
            let blocks: Vec<StoredBlock> = chain[..len]
                .iter()
                .map(|c| {
                    let e = engine(prev, c.0);
                    prev = e.0;
                    StoredBlock { engine_hash: e, content_hash: *c }
                })
                .collect();
            for b in &blocks {
                if !held.contains(&b.engine_hash) {
                    held.push(b.engine_hash);
                }
            }
            KvEventData::Stored { parent: None, blocks }
        } else if roll < 9 {
            let n = 1 + rng.below(4);
            let mut gone = Vec::new();
            for _ in 0..n {
                if !held.is_empty() {
                    let i = rng.below(held.len());
                    gone.push(held.swap_remove(i));
                }
            }
            KvEventData::Removed { blocks: gone }
        } else {
            held.clear();
            KvEventData::Cleared
        };
        events.push(KvEvent { rank, event_id: id, data });
    }
    events
}

#[test]
fn lookups_never_see_torn_state() {
    lookups_never_see_torn_state_with(1);
}

/// Two writer threads on two shards apply in parallel (each rank's shard is its own
/// tree and lock); the lookups' guarantees are those of one tree.
#[test]
fn lookups_never_see_torn_state_with_parallel_writers_on_shards() {
    lookups_never_see_torn_state_with(2);
}

/// Two writer threads (each with half the ranks) and two lookup threads on an index of
/// `shards` shards: every lookup credits each rank with an overlap it had at some point
/// between the lookup's start and end, and the quiescent index equals the reference.
fn lookups_never_see_torn_state_with(shards: usize) {
    const RANKS: usize = 8;
    const EVENTS: usize = 400;
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let prompts = prompts(&mut rng);
    let ranks: Vec<RankKey> = (0..RANKS as u64).map(|i| RankKey::new(i / 2, (i % 2) as u32)).collect();
    let streams: Vec<Vec<KvEvent>> = ranks.iter().map(|r| events_for(*r, &mut rng, &prompts, EVENTS)).collect();
    let probes: Vec<Vec<BlockHash>> = prompts.iter().flat_map(|p| [p.clone(), p[..30].to_vec()]).collect();

    // expected[rank][probe][k] = overlap of the rank after its first k events.
    let expected: Vec<Vec<Vec<u32>>> = ranks
        .iter()
        .zip(&streams)
        .map(|(r, events)| {
            let mut reference = ReferenceIndex::new();
            reference.register_rank(*r);
            let mut per_probe = vec![Vec::with_capacity(EVENTS + 1); probes.len()];
            for k in 0..=EVENTS {
                if k > 0 {
                    reference.apply(&events[k - 1]);
                }
                for (p, q) in probes.iter().enumerate() {
                    per_probe[p].push(reference.find_matches(q).first().map_or(0, |x| x.1));
                }
            }
            per_probe
        })
        .collect();

    let index = Arc::new(KvIndex::with_shards(shards));
    for r in &ranks {
        index.register_rank(*r).unwrap();
    }
    let applied: Arc<Vec<AtomicUsize>> = Arc::new((0..RANKS).map(|_| AtomicUsize::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let streams = Arc::new(streams);

    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (index, applied, streams) = (index.clone(), applied.clone(), streams.clone());
            // Writer `w` takes the ranks of partition `w` of 2: with two shards, shard `w`.
            let mine: Vec<usize> = (0..RANKS).filter(|&r| ranks[r].partition(2) == w).collect();
            assert!(!mine.is_empty() && mine.len() < RANKS, "both writers have ranks");
            std::thread::spawn(move || {
                for k in 0..EVENTS {
                    for &r in &mine {
                        index.apply(&streams[r][k]);
                        // Release: a reader that sees the count sees the event applied.
                        applied[r].store(k + 1, Ordering::Release);
                    }
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|t| {
            let (index, applied, done) = (index.clone(), applied.clone(), done.clone());
            let (ranks, probes, expected) = (ranks.clone(), probes.clone(), expected.clone());
            std::thread::spawn(move || {
                let mut lookups = 0u64;
                let mut p = t;
                while !done.load(Ordering::Acquire) || lookups < 1000 {
                    p = (p + 1) % probes.len();
                    // Acquire: pairs with the writers' Release of the counts.
                    let before: Vec<usize> = applied.iter().map(|a| a.load(Ordering::Acquire)).collect();
                    let scores = index.find_matches(&probes[p]);
                    let after: Vec<usize> = applied.iter().map(|a| a.load(Ordering::Acquire)).collect();
                    for (r, key) in ranks.iter().enumerate() {
                        let got = scores.get(*key);
                        let window = &expected[r][p][before[r]..=(after[r] + 1).min(EVENTS)];
                        let (lo, hi) = (*window.iter().min().unwrap(), *window.iter().max().unwrap());
                        assert!(
                            (lo..=hi).contains(&got),
                            "rank {key} probe {p}: got {got}, possible {lo}..={hi} (events {}..={})",
                            before[r],
                            after[r]
                        );
                    }
                    lookups += 1;
                }
                lookups
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Release);
    let total: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(total >= 2000);

    // Quiescent: exactly the reference's answer and size.
    let mut reference = ReferenceIndex::new();
    for r in &ranks {
        reference.register_rank(*r);
    }
    for k in 0..EVENTS {
        for s in streams.iter() {
            reference.apply(&s[k]);
        }
    }
    for q in &probes {
        assert_eq!(index.find_matches(q).sorted(), reference.find_matches(q));
    }
    assert_eq!(index.stats().held_pairs, reference.held_pairs());
    if shards == 1 {
        assert_eq!(index.stats().distinct_blocks, reference.distinct_blocks());
    }
}

#[test]
fn rank_churn_while_looking_up() {
    let index = Arc::new(KvIndex::new());
    let done = Arc::new(AtomicBool::new(false));
    let chain: Vec<BlockHash> = (0..64).map(BlockHash).collect();
    let blocks: Vec<StoredBlock> =
        chain.iter().map(|c| StoredBlock { engine_hash: EngineHash(c.0 + 1), content_hash: *c }).collect();
    let stable = RankKey::new(1, 0);
    index.register_rank(stable).unwrap();
    index.apply(&KvEvent {
        rank: stable,
        event_id: 1,
        data: KvEventData::Stored { parent: None, blocks: blocks.clone() },
    });
    let reader = {
        let (index, done, chain) = (index.clone(), done.clone(), chain.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                let scores = index.find_matches(&chain);
                // The stable rank always holds the whole chain; churning ranks hold it or not.
                assert_eq!(scores.get(stable), 64);
                for (key, depth) in scores.entries {
                    assert!(key == stable || (key.worker.0 >= 100 && (depth == 64 || depth == 0)), "{key}: {depth}");
                }
            }
        })
    };
    for round in 0..300u64 {
        let key = RankKey::new(100 + round % 7, (round % 3) as u32);
        index.register_rank(key).unwrap();
        index.apply(&KvEvent {
            rank: key,
            event_id: 1,
            data: KvEventData::Stored { parent: None, blocks: blocks.clone() },
        });
        if round % 2 == 0 {
            index.remove_worker(key.worker);
        } else {
            index.deregister_rank(key);
        }
    }
    done.store(true, Ordering::Release);
    reader.join().unwrap();
    assert_eq!(index.stats().ranks, 1);
    assert_eq!(index.stats().distinct_blocks, 64);
}
