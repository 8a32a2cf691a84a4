//! The request lifecycle endpoints: `POST /v1/requests/{id}/prefill_done` (the first
//! token is out: the request's prefill tokens leave its rank's load) and `POST
//! /v1/requests/{id}/finish` (done or cancelled: all its load is released). An id that
//! is not active — finished, expired, never routed, or (for prefill_done) already marked
//! — is 404 `unknown_request`.

use axum::extract::State;
use axum::Json;
use kvroute_core::route::RequestId;

use super::api_error::{ApiError, ErrorKind};
use super::metrics::LifecycleEvent;
use super::path_id::PathId;
use super::state::AppState;

/// Response of the lifecycle endpoints.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LifecycleResponse {
    pub request_id: u64,
    /// `prefill_done` or `finish`.
    pub event: &'static str,
}

/// `POST /v1/requests/{id}/prefill_done`.
pub async fn prefill_done(
    State(state): State<AppState>,
    id: Result<PathId, ApiError>,
) -> Result<Json<LifecycleResponse>, ApiError> {
    let PathId(id) = id?;
    let known = state.router.prefill_done(RequestId(id));
    record(&state, LifecycleEvent::PrefillDone, id, known, "is not active or its prefill_done was already reported")
}

/// `POST /v1/requests/{id}/finish`.
pub async fn finish(
    State(state): State<AppState>,
    id: Result<PathId, ApiError>,
) -> Result<Json<LifecycleResponse>, ApiError> {
    let PathId(id) = id?;
    let known = state.router.finish(RequestId(id));
    record(&state, LifecycleEvent::Finish, id, known, "is not active (already finished, expired or never routed)")
}

fn record(
    state: &AppState,
    event: LifecycleEvent,
    id: u64,
    known: bool,
    unknown_reason: &str,
) -> Result<Json<LifecycleResponse>, ApiError> {
    state.metrics.record_lifecycle(event, known);
    if !known {
        return Err(ApiError::new(ErrorKind::UnknownRequest, format!("request {id} {unknown_reason}")));
    }
    Ok(Json(LifecycleResponse { request_id: id, event: event.as_str() }))
}
