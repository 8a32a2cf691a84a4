//! Dumps replay to the same state (checked against the index's reference model too),
//! parents come first, the ring resumes exactly after the cursor, long events split
//! without changing their effect, and frames respect the maximum length.

use proptest::prelude::*;

use super::*;
use crate::event::{KvEvent, KvEventData, StoredBlock};
use crate::ids::{BlockHash, EngineHash, RankKey};
use crate::reference::ReferenceIndex;
use crate::tier::StorageTier;
use crate::wire::{self, Frame};

const RANK: RankKey = RankKey::new(9, 2);
/// Content alphabet: small, so chains share prefixes and positions collide.
const CONTENTS: u64 = 5;
/// Engine hash alphabet: small, so re-stores, duplicates and removals of held blocks are common.
const ENGINE_HASHES: u64 = 24;

fn block(engine: u64, content: u64) -> StoredBlock {
    StoredBlock { engine_hash: EngineHash(engine), content_hash: BlockHash(content) }
}

pub(crate) fn arb_event() -> impl Strategy<Value = KvEventData> {
    prop_oneof![
        6 => (
            proptest::option::weighted(0.6, 0..ENGINE_HASHES),
            prop::collection::vec((0..ENGINE_HASHES, 0..CONTENTS), 1..6),
        )
            .prop_map(|(parent, blocks)| KvEventData::Stored {
                parent: parent.map(EngineHash),
                blocks: blocks.into_iter().map(|(e, c)| block(e, c)).collect(),
            }),
        3 => prop::collection::vec(0..ENGINE_HASHES, 1..5)
            .prop_map(|b| KvEventData::Removed { blocks: b.into_iter().map(EngineHash).collect() }),
        1 => Just(KvEventData::Cleared),
    ]
}

pub(crate) fn arb_tier() -> impl Strategy<Value = StorageTier> {
    prop_oneof![4 => Just(StorageTier::Device), 1 => Just(StorageTier::Host), 1 => Just(StorageTier::Disk)]
}

/// Applies `events` to a reference index holding only `RANK`.
fn reference_of<'a>(events: impl IntoIterator<Item = &'a KvEventData>) -> ReferenceIndex {
    let mut index = ReferenceIndex::new();
    index.register_rank(RANK);
    for (id, data) in events.into_iter().enumerate() {
        index.apply(&KvEvent { rank: RANK, event_id: id as u64 + 1, data: data.clone() });
    }
    index
}

/// The events a router applies for a dump of one tier onto an empty rank.
fn replay_events(blocks: &[wire::DumpBlock]) -> Vec<KvEventData> {
    crate::event::dump_events(blocks)
}

/// Every request of up to 3 blocks over the content alphabet, and every held path.
fn probe_requests(states: &[&RankState]) -> Vec<Vec<BlockHash>> {
    let mut requests = Vec::new();
    for a in 0..CONTENTS {
        for b in 0..CONTENTS {
            for c in 0..CONTENTS {
                requests.push(vec![BlockHash(a), BlockHash(b), BlockHash(c)]);
            }
        }
    }
    for state in states {
        requests.extend(state.paths().into_iter().map(|(_, path)| path));
    }
    requests
}

fn overlap(index: &ReferenceIndex, request: &[BlockHash]) -> u32 {
    index.find_matches(request).first().map_or(0, |&(_, depth)| depth)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_replayed_dump_gives_the_same_state(events in prop::collection::vec(arb_event(), 0..40)) {
        let mut state = RankState::new();
        for event in &events {
            state.apply(event);
        }
        let dump = state.dump();

        // Parents first: every parent is a block dumped earlier.
        let mut seen = std::collections::HashSet::new();
        for b in &dump {
            if let Some(parent) = b.parent {
                prop_assert!(seen.contains(&parent), "parent {:?} of {:?} not dumped before it", parent, b);
            }
            prop_assert!(seen.insert(b.block.engine_hash), "engine hash dumped twice: {:?}", b);
        }
        prop_assert_eq!(dump.iter().filter(|b| !b.placeholder).count(), state.len());

        let replay = replay_events(&dump);
        let mut replayed = RankState::new();
        for event in &replay {
            replayed.apply(event);
        }
        prop_assert_eq!(replayed.paths(), state.paths());
        prop_assert_eq!(replayed.entry_count(), state.entry_count());
        prop_assert_eq!(replayed.dump(), dump);

        // The index's own model agrees: the original events and the replay answer every
        // lookup alike.
        let original = reference_of(&events);
        let rebuilt = reference_of(&replay);
        for request in probe_requests(&[&state]) {
            prop_assert_eq!(overlap(&original, &request), overlap(&rebuilt, &request), "request {:?}", request);
        }
    }

    #[test]
    fn the_ring_resumes_exactly_after_the_cursor(
        events in prop::collection::vec((arb_tier(), arb_event()), 0..40),
        max_entries in 0usize..12,
        max_blocks in 0usize..30,
    ) {
        let config = PublisherConfig { ring_max_entries: max_entries, ring_max_blocks: max_blocks, max_event_blocks: 100 };
        let mut publisher = RankPublisher::new(RANK, config);
        let mut history = Vec::new();
        for (tier, event) in &events {
            let seq = publisher.publish_in(*tier, event.clone());
            prop_assert_eq!(seq, history.len() as u64 + 1);
            history.push(Delta { seq, tier: *tier, data: event.clone() });
        }
        let last = publisher.last_seq();
        let first_held = publisher.ring().first_retained_seq().unwrap_or(last + 1);
        prop_assert!(publisher.ring().len() <= max_entries);
        prop_assert!(publisher.ring().blocks() <= max_blocks);
        for after in 0..=last + 2 {
            let covered = after <= last && after + 1 >= first_held;
            match publisher.subscribe(Some(after)) {
                SubscribeReply::Resume(deltas) => {
                    prop_assert!(covered, "resumed after {} though the ring starts at {}", after, first_held);
                    prop_assert_eq!(&deltas[..], &history[after as usize..]);
                }
                SubscribeReply::Dump(dump) => {
                    prop_assert!(!covered, "dumped for {} though the ring holds {}..={}", after, first_held, last);
                    prop_assert_eq!(dump.as_of_seq, last);
                }
            }
        }
        prop_assert!(matches!(publisher.subscribe(None), SubscribeReply::Dump(_)));
    }

    #[test]
    fn long_events_split_without_changing_their_effect(
        events in prop::collection::vec(arb_event(), 0..30),
        max_event_blocks in 1usize..4,
    ) {
        let config = PublisherConfig { max_event_blocks, ..PublisherConfig::default() };
        let mut publisher = RankPublisher::new(RANK, config);
        let mut whole = RankState::new();
        for event in &events {
            publisher.publish(event.clone());
            whole.apply(event);
        }
        prop_assert_eq!(publisher.state(StorageTier::Device).paths(), whole.paths());
        let SubscribeReply::Resume(deltas) = publisher.subscribe(Some(0)) else {
            return Err(TestCaseError::fail("the default ring holds every delta"));
        };
        for delta in &deltas {
            prop_assert!(ring::event_blocks(&delta.data) <= max_event_blocks);
        }
        let original = reference_of(&events);
        let split = reference_of(deltas.iter().map(|d| &d.data));
        for request in probe_requests(&[&whole]) {
            prop_assert_eq!(overlap(&original, &request), overlap(&split, &request));
        }
    }

    #[test]
    fn delta_frames_keep_order_and_fit(
        events in prop::collection::vec((arb_tier(), arb_event()), 1..40),
        max_frame_len in 60u32..400,
    ) {
        let mut publisher = RankPublisher::new(RANK, PublisherConfig { max_event_blocks: 5, ..PublisherConfig::default() });
        for (tier, event) in events {
            publisher.publish_in(tier, event);
        }
        let SubscribeReply::Resume(deltas) = publisher.subscribe(Some(0)) else {
            return Err(TestCaseError::fail("the default ring holds every delta"));
        };
        let frames = match delta_frames(RANK, &deltas, max_frame_len) {
            Ok(frames) => frames,
            Err(too_large) => {
                // Only a delta that cannot fit alone is refused.
                let delta = &deltas[too_large.seq as usize - 1];
                prop_assert!(wire::DELTAS_OVERHEAD + wire::event_encoded_len(&delta.data) > max_frame_len as usize);
                return Ok(());
            }
        };
        let mut rebuilt = Vec::new();
        for frame in &frames {
            prop_assert!(wire::encoded_len(frame) <= max_frame_len as usize);
            let Frame::Deltas(batch) = frame else { return Err(TestCaseError::fail("not a Deltas frame")) };
            prop_assert_eq!(batch.rank, RANK);
            for (i, data) in batch.events.iter().enumerate() {
                rebuilt.push(Delta { seq: batch.first_seq + i as u64, tier: batch.tier, data: data.clone() });
            }
        }
        prop_assert_eq!(rebuilt, deltas);
    }

    #[test]
    fn dump_frames_carry_every_block_and_fit(
        events in prop::collection::vec((arb_tier(), arb_event()), 0..40),
        max_frame_len in 10u32..300,
    ) {
        let mut publisher = RankPublisher::new(RANK, PublisherConfig::default());
        for (tier, event) in events {
            publisher.publish_in(tier, event);
        }
        let dump = publisher.dump();
        let frames: Vec<Frame> = dump_frames(RANK, &dump, max_frame_len).collect();
        prop_assert_eq!(frames.first(), Some(&Frame::DumpBegin(wire::DumpBegin { rank: RANK, as_of_seq: dump.as_of_seq })));
        let end = wire::DumpEnd { rank: RANK, as_of_seq: dump.as_of_seq, block_count: dump.block_count() };
        prop_assert_eq!(frames.last(), Some(&Frame::DumpEnd(end)));
        let mut tiers: Vec<TierDump> = Vec::new();
        for frame in &frames[1..frames.len() - 1] {
            let Frame::DumpBlocks(chunk) = frame else { return Err(TestCaseError::fail("not a DumpBlocks frame")) };
            // As many blocks as fit, and one per frame at least, even under a tiny maximum.
            if wire::max_dump_blocks_per_frame(max_frame_len) == 0 {
                prop_assert_eq!(chunk.blocks.len(), 1);
            } else {
                prop_assert!(!chunk.blocks.is_empty());
                prop_assert!(wire::encoded_len(frame) <= max_frame_len as usize);
            }
            match tiers.last_mut() {
                Some(t) if t.tier == chunk.tier => t.blocks.extend_from_slice(&chunk.blocks),
                _ => tiers.push(TierDump { tier: chunk.tier, blocks: chunk.blocks.clone() }),
            }
        }
        prop_assert_eq!(tiers, dump.tiers);
    }
}

#[test]
fn a_hole_is_dumped_as_a_placeholder_and_removed_after() {
    // Chain a-b-c; b is evicted while c stays (a "hole", as the engine simulator makes).
    let mut state = RankState::new();
    state.apply(&KvEventData::Stored { parent: None, blocks: vec![block(1, 10), block(2, 20), block(3, 30)] });
    state.apply(&KvEventData::Removed { blocks: vec![EngineHash(2)] });
    assert_eq!(state.len(), 2);
    assert_eq!(state.entry_count(), 3);
    let dump = state.dump();
    let placeholder = EngineHash(u64::MAX);
    assert_eq!(
        dump,
        [
            wire::DumpBlock { parent: None, block: block(1, 10), placeholder: false },
            wire::DumpBlock {
                parent: Some(EngineHash(1)),
                block: StoredBlock { engine_hash: placeholder, content_hash: BlockHash(20) },
                placeholder: true
            },
            wire::DumpBlock { parent: Some(placeholder), block: block(3, 30), placeholder: false },
        ]
    );
    // One chain, then the placeholder's removal.
    assert_eq!(
        replay_events(&dump),
        [
            KvEventData::Stored {
                parent: None,
                blocks: vec![
                    block(1, 10),
                    StoredBlock { engine_hash: placeholder, content_hash: BlockHash(20) },
                    block(3, 30)
                ]
            },
            KvEventData::Removed { blocks: vec![placeholder] },
        ]
    );
    // Removing c as well lets the ghost go.
    state.apply(&KvEventData::Removed { blocks: vec![EngineHash(3)] });
    assert_eq!(state.entry_count(), 1);
}

#[test]
fn placeholder_hashes_avoid_held_ones() {
    let mut state = RankState::new();
    state.apply(&KvEventData::Stored {
        parent: None,
        blocks: vec![block(5, 1), block(6, 2), block(u64::MAX, 3), block(u64::MAX - 1, 4)],
    });
    state.apply(&KvEventData::Removed { blocks: vec![EngineHash(6)] });
    let dump = state.dump();
    let placeholder = dump.iter().find(|b| b.placeholder).map(|b| b.block.engine_hash);
    assert_eq!(placeholder, Some(EngineHash(u64::MAX - 2)));
}

#[test]
fn a_store_under_an_unknown_parent_is_dropped_and_so_are_its_later_runs() {
    let config = PublisherConfig { max_event_blocks: 2, ..PublisherConfig::default() };
    let mut publisher = RankPublisher::new(RANK, config);
    let chain: Vec<_> = (1..=5).map(|i| block(i, i)).collect();
    assert_eq!(publisher.publish(KvEventData::Stored { parent: Some(EngineHash(99)), blocks: chain.clone() }), 1);
    assert!(publisher.state(StorageTier::Device).is_empty());
    assert_eq!(publisher.publish(KvEventData::Stored { parent: None, blocks: chain }), 4);
    assert_eq!(publisher.state(StorageTier::Device).len(), 5);
    let removed = KvEventData::Removed { blocks: (1..=5).map(EngineHash).collect() };
    assert_eq!(publisher.publish_in(StorageTier::Device, removed), 7);
    assert!(publisher.state(StorageTier::Device).is_empty());
    assert_eq!(publisher.state(StorageTier::Device).entry_count(), 0);
}

#[test]
fn tiers_are_kept_and_dumped_apart() {
    let mut publisher = RankPublisher::new(RANK, PublisherConfig::default());
    publisher.publish_in(StorageTier::Host, KvEventData::Stored { parent: None, blocks: vec![block(1, 1)] });
    publisher.publish(KvEventData::Stored { parent: None, blocks: vec![block(2, 2)] });
    publisher.publish_in(StorageTier::Disk, KvEventData::Cleared);
    let dump = publisher.dump();
    assert_eq!(dump.as_of_seq, 3);
    let tiers: Vec<_> = dump.tiers.iter().map(|t| (t.tier, t.blocks.len())).collect();
    assert_eq!(tiers, [(StorageTier::Device, 1), (StorageTier::Host, 1)]);
    assert_eq!(dump.block_count(), 2);
}
