//! The periodic sample: [`run_sampler`] reads, every `--sample-secs`, the daemon's
//! resident memory (`VmRSS`), times a `GET /healthz` on a fresh connection, scrapes
//! `/metrics`, prints one line and keeps a [`Row`] for the verdict.
//!
//! A line: elapsed seconds, RSS in MB, the index's held (rank, block) pairs and nodes of
//! the device tier (`kvroute_index_held_blocks` / `kvroute_index_nodes`, "n/a" on a build
//! without those gauges), successful route decisions so far, block events the ingest
//! applied, active requests, approximate-mode blocks, open publisher connections and the
//! health check's time. A health check slower than `healthz_limit`, failed, or not 200 is
//! a miss (counted in the row, and marked `MISS` on the line).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::api;
use super::daemon::rss_kib;
use crate::http_client::HttpClient;
use kvroute_core::metrics_page::MetricsPage;

/// One sample.
#[derive(Clone, Debug)]
pub struct Row {
    pub elapsed: Duration,
    pub rss_kib: u64,
    /// The health check's time; `None` if it failed.
    pub healthz: Option<Duration>,
    pub healthz_miss: bool,
    pub held_blocks: Option<u64>,
    pub nodes: Option<u64>,
    pub decisions: u64,
    pub block_events_applied: u64,
    pub active_requests: u64,
    pub approx_blocks: u64,
    pub connections_open: u64,
}

/// What the sampler reads.
#[derive(Clone)]
pub struct SamplerContext {
    pub http: SocketAddr,
    pub pid: u32,
    pub healthz_limit: Duration,
    pub started: Instant,
}

fn optional(value: Option<u64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| v.to_string())
}

/// The values a row keeps from a scrape.
fn row_of(context: &SamplerContext, rss_kib: u64, healthz: Option<Duration>, x: &MetricsPage) -> Row {
    let device = [("tier", "device")];
    Row {
        elapsed: context.started.elapsed(),
        rss_kib,
        healthz_miss: healthz.is_none_or(|t| t > context.healthz_limit),
        healthz,
        held_blocks: x.get("kvroute_index_held_blocks", &device).map(|v| v as u64),
        nodes: x.get("kvroute_index_nodes", &device).map(|v| v as u64),
        decisions: x.value("kvroute_route_decisions_total", &[("endpoint", "route"), ("outcome", "ok")]),
        block_events_applied: x.value("kvroute_ingest_block_events_applied_total", &[]),
        active_requests: x.value("kvroute_active_requests", &[]),
        approx_blocks: x.value("kvroute_approx_blocks", &[]),
        connections_open: x.value("kvroute_ingest_connections_open", &[]),
    }
}

/// Takes one sample now and prints its line.
pub async fn sample(context: &SamplerContext, client: &mut HttpClient) -> Result<Row, String> {
    let rss = rss_kib(context.pid)?;
    let started = Instant::now();
    let healthz = match HttpClient::new(context.http).get("/healthz").await {
        Ok(response) if response.status == 200 => Some(started.elapsed()),
        _ => None,
    };
    let metrics = api::metrics(client).await?;
    let row = row_of(context, rss, healthz, &metrics);
    println!(
        "[{:>5.0} s] rss {:>7.1} MB | index held {} nodes {} | decisions {:>8} | block events applied {:>10} | \
         active {:>3} | approx blocks {:>7} | QUIC connections {} | healthz {}{}",
        row.elapsed.as_secs_f64(),
        row.rss_kib as f64 / 1024.0,
        optional(row.held_blocks),
        optional(row.nodes),
        row.decisions,
        row.block_events_applied,
        row.active_requests,
        row.approx_blocks,
        row.connections_open,
        row.healthz.map_or_else(|| "failed".to_owned(), |t| format!("{:.1} ms", t.as_secs_f64() * 1e3)),
        if row.healthz_miss { " MISS" } else { "" },
    );
    Ok(row)
}

/// Samples every `every` until `stop`; returns the rows and the scrape errors.
pub async fn run_sampler(
    context: SamplerContext,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> (Vec<Row>, Vec<String>) {
    let mut client = HttpClient::new(context.http);
    let (mut rows, mut errors) = (Vec::new(), Vec::new());
    let mut next = Instant::now() + every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        next += every;
        match sample(&context, &mut client).await {
            Ok(row) => rows.push(row),
            Err(error) => {
                println!("[{:>5.0} s] sample failed: {error}", context.started.elapsed().as_secs_f64());
                errors.push(error);
            }
        }
    }
    (rows, errors)
}
