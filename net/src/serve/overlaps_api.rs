//! `POST /v1/overlaps`: what the index holds of a prompt. For a prompt (`tokens`, with the
//! request's optional `lora_name`, `cache_salt` and per-block `extra_keys`, or
//! `block_hashes`), every (worker, dp_rank, tier) with a non-zero overlap, so that an
//! operator or a check can see exactly what the engines' events put there. Nothing is
//! charged or recorded.

use axum::extract::State;
use axum::Json;
use kvroute_core::tier::StorageTier;
use kvroute_core::BlockHash;

use super::api_error::ApiError;
use super::json_body::JsonBody;
use super::route_api::{extra_keys_of, impl_prompt_fields, prompt, PromptFields};
use super::state::AppState;

/// Body of `POST /v1/overlaps`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlapsBody {
    #[serde(default)]
    pub tokens: Option<Vec<u32>>,
    #[serde(default)]
    pub block_hashes: Option<Vec<BlockHash>>,
    #[serde(default)]
    pub lora_name: Option<String>,
    #[serde(default)]
    pub cache_salt: Option<String>,
    #[serde(default)]
    pub extra_keys: Option<Vec<Option<Vec<serde_json::Value>>>>,
}

impl_prompt_fields!(OverlapsBody);

/// One (worker, dp_rank, tier) holding a prefix of the prompt.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OverlapJson {
    pub worker_id: u64,
    pub dp_rank: u32,
    pub tier: StorageTier,
    pub overlap_blocks: u32,
}

/// Response of `POST /v1/overlaps`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OverlapsResponse {
    /// The prompt's full blocks.
    pub blocks: usize,
    /// By tier (device, host, disk), then worker and rank; only non-zero overlaps.
    pub overlaps: Vec<OverlapJson>,
}

/// `POST /v1/overlaps`.
pub async fn overlaps(
    State(state): State<AppState>,
    body: Result<JsonBody<OverlapsBody>, ApiError>,
) -> Result<Json<OverlapsResponse>, ApiError> {
    let JsonBody(body) = body?;
    let fields = body.prompt_fields();
    let keys = extra_keys_of(&fields);
    let prompt = prompt(&state, &fields, &keys)?;
    let (found, blocks) = state.router.overlaps(prompt)?;
    let overlaps = found
        .into_iter()
        .map(|(tier, rank, overlap_blocks)| OverlapJson {
            worker_id: rank.worker.0,
            dp_rank: rank.dp_rank.0,
            tier,
            overlap_blocks,
        })
        .collect();
    Ok(Json(OverlapsResponse { blocks, overlaps }))
}
