//! Staged ranks: a dump built under a hidden id replaces a rank's blocks at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;
use crate::event::{KvEventData, StoredBlock};
use crate::ids::EngineHash;

fn chain(contents: &[u64]) -> Vec<BlockHash> {
    contents.iter().map(|&c| BlockHash(c)).collect()
}

/// A `Stored` of `hashes` from the root, engine hashes salted so re-stores differ.
fn stored(hashes: &[BlockHash], salt: u64) -> KvEventData {
    let blocks = hashes
        .iter()
        .enumerate()
        .map(|(i, &h)| StoredBlock { engine_hash: EngineHash(salt << 32 | i as u64), content_hash: h })
        .collect();
    KvEventData::Stored { parent: None, blocks }
}

/// Fills a staged rank with one `Stored` event's chain, as a one-run dump.
fn fill(index: &KvIndex, staged: &StagedRank, data: &KvEventData) {
    let KvEventData::Stored { parent, blocks } = data else { panic!("a dump is stored chains") };
    index.fill_staged(staged, blocks.len(), [(*parent, blocks.iter().copied())], &[]);
}

#[test]
fn staged_blocks_are_invisible_until_promoted_then_replace_the_old_ones() {
    let index = KvIndex::new();
    let rank = RankKey::new(1, 0);
    let other = RankKey::new(2, 0);
    index.register_rank(rank).expect("register");
    index.register_rank(other).expect("register");
    let old = chain(&[1, 2, 3, 4]);
    let new = chain(&[1, 2, 9]);
    let others = chain(&[50, 51]);
    index.apply(&KvEvent { rank, event_id: 7, data: stored(&old, 1) });
    index.apply(&KvEvent { rank: other, event_id: 1, data: stored(&others, 2) });

    let staged = index.stage_rank(rank).expect("stage");
    assert_eq!(staged.rank(), rank);
    fill(&index, &staged, &stored(&new, 3));
    assert_eq!(index.find_matches(&old).get(rank), 4, "staged blocks must not be visible yet");
    assert_eq!(index.find_matches(&new).get(rank), 2);
    assert_eq!(index.find_matches(&new).len(), 1, "no extra rank is reported while staged");

    index.promote_staged(staged);
    assert_eq!(index.find_matches(&old).get(rank), 2);
    assert_eq!(index.find_matches(&new).get(rank), 3);
    assert_eq!(index.find_matches(&others).get(other), 2, "other ranks are untouched");
    // Event ids restart with the new state: a lower id than before is accepted.
    index.apply(&KvEvent { rank, event_id: 1, data: KvEventData::Cleared });
    assert_eq!(index.find_matches(&new).get(rank), 0);

    // The replaced id's blocks go after the grace period; then only `other`'s node remains.
    for _ in 0..4 {
        index.flush_reclamation();
    }
    assert_eq!(index.stats().nodes, 1, "the replaced state was not released");
}

#[test]
fn promoting_an_unregistered_rank_registers_it_and_discard_leaves_no_trace() {
    let index = KvIndex::new();
    let rank = RankKey::new(5, 3);
    let staged = index.stage_rank(rank).expect("stage");
    fill(&index, &staged, &stored(&chain(&[10, 11]), 1));
    let id = index.promote_staged(staged);
    assert_eq!(index.register_rank(rank).expect("idempotent"), id);
    assert_eq!(index.find_matches(&chain(&[10, 11])).get(rank), 2);

    let discarded = index.stage_rank(RankKey::new(6, 0)).expect("stage");
    fill(&index, &discarded, &stored(&chain(&[20, 21]), 2));
    index.discard_staged(discarded);
    assert!(index.find_matches(&chain(&[20, 21])).is_empty());
    for _ in 0..4 {
        index.flush_reclamation();
    }
    assert_eq!(index.stats().ranks, 1);
}

/// A rank flips between two states through stage/promote while readers look up: every
/// lookup must see one state or the other, whole.
#[test]
fn lookups_see_the_old_or_the_new_state_never_a_mix() {
    let index = Arc::new(KvIndex::new());
    let rank = RankKey::new(1, 0);
    index.register_rank(rank).expect("register");
    let query: Vec<BlockHash> = (0..64).map(BlockHash).collect();
    let long = stored(&query, 1);
    // The short state shares the first 16 blocks, then diverges.
    let short_hashes: Vec<BlockHash> = (0..16).map(BlockHash).chain((100..148).map(BlockHash)).collect();
    let short = stored(&short_hashes, 2);
    index.apply(&KvEvent { rank, event_id: 1, data: long.clone() });

    let stop = Arc::new(AtomicBool::new(false));
    let lookups = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (index, stop, lookups, query) = (index.clone(), stop.clone(), lookups.clone(), query.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let depth = index.find_matches(&query).get(rank);
                    assert!(depth == 64 || depth == 16, "torn replacement: depth {depth}");
                    lookups.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for swap in 0..2000 {
        let staged = index.stage_rank(rank).expect("stage");
        let next = if swap % 2 == 0 { &short } else { &long };
        fill(&index, &staged, next);
        index.promote_staged(staged);
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().expect("a reader saw a torn state");
    }
    assert!(lookups.load(Ordering::Relaxed) > 0);
    assert_eq!(index.find_matches(&query).get(rank), 64);
}

/// A replaced rank's old blocks are freed without any further event: two idle
/// reclamation calls (as `kvroute serve`'s timer makes) release its id, and the size the
/// gauges read counts only the live rank from the moment of the promotion.
#[test]
fn a_replaced_rank_is_freed_by_idle_reclamation_alone() {
    let index = KvIndex::new();
    let rank = RankKey::new(1, 0);
    index.register_rank(rank).expect("register");
    let old: Vec<BlockHash> = (0..1000).map(BlockHash).collect();
    index.apply(&KvEvent { rank, event_id: 1, data: stored(&old, 1) });
    let staged = index.stage_rank(rank).expect("stage");
    fill(&index, &staged, &stored(&old[..10], 2));
    index.promote_staged(staged);
    assert_eq!(index.size().held_blocks, 10, "the replaced copy is not counted");
    assert_eq!(index.only_shard().writer().retiring.len(), 1);
    index.flush_reclamation();
    index.flush_reclamation();
    assert!(index.only_shard().writer().retiring.is_empty(), "released with no event applied since");
    assert_eq!(index.stats().held_pairs, 10);
}

#[test]
fn on_a_sharded_index_each_rank_stages_in_its_own_shard_under_ids_unique_across_shards() {
    let index = KvIndex::with_shards(3);
    let ranks: Vec<RankKey> = (0..12).map(|w| RankKey::new(w, 0)).collect();
    let ids: Vec<RankId> = index.register_ranks(&ranks).into_iter().map(|id| id.expect("room")).collect();
    let distinct: HashSet<RankId> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ranks.len(), "ids are unique across shards: {ids:?}");
    assert!((0..3).all(|s| ranks.iter().any(|r| r.partition(3) == s)), "every shard has ranks");
    let shared = chain(&[1, 2, 3]);
    for (i, &rank) in ranks.iter().enumerate() {
        index.apply(&KvEvent { rank, event_id: 1, data: stored(&shared, i as u64) });
    }
    assert_eq!(index.find_matches(&shared).len(), ranks.len());
    // Every rank is replaced by a dump of its own chain; odd ones are discarded instead.
    let mut live = Vec::new();
    for (i, &rank) in ranks.iter().enumerate() {
        let own = chain(&[1, 2, 100 + i as u64]);
        let staged = index.stage_rank(rank).expect("stage");
        fill(&index, &staged, &stored(&own, 50 + i as u64));
        if i % 2 == 0 {
            let id = index.promote_staged(staged);
            assert_eq!(index.register_rank(rank), Ok(id), "the promoted id is the rank's");
            live.push((rank, id, own));
        } else {
            index.discard_staged(staged);
        }
    }
    for (i, &rank) in ranks.iter().enumerate() {
        let expected = if i % 2 == 0 { 2 } else { 3 };
        assert_eq!(index.find_matches(&shared).get(rank), expected, "rank {rank}");
    }
    // By slot: the index's ids (not a shard's own) address the caller's array.
    let bound = live.iter().map(|l| l.1 .0 as usize + 1).max().unwrap();
    let slot_of_id: Vec<u32> = (0..bound as u32).collect();
    for (rank, id, own) in &live {
        let mut depths = vec![0u32; bound];
        index.find_depths_by_slot(own, &slot_of_id, &mut depths);
        assert_eq!(depths[id.0 as usize], 3, "rank {rank} at id {id:?}");
        assert_eq!(depths.iter().filter(|&&d| d == 3).count(), 1, "only {rank} holds its own chain");
    }
    assert_eq!(index.size().ranks, ranks.len());
    assert_eq!(index.deregister_ranks(&ranks), ranks.len());
    index.flush_reclamation();
    assert_eq!(index.stats().nodes, 0);
}
