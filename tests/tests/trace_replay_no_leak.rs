//! The whole shipped trace, expanded to 16-token blocks, runs through the engine-cache
//! simulator (16 ranks with small caches, so eviction is constant) into the index and
//! the reference model. At checkpoints and at the end the index must hold exactly what
//! the reference holds (distinct blocks and (rank, block) pairs), answer sampled lookups
//! identically, keep no node that neither holds a block nor leads to one, and drop to an
//! empty tree when every rank is removed: nothing leaks.

use std::io::BufReader;

use kvroute_core::reference::ReferenceIndex;
use kvroute_core::sim::{Fleet, FleetConfig};
use kvroute_core::trace::{parse_trace, request_blocks_into};
use kvroute_core::{EventCounters, KvIndex};

const TRACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/conversation_trace.jsonl");

#[test]
fn whole_trace_with_eviction_leaves_no_leak() {
    let file = std::fs::File::open(TRACE).expect("the repo ships the trace");
    let requests = parse_trace(BufReader::new(file)).expect("valid trace");
    let mut fleet = Fleet::new(FleetConfig { workers: 8, dp_size: 2, capacity_blocks: 4096 });
    let index = KvIndex::new();
    let mut reference = ReferenceIndex::new();
    for &rank in fleet.ranks() {
        index.register_rank(rank).unwrap();
        reference.register_rank(rank);
    }
    let ranks = fleet.ranks().to_vec();
    let mut chain = Vec::new();
    let mut evicted = 0usize;
    for (i, request) in requests.iter().enumerate() {
        request_blocks_into(request, 16, &mut chain).unwrap();
        // Sticky per conversation (its first private hash id), like a cache-aware router.
        let conversation = request.hash_ids.get(1).copied().unwrap_or(0);
        let rank = ranks[(conversation.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % ranks.len()];
        let outcome = fleet.prefill(rank, &chain);
        for event in &outcome.events {
            evicted += match &event.data {
                kvroute_core::KvEventData::Removed { blocks } => blocks.len(),
                _ => 0,
            };
            index.apply(event);
            reference.apply(event);
        }
        if i % 97 == 0 {
            assert_eq!(index.find_matches(&chain).sorted(), reference.find_matches(&chain), "request {i}");
        }
        if i % 3000 == 0 {
            let stats = index.stats();
            assert_eq!(stats.distinct_blocks, reference.distinct_blocks());
            assert_eq!(stats.held_pairs, reference.held_pairs());
        }
    }
    assert!(evicted > 1_000_000, "the caches must churn: {evicted} evictions");
    let stats = index.stats();
    assert_eq!(stats.distinct_blocks, reference.distinct_blocks());
    assert_eq!(stats.held_pairs, reference.held_pairs());
    let held: usize = ranks.iter().map(|r| fleet.cache(*r).unwrap().len()).sum();
    assert_eq!(stats.held_pairs, held, "the index holds exactly what the engines cache");
    assert_eq!(stats.empty_leaves, 0, "no node that holds nothing and leads nowhere: {stats:?}");
    let counters = index.counters();
    assert_eq!(&counters, reference.counters());
    assert_eq!(
        EventCounters { events_applied: 0, blocks_stored: 0, blocks_removed: 0, ..counters.clone() },
        EventCounters::default(),
        "the simulator's stream has no anomaly"
    );
    for rank in &ranks {
        assert!(index.deregister_rank(*rank));
    }
    let empty = index.stats();
    assert_eq!((empty.nodes, empty.distinct_blocks), (0, 0), "every node was reclaimed");
}
