//! A fixed-bucket histogram of `u64` observations, lock-free: one atomic counter per
//! bucket plus a sum, so that many request threads observe at once and a scrape reads it
//! without stopping them.
//!
//! Buckets are given as ascending upper bounds in the observation's own unit (nanoseconds,
//! blocks); an observation lands in the first bucket whose bound is at least it, or in the
//! overflow bucket past the last (Prometheus's `+Inf`). A read ([`AtomicHistogram::snapshot`])
//! gives per-bucket counts with the bounds divided by a scale (nanoseconds to seconds), the
//! shape `prometheus-client`'s histogram encoder takes. Counters are Relaxed by design: each
//! is an independent sum, and a scrape wants recent values, not a consistent cut; the count
//! is the sum of the buckets read, so the two always agree within one read.

use std::sync::atomic::{AtomicU64, Ordering};

/// See the module docs.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [u64],
    /// What a bound is divided by when read (1e9: nanoseconds read as seconds).
    scale: f64,
    /// Per bucket (not cumulative), plus one past the last bound.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A histogram read: per-bucket counts by upper bound (scaled; `+Inf` last), the sum
/// (scaled) and the count.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl AtomicHistogram {
    /// `bounds` ascending.
    pub fn new(bounds: &'static [u64], scale: f64) -> AtomicHistogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram { bounds, scale, buckets, sum: AtomicU64::new(0) }
    }

    pub fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut count = 0;
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, bucket)| {
                let n = bucket.load(Ordering::Relaxed);
                count += n;
                let bound = self.bounds.get(i).map_or(f64::INFINITY, |&b| b as f64 / self.scale);
                (bound, n)
            })
            .collect();
        HistogramSnapshot { buckets, sum: self.sum.load(Ordering::Relaxed) as f64 / self.scale, count }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_at_or_above_them() {
        let histogram = AtomicHistogram::new(&[1, 4, 16], 2.0);
        for value in [0, 1, 2, 4, 5, 16, 17, 1000] {
            histogram.observe(value);
        }
        let read = histogram.snapshot();
        assert_eq!(read.buckets, vec![(0.5, 2), (2.0, 2), (8.0, 2), (f64::INFINITY, 2)]);
        assert_eq!((read.sum, read.count), (1045.0 / 2.0, 8));
    }
}
