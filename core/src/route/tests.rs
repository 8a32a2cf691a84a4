//! Behaviour of the router: rooms, load accounting, decisions, P/D, bad input.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::event::{KvEvent, KvEventData, StoredBlock};
use crate::ids::{BlockHash, DpRank, EngineHash, RankKey, WorkerId};

const BS: u32 = 16;

fn manual_clock() -> (Arc<AtomicU64>, Arc<dyn Clock>) {
    let now = Arc::new(AtomicU64::new(1_000));
    let handle = now.clone();
    (now, Arc::new(move || handle.load(Ordering::Relaxed)))
}

fn router() -> (Router, Arc<AtomicU64>) {
    sharded_router(1)
}

/// A router whose indexes have `index_shards` shards, picking by the cost policy: these
/// tests check decisions against `cost.rs`'s terms (the other policies: `policy_tests.rs`).
fn sharded_router(index_shards: usize) -> (Router, Arc<AtomicU64>) {
    let (now, clock) = manual_clock();
    let config = RouterConfig { index_shards, policy: Policy::Cost, ..RouterConfig::default() };
    (Router::new(config, clock).expect("valid config"), now)
}

fn key(w: u64, r: u32) -> RankKey {
    RankKey { worker: WorkerId(w), dp_rank: DpRank(r) }
}

/// Makes `rank` hold exactly the first `depth` blocks of `prompt` (clearing first).
fn hold_prefix(router: &Router, rank: RankKey, prompt: &[BlockHash], depth: usize, event_id: &mut u64) {
    *event_id += 1;
    router.apply_event(&KvEvent { rank, event_id: *event_id, data: KvEventData::Cleared });
    if depth == 0 {
        return;
    }
    *event_id += 1;
    let blocks = prompt[..depth]
        .iter()
        .enumerate()
        .map(|(i, &h)| StoredBlock { engine_hash: EngineHash(h.0 ^ (i as u64) << 48 ^ 0xE), content_hash: h })
        .collect();
    router.apply_event(&KvEvent { rank, event_id: *event_id, data: KvEventData::Stored { parent: None, blocks } });
}

fn prompt_blocks(seed: u64, n: usize) -> Vec<BlockHash> {
    (0..n as u64)
        .map(|i| BlockHash(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i + 1).wrapping_mul(0xC2B2_AE3D)))
        .collect()
}

// ---------------------------------------------------------------- rooms

proptest! {
    #[test]
    fn room_names_the_prefill_rank(seed in any::<u64>(), picks in proptest::collection::vec(any::<u32>(), 1..8)) {
        let rooms = RoomAllocator::new(seed);
        for p_size in 1..=1024u32 {
            for &pick in &picks {
                let p = pick % p_size;
                let room = rooms.allocate(p, p_size).unwrap();
                prop_assert!(room.0 <= i64::MAX as u64);
                prop_assert_eq!(room.0 % u64::from(p_size), u64::from(p));
                prop_assert_eq!(room.prefill_rank(p_size), Some(p));
            }
        }
    }

    #[test]
    fn room_rule_holds_across_the_wrap(start in (1u64 << 63) - 5000..(1u64 << 63) + 5000, p_size in 1..=1024u32, pick in any::<u32>()) {
        let rooms = RoomAllocator::starting_at(start);
        for _ in 0..16 {
            let p = pick % p_size;
            let room = rooms.allocate(p, p_size).unwrap();
            prop_assert!(room.0 <= i64::MAX as u64);
            prop_assert_eq!(room.0 % u64::from(p_size), u64::from(p));
        }
    }
}

#[test]
fn rooms_are_unique_across_threads() {
    let rooms = Arc::new(RoomAllocator::new(0x1234_5678_9abc));
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let rooms = rooms.clone();
            std::thread::spawn(move || {
                let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                (0..100_000)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let p_size = (x % 1024) as u32 + 1;
                        let p = ((x >> 20) % u64::from(p_size)) as u32;
                        let room = rooms.allocate(p, p_size).unwrap();
                        assert_eq!(room.0 % u64::from(p_size), u64::from(p));
                        room.0
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for h in handles {
        for room in h.join().unwrap() {
            assert!(seen.insert(room), "room {room} issued twice");
        }
    }
    assert_eq!(seen.len(), 800_000);
}

#[test]
fn rooms_of_different_seeds_start_apart() {
    let a = RoomAllocator::new(1).allocate(0, 1).unwrap();
    let b = RoomAllocator::new(u64::MAX).allocate(0, 1).unwrap();
    assert_ne!(a, b);
    assert_ne!(RoomAllocator::new(7).allocate(0, 1).unwrap().0, 0, "not a plain counter from 0");
}

// ---------------------------------------------------------------- the seeds' scenario

fn pd_router(prefill_dp: u32, decode_dp: u32) -> Router {
    let (router, _) = router();
    router.add_worker(WorkerSpec::prefill(WorkerId(1), prefill_dp, BS, "10.0.0.1", Some(8998))).unwrap();
    router.add_worker(WorkerSpec::decode(WorkerId(2), decode_dp, BS)).unwrap();
    router
}

fn seeds_scenario(prefill_dp: u32, decode_dp: u32) {
    let router = pd_router(prefill_dp, decode_dp);
    let mut event_ids = vec![0u64; prefill_dp as usize];
    let mut decode_counts = vec![0u32; decode_dp as usize];
    for n in 0..1000u64 {
        let prompt = prompt_blocks(n, 48);
        // Distinct overlaps per prefill rank; the largest lands on a varying rank.
        let mut depths: Vec<usize> = (0..prefill_dp as usize).map(|r| (r * 7 + n as usize * 3) % 40).collect();
        let best = (n % u64::from(prefill_dp)) as usize;
        depths[best] = 45;
        for r in 0..prefill_dp {
            hold_prefix(&router, key(1, r), &prompt, depths[r as usize], &mut event_ids[r as usize]);
        }
        let d = router.route_disaggregated(Prompt::Blocks(&prompt), &PdOptions::default()).unwrap();
        let p = d.prefill.dp_rank.0;
        assert_eq!(p as usize, best, "request {n}: the prefill rank with the largest overlap");
        assert_eq!(d.prefill.overlap_blocks, 45);
        // The decode side's resolution names the prefill rank the router chose.
        let room = d.bootstrap.room;
        assert_eq!(room.0 % u64::from(prefill_dp), u64::from(p));
        assert_eq!(d.bootstrap.prefill_dp_size, prefill_dp);
        let fields = d.decode_fields();
        assert_eq!(fields.disagg_prefill_dp_rank, p);
        assert_eq!(fields.bootstrap_room % u64::from(prefill_dp), u64::from(p));
        assert_eq!(fields.routed_dp_rank, d.decode.dp_rank.0);
        assert_eq!(fields.data_parallel_rank, d.decode.dp_rank.0);
        assert_eq!(d.prefill_fields().routed_dp_rank, p);
        assert_eq!((fields.bootstrap_host.as_str(), fields.bootstrap_port), ("10.0.0.1", Some(8998)));
        assert!(d.decode.dp_rank.0 < decode_dp);
        decode_counts[d.decode.dp_rank.0 as usize] += 1;
        // Equal loads for the next request.
        assert!(router.finish(d.request().unwrap()));
    }
    assert!(decode_counts.iter().all(|&c| c > 0), "every decode rank used: {decode_counts:?}");
    assert!(router.rank_loads().iter().all(|(_, l)| *l == LoadSnapshot::default()));
}

#[test]
fn seeds_scenario_prefill_dp4_decode_dp2() {
    seeds_scenario(4, 2);
}

#[test]
fn seeds_scenario_prefill_dp2_decode_dp4() {
    seeds_scenario(2, 4);
}

#[test]
fn sglang_field_names() {
    let router = pd_router(4, 2);
    let d = router.route_disaggregated(Prompt::Tokens(&[1; 64]), &PdOptions::default()).unwrap();
    let decode = serde_json::to_value(d.decode_fields()).unwrap();
    for field in [
        "routed_dp_rank",
        "disagg_prefill_dp_rank",
        "data_parallel_rank",
        "bootstrap_host",
        "bootstrap_port",
        "bootstrap_room",
    ] {
        assert!(decode.get(field).is_some(), "decode request lacks {field}: {decode}");
    }
    let prefill = serde_json::to_value(d.prefill_fields()).unwrap();
    assert_eq!(prefill["routed_dp_rank"], u64::from(d.prefill.dp_rank.0));
    assert_eq!(prefill["bootstrap_room"], decode["bootstrap_room"]);
}

// ---------------------------------------------------------------- load

#[test]
fn decode_choice_avoids_the_hot_rank() {
    let router = pd_router(2, 4);
    // Make decode rank 0 hot: pin 200 long requests there through the fixed-worker path.
    let hot = router.fleet.load().ranks.iter().find(|s| s.key == key(2, 0)).unwrap().load.clone();
    let mut held = Vec::new();
    for _ in 0..50 {
        let d = router.route_disaggregated(Prompt::Tokens(&[7; 64]), &PdOptions::default()).unwrap();
        held.push(d);
    }
    // Balanced so far: decode ranks share the load evenly (all requests the same size).
    let loads: Vec<u64> =
        router.rank_loads().iter().filter(|(k, _)| k.worker == WorkerId(2)).map(|(_, l)| l.decode_blocks).collect();
    let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
    assert!(max - min <= 4, "decode load follows load: {loads:?}");
    // Skew: a burst of big requests charged to decode rank 0 alone (as another router
    // replica's traffic, or a fixed-rank client, would leave it).
    for _ in 0..100 {
        let c = super::load::Charge { load: hot.clone(), prefill_tokens: 0, decode_blocks: 64, counts_request: true };
        let none =
            super::load::Charge { load: hot.clone(), prefill_tokens: 0, decode_blocks: 0, counts_request: false };
        router.loads.open(super::load::ActiveRequest::new(none, c, u64::MAX), 0);
    }
    let mut on_hot = 0;
    for _ in 0..200 {
        let d = router.route_disaggregated(Prompt::Tokens(&[9; 64]), &PdOptions::default()).unwrap();
        on_hot += u32::from(d.decode.dp_rank == DpRank(0));
    }
    assert_eq!(on_hot, 0, "the router sent decode work to the hot rank");
}

#[test]
fn load_accounting_is_exact_under_concurrency() {
    let (router, _) = router();
    for w in 0..4 {
        router.add_worker(WorkerSpec::new(WorkerId(w), 4, BS)).unwrap();
    }
    let router = Arc::new(router);
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let router = router.clone();
            std::thread::spawn(move || {
                let mut open = Vec::new();
                let mut x = t + 1;
                for i in 0..2000u64 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let len = 1 + (x >> 40) as usize % 300;
                    let tokens: Vec<u32> = (0..len as u32).map(|k| k ^ (i as u32 % 7)).collect();
                    let d = router.best_worker(Prompt::Tokens(&tokens), &RouteOptions::default()).unwrap();
                    let id = d.request.unwrap();
                    match x >> 61 {
                        0 | 1 => {
                            assert!(router.finish(id));
                            assert!(!router.finish(id), "finished twice");
                        }
                        2 | 3 => {
                            assert!(router.prefill_done(id));
                            assert!(!router.prefill_done(id));
                            open.push((d, len, false));
                        }
                        _ => open.push((d, len, true)),
                    }
                }
                open
            })
        })
        .collect();
    let open: Vec<(Decision, usize, bool)> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    // Every counter equals the sum of what the still-open requests charged.
    let mut expected: std::collections::HashMap<RankKey, LoadSnapshot> = Default::default();
    for (d, tokens, prefill_open) in &open {
        let e = expected.entry(RankKey { worker: d.worker, dp_rank: d.dp_rank }).or_default();
        e.requests += 1;
        e.decode_blocks += (*tokens as u64).div_ceil(u64::from(BS));
        if *prefill_open {
            e.prefill_tokens += (*tokens as f64 - d.cost.overlap_credit * f64::from(BS)).max(0.0).round() as u64;
        }
    }
    for (rank, load) in router.rank_loads() {
        assert_eq!(load, expected.get(&rank).copied().unwrap_or_default(), "rank {rank:?}");
    }
    assert_eq!(router.active_requests(), open.len());
    // Release everything: every counter returns to zero exactly.
    for (d, _, _) in &open {
        assert!(router.finish(d.request.unwrap()));
    }
    assert!(router.rank_loads().iter().all(|(_, l)| *l == LoadSnapshot::default()), "{:?}", router.rank_loads());
    assert_eq!(router.active_requests(), 0);
}

#[test]
fn a_worker_with_more_ranks_than_an_index_holds_is_refused_before_registering_any() {
    let (router, _) = router();
    let too_many = crate::index::MAX_RANKS as u32 + 1;
    assert_eq!(router.add_worker(WorkerSpec::new(WorkerId(1), too_many, BS)), Err(RouteError::TooManyRanks));
    assert!(router.rank_loads().is_empty(), "no rank of the refused worker is left");
    // A worker that fills the index exactly is taken, and the next one refused whole.
    router.add_worker(WorkerSpec::new(WorkerId(2), too_many - 1, BS)).unwrap();
    assert_eq!(router.rank_loads().len(), too_many as usize - 1);
    assert_eq!(router.add_worker(WorkerSpec::new(WorkerId(3), 2, BS)), Err(RouteError::TooManyRanks));
    assert_eq!(router.rank_loads().len(), too_many as usize - 1);
    router.remove_worker(WorkerId(2)).unwrap();
    router.add_worker(WorkerSpec::new(WorkerId(3), 2, BS)).unwrap();
    assert_eq!(router.rank_loads().len(), 2);
}

#[test]
fn prefill_tokens_follow_the_lifecycle() {
    let (router, _) = router();
    router.add_worker(WorkerSpec::new(WorkerId(1), 1, BS)).unwrap();
    let tokens: Vec<u32> = (0..100).collect();
    let d = router.best_worker(Prompt::Tokens(&tokens), &RouteOptions::default()).unwrap();
    let load = |r: &Router| r.rank_loads()[0].1;
    assert_eq!(load(&router), LoadSnapshot { prefill_tokens: 100, decode_blocks: 7, requests: 1 });
    assert!(router.prefill_done(d.request.unwrap()));
    assert_eq!(load(&router), LoadSnapshot { prefill_tokens: 0, decode_blocks: 7, requests: 1 });
    assert!(router.finish(d.request.unwrap()));
    assert_eq!(load(&router), LoadSnapshot::default());
    // A dry run charges nothing.
    let dry = router.best_worker(Prompt::Tokens(&tokens), &RouteOptions { dry_run: true, ..Default::default() });
    assert_eq!(dry.unwrap().request, None);
    assert_eq!(load(&router), LoadSnapshot::default());
}

#[test]
fn engine_reports_add_the_load_this_router_did_not_send_until_they_go_stale() {
    let (router, now) = router();
    router.add_worker(WorkerSpec::new(WorkerId(1), 2, BS)).unwrap();
    let tokens: Vec<u32> = (0..100).collect();
    let on_rank_0 = RouteOptions { rank: Some(key(1, 0)), ..RouteOptions::default() };
    let own = router.best_worker(Prompt::Tokens(&tokens), &on_rank_0).unwrap().request.unwrap();
    let load = |r: &Router, rank: u32| r.rank_loads()[rank as usize].1;
    assert_eq!(load(&router, 0), LoadSnapshot { prefill_tokens: 100, decode_blocks: 7, requests: 1 });

    // The engine of rank 0 runs 5 requests (4 from elsewhere); its prefill queue is not
    // reported. Rank 1's engine runs 3 this router never sent.
    let report = LoadReport { prefill_tokens: None, decode_blocks: Some(40), requests: Some(5) };
    router.apply_load_report(key(1, 0), &report).unwrap();
    let others = LoadReport { prefill_tokens: Some(900), decode_blocks: Some(30), requests: Some(3) };
    router.apply_load_report(key(1, 1), &others).unwrap();
    assert_eq!(load(&router, 0), LoadSnapshot { prefill_tokens: 100, decode_blocks: 40, requests: 5 });
    assert_eq!(load(&router, 1), LoadSnapshot { prefill_tokens: 900, decode_blocks: 30, requests: 3 });
    // Decisions see it: rank 1's reported prefill queue now outweighs rank 0's.
    let d = router.best_worker(Prompt::Tokens(&[7; 64]), &RouteOptions { dry_run: true, ..Default::default() });
    assert_eq!(d.unwrap().dp_rank, DpRank(0));
    // Own requests move the own part between reports; a report below own adds nothing.
    assert!(router.finish(own));
    assert_eq!(load(&router, 0), LoadSnapshot { prefill_tokens: 0, decode_blocks: 33, requests: 4 });
    router.apply_load_report(key(1, 1), &LoadReport { requests: Some(0), ..LoadReport::default() }).unwrap();
    assert_eq!(load(&router, 1), LoadSnapshot::default());

    // Past the TTL the report is dropped and only the router's own load counts.
    now.fetch_add(9_999, Ordering::Relaxed);
    router.expire();
    assert_eq!(load(&router, 0).requests, 4, "not yet stale");
    now.fetch_add(1, Ordering::Relaxed);
    router.expire();
    assert!(router.rank_loads().iter().all(|(_, l)| *l == LoadSnapshot::default()));
    assert!(matches!(router.apply_load_report(key(9, 0), &report), Err(RouteError::UnknownWorker(_))));
    assert!(router.apply_load_report(key(1, 2), &report).is_err(), "rank out of range");
}

#[test]
fn requests_never_finished_expire() {
    let (router, now) = router();
    router.add_worker(WorkerSpec::new(WorkerId(1), 2, BS)).unwrap();
    let ids: Vec<RequestId> = (0..10)
        .map(|_| router.best_worker(Prompt::Tokens(&[3; 40]), &RouteOptions::default()).unwrap().request.unwrap())
        .collect();
    now.fetch_add(299_000, Ordering::Relaxed);
    assert_eq!(router.expire(), 0, "not yet");
    now.fetch_add(2_000, Ordering::Relaxed);
    assert_eq!(router.expire(), 10);
    assert!(router.rank_loads().iter().all(|(_, l)| *l == LoadSnapshot::default()));
    assert!(!router.finish(ids[0]), "an expired request is unknown");
}

#[test]
fn expiry_runs_in_bounded_steps_oldest_first() {
    let (router, now) = router();
    router.add_worker(WorkerSpec::new(WorkerId(1), 1, BS)).unwrap();
    let hot = router.fleet.load().ranks.iter().find(|s| s.key == key(1, 0)).unwrap().load.clone();
    let charge = |blocks| super::load::Charge {
        load: hot.clone(),
        prefill_tokens: 0,
        decode_blocks: blocks,
        counts_request: true,
    };
    let none = || super::load::Charge { load: hot.clone(), prefill_tokens: 0, decode_blocks: 0, counts_request: false };
    let budget = super::load::EXPIRY_BUDGET;
    // More requests due than one step looks at, then one due later.
    for _ in 0..budget + 10 {
        router.loads.open(super::load::ActiveRequest::new(none(), charge(1), 1_000), 0);
    }
    let late = router.loads.open(super::load::ActiveRequest::new(none(), charge(1), 5_000), 0);
    now.store(2_000, Ordering::Relaxed);
    let first = router.expire_step();
    assert_eq!(first, super::ExpiryStep { requests_released: budget, done: false });
    let second = router.expire_step();
    assert_eq!(second, super::ExpiryStep { requests_released: 10, done: true });
    assert_eq!(router.active_requests(), 1);
    assert_eq!(hot.snapshot().decode_blocks, 1, "only the late request is charged");
    assert!(router.finish(late));
    now.store(6_000, Ordering::Relaxed);
    assert_eq!(router.expire_step(), super::ExpiryStep { requests_released: 0, done: true }, "finished: a no-op");
}

#[test]
fn bootstrap_hosts_must_be_addresses_or_host_names() {
    let (router, _) = router();
    let spec = |id: u64, host: &str| {
        let mut spec = WorkerSpec::new(WorkerId(id), 1, BS);
        spec.role = Role::Prefill;
        spec.bootstrap = Some(BootstrapEndpoint { host: host.to_owned(), port: Some(8998) });
        spec
    };
    let good = ["10.0.0.5", "::1", "[fe80::1]", "prefill-0.prefill.svc.cluster.local", "node_3", "host."];
    for (id, host) in good.iter().enumerate() {
        assert_eq!(router.add_worker(spec(id as u64, host)), Ok(()), "{host}");
    }
    let long = format!("{}.example", "a".repeat(250));
    let bad =
        ["", "a\r\nX-Injected: 1", "nul\0", "two words", "http://x", "user@host", "-lead", "a..b", "[not-v6]", &long];
    for (id, host) in bad.iter().enumerate() {
        let worker = WorkerId(100 + id as u64);
        let result = router.add_worker(spec(worker.0, host));
        assert!(
            matches!(result, Err(RouteError::BadBootstrapHost { worker: w, .. }) if w == worker),
            "{host:?}: {result:?}"
        );
    }
}

// ---------------------------------------------------------------- decisions

#[test]
fn cheapest_rank_wins_and_ties_break_randomly() {
    let (router, _) = router();
    for w in 0..4 {
        router.add_worker(WorkerSpec::new(WorkerId(w), 2, BS)).unwrap();
    }
    let dry = RouteOptions { dry_run: true, ..Default::default() };
    let mut seen = HashSet::new();
    for _ in 0..400 {
        let d = router.best_worker(Prompt::Tokens(&[5; 64]), &dry).unwrap();
        seen.insert(RankKey { worker: d.worker, dp_rank: d.dp_rank });
    }
    assert_eq!(seen.len(), 8, "equal costs: every rank gets picked");
    // Overlap makes one rank cheapest.
    let prompt = prompt_blocks(9, 32);
    let mut ids = 0;
    hold_prefix(&router, key(2, 1), &prompt, 20, &mut ids);
    for _ in 0..50 {
        let d = router.best_worker(Prompt::Blocks(&prompt), &dry).unwrap();
        assert_eq!((d.worker, d.dp_rank, d.overlap_blocks), (WorkerId(2), DpRank(1), 20));
        assert_eq!(d.cost.overlap_credit, 20.0);
        assert_eq!(d.cost.prefill_blocks, 12.0);
    }
}

#[test]
fn temperature_samples_by_cost() {
    let (now, clock) = manual_clock();
    let _ = now;
    let config = RouterConfig {
        weights: CostWeights { temperature: 0.5, ..CostWeights::default() },
        policy: Policy::Cost,
        ..RouterConfig::default()
    };
    let router = Router::new(config, clock).unwrap();
    router.add_worker(WorkerSpec::new(WorkerId(1), 2, BS)).unwrap();
    let prompt = prompt_blocks(3, 32);
    let mut ids = 0;
    hold_prefix(&router, key(1, 0), &prompt, 32, &mut ids);
    let dry = RouteOptions { dry_run: true, ..Default::default() };
    let on_cached =
        (0..2000).filter(|_| router.best_worker(Prompt::Blocks(&prompt), &dry).unwrap().dp_rank == DpRank(0)).count();
    // Normalised costs 0 and 1: p(cached) = 1 / (1 + e^-2) = 0.88.
    assert!((1600..1900).contains(&on_cached), "cached rank picked {on_cached} / 2000");
}

#[test]
fn lower_tiers_earn_less_credit() {
    let (router, _) = router();
    router.add_worker(WorkerSpec::new(WorkerId(1), 1, BS)).unwrap();
    let prompt = prompt_blocks(4, 40);
    let blocks = |n: usize| -> Vec<StoredBlock> {
        prompt[..n].iter().map(|&h| StoredBlock { engine_hash: EngineHash(h.0 ^ 1), content_hash: h }).collect()
    };
    let rank = key(1, 0);
    router.apply_event_in(
        StorageTier::Device,
        &KvEvent { rank, event_id: 1, data: KvEventData::Stored { parent: None, blocks: blocks(8) } },
    );
    router.apply_event_in(
        StorageTier::Host,
        &KvEvent { rank, event_id: 1, data: KvEventData::Stored { parent: None, blocks: blocks(24) } },
    );
    router.apply_event_in(
        StorageTier::Disk,
        &KvEvent { rank, event_id: 1, data: KvEventData::Stored { parent: None, blocks: blocks(40) } },
    );
    let d = router.best_worker(Prompt::Blocks(&prompt), &RouteOptions { dry_run: true, ..Default::default() }).unwrap();
    assert_eq!(d.overlap_blocks, 8);
    assert_eq!(d.cost.overlap_credit, 8.0 + 0.75 * 16.0 + 0.25 * 16.0);
}

#[test]
fn options_restrict_candidates() {
    let (router, _) = router();
    for w in 0..3 {
        router.add_worker(WorkerSpec::new(WorkerId(w), 4, BS)).unwrap();
    }
    let subset = [WorkerId(2)];
    for _ in 0..20 {
        let opts = RouteOptions { workers: Some(&subset), dry_run: true, ..Default::default() };
        assert_eq!(router.best_worker(Prompt::Tokens(&[1; 50]), &opts).unwrap().worker, WorkerId(2));
        let fixed = RouteOptions { rank: Some(key(1, 3)), dry_run: true, ..Default::default() };
        let d = router.best_worker(Prompt::Tokens(&[1; 50]), &fixed).unwrap();
        assert_eq!((d.worker, d.dp_rank), (WorkerId(1), DpRank(3)));
    }
}

#[test]
fn a_leaving_worker_vanishes_from_decisions_and_the_index() {
    let (router, _) = router();
    router.add_worker(WorkerSpec::new(WorkerId(1), 2, BS)).unwrap();
    router.add_worker(WorkerSpec::new(WorkerId(2), 2, BS)).unwrap();
    let prompt = prompt_blocks(5, 16);
    let mut ids = 0;
    hold_prefix(&router, key(1, 0), &prompt, 16, &mut ids);
    let dry = RouteOptions { dry_run: true, ..Default::default() };
    assert_eq!(router.best_worker(Prompt::Blocks(&prompt), &dry).unwrap().worker, WorkerId(1));
    router.remove_worker(WorkerId(1)).unwrap();
    for _ in 0..50 {
        assert_eq!(router.best_worker(Prompt::Blocks(&prompt), &dry).unwrap().worker, WorkerId(2));
    }
    assert!(router.tier_index(StorageTier::Device).find_matches(&prompt).is_empty());
    assert_eq!(router.remove_worker(WorkerId(1)), Err(RouteError::UnknownWorker(WorkerId(1))));
}

#[test]
fn excluded_ranks_give_the_next_best_and_then_no_candidates() {
    let (router, _) = router();
    router.add_worker(WorkerSpec::new(WorkerId(1), 3, BS)).unwrap();
    let prompt = prompt_blocks(9, 20);
    let mut ids = 0;
    hold_prefix(&router, key(1, 2), &prompt, 16, &mut ids);
    hold_prefix(&router, key(1, 0), &prompt, 8, &mut ids);
    let mut excluded = Vec::new();
    let mut order = Vec::new();
    loop {
        let options = RouteOptions { excluded: &excluded, dry_run: true, ..Default::default() };
        match router.best_worker(Prompt::Blocks(&prompt), &options) {
            Ok(d) => {
                order.push((d.dp_rank.0, d.overlap_blocks));
                excluded.push(key(1, d.dp_rank.0));
            }
            Err(e) => {
                assert_eq!(e, RouteError::NoCandidates);
                break;
            }
        }
    }
    assert_eq!(order, [(2, 16), (0, 8), (1, 0)], "best first, each exclusion giving the next best");
    let unknown = [key(5, 0)];
    let options = RouteOptions { excluded: &unknown, dry_run: true, ..Default::default() };
    assert_eq!(router.best_worker(Prompt::Blocks(&prompt), &options).unwrap().dp_rank, DpRank(2));
}

// ---------------------------------------------------------------- approximate mode

#[test]
fn approximate_mode_records_routes_until_ttl_then_exact_mode_takes_over() {
    let (router, now) = router();
    router.add_worker(WorkerSpec::new(WorkerId(1), 2, BS)).unwrap();
    assert_eq!(router.is_exact(WorkerId(1)), Some(false));
    let prompt = prompt_blocks(6, 24);
    let to_rank1 = RouteOptions { rank: Some(key(1, 1)), ..Default::default() };
    let first = router.best_worker(Prompt::Blocks(&prompt), &to_rank1).unwrap();
    assert!(router.finish(first.request.unwrap()), "loads equal again; the cache stays");
    // The router remembers what it sent: the next identical prompt sees the overlap there.
    let dry = RouteOptions { dry_run: true, ..Default::default() };
    let d = router.best_worker(Prompt::Blocks(&prompt), &dry).unwrap();
    assert_eq!((d.dp_rank, d.overlap_blocks), (DpRank(1), 24));
    // ...until the TTL passes.
    now.fetch_add(120_001, Ordering::Relaxed);
    router.expire();
    assert!(router.tier_index(StorageTier::Device).find_matches(&prompt).is_empty());
    // Record again, then the worker starts publishing: approximate blocks go, real ones count.
    router.best_worker(Prompt::Blocks(&prompt), &to_rank1).unwrap();
    let mut ids = 0;
    hold_prefix(&router, key(1, 0), &prompt, 10, &mut ids);
    assert_eq!(router.is_exact(WorkerId(1)), Some(true));
    let scores = router.tier_index(StorageTier::Device).find_matches(&prompt).sorted();
    assert_eq!(scores, vec![(key(1, 0), 10)]);
    // Exact workers are not recorded by routing.
    router.best_worker(Prompt::Blocks(&prompt), &to_rank1).unwrap();
    assert_eq!(router.tier_index(StorageTier::Device).find_matches(&prompt).sorted(), vec![(key(1, 0), 10)]);
}

// ---------------------------------------------------------------- same-rank mode and bad input

#[test]
fn same_rank_mode_pairs_rank_indexes() {
    let router = pd_router(4, 2);
    let same = PdOptions { same_rank: true, ..Default::default() };
    for n in 0..200 {
        let d = router.route_disaggregated(Prompt::Blocks(&prompt_blocks(n, 8)), &same).unwrap();
        assert_eq!(d.prefill.dp_rank, d.decode.dp_rank);
        assert!(d.prefill.dp_rank.0 < 2, "only prefill ranks the decode side has");
        assert_eq!(d.bootstrap.room.0 % 4, u64::from(d.prefill.dp_rank.0));
    }
    // Decode ranks 4..6 only: no prefill rank index in common.
    let (router, _) = self::router();
    router.add_worker(WorkerSpec::prefill(WorkerId(1), 4, BS, "h", None)).unwrap();
    let mut decode = WorkerSpec::decode(WorkerId(2), 2, BS);
    decode.dp_start = 4;
    router.add_worker(decode).unwrap();
    assert_eq!(router.route_disaggregated(Prompt::Tokens(&[1; 32]), &same), Err(RouteError::NoSharedRanks));
    assert!(router.route_disaggregated(Prompt::Tokens(&[1; 32]), &PdOptions::default()).is_ok());
}

#[test]
fn disaggregated_exclusions_apply_to_both_sides_and_keep_the_room_rule() {
    let router = pd_router(4, 2);
    assert!(router.has_prefill_workers());
    let (aggregated, _) = self::router();
    aggregated.add_worker(WorkerSpec::new(WorkerId(1), 2, BS)).unwrap();
    assert!(!aggregated.has_prefill_workers());
    // Prefill worker 1 (ranks 0..4), decode worker 2 (ranks 0..2).
    let excluded = [key(1, 0), key(1, 1), key(1, 3), key(2, 0)];
    let options = PdOptions { excluded: &excluded, ..Default::default() };
    for n in 0..50 {
        let d = router.route_disaggregated(Prompt::Blocks(&prompt_blocks(n, 8)), &options).unwrap();
        assert_eq!((d.prefill.dp_rank, d.decode.dp_rank), (DpRank(2), DpRank(1)));
        assert_eq!(d.bootstrap.room.0 % 4, 2, "the room still names the prefill rank");
        router.finish(d.request().unwrap());
    }
    let all_decode = [key(2, 0), key(2, 1)];
    let options = PdOptions { excluded: &all_decode, ..Default::default() };
    assert_eq!(router.route_disaggregated(Prompt::Tokens(&[1; 32]), &options).err(), Some(RouteError::NoCandidates));
}

#[test]
fn bad_input_is_a_typed_error() {
    for shards in [0, crate::index::MAX_SHARDS + 1] {
        let config = RouterConfig { index_shards: shards, ..RouterConfig::default() };
        assert!(matches!(Router::new(config, manual_clock().1), Err(RouteError::InvalidConfig(_))), "{shards} shards");
    }
    let (router, _) = router();
    let any = RouteOptions::default();
    assert_eq!(router.best_worker(Prompt::Tokens(&[1; 32]), &any), Err(RouteError::NoCandidates));
    router.add_worker(WorkerSpec::new(WorkerId(1), 2, BS)).unwrap();
    assert_eq!(router.best_worker(Prompt::Tokens(&[]), &any), Err(RouteError::EmptyPrompt));
    assert_eq!(router.best_worker(Prompt::Blocks(&[]), &any), Err(RouteError::EmptyPrompt));
    let unknown = [WorkerId(9)];
    let opts = RouteOptions { workers: Some(&unknown), ..Default::default() };
    assert_eq!(router.best_worker(Prompt::Tokens(&[1; 32]), &opts), Err(RouteError::UnknownWorker(WorkerId(9))));
    let opts = RouteOptions { rank: Some(key(1, 2)), ..Default::default() };
    assert!(matches!(router.best_worker(Prompt::Tokens(&[1; 32]), &opts), Err(RouteError::RankOutOfRange { .. })));
    assert_eq!(router.add_worker(WorkerSpec::new(WorkerId(2), 0, BS)), Err(RouteError::ZeroDpSize(WorkerId(2))));
    assert_eq!(router.add_worker(WorkerSpec::new(WorkerId(1), 1, BS)), Err(RouteError::WorkerExists(WorkerId(1))));
    assert!(matches!(
        router.add_worker(WorkerSpec::new(WorkerId(3), 1, 32)),
        Err(RouteError::BlockSizeMismatch { .. })
    ));
    let mut no_bootstrap = WorkerSpec::new(WorkerId(4), 1, BS);
    no_bootstrap.role = Role::Prefill;
    assert_eq!(router.add_worker(no_bootstrap), Err(RouteError::MissingBootstrap(WorkerId(4))));
    let mut small_world = WorkerSpec::new(WorkerId(5), 2, BS);
    small_world.dp_world_size = Some(1);
    assert!(matches!(router.add_worker(small_world), Err(RouteError::DpWorldTooSmall { .. })));
    // No prefill workers registered: disaggregated routing has no candidates.
    assert_eq!(
        router.route_disaggregated(Prompt::Tokens(&[1; 32]), &PdOptions::default()),
        Err(RouteError::NoCandidates)
    );
    assert!(matches!(RoomAllocator::new(0).allocate(0, 0), Err(RouteError::ZeroDpSize(_))));
    assert!(RoomAllocator::new(0).allocate(4, 4).is_err());
    let bad =
        RouterConfig { weights: CostWeights { temperature: f64::NAN, ..Default::default() }, ..Default::default() };
    assert!(matches!(Router::new(bad, manual_clock().1), Err(RouteError::InvalidConfig(_))));
    assert!(matches!(
        Router::new(RouterConfig { block_size: 0, ..Default::default() }, manual_clock().1),
        Err(RouteError::InvalidConfig(_))
    ));
}

// ---------------------------------------------------------------- dump replacement

fn stored_from_root(hashes: &[BlockHash], salt: u64) -> KvEventData {
    let blocks = hashes
        .iter()
        .enumerate()
        .map(|(i, &h)| StoredBlock { engine_hash: EngineHash(salt << 40 | i as u64), content_hash: h })
        .collect();
    KvEventData::Stored { parent: None, blocks }
}

/// `Router::replace_rank` with a dump given as `Stored` events from nothing (each a run).
fn replace_with_events(
    router: &Router,
    tier: StorageTier,
    rank: RankKey,
    events: &[KvEventData],
) -> Result<(), RouteError> {
    let runs: Vec<_> = events
        .iter()
        .map(|e| match e {
            KvEventData::Stored { parent, blocks } => (*parent, blocks.clone()),
            other => panic!("a dump is stored chains, not {other:?}"),
        })
        .collect();
    let hint = runs.iter().map(|(_, b)| b.len()).sum();
    router.replace_rank(tier, rank, hint, runs, &[])
}

#[test]
fn replace_rank_swaps_in_a_dump_and_switches_the_worker_to_exact() {
    replace_rank_swaps_in_a_dump_on(1);
}

/// The same on indexes of 3 shards: the staged rank's id is the index's, not its shard's.
#[test]
fn replace_rank_swaps_in_a_dump_on_sharded_indexes() {
    replace_rank_swaps_in_a_dump_on(3);
}

fn replace_rank_swaps_in_a_dump_on(index_shards: usize) {
    let (router, _) = sharded_router(index_shards);
    router.add_worker(WorkerSpec::new(WorkerId(1), 2, 16)).expect("add");
    let rank = key(1, 1);
    let prompt = prompt_blocks(3, 40);
    let mut event_id = 0;
    hold_prefix(&router, rank, &prompt, 30, &mut event_id);
    let fixed = RouteOptions { rank: Some(rank), dry_run: true, ..RouteOptions::default() };
    assert_eq!(router.best_worker(Prompt::Blocks(&prompt), &fixed).expect("route").overlap_blocks, 30);

    replace_with_events(&router, StorageTier::Device, rank, &[stored_from_root(&prompt[..12], 9)]).expect("replace");
    assert_eq!(router.best_worker(Prompt::Blocks(&prompt), &fixed).expect("route").overlap_blocks, 12);
    // The rank keeps taking events after the dump, whatever their ids.
    router.apply_event(&KvEvent { rank, event_id: 1, data: KvEventData::Cleared });
    assert_eq!(router.best_worker(Prompt::Blocks(&prompt), &fixed).expect("route").overlap_blocks, 0);

    // A dump is a sign of life: an approximate worker becomes exact.
    router.add_worker(WorkerSpec::new(WorkerId(2), 1, 16)).expect("add");
    assert_eq!(router.is_exact(WorkerId(2)), Some(false));
    replace_with_events(&router, StorageTier::Device, key(2, 0), &[stored_from_root(&prompt[..5], 4)])
        .expect("replace");
    assert_eq!(router.is_exact(WorkerId(2)), Some(true));
    let best = router.best_worker(Prompt::Blocks(&prompt), &RouteOptions { dry_run: true, ..Default::default() });
    assert_eq!((best.expect("route").worker, 5), (WorkerId(2), 5));
}

#[test]
fn replace_rank_refuses_unknown_ranks() {
    let (router, _) = router();
    router.add_worker(WorkerSpec::new(WorkerId(1), 2, 16)).expect("add");
    let dump = [stored_from_root(&prompt_blocks(1, 4), 1)];
    assert_eq!(
        replace_with_events(&router, StorageTier::Device, key(9, 0), &dump),
        Err(RouteError::UnknownWorker(WorkerId(9)))
    );
    assert!(matches!(
        replace_with_events(&router, StorageTier::Host, key(1, 2), &dump),
        Err(RouteError::RankOutOfRange { .. })
    ));
}

/// Decisions run while a rank's state flips between two dumps: each decision sees one
/// dump or the other, whole — never a mix, never an empty rank.
#[test]
fn decisions_see_the_old_or_the_new_dump_never_a_mix() {
    decisions_see_one_dump_or_the_other_on(1);
}

#[test]
fn decisions_see_one_dump_or_the_other_on_sharded_indexes() {
    decisions_see_one_dump_or_the_other_on(2);
}

fn decisions_see_one_dump_or_the_other_on(index_shards: usize) {
    let (router, _) = sharded_router(index_shards);
    let router = Arc::new(router);
    router.add_worker(WorkerSpec::new(WorkerId(1), 1, 16)).expect("add");
    router.add_worker(WorkerSpec::new(WorkerId(2), 3, 16)).expect("add");
    let rank = key(1, 0);
    let prompt = prompt_blocks(7, 64);
    let long = stored_from_root(&prompt, 1);
    let short_hashes: Vec<BlockHash> = prompt[..16].iter().copied().chain(prompt_blocks(8, 48)).collect();
    let short = stored_from_root(&short_hashes, 2);
    replace_with_events(&router, StorageTier::Device, rank, std::slice::from_ref(&long)).expect("replace");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Decisions taken while the swaps run: the swaps go on (500 at least) until the
    // deciders have taken 100 of them, so a slow thread start cannot leave the swaps
    // unobserved.
    let during = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let swapping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deciders: Vec<_> = (0..2)
        .map(|_| {
            let (router, stop, prompt) = (router.clone(), stop.clone(), prompt.clone());
            let (during, swapping) = (during.clone(), swapping.clone());
            std::thread::spawn(move || {
                let fixed = RouteOptions { rank: Some(rank), dry_run: true, ..RouteOptions::default() };
                let mut decisions = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let overlap = router.best_worker(Prompt::Blocks(&prompt), &fixed).expect("route").overlap_blocks;
                    assert!(overlap == 64 || overlap == 16, "torn replacement: overlap {overlap}");
                    decisions += 1;
                    if swapping.load(Ordering::Relaxed) {
                        during.fetch_add(1, Ordering::Relaxed);
                    }
                }
                decisions
            })
        })
        .collect();
    swapping.store(true, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let mut swap = 0;
    // A decider that stopped early panicked: its join below reports why.
    while (swap < 500 || during.load(Ordering::Relaxed) < 100) && !deciders.iter().any(|d| d.is_finished()) {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the deciders never ran during the swaps");
        let next = if swap % 2 == 0 { &short } else { &long };
        replace_with_events(&router, StorageTier::Device, rank, std::slice::from_ref(next)).expect("replace");
        swap += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let decisions: u64 = deciders.into_iter().map(|d| d.join().expect("a decision saw a torn state")).sum();
    assert!(decisions > 0);
}

/// Dumps arriving at once for workers still in approximate mode: one thread switching its
/// worker to exact mode must not hold a registry snapshot while another, holding the
/// registry lock, waits for old snapshots to drain (this deadlocked once).
#[test]
fn concurrent_dumps_for_approximate_workers_do_not_deadlock() {
    let (router, _) = router();
    let router = Arc::new(router);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for thread in 0..4u64 {
        let (router, done_tx) = (router.clone(), done_tx.clone());
        std::thread::spawn(move || {
            for i in 0..300u64 {
                let worker = WorkerId(thread * 100_000 + i);
                router.add_worker(WorkerSpec::new(worker, 1, 16)).expect("add");
                let dump = [stored_from_root(&prompt_blocks(i, 4), thread)];
                replace_with_events(&router, StorageTier::Device, RankKey { worker, dp_rank: DpRank(0) }, &dump)
                    .expect("dump");
                let decided = router.best_worker(Prompt::Blocks(&prompt_blocks(i, 4)), &RouteOptions::default());
                router.finish(decided.expect("route").request.expect("charged"));
                router.remove_worker(worker).expect("remove");
            }
            let _ = done_tx.send(());
        });
    }
    for _ in 0..4 {
        done_rx.recv_timeout(std::time::Duration::from_secs(60)).expect("a thread is stuck: deadlock");
    }
}
