//! The verdict: [`judge`] turns what the run saw ([`Evidence`]) into a list of failures
//! and prints the summary; an empty list is a PASS.
//!
//! Failures (each with a message saying what was expected):
//! - the daemon died during the run, or did not exit 0 on SIGTERM at the end;
//! - RSS after the warm-up grew past its minimum after the warm-up plus
//!   `--rss-growth-mb`, or went above `--rss-max-mb`; no sample after the warm-up;
//! - more health-check misses than `--max-healthz-misses`, or failed scrapes;
//! - any exactness mismatch, or a workload that left nothing cached to compare;
//! - any index anomaly counter nonzero in any tier (`duplicate_store`, `unknown_parent`,
//!   `unknown_remove`, `stale_event`, `unknown_rank`). None is allowed, because none is
//!   legitimate here: every rank stays registered for the whole run (a rank removed after
//!   the grace is emptied, not deregistered, so its later events are not `unknown_rank`);
//!   a new incarnation's dump replaces a rank before its deltas apply; the ingest numbers
//!   events itself, increasingly (no `stale_event`); and the engines' events never name a
//!   parent or a removed block the rank does not hold (the reference, fed the same events,
//!   counts no anomaly either). A nonzero counter therefore means a lost, doubled or
//!   misordered event;
//! - decisions or lifecycle calls counted by the daemon that differ from the clients' 200
//!   replies (a lost or doubled request), active requests left at the end, approximate
//!   blocks above `--approx-max-blocks` per approximate rank;
//! - ingest gaps not followed by as many resubscriptions (`resumes` + `dumps`), any
//!   `*unrecovered*` counter nonzero, more block events applied from Deltas than the
//!   engines published (a doubled delta; fewer is legitimate: a publisher shut down or
//!   killed may take its last unsent deltas with it, and dumps are counted apart);
//! - bad traffic the daemon did not count (fewer `rejected_unauthorized`,
//!   `rejected_frames` or failed handshakes than the soak provoked), and every problem the
//!   tasks found mid-run ([`Tally::fail`]: a wrong reply, a leave not removed, ...);
//! - the reference model counting an anomaly (a bug of the soak itself).

use std::process::ExitStatus;
use std::time::Duration;

use super::exactness::Exactness;
use super::sampler::Row;
use super::tally::Tally;
use kvroute_core::metrics_page::MetricsPage;

/// Everything the verdict looks at.
pub struct Evidence<'a> {
    pub duration: Duration,
    pub warmup: Duration,
    pub rss_growth_mb: f64,
    pub rss_max_mb: f64,
    pub max_healthz_misses: usize,
    pub approx_max_blocks: u64,
    pub approx_ranks: u64,
    pub dp_size: u32,
    pub insecure: bool,
    pub rows: &'a [Row],
    pub scrape_errors: &'a [String],
    /// `/metrics` after settling.
    pub last: &'a MetricsPage,
    pub tally: &'a Tally,
    pub exactness: &'a Exactness,
    /// Held (rank, block) pairs of the engines' references.
    pub reference_held: usize,
    pub reference_anomalies: u64,
    /// Set if the daemon exited before the end of the run.
    pub died: Option<ExitStatus>,
    /// The exit after SIGTERM.
    pub stopped: Result<ExitStatus, String>,
    pub log_path: String,
}

const ANOMALIES: [&str; 5] = ["duplicate_store", "unknown_parent", "unknown_remove", "stale_event", "unknown_rank"];

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Prints the summary and returns the failures (see the module docs).
pub fn judge(e: &Evidence<'_>) -> Vec<String> {
    let mut failures: Vec<String> = Vec::new();
    let x = e.last;
    let t = e.tally;
    let r = Tally::read;

    // The process.
    if let Some(status) = e.died {
        failures.push(format!("the daemon exited during the run ({status}); see {}", e.log_path));
    }
    match &e.stopped {
        Ok(status) if status.success() => {}
        Ok(status) => failures.push(format!("the daemon exited with {status} after SIGTERM (want 0)")),
        Err(error) => failures.push(error.clone()),
    }

    // Memory.
    let after: Vec<&Row> = e.rows.iter().filter(|row| row.elapsed >= e.warmup).collect();
    let rss_min = after.iter().map(|row| row.rss_kib).min();
    let rss_max = after.iter().map(|row| row.rss_kib).max();
    match (rss_min, rss_max) {
        (Some(min), Some(max)) => {
            if mb(max) > mb(min) + e.rss_growth_mb {
                failures.push(format!(
                    "RSS grew after the warm-up: {:.1} MB -> {:.1} MB, above the bound of +{} MB",
                    mb(min),
                    mb(max),
                    e.rss_growth_mb
                ));
            }
            if mb(max) > e.rss_max_mb {
                failures.push(format!("RSS reached {:.1} MB, above --rss-max-mb {}", mb(max), e.rss_max_mb));
            }
        }
        _ => failures.push(format!("no sample after the {:?} warm-up: run longer than the warm-up", e.warmup)),
    }

    // Health and scrapes.
    let misses = e.rows.iter().filter(|row| row.healthz_miss).count();
    if misses > e.max_healthz_misses {
        failures
            .push(format!("{misses} health checks missed (slow or failed), at most {} allowed", e.max_healthz_misses));
    }
    if !e.scrape_errors.is_empty() {
        failures.push(format!("{} samples failed, first: {}", e.scrape_errors.len(), e.scrape_errors[0]));
    }

    // Exactness.
    let ex = e.exactness;
    if ex.mismatches > 0 {
        failures
            .push(format!("{} of {} chains differ from the reference: {:?}", ex.mismatches, ex.chains, ex.examples));
    }
    if ex.nonzero == 0 {
        failures.push("the reference holds nothing of the compared chains: the check compared nothing".into());
    }

    // Index anomalies, every tier.
    for name in ANOMALIES {
        for tier in ["device", "host", "disk"] {
            let value = x.value(&format!("kvroute_index_{name}_total"), &[("tier", tier)]);
            if value > 0 {
                failures.push(format!(
                    "kvroute_index_{name}_total{{tier=\"{tier}\"}} is {value} (want 0: see the soak's docs)"
                ));
            }
        }
    }
    if e.reference_anomalies > 0 {
        failures.push(format!(
            "the reference model counted {} anomalies: the soak's engines are wrong",
            e.reference_anomalies
        ));
    }

    // Requests: the daemon's counts equal the clients'.
    let decisions = x.value("kvroute_route_decisions_total", &[("endpoint", "route"), ("outcome", "ok")]);
    let lifecycle = |event: &str| x.value("kvroute_request_lifecycle_total", &[("event", event), ("outcome", "ok")]);
    let compare = [
        ("route decisions (ok)", decisions, r(&t.routes_ok)),
        ("finish calls (ok)", lifecycle("finish"), r(&t.finishes_ok)),
        ("prefill_done calls (ok)", lifecycle("prefill_done"), r(&t.prefill_done_ok)),
    ];
    for (what, daemon, clients) in compare {
        if daemon != clients {
            failures.push(format!("the daemon counted {daemon} {what}, the clients got {clients} 200 replies"));
        }
    }
    let active = x.value("kvroute_active_requests", &[]);
    if active != 0 {
        failures.push(format!("{active} requests still active after every one was finished"));
    }
    let approx = x.value("kvroute_approx_blocks", &[]);
    if approx > e.approx_max_blocks * e.approx_ranks {
        failures.push(format!(
            "{approx} approximate blocks, above {} per rank x {} ranks",
            e.approx_max_blocks, e.approx_ranks
        ));
    }

    // The index's size gauge: every block it holds is the reference's or an approximate one.
    if let Some(held) = x.get("kvroute_index_held_blocks", &[("tier", "device")]) {
        let expected = e.reference_held as u64 + approx;
        if held as u64 != expected {
            failures.push(format!(
                "the index holds {held} (rank, block) pairs, the reference {} plus {approx} approximate",
                e.reference_held
            ));
        }
    }

    // Periodic snapshots (written under the churn).
    let (writes, write_failures) =
        (x.value("kvroute_snapshot_writes_total", &[]), x.value("kvroute_snapshot_write_failures_total", &[]));
    if writes == 0 || write_failures > 0 {
        failures.push(format!("{writes} snapshots written, {write_failures} writes failed"));
    }

    // Ingest recovery.
    let ingest = |name: &str| x.value(&format!("kvroute_ingest_{name}_total"), &[]);
    let (gaps, resumes, dumps) = (ingest("gaps"), ingest("resumes"), ingest("dumps"));
    if gaps > resumes + dumps {
        failures.push(format!("{gaps} ingest gaps but only {resumes} resumes and {dumps} dumps"));
    }
    let (published, applied) = (r(&t.block_events_published), ingest("block_events_applied"));
    if applied > published {
        failures.push(format!(
            "the ingest applied {applied} block events, more than the {published} the engines published"
        ));
    }
    for name in ["kvroute_ingest_unrecovered_total", "kvroute_engine_unrecovered_batches_total"] {
        if x.value(name, &[]) > 0 {
            failures.push(format!("{name} is {}", x.value(name, &[])));
        }
    }

    // Bad traffic counted by the daemon.
    let provoked = [
        ("rejected_unauthorized", ingest("rejected_unauthorized"), r(&t.quic_wrong_worker) * u64::from(e.dp_size)),
        ("rejected_frames", ingest("rejected_frames"), r(&t.quic_garbage)),
        ("handshakes_failed", ingest("handshakes_failed"), r(&t.quic_certs_refused)),
    ];
    for (name, daemon, soak) in provoked {
        if daemon < soak {
            failures.push(format!("kvroute_ingest_{name}_total is {daemon}, below the {soak} the soak provoked"));
        }
    }
    if r(&t.leaves_verified) != r(&t.leaves) {
        failures.push(format!("{} of {} leaves verified", r(&t.leaves_verified), r(&t.leaves)));
    }
    let (count, messages) = t.failures();
    if count > 0 {
        failures.push(format!("{count} problems during the run, first: {messages:#?}"));
    }

    // The summary.
    let healthz_max = e.rows.iter().filter_map(|row| row.healthz).max().unwrap_or_default();
    println!("\n== soak summary ==");
    println!("machine        {}", crate::machine::Machine::this().line());
    println!(
        "duration       {:.0} s (warm-up {:.0} s), {} samples; daemon log {}",
        e.duration.as_secs_f64(),
        e.warmup.as_secs_f64(),
        e.rows.len(),
        e.log_path
    );
    match (rss_min, rss_max) {
        (Some(min), Some(max)) => println!(
            "RSS            after warm-up min {:.1} MB, max {:.1} MB (growth {:.1} MB; bounds +{} MB, {} MB); first sample {:.1} MB",
            mb(min),
            mb(max),
            mb(max) - mb(min),
            e.rss_growth_mb,
            e.rss_max_mb,
            e.rows.first().map_or(0.0, |row| mb(row.rss_kib))
        ),
        _ => println!("RSS            no sample after the warm-up"),
    }
    println!(
        "routes         {} ok ({} to exact-mode workers, {} with cached blocks; {} to approximate-mode, {} with \
         approximate blocks, {} restricted to them; {} to an engine that was down); daemon: {} ok decisions",
        r(&t.routes_ok),
        r(&t.routed_exact),
        r(&t.routed_exact_hits),
        r(&t.routed_approx),
        r(&t.routed_approx_hits),
        r(&t.routes_approx_only),
        r(&t.served_down),
        decisions
    );
    println!(
        "requests       {} finished, {} prefill_done; daemon: active {}, approximate blocks {}",
        r(&t.finishes_ok),
        r(&t.prefill_done_ok),
        active,
        approx
    );
    let held = x.get("kvroute_index_held_blocks", &[("tier", "device")]);
    println!(
        "events         engines published {} block events; ingest applied {} block events ({} events in {} Deltas \
         frames), {} dumps, {} resumes, {} gaps",
        r(&t.block_events_published),
        ingest("block_events_applied"),
        ingest("events_applied"),
        ingest("deltas_frames"),
        dumps,
        resumes,
        gaps
    );
    println!(
        "index          device: {} events applied, {} blocks stored, {} removed; held (rank, block) pairs: daemon {}, \
         reference {} + approximate {}",
        x.value("kvroute_index_events_applied_total", &[("tier", "device")]),
        x.value("kvroute_index_blocks_stored_total", &[("tier", "device")]),
        x.value("kvroute_index_blocks_removed_total", &[("tier", "device")]),
        held.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.0}")),
        e.reference_held,
        approx
    );
    let anomalies: Vec<String> = ANOMALIES
        .iter()
        .map(|name| format!("{name} {}", x.value(&format!("kvroute_index_{name}_total"), &[])))
        .collect();
    println!("anomalies      {} (all tiers)", anomalies.join(", "));
    println!(
        "snapshots      {} written (every {}), {} failed, last {} bytes",
        x.value("kvroute_snapshot_writes_total", &[]),
        super::daemon::SNAPSHOT_INTERVAL,
        x.value("kvroute_snapshot_write_failures_total", &[]),
        x.value("kvroute_snapshot_bytes", &[])
    );
    println!(
        "churn          {} restarts, {} crashes, {} leaves past the grace ({} verified); ingest removed {} ranks after \
         the grace",
        r(&t.restarts),
        r(&t.crashes),
        r(&t.leaves),
        r(&t.leaves_verified),
        ingest("ranks_removed_after_grace")
    );
    println!(
        "bad HTTP       {} sent ({} slow-header and {} idle keep-alive connections closed by the daemon); daemon \
         refused {} connections",
        r(&t.bad_http_sent),
        r(&t.slow_headers_closed),
        r(&t.idle_keepalive_closed),
        x.value("kvroute_http_connections_refused_total", &[])
    );
    println!(
        "bad QUIC       {} random datagrams, {} certificate refusals, {} wrong-worker Hellos, {} garbage streams; \
         daemon: {} handshakes failed, {} rejected unauthorized, {} rejected frames{}",
        r(&t.bad_datagrams),
        r(&t.quic_certs_refused),
        r(&t.quic_wrong_worker),
        r(&t.quic_garbage),
        ingest("handshakes_failed"),
        ingest("rejected_unauthorized"),
        ingest("rejected_frames"),
        if e.insecure { " (--insecure: certificate rejection NOT exercised)" } else { "" }
    );
    println!(
        "healthz        {misses} misses in {} samples, slowest {:.1} ms",
        e.rows.len(),
        healthz_max.as_secs_f64() * 1e3
    );
    println!(
        "exactness      {} chains compared ({} with cached blocks), {} mismatches, {} round(s)",
        ex.chains, ex.nonzero, ex.mismatches, ex.rounds
    );
    failures
}
