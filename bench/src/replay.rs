//! One open-loop trial: a backend replays the whole schedule at one offered rate.
//!
//! Threads (all in this process, for every backend alike): `Q` query threads (lookup `k` on
//! thread `k % Q`) and `E` event lanes (every event of a rank on lane `lane_of(rank)`), as
//! laid out by the [`Plan`]. Backends with their own event threads (Dynamo's thread pool)
//! get `E` of them; their lanes then only hand events over.
//!
//! Deadlines: with an offered rate `R` block ops/s, an item's deadline is
//! - `ops` pacing (default): `start + (block ops scheduled before it) / R`, an even offered
//!   load; or
//! - `trace` pacing: the request's trace timestamp, scaled linearly so that the whole trace
//!   spans the window `total block ops / R` (the trace's bursts are kept).
//!
//! Without a rate ("as fast as possible", the calibration trial) every deadline is the start.
//! A thread parks towards a deadline further than 300 us away, then spins, yields and parks
//! in short spells (a lane of an asynchronous backend is unparked when an apply completes).
//!
//! Before issuing lookup `k` its query thread waits until every conflicting event scheduled
//! before it is visible (the lanes publish [`Backend::visible`] watermarks); before applying
//! event `j` its lane waits until every conflicting lookup scheduled before it has completed
//! (the query threads publish completion counts). See `schedule` for the conflict rule. This
//! waiting counts against the achieved rate, never against a lookup's latency.
//!
//! Measured:
//! - achieved block ops/s = all block ops of the schedule / (last completion - start), the
//!   drain (waiting for the last events to become visible) included;
//! - lookup service latency: the time inside [`Backend::find`] (the backend's lookup plus the
//!   conversion to `(rank, overlap)` pairs), into an HDR histogram (3 significant digits).
//!   The request's hashes are read once just before the clock starts, as a router that has
//!   just hashed the request's tokens has them in cache;
//! - issue lag: how late each lookup started after its deadline (diagnostic);
//! - exactness: every lookup's sorted result against the reference's answer;
//! - memory: live heap bytes (see `memory`) after the trial minus before building the
//!   backend, with the harness's own buffers allocated before the first reading and the
//!   event payloads gone before the second: the index and its lanes' state alone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kvroute_core::ids::RankKey;

use crate::backend::{Backend, BuildContext};
use crate::memory;
use crate::schedule::{Plan, Schedule};

/// How deadlines are laid out over the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pacing {
    /// Evenly by cumulative block ops.
    Ops,
    /// By the requests' trace timestamps, scaled to the window.
    Trace,
}

/// One trial's parameters.
#[derive(Clone, Debug)]
pub struct TrialSpec {
    /// Offered block ops/s; `None`: as fast as possible.
    pub offered: Option<f64>,
    pub pacing: Pacing,
    /// Mismatching lookups to keep for printing.
    pub mismatch_examples: usize,
}

/// Lookup latency percentiles (nanoseconds).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Latency {
    pub p50_ns: f64,
    pub p99_ns: f64,
    pub p999_ns: f64,
    pub max_ns: f64,
    pub mean_ns: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50_ns: h.value_at_quantile(0.50) as f64,
            p99_ns: h.value_at_quantile(0.99) as f64,
            p999_ns: h.value_at_quantile(0.999) as f64,
            max_ns: h.max() as f64,
            mean_ns: h.mean(),
        }
    }
}

/// A lookup whose result differed from the reference's.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub lookup: usize,
    pub got: Vec<(RankKey, u32)>,
    /// Per lane: visible events just before the lookup and just after it. The lane's events
    /// with sequence numbers in `before..=after` may have been applied while it ran.
    pub lanes_in_flight: Vec<(u64, u64)>,
}

/// Mismatch examples kept when repeats are merged.
const MERGED_EXAMPLES: usize = 3;

/// What one trial (or several repeats at one rate, see [`TrialResult::merge`]) measured.
#[derive(Clone, Debug)]
pub struct TrialResult {
    pub offered: Option<f64>,
    /// Achieved block ops/s over the whole window: the repeats' block ops over the sum
    /// of their durations.
    pub achieved: f64,
    /// The lowest achieved rate of a single repeat (diagnostic).
    pub lowest_repeat: f64,
    /// Wall time of the replay (the sum over the repeats).
    pub elapsed_s: f64,
    /// Trials merged into this result.
    pub repeats: u32,
    pub lookups: u64,
    pub mismatches: u64,
    pub mismatch_examples: Vec<Mismatch>,
    pub latency: Latency,
    pub issue_lag: Latency,
    pub rejected_events: u64,
    /// Live heap bytes of the backend after the replay (when counting is active).
    pub index_bytes: Option<i64>,
    pub notes: Vec<String>,
    pub latency_histogram: Histogram<u64>,
    pub lag_histogram: Histogram<u64>,
}

impl TrialResult {
    /// Achieved at least 99% of the offered rate over the window (all repeats together).
    pub fn sustained(&self) -> bool {
        self.offered.is_some_and(|offered| self.achieved >= 0.99 * offered)
    }

    /// Folds repeats at the same rate into one result, one window of at least
    /// `min_seconds_per_rate`: the achieved rate over the whole window (all block ops over
    /// the summed time, so that one stall of this machine, a few ms, weighs the same
    /// against every backend rather than more against one whose repeats are short), the
    /// lowest single repeat for reference, summed counts and time, merged latency
    /// histograms, the first repeat's memory reading.
    pub fn merge(mut results: Vec<TrialResult>) -> TrialResult {
        let mut merged = results.remove(0);
        let mut ops = merged.achieved * merged.elapsed_s;
        for r in results {
            ops += r.achieved * r.elapsed_s;
            merged.lowest_repeat = merged.lowest_repeat.min(r.lowest_repeat);
            merged.elapsed_s += r.elapsed_s;
            merged.repeats += r.repeats;
            merged.lookups += r.lookups;
            merged.mismatches += r.mismatches;
            for m in r.mismatch_examples {
                let known = merged.mismatch_examples.iter().any(|e| e.lookup == m.lookup);
                if !known && merged.mismatch_examples.len() < MERGED_EXAMPLES {
                    merged.mismatch_examples.push(m);
                }
            }
            merged.rejected_events += r.rejected_events;
            merged.notes = r.notes;
            // Same bounds on both sides: adding cannot fail.
            let _ = merged.latency_histogram.add(&r.latency_histogram);
            let _ = merged.lag_histogram.add(&r.lag_histogram);
        }
        if merged.elapsed_s > 0.0 {
            merged.achieved = ops / merged.elapsed_s;
        }
        merged.latency = Latency::of(&merged.latency_histogram);
        merged.issue_lag = Latency::of(&merged.lag_histogram);
        merged
    }
}

#[repr(align(128))]
#[derive(Default)]
struct Counter(AtomicU64);

/// Raises the trial's failure flag if its thread unwinds, so that no other thread waits
/// forever on a watermark the dead one would have published.
struct FailOnPanic<'a>(&'a AtomicBool);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Waits with growing politeness: spin, then yield, then park for short spells (a backend
/// with asynchronous applies unparks its lane's thread when an apply completes).
struct Backoff(u32);

impl Backoff {
    fn new() -> Self {
        Backoff(0)
    }
    fn snooze(&mut self) {
        self.0 += 1;
        if self.0 < 32 {
            std::hint::spin_loop();
        } else if self.0 < 256 {
            std::thread::yield_now();
        } else {
            std::thread::park_timeout(Duration::from_micros(50));
        }
    }
}

/// Waits until `deadline`, calling `poll` meanwhile. Far deadlines are waited for parked
/// (woken early by a backend's completion to run `poll`).
fn wait_until(deadline: Instant, mut poll: impl FnMut()) {
    let mut backoff = Backoff::new();
    loop {
        poll();
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if left > Duration::from_micros(300) {
            std::thread::park_timeout(left - Duration::from_micros(200));
        } else {
            backoff.snooze();
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Deadlines (ns after start) of every lookup and event for `spec`.
fn deadlines(schedule: &Schedule, plan: &Plan, spec: &TrialSpec) -> (Vec<u64>, Vec<u64>) {
    let Some(rate) = spec.offered else {
        return (vec![0; plan.lookup_ops_before.len()], vec![0; plan.event_ops_before.len()]);
    };
    let total = schedule.totals.total_block_ops as f64;
    let window_ns = total / rate * 1e9;
    match spec.pacing {
        Pacing::Ops => {
            let f = |ops: &u64| (*ops as f64 / rate * 1e9) as u64;
            (plan.lookup_ops_before.iter().map(f).collect(), plan.event_ops_before.iter().map(f).collect())
        }
        Pacing::Trace => {
            let first = plan.lookup_timestamp_ms.iter().copied().min().unwrap_or(0);
            let last = plan.lookup_timestamp_ms.iter().copied().max().unwrap_or(0);
            let span = (last - first).max(1) as f64;
            let f = |ts: &u64| ((*ts - first) as f64 / span * window_ns) as u64;
            (plan.lookup_timestamp_ms.iter().map(f).collect(), plan.event_timestamp_ms.iter().map(f).collect())
        }
    }
}

/// Runs one trial of backend `B`. `hashes` is the schedule's lookup hash slab converted to
/// the backend's hash type.
pub fn run_trial<B: Backend>(
    ctx: &BuildContext<'_>,
    schedule: &Schedule,
    plan: &Plan,
    hashes: &[B::Hash],
    spec: &TrialSpec,
) -> Result<TrialResult, String> {
    let q_n = plan.query_threads;
    let e_n = plan.event_threads;
    let (lookup_deadline, event_deadline) = deadlines(schedule, plan, spec);
    let applied: Vec<Counter> = (0..e_n).map(|_| Counter::default()).collect();
    let completed: Vec<Counter> = (0..q_n).map(|_| Counter::default()).collect();
    let lane_ranks: Vec<Vec<RankKey>> = (0..e_n)
        .map(|lane| schedule.ranks.iter().copied().filter(|&r| crate::schedule::lane_of(r, e_n) == lane).collect())
        .collect();
    // The query threads' buffers, allocated before the first memory reading.
    struct QueryState {
        latency: Histogram<u64>,
        lag: Histogram<u64>,
        out: Vec<(RankKey, u32)>,
        examples: Vec<Mismatch>,
        seen: Vec<u64>,
    }
    let mut query_states: Vec<QueryState> = (0..q_n)
        .map(|_| QueryState {
            latency: histogram(),
            lag: histogram(),
            out: Vec::with_capacity(schedule.ranks.len() + 1),
            examples: Vec::with_capacity(spec.mismatch_examples),
            seen: vec![0; e_n],
        })
        .collect();
    let barrier = Barrier::new(q_n + e_n + 1);
    let start_cell: OnceLock<Instant> = OnceLock::new();
    let failed = AtomicBool::new(false);

    let before = memory::live_bytes();
    let backend = B::build(ctx)?;
    let mut payloads: Vec<Vec<B::Event>> = plan
        .lane_events
        .iter()
        .map(|events| events.iter().map(|&j| backend.prepare(schedule, &schedule.events[j as usize])).collect())
        .collect();

    struct LaneOut {
        end: Instant,
        rejected: u64,
    }
    struct QueryOut {
        end: Instant,
        lookups: u64,
        mismatches: u64,
        state: QueryState,
    }

    let (lane_outs, query_outs) = std::thread::scope(|scope| {
        let backend = &backend;
        let applied = &applied;
        let completed = &completed;
        let barrier = &barrier;
        let start_cell = &start_cell;
        let failed = &failed;
        let mut lane_handles = Vec::new();
        for (lane, events) in payloads.drain(..).enumerate() {
            let event_ids = &plan.lane_events[lane];
            let event_deadline = &event_deadline;
            let ranks = &lane_ranks[lane];
            let builder = std::thread::Builder::new().name(format!("event-lane-{lane}"));
            lane_handles.push(
                builder
                    .spawn_scoped(scope, move || {
                        let _guard = FailOnPanic(failed);
                        let mut state = backend.new_lane(lane, ranks);
                        barrier.wait();
                        barrier.wait();
                        let start = *start_cell.get().expect("start set");
                        let total = events.len() as u64;
                        let mut published = 0u64;
                        for (event, &j) in events.into_iter().zip(event_ids) {
                            let j = j as usize;
                            let deadline = start + Duration::from_nanos(event_deadline[j]);
                            wait_until(deadline, || {
                                let v = backend.visible(&mut state);
                                if v != published {
                                    published = v;
                                    applied[lane].0.store(v, Ordering::Release);
                                }
                            });
                            let needs = &plan.event_need[j * q_n..(j + 1) * q_n];
                            for (done, &need) in completed.iter().zip(needs) {
                                let need = u64::from(need);
                                let mut backoff = Backoff::new();
                                while done.0.load(Ordering::Acquire) < need {
                                    if failed.load(Ordering::Relaxed) {
                                        return None;
                                    }
                                    let v = backend.visible(&mut state);
                                    if v != published {
                                        published = v;
                                        applied[lane].0.store(v, Ordering::Release);
                                    }
                                    backoff.snooze();
                                }
                            }
                            backend.submit(&mut state, event);
                            let v = backend.visible(&mut state);
                            if v != published {
                                published = v;
                                applied[lane].0.store(v, Ordering::Release);
                            }
                        }
                        let mut backoff = Backoff::new();
                        while published < total {
                            if failed.load(Ordering::Relaxed) {
                                return None;
                            }
                            backoff.snooze();
                            let v = backend.visible(&mut state);
                            if v != published {
                                published = v;
                                applied[lane].0.store(v, Ordering::Release);
                            }
                        }
                        let end = Instant::now();
                        let report = backend.finish_lane(state);
                        Some(LaneOut { end, rejected: report.rejected_events })
                    })
                    .expect("spawn an event lane"),
            );
        }
        let mut query_handles = Vec::new();
        for (q, mut state) in query_states.drain(..).enumerate() {
            let lookup_ids = &plan.query_lookups[q];
            let lookup_deadline = &lookup_deadline;
            let builder = std::thread::Builder::new().name(format!("query-{q}"));
            query_handles.push(
                builder
                    .spawn_scoped(scope, move || {
                        let _guard = FailOnPanic(failed);
                        barrier.wait();
                        barrier.wait();
                        let start = *start_cell.get().expect("start set");
                        let mut mismatches = 0u64;
                        let mut issued = 0u64;
                        'lookups: for (seq, &k) in lookup_ids.iter().enumerate() {
                            let k = k as usize;
                            let deadline = start + Duration::from_nanos(lookup_deadline[k]);
                            wait_until(deadline, || {});
                            let needs = &plan.lookup_need[k * e_n..(k + 1) * e_n];
                            for (visible, &need) in applied.iter().zip(needs) {
                                let need = u64::from(need);
                                let mut backoff = Backoff::new();
                                while visible.0.load(Ordering::Acquire) < need {
                                    if failed.load(Ordering::Relaxed) {
                                        break 'lookups;
                                    }
                                    backoff.snooze();
                                }
                            }
                            let request = &hashes[schedule.lookups[k].hashes.clone()];
                            state.out.clear();
                            for (lane, seen) in state.seen.iter_mut().enumerate() {
                                *seen = applied[lane].0.load(Ordering::Relaxed);
                            }
                            // A router looks a request up right after hashing its tokens, so
                            // the hashes are in cache; read them once here (outside the clock)
                            // rather than time a miss on the harness's schedule buffer.
                            for &h in request {
                                std::hint::black_box(h);
                            }
                            let t0 = Instant::now();
                            backend.find(request, &mut state.out);
                            let t1 = Instant::now();
                            completed[q].0.store(seq as u64 + 1, Ordering::Release);
                            issued += 1;
                            state.latency.saturating_record(((t1 - t0).as_nanos() as u64).max(1));
                            state.lag.saturating_record(t0.saturating_duration_since(deadline).as_nanos() as u64 + 1);
                            state.out.sort_unstable();
                            if state.out != schedule.lookups[k].expected {
                                mismatches += 1;
                                if state.examples.len() < state.examples.capacity() {
                                    let lanes_in_flight = (0..e_n)
                                        .map(|lane| (state.seen[lane], applied[lane].0.load(Ordering::Relaxed)))
                                        .collect();
                                    state.examples.push(Mismatch {
                                        lookup: k,
                                        got: state.out.clone(),
                                        lanes_in_flight,
                                    });
                                }
                            }
                        }
                        QueryOut { end: Instant::now(), lookups: issued, mismatches, state }
                    })
                    .expect("spawn a query thread"),
            );
        }
        barrier.wait();
        start_cell.set(Instant::now() + Duration::from_millis(2)).expect("start set once");
        barrier.wait();
        let mut lane_outs = Vec::new();
        let mut panicked = false;
        for handle in lane_handles {
            match handle.join() {
                Ok(out) => lane_outs.push(out),
                Err(_) => {
                    panicked = true;
                    failed.store(true, Ordering::Relaxed);
                }
            }
        }
        let query_outs: Vec<_> = query_handles.into_iter().map(|h| h.join()).collect();
        (if panicked { None } else { Some(lane_outs) }, query_outs)
    });
    drop(payloads);

    let lane_outs: Vec<LaneOut> = lane_outs
        .ok_or_else(|| "an event lane panicked".to_string())?
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| "an event lane stopped early".to_string())?;
    let query_outs: Vec<QueryOut> =
        query_outs.into_iter().collect::<Result<Vec<_>, _>>().map_err(|_| "a query thread panicked".to_string())?;

    if backend.settle() {
        // Deferred frees (epoch-based reclamation) of the quiescent index: collect until
        // the heap stops shrinking for a while.
        let mut lowest = memory::live_bytes();
        let mut idle_rounds = 0;
        for _ in 0..100_000 {
            backend.settle();
            let now = memory::live_bytes();
            if now < lowest {
                lowest = now;
                idle_rounds = 0;
            } else {
                idle_rounds += 1;
                if idle_rounds >= 64 {
                    break;
                }
            }
        }
    }
    let after = memory::live_bytes();
    let start = *start_cell.get().expect("start set");
    let end = lane_outs.iter().map(|l| l.end).chain(query_outs.iter().map(|q| q.end)).max().unwrap_or(start);
    let elapsed = end.saturating_duration_since(start).as_secs_f64().max(1e-9);
    let mut latency = histogram();
    let mut lag = histogram();
    let achieved = schedule.totals.total_block_ops as f64 / elapsed;
    let mut result = TrialResult {
        offered: spec.offered,
        achieved,
        lowest_repeat: achieved,
        elapsed_s: elapsed,
        repeats: 1,
        lookups: 0,
        mismatches: 0,
        mismatch_examples: Vec::new(),
        latency: Latency::default(),
        issue_lag: Latency::default(),
        rejected_events: lane_outs.iter().map(|l| l.rejected).sum(),
        index_bytes: before.zip(after).map(|(b, a)| a - b),
        notes: Vec::new(),
        latency_histogram: histogram(),
        lag_histogram: histogram(),
    };
    for out in query_outs {
        result.lookups += out.lookups;
        result.mismatches += out.mismatches;
        latency.add(&out.state.latency).map_err(|e| e.to_string())?;
        lag.add(&out.state.lag).map_err(|e| e.to_string())?;
        result.mismatch_examples.extend(out.state.examples);
    }
    result.mismatch_examples.sort_by_key(|m| m.lookup);
    result.mismatch_examples.truncate(spec.mismatch_examples);
    result.latency = Latency::of(&latency);
    result.issue_lag = Latency::of(&lag);
    result.latency_histogram = latency;
    result.lag_histogram = lag;
    result.notes = backend.notes();
    drop(backend);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One repeat at `offered` that replayed `ops` block ops in `seconds`.
    fn repeat(offered: f64, ops: f64, seconds: f64) -> TrialResult {
        TrialResult {
            offered: Some(offered),
            achieved: ops / seconds,
            lowest_repeat: ops / seconds,
            elapsed_s: seconds,
            repeats: 1,
            lookups: 10,
            mismatches: 0,
            mismatch_examples: Vec::new(),
            latency: Latency::default(),
            issue_lag: Latency::default(),
            rejected_events: 0,
            index_bytes: None,
            notes: Vec::new(),
            latency_histogram: histogram(),
            lag_histogram: histogram(),
        }
    }

    #[test]
    fn repeats_are_one_window_so_a_short_stall_in_one_does_not_fail_the_rate() {
        // Five 0.2 s repeats at 100 M/s; one loses 4 ms to a stall (98% on its own).
        let mut repeats: Vec<TrialResult> = (0..4).map(|_| repeat(100e6, 20e6, 0.2)).collect();
        repeats.push(repeat(100e6, 20e6, 0.204));
        let merged = TrialResult::merge(repeats);
        assert_eq!(merged.repeats, 5);
        assert_eq!(merged.lookups, 50);
        assert!((merged.achieved - 100e6 / 1.004).abs() < 1.0, "{}", merged.achieved);
        assert!((merged.lowest_repeat - 20e6 / 0.204).abs() < 1.0);
        assert!(merged.sustained(), "99.6% over the window");
    }

    #[test]
    fn a_backend_that_falls_behind_fails_over_the_window() {
        // Every repeat 2% short: the window is 2% short too.
        let repeats: Vec<TrialResult> = (0..5).map(|_| repeat(100e6, 20e6, 0.204)).collect();
        let merged = TrialResult::merge(repeats);
        assert!((merged.achieved - 20e6 / 0.204).abs() < 1.0);
        assert!(!merged.sustained());
    }
}
