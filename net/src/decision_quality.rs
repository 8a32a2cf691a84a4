//! Decision quality, as `/metrics` shows it: per routing path, how many cached blocks the
//! decisions took against the most any candidate held, and why they took fewer.
//!
//! The router reports both figures with each decision ([`Decision::best_overlap_blocks`],
//! [`Decision::shortfall`]); [`DecisionQuality::record`] adds one decision to lock-free
//! totals (prompt, chosen and best blocks; decisions below the best by reason) and three
//! histograms (chosen overlap, best overlap, blocks missed = best - chosen). Chosen over
//! prompt blocks is the hit rate the router got; best over prompt is what was available;
//! the reasons say where the rest went (load, lower tiers, temperature, a policy that
//! ignores overlap). Relaxed by design, as every counter of `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use kvroute_core::route::{Decision, Shortfall};

use crate::atomic_histogram::{AtomicHistogram, HistogramSnapshot};

/// Bounds of the overlap histograms, in blocks (0 to 4,096: 64 Ki tokens at block size 16).
pub const OVERLAP_BUCKETS: [u64; 14] = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// One routing path's decision-quality counters; see the module docs.
#[derive(Debug)]
pub struct DecisionQuality {
    decisions: AtomicU64,
    prompt_blocks: AtomicU64,
    chosen_blocks: AtomicU64,
    best_blocks: AtomicU64,
    /// Per [`Shortfall::ALL`] entry.
    below_best: [AtomicU64; Shortfall::ALL.len()],
    chosen: AtomicHistogram,
    best: AtomicHistogram,
    missed: AtomicHistogram,
}

/// A read of [`DecisionQuality`].
#[derive(Clone, Debug, PartialEq)]
pub struct QualitySnapshot {
    pub decisions: u64,
    pub prompt_blocks: u64,
    pub chosen_blocks: u64,
    pub best_blocks: u64,
    /// Decisions below the best, per reason, in [`Shortfall::ALL`] order.
    pub below_best: Vec<(Shortfall, u64)>,
    pub chosen: HistogramSnapshot,
    pub best: HistogramSnapshot,
    pub missed: HistogramSnapshot,
}

impl Default for DecisionQuality {
    fn default() -> Self {
        DecisionQuality {
            decisions: AtomicU64::new(0),
            prompt_blocks: AtomicU64::new(0),
            chosen_blocks: AtomicU64::new(0),
            best_blocks: AtomicU64::new(0),
            below_best: std::array::from_fn(|_| AtomicU64::new(0)),
            chosen: AtomicHistogram::new(&OVERLAP_BUCKETS, 1.0),
            best: AtomicHistogram::new(&OVERLAP_BUCKETS, 1.0),
            missed: AtomicHistogram::new(&OVERLAP_BUCKETS, 1.0),
        }
    }
}

impl DecisionQuality {
    /// Adds one decision (for a disaggregated one, its prefill side: the one with a cache).
    pub fn record(&self, decision: &Decision) {
        let (chosen, best) = (u64::from(decision.overlap_blocks), u64::from(decision.best_overlap_blocks));
        self.decisions.fetch_add(1, Ordering::Relaxed);
        self.prompt_blocks.fetch_add(u64::from(decision.cost.request_blocks), Ordering::Relaxed);
        self.chosen_blocks.fetch_add(chosen, Ordering::Relaxed);
        self.best_blocks.fetch_add(best, Ordering::Relaxed);
        if let Some(reason) = decision.shortfall {
            let slot = Shortfall::ALL.iter().position(|&r| r == reason).unwrap_or(0);
            self.below_best[slot].fetch_add(1, Ordering::Relaxed);
        }
        self.chosen.observe(chosen);
        self.best.observe(best);
        self.missed.observe(best.saturating_sub(chosen));
    }

    pub fn snapshot(&self) -> QualitySnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        QualitySnapshot {
            decisions: load(&self.decisions),
            prompt_blocks: load(&self.prompt_blocks),
            chosen_blocks: load(&self.chosen_blocks),
            best_blocks: load(&self.best_blocks),
            below_best: Shortfall::ALL.iter().zip(&self.below_best).map(|(&r, c)| (r, load(c))).collect(),
            chosen: self.chosen.snapshot(),
            best: self.best.snapshot(),
            missed: self.missed.snapshot(),
        }
    }
}
