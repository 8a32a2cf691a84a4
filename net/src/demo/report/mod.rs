//! `kvroute demo --report FILE.html`: the aggregated demo's policy replays as one
//! self-contained HTML file of four charts.
//!
//! The demo fills a [`ReportInput`] from its replays (one [`PolicyRun`] per routing policy,
//! in the table's order, plus the ceiling's hit rate and the run's parameters) and calls
//! [`write`]. Each chart ([`charts`]) is drawn with the `plotters` crate's SVG backend into
//! a `String`:
//!
//! 1. hit rate per policy, with the ceiling (one unlimited cache) as a dashed line;
//! 2. the TTFT CDF of each policy, on a log time axis;
//! 3. active requests per rank over trace time (the min..max band over the ranks and their
//!    mean) for the default policy and round-robin, on one scale;
//! 4. cache taken: per policy, the cached blocks on the chosen ranks against the most any
//!    candidate held when the router decided.
//!
//! The page ([`page`]) inlines the four `<svg>` elements and its CSS: it loads nothing (no
//! scripts, fonts, images or links), so it opens anywhere, offline. plotters runs without a
//! font backend: the SVG carries `<text>` elements that the browser lays out in its own
//! sans-serif, so the binary needs no font files. The page is also well-formed XML (the
//! tests parse it), which keeps its structure checkable.
//!
//! Load over time comes from [`PoolLoad::over_time`](super::outcome::PoolLoad), sampled
//! only when a report is asked for, every [`sample_interval_ms`] of trace time.

mod charts;
mod page;

use std::path::Path;

use super::outcome::LoadSample;
use super::DemoError;

/// About how many load samples a replay takes over the trace.
const LOAD_SAMPLES: u64 = 300;

/// The interval of trace time between load samples: the trace's span (first to last
/// arrival) in about [`LOAD_SAMPLES`] steps, at least 1 ms.
pub(super) fn sample_interval_ms(requests: &[kvroute_core::trace::TraceRequest]) -> u64 {
    let first = requests.first().map_or(0, |r| r.timestamp_ms);
    let last = requests.last().map_or(0, |r| r.timestamp_ms);
    (last.saturating_sub(first) / LOAD_SAMPLES).max(1)
}

/// What the run was: the page's header.
pub(super) struct RunParameters {
    /// Where the trace came from (a path, or the built-in one).
    pub(super) trace: String,
    pub(super) requests: usize,
    pub(super) workers: u32,
    pub(super) dp_size: u32,
    pub(super) block_size: u32,
    pub(super) capacity_tokens: u64,
    pub(super) prefill_tokens_per_ms: u64,
}

/// One policy's replay, as the charts read it.
pub(super) struct PolicyRun<'a> {
    pub(super) label: &'a str,
    /// Prompt blocks the engines reused over those requested, 0..=1.
    pub(super) hit_rate: f64,
    /// Simulated time to first token of each request, in trace microseconds.
    pub(super) ttft_us: &'a [u64],
    /// Over the decisions: cached blocks on the chosen ranks, and the most any candidate held.
    pub(super) chosen_overlap_blocks: u64,
    pub(super) best_overlap_blocks: u64,
    /// Every rank's active requests over trace time (empty if not sampled).
    pub(super) load_over_time: &'a [LoadSample],
}

/// Everything the report draws.
pub(super) struct ReportInput<'a> {
    pub(super) run: RunParameters,
    pub(super) ceiling_label: &'a str,
    /// The ceiling's hit rate, 0..=1.
    pub(super) ceiling_hit_rate: f64,
    /// The policies, in the table's order (the first is the default one).
    pub(super) policies: Vec<PolicyRun<'a>>,
    /// Indices into `policies` whose load over time is charted, side by side.
    pub(super) load_panels: Vec<usize>,
}

/// The report as one HTML document.
pub(super) fn render(input: &ReportInput<'_>) -> Result<String, DemoError> {
    let charts = [
        charts::hit_rates(input)?,
        charts::ttft_cdf(input)?,
        charts::load_over_time(input)?,
        charts::cache_taken(input)?,
    ];
    Ok(page::html(input, &charts))
}

/// Renders the report and writes it to `path`.
pub(super) fn write(path: &Path, input: &ReportInput<'_>) -> Result<(), DemoError> {
    let html = render(input)?;
    std::fs::write(path, html).map_err(|e| DemoError::Report(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests;
