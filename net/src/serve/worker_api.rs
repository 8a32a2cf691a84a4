//! The worker registry endpoints: `POST /v1/workers` (register; body a
//! [`WorkerRegistration`]; its `url` makes it an upstream of the routing proxy),
//! `DELETE /v1/workers/{id}`, `GET /v1/workers` (each worker with
//! its mode — `exact` once it has sent a KV event, `approximate` before — and per-rank
//! load).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use kvroute_core::route::{BootstrapEndpoint, LoadSnapshot, Role, WorkerSpec};
use kvroute_core::WorkerId;

use super::api_error::{ApiError, ErrorKind};
use super::json_body::JsonBody;
use super::path_id::PathId;
use super::state::AppState;
use super::worker_registration::WorkerRegistration;

/// Whether the router learns a worker's cache from its KV events or from its own routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMode {
    /// The worker publishes KV events.
    Exact,
    /// No KV event yet: the router records what it routed there.
    Approximate,
}

/// One rank's load, from the requests the router sent there.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RankListing {
    pub dp_rank: u32,
    /// Prompt tokens routed and not yet prefilled.
    pub prefill_tokens: u64,
    /// KV blocks of running requests.
    pub decode_blocks: u64,
    /// Requests active on the rank.
    pub requests: u64,
}

/// A registered worker.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WorkerListing {
    pub worker_id: u64,
    pub role: Role,
    pub dp_start: u32,
    pub dp_size: u32,
    /// The server's DP size (the bootstrap room modulus).
    pub dp_world_size: u32,
    pub block_size: u32,
    pub bootstrap: Option<BootstrapEndpoint>,
    pub mode: WorkerMode,
    pub ranks: Vec<RankListing>,
}

/// Response of `GET /v1/workers`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WorkerList {
    pub workers: Vec<WorkerListing>,
    /// Requests routed and not yet finished or expired.
    pub active_requests: usize,
}

fn listing(spec: &WorkerSpec, exact: bool, ranks: Vec<RankListing>) -> WorkerListing {
    WorkerListing {
        worker_id: spec.worker.0,
        role: spec.role,
        dp_start: spec.dp_start,
        dp_size: spec.dp_size,
        dp_world_size: spec.dp_world(),
        block_size: spec.block_size,
        bootstrap: spec.bootstrap.clone(),
        mode: if exact { WorkerMode::Exact } else { WorkerMode::Approximate },
        ranks,
    }
}

fn rank_listing(dp_rank: u32, load: LoadSnapshot) -> RankListing {
    RankListing {
        dp_rank,
        prefill_tokens: load.prefill_tokens,
        decode_blocks: load.decode_blocks,
        requests: load.requests,
    }
}

/// Every registered worker with its ranks' loads.
pub fn list_workers(state: &AppState) -> WorkerList {
    let router = &state.router;
    let mut loads: BTreeMap<WorkerId, Vec<RankListing>> = BTreeMap::new();
    for (key, load) in router.rank_loads() {
        loads.entry(key.worker).or_default().push(rank_listing(key.dp_rank.0, load));
    }
    let workers = router
        .workers()
        .iter()
        // A worker removed between the two reads is left out.
        .filter_map(|spec| {
            let exact = router.is_exact(spec.worker)?;
            Some(listing(spec, exact, loads.remove(&spec.worker).unwrap_or_default()))
        })
        .collect();
    WorkerList { workers, active_requests: router.active_requests() }
}

/// `GET /v1/workers`.
pub async fn get_workers(State(state): State<AppState>) -> Json<WorkerList> {
    Json(list_workers(&state))
}

/// `POST /v1/workers`: 201 with the new worker's listing.
pub async fn add_worker(
    State(state): State<AppState>,
    body: Result<JsonBody<WorkerRegistration>, ApiError>,
) -> Result<(StatusCode, Json<WorkerListing>), ApiError> {
    let JsonBody(registration) = body?;
    let spec = registration
        .to_spec(state.router.config().block_size)
        .map_err(|reason| ApiError::new(ErrorKind::InvalidWorker, reason))?;
    let source = registration.engine_source().map_err(|reason| ApiError::new(ErrorKind::InvalidWorker, reason))?;
    let upstream = registration.upstream().map_err(|reason| ApiError::new(ErrorKind::InvalidWorker, reason))?;
    let engines = match (&source, state.engine_ingest()) {
        (Some(_), None) => {
            return Err(ApiError::new(ErrorKind::InvalidWorker, "this server does not subscribe to engine KV events"))
        }
        (_, engines) => engines,
    };
    state.router.add_worker(spec.clone())?;
    if let (Some(source), Some(engines)) = (source, engines) {
        if let Err(error) = engines.add(source) {
            // Registered a moment ago by this request: undo it.
            let _ = state.router.remove_worker(spec.worker);
            return Err(ApiError::new(ErrorKind::InvalidWorker, error.to_string()));
        }
    }
    if let Some(upstream) = upstream {
        state.proxy.upstreams.insert(upstream);
    }
    tracing::info!(worker = spec.worker.0, dp_size = spec.dp_size, role = ?spec.role, "worker registered");
    let ranks =
        (spec.dp_start..spec.dp_start + spec.dp_size).map(|r| rank_listing(r, LoadSnapshot::default())).collect();
    let exact = state.router.is_exact(spec.worker).unwrap_or(false);
    Ok((StatusCode::CREATED, Json(listing(&spec, exact, ranks))))
}

/// `DELETE /v1/workers/{id}`: 204.
pub async fn remove_worker(
    State(state): State<AppState>,
    id: Result<PathId, ApiError>,
) -> Result<StatusCode, ApiError> {
    let PathId(id) = id?;
    state.router.remove_worker(WorkerId(id))?;
    if let Some(engines) = state.engine_ingest() {
        engines.remove(WorkerId(id));
    }
    state.proxy.upstreams.remove(WorkerId(id));
    tracing::info!(worker = id, "worker removed");
    Ok(StatusCode::NO_CONTENT)
}
