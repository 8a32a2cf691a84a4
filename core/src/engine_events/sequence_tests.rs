//! The tracker's rules one by one, then a model run: an engine publishing (and restarting)
//! through a lossy PUB pipe and a replay buffer that answers late, loses answers or fails,
//! checked against what the rank must end up holding.

use std::collections::{HashMap, VecDeque};

use proptest::prelude::*;

use super::*;

/// A batch is its own seq in the unit tests.
type Action = SeqAction<u64>;

fn tracker(replay: bool) -> SeqTracker<u64> {
    SeqTracker::new(if replay { TrackerConfig::with_replay() } else { TrackerConfig::without_replay() })
}

fn start(t: &mut SeqTracker<u64>) -> Vec<Action> {
    let mut out = Vec::new();
    t.start(&mut out);
    out
}

fn live(t: &mut SeqTracker<u64>, seqs: impl IntoIterator<Item = u64>) -> Vec<Action> {
    let mut out = Vec::new();
    for seq in seqs {
        t.on_live(seq, seq, &mut out);
    }
    out
}

fn answers(t: &mut SeqTracker<u64>, id: u64, seqs: impl IntoIterator<Item = u64>) -> Vec<Action> {
    let mut out = Vec::new();
    for seq in seqs {
        t.on_replay_batch(id, seq, seq, &mut out);
    }
    out
}

fn end(t: &mut SeqTracker<u64>, id: u64) -> Vec<Action> {
    let mut out = Vec::new();
    t.on_replay_end(id, &mut out);
    out
}

fn failed(t: &mut SeqTracker<u64>, id: u64) -> Vec<Action> {
    let mut out = Vec::new();
    t.on_replay_failed(id, &mut out);
    out
}

fn applies(seqs: impl IntoIterator<Item = u64>) -> Vec<Action> {
    seqs.into_iter().map(|seq| SeqAction::Apply { seq, batch: seq }).collect()
}

fn clear(reason: ClearReason) -> Action {
    SeqAction::Clear { reason }
}

fn request(id: u64, from_seq: u64) -> Action {
    SeqAction::RequestReplay { id, from_seq }
}

fn cat(parts: impl IntoIterator<Item = Vec<Action>>) -> Vec<Action> {
    parts.into_iter().flatten().collect()
}

/// A tracker with a replay endpoint that has applied `0..=last` (replay 1 answered them).
fn replaying_tracker_at(last: u64) -> SeqTracker<u64> {
    let mut t = tracker(true);
    assert_eq!(start(&mut t), [clear(ClearReason::Joined), request(1, 0)]);
    assert_eq!(answers(&mut t, 1, 0..=last), applies(0..=last));
    assert_eq!(end(&mut t, 1), []);
    t
}

#[test]
fn lives_in_order_apply_after_the_joining_clear() {
    let mut t = tracker(false);
    assert_eq!(start(&mut t), [clear(ClearReason::Joined)]);
    assert_eq!(start(&mut t), []);
    assert_eq!(live(&mut t, 0..3), applies(0..3));
    assert_eq!(t.last_applied(), Some(2));
    assert!(t.is_complete() && !t.is_replaying());
    assert_eq!(t.stats().batches_applied, 3);
    assert_eq!(t.stats().clears, 1);
}

#[test]
fn the_first_live_batch_starts_the_tracker() {
    let mut t = tracker(true);
    assert_eq!(live(&mut t, [7]), [clear(ClearReason::Joined), request(1, 0)]);
    assert_eq!(t.buffered_len(), 1);
    assert_eq!(t.current_replay(), Some(1));
}

#[test]
fn a_late_join_without_replay_counts_the_batches_it_never_saw() {
    let mut t = tracker(false);
    assert_eq!(live(&mut t, [500, 501]), cat([vec![clear(ClearReason::Joined)], applies([500, 501])]));
    assert_eq!(t.stats().unrecovered_batches, 500);
    assert_eq!(t.stats().gaps, 1);
    assert!(!t.is_complete());
}

#[test]
fn a_late_join_with_replay_applies_the_history_then_the_buffered_lives() {
    let mut t = tracker(true);
    assert_eq!(start(&mut t), [clear(ClearReason::Joined), request(1, 0)]);
    assert_eq!(live(&mut t, [3, 4]), []);
    assert_eq!(answers(&mut t, 1, 0..=3), applies(0..=3));
    assert_eq!(live(&mut t, [5]), []);
    assert_eq!(end(&mut t, 1), applies([4, 5]));
    assert_eq!(t.last_applied(), Some(5));
    assert!(t.is_complete() && !t.is_replaying());
    assert_eq!(t.stats().duplicates_skipped, 1);
    assert_eq!(t.stats().unrecovered_batches, 0);
}

#[test]
fn a_late_join_with_an_empty_replay_takes_the_lives_from_zero() {
    let mut t = tracker(true);
    start(&mut t);
    assert_eq!(end(&mut t, 1), []);
    assert_eq!(live(&mut t, 0..2), applies(0..2));
    assert!(t.is_complete());
}

#[test]
fn a_late_join_whose_replay_rolled_over_counts_the_missing_start() {
    let mut t = tracker(true);
    start(&mut t);
    // Nothing was applied since the joining clear: no second clear.
    assert_eq!(answers(&mut t, 1, 300..=302), applies(300..=302));
    assert_eq!(end(&mut t, 1), []);
    assert_eq!(t.stats().unrecovered_batches, 300);
    assert_eq!(t.stats().replays_incomplete, 1);
    assert_eq!(t.stats().clears, 1);
    assert!(!t.is_complete());
    assert_eq!(live(&mut t, [303]), applies([303]));
}

#[test]
fn a_gap_replays_from_the_next_seq_and_applies_each_batch_once_in_order() {
    let mut t = replaying_tracker_at(1);
    assert_eq!(live(&mut t, [4]), [request(2, 2)]);
    assert_eq!(live(&mut t, [5, 6]), []);
    assert_eq!(t.buffered_len(), 3);
    assert_eq!(answers(&mut t, 2, 2..=5), applies(2..=5));
    assert_eq!(end(&mut t, 2), applies([6]));
    assert_eq!(live(&mut t, [7]), applies([7]));
    assert_eq!(t.stats().duplicates_skipped, 2);
    assert_eq!(t.stats().gaps, 1);
    assert!(t.is_complete());
}

#[test]
fn live_batches_the_replay_already_brought_are_skipped() {
    let mut t = replaying_tracker_at(1);
    assert_eq!(live(&mut t, [4]), [request(2, 2)]);
    // The engine published up to 8 before answering; 5..=8 reach the SUB socket later.
    assert_eq!(answers(&mut t, 2, 2..=8), applies(2..=8));
    assert_eq!(end(&mut t, 2), []);
    assert_eq!(live(&mut t, 5..=9), applies([9]));
    assert_eq!(t.stats().restarts, 0);
    assert_eq!(t.stats().duplicates_skipped, 5);
}

#[test]
fn a_buffered_batch_past_a_new_gap_asks_for_another_replay() {
    let mut t = replaying_tracker_at(1);
    assert_eq!(live(&mut t, [4]), [request(2, 2)]);
    // 5 is lost after the engine answered: 6 leaves a new gap.
    assert_eq!(live(&mut t, [6]), []);
    assert_eq!(answers(&mut t, 2, 2..=4), applies(2..=4));
    assert_eq!(end(&mut t, 2), [request(3, 5)]);
    assert_eq!(answers(&mut t, 3, 5..=7), applies(5..=7));
    assert_eq!(end(&mut t, 3), []);
    assert!(t.is_complete());
    assert_eq!(t.stats().gaps, 2);
}

#[test]
fn a_replay_that_ends_short_of_a_batch_known_before_it_was_asked_is_incomplete() {
    let mut t = replaying_tracker_at(1);
    assert_eq!(live(&mut t, [5]), [request(2, 2)]);
    assert_eq!(answers(&mut t, 2, 2..=3), applies(2..=3));
    // 4 existed when the replay was asked for (5 did): asking again would not help.
    assert_eq!(end(&mut t, 2), cat([vec![clear(ClearReason::ReplayIncomplete)], applies([5])]));
    assert_eq!(t.stats().unrecovered_batches, 1);
    assert_eq!(t.stats().replays_incomplete, 1);
    assert!(!t.is_complete() && !t.is_replaying());
}

#[test]
fn a_hole_inside_the_replay_clears_and_goes_on_after_it() {
    let mut t = replaying_tracker_at(1);
    assert_eq!(live(&mut t, [6]), [request(2, 2)]);
    assert_eq!(
        answers(&mut t, 2, [2, 3, 5, 6]),
        cat([applies([2, 3]), vec![clear(ClearReason::ReplayIncomplete)], applies([5, 6])])
    );
    assert_eq!(end(&mut t, 2), []);
    assert_eq!(t.stats().unrecovered_batches, 1);
    assert_eq!(t.stats().replays_incomplete, 1);
    assert_eq!(t.last_applied(), Some(6));
}

#[test]
fn a_replay_starting_above_the_seq_asked_for_clears() {
    let mut t = replaying_tracker_at(1);
    assert_eq!(live(&mut t, [6]), [request(2, 2)]);
    assert_eq!(answers(&mut t, 2, 4..=6), cat([vec![clear(ClearReason::ReplayIncomplete)], applies(4..=6)]));
    assert_eq!(end(&mut t, 2), []);
    assert_eq!(t.stats().unrecovered_batches, 2);
    assert!(!t.is_complete());
}

#[test]
fn without_replay_a_gap_clears_and_applies_the_batch_after_it() {
    let mut t = tracker(false);
    start(&mut t);
    assert_eq!(live(&mut t, [0, 1]), applies([0, 1]));
    assert_eq!(live(&mut t, [4, 5]), cat([vec![clear(ClearReason::GapNoReplay)], applies([4, 5])]));
    assert_eq!(t.stats().unrecovered_batches, 2);
    assert_eq!(t.stats().replays_requested, 0);
    assert_eq!(t.last_applied(), Some(5));
    assert!(!t.is_complete());
}

#[test]
fn a_failed_replay_clears_and_applies_what_came_after_the_hole() {
    let mut t = replaying_tracker_at(1);
    assert_eq!(live(&mut t, [5, 6]), [request(2, 2)]);
    assert_eq!(answers(&mut t, 2, [2]), applies([2]));
    assert_eq!(failed(&mut t, 2), cat([vec![clear(ClearReason::ReplayFailed)], applies([5, 6])]));
    assert_eq!(t.stats().replays_failed, 1);
    assert_eq!(t.stats().unrecovered_batches, 2);
    // The next gap asks again.
    assert_eq!(live(&mut t, [8]), [request(3, 7)]);
}

#[test]
fn a_failed_replay_that_left_no_hole_clears_nothing() {
    let mut t = replaying_tracker_at(1);
    assert_eq!(live(&mut t, [3]), [request(2, 2)]);
    assert_eq!(answers(&mut t, 2, [2]), applies([2]));
    assert_eq!(failed(&mut t, 2), applies([3]));
    assert!(t.is_complete());
    assert_eq!(t.stats().clears, 1);
}

#[test]
fn a_restart_to_seq_zero_clears_and_starts_over() {
    let mut t = tracker(false);
    start(&mut t);
    live(&mut t, 0..5);
    assert_eq!(live(&mut t, [0, 1]), cat([vec![clear(ClearReason::Restart)], applies([0, 1])]));
    assert_eq!(t.stats().restarts, 1);
    assert!(t.is_complete());
}

#[test]
fn a_restart_above_zero_without_replay_counts_the_new_process_batches_it_missed() {
    let mut t = tracker(false);
    start(&mut t);
    live(&mut t, 0..5);
    assert_eq!(live(&mut t, [3]), cat([vec![clear(ClearReason::Restart)], applies([3])]));
    assert_eq!(t.stats().unrecovered_batches, 3);
    assert!(!t.is_complete());
}

#[test]
fn a_restart_above_zero_with_replay_asks_for_the_new_process_from_zero() {
    let mut t = replaying_tracker_at(0);
    assert_eq!(live(&mut t, 1..5), applies(1..5));
    assert_eq!(live(&mut t, [2]), [clear(ClearReason::Restart), request(2, 0)]);
    assert_eq!(answers(&mut t, 2, 0..=3), applies(0..=3));
    assert_eq!(end(&mut t, 2), []);
    assert!(t.is_complete());
    assert_eq!(t.last_applied(), Some(3));
}

#[test]
fn a_restart_during_a_replay_abandons_it() {
    let mut t = replaying_tracker_at(9);
    assert_eq!(live(&mut t, [12, 13]), [request(2, 10)]);
    assert_eq!(live(&mut t, [1]), [clear(ClearReason::Restart), request(3, 0)]);
    // The old process's answers and end: stale.
    assert_eq!(answers(&mut t, 2, 10..=13), []);
    assert_eq!(end(&mut t, 2), []);
    assert_eq!(failed(&mut t, 2), []);
    assert_eq!(t.stats().stale_replay_messages, 6);
    assert_eq!(answers(&mut t, 3, 0..=1), applies(0..=1));
    assert_eq!(live(&mut t, [2]), []);
    assert_eq!(end(&mut t, 3), applies([2]));
    assert_eq!(t.stats().restarts, 1);
    assert!(t.is_complete());
}

#[test]
fn stale_replay_ids_are_ignored() {
    let mut t = replaying_tracker_at(2);
    assert_eq!(answers(&mut t, 1, [3]), []);
    assert_eq!(end(&mut t, 1), []);
    assert_eq!(failed(&mut t, 1), []);
    assert_eq!(answers(&mut t, 99, [3]), []);
    assert_eq!(t.stats().stale_replay_messages, 4);
    assert_eq!(t.last_applied(), Some(2));
}

#[test]
fn a_first_live_batch_below_the_replayed_ones_is_a_late_copy() {
    let mut t = replaying_tracker_at(5);
    assert_eq!(live(&mut t, [3, 4, 6]), applies([6]));
    assert_eq!(t.stats().restarts, 0);
    // From then on, going back is a restart.
    assert_eq!(live(&mut t, [0]), cat([vec![clear(ClearReason::Restart)], applies([0])]));
}

#[test]
fn a_first_live_seq_zero_after_a_replay_is_a_restart() {
    // An idle engine that restarted: its first new batch must not pass for a copy.
    let mut t = replaying_tracker_at(5);
    assert_eq!(live(&mut t, [0]), cat([vec![clear(ClearReason::Restart)], applies([0])]));
    assert_eq!(t.stats().restarts, 1);
}

#[test]
fn a_buffer_overflow_drops_the_lives_and_asks_for_them_again() {
    let mut t = SeqTracker::new(TrackerConfig { replay: true, max_buffered: 2 });
    start(&mut t);
    end(&mut t, 1);
    assert_eq!(live(&mut t, [0]), applies([0]));
    assert_eq!(live(&mut t, [3, 4]), [request(2, 1)]);
    assert_eq!(live(&mut t, [5, 6]), []);
    assert_eq!((t.buffered_len(), t.stats().buffer_overflows), (1, 1));
    // The engine answered when 3 was its newest: 4..=6 are asked for again.
    assert_eq!(answers(&mut t, 2, 1..=3), applies(1..=3));
    assert_eq!(end(&mut t, 2), [request(3, 4)]);
    assert_eq!(answers(&mut t, 3, 4..=7), applies(4..=7));
    assert_eq!(end(&mut t, 3), []);
    assert!(t.is_complete() && !t.is_replaying());
    assert_eq!(t.stats().unrecovered_batches, 0);
}

#[test]
fn a_buffer_overflow_with_nothing_buffered_asks_from_the_next_seq() {
    let mut t = SeqTracker::new(TrackerConfig { replay: true, max_buffered: 1 });
    start(&mut t);
    end(&mut t, 1);
    live(&mut t, [0]);
    assert_eq!(live(&mut t, [2, 3]), [request(2, 1)]);
    assert_eq!(t.buffered_len(), 0);
    assert_eq!(answers(&mut t, 2, 1..=2), applies(1..=2));
    assert_eq!(end(&mut t, 2), [request(3, 3)]);
    assert_eq!(answers(&mut t, 3, [3]), applies([3]));
    assert_eq!(end(&mut t, 3), []);
    assert!(t.is_complete() && !t.is_replaying());
}

#[test]
fn dropped_lives_the_replay_should_have_had_are_lost() {
    let mut t = SeqTracker::new(TrackerConfig { replay: true, max_buffered: 0 });
    start(&mut t);
    end(&mut t, 1);
    live(&mut t, [0]);
    assert_eq!(live(&mut t, [2]), [request(2, 1)]);
    assert_eq!(answers(&mut t, 2, [1]), applies([1]));
    assert_eq!(end(&mut t, 2), [clear(ClearReason::ReplayIncomplete)]);
    assert_eq!(t.stats().unrecovered_batches, 1);
    assert_eq!(t.last_applied(), None);
    // Never applied again, even as a replay answer; the next one rebuilds a partial state.
    assert_eq!(live(&mut t, [3]), applies([3]));
    assert!(!t.is_complete());
}

#[test]
fn a_failed_replay_with_dropped_lives_clears() {
    let mut t = SeqTracker::new(TrackerConfig { replay: true, max_buffered: 0 });
    start(&mut t);
    end(&mut t, 1);
    live(&mut t, [0]);
    assert_eq!(live(&mut t, [2, 3]), [request(2, 1)]);
    assert_eq!(failed(&mut t, 2), [clear(ClearReason::ReplayFailed)]);
    assert_eq!(t.stats().unrecovered_batches, 3);
    assert_eq!(live(&mut t, [4]), applies([4]));
}

#[test]
fn the_last_seq_of_all_settles_everything() {
    let mut t = tracker(false);
    assert_eq!(
        live(&mut t, [u64::MAX]),
        [clear(ClearReason::Joined), SeqAction::Apply { seq: u64::MAX, batch: u64::MAX }]
    );
    assert_eq!(t.stats().unrecovered_batches, u64::MAX);
    assert_eq!(live(&mut t, [0]), cat([vec![clear(ClearReason::Restart)], applies([0])]));
}

// ---------------------------------------------------------------------------------------
// Model run.

/// A batch of the model engine: (process incarnation, seq).
type Batch = (u32, u64);

#[derive(Clone, Debug)]
enum Op {
    /// The engine publishes its next batch; PUB may drop it.
    Publish { dropped: bool },
    /// The SUB socket delivers its oldest batch.
    DeliverLive,
    /// The last live batch reaches the tracker once more (not something PUB does: the
    /// tracker may take it for a restart, which must stay safe).
    DuplicateLive,
    /// The engine process restarts (once everything the old one sent is delivered).
    Restart,
    /// One replay conversation moves on: the engine reads the request, or one answer or
    /// the end marker arrives.
    ReplayStep(u8),
    /// The next answer of a conversation is lost (the ROUTER's high-water mark).
    ReplayHole(u8),
    /// A conversation fails (timeout, connection error).
    ReplayFail(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::bool::weighted(0.3).prop_map(|dropped| Op::Publish { dropped }),
        5 => Just(Op::DeliverLive),
        1 => Just(Op::DuplicateLive),
        1 => Just(Op::Restart),
        6 => any::<u8>().prop_map(Op::ReplayStep),
        1 => any::<u8>().prop_map(Op::ReplayHole),
        1 => any::<u8>().prop_map(Op::ReplayFail),
    ]
}

#[derive(Clone, Debug)]
struct Scenario {
    config: TrackerConfig,
    /// The replay buffer keeps the newest `replay_capacity` batches of the process.
    replay_capacity: u64,
    /// Batches published before the subscriber joined (never delivered live).
    published_before_join: u64,
    /// Whether `ReplayHole` and `ReplayFail` act.
    replay_faults: bool,
    ops: Vec<Op>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::bool::weighted(0.8),
        prop_oneof![0..4usize, Just(TrackerConfig::DEFAULT_MAX_BUFFERED)],
        prop_oneof![2..16u64, Just(10_000)],
        0..20u64,
        prop::bool::weighted(0.4),
        prop::collection::vec(op(), 0..160),
    )
        .prop_map(|(replay, max_buffered, replay_capacity, published_before_join, replay_faults, ops)| Scenario {
            config: TrackerConfig { replay, max_buffered },
            replay_capacity,
            published_before_join,
            replay_faults,
            ops,
        })
}

#[derive(Debug)]
enum Conversation {
    /// Sent, not yet read by the engine (a request the old process never read is read by
    /// the new one, as a DEALER resends it on reconnecting).
    Requested {
        from_seq: u64,
    },
    Answering {
        answers: VecDeque<Batch>,
    },
}

struct Model {
    tracker: SeqTracker<Batch>,
    replay_capacity: u64,
    // The engine.
    incarnation: u32,
    published: u64,
    most_published: u64,
    /// The SUB socket's queue.
    pipe: VecDeque<Batch>,
    last_delivered: Option<Batch>,
    conversations: Vec<(u64, Conversation)>,
    replay_faulted: bool,
    // What the rank holds: the batches applied since the last Clear, in order.
    held: Vec<Batch>,
    /// Per process, the last seq applied since the last detected restart.
    last_applied: HashMap<u32, u64>,
    /// The incarnation of the live batch that revealed the last restart.
    oldest_allowed: u32,
    applies: u64,
    clears: u64,
    requests: u64,
}

impl Model {
    fn new(scenario: &Scenario) -> Self {
        Model {
            tracker: SeqTracker::new(scenario.config),
            replay_capacity: scenario.replay_capacity,
            incarnation: 0,
            published: scenario.published_before_join,
            most_published: scenario.published_before_join,
            pipe: VecDeque::new(),
            last_delivered: None,
            conversations: Vec::new(),
            replay_faulted: false,
            held: Vec::new(),
            last_applied: HashMap::new(),
            oldest_allowed: 0,
            applies: 0,
            clears: 0,
            requests: 0,
        }
    }

    fn publish(&mut self, dropped: bool) {
        let batch = (self.incarnation, self.published);
        self.published += 1;
        self.most_published = self.most_published.max(self.published);
        if !dropped {
            self.pipe.push_back(batch);
        }
    }

    fn deliver_live(&mut self, batch: Batch) -> Result<(), TestCaseError> {
        self.last_delivered = Some(batch);
        let restarts = self.tracker.stats().restarts;
        let mut out = Vec::new();
        self.tracker.on_live(batch.1, batch, &mut out);
        if self.tracker.stats().restarts > restarts {
            // Nothing before this batch's process may be applied from now on.
            self.oldest_allowed = self.oldest_allowed.max(batch.0);
            self.last_applied.clear();
        }
        self.observe(out)
    }

    fn replay_step(&mut self, index: usize) -> Result<(), TestCaseError> {
        let mut out = Vec::new();
        let id = self.conversations[index].0;
        match &mut self.conversations[index].1 {
            Conversation::Requested { from_seq } => {
                let oldest = self.published.saturating_sub(self.replay_capacity);
                let answers = ((*from_seq).max(oldest)..self.published).map(|seq| (self.incarnation, seq)).collect();
                self.conversations[index].1 = Conversation::Answering { answers };
            }
            Conversation::Answering { answers } => match answers.pop_front() {
                Some(batch) => self.tracker.on_replay_batch(id, batch.1, batch, &mut out),
                None => {
                    self.conversations.remove(index);
                    self.tracker.on_replay_end(id, &mut out);
                }
            },
        }
        self.observe(out)
    }

    fn replay_hole(&mut self, index: usize) {
        if let Conversation::Answering { answers } = &mut self.conversations[index].1 {
            if answers.pop_front().is_some() {
                self.replay_faulted = true;
            }
        }
    }

    fn replay_fail(&mut self, index: usize) -> Result<(), TestCaseError> {
        let (id, _) = self.conversations.remove(index);
        self.replay_faulted = true;
        let mut out = Vec::new();
        self.tracker.on_replay_failed(id, &mut out);
        self.observe(out)
    }

    /// Restarting takes the engine long enough for everything the old process sent to
    /// arrive first; requests it never read go to the new one.
    fn restart(&mut self) -> Result<(), TestCaseError> {
        while let Some(batch) = self.pipe.pop_front() {
            self.deliver_live(batch)?;
        }
        while let Some(index) = self.conversations.iter().position(|(_, c)| matches!(c, Conversation::Answering { .. }))
        {
            self.replay_step(index)?;
        }
        self.incarnation += 1;
        self.published = 0;
        // Its first batch reaches the subscriber: the only way to notice the restart.
        self.publish(false);
        Ok(())
    }

    fn run(&mut self, op: &Op, replay_faults: bool) -> Result<(), TestCaseError> {
        let pick = |k: u8, n: usize| usize::from(k) % n;
        match *op {
            Op::Publish { dropped } => self.publish(dropped),
            Op::DeliverLive => {
                if let Some(batch) = self.pipe.pop_front() {
                    self.deliver_live(batch)?;
                }
            }
            Op::DuplicateLive => {
                // Only a batch of the running process: a dead one sends nothing more.
                if let Some(batch) = self.last_delivered.filter(|batch| batch.0 == self.incarnation) {
                    self.deliver_live(batch)?;
                }
            }
            Op::Restart => self.restart()?,
            Op::ReplayStep(k) if !self.conversations.is_empty() => {
                self.replay_step(pick(k, self.conversations.len()))?;
            }
            Op::ReplayHole(k) if replay_faults && !self.conversations.is_empty() => {
                self.replay_hole(pick(k, self.conversations.len()));
            }
            Op::ReplayFail(k) if replay_faults && !self.conversations.is_empty() => {
                self.replay_fail(pick(k, self.conversations.len()))?;
            }
            Op::ReplayStep(_) | Op::ReplayHole(_) | Op::ReplayFail(_) => {}
        }
        Ok(())
    }

    /// Checks every action as it comes (rules a and b) and plays it on the model rank.
    fn observe(&mut self, out: Vec<SeqAction<Batch>>) -> Result<(), TestCaseError> {
        for action in out {
            match action {
                SeqAction::Apply { seq, batch } => {
                    self.applies += 1;
                    prop_assert_eq!(seq, batch.1, "the batch applied is the one of that seq");
                    if let Some(last) = self.held.last() {
                        prop_assert_eq!(seq, last.1 + 1, "between clears, seqs run without holes");
                    }
                    // Rule a. (Processes may mix before a restart is seen: a request read by
                    // the new process answers its batches for the old one's.)
                    if let Some(&last) = self.last_applied.get(&batch.0) {
                        prop_assert!(seq > last, "{:?} applied after seq {}: twice, or out of order", batch, last);
                    }
                    // Rule b.
                    prop_assert!(batch.0 >= self.oldest_allowed, "{:?} is from before a detected restart", batch);
                    self.last_applied.insert(batch.0, seq);
                    self.held.push(batch);
                }
                SeqAction::Clear { .. } => {
                    self.clears += 1;
                    self.held.clear();
                }
                SeqAction::RequestReplay { id, from_seq } => {
                    self.requests += 1;
                    self.conversations.push((id, Conversation::Requested { from_seq }));
                }
            }
        }
        Ok(())
    }

    /// No more faults: a last batch is published and everything is delivered.
    fn quiesce(&mut self) -> Result<(), TestCaseError> {
        self.publish(false);
        for _ in 0..1_000_000 {
            if let Some(batch) = self.pipe.pop_front() {
                self.deliver_live(batch)?;
            } else if !self.conversations.is_empty() {
                self.replay_step(0)?;
            } else {
                return Ok(());
            }
        }
        Err(TestCaseError::fail("never quiescent"))
    }
}

fn check_scenario(scenario: &Scenario) -> Result<(), TestCaseError> {
    let mut model = Model::new(scenario);
    let mut out = Vec::new();
    model.tracker.start(&mut out);
    model.observe(out)?;
    for op in &scenario.ops {
        model.run(op, scenario.replay_faults)?;
    }
    model.quiesce()?;

    let tracker = &model.tracker;
    let stats = tracker.stats();
    prop_assert!(!tracker.is_replaying());
    prop_assert_eq!(tracker.buffered_len(), 0);
    prop_assert_eq!(stats.batches_applied, model.applies);
    prop_assert_eq!(stats.clears, model.clears);
    prop_assert_eq!(stats.replays_requested, model.requests);

    // Rule c: the rank holds a run of the current process ending at its last batch: the
    // engine's state when the run starts at 0, a part of it otherwise (each event of a
    // run replayed onto an empty state: stores and removals after its start are there,
    // none from before), and then the loss was counted.
    let last = (model.incarnation, model.published - 1);
    prop_assert_eq!(model.held.last().copied(), Some(last), "the last batch is applied");
    prop_assert!(model.held.iter().all(|batch| batch.0 == model.incarnation), "held: {:?}", model.held);
    prop_assert_eq!(tracker.last_applied(), Some(last.1));
    let first = model.held[0].1;
    prop_assert_eq!(tracker.is_complete(), first == 0);
    if first > 0 {
        prop_assert!(stats.unrecovered_batches > 0, "a partial state with nothing counted lost: {:?}", stats);
    }
    let recoverable = scenario.config.replay && !model.replay_faulted && model.most_published <= model.replay_capacity;
    if recoverable {
        prop_assert!(tracker.is_complete(), "nothing was lost for good, yet the state is partial: {:?}", stats);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_lossy_engine_stream_never_over_credits_and_recovers_whatever_can_be(scenario in scenario()) {
        check_scenario(&scenario)?;
    }
}
