//! The HTTP/JSON API as an axum [`Router`](axum::Router): [`app`] wires every endpoint to
//! its handler over an [`AppState`], with a request body limit, a request deadline
//! (tower-http's timeout: 408 for a request, slow body included, not answered within
//! `limits.request_timeout`; counted), JSON 404/405 answers,
//! `/healthz` and `/metrics`, and, when the state has a token, the bearer-token check
//! ([`auth::require_bearer`]) in front of everything but `GET /healthz`.
//!
//! | method | path | |
//! |---|---|---|
//! | POST | `/v1/route` | [`route_api::route`] |
//! | POST | `/v1/route/disaggregated` | [`route_api::route_disaggregated`] |
//! | POST | `/v1/overlaps` | [`overlaps_api::overlaps`] |
//! | POST | `/v1/requests/{id}/prefill_done` | [`request_api::prefill_done`] |
//! | POST | `/v1/requests/{id}/finish` | [`request_api::finish`] |
//! | GET, POST | `/v1/workers` | [`worker_api::get_workers`], [`worker_api::add_worker`] |
//! | DELETE | `/v1/workers/{id}` | [`worker_api::remove_worker`] |
//! | POST | `/v1/workers/{id}/load` | [`load_report_api::report_load`] |
//! | GET | `/metrics` | Prometheus text ([`exposition::render`]) |
//! | GET | `/healthz` | `ok`, or 503 `shutting down` |
//! | POST | `/v1/completions`, `/v1/chat/completions` | the routing proxy ([`proxy_api`]) |
//! | GET | `/v1/models` | the upstreams' models ([`proxy_api`]) |
//!
//! The proxy's routes are outside the request deadline (a generation may run for
//! minutes; the proxy bounds its upstream waits itself) but inside the body limit and the
//! bearer-token check.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use std::sync::atomic::Ordering;

use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use tower_http::timeout::TimeoutLayer;

use super::api_error::{ApiError, ErrorKind};
use super::state::AppState;
use super::{auth, exposition, load_report_api, overlaps_api, proxy_api, request_api, route_api, worker_api};

/// The daemon's HTTP application.
pub fn app(state: AppState) -> axum::Router {
    let body_limit = state.limits.max_body_bytes;
    let router = axum::Router::new()
        .route("/v1/route", post(route_api::route))
        .route("/v1/route/disaggregated", post(route_api::route_disaggregated))
        .route("/v1/overlaps", post(overlaps_api::overlaps))
        .route("/v1/requests/{id}/prefill_done", post(request_api::prefill_done))
        .route("/v1/requests/{id}/finish", post(request_api::finish))
        .route("/v1/workers", get(worker_api::get_workers).post(worker_api::add_worker))
        .route("/v1/workers/{id}", axum::routing::delete(worker_api::remove_worker))
        .route("/v1/workers/{id}/load", post(load_report_api::report_load))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let request_timeout = state.limits.request_timeout;
    let api = router
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, request_timeout))
        .layer(axum::middleware::map_response_with_state(state.clone(), count_timeouts));
    let proxy = axum::Router::new()
        .route("/v1/completions", post(proxy_api::completions))
        .route("/v1/chat/completions", post(proxy_api::chat_completions))
        .route("/v1/models", get(proxy_api::models));
    let router = api.merge(proxy);
    // After the routes and fallbacks, so that it covers them all (unknown paths too).
    let router = match state.http_token() {
        Some(_) => router.layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_bearer)),
        None => router,
    };
    router.layer(DefaultBodyLimit::max(body_limit)).with_state(state)
}

/// Counts the timeout layer's 408 answers.
async fn count_timeouts(State(state): State<AppState>, response: Response) -> Response {
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        state.http_connections.timed_out.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("HTTP request timed out (408)");
    }
    response
}

/// `GET /healthz`: 200 `ok`, or 503 `shutting down` once a shutdown signal arrived.
async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else {
        (StatusCode::OK, "ok")
    }
}

/// `GET /metrics`.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, exposition::CONTENT_TYPE)], exposition::render(&state))
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorKind::NotFound, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorKind::MethodNotAllowed, "method not allowed on this endpoint")
}
