//! What the daemon counts about itself: [`ServeMetrics`] (routing calls by endpoint and
//! outcome, decision latency histograms, decision quality, request lifecycle calls, requests refused for
//! their bearer token), all lock-free atomic counters bumped on the request path, plus
//! the [`IngestCounterSource`] seam through which
//! the QUIC ingest's counters reach `/metrics` without this module depending on the
//! transport. Rendering them, with the router's own state, is [`super::exposition`]'s job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kvroute_core::route::Decision;

use super::api_error::ErrorKind;
use super::auth::AuthFailure;
use crate::atomic_histogram::{AtomicHistogram, HistogramSnapshot};
use crate::decision_quality::{DecisionQuality, QualitySnapshot};

/// A routing endpoint, as the `endpoint` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/route`.
    Route,
    /// `POST /v1/route/disaggregated`.
    Disaggregated,
}

impl Endpoint {
    pub const ALL: [Endpoint; 2] = [Endpoint::Route, Endpoint::Disaggregated];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Route => "route",
            Endpoint::Disaggregated => "disaggregated",
        }
    }
}

/// A request lifecycle call, as the `event` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleEvent {
    PrefillDone,
    Finish,
}

impl LifecycleEvent {
    pub const ALL: [LifecycleEvent; 2] = [LifecycleEvent::PrefillDone, LifecycleEvent::Finish];

    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleEvent::PrefillDone => "prefill_done",
            LifecycleEvent::Finish => "finish",
        }
    }
}

/// Upper bounds of the decision latency buckets, in nanoseconds (1 us to 10 ms).
pub const LATENCY_BUCKETS_NS: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Outcome slots per endpoint: `ok`, then one per [`ErrorKind`].
const OUTCOMES: usize = ErrorKind::ALL.len() + 1;

/// The daemon's own counters.
#[derive(Debug)]
pub struct ServeMetrics {
    decisions: [[AtomicU64; OUTCOMES]; 2],
    /// Router decision time per endpoint, in nanoseconds ([`LATENCY_BUCKETS_NS`]).
    latency: [AtomicHistogram; 2],
    quality: [DecisionQuality; 2],
    /// Per lifecycle event: [known request, unknown request].
    lifecycle: [[AtomicU64; 2]; 2],
    /// Requests refused for their bearer token, per [`AuthFailure`].
    unauthorized: [AtomicU64; AuthFailure::ALL.len()],
    /// Ranks' engine load reports applied.
    load_reports: AtomicU64,
}

impl Default for ServeMetrics {
    fn default() -> Self {
        ServeMetrics {
            decisions: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: std::array::from_fn(|_| AtomicHistogram::new(&LATENCY_BUCKETS_NS, 1e9)),
            quality: std::array::from_fn(|_| DecisionQuality::default()),
            lifecycle: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            unauthorized: std::array::from_fn(|_| AtomicU64::new(0)),
            load_reports: AtomicU64::new(0),
        }
    }
}

fn outcome_slot(outcome: Option<ErrorKind>) -> usize {
    match outcome {
        None => 0,
        Some(kind) => 1 + ErrorKind::ALL.iter().position(|&k| k == kind).unwrap_or(ErrorKind::ALL.len() - 1),
    }
}

impl ServeMetrics {
    /// Counts one call of a routing endpoint; `None` is success.
    pub fn record_decision(&self, endpoint: Endpoint, outcome: Option<ErrorKind>) {
        self.decisions[endpoint as usize][outcome_slot(outcome)].fetch_add(1, Ordering::Relaxed);
    }

    /// Times one router decision (the router call alone, not JSON handling).
    pub fn observe_latency(&self, endpoint: Endpoint, elapsed: Duration) {
        self.latency[endpoint as usize].observe(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Adds a decision's overlap chosen against the best available ([`DecisionQuality`]).
    pub fn record_quality(&self, endpoint: Endpoint, decision: &Decision) {
        self.quality[endpoint as usize].record(decision);
    }

    pub fn quality(&self, endpoint: Endpoint) -> QualitySnapshot {
        self.quality[endpoint as usize].snapshot()
    }

    pub fn record_lifecycle(&self, event: LifecycleEvent, known: bool) {
        self.lifecycle[event as usize][usize::from(!known)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one rank's engine load report applied.
    pub fn record_load_report(&self) {
        self.load_reports.fetch_add(1, Ordering::Relaxed);
    }

    /// Ranks' engine load reports applied.
    pub fn load_reports(&self) -> u64 {
        self.load_reports.load(Ordering::Relaxed)
    }

    /// Counts one request refused with 401.
    pub fn record_unauthorized(&self, failure: AuthFailure) {
        self.unauthorized[failure as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests refused with 401 for `failure`.
    pub fn unauthorized(&self, failure: AuthFailure) -> u64 {
        self.unauthorized[failure as usize].load(Ordering::Relaxed)
    }

    /// Calls of `endpoint` by outcome label (`ok` or an error kind).
    pub fn decisions(&self, endpoint: Endpoint) -> Vec<(&'static str, u64)> {
        let counts = &self.decisions[endpoint as usize];
        std::iter::once("ok")
            .chain(ErrorKind::ALL.iter().map(|kind| kind.as_str()))
            .zip(counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn latency(&self, endpoint: Endpoint) -> HistogramSnapshot {
        self.latency[endpoint as usize].snapshot()
    }

    /// Lifecycle calls of `event`: (for a known request, for an unknown one).
    pub fn lifecycle(&self, event: LifecycleEvent) -> (u64, u64) {
        let [known, unknown] = &self.lifecycle[event as usize];
        (known.load(Ordering::Relaxed), unknown.load(Ordering::Relaxed))
    }
}

/// Whether a sample only grows (counter) or goes up and down (gauge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// One value another component exposes on `/metrics`: as `kvroute_ingest_<name>_total`
/// for a counter (`_total` not doubled), `kvroute_ingest_<name>` for a gauge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricSample {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricKind,
    pub value: u64,
}

/// The QUIC ingest's counters, read at each scrape. A closure returning the samples is
/// one (see [`super::ingest`]), so the rendering does not depend on the transport.
pub trait IngestCounterSource: Send + Sync {
    fn samples(&self) -> Vec<MetricSample>;
}

impl<F: Fn() -> Vec<MetricSample> + Send + Sync> IngestCounterSource for F {
    fn samples(&self) -> Vec<MetricSample> {
        self()
    }
}
