//! What one routing policy achieved over a replay, and the tables that compare policies.

/// Per-rank load of one pool over a replay.
pub(super) struct PoolLoad {
    /// Requests sent to each rank.
    pub(super) requests: Vec<u64>,
    /// Blocks of work done by each rank (prefill: blocks computed; decode: KV blocks held).
    pub(super) work_blocks: Vec<u64>,
    /// What each rank holds now (requests, or decode blocks).
    pub(super) active: Vec<u64>,
    /// The most a rank held at once (requests, or decode blocks).
    pub(super) peak_active: Vec<u64>,
    /// `active` at moments of trace time, oldest first; empty unless the replay was asked
    /// to sample it (`kvroute demo --report`).
    pub(super) over_time: Vec<LoadSample>,
}

/// What each rank held (`PoolLoad::active`) at one moment of trace time.
pub(super) struct LoadSample {
    pub(super) at_ms: u64,
    pub(super) active: Vec<u64>,
}

impl PoolLoad {
    pub(super) fn new(ranks: usize) -> PoolLoad {
        PoolLoad {
            requests: vec![0; ranks],
            work_blocks: vec![0; ranks],
            active: vec![0; ranks],
            peak_active: vec![0; ranks],
            over_time: Vec::new(),
        }
    }

    /// Records what every rank holds now as the load at `at_ms`.
    pub(super) fn sample(&mut self, at_ms: u64) {
        self.over_time.push(LoadSample { at_ms, active: self.active.clone() });
    }

    /// A request starts on `slot`, doing `work_blocks` of work and occupying `weight`.
    pub(super) fn start(&mut self, slot: usize, work_blocks: u64, weight: u64) {
        self.requests[slot] += 1;
        self.work_blocks[slot] += work_blocks;
        self.active[slot] += weight;
        self.peak_active[slot] = self.peak_active[slot].max(self.active[slot]);
    }

    pub(super) fn end(&mut self, slot: usize, weight: u64) {
        self.active[slot] -= weight;
    }
}

/// Cache and latency figures of one policy.
#[derive(Default)]
pub(super) struct PolicyOutcome {
    pub(super) requested_blocks: u64,
    pub(super) reused_blocks: u64,
    /// Simulated time to first token of each request, in trace microseconds.
    pub(super) ttft_us: Vec<u64>,
    /// Wall-clock time of each routing decision (index policies only), in ns.
    pub(super) decision_ns: Vec<u64>,
    /// Requests whose predicted overlap was compared with the engine's reuse.
    pub(super) predictions: u64,
    pub(super) exact_predictions: u64,
    /// Over the decisions: cached blocks on the chosen rank, and on the best candidate
    /// (the most any held when the router decided).
    pub(super) chosen_overlap_blocks: u64,
    pub(super) best_overlap_blocks: u64,
}

impl PolicyOutcome {
    pub(super) fn hit_rate(&self) -> f64 {
        self.reused_blocks as f64 / self.requested_blocks.max(1) as f64
    }

    /// Cached blocks the decisions took over those available to them (1.00: always the
    /// best candidate's).
    pub(super) fn overlap_taken(&self) -> f64 {
        self.chosen_overlap_blocks as f64 / self.best_overlap_blocks.max(1) as f64
    }

    pub(super) fn predicted(&mut self, predicted_blocks: u32, reused_blocks: usize) {
        self.predictions += 1;
        self.exact_predictions += u64::from(predicted_blocks as usize == reused_blocks);
    }
}

pub(super) fn percentile(values: &[u64], p: f64) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `max / mean` of a per-rank quantity: 1.00 is perfectly even.
pub(super) fn max_over_mean(values: &[u64]) -> f64 {
    let mean = values.iter().sum::<u64>() as f64 / values.len().max(1) as f64;
    values.iter().copied().max().unwrap_or(0) as f64 / mean.max(f64::MIN_POSITIVE)
}

/// `min / mean / max` of a per-rank quantity.
pub(super) fn min_mean_max(values: &[u64]) -> String {
    let min = values.iter().copied().min().unwrap_or(0);
    let max = values.iter().copied().max().unwrap_or(0);
    let mean = values.iter().sum::<u64>() as f64 / values.len().max(1) as f64;
    format!("{min}/{mean:.0}/{max}")
}

/// Prints one table row: a label and one cell per policy.
pub(super) fn row(label: &str, cells: impl IntoIterator<Item = String>) {
    let mut line = format!("{label:<30}");
    for cell in cells {
        line.push_str(&format!(" {cell:>22}"));
    }
    println!("{line}");
}

pub(super) fn ms(us: u64) -> String {
    duration(us)
}

/// A duration in microseconds in the unit that reads best: `850 us`, `12.3 ms`, `4.52 s`,
/// `9 min 42 s`, `3.4 h`.
pub(super) fn duration(us: u64) -> String {
    let s = us as f64 / 1e6;
    match us {
        0..1_000 => format!("{us} us"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1000.0),
        1_000_000..60_000_000 => format!("{s:.2} s"),
        60_000_000..3_600_000_000 => format!("{} min {:02} s", us / 60_000_000, (us / 1_000_000) % 60),
        _ => format!("{:.1} h", s / 3600.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_load_tracks_peaks_and_totals() {
        let mut pool = PoolLoad::new(2);
        pool.start(0, 10, 3);
        pool.start(0, 5, 2);
        pool.end(0, 3);
        pool.start(0, 1, 1);
        pool.start(1, 7, 4);
        assert_eq!(pool.requests, vec![3, 1]);
        assert_eq!(pool.work_blocks, vec![16, 7]);
        assert_eq!(pool.peak_active, vec![5, 4]);
        pool.sample(7);
        pool.end(1, 4);
        pool.sample(9);
        let samples: Vec<_> = pool.over_time.iter().map(|s| (s.at_ms, s.active.clone())).collect();
        assert_eq!(samples, vec![(7, vec![3, 4]), (9, vec![3, 0])]);
    }

    #[test]
    fn durations_read_in_their_unit() {
        assert_eq!(duration(850), "850 us");
        assert_eq!(duration(12_340), "12.3 ms");
        assert_eq!(duration(4_520_000), "4.52 s");
        assert_eq!(duration(582_000_000), "9 min 42 s");
        assert_eq!(duration(34_964_296_000), "9.7 h");
    }

    #[test]
    fn spread_figures() {
        assert_eq!(percentile(&[5, 1, 3, 2, 4], 0.5), 3);
        assert_eq!(percentile(&[], 0.99), 0);
        assert!((max_over_mean(&[1, 1, 4]) - 2.0).abs() < 1e-9);
        assert_eq!(min_mean_max(&[1, 2, 6]), "1/3/6");
    }
}
