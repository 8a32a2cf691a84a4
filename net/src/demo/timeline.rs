//! Trace time in the demo: each rank is a serial prefill server, and a request's life
//! ends some time after its prefill.
//!
//! A request arriving at `t` on rank `r` starts prefill when the rank is free
//! (`max(t, busy_until[r])`) and takes `computed tokens / prefill rate`; its time to
//! first token (TTFT) is the prefill's end minus `t`. It then decodes for
//! `output tokens x ms per output token`. Completions (prefill done, finished) are kept
//! in a min-heap and handed back, in time order, when the replay reaches their time, so
//! that the router hears `prefill_done` and `finish` as a frontend would.
//!
//! Times are microseconds of trace time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use kvroute_core::route::RequestId;

/// A request as the router that routed it knows it: which of the router replicas in
/// front of the fleet, and the id it gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Routed {
    pub(super) replica: usize,
    pub(super) id: RequestId,
}

/// Something that happens to a routed request after its arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Completion {
    /// The request's prefill ended on prefill rank `prefill_slot`, which computed
    /// `prefill_tokens` of its prompt.
    PrefillDone { request: Option<Routed>, prefill_slot: usize, prefill_tokens: u64 },
    /// The request finished decoding on decode rank `decode_slot`, which held
    /// `decode_blocks` of its KV.
    Finished { request: Option<Routed>, decode_slot: usize, decode_blocks: u64 },
}

/// Per-rank prefill queues and the pending completions of one replay.
pub(super) struct Timeline {
    busy_until_us: Vec<u64>,
    pending: BinaryHeap<Reverse<(u64, u64, Completion)>>,
    /// Tie-breaker that keeps completions of equal time in scheduling order.
    scheduled: u64,
}

/// When a request's prefill ends and how long its first token took.
pub(super) struct PrefillTiming {
    pub(super) end_us: u64,
    pub(super) ttft_us: u64,
}

impl Timeline {
    pub(super) fn new(prefill_ranks: usize) -> Timeline {
        Timeline { busy_until_us: vec![0; prefill_ranks], pending: BinaryHeap::new(), scheduled: 0 }
    }

    /// Queues `tokens` of prefill on `slot` for a request arriving at `now_us`.
    pub(super) fn prefill(&mut self, slot: usize, now_us: u64, tokens: u64, tokens_per_ms: u64) -> PrefillTiming {
        let start = now_us.max(self.busy_until_us[slot]);
        let end_us = start + tokens * 1000 / tokens_per_ms.max(1);
        self.busy_until_us[slot] = end_us;
        PrefillTiming { end_us, ttft_us: end_us - now_us }
    }

    pub(super) fn schedule(&mut self, at_us: u64, completion: Completion) {
        self.scheduled += 1;
        self.pending.push(Reverse((at_us, self.scheduled, completion)));
    }

    /// Hands every completion due at or before `now_us` to `on_due` with its time, in
    /// time order.
    pub(super) fn advance_to(&mut self, now_us: u64, mut on_due: impl FnMut(u64, Completion)) {
        while let Some(Reverse((at, _, completion))) = self.pending.peek().copied() {
            if at > now_us {
                break;
            }
            self.pending.pop();
            on_due(at, completion);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_queues_behind_the_rank_busy_time() {
        let mut timeline = Timeline::new(2);
        let first = timeline.prefill(0, 1_000, 2_000, 1_000); // 2 ms of work
        assert_eq!((first.end_us, first.ttft_us), (3_000, 2_000));
        let queued = timeline.prefill(0, 2_000, 1_000, 1_000); // waits 1 ms, then 1 ms
        assert_eq!((queued.end_us, queued.ttft_us), (4_000, 2_000));
        let other = timeline.prefill(1, 2_000, 1_000, 1_000);
        assert_eq!(other.ttft_us, 1_000);
    }

    #[test]
    fn completions_come_back_in_time_order_once() {
        let mut timeline = Timeline::new(1);
        let done = |slot| Completion::PrefillDone { request: None, prefill_slot: slot, prefill_tokens: 0 };
        timeline.schedule(30, done(3));
        timeline.schedule(10, done(1));
        timeline.schedule(20, done(2));
        let mut seen = Vec::new();
        timeline.advance_to(20, |at, c| seen.push((at, c)));
        assert_eq!(seen, vec![(10, done(1)), (20, done(2))]);
        timeline.advance_to(25, |at, c| seen.push((at, c)));
        assert_eq!(seen.len(), 2);
        timeline.advance_to(u64::MAX, |at, c| seen.push((at, c)));
        assert_eq!(seen, vec![(10, done(1)), (20, done(2)), (30, done(3))]);
    }
}
