//! [`EngineModel`] against the router's own ingest: the events it publishes, mapped by the
//! engine-event [`BlockMapper`] into a reference index, must give every rank exactly the
//! overlap the model reports as cached; plus rank choice, timing and bad requests.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::engine_events::block_mapper::{BlockMapper, MapperConfig};
use crate::event::KvEvent;
use crate::hashing::BlockIdentity;
use crate::ids::RankKey;
use crate::reference::ReferenceIndex;

fn model(dp_size: u32, block_size: u32, capacity_blocks: usize) -> EngineModel {
    EngineModel::new(EngineModelConfig { dp_size, block_size, capacity_blocks, ..EngineModelConfig::default() })
        .unwrap()
}

/// The router side: one mapper per rank (a router block = one engine block here) into one
/// reference index.
struct RouterSide {
    hasher: BlockHasher,
    mappers: Vec<BlockMapper>,
    index: ReferenceIndex,
    next_ids: Vec<u64>,
}

impl RouterSide {
    fn new(dp_size: u32, block_size: u32) -> RouterSide {
        let hasher = BlockHasher::new(block_size as usize).unwrap();
        let mut index = ReferenceIndex::new();
        for rank in 0..dp_size {
            index.register_rank(RankKey::new(0, rank));
        }
        let mappers = (0..dp_size).map(|_| BlockMapper::new(MapperConfig::new(hasher))).collect();
        RouterSide { hasher, mappers, index, next_ids: vec![0; dp_size as usize] }
    }

    fn apply(&mut self, rank: u32, events: &[EngineEvent]) {
        for event in events {
            let mut out = Vec::new();
            match event {
                EngineEvent::Stored(stored) => self.mappers[rank as usize].stored(stored, &mut out),
                EngineEvent::Removed(removed) => self.mappers[rank as usize].removed(removed, &mut out),
                EngineEvent::AllCleared => out.push((crate::tier::StorageTier::Device, KvEventData::Cleared)),
            }
            for (_, data) in out {
                self.next_ids[rank as usize] += 1;
                let event_id = self.next_ids[rank as usize];
                self.index.apply(&KvEvent { rank: RankKey::new(0, rank), event_id, data });
            }
        }
    }

    /// Blocks of `tokens` the index credits `rank` with.
    fn overlap(&self, rank: u32, tokens: &[u32], lora_name: Option<&str>) -> usize {
        let identity = BlockIdentity { lora_name, ..BlockIdentity::default() };
        let mut hashes = Vec::new();
        self.hasher.hash_blocks_with_into(tokens, &identity, &mut hashes);
        let matches = self.index.find_matches(&hashes);
        matches.iter().find(|(key, _)| *key == RankKey::new(0, rank)).map_or(0, |&(_, n)| n as usize)
    }
}

#[test]
fn a_repeated_prompt_is_cached_on_its_rank_only() {
    let mut engine = model(2, 4, 64);
    let prompt: Vec<u32> = (0..18).collect();
    let first = engine.admit(Duration::ZERO, Some(1), &prompt, None).unwrap();
    assert_eq!((first.rank, first.prompt_tokens, first.cached_tokens), (1, 18, 0));
    let again = engine.admit(Duration::ZERO, Some(1), &prompt, None).unwrap();
    assert_eq!(again.cached_tokens, 16, "four full blocks of 4 tokens; the 2 trailing tokens are never cached");
    assert!(again.events.is_empty(), "nothing new to store");
    let elsewhere = engine.admit(Duration::ZERO, Some(0), &prompt, None).unwrap();
    assert_eq!(elsewhere.cached_tokens, 0);
}

#[test]
fn a_fully_cached_prompt_still_computes_its_last_token() {
    let mut engine = model(1, 4, 64);
    let prompt: Vec<u32> = (0..16).collect();
    engine.admit(Duration::ZERO, None, &prompt, None).unwrap();
    let again = engine.admit(Duration::ZERO, None, &prompt, None).unwrap();
    assert_eq!(again.cached_tokens, 12, "at most prompt - 1 tokens, rounded down to whole blocks");
    assert_eq!(engine.cached_tokens(0, &prompt, None), Some(12));
}

#[test]
fn without_a_named_rank_the_least_loaded_one_serves() {
    let mut engine = model(3, 4, 64);
    let prompt = [1, 2, 3, 4, 5];
    let ranks: Vec<u32> = (0..3).map(|_| engine.admit(Duration::ZERO, None, &prompt, None).unwrap().rank).collect();
    assert_eq!(ranks, [0, 1, 2]);
    engine.release(1);
    assert_eq!(engine.admit(Duration::ZERO, None, &prompt, None).unwrap().rank, 1);
    assert_eq!(engine.stats().iter().map(|s| s.in_flight).collect::<Vec<_>>(), [1, 1, 1]);
    for rank in 0..3 {
        engine.release(rank);
        engine.release(rank);
    }
    assert!(engine.stats().iter().all(|s| s.in_flight == 0), "a release past zero stays at zero");
}

#[test]
fn prefills_on_one_rank_queue_and_cached_tokens_cost_nothing() {
    let timing = EngineTiming {
        prefill_overhead: Duration::from_millis(1),
        prefill_per_token: Duration::from_micros(100),
        decode_per_token: Duration::from_millis(5),
    };
    let config =
        EngineModelConfig { dp_size: 2, block_size: 10, capacity_blocks: 100, timing, ..EngineModelConfig::default() };
    let mut engine = EngineModel::new(config).unwrap();
    let prompt: Vec<u32> = (0..100).collect();
    let now = Duration::from_millis(3);
    let first = engine.admit(now, Some(0), &prompt, None).unwrap();
    assert_eq!(first.prefill_start, now);
    assert_eq!(first.first_token_at, now + Duration::from_millis(11), "1 ms + 100 tokens x 100 us");
    assert_eq!(first.token_due(2), first.first_token_at + Duration::from_millis(10));
    // Queued behind the first; 90 of its tokens are cached, 10 are computed.
    let second = engine.admit(now, Some(0), &prompt, None).unwrap();
    assert_eq!(second.cached_tokens, 90);
    assert_eq!(second.prefill_start, first.first_token_at);
    assert_eq!(second.first_token_at, first.first_token_at + Duration::from_millis(2));
    // The other rank is idle.
    let other = engine.admit(now, Some(1), &prompt, None).unwrap();
    assert_eq!(other.prefill_start, now);
}

#[test]
fn bad_requests_and_configurations_are_refused() {
    let mut engine = model(2, 4, 8);
    assert_eq!(
        engine.admit(Duration::ZERO, Some(2), &[1], None),
        Err(EngineModelError::RankOutOfRange { rank: 2, dp_size: 2 })
    );
    assert_eq!(engine.admit(Duration::ZERO, None, &[], None), Err(EngineModelError::EmptyPrompt));
    let long = vec![7u32; engine.config().max_prompt_tokens + 1];
    assert!(matches!(engine.admit(Duration::ZERO, None, &long, None), Err(EngineModelError::PromptTooLong { .. })));
    assert!(engine.stats().iter().all(|s| s.requests == 0), "a refused request changes nothing");
    let config = |dp_size, block_size, capacity_blocks| EngineModelConfig {
        dp_size,
        block_size,
        capacity_blocks,
        ..EngineModelConfig::default()
    };
    assert_eq!(EngineModel::new(config(0, 4, 8)).err(), Some(EngineModelError::NoRanks));
    assert_eq!(EngineModel::new(config(1, 0, 8)).err(), Some(EngineModelError::ZeroBlockSize));
    assert_eq!(EngineModel::new(config(1, 4, 0)).err(), Some(EngineModelError::NoCapacity));
    assert!(EngineModelError::RankOutOfRange { rank: 2, dp_size: 2 }.to_string().contains("0..2"));
}

#[test]
fn a_transferred_request_counts_its_prompt_cached_and_publishes_nothing() {
    let mut engine = model(2, 4, 8);
    let now = Duration::from_millis(7);
    let admitted = engine.admit_transferred(now, Some(1), 100).unwrap();
    assert_eq!((admitted.rank, admitted.cached_tokens, admitted.prefill_start), (1, 100, now));
    assert_eq!(admitted.first_token_at, now + EngineTiming::default().decode_per_token);
    assert!(admitted.events.is_empty());
    assert_eq!(engine.stats()[1].blocks_held, 0, "the decode side caches nothing");
    assert_eq!(engine.least_loaded_rank(), 0);
    assert_eq!(
        engine.admit_transferred(now, Some(2), 1),
        Err(EngineModelError::RankOutOfRange { rank: 2, dp_size: 2 })
    );
    assert_eq!(engine.admit_transferred(now, None, 0), Err(EngineModelError::EmptyPrompt));
}

#[test]
fn lora_blocks_are_credited_to_their_adapter_only() {
    let mut engine = model(1, 4, 64);
    let mut router = RouterSide::new(1, 4);
    let prompt: Vec<u32> = (0..12).collect();
    let admitted = engine.admit(Duration::ZERO, None, &prompt, Some("adapter-a")).unwrap();
    router.apply(0, &admitted.events);
    assert_eq!(router.overlap(0, &prompt, Some("adapter-a")), 3);
    assert_eq!(router.overlap(0, &prompt, None), 0);
    assert_eq!(engine.cached_tokens(0, &prompt, None), Some(0));
    assert_eq!(engine.admit(Duration::ZERO, None, &prompt, None).unwrap().cached_tokens, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random prompts from a small alphabet (so they share prefixes) on random ranks of a
    /// small cache (so blocks are evicted): after each request, the index fed the
    /// engine's events credits every rank with exactly what the engine holds.
    #[test]
    fn the_published_events_give_the_router_exactly_the_engines_cache(
        block_size in 1u32..5,
        capacity in 4usize..24,
        requests in proptest::collection::vec(
            (0u32..3, proptest::collection::vec(0u32..3, 1..30), any::<bool>()), 1..40),
    ) {
        let mut engine = model(3, block_size, capacity);
        let mut router = RouterSide::new(3, block_size);
        let mut seen: Vec<(Vec<u32>, Option<&str>)> = Vec::new();
        for (rank, tokens, lora) in &requests {
            let lora = lora.then_some("lora");
            let admitted = engine.admit(Duration::ZERO, Some(*rank), tokens, lora).unwrap();
            router.apply(*rank, &admitted.events);
            seen.push((tokens.clone(), lora));
            prop_assert_eq!(router.index.counters().unknown_parent, 0);
            prop_assert_eq!(router.index.counters().unknown_remove, 0);
            for (prompt, lora) in &seen {
                for rank in 0..3 {
                    let credited = router.overlap(rank, prompt, *lora);
                    let held = engine.held_prefix_blocks(rank, prompt, *lora).unwrap();
                    prop_assert_eq!(credited, held, "rank {} prompt {:?}", rank, prompt);
                }
            }
        }
        let stats = engine.stats();
        prop_assert_eq!(stats.iter().map(|s| s.requests).sum::<u64>(), requests.len() as u64);
        for (rank, s) in stats.iter().enumerate() {
            prop_assert!(s.blocks_held <= capacity, "rank {} holds {} > {}", rank, s.blocks_held, capacity);
        }
    }
}
