//! The whole benchmark: build the schedule once, then for every backend find its highest
//! sustained rate, then measure every backend at the common rate.
//!
//! Per backend (same schedule, same plan, same thread budget):
//! 1. **calibration**: one trial as fast as possible; its achieved rate `C` seeds the search,
//!    and the index memory is read from it (memory does not depend on pacing);
//! 2. **search**: open-loop trials at offered rates, starting at `0.9 C`. A trial *sustains*
//!    its rate when it achieves at least 99% of it. A rate whose replay window
//!    (`total block ops / rate`) is shorter than `min_seconds_per_rate` is repeated (at most
//!    `max_repeats` times); the repeats form one window and the rate is sustained when
//!    their block ops over their summed time reach 99% of it (until 2026-11-21 every
//!    repeat had to: on this VM that measured its multi-millisecond stalls, a larger
//!    share of a fast backend's 0.2 s repeat than of a slow one's); its latency
//!    percentiles merge the repeats. (With 512-token blocks the whole trace is ~0.6 M block
//!    ops, a window of tens of milliseconds, where one scheduler hiccup is a few percent.)
//!    The highest sustained rate found so far and the lowest failed one bracket the answer;
//!    while nothing has sustained the rate drops by 0.7x, afterwards the next rate is the
//!    geometric midpoint of the bracket, until a failed rate is within `tolerance` of the
//!    best sustained one or `max_runs` trials were spent. Until some rate fails, the top of
//!    the bracket is only assumed: `1.05 C` at first, and whenever the best sustained rate
//!    comes within `tolerance` of it, raised above that rate by `2 tolerance`, then twice
//!    as much at each further raise; while nothing has failed the search offers that
//!    ceiling itself, so that it climbs past `C` in growing steps until a rate fails.
//!    (Until 2026-11-21 it never offered more than about `1.01 C`: the calibration, one
//!    short as-fast-as-possible run, capped every backend, Dynamo's CRTC most: it sustains
//!    a paced load well above the rate it reaches with every deadline at the start.) The
//!    backend's figures (`sustained_block_ops_per_sec` and the latency percentiles) are
//!    those of its highest sustaining trial;
//! 3. **common rate**: the highest rate every exact backend sustains (the minimum of their
//!    sustained rates); every backend is run once more at it (unless its search already ran
//!    it) and reports its lookup percentiles there.
//!
//! A backend is `exact` when every lookup of every one of its trials equalled the reference.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use crate::trace_shapes::{generate, TraceShape};
use kvroute_core::ids::BlockHash;
use kvroute_core::trace::{parse_trace, TraceRequest};

use crate::backend::{Backend, BackendKind, BuildContext, PositionalHashes};
use crate::backends::dynamo::{DynamoCrtc, DynamoPositional};
use crate::backends::kvroute::KvrouteBackend;
use crate::backends::sglang::SglangChain;
use crate::replay::{run_trial, Latency, Mismatch, Pacing, TrialResult, TrialSpec};
use crate::report::{BackendReport, Report, TrialRecord, Workload};
use crate::schedule::{build_plan, build_schedule, Plan, Routing, Schedule, ScheduleConfig};
use kvroute_core::event::KvEventData;

/// Everything the benchmark is run with.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub trace: TraceSource,
    pub block_size: u32,
    pub workers: u32,
    pub dp_size: u32,
    pub capacity_tokens: u64,
    pub max_requests: Option<usize>,
    pub routing: Routing,
    pub query_threads: usize,
    pub event_threads: usize,
    /// Shards of kvroute's index; `None`: one per event lane.
    pub kvroute_shards: Option<usize>,
    /// Replay in the schedule's total order (no lookup overlaps an event); diagnostic.
    pub total_order: bool,
    pub backends: Vec<BackendKind>,
    pub pacing: Pacing,
    pub positional_hashes: PositionalHashes,
    /// Search trials per backend (after the calibration, before the common-rate trial).
    pub max_runs: usize,
    /// Stop the search when highest failed / highest sustained <= 1 + tolerance.
    pub tolerance: f64,
    /// Skip the search: run every backend once at this rate (plus the calibration).
    pub fixed_rate: Option<f64>,
    /// A paced rate is repeated until its trials add up to this much replay window
    /// (`total block ops / rate` each), at most `max_repeats` times; it is sustained when
    /// the repeats together achieve 99% of it, and its latencies merge all repeats.
    pub min_seconds_per_rate: f64,
    pub max_repeats: u32,
    /// Progress lines on stderr.
    pub verbose: bool,
    pub mismatch_examples: usize,
}

/// Where the replayed requests come from.
#[derive(Clone, Debug)]
pub enum TraceSource {
    /// A Mooncake-format file.
    File(PathBuf),
    /// A generated shape (`crate::trace_shapes`): that many requests from that seed.
    Shape { shape: TraceShape, requests: usize, seed: u64 },
}

impl TraceSource {
    /// The requests.
    pub fn load(&self) -> Result<Vec<TraceRequest>, String> {
        match self {
            TraceSource::File(path) => load_trace(path),
            TraceSource::Shape { shape, requests, seed } => Ok(generate(*shape, *requests, *seed)),
        }
    }

    /// What the report names it: the file's full path, or `generated:<shape>` with its size.
    pub fn describe(&self) -> String {
        match self {
            TraceSource::File(path) => {
                std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()).display().to_string()
            }
            TraceSource::Shape { shape, requests, seed } => {
                format!("generated:{} ({requests} requests, seed {seed})", shape.name())
            }
        }
    }
}

/// The trace the repository ships.
pub fn default_trace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/conversation_trace.jsonl"))
}

impl BenchConfig {
    /// Shards of kvroute's index: as given, else one per event lane.
    pub fn kvroute_shards(&self) -> usize {
        self.kvroute_shards.unwrap_or(self.event_threads).max(1)
    }
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            trace: TraceSource::File(default_trace()),
            block_size: 16,
            workers: 64,
            dp_size: 4,
            capacity_tokens: 65_536,
            max_requests: None,
            routing: Routing::CacheAware,
            query_threads: 1,
            event_threads: 1,
            kvroute_shards: None,
            total_order: false,
            backends: BackendKind::ALL.to_vec(),
            pacing: Pacing::Ops,
            positional_hashes: PositionalHashes::DynamoChain,
            max_runs: 12,
            tolerance: 0.05,
            fixed_rate: None,
            min_seconds_per_rate: 1.0,
            max_repeats: 5,
            verbose: true,
            mismatch_examples: 3,
        }
    }
}

/// Reads a trace file.
pub fn load_trace(path: &std::path::Path) -> Result<Vec<TraceRequest>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open trace {}: {e}", path.display()))?;
    parse_trace(std::io::BufReader::new(file)).map_err(|e| format!("{}: {e}", path.display()))
}

macro_rules! progress {
    ($config:expr, $($arg:tt)*) => {
        if $config.verbose {
            eprintln!($($arg)*);
        }
    };
}

/// Everything a trial needs besides the backend type.
struct Fixture<'a> {
    config: &'a BenchConfig,
    schedule: &'a Schedule,
    plan: &'a Plan,
}

impl Fixture<'_> {
    fn ctx(&self) -> BuildContext<'_> {
        BuildContext {
            ranks: &self.schedule.ranks,
            block_size: self.config.block_size,
            capacity_blocks: self.schedule.capacity_blocks,
            event_threads: self.config.event_threads,
            kvroute_shards: self.config.kvroute_shards(),
            positional_hashes: self.config.positional_hashes,
        }
    }

    fn spec(&self, offered: Option<f64>) -> TrialSpec {
        TrialSpec { offered, pacing: self.config.pacing, mismatch_examples: self.config.mismatch_examples }
    }

    /// Runs backend `B` at each rate of `rates` in turn; `next` picks the following rate
    /// from the results so far (`None`: stop).
    fn trials<B: Backend>(
        &self,
        name: &str,
        first: Option<f64>,
        mut next: impl FnMut(&[TrialResult]) -> Option<Option<f64>>,
    ) -> Result<Vec<TrialResult>, String> {
        let hashes: Vec<B::Hash> = self.schedule.lookup_hashes.iter().map(|&h: &BlockHash| B::hash(h)).collect();
        let ctx = self.ctx();
        let mut results: Vec<TrialResult> = Vec::new();
        let mut rate = Some(first);
        while let Some(offered) = rate {
            let repeats = match offered {
                None => 1,
                Some(r) => {
                    let window = self.schedule.totals.total_block_ops as f64 / r;
                    ((self.config.min_seconds_per_rate / window).ceil() as u32).clamp(1, self.config.max_repeats.max(1))
                }
            };
            let mut repeated = Vec::new();
            for _ in 0..repeats {
                repeated.push(run_trial::<B>(&ctx, self.schedule, self.plan, &hashes, &self.spec(offered))?);
            }
            let result = TrialResult::merge(repeated);
            progress!(
                self.config,
                "  {name}: offered {} -> achieved {:.3} M block ops/s in {:.2} s{}{} | lookup p50 {:.0} ns p99 {:.0} ns p99.9 {:.0} ns | issue lag p99 {:.0} us | mismatches {}/{}{}",
                offered.map_or("max".to_string(), |r| format!("{:.3} M", r / 1e6)),
                result.achieved / 1e6,
                result.elapsed_s,
                if result.repeats > 1 {
                    format!(" ({} repeats; lowest repeat {:.3} M)", result.repeats, result.lowest_repeat / 1e6)
                } else {
                    String::new()
                },
                match offered {
                    Some(_) if result.sustained() => " (sustained)",
                    Some(_) => " (not sustained)",
                    None => "",
                },
                result.latency.p50_ns,
                result.latency.p99_ns,
                result.latency.p999_ns,
                result.issue_lag.p99_ns / 1e3,
                result.mismatches,
                result.lookups,
                if result.rejected_events > 0 {
                    format!(" | rejected events {}", result.rejected_events)
                } else {
                    String::new()
                }
            );
            for m in &result.mismatch_examples {
                for line in self.describe(m) {
                    progress!(self.config, "    {line}");
                }
            }
            results.push(result);
            rate = next(&results);
        }
        Ok(results)
    }

    /// Lines describing a mismatching lookup: the difference, and the events that may have
    /// been applied while it ran (whether they touch its path).
    fn describe(&self, m: &Mismatch) -> Vec<String> {
        let lookup = &self.schedule.lookups[m.lookup];
        let mut lines = vec![format!(
            "mismatch at lookup {} ({} blocks, routed to {}): {} ranks returned, {} expected; only returned: {}; only expected: {}",
            m.lookup,
            lookup.hashes.len(),
            lookup.routed_to,
            m.got.len(),
            lookup.expected.len(),
            short(&difference(&m.got, &lookup.expected)),
            short(&difference(&lookup.expected, &m.got)),
        )];
        let mut path = std::collections::HashSet::new();
        crate::schedule::for_each_position(self.schedule.lookup(m.lookup), |p| {
            path.insert(p);
        });
        for (lane, &(before, after)) in m.lanes_in_flight.iter().enumerate() {
            let ids = &self.plan.lane_events[lane];
            let concurrent: Vec<String> = (before..=after)
                .filter_map(|seq| ids.get(seq as usize))
                .map(|&j| {
                    let e = &self.schedule.events[j as usize];
                    let touches = self.schedule.event_positions(j as usize).iter().any(|p| path.contains(p));
                    let kind = match e.event.data {
                        KvEventData::Stored { .. } => "stored",
                        KvEventData::Removed { .. } => "removed",
                        KvEventData::Cleared => "cleared",
                    };
                    format!(
                        "event {j} (request {}, rank {}, {kind} {} blocks, on the lookup's path: {})",
                        e.request,
                        e.event.rank,
                        e.block_ops,
                        if touches { "yes" } else { "no" }
                    )
                })
                .collect();
            lines.push(format!(
                "  lane {lane}: events possibly applied during the lookup: {}",
                if concurrent.is_empty() { "none".to_string() } else { concurrent.join("; ") }
            ));
        }
        lines
    }

    fn dispatch(
        &self,
        kind: BackendKind,
        first: Option<f64>,
        next: impl FnMut(&[TrialResult]) -> Option<Option<f64>>,
    ) -> Result<Vec<TrialResult>, String> {
        let name = kind.name();
        match kind {
            BackendKind::Kvroute => self.trials::<KvrouteBackend>(name, first, next),
            BackendKind::DynamoCrtc => self.trials::<DynamoCrtc>(name, first, next),
            BackendKind::DynamoPositional => self.trials::<DynamoPositional>(name, first, next),
            BackendKind::SglangChain => self.trials::<SglangChain>(name, first, next),
        }
    }
}

/// Entries of `a` not in `b` (both sorted).
fn difference(
    a: &[(kvroute_core::ids::RankKey, u32)],
    b: &[(kvroute_core::ids::RankKey, u32)],
) -> Vec<(kvroute_core::ids::RankKey, u32)> {
    a.iter().filter(|e| b.binary_search(e).is_err()).copied().collect()
}

fn short(v: &[(kvroute_core::ids::RankKey, u32)]) -> String {
    let parts: Vec<String> = v.iter().take(8).map(|(r, o)| format!("{r}:{o}")).collect();
    if v.len() > 8 {
        format!("[{} ... ({} ranks)]", parts.join(", "), v.len())
    } else {
        format!("[{}]", parts.join(", "))
    }
}

/// The search of step 2 (see the module docs), as a `next` function for `Fixture::trials`.
fn search(calibrated: f64, max_runs: usize, tolerance: f64) -> impl FnMut(&[TrialResult]) -> Option<Option<f64>> {
    let mut search = RateSearch::new(calibrated, tolerance);
    move |results: &[TrialResult]| {
        let last = results.last()?;
        let next = search.next(last.offered?, last.sustained());
        if results.len() >= max_runs {
            return None;
        }
        next.map(Some)
    }
}

/// The rate bracket of step 2: each trial's outcome in, the next rate to offer out.
#[derive(Debug)]
struct RateSearch {
    /// Top of the bracket while no rate has failed (assumed, never measured).
    assumed_ceiling: f64,
    /// Factor over the best sustained rate the assumed ceiling is next raised to; its
    /// excess over 1 doubles at each raise, so a long climb takes few trials.
    raise: f64,
    /// Lowest offered rate that failed.
    failed: Option<f64>,
    /// Highest offered rate that was sustained.
    best: Option<f64>,
    tolerance: f64,
}

impl RateSearch {
    fn new(calibrated: f64, tolerance: f64) -> Self {
        RateSearch {
            assumed_ceiling: calibrated * 1.05,
            raise: 1.0 + 2.0 * tolerance,
            failed: None,
            best: None,
            tolerance,
        }
    }

    /// Records a trial at `offered`; the next rate to offer, or `None` once a failed rate
    /// lies within the tolerance of the best sustained one.
    fn next(&mut self, offered: f64, sustained: bool) -> Option<f64> {
        if sustained {
            self.best = Some(self.best.map_or(offered, |b| b.max(offered)));
        } else {
            self.failed = Some(self.failed.map_or(offered, |f| f.min(offered)));
        }
        let within = |top: f64, best: f64| top / best <= 1.0 + self.tolerance;
        match (self.best, self.failed) {
            (None, _) => Some(offered * 0.7),
            (Some(best), Some(failed)) if within(failed, best) => None,
            (Some(best), Some(failed)) => Some((best * failed).sqrt()),
            (Some(best), None) => {
                if within(self.assumed_ceiling, best) {
                    self.assumed_ceiling = best * self.raise;
                    self.raise = 1.0 + 2.0 * (self.raise - 1.0);
                }
                // Climbing: offer the ceiling itself; the first failure starts the halving.
                Some(self.assumed_ceiling)
            }
        }
    }
}

/// Runs the benchmark and returns the report.
pub fn run_bench(config: &BenchConfig) -> Result<Report, String> {
    if config.query_threads == 0 || config.event_threads == 0 {
        return Err("--query-threads and --event-threads must be at least 1".into());
    }
    if config.backends.is_empty() {
        return Err("no backend selected".into());
    }
    let t0 = Instant::now();
    let trace = config.trace.load()?;
    let schedule = build_schedule(
        &trace,
        &ScheduleConfig {
            routing: config.routing,
            block_size: config.block_size,
            workers: config.workers,
            dp_size: config.dp_size,
            capacity_tokens: config.capacity_tokens,
            max_requests: config.max_requests,
        },
    )?;
    drop(trace);
    let plan = build_plan(&schedule, config.query_threads, config.event_threads, config.total_order);
    let schedule_seconds = t0.elapsed().as_secs_f64();
    let totals = &schedule.totals;
    progress!(
        config,
        "schedule: {:?} routing, {} requests, {} ranks ({} workers x {} dp), block size {}, capacity {} blocks/rank | {} lookup blocks, {} events ({} stored, {} removed blocks), {} block ops | {} distinct blocks held at the end | hit rate {:.1}% | ranks used {} | lookups that may overlap an earlier event {}, events that may overlap an earlier lookup {} | built in {:.1} s",
        config.routing,
        totals.requests,
        schedule.ranks.len(),
        config.workers,
        config.dp_size,
        config.block_size,
        schedule.capacity_blocks,
        totals.lookup_blocks,
        totals.events,
        totals.stored_blocks,
        totals.removed_blocks,
        totals.total_block_ops,
        schedule.distinct_blocks_end,
        100.0 * totals.cached_blocks as f64 / totals.lookup_blocks.max(1) as f64,
        schedule.ranks_used,
        plan.lookups_overlappable,
        plan.events_overlappable,
        schedule_seconds
    );
    if schedule.oracle_disagreements > 0 {
        progress!(
            config,
            "WARNING: the simulator and the reference disagree on {} lookups",
            schedule.oracle_disagreements
        );
    }

    let fixture = Fixture { config, schedule: &schedule, plan: &plan };
    let mut runs: BTreeMap<BackendKind, Result<Vec<TrialResult>, String>> = BTreeMap::new();
    for &kind in &config.backends {
        progress!(config, "{kind}:");
        let outcome = (|| {
            let calibration = fixture.dispatch(kind, None, |_| None)?;
            let calibrated = calibration[0].achieved;
            let mut trials = calibration;
            let searched = match config.fixed_rate {
                Some(rate) => fixture.dispatch(kind, Some(rate), |_| None)?,
                None if config.max_runs == 0 => Vec::new(),
                None => fixture.dispatch(
                    kind,
                    Some(calibrated * 0.9),
                    search(calibrated, config.max_runs, config.tolerance),
                )?,
            };
            trials.extend(searched);
            Ok(trials)
        })();
        if let Err(e) = &outcome {
            progress!(config, "  {kind}: failed: {e}");
        }
        runs.insert(kind, outcome);
    }

    let exact = |trials: &[TrialResult]| trials.iter().all(|t| t.mismatches == 0);
    let sustained_rate = |trials: &[TrialResult]| {
        trials
            .iter()
            .filter(|t| t.sustained())
            .filter_map(|t| t.offered)
            .fold(None, |best: Option<f64>, r| Some(best.map_or(r, |b| b.max(r))))
    };
    let common_rate = runs
        .values()
        .filter_map(|r| r.as_ref().ok())
        .filter(|t| exact(t))
        .map(|t| sustained_rate(t))
        .collect::<Option<Vec<f64>>>()
        .and_then(|rates| rates.into_iter().reduce(f64::min));

    let mut common: BTreeMap<BackendKind, TrialResult> = BTreeMap::new();
    if let Some(rate) = common_rate {
        progress!(config, "common rate: {:.3} M block ops/s", rate / 1e6);
        for (&kind, outcome) in runs.iter_mut() {
            let Ok(trials) = outcome else { continue };
            if let Some(t) = trials.iter().find(|t| t.offered == Some(rate)) {
                common.insert(kind, t.clone());
                continue;
            }
            match fixture.dispatch(kind, Some(rate), |_| None) {
                Ok(mut t) => {
                    let t = t.remove(0);
                    trials.push(t.clone());
                    common.insert(kind, t);
                }
                Err(e) => progress!(config, "  {kind}: common-rate trial failed: {e}"),
            }
        }
    }

    let distinct = schedule.distinct_blocks_end;
    let mut backends = BTreeMap::new();
    for (kind, outcome) in &runs {
        let report = match outcome {
            Err(e) => BackendReport::failed(e.clone()),
            Ok(trials) => {
                let best = trials
                    .iter()
                    .filter(|t| t.sustained())
                    .max_by(|a, b| a.offered.partial_cmp(&b.offered).expect("finite rates"));
                // Without a sustaining trial, report the slowest paced one (or the calibration).
                let shown = best.or_else(|| {
                    trials
                        .iter()
                        .filter(|t| t.offered.is_some())
                        .min_by(|a, b| a.offered.partial_cmp(&b.offered).expect("finite rates"))
                });
                let shown_latency = shown.map_or(trials[0].latency, |t| t.latency);
                let at_common: Option<Latency> = common.get(kind).map(|t| t.latency);
                let sustained_at_common = common.get(kind).map(|t| t.sustained());
                let index_bytes = trials[0].index_bytes;
                BackendReport {
                    exact: exact(trials),
                    sustained_block_ops_per_sec: best.and_then(|t| t.offered).unwrap_or(0.0),
                    lookup_p50_ns: shown_latency.p50_ns,
                    lookup_p99_ns: shown_latency.p99_ns,
                    lookup_p999_ns: shown_latency.p999_ns,
                    bytes_per_block: index_bytes.filter(|_| distinct > 0).map(|b| b as f64 / distinct as f64),
                    lookup_p50_ns_at_common_rate: at_common.map(|l| l.p50_ns),
                    lookup_p99_ns_at_common_rate: at_common.map(|l| l.p99_ns),
                    lookup_p999_ns_at_common_rate: at_common.map(|l| l.p999_ns),
                    sustained_at_common_rate: sustained_at_common,
                    sustained_found: best.is_some(),
                    max_achieved_block_ops_per_sec: trials[0].achieved,
                    index_bytes,
                    lookups_checked: trials.iter().map(|t| t.lookups).sum(),
                    mismatches: trials.iter().map(|t| t.mismatches).sum(),
                    rejected_events: trials.iter().map(|t| t.rejected_events).sum(),
                    notes: trials.last().map(|t| t.notes.clone()).unwrap_or_default(),
                    first_mismatches: {
                        let mut seen = std::collections::BTreeSet::new();
                        trials
                            .iter()
                            .flat_map(|t| t.mismatch_examples.iter())
                            .filter(|m| seen.insert(m.lookup))
                            .take(config.mismatch_examples)
                            .flat_map(|m| fixture.describe(m))
                            .collect()
                    },
                    trials: trials.iter().map(TrialRecord::from).collect(),
                    error: None,
                }
            }
        };
        backends.insert(kind.name().to_string(), report);
    }

    Ok(Report {
        workload: Workload {
            machine: crate::machine::Machine::this(),
            trace: config.trace.describe(),
            block_size: config.block_size,
            workers: config.workers,
            dp_size: config.dp_size,
            ranks: schedule.ranks.len(),
            capacity_tokens: config.capacity_tokens,
            capacity_blocks: schedule.capacity_blocks,
            query_threads: config.query_threads,
            event_threads: config.event_threads,
            kvroute_shards: config.kvroute_shards(),
            total_order: config.total_order,
            routing: config.routing,
            kvroute_reclamation: if cfg!(feature = "crossbeam") { "crossbeam-epoch" } else { "seize" },
            pacing: config.pacing,
            positional_hashes: config.positional_hashes,
            totals: totals.clone(),
            cache_hit_rate: totals.cached_blocks as f64 / totals.lookup_blocks.max(1) as f64,
            distinct_blocks_end: distinct,
            held_pairs_end: schedule.held_pairs_end,
            ranks_used: schedule.ranks_used,
            oracle_disagreements: schedule.oracle_disagreements,
            lookups_overlappable: plan.lookups_overlappable,
            events_overlappable: plan.events_overlappable,
            reference_anomalies: {
                let c = &schedule.reference_counters;
                c.duplicate_store + c.unknown_parent + c.unknown_remove + c.unknown_rank + c.stale_event
            },
            schedule_seconds,
            total_seconds: t0.elapsed().as_secs_f64(),
            common_rate_block_ops_per_sec: common_rate,
        },
        backends,
    })
}

#[cfg(test)]
mod tests {
    use super::RateSearch;

    /// Runs the search against a backend that sustains exactly the rates up to `capacity`;
    /// returns (best sustained, lowest failed, trials).
    fn settle(calibrated: f64, capacity: f64) -> (f64, f64, usize) {
        let mut search = RateSearch::new(calibrated, 0.05);
        let mut offered = calibrated * 0.9;
        for trials in 1..100 {
            match search.next(offered, offered <= capacity) {
                Some(next) => offered = next,
                None => return (search.best.unwrap(), search.failed.unwrap(), trials),
            }
        }
        panic!("the search did not settle: {search:?}");
    }

    #[test]
    fn the_search_brackets_a_capacity_below_the_calibration() {
        let (best, failed, _) = settle(100.0, 80.0);
        assert!(best <= 80.0 && failed > 80.0 && failed / best <= 1.05, "{best} {failed}");
    }

    #[test]
    fn the_search_climbs_past_a_calibration_that_came_out_low() {
        // The calibration run met a stall: the backend sustains 30% more than it showed.
        let (best, failed, trials) = settle(100.0, 130.0);
        assert!(best <= 130.0 && failed > 130.0 && failed / best <= 1.05, "{best} {failed}");
        assert!(trials <= 10, "climbs in growing steps: {trials} trials");
    }

    #[test]
    fn a_capacity_twice_the_calibration_is_bracketed_within_the_default_trials() {
        let (best, failed, trials) = settle(100.0, 200.0);
        assert!(best <= 200.0 && failed > 200.0 && failed / best <= 1.05, "{best} {failed}");
        assert!(trials <= super::BenchConfig::default().max_runs, "{trials} trials");
    }

    #[test]
    fn a_capacity_at_the_calibration_ends_with_a_measured_failure() {
        let (best, failed, _) = settle(100.0, 100.0);
        assert!((95.0..=100.0).contains(&best), "{best}");
        assert!(failed > 100.0 && failed / best <= 1.05, "{failed}");
    }
}
