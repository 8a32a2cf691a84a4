//! `/metrics`: the Prometheus text exposition format (version 0.0.4), encoded by the
//! `prometheus-client` crate.
//!
//! Nothing is registered ahead of time: every value already lives in an atomic counter
//! somewhere (the router, [`super::metrics::ServeMetrics`], the proxy, the ingests), so
//! each scrape builds a registry holding one collector over the daemon's [`AppState`],
//! which reads those counters and writes each family through the crate's encoder (HELP and
//! TYPE lines, label escaping, counters' `_total`, histograms' cumulative buckets, `+Inf`,
//! `_sum` and `_count`). [`Families`] is the thin layer that turns "a family and its
//! samples" into the encoder's calls; counter names are written here with their `_total`,
//! which is stripped before the encoder adds it back.
//!
//! Families: routing calls by endpoint and outcome, decision latency histograms, decision
//! quality per routing path (`route`, `disaggregated`, `proxy`: blocks of the prompts,
//! chosen and best available, decisions below the best by reason, overlap and missed-block
//! histograms; [`crate::decision_quality`]), request lifecycle calls, requests refused for
//! their bearer token, HTTP connections, active requests, approximate mode, workers by
//! mode, per-rank load gauges, the index's event counters and size per storage tier, the
//! last snapshot's size and age, the shutting-down flag, the QUIC ingest's counters when a
//! source is plugged in ([`super::metrics::IngestCounterSource`]), the engines' ZeroMQ
//! ingest (`kvroute_engine_*`) and the proxy (`kvroute_proxy_*`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use kvroute_core::index::IndexSize;
use kvroute_core::route::{LoadSnapshot, StorageTier};
use kvroute_core::EventCounters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeGaugeValue, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::auth::AuthFailure;
use super::metrics::{Endpoint, LifecycleEvent, MetricKind};
use super::state::AppState;
use crate::atomic_histogram::HistogramSnapshot;
use crate::decision_quality::QualitySnapshot;
use crate::engine_ingest::{EngineIngestSnapshot, RankStatus};

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The whole exposition for `state`.
pub fn render(state: &AppState) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StateCollector(state.clone())));
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail, and the collector only passes the encoder's
    // results on; should that change, a partial page is still served (and logged).
    if let Err(error) = prometheus_text::encode(&mut out, &registry) {
        tracing::error!(%error, "metrics exposition incomplete");
    }
    out
}

/// Reads the daemon's counters at each scrape.
struct StateCollector(AppState);

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateCollector")
    }
}

impl Collector for StateCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let mut families = Families { encoder };
        let state = &self.0;
        routing(&mut families, state)?;
        http(&mut families, state)?;
        router_state(&mut families, state)?;
        index(&mut families, state)?;
        snapshots(&mut families, state)?;
        if let Some(source) = state.ingest_counters() {
            for sample in source.samples() {
                let name = format!("kvroute_ingest_{}", sample.name);
                match sample.kind {
                    MetricKind::Counter => families.counter(&name, sample.help, [(no_labels(), sample.value)])?,
                    MetricKind::Gauge => families.gauge(&name, sample.help, [(no_labels(), sample.value)])?,
                }
            }
        }
        if let Some(engines) = state.engine_ingest() {
            engine_ingest(&mut families, &engines.snapshot())?;
        }
        proxy(&mut families, &state.proxy)
    }
}

/// A sample's labels: (name, value) pairs.
type Labels = Vec<(&'static str, String)>;

fn no_labels() -> Labels {
    Vec::new()
}

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.iter().map(|&(name, value)| (name, value.to_owned())).collect()
}

/// Families written through the crate's encoder; see the module docs.
struct Families<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl Families<'_> {
    /// A counter family; `name` ends in `_total` (or gets it).
    fn counter(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, u64)>) -> fmt::Result {
        let name = name.strip_suffix("_total").unwrap_or(name);
        let mut family = self.encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in samples {
            family.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }

    fn gauge<V: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, V)>,
    ) -> fmt::Result {
        let mut family = self.encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in samples {
            family.encode_family(&labels)?.encode_gauge(&value)?;
        }
        Ok(())
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, HistogramSnapshot)>,
    ) -> fmt::Result {
        let mut family = self.encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in samples {
            family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}

fn tier_name(tier: StorageTier) -> &'static str {
    match tier {
        StorageTier::Device => "device",
        StorageTier::Host => "host",
        StorageTier::Disk => "disk",
    }
}

/// Routing calls, their latency and quality, request lifecycle calls.
fn routing(f: &mut Families<'_>, state: &AppState) -> fmt::Result {
    let metrics = &state.metrics;
    let calls = Endpoint::ALL.iter().flat_map(|&endpoint| {
        metrics
            .decisions(endpoint)
            .into_iter()
            .map(move |(outcome, count)| (labels([("endpoint", endpoint.as_str()), ("outcome", outcome)]), count))
    });
    f.counter("kvroute_route_decisions_total", "Routing calls by endpoint and outcome (ok or error kind).", calls)?;
    f.histogram(
        "kvroute_decision_duration_seconds",
        "Time of the router's decision (hashing, index lookup, scoring), in seconds.",
        Endpoint::ALL.map(|endpoint| (labels([("endpoint", endpoint.as_str())]), metrics.latency(endpoint))),
    )?;
    let quality: Vec<(&str, QualitySnapshot)> = Endpoint::ALL
        .iter()
        .map(|&endpoint| (endpoint.as_str(), metrics.quality(endpoint)))
        .chain(std::iter::once(("proxy", state.proxy.metrics.quality.snapshot())))
        .collect();
    decision_quality(f, &quality)?;

    let lifecycle = LifecycleEvent::ALL.iter().flat_map(|&event| {
        let (known, unknown) = metrics.lifecycle(event);
        [
            (labels([("event", event.as_str()), ("outcome", "ok")]), known),
            (labels([("event", event.as_str()), ("outcome", "unknown")]), unknown),
        ]
    });
    f.counter(
        "kvroute_request_lifecycle_total",
        "prefill_done and finish calls, for active (ok) and unknown request ids.",
        lifecycle,
    )?;
    f.counter(
        "kvroute_load_reports_total",
        "Ranks' engine load reports applied (POST /v1/workers/{id}/load).",
        [(no_labels(), metrics.load_reports())],
    )?;
    f.counter(
        "kvroute_http_unauthorized_total",
        "HTTP requests refused with 401 (http_token_file): no, a malformed or a wrong token.",
        AuthFailure::ALL.map(|failure| (labels([("reason", failure.as_str())]), metrics.unauthorized(failure))),
    )
}

/// Overlap chosen against the best available, per routing path (`endpoint`).
fn decision_quality(f: &mut Families<'_>, paths: &[(&str, QualitySnapshot)]) -> fmt::Result {
    let per_path = |value: fn(&QualitySnapshot) -> u64| {
        paths.iter().map(move |(path, q)| (labels([("endpoint", path)]), value(q))).collect::<Vec<_>>()
    };
    f.counter(
        "kvroute_decision_quality_decisions_total",
        "Routed decisions counted by the decision-quality families (dry runs excluded).",
        per_path(|q| q.decisions),
    )?;
    let blocks = paths.iter().flat_map(|(path, q)| {
        [("prompt", q.prompt_blocks), ("chosen", q.chosen_blocks), ("best", q.best_blocks)]
            .map(|(of, value)| (labels([("endpoint", path), ("of", of)]), value))
    });
    f.counter(
        "kvroute_decision_blocks_total",
        "Blocks over routed decisions: of the prompts (full blocks), cached on the chosen rank, \
         and cached on the best candidate (the most any held). chosen/prompt is the hit rate \
         routing got; best/prompt what was available.",
        blocks,
    )?;
    let below = paths.iter().flat_map(|(path, q)| {
        q.below_best.iter().map(move |(reason, n)| (labels([("endpoint", path), ("reason", reason.name())]), *n))
    });
    f.counter(
        "kvroute_decisions_below_best_total",
        "Routed decisions that took fewer cached blocks than the best candidate held, by why: \
         load (a busier or fuller rank held more), tier (host/disk blocks made up for it), \
         temperature (sampled a dearer rank), policy (it ignores overlap).",
        below,
    )?;
    let overlap = paths.iter().flat_map(|(path, q)| {
        [("chosen", &q.chosen), ("best", &q.best)].map(|(of, h)| (labels([("endpoint", path), ("of", of)]), h.clone()))
    });
    f.histogram(
        "kvroute_decision_overlap_blocks",
        "Cached leading blocks per routed decision: on the chosen rank, and on the best candidate.",
        overlap,
    )?;
    f.histogram(
        "kvroute_decision_missed_blocks",
        "Cached blocks a routed decision left on the table: best candidate's overlap minus the chosen's.",
        paths.iter().map(|(path, q)| (labels([("endpoint", path)]), q.missed.clone())),
    )
}

/// HTTP connections and request timeouts.
fn http(f: &mut Families<'_>, state: &AppState) -> fmt::Result {
    let http = &state.http_connections;
    let read = |counter: &AtomicU64| [(no_labels(), counter.load(Ordering::Relaxed))];
    f.gauge("kvroute_http_connections_open", "HTTP connections open.", read(&http.open))?;
    f.counter("kvroute_http_connections_accepted_total", "HTTP connections accepted.", read(&http.accepted))?;
    f.counter(
        "kvroute_http_connections_refused_total",
        "HTTP connections closed at once: max_http_connections were open.",
        read(&http.refused),
    )?;
    f.counter(
        "kvroute_http_requests_timed_out_total",
        "HTTP requests answered 408: not done within http_request_timeout (a slow body).",
        read(&http.timed_out),
    )
}

/// Reads one counter of a rank's load.
type LoadField = fn(&LoadSnapshot) -> u64;

/// Active requests, approximate mode, workers and per-rank loads.
fn router_state(f: &mut Families<'_>, state: &AppState) -> fmt::Result {
    let router = &state.router;
    f.gauge(
        "kvroute_active_requests",
        "Requests routed and not yet finished or expired.",
        [(no_labels(), router.active_requests() as u64)],
    )?;
    let approx = router.approx_stats();
    f.gauge(
        "kvroute_approx_blocks",
        "Blocks approximate mode credits to ranks (workers without KV events yet).",
        [(no_labels(), approx.blocks as u64)],
    )?;
    f.gauge(
        "kvroute_approx_queue_entries",
        "Approximate mode's expiry queue entries, live and stale.",
        [(no_labels(), approx.queued as u64)],
    )?;
    let specs = router.workers();
    let exact = specs.iter().filter(|s| router.is_exact(s.worker) == Some(true)).count();
    f.gauge(
        "kvroute_workers",
        "Registered workers by mode (exact: publishes KV events).",
        [
            (labels([("mode", "exact")]), exact as u64),
            (labels([("mode", "approximate")]), (specs.len() - exact) as u64),
        ],
    )?;
    let loads = router.rank_loads();
    let gauges: [(&str, &str, LoadField); 3] = [
        ("kvroute_rank_prefill_tokens", "Prompt tokens routed to the rank and not yet prefilled.", |l| {
            l.prefill_tokens
        }),
        ("kvroute_rank_decode_blocks", "KV blocks of requests running on the rank.", |l| l.decode_blocks),
        ("kvroute_rank_requests", "Requests active on the rank.", |l| l.requests),
    ];
    for (name, help, value) in gauges {
        let samples = loads.iter().map(|(key, load)| {
            let (worker, dp_rank) = (key.worker.0.to_string(), key.dp_rank.0.to_string());
            (labels([("worker", &worker), ("dp_rank", &dp_rank)]), value(load))
        });
        f.gauge(name, help, samples)?;
    }
    f.gauge(
        "kvroute_shutting_down",
        "1 once a shutdown signal was received.",
        [(no_labels(), u64::from(state.is_shutting_down()))],
    )
}

/// How many event counters the index has.
const INDEX_COUNTERS: usize = 9;

/// The index's event counters: (metric name suffix, help, value).
fn index_counters(c: &EventCounters) -> [(&'static str, &'static str, u64); INDEX_COUNTERS] {
    [
        ("events_applied", "KV events applied to the index.", c.events_applied),
        ("blocks_stored", "Blocks stored by KV events.", c.blocks_stored),
        ("blocks_removed", "Blocks removed by KV events.", c.blocks_removed),
        ("duplicate_store", "Stored blocks the rank already held.", c.duplicate_store),
        ("unknown_parent", "Stored events dropped because the rank lacks their parent block.", c.unknown_parent),
        ("unknown_remove", "Removed blocks the rank did not hold.", c.unknown_remove),
        ("unknown_rank", "Events for ranks that are not registered (dropped).", c.unknown_rank),
        ("stale_event", "Events whose id was not above the rank's last applied id (skipped).", c.stale_event),
        (
            "snapshot_replays",
            "Re-stores and re-removals of events re-applied after a snapshot restore that the snapshot held already.",
            c.snapshot_replays,
        ),
    ]
}

/// Reads one figure of an index's size.
type IndexSizeField = fn(&IndexSize) -> usize;

/// The index's event counters and size, per storage tier.
fn index(f: &mut Families<'_>, state: &AppState) -> fmt::Result {
    let router = &state.router;
    let per_tier = StorageTier::ALL.map(|tier| (tier_name(tier), index_counters(&router.tier_index(tier).counters())));
    for field in 0..INDEX_COUNTERS {
        let (suffix, help, _) = per_tier[0].1[field];
        let samples = per_tier.iter().map(|(tier, fields)| (labels([("tier", tier)]), fields[field].2));
        f.counter(&format!("kvroute_index_{suffix}_total"), help, samples)?;
    }
    let sizes = StorageTier::ALL.map(|tier| (tier_name(tier), router.tier_index(tier).size()));
    let size_gauges: [(&str, &str, IndexSizeField); 2] = [
        ("kvroute_index_held_blocks", "(rank, engine block hash) pairs the index holds.", |s| s.held_blocks),
        ("kvroute_index_nodes", "Radix tree nodes of the index (the root excepted).", |s| s.nodes),
    ];
    for (name, help, value) in size_gauges {
        f.gauge(name, help, sizes.iter().map(|(tier, size)| (labels([("tier", tier)]), value(size) as u64)))?;
    }
    Ok(())
}

/// The last snapshot's size and age, writes and failures.
fn snapshots(f: &mut Families<'_>, state: &AppState) -> fmt::Result {
    let snapshots = &state.snapshots;
    let read = |counter: &AtomicU64| [(no_labels(), counter.load(Ordering::Relaxed))];
    f.gauge(
        "kvroute_snapshot_bytes",
        "Size of the last index snapshot (restored or written), in bytes.",
        read(&snapshots.bytes),
    )?;
    f.gauge(
        "kvroute_snapshot_age_seconds",
        "Seconds since the last index snapshot (restored or written) was taken; -1 before any.",
        [(no_labels(), super::snapshots::snapshot_age_seconds(snapshots).unwrap_or(-1.0))],
    )?;
    f.counter("kvroute_snapshot_writes_total", "Index snapshots written.", read(&snapshots.writes))?;
    f.counter("kvroute_snapshot_write_failures_total", "Index snapshot writes that failed.", read(&snapshots.failures))
}

/// The routing proxy (`kvroute_proxy_*`): requests by how they ended, failed attempts by
/// cause, retries, probes, and workers down now.
fn proxy(f: &mut Families<'_>, proxy: &crate::proxy::Proxy) -> fmt::Result {
    let m = &proxy.metrics;
    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let outcomes = [
        ("received", &m.requests),
        ("completed", &m.completed),
        ("cancelled", &m.cancelled),
        ("upstream_broken", &m.upstream_broken),
        ("refused", &m.refused),
        ("unavailable", &m.unavailable),
    ];
    f.counter(
        "kvroute_proxy_requests_total",
        "Requests on the proxy endpoints, by outcome (refused: a bad request, before routing).",
        outcomes.map(|(outcome, counter)| (labels([("outcome", outcome)]), load(counter))),
    )?;
    f.counter(
        "kvroute_proxy_load_scrapes_total",
        "Scrapes of the workers' own /metrics for their load (proxy.engine_load_interval), by outcome.",
        [("ok", &m.load_scrapes), ("failed", &m.load_scrape_failures)]
            .map(|(outcome, counter)| (labels([("outcome", outcome)]), load(counter))),
    )?;
    let causes = [("connect", &m.failed_connect), ("timeout", &m.failed_timeout), ("status_5xx", &m.failed_status)];
    f.counter(
        "kvroute_proxy_attempts_failed_total",
        "Upstream attempts that failed before the first byte, by cause.",
        causes.map(|(cause, counter)| (labels([("cause", cause)]), load(counter))),
    )?;
    for (name, help, value) in [
        ("kvroute_proxy_retries_total", "Attempts on a next-best rank after a failed one.", load(&m.retries)),
        ("kvroute_proxy_probes_total", "Health probes sent to workers taken out of decisions.", load(&m.probes)),
        (
            "kvroute_proxy_recoveries_total",
            "Workers brought back into decisions by a health probe.",
            load(&m.recovered),
        ),
    ] {
        f.counter(name, help, [(no_labels(), value)])?;
    }
    let down = proxy.upstreams.down_workers().len();
    let all = proxy.upstreams.all().len();
    f.gauge(
        "kvroute_proxy_upstreams",
        "Proxy upstream workers, by state.",
        [(labels([("state", "up")]), all.saturating_sub(down) as u64), (labels([("state", "down")]), down as u64)],
    )
}

/// Reads one value of a rank's engine subscription (`-1`: none yet).
type RankField = fn(&RankStatus) -> i64;

/// The engines' ZeroMQ ingest (`kvroute_engine_*`): totals, counts by reason, per-rank state.
fn engine_ingest(f: &mut Families<'_>, s: &EngineIngestSnapshot) -> fmt::Result {
    let totals = [
        ("kvroute_engine_messages_total", "Engine KV-event messages received (live).", s.stream.messages),
        (
            "kvroute_engine_batches_applied_total",
            "Engine event batches applied, in seq order.",
            s.stream.batches_applied,
        ),
        ("kvroute_engine_events_applied_total", "Index events applied from engine batches.", s.stream.events_applied),
        (
            "kvroute_engine_block_events_applied_total",
            "Block hashes in the index events applied from engine batches.",
            s.stream.block_events_applied,
        ),
        ("kvroute_engine_unknown_events_total", "Engine events of an unknown type, skipped.", s.stream.unknown_events),
        ("kvroute_engine_gaps_total", "Gaps in an engine rank's batch numbers.", s.seq.gaps),
        (
            "kvroute_engine_replays_total",
            "Replays requested from the engines' replay sockets.",
            s.seq.replays_requested,
        ),
        (
            "kvroute_engine_replays_incomplete_total",
            "Replays that could not supply every missing batch (the rank was cleared).",
            s.seq.replays_incomplete,
        ),
        ("kvroute_engine_replays_failed_total", "Replays that timed out or failed.", s.seq.replays_failed),
        ("kvroute_engine_restarts_total", "Engine restarts seen (a batch number went back).", s.seq.restarts),
        (
            "kvroute_engine_duplicate_batches_total",
            "Batches received again (replayed and live), skipped.",
            s.seq.duplicates_skipped,
        ),
        (
            "kvroute_engine_buffer_overflows_total",
            "Live batches dropped while a replay ran past the buffer, asked for again.",
            s.seq.buffer_overflows,
        ),
        (
            "kvroute_engine_unrecovered_batches_total",
            "Engine batches that could never be applied (lost and not replayable): state not recovered.",
            s.seq.unrecovered_batches,
        ),
    ];
    for (name, help, value) in totals {
        f.counter(name, help, [(no_labels(), value)])?;
    }
    let by_reason = [
        ("kvroute_engine_dropped_messages_total", "Engine messages dropped, by reason.", &s.stream.dropped),
        (
            "kvroute_engine_skipped_blocks_total",
            "Blocks of engine events not credited, by reason (medium, group, block size).",
            &s.skipped_blocks,
        ),
        ("kvroute_engine_rank_clears_total", "Engine ranks cleared, by reason.", &s.stream.clears),
    ];
    for (name, help, counts) in by_reason {
        f.counter(name, help, counts.iter().map(|(reason, value)| (labels([("reason", reason)]), *value)))?;
    }
    f.counter(
        "kvroute_engine_socket_total",
        "The engine subscribers' socket counters, by counter.",
        s.sockets.iter().map(|(counter, value)| (labels([("counter", counter)]), *value)),
    )?;
    let per_rank: [(&str, &str, RankField); 3] = [
        ("kvroute_engine_rank_connected", "1 while the rank's engine publisher is connected.", |r| {
            i64::from(r.connected)
        }),
        ("kvroute_engine_rank_last_seq", "The last batch number applied per rank (-1 before any).", |r| {
            r.last_seq.map_or(-1, |seq| i64::try_from(seq).unwrap_or(i64::MAX))
        }),
        ("kvroute_engine_rank_unrecovered_batches", "Batches of the rank's engine that could never be applied.", |r| {
            i64::try_from(r.unrecovered_batches).unwrap_or(i64::MAX)
        }),
    ];
    for (name, help, value) in per_rank {
        let samples = s.ranks.iter().map(|rank| {
            let (worker, dp_rank) = (rank.rank.worker.0.to_string(), rank.rank.dp_rank.0.to_string());
            (labels([("worker", &worker), ("dp_rank", &dp_rank), ("engine", rank.engine.as_str())]), value(rank))
        });
        f.gauge(name, help, samples)?;
    }
    Ok(())
}
