//! `POST /v1/workers/{id}/load`: a worker's engine-reported load, pushed by whatever reads
//! the engines' own metrics (a sidecar scraping vLLM's `num_requests_running` and
//! `num_requests_waiting`, SGLang's `num_running_reqs` and `num_queue_reqs`, ...).
//!
//! The body lists ranks of the worker, each with any of `prefill_tokens` (prompt tokens
//! still to prefill), `decode_blocks` (KV blocks of the requests it holds) and `requests`
//! (requests running or waiting), in the router's units; a field left out is not reported.
//! Every rank is checked before any is applied (404 for an unknown worker, 400 for a rank
//! outside its range or a bad body), then each goes to
//! [`Router::apply_load_report`](kvroute_core::route::Router::apply_load_report): what it
//! has beyond this router's own requests counts as other router replicas' load until
//! `load_report_ttl` passes. Answer 204; reports are counted in `/metrics`
//! (`kvroute_load_reports_total`).

use axum::extract::State;
use axum::http::StatusCode;
use kvroute_core::route::LoadReport;
use kvroute_core::{DpRank, WorkerId};

use super::api_error::ApiError;
use super::json_body::JsonBody;
use super::path_id::PathId;
use super::state::AppState;

/// Body of `POST /v1/workers/{id}/load`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadReportBody {
    pub ranks: Vec<RankReport>,
}

/// One rank's report.
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankReport {
    pub dp_rank: u32,
    pub prefill_tokens: Option<u64>,
    pub decode_blocks: Option<u64>,
    pub requests: Option<u64>,
}

/// `POST /v1/workers/{id}/load`: 204.
pub async fn report_load(
    State(state): State<AppState>,
    id: Result<PathId, ApiError>,
    body: Result<JsonBody<LoadReportBody>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let PathId(id) = id?;
    let JsonBody(body) = body?;
    if body.ranks.is_empty() {
        return Err(ApiError::invalid("ranks is empty: report at least one rank"));
    }
    let reports: Vec<(DpRank, LoadReport)> = body
        .ranks
        .iter()
        .map(|r| {
            let report =
                LoadReport { prefill_tokens: r.prefill_tokens, decode_blocks: r.decode_blocks, requests: r.requests };
            (DpRank(r.dp_rank), report)
        })
        .collect();
    // An unknown worker is a 404, a rank outside it a 400; either way nothing is applied.
    state.router.apply_load_reports(WorkerId(id), &reports)?;
    for _ in &reports {
        state.metrics.record_load_report();
    }
    Ok(StatusCode::NO_CONTENT)
}
