//! [`RankSlot`]: the router's state for one rank: core's [`RankSession`] (cursor, dump in
//! progress, tiers touched) plus who owns the rank and since which claim. The protocol
//! itself (what each frame does to the cursor and the sink) is core's
//! [`RankSession::on_frame`]; this adds the one check that needs the registry (a stream of
//! an older claim is superseded) and the transport's counters.

use kvroute_core::ingest::{FrameContext, FrameEffect, IngestSink, RankSession};
use kvroute_core::wire::Frame;
use kvroute_core::RankKey;

use crate::tls::WorkerGrant;
use crate::transport::error::StreamError;
use crate::transport::metrics::{add, IngestMetrics};

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
    pub(crate) session: RankSession,
    /// Bumped by every claim; a stream of an older generation is superseded.
    pub(crate) generation: u64,
    /// The connection that owns the rank, if any.
    pub(crate) owner: Option<super::registry::ConnId>,
    /// Removed after the grace period and out of the registry: claims must not use it.
    pub(crate) retired: bool,
}

impl RankSlot {
    pub(crate) fn new(rank: RankKey, session: RankSession) -> Self {
        RankSlot { rank, session, generation: 0, owner: None, retired: false }
    }

    /// Applies one frame of the stream of generation `ctx.generation`.
    pub(crate) fn on_frame(&mut self, frame: Frame, ctx: &StreamContext<'_>) -> Result<(), StreamError> {
        if self.generation != ctx.generation {
            return Err(StreamError::Superseded);
        }
        let may_publish = |worker| ctx.grant.allows(worker);
        let frame_ctx = FrameContext {
            rank: ctx.rank,
            may_publish: &may_publish,
            sink: ctx.sink,
            max_dump_blocks: ctx.max_dump_blocks,
        };
        let effect = self.session.on_frame(frame, &frame_ctx)?;
        count(ctx.metrics, effect);
        Ok(())
    }
}

fn count(metrics: &IngestMetrics, effect: FrameEffect) {
    let FrameEffect { deltas_frames, events, block_events, dump_blocks, dumps } = effect;
    add(&metrics.deltas_frames, deltas_frames);
    add(&metrics.events_applied, events);
    add(&metrics.block_events_applied, block_events);
    add(&metrics.dump_blocks, dump_blocks);
    add(&metrics.dumps, dumps);
}

#[cfg(test)]
mod tests {
    use kvroute_core::event::{DumpBlock, KvEvent, KvEventData};
    use kvroute_core::ingest::FrameError;
    use kvroute_core::tier::StorageTier;
    use kvroute_core::wire::{Deltas, DumpBegin, DumpEnd, Heartbeat};

    use super::*;

    struct NullSink;

    impl IngestSink for NullSink {
        fn apply_batch(&self, _: StorageTier, _: &[KvEvent]) {}
        fn replace_rank(&self, _: StorageTier, _: RankKey, _: &[DumpBlock]) {}
        fn remove_rank(&self, _: RankKey) {}
    }

    const RANK: RankKey = RankKey::new(7, 0);

    #[test]
    fn frames_are_counted_unauthorized_ranks_refused_and_old_claims_superseded() {
        let mut slot = RankSlot::new(RANK, RankSession::new());
        slot.generation = 1;
        slot.session.on_hello(42);
        let (grant, metrics) = ("7".parse::<WorkerGrant>().unwrap(), IngestMetrics::default());
        let ctx = StreamContext {
            rank: RANK,
            generation: 1,
            grant: &grant,
            sink: &NullSink,
            metrics: &metrics,
            max_dump_blocks: 8,
        };
        slot.on_frame(Frame::DumpBegin(DumpBegin { rank: RANK, as_of_seq: 0 }), &ctx).unwrap();
        slot.on_frame(Frame::DumpEnd(DumpEnd { rank: RANK, as_of_seq: 0, block_count: 0 }), &ctx).unwrap();
        let deltas = |rank, first_seq| {
            Frame::Deltas(Deltas { rank, tier: StorageTier::Device, first_seq, events: vec![KvEventData::Cleared] })
        };
        slot.on_frame(deltas(RANK, 1), &ctx).unwrap();
        let other = RankKey::new(8, 0);
        assert_eq!(slot.on_frame(deltas(other, 2), &ctx), Err(StreamError::Frame(FrameError::Unauthorized(other))));
        let m = metrics.snapshot();
        assert_eq!((m.deltas_frames, m.events_applied, m.dumps), (1, 1, 1));
        slot.generation = 2;
        let heartbeat = Frame::Heartbeat(Heartbeat { rank: RANK, last_seq: 1 });
        assert_eq!(slot.on_frame(heartbeat, &ctx), Err(StreamError::Superseded));
    }
}
