//! The simulator's routes (see the module doc of `engine_sim` for what each answers), a
//! request body limit, JSON 404s, `GET /sim/stats`, the engine's load gauges on
//! `GET /metrics` ([`engine_metrics`]), a prefill server's
//! `GET /sim/bootstrap/{room}`, and transit times: a request stamped with its send time
//! ([`SENT_AT_HEADER`]) is timed on arrival, and `GET /sim/transits` hands the times over
//! (a router's added latency is its transit minus a direct request's).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::routing::{get, post};
use serde_json::{json, Value};

use super::serving::SimState;
use super::{bootstrap, engine_metrics, generate_api, openai_api};
use crate::openai_error::OpenAiError;

/// Largest request body: a maximal prompt as JSON token ids with room to spare.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// The simulator's HTTP application over `state`.
pub fn app(state: Arc<SimState>) -> axum::Router {
    axum::Router::new()
        .route("/v1/completions", post(openai_api::completions))
        .route("/v1/chat/completions", post(openai_api::chat_completions))
        .route("/v1/models", get(openai_api::models))
        .route("/tokenize", post(openai_api::tokenize))
        .route("/generate", post(generate_api::generate))
        .route("/get_server_info", get(generate_api::server_info))
        .route("/server_info", get(generate_api::server_info))
        .route("/get_model_info", get(generate_api::model_info))
        .route("/health", get(health))
        .route("/health_generate", get(health))
        .route("/version", get(version))
        .route("/sim/stats", get(stats))
        .route("/metrics", get(engine_metrics::metrics))
        .route("/sim/bootstrap/{room}", get(bootstrap::lookup))
        .route("/sim/transits", get(transits))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), record_transit))
        .with_state(state)
}

/// The request header a load generator stamps with its send time (Unix nanoseconds), so
/// that the simulator can tell how long the request took to reach it through a router.
pub const SENT_AT_HEADER: &str = "x-kvroute-sent-at";

/// Records the transit time of a request stamped with [`SENT_AT_HEADER`] (its head's arrival
/// here minus the stamp), before anything else is done with it.
async fn record_transit(State(state): State<Arc<SimState>>, request: Request, next: Next) -> axum::response::Response {
    let sent = request.headers().get(SENT_AT_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u128>().ok());
    if let Some(sent) = sent {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        state.record_transit(now.saturating_sub(sent));
    }
    next.run(request).await
}

/// `GET /sim/transits`: the transit times recorded since the last call, in nanoseconds.
async fn transits(State(state): State<Arc<SimState>>) -> axum::Json<Value> {
    axum::Json(json!({"transit_ns": state.take_transits()}))
}

async fn health() -> &'static str {
    ""
}

async fn version() -> axum::Json<Value> {
    axum::Json(json!({"version": concat!("kvroute-sim-", env!("CARGO_PKG_VERSION"))}))
}

async fn not_found() -> OpenAiError {
    OpenAiError::not_found("no such endpoint")
}

/// `GET /sim/stats`: every rank's counters and the request counters.
async fn stats(State(state): State<Arc<SimState>>) -> axum::Json<Value> {
    let ranks: Vec<Value> = state
        .stats()
        .iter()
        .enumerate()
        .map(|(rank, s)| {
            json!({"rank": rank, "requests": s.requests, "in_flight": s.in_flight, "prompt_tokens": s.prompt_tokens,
                "cached_tokens": s.cached_tokens, "blocks_held": s.blocks_held})
        })
        .collect();
    let counters = &state.counters;
    axum::Json(json!({
        "engine": state.config.kind.name(),
        "disaggregation_mode": state.config.disaggregation.name(),
        "kv_transfers": counters.kv_transfers.load(Ordering::Relaxed),
        "kv_transfer_failures": counters.kv_transfer_failures.load(Ordering::Relaxed),
        "ranks": ranks,
        "admitted": counters.admitted.load(Ordering::Relaxed),
        "completed": counters.completed.load(Ordering::Relaxed),
        "cancelled": counters.cancelled.load(Ordering::Relaxed),
        "refused": counters.refused.load(Ordering::Relaxed),
        "batches_queued": counters.batches_queued.load(Ordering::Relaxed),
        "tokenize_requests": counters.tokenize_requests.load(Ordering::Relaxed),
    }))
}
