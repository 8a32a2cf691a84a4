//! Block-hashing throughput, in bytes of token data (4 bytes per token), over a 64K-token
//! input at block sizes 16 and 512:
//! - `kv64_simd`: `BlockHasher::hash_blocks_into` (AVX2 when available),
//! - `kv64_portable`: the scalar path of the same hash,
//! - `xxh3_compat`: our XXH3 (Dynamo/SGLang-compatible scheme),
//! - `xxhash_rust_per_block`: `xxhash_rust::xxh3::xxh3_64_with_seed` per block, the
//!   baseline the Kv64 design has to beat by 2x.
//!
//! Run: `cargo bench -p kvroute-bench --bench hashing`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvroute_core::hashing::{BlockHasher, HashScheme};
use kvroute_core::BlockHash;

const TOKENS: usize = 64 * 1024;

fn tokens() -> Vec<u32> {
    // Deterministic vocabulary-sized ids (LCG).
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    (0..TOKENS)
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((s >> 33) % 150_000) as u32
        })
        .collect()
}

fn bench_hashing(c: &mut Criterion) {
    let tokens = tokens();
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    for bs in [16usize, 512] {
        let mut group = c.benchmark_group(format!("hashing/bs{bs}"));
        group.throughput(Throughput::Bytes((TOKENS * 4) as u64));
        group.warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(2));
        group.sample_size(50);

        let kv64 = BlockHasher::new(bs).expect("non-zero block size");
        let compat = BlockHasher::with_scheme(bs, HashScheme::Xxh3Compat).expect("non-zero block size");
        let mut out: Vec<BlockHash> = Vec::with_capacity(TOKENS / bs);

        group.bench_function(BenchmarkId::new("kv64_simd", bs), |b| {
            b.iter(|| {
                out.clear();
                kv64.hash_blocks_into(black_box(&tokens), &mut out);
                black_box(&out);
            })
        });
        group.bench_function(BenchmarkId::new("kv64_portable", bs), |b| {
            b.iter(|| {
                out.clear();
                kv64.hash_blocks_portable_into(black_box(&tokens), &mut out);
                black_box(&out);
            })
        });
        group.bench_function(BenchmarkId::new("xxh3_compat", bs), |b| {
            b.iter(|| {
                out.clear();
                compat.hash_blocks_into(black_box(&tokens), &mut out);
                black_box(&out);
            })
        });
        group.bench_function(BenchmarkId::new("xxhash_rust_per_block", bs), |b| {
            b.iter(|| {
                out.clear();
                for chunk in black_box(&bytes).chunks_exact(bs * 4) {
                    out.push(BlockHash(xxhash_rust::xxh3::xxh3_64_with_seed(chunk, 1337)));
                }
                black_box(&out);
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench_hashing);
criterion_main!(benches);
