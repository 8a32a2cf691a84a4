//! How far a rank has got through its prefill queue, and how fast it prefills: the
//! router's estimate, from nothing but its own requests' routing and `prefill_done` times.
//!
//! The router charges a rank with the uncached prompt tokens of each request it sends
//! there and releases them at that request's `prefill_done`. Between those events the
//! rank is working: the request at the head of its queue is partly computed, so the
//! charged tokens overstate what is left by up to that request's whole prompt. A
//! [`PrefillProgress`] keeps two things per rank:
//!
//! - `since_ms`: the router clock time from which the rank has been working through the
//!   tokens still charged to it: set when a request arrives at an idle rank (nothing
//!   charged) and at every `prefill_done` (the next request starts then). The tokens
//!   left are estimated as `charged - rate x (now - since_ms)`, never below zero and
//!   reset to exactly `charged` at the next `prefill_done`.
//! - `rate`: tokens per ms the rank prefills, the ratio of two exponentially decayed sums
//!   (tokens released, ms busy) over its `prefill_done`s, each adding the request's tokens
//!   and the time since `since_ms`. For a serial server each sample is one request's
//!   exact speed; for a batching one (several requests done at once, the later ones after
//!   ~0 ms) the ratio is still tokens over busy time. Both sums are `f32` in one
//!   `AtomicU64`, updated by compare-and-swap, so a sample is never half applied.
//!
//! Until a rank has a sample its rate is unknown and nothing is subtracted (the charged
//! tokens stand, as they do for every policy but `Policy::PredictedTtft`).
//!
//! Orderings are Relaxed by design: both fields are estimates read by decisions that
//! want a recent value, not an ordering with other memory; two racing `prefill_done`s
//! each take one swap of `since_ms`, so each sample covers its own interval, and a race
//! of an arrival with a `prefill_done` costs at most one sample's accuracy.

use std::sync::atomic::{AtomicU64, Ordering};

/// Weight of the sums' history kept at each sample (about the last 32 samples count).
const DECAY: f32 = 31.0 / 32.0;

#[derive(Debug, Default)]
pub(crate) struct PrefillProgress {
    since_ms: AtomicU64,
    /// `(tokens: f32, busy ms: f32)` as bits, tokens in the high half; zero: no sample.
    rate_sums: AtomicU64,
}

fn pack(tokens: f32, ms: f32) -> u64 {
    (u64::from(tokens.to_bits()) << 32) | u64::from(ms.to_bits())
}

fn unpack(bits: u64) -> (f32, f32) {
    (f32::from_bits((bits >> 32) as u32), f32::from_bits(bits as u32))
}

impl PrefillProgress {
    /// A request's prefill was charged at `now_ms`; `charged_before` is what the rank
    /// held before it (zero: the rank was idle and starts on this one now).
    pub(crate) fn charged(&self, charged_before: u64, now_ms: u64) {
        if charged_before == 0 {
            self.since_ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// A request's prefill of `tokens` ended at `now_ms`: one rate sample, and the rest
    /// of the queue starts now.
    pub(crate) fn done(&self, tokens: u64, now_ms: u64) {
        let since = self.since_ms.swap(now_ms, Ordering::Relaxed);
        let busy_ms = now_ms.saturating_sub(since) as f32;
        let tokens = tokens as f32;
        if tokens == 0.0 && busy_ms == 0.0 {
            return;
        }
        let _ = self.rate_sums.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let (t, ms) = unpack(bits);
            Some(pack(t * DECAY + tokens, ms * DECAY + busy_ms))
        });
    }

    /// Tokens per ms, if a sample gave a finite positive rate.
    pub(crate) fn rate(&self) -> Option<f64> {
        let (tokens, ms) = unpack(self.rate_sums.load(Ordering::Relaxed));
        let rate = f64::from(tokens) / f64::from(ms);
        (rate.is_finite() && rate > 0.0).then_some(rate)
    }

    /// Of `charged` tokens, those still to compute at `now_ms` at `rate` (tokens per ms).
    pub(crate) fn remaining(&self, charged: u64, rate: Option<f64>, now_ms: u64) -> f64 {
        let Some(rate) = rate else { return charged as f64 };
        let elapsed = now_ms.saturating_sub(self.since_ms.load(Ordering::Relaxed)) as f64;
        (charged as f64 - rate * elapsed).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serial_rank_is_measured_exactly_and_its_head_counts_down() {
        let p = PrefillProgress::default();
        assert_eq!(p.rate(), None);
        assert_eq!(p.remaining(100, p.rate(), 50), 100.0, "no rate yet: the charge stands");
        // 100 tokens from t = 10 (idle rank), then 60 more queued at t = 20.
        p.charged(0, 10);
        p.charged(100, 20);
        p.done(100, 60); // 100 tokens in 50 ms
        assert_eq!(p.rate(), Some(2.0));
        // 60 left at t = 60; at t = 75, 30 of them are done.
        assert_eq!(p.remaining(60, p.rate(), 75), 30.0);
        assert_eq!(p.remaining(60, p.rate(), 500), 0.0, "never below zero");
        p.done(60, 90); // also 2 tokens/ms
        assert!((p.rate().unwrap() - 2.0).abs() < 1e-6);
    }

    #[test]
    fn a_batch_done_at_once_still_gives_tokens_over_busy_time() {
        let p = PrefillProgress::default();
        p.charged(0, 0);
        p.done(300, 100);
        p.done(300, 100);
        p.done(300, 100);
        // 900 tokens in 100 busy ms: 9 per ms, a little more since the busy ms came with
        // the first sample and decayed twice.
        let rate = p.rate().unwrap();
        assert!((9.0..9.5).contains(&rate), "{rate}");
    }

    #[test]
    fn the_rate_follows_a_change_of_speed() {
        let p = PrefillProgress::default();
        let mut t = 0;
        p.charged(0, t);
        for _ in 0..200 {
            t += 10;
            p.done(10, t); // 1 token/ms
        }
        for _ in 0..200 {
            t += 10;
            p.done(40, t); // 4 tokens/ms
        }
        let rate = p.rate().unwrap();
        assert!((rate - 4.0).abs() < 0.01, "{rate}");
    }
}
