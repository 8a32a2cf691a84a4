//! `/metrics`: the Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! Each family is a `# HELP` and a `# TYPE` line, then samples `name{label="value"} value`.
//! Families: routing calls by endpoint and outcome, decision latency histograms, request
//! lifecycle calls, requests refused for their bearer token, active requests, workers by
//! mode, per-rank load gauges, the index's event counters and size per storage tier, the
//! last snapshot's size and age, the
//! shutting-down flag, the ingest's counters when a source is plugged in
//! ([`super::metrics::IngestCounterSource`]), and the engines' ZeroMQ ingest
//! (`kvroute_engine_*`: totals, drops, skipped blocks and clears by reason, per-rank state).

use std::fmt::{Display, Write};
use std::sync::atomic::Ordering;

use kvroute_core::index::IndexSize;
use kvroute_core::route::{LoadSnapshot, StorageTier};
use kvroute_core::EventCounters;

use super::auth::AuthFailure;
use super::metrics::{Endpoint, LifecycleEvent, MetricKind};
use super::state::AppState;
use crate::engine_ingest::{EngineIngestSnapshot, RankStatus};

/// Reads one counter of a rank's load.
type LoadField = fn(&LoadSnapshot) -> u64;
/// Reads one figure of an index's size.
type IndexSizeField = fn(&IndexSize) -> usize;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Accumulates the exposition text.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, label_value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label(label_value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A histogram bound as Prometheus writes it.
fn bound_label(bound: f64) -> String {
    if bound.is_infinite() {
        "+Inf".to_owned()
    } else {
        bound.to_string()
    }
}

fn tier_name(tier: StorageTier) -> &'static str {
    match tier {
        StorageTier::Device => "device",
        StorageTier::Host => "host",
        StorageTier::Disk => "disk",
    }
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

/// The whole exposition for `state`.
pub fn render(state: &AppState) -> String {
    let mut x = Exposition { out: String::with_capacity(8192) };
    let metrics = &state.metrics;
    let router = &state.router;

    x.family("kvroute_route_decisions_total", "counter", "Routing calls by endpoint and outcome (ok or error kind).");
    for endpoint in Endpoint::ALL {
        for (outcome, count) in metrics.decisions(endpoint) {
            x.sample("kvroute_route_decisions_total", &[("endpoint", endpoint.as_str()), ("outcome", outcome)], count);
        }
    }

    let name = "kvroute_decision_duration_seconds";
    x.family(name, "histogram", "Time of the router's decision (hashing, index lookup, scoring), in seconds.");
    for endpoint in Endpoint::ALL {
        let histogram = metrics.latency(endpoint);
        for (bound, count) in &histogram.cumulative {
            let le = bound_label(*bound);
            x.sample(&format!("{name}_bucket"), &[("endpoint", endpoint.as_str()), ("le", &le)], count);
        }
        x.sample(&format!("{name}_sum"), &[("endpoint", endpoint.as_str())], histogram.sum_seconds);
        x.sample(&format!("{name}_count"), &[("endpoint", endpoint.as_str())], histogram.count);
    }

    let name = "kvroute_request_lifecycle_total";
    x.family(name, "counter", "prefill_done and finish calls, for active (ok) and unknown request ids.");
    for event in LifecycleEvent::ALL {
        let (known, unknown) = metrics.lifecycle(event);
        x.sample(name, &[("event", event.as_str()), ("outcome", "ok")], known);
        x.sample(name, &[("event", event.as_str()), ("outcome", "unknown")], unknown);
    }

    let name = "kvroute_http_unauthorized_total";
    x.family(name, "counter", "HTTP requests refused with 401 (http_token_file): no, a malformed or a wrong token.");
    for failure in AuthFailure::ALL {
        x.sample(name, &[("reason", failure.as_str())], metrics.unauthorized(failure));
    }

    let http = &state.http_connections;
    x.family("kvroute_http_connections_open", "gauge", "HTTP connections open.");
    x.sample("kvroute_http_connections_open", &[], http.open.load(Ordering::Relaxed));
    x.family("kvroute_http_connections_accepted_total", "counter", "HTTP connections accepted.");
    x.sample("kvroute_http_connections_accepted_total", &[], http.accepted.load(Ordering::Relaxed));
    let name = "kvroute_http_connections_refused_total";
    x.family(name, "counter", "HTTP connections closed at once: max_http_connections were open.");
    x.sample(name, &[], http.refused.load(Ordering::Relaxed));
    let name = "kvroute_http_requests_timed_out_total";
    x.family(name, "counter", "HTTP requests answered 408: not done within http_request_timeout (a slow body).");
    x.sample(name, &[], http.timed_out.load(Ordering::Relaxed));

    x.family("kvroute_active_requests", "gauge", "Requests routed and not yet finished or expired.");
    x.sample("kvroute_active_requests", &[], router.active_requests());

    let approx = router.approx_stats();
    x.family(
        "kvroute_approx_blocks",
        "gauge",
        "Blocks approximate mode credits to ranks (workers without KV events yet).",
    );
    x.sample("kvroute_approx_blocks", &[], approx.blocks);
    x.family("kvroute_approx_queue_entries", "gauge", "Approximate mode's expiry queue entries, live and stale.");
    x.sample("kvroute_approx_queue_entries", &[], approx.queued);

    let specs = router.workers();
    let exact = specs.iter().filter(|s| router.is_exact(s.worker) == Some(true)).count();
    x.family("kvroute_workers", "gauge", "Registered workers by mode (exact: publishes KV events).");
    x.sample("kvroute_workers", &[("mode", "exact")], exact);
    x.sample("kvroute_workers", &[("mode", "approximate")], specs.len() - exact);

    let loads = router.rank_loads();
    let gauges: [(&str, &str, LoadField); 3] = [
        ("kvroute_rank_prefill_tokens", "Prompt tokens routed to the rank and not yet prefilled.", |l| {
            l.prefill_tokens
        }),
        ("kvroute_rank_decode_blocks", "KV blocks of requests running on the rank.", |l| l.decode_blocks),
        ("kvroute_rank_requests", "Requests active on the rank.", |l| l.requests),
    ];
    for (name, help, value) in gauges {
        x.family(name, "gauge", help);
        for (key, load) in &loads {
            let (worker, dp_rank) = (key.worker.0.to_string(), key.dp_rank.0.to_string());
            x.sample(name, &[("worker", &worker), ("dp_rank", &dp_rank)], value(load));
        }
    }

    let per_tier = [StorageTier::Device, StorageTier::Host, StorageTier::Disk]
        .map(|tier| (tier_name(tier), index_counters(&router.tier_index(tier).counters())));
    for field in 0..INDEX_COUNTERS {
        let (suffix, help, _) = per_tier[0].1[field];
        let name = format!("kvroute_index_{suffix}_total");
        x.family(&name, "counter", help);
        for (tier, fields) in &per_tier {
            x.sample(&name, &[("tier", tier)], fields[field].2);
        }
    }

    let sizes = [StorageTier::Device, StorageTier::Host, StorageTier::Disk]
        .map(|tier| (tier_name(tier), router.tier_index(tier).size()));
    let size_gauges: [(&str, &str, IndexSizeField); 2] = [
        ("kvroute_index_held_blocks", "(rank, engine block hash) pairs the index holds.", |s| s.held_blocks),
        ("kvroute_index_nodes", "Radix tree nodes of the index (the root excepted).", |s| s.nodes),
    ];
    for (name, help, value) in size_gauges {
        x.family(name, "gauge", help);
        for (tier, size) in &sizes {
            x.sample(name, &[("tier", tier)], value(size));
        }
    }

    let snapshots = &state.snapshots;
    x.family("kvroute_snapshot_bytes", "gauge", "Size of the last index snapshot (restored or written), in bytes.");
    x.sample("kvroute_snapshot_bytes", &[], snapshots.bytes.load(Ordering::Relaxed));
    let name = "kvroute_snapshot_age_seconds";
    x.family(name, "gauge", "Seconds since the last index snapshot (restored or written) was taken; -1 before any.");
    x.sample(name, &[], super::snapshots::snapshot_age_seconds(snapshots).unwrap_or(-1.0));
    x.family("kvroute_snapshot_writes_total", "counter", "Index snapshots written.");
    x.sample("kvroute_snapshot_writes_total", &[], snapshots.writes.load(Ordering::Relaxed));
    x.family("kvroute_snapshot_write_failures_total", "counter", "Index snapshot writes that failed.");
    x.sample("kvroute_snapshot_write_failures_total", &[], snapshots.failures.load(Ordering::Relaxed));

    x.family("kvroute_shutting_down", "gauge", "1 once a shutdown signal was received.");
    x.sample("kvroute_shutting_down", &[], u8::from(state.is_shutting_down()));

    if let Some(source) = state.ingest_counters() {
        for sample in source.samples() {
            let (name, kind) = match sample.kind {
                MetricKind::Counter => {
                    let suffix = if sample.name.ends_with("_total") { "" } else { "_total" };
                    (format!("kvroute_ingest_{}{suffix}", sample.name), "counter")
                }
                MetricKind::Gauge => (format!("kvroute_ingest_{}", sample.name), "gauge"),
            };
            x.family(&name, kind, sample.help);
            x.sample(&name, &[], sample.value);
        }
    }
    if let Some(engines) = state.engine_ingest() {
        engine_ingest(&mut x, &engines.snapshot());
    }
    proxy(&mut x, &state.proxy);
    x.out
}

/// The routing proxy (`kvroute_proxy_*`): requests by how they ended, failed attempts by
/// cause, retries, probes, and workers down now.
fn proxy(x: &mut Exposition, proxy: &crate::proxy::Proxy) {
    let m = &proxy.metrics;
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let name = "kvroute_proxy_requests_total";
    x.family(name, "counter", "Requests on the proxy endpoints, by outcome (refused: a bad request, before routing).");
    x.sample(name, &[("outcome", "received")], load(&m.requests));
    x.sample(name, &[("outcome", "completed")], load(&m.completed));
    x.sample(name, &[("outcome", "cancelled")], load(&m.cancelled));
    x.sample(name, &[("outcome", "upstream_broken")], load(&m.upstream_broken));
    x.sample(name, &[("outcome", "refused")], load(&m.refused));
    x.sample(name, &[("outcome", "unavailable")], load(&m.unavailable));
    let name = "kvroute_proxy_attempts_failed_total";
    x.family(name, "counter", "Upstream attempts that failed before the first byte, by cause.");
    x.sample(name, &[("cause", "connect")], load(&m.failed_connect));
    x.sample(name, &[("cause", "timeout")], load(&m.failed_timeout));
    x.sample(name, &[("cause", "status_5xx")], load(&m.failed_status));
    for (name, help, value) in [
        ("kvroute_proxy_retries_total", "Attempts on a next-best rank after a failed one.", load(&m.retries)),
        ("kvroute_proxy_probes_total", "Health probes sent to workers taken out of decisions.", load(&m.probes)),
        (
            "kvroute_proxy_recoveries_total",
            "Workers brought back into decisions by a health probe.",
            load(&m.recovered),
        ),
    ] {
        x.family(name, "counter", help);
        x.sample(name, &[], value);
    }
    x.family("kvroute_proxy_upstreams", "gauge", "Proxy upstream workers, by state.");
    let down = proxy.upstreams.down_workers().len();
    let all = proxy.upstreams.all().len();
    x.sample("kvroute_proxy_upstreams", &[("state", "up")], all.saturating_sub(down));
    x.sample("kvroute_proxy_upstreams", &[("state", "down")], down);
}

/// Reads one value of a rank's engine subscription.
type RankField = fn(&RankStatus) -> u64;

/// The engines' ZeroMQ ingest (`kvroute_engine_*`): totals, counts by reason, per-rank state.
fn engine_ingest(x: &mut Exposition, s: &EngineIngestSnapshot) {
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
        x.family(name, "counter", help);
        x.sample(name, &[], value);
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
        x.family(name, "counter", help);
        for (reason, value) in counts {
            x.sample(name, &[("reason", reason)], value);
        }
    }
    x.family("kvroute_engine_socket_total", "counter", "The engine subscribers' socket counters, by counter.");
    for (counter, value) in &s.sockets {
        x.sample("kvroute_engine_socket_total", &[("counter", counter)], value);
    }
    let per_rank: [(&str, &str, RankField); 3] = [
        ("kvroute_engine_rank_connected", "1 while the rank's engine publisher is connected.", |r| {
            u64::from(r.connected)
        }),
        ("kvroute_engine_rank_last_seq", "The last batch number applied per rank (-1 before any).", |r| {
            r.last_seq.unwrap_or(u64::MAX)
        }),
        ("kvroute_engine_rank_unrecovered_batches", "Batches of the rank's engine that could never be applied.", |r| {
            r.unrecovered_batches
        }),
    ];
    for (name, help, value) in per_rank {
        x.family(name, "gauge", help);
        for rank in &s.ranks {
            let (worker, dp_rank) = (rank.rank.worker.0.to_string(), rank.rank.dp_rank.0.to_string());
            let labels = [("worker", worker.as_str()), ("dp_rank", dp_rank.as_str()), ("engine", rank.engine.as_str())];
            let v = value(rank);
            if v == u64::MAX {
                x.sample(name, &labels, -1i64);
            } else {
                x.sample(name, &labels, v);
            }
        }
    }
}
