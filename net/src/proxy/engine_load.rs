//! Engine load scrapes: every `engine_load_interval`, each proxy upstream's own `/metrics`
//! (vLLM's or SGLang's Prometheus page) is read, its per-rank running and waiting
//! requests taken out (`kvroute_core::route::engine_load_reports`) and applied to the
//! router as load reports (`Router::apply_load_report`), so that router replicas in front
//! of the same fleet each count the requests the others sent.
//!
//! Upstreams are scraped concurrently, each within the probe timeout; a scrape that fails
//! (no answer, a non-2xx status, a page without the gauges) changes nothing, is counted
//! (`kvroute_proxy_load_scrapes_total{outcome}`) and logged at debug, and the reports it
//! would have refreshed expire after `load_report_ttl`. A scrape still running at the next
//! tick is not doubled: ticks missed while one runs are skipped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kvroute_core::metrics_page::MetricsPage;
use kvroute_core::route::{engine_load_reports, Router};

use super::upstreams::Upstream;
use super::Proxy;

impl Proxy {
    /// Scrapes every upstream's `/metrics` each `interval` until `stop` turns true.
    pub async fn run_load_scrapes(
        self: Arc<Self>,
        router: Arc<Router>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let scrapes = self.upstreams.all().into_iter().map(|upstream| {
                let (proxy, router) = (Arc::clone(&self), Arc::clone(&router));
                async move { proxy.scrape_load(&router, &upstream).await }
            });
            futures::future::join_all(scrapes).await;
        }
    }

    async fn scrape_load(&self, router: &Router, upstream: &Upstream) {
        let outcome = match self.client.get(&upstream.url("/metrics"), self.config.probe_timeout).await {
            Ok((status, body)) if status.is_success() => apply_page(router, upstream, &body),
            Ok((status, _)) => Err(format!("status {status}")),
            Err(error) => Err(error),
        };
        let counter = match &outcome {
            Ok(_) => &self.metrics.load_scrapes,
            Err(error) => {
                tracing::debug!(worker = upstream.worker.0, url = %upstream.base, %error, "engine load scrape failed");
                &self.metrics.load_scrape_failures
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Applies what `body` says of `upstream`'s ranks; how many ranks it reported.
fn apply_page(router: &Router, upstream: &Upstream, body: &[u8]) -> Result<usize, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the page is not UTF-8".to_owned())?;
    let spec = router.worker(upstream.worker).ok_or("the worker is no longer registered")?;
    let reports = engine_load_reports(&MetricsPage::parse(text), spec.dp_start..spec.dp_start + spec.dp_size);
    if reports.is_empty() {
        return Err("no running/waiting request gauges for the worker's ranks".to_owned());
    }
    router.apply_load_reports(upstream.worker, &reports).map_err(|e| e.to_string())?;
    Ok(reports.len())
}
