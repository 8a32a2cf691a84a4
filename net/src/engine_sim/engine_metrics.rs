//! `GET /metrics` of the simulator: the load gauges of the engine it imitates, under the
//! engine's own names and labels, so that a router scraping real engines
//! (`kvroute serve --proxy-engine-load-interval`) scrapes the simulator the same way.
//!
//! vLLM (V1): `vllm:num_requests_running` and `vllm:num_requests_waiting`, labelled
//! `model_name` and `engine` (the DP rank). SGLang: `sglang:num_running_reqs` and
//! `sglang:num_queue_reqs`, labelled `model_name` and `dp_rank`. The simulator has no
//! separate waiting queue (a rank prefills its requests in turn), so every in-flight
//! request is reported as running and the waiting gauge is 0. Encoded by
//! `prometheus-client` in the text format 0.0.4.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::config::EngineKind;
use super::serving::SimState;

type Labels = Vec<(&'static str, String)>;

/// `GET /metrics`.
pub async fn metrics(State(state): State<Arc<SimState>>) -> impl IntoResponse {
    let (running_name, waiting_name, rank_label) = match state.config.kind {
        EngineKind::Vllm => ("vllm:num_requests_running", "vllm:num_requests_waiting", "engine"),
        EngineKind::Sglang => ("sglang:num_running_reqs", "sglang:num_queue_reqs", "dp_rank"),
    };
    let running = Family::<Labels, Gauge>::default();
    let waiting = Family::<Labels, Gauge>::default();
    for (rank, stats) in state.stats().iter().enumerate() {
        let labels = vec![("model_name", state.config.served_model_name.clone()), (rank_label, rank.to_string())];
        running.get_or_create(&labels).set(i64::from(stats.in_flight));
        waiting.get_or_create(&labels).set(0);
    }
    let mut registry = Registry::default();
    registry.register(running_name, "Requests in model execution (simulated: every in-flight one).", running);
    registry.register(waiting_name, "Requests waiting to be scheduled (simulated: none).", waiting);
    let mut page = String::new();
    // Encoding into a String fails only if a metric fails to encode, and gauges do not.
    if let Err(error) = prometheus_text::encode(&mut page, &registry) {
        tracing::error!(%error, "simulator metrics incomplete");
    }
    ([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], page)
}
