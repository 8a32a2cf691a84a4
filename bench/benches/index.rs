//! Criterion benches of the index alone:
//! - `find_matches/ranks=R/blocks=N`: lookup of a 128-block request (2048 tokens at block
//!   size 16) that every holder of its chain matches in full, on an index of N stored
//!   blocks spread over R ranks (1 to 1024), all chains behind a shared 32-block prefix;
//! - `find_matches_miss`: the same request diverging after the shared prefix;
//! - `apply`: block events per second for a rank storing then evicting a 128-block chain;
//! - `apply_two_writers/shards=S`: the same on two threads at once, each its own rank (in
//!   different partitions), on an index of S shards: with 1, both writers take turns on
//!   the one writer lock; with 2, each has a tree of its own.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvroute_bench::synthetic_chain::stored_chain;
use kvroute_core::{BlockHash, EngineHash, KvEvent, KvEventData, KvIndex, RankKey, StoredBlock};

const CHAIN: usize = 128;
const SHARED: usize = 32;

fn chain(i: u64) -> Vec<BlockHash> {
    (0..CHAIN as u64)
        .map(|j| {
            if (j as usize) < SHARED {
                BlockHash(j + 1)
            } else {
                BlockHash((i << 20 | j).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            }
        })
        .collect()
}

/// An index holding `chains` chains round-robin over `ranks` ranks (each chain on
/// `ranks.min(4)` consecutive ranks, as a popular prompt is on several).
fn build(ranks: u64, chains: u64) -> KvIndex {
    build_sharded(ranks, chains, 1)
}

/// [`build`] on an index of `shards` shards.
fn build_sharded(ranks: u64, chains: u64, shards: usize) -> KvIndex {
    let index = KvIndex::with_shards(shards);
    let keys: Vec<RankKey> = (0..ranks).map(|r| RankKey::new(r / 4, (r % 4) as u32)).collect();
    for k in &keys {
        index.register_rank(*k).expect("within MAX_RANKS");
    }
    let mut ids = vec![0u64; keys.len()];
    for c in 0..chains {
        let blocks = stored_chain(&chain(c), 7);
        for copy in 0..ranks.min(4) {
            let r = ((c + copy) % ranks) as usize;
            ids[r] += 1;
            let data = KvEventData::Stored { parent: None, blocks: blocks.clone() };
            index.apply(&KvEvent { rank: keys[r], event_id: ids[r], data });
        }
    }
    index
}

fn find_matches(c: &mut Criterion) {
    let mut group = c.benchmark_group("find_matches");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for ranks in [1u64, 16, 256, 1024] {
        for blocks in [10_000u64, 100_000, 1_000_000] {
            let index = build(ranks, blocks / CHAIN as u64);
            let hit = chain(3);
            group.throughput(Throughput::Elements(CHAIN as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("ranks={ranks}"), format!("blocks={blocks}")),
                &hit,
                |b, q| b.iter(|| black_box(index.find_matches(black_box(q)))),
            );
            if blocks == 100_000 {
                let miss = chain(u64::MAX >> 24);
                group.bench_with_input(BenchmarkId::new(format!("miss/ranks={ranks}"), blocks), &miss, |b, q| {
                    b.iter(|| black_box(index.find_matches(black_box(q))))
                });
            }
        }
    }
    group.finish();
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for ranks in [16u64, 256] {
        let index = build(ranks, 2000);
        let rank = RankKey::new(0, 0);
        let blocks = stored_chain(&chain(1 << 30), 99);
        let removed: Vec<EngineHash> = blocks.iter().rev().map(|b| b.engine_hash).collect();
        let mut id = 1u64 << 40;
        group.throughput(Throughput::Elements(2 * CHAIN as u64));
        group.bench_function(BenchmarkId::new("store_then_evict_128", format!("ranks={ranks}")), |b| {
            b.iter(|| {
                id += 2;
                let data = KvEventData::Stored { parent: None, blocks: blocks.clone() };
                index.apply(&KvEvent { rank, event_id: id, data });
                index.apply(&KvEvent {
                    rank,
                    event_id: id + 1,
                    data: KvEventData::Removed { blocks: removed.clone() },
                });
            })
        });
    }
    group.finish();
}

fn apply_two_writers(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_two_writers");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for shards in [1usize, 2] {
        let index = build_sharded(256, 2000, shards);
        // Two ranks of the built index in different partitions of 2 (so different shards).
        let keys: Vec<RankKey> = (0..256u64).map(|r| RankKey::new(r / 4, (r % 4) as u32)).collect();
        let first = keys[0];
        let second = *keys.iter().find(|k| k.partition(2) != first.partition(2)).expect("both partitions");
        let writers: Vec<(RankKey, Vec<StoredBlock>)> = [first, second]
            .into_iter()
            .enumerate()
            .map(|(w, rank)| (rank, stored_chain(&chain((1 << 30) + w as u64), 99 + w as u64)))
            .collect();
        // Each writer's next event id, above the built ones, kept across samples.
        let next_ids = [AtomicU64::new(1 << 40), AtomicU64::new(1 << 40)];
        group.throughput(Throughput::Elements(2 * 2 * CHAIN as u64));
        group.bench_function(BenchmarkId::new("store_then_evict_128", format!("shards={shards}")), |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                std::thread::scope(|scope| {
                    for ((rank, blocks), next_id) in writers.iter().zip(&next_ids) {
                        let index = &index;
                        scope.spawn(move || {
                            let removed: Vec<EngineHash> = blocks.iter().rev().map(|b| b.engine_hash).collect();
                            let mut id = next_id.fetch_add(2 * iters, Ordering::Relaxed);
                            for _ in 0..iters {
                                id += 2;
                                let data = KvEventData::Stored { parent: None, blocks: blocks.clone() };
                                index.apply(&KvEvent { rank: *rank, event_id: id, data });
                                let data = KvEventData::Removed { blocks: removed.clone() };
                                index.apply(&KvEvent { rank: *rank, event_id: id + 1, data });
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
        let counters = index.counters();
        assert_eq!(counters.stale_event + counters.unknown_parent + counters.unknown_remove, 0, "{counters:?}");
    }
    group.finish();
}

criterion_group!(benches, find_matches, apply, apply_two_writers);
criterion_main!(benches);
