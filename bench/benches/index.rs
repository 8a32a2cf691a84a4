//! Criterion benches of the index alone:
//! - `find_matches/ranks=R/blocks=N`: lookup of a 128-block request (2048 tokens at block
//!   size 16) that every holder of its chain matches in full, on an index of N stored
//!   blocks spread over R ranks (1 to 1024), all chains behind a shared 32-block prefix;
//! - `find_matches_miss`: the same request diverging after the shared prefix;
//! - `apply`: block events per second for a rank storing then evicting a 128-block chain.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvroute_bench::synthetic_chain::stored_chain;
use kvroute_core::{BlockHash, EngineHash, KvEvent, KvEventData, KvIndex, RankKey};

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
    let index = KvIndex::new();
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

criterion_group!(benches, find_matches, apply);
criterion_main!(benches);
