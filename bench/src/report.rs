//! The benchmark's result record: serialised as one JSON object (`--json`) and printed as a
//! table.
//!
//! Shape: `{"workload": {...}, "backends": {"NAME": {...}}}`. Per backend the keys
//! `exact`, `sustained_block_ops_per_sec`, `lookup_p50_ns`, `lookup_p99_ns`,
//! `lookup_p999_ns` (at the backend's highest sustained rate) and `bytes_per_block` (live
//! heap bytes of the index after the replay / distinct blocks held at the end, per the
//! reference) come first; `lookup_p*_ns_at_common_rate` are measured at
//! `workload.common_rate_block_ops_per_sec`, the highest rate every exact backend sustains;
//! the rest is detail (every trial, anomaly counts, notes).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::backend::PositionalHashes;
use crate::replay::{Pacing, TrialResult};
use crate::schedule::{Routing, Totals};

/// The workload every backend replayed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Workload {
    /// Where it ran (CPU model, cores, transparent huge pages).
    pub machine: crate::machine::Machine,
    pub trace: String,
    pub block_size: u32,
    pub workers: u32,
    pub dp_size: u32,
    pub ranks: usize,
    pub capacity_tokens: u64,
    pub capacity_blocks: usize,
    pub query_threads: usize,
    pub event_threads: usize,
    /// Shards of kvroute's index (one per event lane unless `--kvroute-shards`).
    pub kvroute_shards: usize,
    pub total_order: bool,
    pub routing: Routing,
    /// Memory reclamation scheme our index was built with (seize, or crossbeam-epoch with the
    /// `crossbeam` feature).
    pub kvroute_reclamation: &'static str,
    pub pacing: Pacing,
    pub positional_hashes: PositionalHashes,
    #[serde(flatten)]
    pub totals: Totals,
    /// Cached blocks at the routed rank / lookup blocks.
    pub cache_hit_rate: f64,
    pub distinct_blocks_end: usize,
    pub held_pairs_end: usize,
    /// Ranks that were routed at least one request.
    pub ranks_used: usize,
    pub oracle_disagreements: u64,
    /// Lookups allowed to overlap some earlier event, events allowed to overlap some
    /// earlier lookup (the rest are ordered by conflicts; see `schedule`).
    pub lookups_overlappable: u64,
    pub events_overlappable: u64,
    /// Anomalies the reference counted in the simulator's stream (should be 0).
    pub reference_anomalies: u64,
    pub schedule_seconds: f64,
    pub total_seconds: f64,
    /// Highest rate all exact backends sustain (`null` if there is none).
    pub common_rate_block_ops_per_sec: Option<f64>,
}

/// One trial, as recorded.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrialRecord {
    /// `null`: as fast as possible (calibration).
    pub offered_block_ops_per_sec: Option<f64>,
    pub achieved_block_ops_per_sec: f64,
    /// The lowest achieved rate of a single repeat.
    pub lowest_repeat_block_ops_per_sec: f64,
    pub sustained: bool,
    pub repeats: u32,
    pub elapsed_s: f64,
    pub lookup_p50_ns: f64,
    pub lookup_p99_ns: f64,
    pub lookup_p999_ns: f64,
    pub lookup_max_ns: f64,
    pub issue_lag_p99_ns: f64,
    pub mismatches: u64,
}

impl From<&TrialResult> for TrialRecord {
    fn from(t: &TrialResult) -> Self {
        TrialRecord {
            offered_block_ops_per_sec: t.offered,
            achieved_block_ops_per_sec: t.achieved,
            lowest_repeat_block_ops_per_sec: t.lowest_repeat,
            sustained: t.sustained(),
            repeats: t.repeats,
            elapsed_s: t.elapsed_s,
            lookup_p50_ns: t.latency.p50_ns,
            lookup_p99_ns: t.latency.p99_ns,
            lookup_p999_ns: t.latency.p999_ns,
            lookup_max_ns: t.latency.max_ns,
            issue_lag_p99_ns: t.issue_lag.p99_ns,
            mismatches: t.mismatches,
        }
    }
}

/// One backend's results.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackendReport {
    pub exact: bool,
    pub sustained_block_ops_per_sec: f64,
    pub lookup_p50_ns: f64,
    pub lookup_p99_ns: f64,
    pub lookup_p999_ns: f64,
    pub bytes_per_block: Option<f64>,
    pub lookup_p50_ns_at_common_rate: Option<f64>,
    pub lookup_p99_ns_at_common_rate: Option<f64>,
    pub lookup_p999_ns_at_common_rate: Option<f64>,
    /// Whether the common-rate trial sustained the rate (99% over all its repeats).
    pub sustained_at_common_rate: Option<bool>,
    /// Whether any paced trial sustained its rate (else the latencies are the slowest trial's).
    pub sustained_found: bool,
    /// The calibration trial's achieved rate (as fast as possible).
    pub max_achieved_block_ops_per_sec: f64,
    pub index_bytes: Option<i64>,
    pub lookups_checked: u64,
    pub mismatches: u64,
    pub rejected_events: u64,
    pub notes: Vec<String>,
    /// The first mismatching lookups, described (with the events in flight meanwhile).
    pub first_mismatches: Vec<String>,
    pub trials: Vec<TrialRecord>,
    pub error: Option<String>,
}

impl BackendReport {
    pub fn failed(error: String) -> Self {
        BackendReport {
            exact: false,
            sustained_block_ops_per_sec: 0.0,
            lookup_p50_ns: 0.0,
            lookup_p99_ns: 0.0,
            lookup_p999_ns: 0.0,
            bytes_per_block: None,
            lookup_p50_ns_at_common_rate: None,
            lookup_p99_ns_at_common_rate: None,
            lookup_p999_ns_at_common_rate: None,
            sustained_at_common_rate: None,
            sustained_found: false,
            max_achieved_block_ops_per_sec: 0.0,
            index_bytes: None,
            lookups_checked: 0,
            mismatches: 0,
            rejected_events: 0,
            notes: Vec::new(),
            first_mismatches: Vec::new(),
            trials: Vec::new(),
            error: Some(error),
        }
    }
}

/// The whole result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub workload: Workload,
    pub backends: BTreeMap<String, BackendReport>,
}

fn opt(v: Option<f64>, scale: f64, digits: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{:.*}", digits, v / scale))
}

impl Report {
    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("report serialises")
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let w = &self.workload;
        let mut s = String::new();
        let _ = writeln!(s, "machine: {}", w.machine.line());
        let _ = writeln!(
            s,
            "workload: {} requests, block size {}, {} ranks ({} x {}), {} blocks/rank, {} query + {} event threads ({} kvroute shards), {:?} pacing; {} block ops; {} distinct blocks at the end",
            w.totals.requests,
            w.block_size,
            w.ranks,
            w.workers,
            w.dp_size,
            w.capacity_blocks,
            w.query_threads,
            w.event_threads,
            w.kvroute_shards,
            w.pacing,
            w.totals.total_block_ops,
            w.distinct_blocks_end
        );
        let _ = writeln!(
            s,
            "common rate (highest all exact backends sustain): {} M block ops/s",
            opt(w.common_rate_block_ops_per_sec, 1e6, 3)
        );
        let _ = writeln!(
            s,
            "{:<18} {:>5} {:>11} {:>11} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}",
            "backend", "exact", "sustained", "max", "p50 ns", "p99 ns", "p99.9 ns", "B/block", "p50@com", "p99@com"
        );
        let _ = writeln!(s, "{:<18} {:>5} {:>11} {:>11}", "", "", "Mops/s", "Mops/s");
        for (name, b) in &self.backends {
            if let Some(e) = &b.error {
                let _ = writeln!(s, "{name:<18} error: {e}");
                continue;
            }
            let _ = writeln!(
                s,
                "{:<18} {:>5} {:>11.3} {:>11.3} {:>9.0} {:>9.0} {:>10.0} {:>10} {:>10} {:>10}",
                name,
                if b.exact { "yes" } else { "NO" },
                b.sustained_block_ops_per_sec / 1e6,
                b.max_achieved_block_ops_per_sec / 1e6,
                b.lookup_p50_ns,
                b.lookup_p99_ns,
                b.lookup_p999_ns,
                opt(b.bytes_per_block, 1.0, 1),
                opt(b.lookup_p50_ns_at_common_rate, 1.0, 0),
                opt(b.lookup_p99_ns_at_common_rate, 1.0, 0),
            );
        }
        s
    }
}
