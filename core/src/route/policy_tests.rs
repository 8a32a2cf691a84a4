//! Each policy picks what its rule says, checked on fleets where the rule's answer is
//! known: overlaps set by events, loads by pinned routes.

use std::collections::HashSet;
use std::sync::Arc;

use super::*;
use crate::event::{KvEvent, KvEventData, StoredBlock};
use crate::ids::{BlockHash, DpRank, EngineHash, RankKey, WorkerId};

const BS: u32 = 16;

fn key(w: u64, r: u32) -> RankKey {
    RankKey { worker: WorkerId(w), dp_rank: DpRank(r) }
}

/// Two workers x 2 ranks under `policy`.
fn fleet(policy: Policy) -> Router {
    let config = RouterConfig { policy, ..RouterConfig::default() };
    let router = Router::new(config, Arc::new(|| 1_000u64)).expect("router");
    for w in 0..2 {
        router.add_worker(WorkerSpec::new(WorkerId(w), 2, BS)).expect("worker");
    }
    router
}

fn blocks(seed: u64, n: usize) -> Vec<BlockHash> {
    (0..n as u64).map(|i| BlockHash((seed << 32) ^ (i + 1).wrapping_mul(0x9E37_79B9))).collect()
}

/// `rank` stores the first `depth` of `prompt`, plus `extra` unrelated blocks.
fn hold(router: &Router, rank: RankKey, prompt: &[BlockHash], depth: usize, extra: usize) {
    let mut chain: Vec<BlockHash> = prompt[..depth].to_vec();
    let stored = |chain: &[BlockHash], salt: u64| {
        chain.iter().map(|&h| StoredBlock { engine_hash: EngineHash(h.0 ^ salt), content_hash: h }).collect()
    };
    if !chain.is_empty() {
        let event =
            KvEvent { rank, event_id: 0, data: KvEventData::Stored { parent: None, blocks: stored(&chain, 7) } };
        router.apply_events_in(
            StorageTier::Device,
            &[KvEvent { event_id: crate::ingest::allocate_event_ids(1), ..event }],
        );
    }
    if extra > 0 {
        chain = blocks(0xEE00 + u64::from(rank.dp_rank.0) + rank.worker.0 * 10, extra);
        let event =
            KvEvent { rank, event_id: 0, data: KvEventData::Stored { parent: None, blocks: stored(&chain, 9) } };
        router.apply_events_in(
            StorageTier::Device,
            &[KvEvent { event_id: crate::ingest::allocate_event_ids(1), ..event }],
        );
    }
}

/// Charges `n` requests of `blocks` to `rank`.
fn charge(router: &Router, rank: RankKey, n: usize, prompt: &[BlockHash]) {
    for _ in 0..n {
        let options = RouteOptions { rank: Some(rank), ..RouteOptions::default() };
        router.best_worker(Prompt::Blocks(prompt), &options).expect("pinned route");
    }
}

fn dry(router: &Router, prompt: &[BlockHash]) -> RankKey {
    let d = router.best_worker(Prompt::Blocks(prompt), &RouteOptions { dry_run: true, ..RouteOptions::default() });
    let d = d.expect("decision");
    RankKey { worker: d.worker, dp_rank: d.dp_rank }
}

fn cache_aware() -> Policy {
    Policy::CacheAware(CacheAwareThresholds::default())
}

#[test]
fn cache_aware_follows_the_longest_prefix_above_the_threshold_despite_load() {
    let router = fleet(cache_aware());
    let prompt = blocks(1, 8);
    hold(&router, key(1, 1), &prompt, 4, 0); // half the prompt: above 0.3
    charge(&router, key(1, 1), 30, &blocks(2, 2)); // busier, but not imbalanced past 64
    for _ in 0..20 {
        assert_eq!(dry(&router, &prompt), key(1, 1));
    }
}

#[test]
fn cache_aware_below_the_threshold_picks_the_least_loaded() {
    let router = fleet(cache_aware());
    let prompt = blocks(1, 8);
    hold(&router, key(0, 0), &prompt, 2, 50); // 2 of 8 blocks = 0.25: below 0.3
    hold(&router, key(0, 1), &[], 0, 30);
    hold(&router, key(1, 0), &[], 0, 10); // the smallest cache, but the busiest
    hold(&router, key(1, 1), &[], 0, 20);
    charge(&router, key(0, 0), 2, &blocks(2, 2));
    charge(&router, key(0, 1), 1, &blocks(2, 2)); // the least loaded
    charge(&router, key(1, 0), 3, &blocks(2, 2));
    charge(&router, key(1, 1), 2, &blocks(2, 2));
    for _ in 0..20 {
        assert_eq!(dry(&router, &prompt), key(0, 1));
    }
}

#[test]
fn cache_aware_breaks_a_tie_of_longest_prefixes_by_load() {
    let router = fleet(cache_aware());
    let prompt = blocks(1, 8);
    hold(&router, key(0, 0), &prompt, 6, 0); // 6 of 8: above 0.3 on two ranks
    hold(&router, key(1, 1), &prompt, 6, 0);
    charge(&router, key(0, 0), 3, &blocks(2, 2));
    charge(&router, key(1, 1), 1, &blocks(2, 2)); // the less loaded holder
    for _ in 0..20 {
        assert_eq!(dry(&router, &prompt), key(1, 1));
    }
}

#[test]
fn cache_aware_goes_by_load_when_imbalanced_past_both_thresholds() {
    let router = fleet(cache_aware());
    let prompt = blocks(1, 8);
    hold(&router, key(0, 0), &prompt, 8, 0);
    // 65 requests on the holder, 64 on two others, none on one: 65 - 0 > 64 and 65 > 1.5 * 0.
    charge(&router, key(0, 0), 65, &blocks(3, 1));
    charge(&router, key(0, 1), 64, &blocks(3, 1));
    charge(&router, key(1, 1), 64, &blocks(3, 1));
    assert_eq!(dry(&router, &prompt), key(1, 0));
    // One request on the idlest: 65 - 1 = 64 is not past the threshold; the prefix wins.
    charge(&router, key(1, 0), 1, &blocks(3, 1));
    assert_eq!(dry(&router, &prompt), key(0, 0));
}

#[test]
fn weighted_sums_prefix_queue_and_kv_scores() {
    let router = fleet(Policy::Weighted(ScorerWeights::default()));
    let prompt = blocks(1, 8);
    hold(&router, key(0, 1), &prompt, 8, 0);
    // Full prefix (3) + busiest queue (0) + most KV (0) = 3 against an idle rank's 0 + 2 + 2 = 4.
    charge(&router, key(0, 1), 2, &blocks(4, 4));
    charge(&router, key(1, 0), 1, &blocks(4, 1));
    charge(&router, key(1, 1), 1, &blocks(4, 1));
    assert_eq!(dry(&router, &prompt), key(0, 0));
    // Equal loads: the prefix decides.
    let router = fleet(Policy::Weighted(ScorerWeights::default()));
    hold(&router, key(0, 1), &prompt, 8, 0);
    assert_eq!(dry(&router, &prompt), key(0, 1));
}

#[test]
fn predicted_ttft_weighs_queued_prefill_against_the_cached_prefix() {
    // Queue and own tokens alone first.
    let router =
        fleet(Policy::PredictedTtft(TtftWeights { recompute: 1.0, decode: 0.0, pressure: 0.0, cache_blocks: None }));
    let prompt = blocks(1, 8); // 128 tokens
    hold(&router, key(0, 0), &prompt, 8, 0); // all cached: 0 uncached tokens
    charge(&router, key(0, 0), 1, &blocks(5, 10)); // but 160 tokens queued there
    charge(&router, key(0, 1), 1, &blocks(5, 2)); // 32 queued + 128 = 160: a tie with (0, 0)
    charge(&router, key(1, 0), 1, &blocks(5, 3));
    charge(&router, key(1, 1), 1, &blocks(5, 3));
    // 160 tokens either way; (0, 1) holds 2 decode blocks against (0, 0)'s 10.
    let picks: HashSet<RankKey> = (0..64).map(|_| dry(&router, &prompt)).collect();
    assert_eq!(picks, HashSet::from([key(0, 1)]), "ties by tokens, then fewer decode blocks win");
    // Recompute 3, decode 1: 64 queued + 0 uncached + 64 decode tokens = 128 beat 3 * 128 elsewhere.
    let weights = TtftWeights { recompute: 3.0, decode: 1.0, pressure: 0.0, cache_blocks: None };
    let router = fleet(Policy::PredictedTtft(weights));
    hold(&router, key(0, 0), &prompt, 8, 0);
    charge(&router, key(0, 0), 1, &blocks(5, 4));
    assert_eq!(dry(&router, &prompt), key(0, 0));
    // Half cached behind 160 queued tokens: 160 + 3 * 64 + 160 = 512 against 3 * 128 = 384.
    let router = fleet(Policy::PredictedTtft(weights));
    hold(&router, key(0, 0), &prompt, 4, 0);
    charge(&router, key(0, 0), 1, &blocks(5, 10));
    for _ in 0..20 {
        assert_ne!(dry(&router, &prompt), key(0, 0));
    }
}

#[test]
fn predicted_ttft_prices_new_blocks_by_how_full_the_cache_is() {
    // Nothing cached anywhere; (0, 0)'s cache is full (20 of 20 blocks), the others empty.
    let weights = TtftWeights { recompute: 1.0, decode: 0.0, pressure: 1.0, cache_blocks: Some(20) };
    let prompt = blocks(1, 8); // 128 tokens
    let setup = |weights: TtftWeights, queued_blocks: usize| {
        let router = fleet(Policy::PredictedTtft(weights));
        hold(&router, key(0, 0), &prompt, 0, 20);
        for rank in [key(0, 1), key(1, 0), key(1, 1)] {
            charge(&router, rank, 1, &blocks(5, queued_blocks));
        }
        router
    };
    // Full cache: 0 queued + (1 + 1) * 128 = 256; empty ones: 96 queued + 128 = 224.
    let router = setup(weights, 6);
    for _ in 0..20 {
        assert_ne!(dry(&router, &prompt), key(0, 0), "an empty cache behind a short queue");
    }
    // 144 queued + 128 = 272 on the empty ones: the full cache's 256 is sooner.
    assert_eq!(dry(&setup(weights, 9), &prompt), key(0, 0));
    // Half full (20 of 40): 0 + 1.5 * 128 = 192 against 224.
    assert_eq!(dry(&setup(TtftWeights { cache_blocks: Some(40), ..weights }, 6), &prompt), key(0, 0));
    // The cache size unknown, or no pressure: the idle rank wins.
    assert_eq!(dry(&setup(TtftWeights { cache_blocks: None, ..weights }, 6), &prompt), key(0, 0));
    assert_eq!(dry(&setup(TtftWeights { pressure: 0.0, ..weights }, 6), &prompt), key(0, 0));
    assert!(Policy::PredictedTtft(TtftWeights { cache_blocks: Some(0), ..weights }).validate().is_err());
}

#[test]
fn predicted_ttft_counts_running_requests_up_to_the_cache_size() {
    // The prompt is cached on (0, 0), which also runs a request of 10 KV blocks whose
    // prefill is done; every other rank is idle and holds nothing.
    let prompt = blocks(1, 8); // 128 tokens
    let weights = TtftWeights { recompute: 1.0, decode: 1.0, pressure: 0.0, cache_blocks: None };
    let setup = |weights: TtftWeights| {
        let router = fleet(Policy::PredictedTtft(weights));
        hold(&router, key(0, 0), &prompt, 8, 0);
        let options = RouteOptions { rank: Some(key(0, 0)), ..RouteOptions::default() };
        let running = router.best_worker(Prompt::Blocks(&blocks(5, 10)), &options).expect("pinned route");
        assert!(router.prefill_done(running.request.expect("a routed request has an id")));
        router
    };
    // Uncapped: 10 x 16 = 160 decode tokens on (0, 0) against 128 uncached elsewhere.
    let router = setup(weights);
    for _ in 0..20 {
        assert_ne!(dry(&router, &prompt), key(0, 0), "the running request's KV outweighs the prefix");
    }
    // A 4-block cache holds at most 4 of those blocks: 64 tokens, under 128.
    let router = setup(TtftWeights { cache_blocks: Some(4), ..weights });
    assert_eq!(dry(&router, &prompt), key(0, 0));
}

#[test]
fn largest_overlap_least_loaded_round_robin_and_random() {
    let prompt = blocks(1, 8);
    let router = fleet(Policy::LargestOverlap);
    hold(&router, key(1, 0), &prompt, 3, 0);
    hold(&router, key(1, 1), &prompt, 5, 0);
    charge(&router, key(1, 1), 100, &blocks(6, 1));
    assert_eq!(dry(&router, &prompt), key(1, 1), "overlap first, load only among equals");

    let router = fleet(Policy::LeastLoaded);
    hold(&router, key(1, 1), &prompt, 8, 0);
    for (rank, n) in [(key(0, 0), 2), (key(0, 1), 1), (key(1, 1), 3)] {
        charge(&router, rank, n, &blocks(6, 1));
    }
    assert_eq!(dry(&router, &prompt), key(1, 0));

    let router = fleet(Policy::RoundRobin);
    let picks: Vec<RankKey> = (0..8).map(|_| dry(&router, &prompt)).collect();
    assert_eq!(&picks[..4], &[key(0, 0), key(0, 1), key(1, 0), key(1, 1)]);
    assert_eq!(picks[..4], picks[4..]);

    let router = fleet(Policy::Random);
    hold(&router, key(0, 0), &prompt, 8, 0);
    let picks: HashSet<RankKey> = (0..200).map(|_| dry(&router, &prompt)).collect();
    assert_eq!(picks.len(), 4, "random ignores the prefix");
}

#[test]
fn held_blocks_follow_stores_removals_and_clears() {
    let router = fleet(Policy::Cost);
    let prompt = blocks(1, 6);
    hold(&router, key(0, 1), &prompt, 6, 4);
    let held = |router: &Router| {
        let fleet = router.fleet.load();
        fleet.ranks.iter().find(|s| s.key == key(0, 1)).map(|s| s.load.held_blocks()).unwrap()
    };
    assert_eq!(held(&router), 10);
    let removed = KvEventData::Removed { blocks: vec![EngineHash(prompt[5].0 ^ 7), EngineHash(prompt[4].0 ^ 7)] };
    let event = KvEvent { rank: key(0, 1), event_id: crate::ingest::allocate_event_ids(1), data: removed };
    router.apply_event(&event);
    assert_eq!(held(&router), 8);
    let clear = KvEvent { rank: key(0, 1), event_id: crate::ingest::allocate_event_ids(1), data: KvEventData::Cleared };
    router.apply_event(&clear);
    assert_eq!(held(&router), 0);
}

#[test]
fn policies_have_names_and_bad_parameters_are_refused() {
    for policy in Policy::ALL {
        assert_eq!(Policy::from_name(policy.name()), Some(policy));
    }
    assert_eq!(Policy::from_name("nope"), None);
    let bad = Policy::CacheAware(CacheAwareThresholds { cache_threshold: f64::NAN, ..Default::default() });
    let config = RouterConfig { policy: bad, ..RouterConfig::default() };
    assert!(matches!(Router::new(config, Arc::new(|| 0u64)), Err(RouteError::InvalidConfig(_))));
}

fn decide(router: &Router, prompt: &[BlockHash]) -> Decision {
    router
        .best_worker(Prompt::Blocks(prompt), &RouteOptions { dry_run: true, ..RouteOptions::default() })
        .expect("decision")
}

#[test]
fn decisions_report_the_best_overlap_and_why_they_took_less() {
    let prompt = blocks(2, 8);
    let holder = key(1, 1);

    // Nothing in the way: the holder, at the best overlap, no shortfall.
    let router = fleet(Policy::Cost);
    hold(&router, holder, &prompt, 8, 0);
    let d = decide(&router, &prompt);
    assert_eq!((d.dp_rank, d.overlap_blocks, d.best_overlap_blocks, d.shortfall), (DpRank(1), 8, 8, None));

    // The holder is busy: the cost trades its 8 blocks for an idle rank.
    charge(&router, holder, 100, &blocks(6, 1));
    let d = decide(&router, &prompt);
    assert_ne!(RankKey { worker: d.worker, dp_rank: d.dp_rank }, holder);
    assert_eq!((d.overlap_blocks, d.best_overlap_blocks, d.shortfall), (0, 8, Some(Shortfall::Load)));

    // A policy that never looks at overlap.
    let router = fleet(Policy::LeastLoaded);
    hold(&router, holder, &prompt, 8, 0);
    charge(&router, holder, 1, &blocks(6, 1));
    let d = decide(&router, &prompt);
    assert_eq!((d.overlap_blocks, d.best_overlap_blocks, d.shortfall), (0, 8, Some(Shortfall::Policy)));

    // Host blocks (weight 0.75) on (0, 1) outweigh 4 device blocks on (0, 0).
    let router = fleet(Policy::Cost);
    hold(&router, key(0, 0), &prompt, 4, 0);
    let stored = prompt.iter().map(|&h| StoredBlock { engine_hash: EngineHash(h.0 ^ 3), content_hash: h }).collect();
    let data = KvEventData::Stored { parent: None, blocks: stored };
    let event = KvEvent { rank: key(0, 1), event_id: crate::ingest::allocate_event_ids(1), data };
    router.apply_events_in(StorageTier::Host, &[event]);
    let d = decide(&router, &prompt);
    assert_eq!((d.worker, d.dp_rank), (WorkerId(0), DpRank(1)));
    assert_eq!((d.overlap_blocks, d.best_overlap_blocks, d.shortfall), (0, 4, Some(Shortfall::Tier)));

    // Sampling at a high temperature: every pick but the (idle) holder is a dearer one.
    let weights = CostWeights { temperature: 50.0, ..CostWeights::default() };
    let config = RouterConfig { policy: Policy::Cost, weights, ..RouterConfig::default() };
    let router = Router::new(config, Arc::new(|| 1_000u64)).expect("router");
    for w in 0..2 {
        router.add_worker(WorkerSpec::new(WorkerId(w), 2, BS)).expect("worker");
    }
    hold(&router, holder, &prompt, 8, 0);
    let decisions: Vec<Decision> = (0..200).map(|_| decide(&router, &prompt)).collect();
    let others: Vec<&Decision> = decisions.iter().filter(|d| d.overlap_blocks < 8).collect();
    assert!(!others.is_empty() && others.len() < decisions.len(), "{} of 200 elsewhere", others.len());
    assert!(others.iter().all(|d| d.shortfall == Some(Shortfall::Temperature) && d.best_overlap_blocks == 8));
    assert!(decisions.iter().filter(|d| d.overlap_blocks == 8).all(|d| d.shortfall.is_none()));
}

#[test]
fn predicted_ttft_counts_down_each_ranks_queue_at_its_observed_speed() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let now = Arc::new(AtomicU64::new(0));
    let clock = Arc::clone(&now);
    let weights = TtftWeights { recompute: 1.0, decode: 0.0, pressure: 0.0, cache_blocks: None };
    let config = RouterConfig { policy: Policy::PredictedTtft(weights), ..RouterConfig::default() };
    let router = Router::new(config, Arc::new(move || clock.load(Ordering::Relaxed))).expect("router");
    for w in 0..2 {
        router.add_worker(WorkerSpec::new(WorkerId(w), 2, BS)).expect("worker");
    }
    let at = |ms: u64| now.store(ms, Ordering::Relaxed);
    let route = |rank: RankKey, seed: u64, n: usize| {
        let options = RouteOptions { rank: Some(rank), ..RouteOptions::default() };
        let decision = router.best_worker(Prompt::Blocks(&blocks(seed, n)), &options).expect("pinned route");
        decision.request.expect("a routed request has an id")
    };
    // (0, 0) and (0, 1) each prefill 160 tokens from t = 0 to t = 40: 4 tokens per ms.
    // (1, 0) and (1, 1): 640 tokens each, not seen done yet (no rate: the charge stands).
    at(0);
    let (a, b) = (route(key(0, 0), 10, 10), route(key(0, 1), 11, 10));
    let x = route(key(1, 0), 12, 40);
    route(key(1, 1), 13, 40);
    at(40);
    assert!(router.prefill_done(a) && router.prefill_done(b));
    // Another 160 each: (0, 0) starts on it at once, (0, 1) 10 ms later.
    route(key(0, 0), 14, 10);
    at(50);
    route(key(0, 1), 15, 10);
    at(60);
    // Both are charged 160 tokens, but (0, 0) has 80 left and (0, 1) 120 (plus this
    // prompt's 128 on each), against 640 on worker 1's ranks.
    let prompt = blocks(1, 8);
    for _ in 0..20 {
        assert_eq!(dry(&router, &prompt), key(0, 0));
    }
    // (1, 0) prefilled its 640 in 80 ms: 8 tokens per ms. Then 640 more there and 640 more
    // on each of worker 0's ranks. At t = 140, (1, 0) has 640 - 8 x 60 = 160 left, (0, 0)
    // 800 - 4 x 100 = 400, (0, 1) 800 - 4 x 90 = 440, and (1, 1), never seen done, its
    // whole 640: the rank that prefills fastest has counted down the most.
    at(80);
    assert!(router.prefill_done(x));
    route(key(1, 0), 16, 40);
    route(key(0, 0), 17, 40);
    route(key(0, 1), 18, 40);
    at(140);
    for _ in 0..20 {
        assert_eq!(dry(&router, &prompt), key(1, 0));
    }
}

#[test]
fn predicted_ttft_samples_near_equal_ranks_at_a_temperature_and_keeps_off_dear_ones() {
    let weights = TtftWeights { recompute: 1.0, decode: 0.0, pressure: 0.0, cache_blocks: None };
    let sampling = |temperature: f64| {
        let config = RouterConfig {
            policy: Policy::PredictedTtft(weights),
            weights: CostWeights { temperature, ..CostWeights::default() },
            ..RouterConfig::default()
        };
        let router = Router::new(config, Arc::new(|| 1_000u64)).expect("router");
        for w in 0..2 {
            router.add_worker(WorkerSpec::new(WorkerId(w), 2, BS)).expect("worker");
        }
        let prompt = blocks(3, 8); // 128 tokens, cached nowhere
        charge(&router, key(0, 0), 1, &blocks(5, 64)); // 1,024 tokens queued: 1,152 in all
        charge(&router, key(0, 1), 1, &blocks(5, 1)); // 16 queued: 144, the cheapest
        charge(&router, key(1, 0), 1, &blocks(5, 2)); // 32 queued: 160
        charge(&router, key(1, 1), 1, &blocks(5, 2)); // 160
        let decisions: Vec<Decision> = (0..400).map(|_| decide(&router, &prompt)).collect();
        let picks: Vec<RankKey> = decisions.iter().map(|d| RankKey { worker: d.worker, dp_rank: d.dp_rank }).collect();
        (picks, decisions)
    };
    // Deterministic at 0: the cheapest every time.
    let (picks, _) = sampling(0.0);
    assert!(picks.iter().all(|&k| k == key(0, 1)));
    // At 0.05 the three within 16 of 1,008 tokens' span share the picks (weights 1, 0.73,
    // 0.73); the rank 1,008 dearer has weight e^-20 and is never taken.
    let (picks, decisions) = sampling(0.05);
    let count = |k: RankKey| picks.iter().filter(|&&p| p == k).count();
    assert_eq!(count(key(0, 0)), 0);
    for near in [key(0, 1), key(1, 0), key(1, 1)] {
        assert!(count(near) > 60, "{near:?} picked {} of 400", count(near));
    }
    assert!(count(key(0, 1)) > count(key(1, 0)), "the cheapest is the likeliest");
    // Nothing was cached, so nothing was left on the table.
    assert!(decisions.iter().all(|d| d.shortfall.is_none() && d.best_overlap_blocks == 0));
}

#[test]
fn predicted_ttft_at_a_temperature_says_when_sampling_took_less_than_the_best_overlap() {
    let config = RouterConfig {
        policy: Policy::PredictedTtft(TtftWeights { recompute: 1.0, decode: 0.0, pressure: 0.0, cache_blocks: None }),
        weights: CostWeights { temperature: 50.0, ..CostWeights::default() },
        ..RouterConfig::default()
    };
    let router = Router::new(config, Arc::new(|| 1_000u64)).expect("router");
    for w in 0..2 {
        router.add_worker(WorkerSpec::new(WorkerId(w), 2, BS)).expect("worker");
    }
    let prompt = blocks(2, 8);
    hold(&router, key(1, 1), &prompt, 8, 0); // the holder: 0 uncached tokens, the cheapest
    let decisions: Vec<Decision> = (0..200).map(|_| decide(&router, &prompt)).collect();
    let elsewhere: Vec<&Decision> = decisions.iter().filter(|d| d.overlap_blocks < 8).collect();
    assert!(!elsewhere.is_empty() && elsewhere.len() < decisions.len(), "{} of 200 elsewhere", elsewhere.len());
    assert!(elsewhere.iter().all(|d| d.shortfall == Some(Shortfall::Temperature)));
}
