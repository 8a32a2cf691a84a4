//! [`RankSlot`]: the router's state for one rank, and [`RankSlot::on_frame`], which
//! applies one frame of the rank's stream to it and to the sink. Sans-IO: the rank task
//! reads frames and calls this under the slot's lock.
//!
//! Per frame: the frame must be for this stream's rank (a rank of a worker the peer may
//! not publish for is `Unauthorized`, another rank `WrongRank`); `Deltas` go through the
//! [`RankCursor`] (duplicates skipped, a gap refused) and the new events to the sink as
//! one batch, numbered by core's process-wide [`allocate_event_ids`]; a dump is gathered
//! by a [`DumpCollector`] (bounded by `max_dump_blocks`) and handed to `replace_rank` tier
//! by tier at `DumpEnd`; a `Heartbeat` must match the applied sequence number.

use kvroute_core::event::KvEvent;
use kvroute_core::ingest::{allocate_event_ids, DeltaVerdict, DumpCollector, IngestSink, RankCursor};
use kvroute_core::tier::StorageTier;
use kvroute_core::wire::{Deltas, DumpEnd, Frame, Heartbeat};
use kvroute_core::RankKey;

use crate::tls::WorkerGrant;
use crate::transport::error::StreamError;
use crate::transport::metrics::{add, bump, IngestMetrics};

fn tier_bit(tier: StorageTier) -> u8 {
    1 << tier.index()
}

/// What a rank stream needs besides the slot.
pub(crate) struct StreamContext<'a> {
    pub(crate) rank: RankKey,
    pub(crate) generation: u64,
    pub(crate) grant: &'a WorkerGrant,
    pub(crate) sink: &'a dyn IngestSink,
    pub(crate) metrics: &'a IngestMetrics,
    pub(crate) max_dump_blocks: u64,
}

/// The router's state for one rank. See the module docs and `registry.rs`.
pub(crate) struct RankSlot {
    pub(crate) rank: RankKey,
    pub(crate) cursor: RankCursor,
    /// The incarnation the cursor's sequence numbers belong to.
    pub(crate) incarnation: Option<u64>,
    /// Bumped by every claim; a stream of an older generation is superseded.
    pub(crate) generation: u64,
    /// The connection that owns the rank, if any.
    pub(crate) owner: Option<super::registry::ConnId>,
    /// Tiers the sink may hold blocks of this rank in (bit per tier).
    pub(crate) tiers_touched: u8,
    pub(crate) dump: Option<DumpCollector>,
    /// Removed after the grace period and out of the registry: claims must not use it.
    pub(crate) retired: bool,
}

impl RankSlot {
    pub(crate) fn new(rank: RankKey) -> Self {
        RankSlot {
            rank,
            cursor: RankCursor::new(),
            incarnation: None,
            generation: 0,
            owner: None,
            tiers_touched: 0,
            dump: None,
            retired: false,
        }
    }

    /// The rank's stream ended (any reason): a dump in progress is dropped (the cursor
    /// then asks for a new one), a synchronised cursor keeps its position.
    pub(crate) fn abandon_stream(&mut self) {
        self.cursor.on_stream_closed();
        self.dump = None;
    }

    /// Applies one frame of the stream of generation `ctx.generation`.
    pub(crate) fn on_frame(&mut self, frame: Frame, ctx: &StreamContext<'_>) -> Result<(), StreamError> {
        if self.generation != ctx.generation {
            return Err(StreamError::Superseded);
        }
        match frame.rank() {
            Some(rank) if rank == ctx.rank => {}
            Some(rank) if !ctx.grant.allows(rank.worker) => return Err(StreamError::Unauthorized(rank)),
            Some(rank) => return Err(StreamError::WrongRank { expected: ctx.rank, got: rank }),
            None => {}
        }
        match frame {
            Frame::Deltas(deltas) => self.on_deltas(deltas, ctx),
            Frame::DumpBegin(begin) => {
                self.cursor.on_dump_begin(begin.as_of_seq).map_err(StreamError::Order)?;
                self.dump = Some(DumpCollector::new(ctx.max_dump_blocks));
                Ok(())
            }
            Frame::DumpBlocks(chunk) => {
                self.cursor.on_dump_blocks(chunk.blocks.len()).map_err(StreamError::Order)?;
                add(&ctx.metrics.dump_blocks, chunk.blocks.len() as u64);
                match &mut self.dump {
                    Some(collector) => collector
                        .add(chunk.tier, &chunk.blocks)
                        .map_err(|e| StreamError::DumpTooLarge { max: e.max_blocks }),
                    None => Err(StreamError::Order(kvroute_core::ingest::CursorError::NotDumping)),
                }
            }
            Frame::DumpEnd(end) => self.on_dump_end(end, ctx),
            Frame::Heartbeat(heartbeat) => self.on_heartbeat(heartbeat),
            Frame::Goodbye(goodbye) => Err(StreamError::Goodbye(goodbye.code)),
            other @ (Frame::Hello(_) | Frame::Subscribe(_)) => Err(StreamError::UnexpectedFrame(other.frame_type())),
        }
    }

    fn on_deltas(&mut self, deltas: Deltas, ctx: &StreamContext<'_>) -> Result<(), StreamError> {
        bump(&ctx.metrics.deltas_frames);
        let Deltas { rank, tier, first_seq, events } = deltas;
        match self.cursor.on_deltas(first_seq, events.len()).map_err(StreamError::Order)? {
            DeltaVerdict::Gap { expected, got } => Err(StreamError::Gap { expected, got }),
            DeltaVerdict::Apply { skip } => {
                let fresh = events.len().saturating_sub(skip);
                if fresh == 0 {
                    return Ok(());
                }
                self.tiers_touched |= tier_bit(tier);
                let first_id = allocate_event_ids(fresh);
                let batch: Vec<KvEvent> = (first_id..)
                    .zip(events.into_iter().skip(skip))
                    .map(|(event_id, data)| KvEvent { rank, event_id, data })
                    .collect();
                let blocks: u64 = batch.iter().map(|e| e.block_count() as u64).sum();
                ctx.sink.apply_batch(tier, &batch);
                add(&ctx.metrics.events_applied, fresh as u64);
                add(&ctx.metrics.block_events_applied, blocks);
                Ok(())
            }
        }
    }

    fn on_dump_end(&mut self, end: DumpEnd, ctx: &StreamContext<'_>) -> Result<(), StreamError> {
        self.cursor.on_dump_end(end.as_of_seq, end.block_count).map_err(StreamError::Order)?;
        let blocks = self.dump.take().map(DumpCollector::finish).unwrap_or_default();
        let mut touched = 0;
        for (tier, blocks) in StorageTier::ALL.into_iter().zip(&blocks) {
            if !blocks.is_empty() {
                touched |= tier_bit(tier);
            }
            // Replace tiers the rank may hold something in, or gets something in now.
            if !blocks.is_empty() || self.tiers_touched & tier_bit(tier) != 0 {
                ctx.sink.replace_rank(tier, ctx.rank, blocks);
            }
        }
        self.tiers_touched = touched;
        bump(&ctx.metrics.dumps);
        Ok(())
    }

    fn on_heartbeat(&self, heartbeat: Heartbeat) -> Result<(), StreamError> {
        let Some(applied) = self.cursor.applied_seq() else {
            return Err(StreamError::UnexpectedFrame(kvroute_core::wire::FrameType::Heartbeat));
        };
        let last_seq = heartbeat.last_seq;
        if applied < last_seq {
            return Err(StreamError::BehindHeartbeat { applied, last_seq });
        }
        if applied > last_seq {
            return Err(StreamError::HeartbeatBehindCursor { applied, last_seq });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use kvroute_core::event::KvEventData;
    use kvroute_core::event::StoredBlock;
    use kvroute_core::ingest::CursorError;
    use kvroute_core::wire::{DumpBegin, DumpBlock, DumpBlocks, FrameType};
    use kvroute_core::{BlockHash, EngineHash};

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
        fn replace_rank(&self, tier: StorageTier, rank: RankKey, dump: &[DumpBlock]) {
            let events = kvroute_core::event::dump_events(dump);
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
        slot: RankSlot,
        sink: Recorder,
        metrics: IngestMetrics,
        grant: WorkerGrant,
    }

    impl Fixture {
        fn new() -> Self {
            let mut slot = RankSlot::new(RANK);
            slot.generation = 1;
            slot.cursor.on_hello(42);
            Fixture { slot, sink: Recorder::default(), metrics: IngestMetrics::default(), grant: "7".parse().unwrap() }
        }

        fn feed(&mut self, frame: Frame) -> Result<(), StreamError> {
            let ctx = StreamContext {
                rank: RANK,
                generation: 1,
                grant: &self.grant,
                sink: &self.sink,
                metrics: &self.metrics,
                max_dump_blocks: 3,
            };
            self.slot.on_frame(frame, &ctx)
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
        assert_eq!(f.feed(deltas(1, vec![stored(1)])), Err(StreamError::Order(CursorError::DeltasBeforeSync)));
        f.empty_dump(0);
        // Nothing held before and nothing dumped: no replace call at all.
        assert!(f.log().is_empty());
        f.feed(deltas(1, vec![stored(1), stored(2)])).unwrap();
        f.feed(deltas(2, vec![stored(2), stored(3)])).unwrap();
        assert_eq!(f.log().len(), 3, "event 2 applied once");
        assert_eq!(f.feed(deltas(5, vec![stored(5)])), Err(StreamError::Gap { expected: 4, got: 5 }));
        assert_eq!(f.slot.cursor.resume_after(), Some(3));
        let m = f.metrics.snapshot();
        assert_eq!((m.events_applied, m.block_events_applied, m.deltas_frames, m.dumps), (3, 3, 4, 1));
    }

    #[test]
    fn a_dump_replaces_every_tier_the_rank_held_at_its_end() {
        let mut f = Fixture::new();
        f.empty_dump(0);
        f.feed(deltas(1, vec![stored(1)])).unwrap();
        f.log();
        f.feed(Frame::DumpBegin(DumpBegin { rank: RANK, as_of_seq: 9 })).unwrap();
        let chunk =
            |blocks: Vec<DumpBlock>| Frame::DumpBlocks(DumpBlocks { rank: RANK, tier: StorageTier::Host, blocks });
        let dump_block = |n: u64, parent: Option<u64>, placeholder: bool| DumpBlock {
            parent: parent.map(EngineHash),
            block: block(n),
            placeholder,
        };
        f.feed(chunk(vec![dump_block(1, None, true), dump_block(2, Some(1), false)])).unwrap();
        assert!(f.log().is_empty(), "nothing is applied before DumpEnd");
        f.feed(Frame::DumpEnd(DumpEnd { rank: RANK, as_of_seq: 9, block_count: 2 })).unwrap();
        let log = f.log();
        assert_eq!(log.len(), 2, "{log:?}");
        assert!(log[0].starts_with("replace Device 7/0 []"), "{log:?}");
        assert!(log[1].starts_with("replace Host 7/0 [Stored"), "{log:?}");
        assert!(log[1].contains("Removed { blocks: [EngineHash(1)] }"), "placeholder removed: {log:?}");
        assert_eq!(f.slot.tiers_touched, tier_bit(StorageTier::Host));
        f.feed(deltas(10, vec![stored(3)])).unwrap();
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
        assert_eq!(f.feed(other_worker), Err(StreamError::Unauthorized(RankKey::new(8, 0))));
        let other_rank = Frame::DumpBegin(DumpBegin { rank: RankKey::new(7, 1), as_of_seq: 0 });
        assert_eq!(f.feed(other_rank), Err(StreamError::WrongRank { expected: RANK, got: RankKey::new(7, 1) }));
        let subscribe = Frame::Subscribe(kvroute_core::wire::Subscribe { rank: RANK, resume_after: None });
        assert_eq!(f.feed(subscribe), Err(StreamError::UnexpectedFrame(FrameType::Subscribe)));
        let heartbeat = |last_seq| Frame::Heartbeat(Heartbeat { rank: RANK, last_seq });
        assert_eq!(f.feed(heartbeat(0)), Ok(()));
        assert_eq!(f.feed(heartbeat(2)), Err(StreamError::BehindHeartbeat { applied: 0, last_seq: 2 }));
        f.feed(Frame::DumpBegin(DumpBegin { rank: RANK, as_of_seq: 5 })).unwrap();
        let big = (0..4).map(|n| DumpBlock { parent: None, block: block(n), placeholder: false }).collect();
        let chunk = Frame::DumpBlocks(DumpBlocks { rank: RANK, tier: StorageTier::Device, blocks: big });
        assert_eq!(f.feed(chunk), Err(StreamError::DumpTooLarge { max: 3 }));
        f.slot.generation = 2;
        assert_eq!(f.feed(heartbeat(0)), Err(StreamError::Superseded));
    }
}
