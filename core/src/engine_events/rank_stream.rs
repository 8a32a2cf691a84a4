//! [`EngineRankStream`]: one engine rank's ZeroMQ event stream, from raw frames to the
//! router's index, without I/O. The I/O layer (`kvroute-net`'s engine ingest, the
//! bridge) owns the sockets and timers and calls this for every message.
//!
//! Per message:
//!
//! ```text
//! live [topic, seq, payload] --decode--> EngineMessage --rank check--> SeqTracker
//! replay reply (id, frames)  --decode--> Batch | End  ---------------> SeqTracker
//!                                                                        |
//!   Apply{seq, batch}: each event through the BlockMapper -> (tier, KvEventData)s,
//!                      numbered (allocate_event_ids) and applied per tier in one batch
//!   Clear{reason}:     the mapper forgets its pages; Cleared applied to every tier
//!   RequestReplay{id, from_seq}: returned to the caller, who runs the replay and feeds
//!                      its replies back under that id (or reports it failed)
//! ```
//!
//! A message that does not decode, or names a rank outside the worker's range or other
//! than this stream's, is dropped and counted by reason ([`StreamCounters`]) before it
//! reaches the tracker: the batch number it held then looks missing, so the next
//! message triggers a replay, and if the replay cannot supply a good copy the tracker
//! clears the rank (under-crediting is safe, over-crediting is not). Everything is
//! bounded: the decoder by [`DecodeLimits`], the tracker's buffer of live batches during
//! a replay by its configuration.

use std::ops::Range;

use super::block_mapper::{BlockMapper, MapperConfig, SkipCounts};
use super::decode::{decode_batch, decode_message, decode_replay_reply, DecodeError, DecodeLimits, ReplayReply};
use super::message::{EngineEvent, EventBatch};
use super::sequence::{ClearReason, SeqAction, SeqStats, SeqTracker, TrackerConfig};
use crate::event::{KvEvent, KvEventData};
use crate::ids::RankKey;
use crate::ingest::{allocate_event_ids, IngestSink};
use crate::tier::StorageTier;

/// What one rank's stream needs to know.
#[derive(Clone, Debug)]
pub struct RankStreamConfig {
    /// The rank this stream feeds.
    pub rank: RankKey,
    /// The DP ranks the worker owns: a batch naming another is refused.
    pub worker_ranks: Range<u32>,
    pub mapper: MapperConfig,
    pub limits: DecodeLimits,
    pub tracker: TrackerConfig,
}

/// A replay the caller must run: send `[b"", from_seq]` to the rank's replay socket and
/// feed the replies back with [`EngineRankStream::on_replay_reply`] under `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayRequest {
    pub id: u64,
    pub from_seq: u64,
}

/// Why a message was dropped before reaching the tracker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// It did not decode (the decoder's `DecodeError::reason` says why).
    Decode(&'static str),
    /// Its `dp_rank` is outside the worker's ranks.
    RankOutOfRange,
    /// Its `dp_rank` is another of the worker's ranks than this stream's.
    WrongRank,
}

impl DropReason {
    /// A short stable label (a metric label value).
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Decode(reason) => reason,
            DropReason::RankOutOfRange => "rank_out_of_range",
            DropReason::WrongRank => "wrong_rank",
        }
    }
}

/// Why [`EngineRankStream::apply_payload`] refused a batch (it was counted as dropped).
#[derive(Clone, Debug, PartialEq)]
pub enum PayloadError {
    Decode(DecodeError),
    /// The batch names a rank other than the stream's (`reason` says how).
    Rank {
        reason: DropReason,
        dp_rank: u32,
    },
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadError::Decode(error) => write!(f, "event batch does not decode: {error}"),
            PayloadError::Rank { reason: DropReason::RankOutOfRange, dp_rank } => {
                write!(f, "event batch names dp rank {dp_rank}, outside the worker's ranks")
            }
            PayloadError::Rank { dp_rank, .. } => {
                write!(f, "event batch names dp rank {dp_rank}, not the rank it was applied to")
            }
        }
    }
}

impl std::error::Error for PayloadError {}

/// What a stream did so far (the tracker's own counters are [`SeqStats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamCounters {
    pub messages: u64,
    /// Dropped messages, by [`DropReason::label`].
    pub dropped: Vec<(&'static str, u64)>,
    pub batches_applied: u64,
    pub events_applied: u64,
    pub block_events_applied: u64,
    /// Events of a type the decoder does not know, skipped.
    pub unknown_events: u64,
    /// Clears applied, by [`ClearReason`] label.
    pub clears: Vec<(&'static str, u64)>,
}

impl StreamCounters {
    /// Adds `other`'s counters to these (sums over ranks).
    pub fn add(&mut self, other: &StreamCounters) {
        self.messages += other.messages;
        self.batches_applied += other.batches_applied;
        self.events_applied += other.events_applied;
        self.block_events_applied += other.block_events_applied;
        self.unknown_events += other.unknown_events;
        for &(label, n) in &other.dropped {
            add_labeled(&mut self.dropped, label, n);
        }
        for &(label, n) in &other.clears {
            add_labeled(&mut self.clears, label, n);
        }
    }
}

/// A clear's reason as a metric label.
fn clear_label(reason: ClearReason) -> &'static str {
    match reason {
        ClearReason::Joined => "joined",
        ClearReason::Restart => "restart",
        ClearReason::GapNoReplay => "gap_no_replay",
        ClearReason::ReplayIncomplete => "replay_incomplete",
        ClearReason::ReplayFailed => "replay_failed",
    }
}

/// Adds `n` to `label`'s count in a list of counts by label (a handful of labels: a scan).
pub fn add_labeled(counts: &mut Vec<(&'static str, u64)>, label: &'static str, n: u64) {
    match counts.iter_mut().find(|(l, _)| *l == label) {
        Some((_, count)) => *count += n,
        None => counts.push((label, n)),
    }
}

/// One engine rank's stream; see the module docs.
pub struct EngineRankStream {
    config: RankStreamConfig,
    tracker: SeqTracker<EventBatch>,
    mapper: BlockMapper,
    counters: StreamCounters,
    actions: Vec<SeqAction<EventBatch>>,
    mapped: Vec<(StorageTier, KvEventData)>,
    /// Reused per flush: the mapped events of each tier, numbered.
    per_tier: [Vec<KvEvent>; 3],
}

impl EngineRankStream {
    pub fn new(config: RankStreamConfig) -> Self {
        EngineRankStream {
            tracker: SeqTracker::new(config.tracker),
            mapper: BlockMapper::new(config.mapper),
            counters: StreamCounters::default(),
            actions: Vec::new(),
            mapped: Vec::new(),
            per_tier: Default::default(),
            config,
        }
    }

    pub fn rank(&self) -> RankKey {
        self.config.rank
    }

    pub fn counters(&self) -> &StreamCounters {
        &self.counters
    }

    /// The sequence tracker's counters (gaps, replays, restarts, unrecovered batches).
    pub fn seq_stats(&self) -> &SeqStats {
        self.tracker.stats()
    }

    /// The seq of the last batch applied (or given up as lost), if any.
    pub fn last_applied_seq(&self) -> Option<u64> {
        self.tracker.last_applied()
    }

    /// Blocks the mapper skipped, by reason.
    pub fn skipped(&self) -> SkipCounts {
        self.mapper.skipped()
    }

    /// The subscription is up: a late joiner asks the replay socket for everything.
    pub fn start(&mut self, sink: &dyn IngestSink) -> Option<ReplayRequest> {
        self.tracker.start(&mut self.actions);
        self.apply_actions(sink)
    }

    /// A message of the PUB socket, applied before this returns.
    pub fn on_live(&mut self, frames: &[&[u8]], sink: &dyn IngestSink) -> Option<ReplayRequest> {
        let request = self.queue_live(frames, sink);
        self.flush(sink);
        request
    }

    /// A message of the PUB socket, decoded, sequenced and mapped; what it stores or
    /// removes reaches the sink at the next [`flush`](Self::flush) (or anything else
    /// that applies: a clear, a replay reply), in order. An I/O layer with several
    /// messages at hand queues them all and flushes once: one writer-lock acquisition
    /// per tier for all of them instead of one per message. Bounded by the caller, who
    /// must flush before it waits for more input.
    pub fn queue_live(&mut self, frames: &[&[u8]], sink: &dyn IngestSink) -> Option<ReplayRequest> {
        self.counters.messages += 1;
        let message = match decode_message(frames, &self.config.limits) {
            Ok(message) => message,
            Err(error) => return self.drop_message(DropReason::Decode(error.reason())),
        };
        if let Err(reason) = self.check_rank(&message.batch) {
            return self.drop_message(reason);
        }
        self.tracker.on_live(message.seq, message.batch, &mut self.actions);
        self.run_actions(sink)
    }

    /// A batch payload handed over outside a numbered stream (a Python frontend passing
    /// the engine's events itself): decoded, rank-checked and mapped as a live message,
    /// applied before this returns, with no sequence tracking (the caller orders them).
    pub fn apply_payload(&mut self, payload: &[u8], sink: &dyn IngestSink) -> Result<(), PayloadError> {
        self.counters.messages += 1;
        let batch = match decode_batch(payload, &self.config.limits) {
            Ok(batch) => batch,
            Err(error) => {
                self.drop_message(DropReason::Decode(error.reason()));
                return Err(PayloadError::Decode(error));
            }
        };
        if let Err(reason) = self.check_rank(&batch) {
            self.drop_message(reason);
            return Err(PayloadError::Rank { reason, dp_rank: batch.dp_rank.unwrap_or_default() });
        }
        self.map_batch(&batch);
        self.flush(sink);
        Ok(())
    }

    /// A reply of the replay socket (leading empty delimiter removed) to request `id`.
    pub fn on_replay_reply(&mut self, id: u64, frames: &[&[u8]], sink: &dyn IngestSink) -> Option<ReplayRequest> {
        match decode_replay_reply(frames, &self.config.limits) {
            Ok(ReplayReply::End) => self.tracker.on_replay_end(id, &mut self.actions),
            Ok(ReplayReply::Batch(message)) => {
                if let Err(reason) = self.check_rank(&message.batch) {
                    return self.drop_message(reason);
                }
                self.tracker.on_replay_batch(id, message.seq, message.batch, &mut self.actions);
            }
            Err(error) => return self.drop_message(DropReason::Decode(error.reason())),
        }
        self.apply_actions(sink)
    }

    /// The end marker of replay `id` (for I/O layers that recognise it themselves).
    pub fn on_replay_end(&mut self, id: u64, sink: &dyn IngestSink) -> Option<ReplayRequest> {
        self.tracker.on_replay_end(id, &mut self.actions);
        self.apply_actions(sink)
    }

    /// Replay `id` could not be run to its end (no answer in time, connection error).
    pub fn on_replay_failed(&mut self, id: u64, sink: &dyn IngestSink) -> Option<ReplayRequest> {
        self.tracker.on_replay_failed(id, &mut self.actions);
        self.apply_actions(sink)
    }

    fn drop_message(&mut self, reason: DropReason) -> Option<ReplayRequest> {
        add_labeled(&mut self.counters.dropped, reason.label(), 1);
        None
    }

    fn check_rank(&self, batch: &EventBatch) -> Result<(), DropReason> {
        match batch.dp_rank {
            None => Ok(()),
            Some(rank) if !self.config.worker_ranks.contains(&rank) => Err(DropReason::RankOutOfRange),
            Some(rank) if rank != self.config.rank.dp_rank.0 => Err(DropReason::WrongRank),
            Some(_) => Ok(()),
        }
    }

    /// [`run_actions`](Self::run_actions), then a flush.
    fn apply_actions(&mut self, sink: &dyn IngestSink) -> Option<ReplayRequest> {
        let request = self.run_actions(sink);
        self.flush(sink);
        request
    }

    /// Carries out the tracker's actions (mapped events queued, a clear applied at once);
    /// returns the (last) replay it asks for.
    fn run_actions(&mut self, sink: &dyn IngestSink) -> Option<ReplayRequest> {
        let mut replay = None;
        let mut actions = std::mem::take(&mut self.actions);
        for action in actions.drain(..) {
            match action {
                SeqAction::Apply { batch, .. } => self.map_batch(&batch),
                SeqAction::Clear { reason } => {
                    add_labeled(&mut self.counters.clears, clear_label(reason), 1);
                    self.clear(sink);
                }
                SeqAction::RequestReplay { id, from_seq } => replay = Some(ReplayRequest { id, from_seq }),
            }
        }
        self.actions = actions;
        replay
    }

    fn clear(&mut self, sink: &dyn IngestSink) {
        self.mapper.clear();
        for tier in StorageTier::ALL {
            self.mapped.push((tier, KvEventData::Cleared));
        }
        self.flush(sink);
    }

    /// Queues a batch's mapped events.
    fn map_batch(&mut self, batch: &EventBatch) {
        self.counters.batches_applied += 1;
        self.counters.unknown_events += u64::from(batch.unknown_events);
        for event in &batch.events {
            match event {
                EngineEvent::Stored(stored) => self.mapper.stored(stored, &mut self.mapped),
                EngineEvent::Removed(removed) => self.mapper.removed(removed, &mut self.mapped),
                EngineEvent::AllCleared => {
                    self.mapper.clear();
                    for tier in StorageTier::ALL {
                        self.mapped.push((tier, KvEventData::Cleared));
                    }
                }
            }
        }
    }

    /// Numbers the queued events and applies them, one batch per tier, in order.
    pub fn flush(&mut self, sink: &dyn IngestSink) {
        if self.mapped.is_empty() {
            return;
        }
        let rank = self.config.rank;
        let per_tier = &mut self.per_tier;
        let first_id = allocate_event_ids(self.mapped.len());
        // Runs of removals arrive merged already (the mapper's `push_removal`).
        for ((tier, data), event_id) in self.mapped.drain(..).zip(first_id..) {
            per_tier[tier.index()].push(KvEvent { rank, event_id, data });
        }
        for (tier, events) in StorageTier::ALL.into_iter().zip(per_tier.iter_mut()) {
            if events.is_empty() {
                continue;
            }
            self.counters.events_applied += events.len() as u64;
            self.counters.block_events_applied += events.iter().map(|e| e.block_count() as u64).sum::<u64>();
            sink.apply_batch(tier, events);
            events.clear();
        }
    }
}

impl std::fmt::Debug for EngineRankStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineRankStream").field("rank", &self.config.rank).field("counters", &self.counters).finish()
    }
}
