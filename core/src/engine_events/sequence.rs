//! [`SeqTracker`]: the sequence numbers of one engine stream (one engine endpoint, one DP
//! rank), without I/O: which batches to apply, when to ask the replay socket for missing
//! ones, and when the rank's state must be dropped because something was lost for good.
//!
//! vLLM and SGLang number a rank's batches from 0 per publisher process. PUB drops
//! silently, so live batches can leave gaps; the optional replay ROUTER answers "from
//! seq" with its buffered batches (the newest 10,000) and an end marker; a live seq that
//! goes back means a new engine process, whose cache starts empty. Order is decided by
//! [`RankCursor`], fed batches of one, as for the QUIC ingest.
//!
//! ```text
//! state      on                                does                                     then
//! ---------  --------------------------------  ---------------------------------------  ---------
//! new        start (or the first on_live)      Clear{Joined}, RequestReplay{from: 0}    Replaying
//!                                              (no replay endpoint: nothing more)       Live
//! Live       live batch, the next one          Apply                                    Live
//! Live       live batch, already settled       skip (a late copy of a replayed one)     Live
//! Live       live batch after a gap            RequestReplay{from: next}, buffer it     Replaying
//!                                              (no replay endpoint: Clear, Apply it)    Live
//! Replaying  live batch                        buffer it (full: drop all, ask later)    Replaying
//! Replaying  answer                            the next: Apply; settled: skip;          Replaying
//!                                              after a hole: Clear, Apply it
//! Replaying  end marker / failure              drain the buffer (below)                 Live or
//!                                                                                       Replaying
//! any        answer, end or failure, other id  ignore (stale)
//! any        live batch at or below the last   restart: drop replay and buffer,         Live or
//!            live one (seq 0 before any live)  Clear{Restart}; seq 0: Apply, else as    Replaying
//!                                              after a gap, from 0
//! ```
//!
//! Draining, in seq order: the next batch is applied, a settled one skipped; after a hole,
//! when the replay failed or should have had the missing batches (they were published
//! before it was asked for), they are lost: Clear, Apply; otherwise RequestReplay{from:
//! next}, the rest staying buffered. Lives dropped on overflow are settled the same way.
//!
//! "Settled" batches are those applied or given up as lost; none is ever applied again
//! until a restart, so applied seqs strictly increase and have no holes between two
//! `Clear`s. A hole that cannot be filled costs a `Clear` (under-crediting is safe,
//! crediting blocks whose removal was lost is not) and the batches after it rebuild a
//! partial state: [`SeqStats::unrecovered_batches`] counts the batch numbers jumped over,
//! [`SeqTracker::is_complete`] says whether the state is exactly the engine's. A `Clear`
//! is emitted only when the rank holds something since the last one, except `Joined`,
//! which drops whatever the rank held before the tracker.
//!
//! The I/O layer sends each [`SeqAction::RequestReplay`] (`[b"", from_seq BE]`) on a
//! DEALER connection of its own (answers carry no request id) and feeds back its answers
//! with that id until the end marker; it owns the timeout ([`SeqTracker::on_replay_failed`]).
//! At most one replay is current: a new request supersedes the previous one.
//!
//! Limits of sequence numbers alone: a restart is seen only when a live batch of the new
//! process is numbered at or below the last live one of the old (or is seq 0 before any
//! live batch, once something is settled); a new process whose early batches are all
//! lost, or a replay asked of the old process and answered by the new one, goes unnoticed
//! until then.

use std::collections::VecDeque;

use crate::ingest::{DeltaVerdict, RankCursor};

/// How the tracker of one engine stream behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// The engine has a replay endpoint: gaps, late joins and restarts ask it for the
    /// missing batches. Without one, every missing batch is lost.
    pub replay: bool,
    /// Live batches kept while a replay runs. Past it they are all dropped and, once the
    /// replay is over, asked for again ([`SeqStats::buffer_overflows`]).
    pub max_buffered: usize,
}

impl TrackerConfig {
    /// The default bound of [`max_buffered`](Self::max_buffered), in batches.
    pub const DEFAULT_MAX_BUFFERED: usize = 4096;

    /// An engine with a replay endpoint, and the default buffer bound.
    pub fn with_replay() -> Self {
        TrackerConfig { replay: true, max_buffered: Self::DEFAULT_MAX_BUFFERED }
    }

    /// An engine without a replay endpoint.
    pub fn without_replay() -> Self {
        TrackerConfig { replay: false, max_buffered: Self::DEFAULT_MAX_BUFFERED }
    }
}

/// What the I/O layer must do, in the order the tracker pushes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeqAction<B> {
    /// Apply this batch to the rank now. Between two `Clear`s the seqs run without holes,
    /// each one above the last.
    Apply { seq: u64, batch: B },
    /// Drop everything the rank holds (every tier).
    Clear { reason: ClearReason },
    /// Ask the replay endpoint for every buffered batch with `seq >= from_seq`, then feed
    /// the answers back tagged with `id`. Supersedes any earlier request.
    RequestReplay { id: u64, from_seq: u64 },
}

/// Why the rank's state was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClearReason {
    /// The tracker starts: what the rank held before is of unknown age.
    Joined,
    /// A live seq went back: a new engine process, with an empty cache.
    Restart,
    /// Batches were missing and there is no replay endpoint.
    GapNoReplay,
    /// The replay did not have every missing batch (its buffer rolled over, or answers
    /// were lost).
    ReplayIncomplete,
    /// The replay failed (timeout or connection error) with batches still missing.
    ReplayFailed,
}

/// Counters of one tracker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqStats {
    /// `Apply` actions.
    pub batches_applied: u64,
    /// Batches (live, buffered or replayed) at or below the settled position, skipped.
    pub duplicates_skipped: u64,
    /// Live batches that arrived with batches missing before them.
    pub gaps: u64,
    /// `RequestReplay` actions.
    pub replays_requested: u64,
    /// Replays that could not supply every missing batch.
    pub replays_incomplete: u64,
    /// Replays the I/O layer reported as failed.
    pub replays_failed: u64,
    /// Engine restarts detected.
    pub restarts: u64,
    /// `Clear` actions (of every reason).
    pub clears: u64,
    /// Batch numbers jumped over for good: never applied, their events lost.
    pub unrecovered_batches: u64,
    /// Times the live buffer overflowed during a replay and was dropped.
    pub buffer_overflows: u64,
    /// Replay answers, ends and failures of a replay that is not the current one, ignored.
    pub stale_replay_messages: u64,
}

impl SeqStats {
    /// Adds `other`'s counters to these (sums over ranks).
    pub fn add(&mut self, other: &SeqStats) {
        self.batches_applied += other.batches_applied;
        self.duplicates_skipped += other.duplicates_skipped;
        self.gaps += other.gaps;
        self.replays_requested += other.replays_requested;
        self.replays_incomplete += other.replays_incomplete;
        self.replays_failed += other.replays_failed;
        self.restarts += other.restarts;
        self.clears += other.clears;
        self.unrecovered_batches += other.unrecovered_batches;
        self.buffer_overflows += other.buffer_overflows;
        self.stale_replay_messages += other.stale_replay_messages;
    }
}

/// Where one (engine endpoint, DP rank) stream stands; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct SeqTracker<B> {
    config: TrackerConfig,
    started: bool,
    /// Every batch up to the cursor's seq is settled (applied, or lost); `None`: nothing of
    /// the current process is, seq 0 comes next.
    settled: Option<RankCursor>,
    /// An `Apply` since the last `Clear`.
    holds_batches: bool,
    /// Nothing was lost since the last `Clear` (or the start, or the restart).
    complete: bool,
    /// The highest live seq seen from the current process.
    last_live: Option<u64>,
    replay: Option<Replay>,
    /// Live batches received during the replay, in arrival (so seq) order.
    buffered: VecDeque<(u64, B)>,
    /// The highest live seq dropped when the buffer overflowed, not yet settled.
    dropped_live: Option<u64>,
    next_replay_id: u64,
    stats: SeqStats,
}

/// The current replay request.
#[derive(Clone, Copy, Debug)]
struct Replay {
    id: u64,
    /// The highest live seq seen when it was asked for: those batches existed then, so the
    /// answer must hold every one of them not yet settled.
    known_published: Option<u64>,
    /// Already counted in [`SeqStats::replays_incomplete`].
    counted_incomplete: bool,
}

impl Replay {
    fn should_have(&self, seq: u64) -> bool {
        self.known_published.is_some_and(|known| seq <= known)
    }
}

/// Where a batch stands against the settled position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// The next one: the position moved past it, apply it.
    Next,
    /// At or below the settled position.
    Settled,
    /// Batches from `expected` on are missing before it.
    Gap { expected: u64 },
}

/// Classifies `seq` against `settled` through the cursor, advancing on [`Order::Next`].
fn classify(settled: &mut Option<RankCursor>, seq: u64) -> Order {
    let Some(cursor) = settled else {
        if seq != 0 {
            return Order::Gap { expected: 0 };
        }
        *settled = Some(RankCursor::synced_at(0));
        return Order::Next;
    };
    match cursor.on_deltas(seq, 1) {
        Ok(DeltaVerdict::Apply { skip: 0 }) => Order::Next,
        Ok(DeltaVerdict::Apply { .. }) => Order::Settled,
        Ok(DeltaVerdict::Gap { expected, .. }) => Order::Gap { expected },
        // A cursor made by `synced_at` is synchronised, so for a batch of one the only
        // error is `SeqOverflow`: settled at u64::MAX, every seq is at or below it.
        Err(_) => Order::Settled,
    }
}

impl<B> SeqTracker<B> {
    /// A tracker that has seen nothing; call [`start`](Self::start) when subscribed.
    pub fn new(config: TrackerConfig) -> Self {
        SeqTracker {
            config,
            started: false,
            settled: None,
            holds_batches: false,
            complete: true,
            last_live: None,
            replay: None,
            buffered: VecDeque::new(),
            dropped_live: None,
            next_replay_id: 1,
            stats: SeqStats::default(),
        }
    }

    /// The subscriber joined: `Clear{Joined}`, then a replay from 0 when configured (the
    /// batches published before the subscription). Only the first call acts; the other
    /// methods make it first when it was not.
    pub fn start(&mut self, out: &mut Vec<SeqAction<B>>) {
        if self.started {
            return;
        }
        self.started = true;
        self.emit_clear(ClearReason::Joined, out);
        if self.config.replay {
            self.request_replay(0, out);
        }
    }

    /// A batch from the PUB socket.
    pub fn on_live(&mut self, seq: u64, batch: B, out: &mut Vec<SeqAction<B>>) {
        self.start(out);
        // PUB never repeats or reorders: back (or level) means another process. Before any
        // live batch, only seq 0 with something settled counts (a lower seq than the
        // replayed ones is likelier a late copy; seq 0 is what an idle engine restarted sends).
        let went_back = match self.last_live {
            Some(last) => seq <= last,
            None => seq == 0 && self.settled.is_some(),
        };
        self.last_live = Some(seq);
        if went_back {
            self.restart(out);
        }
        if self.replay.is_some() {
            self.buffer_live(seq, batch);
            return;
        }
        match classify(&mut self.settled, seq) {
            Order::Next => self.apply(seq, batch, out),
            Order::Settled => self.stats.duplicates_skipped += 1,
            Order::Gap { expected } => {
                self.stats.gaps += 1;
                if self.config.replay {
                    self.request_replay(expected, out);
                    self.buffer_live(seq, batch);
                } else {
                    self.apply_after_loss(ClearReason::GapNoReplay, expected, seq, batch, out);
                }
            }
        }
    }

    /// One answer of replay `id` (its messages before the end marker, in order).
    pub fn on_replay_batch(&mut self, id: u64, seq: u64, batch: B, out: &mut Vec<SeqAction<B>>) {
        if self.current_replay() != Some(id) {
            self.stats.stale_replay_messages += 1;
            return;
        }
        match classify(&mut self.settled, seq) {
            Order::Next => self.apply(seq, batch, out),
            Order::Settled => self.stats.duplicates_skipped += 1,
            Order::Gap { expected } => {
                // The engine answers its buffer without holes: its first answer above the
                // one asked for (a rolled-over buffer) or a hole (answers lost) is final.
                if let Some(replay) = &mut self.replay {
                    Self::count_incomplete(&mut self.stats, replay);
                }
                self.apply_after_loss(ClearReason::ReplayIncomplete, expected, seq, batch, out);
            }
        }
    }

    /// The end marker of replay `id`: the buffered live batches are applied in order.
    pub fn on_replay_end(&mut self, id: u64, out: &mut Vec<SeqAction<B>>) {
        match self.take_replay(id) {
            Some(replay) => self.drain(replay, false, out),
            None => self.stats.stale_replay_messages += 1,
        }
    }

    /// Replay `id` failed (timeout, connection error): what it did not bring is lost; the
    /// buffered live batches are applied in order, after a `Clear` where a hole is left.
    pub fn on_replay_failed(&mut self, id: u64, out: &mut Vec<SeqAction<B>>) {
        match self.take_replay(id) {
            Some(replay) => {
                self.stats.replays_failed += 1;
                self.drain(replay, true, out);
            }
            None => self.stats.stale_replay_messages += 1,
        }
    }

    /// The counters.
    pub fn stats(&self) -> &SeqStats {
        &self.stats
    }

    /// The seq of the last batch applied since the last `Clear`, if any.
    pub fn last_applied(&self) -> Option<u64> {
        if !self.holds_batches {
            return None;
        }
        self.settled.as_ref().and_then(RankCursor::applied_seq)
    }

    /// Whether the rank's state is exactly the engine's as of [`last_applied`](Self::last_applied):
    /// every batch of the current process up to it was applied since the last `Clear`
    /// (true also while nothing is applied and nothing was lost).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether a replay is awaited (live batches are being buffered).
    pub fn is_replaying(&self) -> bool {
        self.replay.is_some()
    }

    /// The id of the current replay request, whose answers are awaited.
    pub fn current_replay(&self) -> Option<u64> {
        self.replay.map(|replay| replay.id)
    }

    /// Live batches buffered while the current replay runs.
    pub fn buffered_len(&self) -> usize {
        self.buffered.len()
    }

    /// A new engine process: forget the old one's position, replay and buffered batches.
    fn restart(&mut self, out: &mut Vec<SeqAction<B>>) {
        self.stats.restarts += 1;
        self.replay = None;
        self.buffered.clear();
        self.dropped_live = None;
        if self.holds_batches {
            self.emit_clear(ClearReason::Restart, out);
        }
        self.settled = None;
        self.complete = true;
    }

    fn buffer_live(&mut self, seq: u64, batch: B) {
        if self.buffered.len() >= self.config.max_buffered {
            // Lives arrive in seq order: `seq` is the highest dropped.
            self.stats.buffer_overflows += 1;
            self.buffered.clear();
            self.dropped_live = Some(self.dropped_live.map_or(seq, |dropped| dropped.max(seq)));
            return;
        }
        self.buffered.push_back((seq, batch));
    }

    fn take_replay(&mut self, id: u64) -> Option<Replay> {
        if self.current_replay() == Some(id) {
            self.replay.take()
        } else {
            None
        }
    }

    /// After the replay (ended, or `failed`): the buffered batches in order, then the
    /// batches dropped on overflow. A hole left behind is lost when the replay failed or
    /// should have had it, and asked for again otherwise (it was published after the ask).
    fn drain(&mut self, mut replay: Replay, failed: bool, out: &mut Vec<SeqAction<B>>) {
        while let Some((seq, batch)) = self.buffered.pop_front() {
            match classify(&mut self.settled, seq) {
                Order::Next => self.apply(seq, batch, out),
                Order::Settled => self.stats.duplicates_skipped += 1,
                Order::Gap { expected } if failed => {
                    self.apply_after_loss(ClearReason::ReplayFailed, expected, seq, batch, out);
                }
                Order::Gap { expected } if replay.should_have(seq) => {
                    Self::count_incomplete(&mut self.stats, &mut replay);
                    self.apply_after_loss(ClearReason::ReplayIncomplete, expected, seq, batch, out);
                }
                Order::Gap { expected } => {
                    self.stats.gaps += 1;
                    self.buffered.push_front((seq, batch));
                    self.request_replay(expected, out);
                    return;
                }
            }
        }
        let Some(dropped) = self.dropped_live else { return };
        let from_seq = match classify(&mut self.settled.clone(), dropped) {
            Order::Settled => {
                self.dropped_live = None;
                return;
            }
            Order::Next => dropped,
            Order::Gap { expected } => expected,
        };
        if failed {
            self.lose_through(ClearReason::ReplayFailed, from_seq, dropped, out);
        } else if replay.should_have(dropped) {
            Self::count_incomplete(&mut self.stats, &mut replay);
            self.lose_through(ClearReason::ReplayIncomplete, from_seq, dropped, out);
        } else {
            // Kept: the next replay must reach it.
            self.request_replay(from_seq, out);
        }
    }

    fn count_incomplete(stats: &mut SeqStats, replay: &mut Replay) {
        if !replay.counted_incomplete {
            replay.counted_incomplete = true;
            stats.replays_incomplete += 1;
        }
    }

    fn request_replay(&mut self, from_seq: u64, out: &mut Vec<SeqAction<B>>) {
        let id = self.next_replay_id;
        self.next_replay_id = self.next_replay_id.wrapping_add(1);
        self.replay = Some(Replay { id, known_published: self.last_live, counted_incomplete: false });
        self.stats.replays_requested += 1;
        out.push(SeqAction::RequestReplay { id, from_seq });
    }

    fn apply(&mut self, seq: u64, batch: B, out: &mut Vec<SeqAction<B>>) {
        self.holds_batches = true;
        self.stats.batches_applied += 1;
        out.push(SeqAction::Apply { seq, batch });
    }

    /// Batches `expected..seq` are lost: clear, settle at `seq` and apply it. `seq > expected`
    /// (it comes from an [`Order::Gap`]).
    fn apply_after_loss(
        &mut self,
        reason: ClearReason,
        expected: u64,
        seq: u64,
        batch: B,
        out: &mut Vec<SeqAction<B>>,
    ) {
        self.stats.unrecovered_batches = self.stats.unrecovered_batches.saturating_add(seq - expected);
        self.lose(reason, seq, out);
        self.apply(seq, batch, out);
    }

    /// Batches `from_seq..=through_seq` are lost (dropped live, never replayed);
    /// `from_seq <= through_seq`.
    fn lose_through(&mut self, reason: ClearReason, from_seq: u64, through_seq: u64, out: &mut Vec<SeqAction<B>>) {
        let lost = (through_seq - from_seq).saturating_add(1);
        self.stats.unrecovered_batches = self.stats.unrecovered_batches.saturating_add(lost);
        self.lose(reason, through_seq, out);
        self.dropped_live = None;
    }

    /// Clears the rank if it holds anything and settles everything up to `seq`.
    fn lose(&mut self, reason: ClearReason, seq: u64, out: &mut Vec<SeqAction<B>>) {
        if self.holds_batches {
            self.emit_clear(reason, out);
        }
        self.complete = false;
        self.settled = Some(RankCursor::synced_at(seq));
    }

    fn emit_clear(&mut self, reason: ClearReason, out: &mut Vec<SeqAction<B>>) {
        self.holds_batches = false;
        self.stats.clears += 1;
        out.push(SeqAction::Clear { reason });
    }
}

#[cfg(test)]
#[path = "sequence_tests.rs"]
mod tests;
