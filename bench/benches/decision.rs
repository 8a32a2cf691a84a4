//! The whole routing decision, from token ids: hash the prompt, look it up in the index,
//! cost every candidate rank, choose, charge the load (and finish the request after).
//!
//! Fleet: 64 workers x 4 dp ranks (256 ranks), block size 16; prompts of 2048 tokens
//! (128 blocks) behind a shared 512-token system prompt that every rank holds, each rank
//! also holding part of one prompt family, so a lookup reports ~256 ranks, as in the
//! Mooncake replay. While decisions run, another thread applies KV events (a rank stores
//! a 16-block chain, then evicts it) as fast as it can.
//!
//! Prints criterion's mean for `best_worker` (dry and charged) and `route_disaggregated`,
//! then p50 / p99 / p99.9 of 200k timed `best_worker` calls under the event load, and the
//! event rate the writer sustained meanwhile.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use hdrhistogram::Histogram;
use kvroute_bench::synthetic_chain::stored_chain;
use kvroute_core::hashing::BlockHasher;
use kvroute_core::route::{PdOptions, Prompt, RouteOptions, Router, RouterConfig, WorkerSpec};
use kvroute_core::{EngineHash, KvEvent, KvEventData, RankKey, WorkerId};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WORKERS: u64 = 64;
const DP: u32 = 4;
const BS: u32 = 16;
const PROMPT_TOKENS: u32 = 2048;
const SHARED_TOKENS: u32 = 512;
const FAMILIES: u32 = 64;

fn prompt(family: u32, variant: u32) -> Vec<u32> {
    (0..PROMPT_TOKENS)
        .map(|i| {
            if i < SHARED_TOKENS {
                i
            } else if i < 1024 {
                (family << 16 | i).wrapping_mul(2_654_435_761)
            } else {
                (family << 24 ^ variant << 12 ^ i).wrapping_mul(2_246_822_519)
            }
        })
        .collect()
}

/// A router whose ranks each hold the shared prefix plus part of one prompt family.
fn populated(specs: impl Iterator<Item = WorkerSpec>) -> (Arc<Router>, Vec<RankKey>) {
    let router = Router::new(RouterConfig::default(), Arc::new(|| 0)).expect("default config");
    let hasher = BlockHasher::new(BS as usize).expect("block size");
    let mut ranks = Vec::new();
    for spec in specs {
        for r in spec.dp_start..spec.dp_start + spec.dp_size {
            ranks.push(RankKey { worker: spec.worker, dp_rank: kvroute_core::DpRank(r) });
        }
        router.add_worker(spec).expect("register");
    }
    for (i, &rank) in ranks.iter().enumerate() {
        let hashes = hasher.hash_blocks(&prompt(i as u32 % FAMILIES, 0));
        let depth = 32 + (i * 7) % 96;
        let blocks = stored_chain(&hashes[..depth], i as u64);
        router.apply_event(&KvEvent { rank, event_id: 1, data: KvEventData::Stored { parent: None, blocks } });
    }
    (Arc::new(router), ranks)
}

/// Applies store-then-evict event pairs until `stop`; returns block events applied.
fn churn(router: Arc<Router>, ranks: Vec<RankKey>, stop: Arc<AtomicBool>, applied: Arc<AtomicU64>) {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut ids = vec![1u64; ranks.len()];
    while !stop.load(Ordering::Relaxed) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % ranks.len() as u64) as usize;
        let hashes: Vec<kvroute_core::BlockHash> =
            (0..16u64).map(|j| kvroute_core::BlockHash(x.rotate_left(j as u32 * 3) ^ j)).collect();
        let blocks = stored_chain(&hashes, x);
        let engine: Vec<EngineHash> = blocks.iter().map(|b| b.engine_hash).collect();
        ids[i] += 1;
        router.apply_event(&KvEvent {
            rank: ranks[i],
            event_id: ids[i],
            data: KvEventData::Stored { parent: None, blocks },
        });
        ids[i] += 1;
        router.apply_event(&KvEvent {
            rank: ranks[i],
            event_id: ids[i],
            data: KvEventData::Removed { blocks: engine },
        });
        applied.fetch_add(32, Ordering::Relaxed);
    }
}

struct Churn {
    stop: Arc<AtomicBool>,
    applied: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Churn {
    fn start(router: &Arc<Router>, ranks: &[RankKey]) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let applied = Arc::new(AtomicU64::new(0));
        let (r, k, s, a) = (router.clone(), ranks.to_vec(), stop.clone(), applied.clone());
        let handle = Some(std::thread::spawn(move || churn(r, k, s, a)));
        Churn { stop, applied, handle, started: Instant::now() }
    }

    /// Stops the writer; returns block events per second it applied.
    fn stop(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("churn thread");
        }
        self.applied.load(Ordering::Relaxed) as f64 / self.started.elapsed().as_secs_f64()
    }
}

fn aggregated() -> (Arc<Router>, Vec<RankKey>) {
    populated((0..WORKERS).map(|w| WorkerSpec::new(WorkerId(w), DP, BS)))
}

fn bench_decision(c: &mut Criterion) {
    let (router, ranks) = aggregated();
    let prompts: Vec<Vec<u32>> = (0..FAMILIES).map(|f| prompt(f, 1)).collect();
    let churn = Churn::start(&router, &ranks);
    let mut group = c.benchmark_group("decision");
    let mut i = 0usize;
    group.bench_function("best_worker/dry/256 ranks/2048 tokens", |b| {
        let dry = RouteOptions { dry_run: true, ..Default::default() };
        b.iter(|| {
            i += 1;
            black_box(router.best_worker(Prompt::Tokens(&prompts[i % prompts.len()]), &dry).expect("route"))
        })
    });
    group.bench_function("best_worker+finish/256 ranks/2048 tokens", |b| {
        b.iter(|| {
            i += 1;
            let d = router.best_worker(Prompt::Tokens(&prompts[i % prompts.len()]), &RouteOptions::default());
            router.finish(d.expect("route").request.expect("charged"))
        })
    });
    group.finish();
    let rate = churn.stop();
    println!("  (writer meanwhile: {:.1}M block events/s)", rate / 1e6);

    // Disaggregated: 32 prefill workers x 4 and 32 decode workers x 2.
    let specs = (0..32u64)
        .map(|w| WorkerSpec::prefill(WorkerId(w), 4, BS, "10.0.0.1", Some(8998)))
        .chain((32..64u64).map(|w| WorkerSpec::decode(WorkerId(w), 2, BS)));
    let (pd, pd_ranks) = populated(specs);
    let churn = Churn::start(&pd, &pd_ranks);
    let mut group = c.benchmark_group("decision");
    group.bench_function("route_disaggregated+finish/128 prefill + 64 decode ranks/2048 tokens", |b| {
        b.iter(|| {
            i += 1;
            let d = pd.route_disaggregated(Prompt::Tokens(&prompts[i % prompts.len()]), &PdOptions::default());
            pd.finish(d.expect("route").request().expect("charged"))
        })
    });
    group.finish();
    churn.stop();
}

/// p50 / p99 / p99.9 of timed decisions while the writer runs.
fn percentiles() {
    let (router, ranks) = aggregated();
    let prompts: Vec<Vec<u32>> = (0..FAMILIES).map(|f| prompt(f, 1)).collect();
    let churn = Churn::start(&router, &ranks);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds");
    let calls = 200_000;
    for i in 0..calls {
        let tokens = &prompts[i % prompts.len()];
        let t0 = Instant::now();
        let d = router.best_worker(Prompt::Tokens(tokens), &RouteOptions::default());
        let elapsed = t0.elapsed();
        histogram.saturating_record(elapsed.as_nanos() as u64);
        router.finish(d.expect("route").request.expect("charged"));
    }
    let rate = churn.stop();
    println!(
        "decision latency, best_worker from 2048 tokens, 256 ranks, {calls} calls under {:.1}M block events/s: p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
        rate / 1e6,
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_decision
}

fn main() {
    benches();
    percentiles();
    Criterion::default().configure_from_args().final_summary();
}
