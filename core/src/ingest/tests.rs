//! Cursor classification (duplicates, gaps, dumps, order violations), dump replay runs,
//! and an end-to-end run without sockets: a publisher and a router exchanging encoded
//! frames through decoders in random chunks, with lost frames, replayed batches, dropped
//! streams and publisher restarts, ending with exactly the index state of the events.

use proptest::prelude::*;

use super::*;
use crate::event::{KvEvent, KvEventData, StoredBlock};
use crate::ids::{BlockHash, EngineHash, RankKey};
use crate::publish::{delta_frames, dump_frames, PublisherConfig, RankPublisher, SubscribeReply};
use crate::reference::ReferenceIndex;
use crate::tier::StorageTier;
use crate::wire::{self, DecoderConfig, Deltas, DumpBlock, Frame, FrameDecoder};

#[test]
fn contiguous_batches_apply_whole() {
    let mut cursor = RankCursor::synced_at(0);
    assert_eq!(cursor.on_deltas(1, 3), Ok(DeltaVerdict::Apply { skip: 0 }));
    assert_eq!(cursor.on_deltas(4, 1), Ok(DeltaVerdict::Apply { skip: 0 }));
    assert_eq!(cursor.applied_seq(), Some(4));
    assert_eq!(cursor.resume_after(), Some(4));
}

#[test]
fn overlapping_batches_skip_what_was_applied() {
    let mut cursor = RankCursor::synced_at(10);
    // 8, 9, 10 were applied; 11 and 12 are new.
    assert_eq!(cursor.on_deltas(8, 5), Ok(DeltaVerdict::Apply { skip: 3 }));
    assert_eq!(cursor.applied_seq(), Some(12));
    // Entirely old: all skipped, the cursor stays.
    assert_eq!(cursor.on_deltas(5, 8), Ok(DeltaVerdict::Apply { skip: 8 }));
    assert_eq!(cursor.on_deltas(12, 1), Ok(DeltaVerdict::Apply { skip: 1 }));
    assert_eq!(cursor.applied_seq(), Some(12));
}

#[test]
fn a_missing_seq_is_a_gap_and_applies_nothing() {
    let mut cursor = RankCursor::synced_at(10);
    assert_eq!(cursor.on_deltas(12, 2), Ok(DeltaVerdict::Gap { expected: 11, got: 12 }));
    assert_eq!(cursor.applied_seq(), Some(10));
    cursor.on_stream_closed();
    assert_eq!(cursor.resume_after(), Some(10));
}

#[test]
fn sequence_overflow_is_refused() {
    let mut cursor = RankCursor::synced_at(u64::MAX - 1);
    assert_eq!(cursor.on_deltas(u64::MAX, 2), Err(CursorError::SeqOverflow));
    assert_eq!(cursor.on_deltas(u64::MAX, 1), Ok(DeltaVerdict::Apply { skip: 0 }));
    assert_eq!(cursor.on_deltas(u64::MAX, 1), Err(CursorError::SeqOverflow));
}

#[test]
fn deltas_need_a_resume_point_or_a_finished_dump() {
    let mut cursor = RankCursor::new();
    assert_eq!(cursor.resume_after(), None);
    assert_eq!(cursor.on_deltas(1, 1), Err(CursorError::DeltasBeforeSync));
    cursor.on_dump_begin(7).unwrap();
    assert_eq!(cursor.resume_after(), None);
    assert_eq!(cursor.on_deltas(8, 1), Err(CursorError::DeltasDuringDump));
    assert_eq!(cursor.on_dump_begin(7), Err(CursorError::DumpAlreadyStarted));
    cursor.on_dump_blocks(2).unwrap();
    cursor.on_dump_blocks(3).unwrap();
    assert_eq!(cursor.on_dump_end(6, 5), Err(CursorError::DumpSeqMismatch { begin: 7, end: 6 }));
    assert_eq!(cursor.on_dump_end(7, 4), Err(CursorError::DumpCountMismatch { received: 5, announced: 4 }));
    assert_eq!(cursor.on_dump_end(7, 5), Ok(()));
    assert_eq!(cursor.on_deltas(8, 1), Ok(DeltaVerdict::Apply { skip: 0 }));
    assert_eq!(cursor.on_dump_blocks(1), Err(CursorError::NotDumping));
    assert_eq!(cursor.on_dump_end(8, 0), Err(CursorError::NotDumping));
}

#[test]
fn a_dump_cut_short_asks_for_a_new_dump() {
    let mut cursor = RankCursor::synced_at(3);
    cursor.on_dump_begin(9).unwrap();
    cursor.on_stream_closed();
    assert_eq!(cursor.resume_after(), None);
    assert!(!cursor.is_dumping());
}

#[test]
fn a_new_incarnation_forgets_the_position() {
    let mut cursor = RankCursor::new();
    assert!(!cursor.on_hello(1));
    cursor.on_dump_begin(5).unwrap();
    cursor.on_dump_end(5, 0).unwrap();
    assert!(cursor.on_hello(1));
    assert_eq!(cursor.resume_after(), Some(5));
    assert!(!cursor.on_hello(2));
    assert_eq!(cursor.resume_after(), None);
}

#[test]
fn dump_collector_keeps_each_tiers_blocks_and_refuses_past_its_bound() {
    let block = |e: u64, placeholder: bool| DumpBlock {
        parent: None,
        block: StoredBlock { engine_hash: EngineHash(e), content_hash: BlockHash(e * 10) },
        placeholder,
    };
    let mut collector = DumpCollector::new(4);
    collector.add(StorageTier::Device, &[block(1, false), block(2, true)]).unwrap();
    collector.add(StorageTier::Host, &[block(7, false)]).unwrap();
    assert_eq!(collector.received(), 3);
    let mut full = collector.clone();
    assert_eq!(full.add(StorageTier::Disk, &[block(8, false), block(9, false)]), Err(DumpTooLarge { max_blocks: 4 }));
    let [device, host, disk] = collector.finish();
    assert_eq!(device, [block(1, false), block(2, true)]);
    assert_eq!(host, [block(7, false)]);
    assert!(disk.is_empty());
}

#[test]
fn dump_runs_join_chains_and_placeholders_are_removed_last() {
    let b = |e: u64| StoredBlock { engine_hash: EngineHash(e), content_hash: BlockHash(e * 10) };
    let dump = |parent: Option<u64>, e: u64, placeholder: bool| DumpBlock {
        parent: parent.map(EngineHash),
        block: b(e),
        placeholder,
    };
    let blocks = [dump(None, 1, false), dump(Some(1), 2, true), dump(Some(2), 3, false), dump(Some(1), 4, false)];
    assert_eq!(
        crate::event::dump_events(&blocks),
        [
            KvEventData::Stored { parent: None, blocks: vec![b(1), b(2), b(3)] },
            KvEventData::Stored { parent: Some(EngineHash(1)), blocks: vec![b(4)] },
            KvEventData::Removed { blocks: vec![EngineHash(2)] },
        ]
    );
}

// ---- End to end, without sockets ----

const RANK: RankKey = RankKey::new(4, 1);
const MAX_FRAME_LEN: u32 = 240;

/// What happens next in the run.
#[derive(Clone, Debug)]
enum Step {
    Publish(StorageTier, KvEventData),
    /// The router reads this many of the frames in flight.
    Deliver(usize),
    /// The frame at the front of the stream is lost (a publisher bug; the router must notice).
    Lose,
    /// The publisher re-sends a batch overlapping what the router applied.
    Replay(u64),
    /// The rank's stream breaks; the router subscribes again.
    DropStream,
    /// The publisher restarts: new incarnation, empty engine cache.
    Restart,
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (crate::publish::tests::arb_tier(), crate::publish::tests::arb_event())
            .prop_map(|(t, e)| Step::Publish(t, e)),
        5 => (1usize..6).prop_map(Step::Deliver),
        1 => Just(Step::Lose),
        1 => (1u64..5).prop_map(Step::Replay),
        1 => Just(Step::DropStream),
        1 => Just(Step::Restart),
    ]
}

/// The router's side of one rank: the cursor and one index per tier.
struct Router {
    cursor: RankCursor,
    indexes: [ReferenceIndex; 3],
    /// The index event ids, numbered by the router itself (see the module docs).
    next_event_id: u64,
    dump: Option<DumpCollector>,
}

impl Router {
    fn new() -> Self {
        let indexes = [ReferenceIndex::new(), ReferenceIndex::new(), ReferenceIndex::new()];
        let mut router = Router { cursor: RankCursor::new(), indexes, next_event_id: 0, dump: None };
        for index in &mut router.indexes {
            index.register_rank(RANK);
        }
        router
    }

    fn apply(&mut self, tier: StorageTier, data: &KvEventData) {
        self.next_event_id += 1;
        let event = KvEvent { rank: RANK, event_id: self.next_event_id, data: data.clone() };
        self.indexes[tier.index()].apply(&event);
    }

    /// Handles one frame of the rank's stream; `Err` closes the stream.
    fn handle(&mut self, frame: Frame) -> Result<(), String> {
        match frame {
            Frame::Deltas(Deltas { tier, first_seq, events, .. }) => {
                match self.cursor.on_deltas(first_seq, events.len()).map_err(|e| e.to_string())? {
                    DeltaVerdict::Apply { skip } => {
                        for event in &events[skip..] {
                            self.apply(tier, event);
                        }
                        Ok(())
                    }
                    DeltaVerdict::Gap { expected, got } => Err(format!("gap: expected {expected}, got {got}")),
                }
            }
            Frame::DumpBegin(begin) => {
                self.cursor.on_dump_begin(begin.as_of_seq).map_err(|e| e.to_string())?;
                self.dump = Some(DumpCollector::new(u64::MAX));
                Ok(())
            }
            Frame::DumpBlocks(chunk) => {
                self.cursor.on_dump_blocks(chunk.blocks.len()).map_err(|e| e.to_string())?;
                let dump = self.dump.as_mut().ok_or("no dump")?;
                dump.add(chunk.tier, &chunk.blocks).map_err(|e| e.to_string())
            }
            Frame::DumpEnd(end) => {
                self.cursor.on_dump_end(end.as_of_seq, end.block_count).map_err(|e| e.to_string())?;
                // Each tier replaced by its part of the dump, as a sink's `replace_rank` does.
                let blocks = self.dump.take().ok_or("no dump")?.finish();
                for (tier, blocks) in StorageTier::ALL.into_iter().zip(&blocks) {
                    self.apply(tier, &KvEventData::Cleared);
                    for event in crate::event::dump_events(blocks) {
                        self.apply(tier, &event);
                    }
                }
                Ok(())
            }
            other => Err(format!("unexpected frame {other:?}")),
        }
    }
}

/// The publisher's side: its state and the frames in flight on the rank's stream.
struct Publisher {
    publisher: RankPublisher,
    incarnation: u64,
    in_flight: std::collections::VecDeque<Frame>,
}

impl Publisher {
    fn new(incarnation: u64) -> Self {
        let config = PublisherConfig { ring_max_entries: 6, ring_max_blocks: 20, max_event_blocks: 3 };
        Publisher { publisher: RankPublisher::new(RANK, config), incarnation, in_flight: Default::default() }
    }

    /// A router (re)subscribes: the stream restarts with the reply.
    fn subscribe(&mut self, resume_after: Option<u64>) {
        self.in_flight.clear();
        match self.publisher.subscribe(resume_after) {
            SubscribeReply::Resume(deltas) => {
                self.in_flight.extend(delta_frames(RANK, &deltas, MAX_FRAME_LEN).unwrap());
            }
            SubscribeReply::Dump(dump) => self.in_flight.extend(dump_frames(RANK, &dump, MAX_FRAME_LEN)),
        }
    }

    fn publish(&mut self, tier: StorageTier, data: KvEventData) {
        let before = self.publisher.last_seq();
        self.publisher.publish_in(tier, data);
        let deltas: Vec<_> =
            self.publisher.ring().deltas_after(before).expect("the ring holds the new deltas").cloned().collect();
        self.in_flight.extend(delta_frames(RANK, &deltas, MAX_FRAME_LEN).unwrap());
    }
}

/// Sends frames through the encoder and a decoder in `chunk`-byte pieces.
fn transmit(frames: &[Frame], chunk: usize) -> Vec<Frame> {
    let mut bytes = Vec::new();
    for frame in frames {
        wire::encode(frame, &mut bytes).unwrap();
    }
    let mut decoder =
        FrameDecoder::with_config(DecoderConfig { max_frame_len: MAX_FRAME_LEN, require_checksum: false });
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk) {
        let mut piece = piece;
        while let Some(frame) = decoder.decode(&mut piece).unwrap() {
            out.push(frame);
        }
    }
    decoder.finish().unwrap();
    out
}

/// Connects (Hello, then Subscribe), as after a restart or a broken stream.
fn connect(router: &mut Router, publisher: &mut Publisher) {
    router.cursor.on_hello(publisher.incarnation);
    router.cursor.on_stream_closed();
    publisher.subscribe(router.cursor.resume_after());
}

/// Delivers up to `n` frames; on a refused frame the stream is closed and re-subscribed.
fn deliver(router: &mut Router, publisher: &mut Publisher, n: usize, chunk: usize) {
    let count = n.min(publisher.in_flight.len());
    let frames: Vec<Frame> = publisher.in_flight.drain(..count).collect();
    for frame in transmit(&frames, chunk) {
        if router.handle(frame).is_err() {
            connect(router, publisher);
            return;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_router_ends_with_exactly_the_published_state(
        steps in prop::collection::vec(arb_step(), 1..80),
        chunk in 1usize..64,
    ) {
        let mut truth = Router::new();
        let mut router = Router::new();
        let mut publisher = Publisher::new(1);
        connect(&mut router, &mut publisher);
        for step in steps {
            match step {
                Step::Publish(tier, data) => {
                    truth.apply(tier, &data);
                    publisher.publish(tier, data);
                }
                Step::Deliver(n) => deliver(&mut router, &mut publisher, n, chunk),
                Step::Lose => {
                    publisher.in_flight.pop_front();
                }
                Step::Replay(back) => {
                    let Some(applied) = router.cursor.applied_seq() else { continue };
                    if let Some(deltas) = publisher.publisher.ring().deltas_after(applied.saturating_sub(back)) {
                        let deltas: Vec<_> = deltas.cloned().collect();
                        for frame in delta_frames(RANK, &deltas, MAX_FRAME_LEN).unwrap().into_iter().rev() {
                            publisher.in_flight.push_front(frame);
                        }
                    }
                }
                Step::DropStream => connect(&mut router, &mut publisher),
                Step::Restart => {
                    for tier in StorageTier::ALL {
                        truth.apply(tier, &KvEventData::Cleared);
                    }
                    publisher = Publisher::new(publisher.incarnation + 1);
                    connect(&mut router, &mut publisher);
                }
            }
        }
        // Drain: everything in flight arrives (no more losses). A loss at the very end goes
        // unnoticed until the next batch, so the router then subscribes once more (as a
        // transport does periodically) and drains that too.
        for round in 0..2 {
            if round == 1 {
                connect(&mut router, &mut publisher);
            }
            while !publisher.in_flight.is_empty() {
                deliver(&mut router, &mut publisher, usize::MAX, chunk);
            }
        }
        prop_assert_eq!(router.cursor.applied_seq(), Some(publisher.publisher.last_seq()));
        for (slot, tier) in StorageTier::ALL.into_iter().enumerate() {
            let state = publisher.publisher.state(tier);
            let mut requests: Vec<Vec<BlockHash>> = state.paths().into_iter().map(|(_, path)| path).collect();
            for a in 0..5 {
                for b in 0..5 {
                    requests.push(vec![BlockHash(a), BlockHash(b)]);
                }
            }
            for request in requests {
                prop_assert_eq!(
                    router.indexes[slot].find_matches(&request),
                    truth.indexes[slot].find_matches(&request),
                    "tier {:?}, request {:?}", tier, request
                );
            }
        }
    }
}
