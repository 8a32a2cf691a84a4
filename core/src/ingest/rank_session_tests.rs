use std::sync::Mutex;

use crate::event::{DumpBlock, KvEvent, KvEventData, StoredBlock};
use crate::ids::{BlockHash, EngineHash, RankKey, WorkerId};
use crate::ingest::{CursorError, IngestSink};
use crate::tier::StorageTier;
use crate::wire::{Deltas, DumpBegin, DumpBlocks, DumpEnd, Frame, FrameType, GoodbyeCode, Heartbeat, Subscribe};

use super::*;

#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<String>>,
}

impl IngestSink for Recorder {
    fn apply_batch(&self, tier: StorageTier, events: &[KvEvent]) {
        for event in events {
            self.log.lock().unwrap().push(format!("apply {tier:?} {:?}", event.data));
        }
    }
    fn apply_replayed_batch(&self, tier: StorageTier, events: &[KvEvent]) {
        for event in events {
            self.log.lock().unwrap().push(format!("replay {tier:?} {:?}", event.data));
        }
    }
    fn replace_rank(&self, tier: StorageTier, rank: RankKey, dump: &[DumpBlock]) {
        let events = crate::event::dump_events(dump);
        self.log.lock().unwrap().push(format!("replace {tier:?} {rank} {events:?}"));
    }
    fn remove_rank(&self, rank: RankKey) {
        self.log.lock().unwrap().push(format!("remove {rank}"));
    }
}

const RANK: RankKey = RankKey::new(7, 0);

fn block(n: u64) -> StoredBlock {
    StoredBlock { engine_hash: EngineHash(n), content_hash: BlockHash(n * 10) }
}

fn stored(n: u64) -> KvEventData {
    KvEventData::Stored { parent: None, blocks: vec![block(n)] }
}

fn deltas(first_seq: u64, events: Vec<KvEventData>) -> Frame {
    Frame::Deltas(Deltas { rank: RANK, tier: StorageTier::Device, first_seq, events })
}

struct Fixture {
    session: RankSession,
    sink: Recorder,
}

impl Fixture {
    fn new() -> Self {
        let mut session = RankSession::new();
        session.on_hello(42);
        Fixture { session, sink: Recorder::default() }
    }

    fn feed(&mut self, frame: Frame) -> Result<FrameEffect, FrameError> {
        let may_publish = |worker: WorkerId| worker == WorkerId(7);
        let ctx = FrameContext { rank: RANK, may_publish: &may_publish, sink: &self.sink, max_dump_blocks: 3 };
        self.session.on_frame(frame, &ctx)
    }

    fn log(&self) -> Vec<String> {
        std::mem::take(&mut *self.sink.log.lock().unwrap())
    }

    fn empty_dump(&mut self, as_of_seq: u64) {
        self.feed(Frame::DumpBegin(DumpBegin { rank: RANK, as_of_seq })).unwrap();
        self.feed(Frame::DumpEnd(DumpEnd { rank: RANK, as_of_seq, block_count: 0 })).unwrap();
    }
}

#[test]
fn dump_then_deltas_skip_duplicates_and_refuse_gaps() {
    let mut f = Fixture::new();
    assert_eq!(f.feed(deltas(1, vec![stored(1)])), Err(FrameError::Order(CursorError::DeltasBeforeSync)));
    f.empty_dump(0);
    // Nothing held before and nothing dumped: no replace call at all.
    assert!(f.log().is_empty());
    let applied = f.feed(deltas(1, vec![stored(1), stored(2)])).unwrap();
    assert_eq!(applied, FrameEffect { deltas_frames: 1, events: 2, block_events: 2, ..FrameEffect::default() });
    let overlapping = f.feed(deltas(2, vec![stored(2), stored(3)])).unwrap();
    assert_eq!((overlapping.events, overlapping.block_events), (1, 1), "event 2 applied once");
    assert_eq!(f.log().len(), 3);
    let duplicates = f.feed(deltas(1, vec![stored(1)])).unwrap();
    assert_eq!(duplicates, FrameEffect { deltas_frames: 1, ..FrameEffect::default() });
    let gap = f.feed(deltas(5, vec![stored(5)])).unwrap_err();
    assert_eq!(gap, FrameError::Gap { expected: 4, got: 5 });
    assert!(gap.is_gap() && !gap.is_protocol_violation());
    assert!(f.log().is_empty(), "a refused batch applies nothing");
    assert_eq!(f.session.resume_after(), Some(3));
    assert_eq!(f.session.position(), Some((42, 3)));
}

#[test]
fn a_dump_replaces_every_tier_the_rank_held_at_its_end() {
    let mut f = Fixture::new();
    f.empty_dump(0);
    f.feed(deltas(1, vec![stored(1)])).unwrap();
    f.log();
    f.feed(Frame::DumpBegin(DumpBegin { rank: RANK, as_of_seq: 9 })).unwrap();
    let chunk = |blocks: Vec<DumpBlock>| Frame::DumpBlocks(DumpBlocks { rank: RANK, tier: StorageTier::Host, blocks });
    let dump_block = |n: u64, parent: Option<u64>, placeholder: bool| DumpBlock {
        parent: parent.map(EngineHash),
        block: block(n),
        placeholder,
    };
    let effect = f.feed(chunk(vec![dump_block(1, None, true), dump_block(2, Some(1), false)])).unwrap();
    assert_eq!(effect.dump_blocks, 2);
    assert!(f.log().is_empty(), "nothing is applied before DumpEnd");
    let end = f.feed(Frame::DumpEnd(DumpEnd { rank: RANK, as_of_seq: 9, block_count: 2 })).unwrap();
    assert_eq!(end.dumps, 1);
    let log = f.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[0].starts_with("replace Device 7/0 []"), "the tier the deltas touched is emptied: {log:?}");
    assert!(log[1].starts_with("replace Host 7/0 [Stored"), "{log:?}");
    assert!(log[1].contains("Removed { blocks: [EngineHash(1)] }"), "placeholder removed: {log:?}");
    // The next dump replaces only the tier this one filled.
    f.feed(Frame::DumpBegin(DumpBegin { rank: RANK, as_of_seq: 9 })).unwrap();
    f.feed(Frame::DumpEnd(DumpEnd { rank: RANK, as_of_seq: 9, block_count: 0 })).unwrap();
    let log = f.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(log[0].starts_with("replace Host 7/0 []"), "{log:?}");
    f.feed(deltas(10, vec![stored(3)])).unwrap();
    assert_eq!(f.session.position(), Some((42, 10)));
}

#[test]
fn a_restored_session_resumes_and_its_first_dump_replaces_every_tier() {
    let mut session = RankSession::restored(42, 17, 17);
    assert_eq!((session.resume_after(), session.position()), (Some(17), Some((42, 17))));
    session.on_hello(42);
    assert_eq!(session.resume_after(), Some(17), "the same incarnation keeps its position");
    let sink = Recorder::default();
    let may_publish = |_: WorkerId| true;
    let ctx = FrameContext { rank: RANK, may_publish: &may_publish, sink: &sink, max_dump_blocks: 3 };
    session.on_frame(Frame::DumpBegin(DumpBegin { rank: RANK, as_of_seq: 20 }), &ctx).unwrap();
    session.on_frame(Frame::DumpEnd(DumpEnd { rank: RANK, as_of_seq: 20, block_count: 0 }), &ctx).unwrap();
    assert_eq!(sink.log.lock().unwrap().len(), StorageTier::ALL.len(), "a snapshot may hold the rank in any tier");
    session.on_hello(43);
    assert_eq!((session.resume_after(), session.position()), (None, None), "another incarnation starts afresh");
}

#[test]
fn bad_frames_are_typed_errors() {
    let mut f = Fixture::new();
    f.empty_dump(0);
    let other_worker = Frame::Deltas(Deltas {
        rank: RankKey::new(8, 0),
        tier: StorageTier::Device,
        first_seq: 1,
        events: vec![KvEventData::Cleared],
    });
    assert_eq!(f.feed(other_worker), Err(FrameError::Unauthorized(RankKey::new(8, 0))));
    let other_rank = Frame::DumpBegin(DumpBegin { rank: RankKey::new(7, 1), as_of_seq: 0 });
    let wrong = f.feed(other_rank).unwrap_err();
    assert_eq!(wrong, FrameError::WrongRank { expected: RANK, got: RankKey::new(7, 1) });
    assert!(wrong.is_protocol_violation());
    let subscribe = Frame::Subscribe(Subscribe { rank: RANK, resume_after: None });
    assert_eq!(f.feed(subscribe), Err(FrameError::UnexpectedFrame(FrameType::Subscribe)));
    let heartbeat = |last_seq| Frame::Heartbeat(Heartbeat { rank: RANK, last_seq });
    assert_eq!(f.feed(heartbeat(0)), Ok(FrameEffect::default()));
    let behind = f.feed(heartbeat(2)).unwrap_err();
    assert_eq!(behind, FrameError::BehindHeartbeat { applied: 0, last_seq: 2 });
    assert!(behind.is_gap());
    f.feed(deltas(1, vec![stored(1)])).unwrap();
    assert_eq!(f.feed(heartbeat(0)), Err(FrameError::HeartbeatBehindCursor { applied: 1, last_seq: 0 }));
    f.feed(Frame::DumpBegin(DumpBegin { rank: RANK, as_of_seq: 5 })).unwrap();
    let big = (0..4).map(|n| DumpBlock { parent: None, block: block(n), placeholder: false }).collect();
    let chunk = Frame::DumpBlocks(DumpBlocks { rank: RANK, tier: StorageTier::Device, blocks: big });
    assert_eq!(f.feed(chunk), Err(FrameError::DumpTooLarge { max: 3 }));
    let goodbye = Frame::Goodbye(crate::wire::Goodbye { code: GoodbyeCode::NORMAL, message: String::new() });
    assert_eq!(f.feed(goodbye), Err(FrameError::Goodbye(GoodbyeCode::NORMAL)));
    assert!(f.log().len() == 1, "only the one good batch reached the sink");
}

#[test]
fn events_in_a_restored_snapshots_settled_window_are_applied_as_replays() {
    let kinds = |sink: &Recorder| -> Vec<String> {
        std::mem::take(&mut *sink.log.lock().unwrap()).iter().map(|l| l.split(' ').next().unwrap().to_owned()).collect()
    };
    let may_publish = |_: WorkerId| true;
    let sink = Recorder::default();
    let ctx = FrameContext { rank: RANK, may_publish: &may_publish, sink: &sink, max_dump_blocks: 3 };
    // Blocks hold every event up to 17, maybe some up to 20.
    let mut session = RankSession::restored(42, 17, 20);
    session.on_hello(42);
    session.on_frame(deltas(16, vec![stored(16), stored(17), stored(18)]), &ctx).unwrap();
    assert_eq!(kinds(&sink), ["replay"], "16 and 17 are skipped as duplicates, 18 replayed");
    session.on_frame(deltas(19, vec![stored(19), stored(20), stored(21)]), &ctx).unwrap();
    assert_eq!(kinds(&sink), ["replay", "replay", "apply"]);
    session.on_frame(deltas(22, vec![stored(22)]), &ctx).unwrap();
    assert_eq!(kinds(&sink), ["apply"], "the window is over");

    // Another incarnation, or a dump, ends the window.
    let mut session = RankSession::restored(42, 17, 20);
    session.on_hello(43);
    session.on_frame(Frame::DumpBegin(DumpBegin { rank: RANK, as_of_seq: 0 }), &ctx).unwrap();
    session.on_frame(Frame::DumpEnd(DumpEnd { rank: RANK, as_of_seq: 0, block_count: 0 }), &ctx).unwrap();
    kinds(&sink);
    session.on_frame(deltas(1, vec![stored(1)]), &ctx).unwrap();
    assert_eq!(kinds(&sink), ["apply"]);
    // No window: nothing is a replay.
    let mut session = RankSession::restored(42, 17, 17);
    session.on_hello(42);
    session.on_frame(deltas(18, vec![stored(18)]), &ctx).unwrap();
    assert_eq!(kinds(&sink), ["apply"]);
}
