//! [`RankSession`]: the router's protocol state for one rank of a QUIC publisher, and
//! [`RankSession::on_frame`], which applies one frame of the rank's stream to it and to
//! the sink. Sans-IO: the transport reads frames off its stream and calls this (under the
//! rank's lock); what to do next (close the stream, count, subscribe again) follows from
//! the returned [`FrameError`].
//!
//! State, all per rank: the [`RankCursor`] (publisher incarnation, last applied sequence
//! number or dump in progress), the [`DumpCollector`] of a dump in progress, the tiers the
//! sink may hold the rank's blocks in (so a dump replaces exactly those), and, after a
//! snapshot restore, the sequence number up to which the restored blocks may already hold
//! the events (those go to the sink's `apply_replayed_batch`).
//!
//! Per frame:
//!
//! - the frame must be for this session's rank: a rank of a worker the peer may not
//!   publish for is [`FrameError::Unauthorized`], another rank [`FrameError::WrongRank`];
//! - `Deltas` go through the cursor (leading duplicates skipped, a gap refused) and the
//!   new events to the sink as one batch, numbered by [`allocate_event_ids`];
//! - a dump is gathered by a [`DumpCollector`] (bounded by `max_dump_blocks`) and handed
//!   to `replace_rank` at `DumpEnd`, for every tier it fills or the rank held before;
//! - a `Heartbeat` must name exactly the applied sequence number (behind it: the last
//!   batch was lost; ahead of it: the peer is confused);
//! - `Goodbye` ends the stream; `Hello` and `Subscribe` have no place on it.
//!
//! What the frame did is returned as a [`FrameEffect`] for the transport's counters.

use std::fmt;

use crate::event::KvEvent;
use crate::ids::{RankKey, WorkerId};
use crate::tier::StorageTier;
use crate::wire::{Deltas, DumpEnd, Frame, FrameType, GoodbyeCode, Heartbeat};

use super::{allocate_event_ids, CursorError, DeltaVerdict, DumpCollector, IngestSink, RankCursor};

/// A frame the session refused: the stream should be closed (the transport picks the
/// goodbye code: [`is_gap`](Self::is_gap) asks for a resume, the rest are protocol
/// errors except `Goodbye`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A frame out of the protocol's order.
    Order(CursorError),
    /// A frame type that has no place on a rank stream.
    UnexpectedFrame(FrameType),
    /// A frame for another rank of a worker the publisher may publish for.
    WrongRank { expected: RankKey, got: RankKey },
    /// A frame for a worker the publisher may not publish for.
    Unauthorized(RankKey),
    /// A dump larger than the session's `max_dump_blocks`.
    DumpTooLarge { max: u64 },
    /// Events are missing: the batch starts after `expected`.
    Gap { expected: u64, got: u64 },
    /// A heartbeat says the publisher sent up to `last_seq`, only `applied` was applied:
    /// the last batch was lost.
    BehindHeartbeat { applied: u64, last_seq: u64 },
    /// A heartbeat names fewer events than were applied.
    HeartbeatBehindCursor { applied: u64, last_seq: u64 },
    /// The publisher said `Goodbye`.
    Goodbye(GoodbyeCode),
}

impl FrameError {
    /// Events were lost: subscribe again from what was applied.
    pub fn is_gap(&self) -> bool {
        matches!(self, FrameError::Gap { .. } | FrameError::BehindHeartbeat { .. })
    }

    /// The peer broke the protocol (a frame a correct publisher never sends this rank).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            FrameError::Order(_)
                | FrameError::UnexpectedFrame(_)
                | FrameError::WrongRank { .. }
                | FrameError::DumpTooLarge { .. }
                | FrameError::HeartbeatBehindCursor { .. }
        )
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Order(error) => write!(f, "frame out of order: {error}"),
            FrameError::UnexpectedFrame(frame_type) => write!(f, "unexpected {frame_type:?} frame"),
            FrameError::WrongRank { expected, got } => {
                write!(f, "frame for rank {got} on the stream of rank {expected}")
            }
            FrameError::Unauthorized(rank) => {
                write!(f, "frame for rank {rank}, whose worker the publisher's certificate does not allow")
            }
            FrameError::DumpTooLarge { max } => write!(f, "dump of more than {max} blocks"),
            FrameError::Gap { expected, got } => write!(f, "sequence gap: expected {expected}, got {got}"),
            FrameError::BehindHeartbeat { applied, last_seq } => {
                write!(f, "heartbeat at seq {last_seq} but only {applied} applied: a batch was lost")
            }
            FrameError::HeartbeatBehindCursor { applied, last_seq } => {
                write!(f, "heartbeat at seq {last_seq} behind the {applied} events applied")
            }
            FrameError::Goodbye(code) => write!(f, "publisher said goodbye (code {})", code.0),
        }
    }
}

impl std::error::Error for FrameError {}

/// What one accepted frame did, for counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameEffect {
    /// 1 for a `Deltas` frame (applied or all duplicates).
    pub deltas_frames: u64,
    /// Events handed to the sink.
    pub events: u64,
    /// Blocks those events stored or removed.
    pub block_events: u64,
    /// Blocks a `DumpBlocks` chunk carried.
    pub dump_blocks: u64,
    /// 1 when a dump ended and replaced the rank.
    pub dumps: u64,
}

/// What [`RankSession::on_frame`] needs besides the session.
pub struct FrameContext<'a> {
    /// The rank the stream was opened for.
    pub rank: RankKey,
    /// Whether the peer may publish for a worker (its certificate's grant).
    pub may_publish: &'a dyn Fn(WorkerId) -> bool,
    pub sink: &'a dyn IngestSink,
    /// Most blocks a dump may carry.
    pub max_dump_blocks: u64,
}

fn tier_bit(tier: StorageTier) -> u8 {
    1 << tier.index()
}

const ALL_TIERS: u8 = (1 << StorageTier::ALL.len()) - 1;

/// The protocol state of one rank. See the module docs.
#[derive(Debug, Default)]
pub struct RankSession {
    cursor: RankCursor,
    /// Tiers the sink may hold blocks of this rank in (bit per tier).
    tiers_touched: u8,
    dump: Option<DumpCollector>,
    /// Events of the cursor's incarnation up to this seq may already be in the sink
    /// (restored from a snapshot taken while they were being applied).
    replay_through: Option<u64>,
}

impl RankSession {
    /// A rank nothing is known of: the first subscription asks for a dump.
    pub fn new() -> Self {
        RankSession::default()
    }

    /// A rank restored from a snapshot: synchronised at `applied_seq` of publisher
    /// `incarnation`, possibly held in any tier; the restored blocks may also hold the
    /// events after it up to `settled_seq`, which are applied as replays.
    pub fn restored(incarnation: u64, applied_seq: u64, settled_seq: u64) -> Self {
        RankSession {
            cursor: RankCursor::resumed(incarnation, applied_seq),
            tiers_touched: ALL_TIERS,
            dump: None,
            replay_through: (settled_seq > applied_seq).then_some(settled_seq),
        }
    }

    /// A publisher's `Hello` announced the rank: a stream in progress is abandoned, and
    /// another incarnation than before forgets the position (the next subscription asks
    /// for a dump).
    pub fn on_hello(&mut self, incarnation: u64) {
        self.abandon_stream();
        if self.cursor.incarnation() != Some(incarnation) {
            self.replay_through = None;
        }
        self.cursor.on_hello(incarnation);
    }

    /// The rank's stream ended (any reason): a dump in progress is dropped (the cursor
    /// then asks for a new one), a synchronised cursor keeps its position.
    pub fn abandon_stream(&mut self) {
        self.cursor.on_stream_closed();
        self.dump = None;
    }

    /// The `resume_after` to subscribe with (`None`: ask for a dump).
    pub fn resume_after(&self) -> Option<u64> {
        self.cursor.resume_after()
    }

    /// Where the rank stands, `(incarnation, applied_seq)`, when synchronised: what a
    /// snapshot saves.
    pub fn position(&self) -> Option<(u64, u64)> {
        Some((self.cursor.incarnation()?, self.cursor.applied_seq()?))
    }

    /// Applies one frame of the rank's stream. See the module docs.
    pub fn on_frame(&mut self, frame: Frame, ctx: &FrameContext<'_>) -> Result<FrameEffect, FrameError> {
        match frame.rank() {
            Some(rank) if rank == ctx.rank => {}
            Some(rank) if !(ctx.may_publish)(rank.worker) => return Err(FrameError::Unauthorized(rank)),
            Some(rank) => return Err(FrameError::WrongRank { expected: ctx.rank, got: rank }),
            None => {}
        }
        match frame {
            Frame::Deltas(deltas) => self.on_deltas(deltas, ctx),
            Frame::DumpBegin(begin) => {
                self.cursor.on_dump_begin(begin.as_of_seq).map_err(FrameError::Order)?;
                self.dump = Some(DumpCollector::new(ctx.max_dump_blocks));
                Ok(FrameEffect::default())
            }
            Frame::DumpBlocks(chunk) => {
                self.cursor.on_dump_blocks(chunk.blocks.len()).map_err(FrameError::Order)?;
                let collector = self.dump.as_mut().ok_or(FrameError::Order(CursorError::NotDumping))?;
                collector.add(chunk.tier, &chunk.blocks).map_err(|e| FrameError::DumpTooLarge { max: e.max_blocks })?;
                Ok(FrameEffect { dump_blocks: chunk.blocks.len() as u64, ..FrameEffect::default() })
            }
            Frame::DumpEnd(end) => self.on_dump_end(end, ctx),
            Frame::Heartbeat(heartbeat) => self.on_heartbeat(heartbeat).map(|()| FrameEffect::default()),
            Frame::Goodbye(goodbye) => Err(FrameError::Goodbye(goodbye.code)),
            other @ (Frame::Hello(_) | Frame::Subscribe(_)) => Err(FrameError::UnexpectedFrame(other.frame_type())),
        }
    }

    fn on_deltas(&mut self, deltas: Deltas, ctx: &FrameContext<'_>) -> Result<FrameEffect, FrameError> {
        let Deltas { rank, tier, first_seq, events } = deltas;
        let mut effect = FrameEffect { deltas_frames: 1, ..FrameEffect::default() };
        match self.cursor.on_deltas(first_seq, events.len()).map_err(FrameError::Order)? {
            DeltaVerdict::Gap { expected, got } => Err(FrameError::Gap { expected, got }),
            DeltaVerdict::Apply { skip } => {
                let fresh = events.len().saturating_sub(skip);
                if fresh == 0 {
                    return Ok(effect);
                }
                self.tiers_touched |= tier_bit(tier);
                let first_id = allocate_event_ids(fresh);
                let batch: Vec<KvEvent> = (first_id..)
                    .zip(events.into_iter().skip(skip))
                    .map(|(event_id, data)| KvEvent { rank, event_id, data })
                    .collect();
                // The fresh events are numbered from `first_seq + skip`.
                let replayed = self.take_replayed(first_seq.saturating_add(skip as u64), fresh);
                let (old, new) = batch.split_at(replayed);
                if !old.is_empty() {
                    ctx.sink.apply_replayed_batch(tier, old);
                }
                if !new.is_empty() {
                    ctx.sink.apply_batch(tier, new);
                }
                effect.events = fresh as u64;
                effect.block_events = batch.iter().map(|e| e.block_count() as u64).sum();
                Ok(effect)
            }
        }
    }

    /// How many of `count` events numbered from `first_seq` are within the restored
    /// snapshot's settled window; the window ends once the events pass it.
    fn take_replayed(&mut self, first_seq: u64, count: usize) -> usize {
        let Some(through) = self.replay_through else { return 0 };
        if first_seq.saturating_add(count as u64) > through {
            self.replay_through = None;
        }
        through.checked_sub(first_seq).map_or(0, |behind| usize::try_from(behind + 1).map_or(count, |n| n.min(count)))
    }

    fn on_dump_end(&mut self, end: DumpEnd, ctx: &FrameContext<'_>) -> Result<FrameEffect, FrameError> {
        self.cursor.on_dump_end(end.as_of_seq, end.block_count).map_err(FrameError::Order)?;
        let blocks = self.dump.take().map(DumpCollector::finish).unwrap_or_default();
        self.replay_through = None;
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
        Ok(FrameEffect { dumps: 1, ..FrameEffect::default() })
    }

    fn on_heartbeat(&self, heartbeat: Heartbeat) -> Result<(), FrameError> {
        let Some(applied) = self.cursor.applied_seq() else {
            return Err(FrameError::UnexpectedFrame(FrameType::Heartbeat));
        };
        let last_seq = heartbeat.last_seq;
        if applied < last_seq {
            return Err(FrameError::BehindHeartbeat { applied, last_seq });
        }
        if applied > last_seq {
            return Err(FrameError::HeartbeatBehindCursor { applied, last_seq });
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "rank_session_tests.rs"]
mod tests;
