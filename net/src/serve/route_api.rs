//! The routing endpoints: `POST /v1/route` (aggregated: one rank does prefill and decode)
//! and `POST /v1/route/disaggregated` (a prefill rank and a decode rank tied by an SGLang
//! bootstrap room). Request bodies, response bodies and handlers.
//!
//! A prompt is `tokens` (token ids, hashed by the router, optionally with the request's
//! `lora_name`, `cache_salt` and per-block `extra_keys`, so that it matches only blocks
//! the engines stored under the same identity) or `block_hashes` (already hashed by the
//! caller with the router's scheme and block size), never both. Every call
//! is counted by outcome and its router call timed ([`super::metrics`]).

use std::time::Instant;

use axum::extract::State;
use axum::Json;
use kvroute_core::hashing::{BlockIdentity, KeyValue};
use kvroute_core::route::{
    Bootstrap, CostBreakdown, Decision, PdOptions, Prompt, RouteOptions, SglangDecodeFields, SglangPrefillFields,
    Shortfall,
};
use kvroute_core::{BlockHash, DpRank, RankKey, WorkerId};

use super::api_error::{ApiError, ErrorKind};
use super::json_body::JsonBody;
use super::metrics::Endpoint;
use super::state::AppState;

/// Body of `POST /v1/route`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    /// The prompt's token ids.
    #[serde(default)]
    pub tokens: Option<Vec<u32>>,
    /// Or the prompt's block hashes.
    #[serde(default)]
    pub block_hashes: Option<Vec<BlockHash>>,
    /// The LoRA adapter the request runs with (its blocks match only that adapter's).
    #[serde(default)]
    pub lora_name: Option<String>,
    /// The request's cache salt (vLLM `cache_salt`, SGLang `cache_salt`).
    #[serde(default)]
    pub cache_salt: Option<String>,
    /// Per block, its extra keys as the engine publishes them (e.g. multimodal
    /// `[mm_hash, offset]` pairs); `null` for a block with none.
    #[serde(default)]
    pub extra_keys: Option<Vec<Option<Vec<serde_json::Value>>>>,
    /// Only these workers are candidates.
    #[serde(default)]
    pub workers: Option<Vec<WorkerId>>,
    /// With `dp_rank`: route to this one rank (its overlap and cost are still reported).
    #[serde(default)]
    pub worker_id: Option<WorkerId>,
    #[serde(default)]
    pub dp_rank: Option<DpRank>,
    /// Decide without charging load (no request id is issued).
    #[serde(default)]
    pub dry_run: bool,
    /// Expected output tokens, charged as decode blocks until finish.
    #[serde(default)]
    pub output_tokens: u32,
}

/// Body of `POST /v1/route/disaggregated`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdRouteBody {
    #[serde(default)]
    pub tokens: Option<Vec<u32>>,
    #[serde(default)]
    pub block_hashes: Option<Vec<BlockHash>>,
    /// The LoRA adapter the request runs with (its blocks match only that adapter's).
    #[serde(default)]
    pub lora_name: Option<String>,
    /// The request's cache salt (vLLM `cache_salt`, SGLang `cache_salt`).
    #[serde(default)]
    pub cache_salt: Option<String>,
    /// Per block, its extra keys as the engine publishes them (e.g. multimodal
    /// `[mm_hash, offset]` pairs); `null` for a block with none.
    #[serde(default)]
    pub extra_keys: Option<Vec<Option<Vec<serde_json::Value>>>>,
    /// Only these prefill workers are candidates.
    #[serde(default)]
    pub prefill_workers: Option<Vec<WorkerId>>,
    /// Only these decode workers are candidates.
    #[serde(default)]
    pub decode_workers: Option<Vec<WorkerId>>,
    /// Decode on the rank index of the prefill rank.
    #[serde(default)]
    pub same_rank: bool,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub output_tokens: u32,
}

/// One side of a decision, as the API returns it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DecisionJson {
    pub worker_id: u64,
    pub dp_rank: u32,
    /// Leading prompt blocks the rank holds in device memory.
    pub overlap_blocks: u32,
    /// The most leading prompt blocks any candidate held in device memory.
    pub best_overlap_blocks: u32,
    /// Why `overlap_blocks` is below `best_overlap_blocks` (`load`, `tier`, `temperature`,
    /// `policy`); null when it is not.
    pub shortfall: Option<Shortfall>,
    pub cost: CostBreakdown,
    /// The id for `/v1/requests/{id}/prefill_done` and `/finish`; null for a dry run.
    pub request_id: Option<u64>,
}

impl From<Decision> for DecisionJson {
    fn from(d: Decision) -> DecisionJson {
        DecisionJson {
            worker_id: d.worker.0,
            dp_rank: d.dp_rank.0,
            overlap_blocks: d.overlap_blocks,
            best_overlap_blocks: d.best_overlap_blocks,
            shortfall: d.shortfall,
            cost: d.cost,
            request_id: d.request.map(|r| r.0),
        }
    }
}

/// Response of `POST /v1/route/disaggregated`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PdRouteResponse {
    pub prefill: DecisionJson,
    pub decode: DecisionJson,
    pub bootstrap: Bootstrap,
    pub request_id: Option<u64>,
    /// Fields to merge into the request sent to the prefill server.
    pub prefill_request: SglangPrefillFields,
    /// Fields to merge into the request sent to the decode server.
    pub decode_request: SglangDecodeFields,
}

/// The prompt fields every body that names a prompt has.
pub(crate) struct PromptFields<'a> {
    pub(crate) tokens: &'a Option<Vec<u32>>,
    pub(crate) block_hashes: &'a Option<Vec<BlockHash>>,
    pub(crate) lora_name: &'a Option<String>,
    pub(crate) cache_salt: &'a Option<String>,
    pub(crate) extra_keys: &'a Option<Vec<Option<Vec<serde_json::Value>>>>,
}

/// Implemented by each body that names a prompt.
macro_rules! impl_prompt_fields {
    ($($body:ty),*) => {$(
        impl $body {
            pub(crate) fn prompt_fields(&self) -> PromptFields<'_> {
                PromptFields {
                    tokens: &self.tokens,
                    block_hashes: &self.block_hashes,
                    lora_name: &self.lora_name,
                    cache_salt: &self.cache_salt,
                    extra_keys: &self.extra_keys,
                }
            }
        }
    )*};
}
pub(crate) use impl_prompt_fields;
impl_prompt_fields!(RouteBody, PdRouteBody);

/// The per-block extra keys of a body, as keys.
pub(crate) fn extra_keys_of(fields: &PromptFields<'_>) -> Vec<Option<Vec<KeyValue>>> {
    fields
        .extra_keys
        .iter()
        .flatten()
        .map(|keys| keys.as_ref().map(|keys| keys.iter().map(KeyValue::from_json).collect()))
        .collect()
}

/// The prompt of a body, checked against the limits; `keys` are its
/// [`extra_keys_of`].
pub(crate) fn prompt<'a>(
    state: &AppState,
    fields: &PromptFields<'a>,
    keys: &'a [Option<Vec<KeyValue>>],
) -> Result<Prompt<'a>, ApiError> {
    let max_tokens = state.limits.max_prompt_tokens;
    let block_size = state.router.config().block_size.max(1) as usize;
    let identity = BlockIdentity {
        lora_name: fields.lora_name.as_deref(),
        cache_salt: fields.cache_salt.as_deref(),
        extra_keys: keys,
    };
    match (fields.tokens, fields.block_hashes) {
        (Some(_), Some(_)) => Err(ApiError::invalid("give either tokens or block_hashes, not both")),
        (None, None) => Err(ApiError::invalid("the body needs tokens (token ids) or block_hashes")),
        (Some(tokens), None) if tokens.len() > max_tokens => Err(ApiError::new(
            ErrorKind::PromptTooLong,
            format!("prompt of {} tokens is over the limit of {max_tokens}", tokens.len()),
        )),
        (Some(tokens), None) if keys.len() > tokens.len() / block_size => Err(ApiError::invalid(format!(
            "extra_keys has {} entries but the prompt has {} full blocks of {block_size} tokens",
            keys.len(),
            tokens.len() / block_size
        ))),
        (Some(tokens), None) if identity.is_plain() => Ok(Prompt::Tokens(tokens)),
        (Some(tokens), None) => Ok(Prompt::TokensWith(tokens, identity)),
        (None, Some(_)) if !identity.is_plain() || fields.extra_keys.is_some() => Err(ApiError::invalid(
            "lora_name, cache_salt and extra_keys go with tokens: block hashes already carry their identity",
        )),
        (None, Some(blocks)) => {
            let max_blocks = max_tokens.div_ceil(block_size);
            if blocks.len() > max_blocks {
                return Err(ApiError::new(
                    ErrorKind::PromptTooLong,
                    format!("prompt of {} blocks is over the limit of {max_blocks}", blocks.len()),
                ));
            }
            Ok(Prompt::Blocks(blocks))
        }
    }
}

/// `output_tokens` checked against the limit (a 400 beyond it: a huge value would charge
/// a rank's decode load for the whole request TTL).
fn output_tokens(state: &AppState, output_tokens: u32) -> Result<u32, ApiError> {
    let max = state.limits.max_output_tokens;
    if output_tokens > max {
        return Err(ApiError::invalid(format!("output_tokens {output_tokens} is over the limit of {max}")));
    }
    Ok(output_tokens)
}

/// `POST /v1/route`: the (worker, dp_rank) for an aggregated request.
pub async fn route(
    State(state): State<AppState>,
    body: Result<JsonBody<RouteBody>, ApiError>,
) -> Result<Json<DecisionJson>, ApiError> {
    let result = body.and_then(|JsonBody(body)| decide(&state, &body));
    state.metrics.record_decision(Endpoint::Route, result.as_ref().err().map(|e| e.kind));
    result.map(Json)
}

fn decide(state: &AppState, body: &RouteBody) -> Result<DecisionJson, ApiError> {
    let fields = body.prompt_fields();
    let keys = extra_keys_of(&fields);
    let prompt = prompt(state, &fields, &keys)?;
    let rank = match (body.worker_id, body.dp_rank) {
        (Some(worker), Some(dp_rank)) => Some(RankKey { worker, dp_rank }),
        (None, None) => None,
        _ => {
            return Err(ApiError::invalid(
                "worker_id and dp_rank go together (they fix the rank); use workers to restrict to workers",
            ))
        }
    };
    let options = RouteOptions {
        workers: body.workers.as_deref(),
        rank,
        excluded: &[],
        dry_run: body.dry_run,
        output_tokens: output_tokens(state, body.output_tokens)?,
    };
    let started = Instant::now();
    let decision = state.router.best_worker(prompt, &options);
    state.metrics.observe_latency(Endpoint::Route, started.elapsed());
    let decision = decision?;
    if !options.dry_run {
        state.metrics.record_quality(Endpoint::Route, &decision);
    }
    let decision = DecisionJson::from(decision);
    tracing::debug!(
        worker = decision.worker_id,
        dp_rank = decision.dp_rank,
        overlap_blocks = decision.overlap_blocks,
        request_id = decision.request_id,
        "routed"
    );
    Ok(decision)
}

/// `POST /v1/route/disaggregated`: a prefill rank, a decode rank and their bootstrap room.
pub async fn route_disaggregated(
    State(state): State<AppState>,
    body: Result<JsonBody<PdRouteBody>, ApiError>,
) -> Result<Json<PdRouteResponse>, ApiError> {
    let result = body.and_then(|JsonBody(body)| decide_disaggregated(&state, &body));
    state.metrics.record_decision(Endpoint::Disaggregated, result.as_ref().err().map(|e| e.kind));
    result.map(Json)
}

fn decide_disaggregated(state: &AppState, body: &PdRouteBody) -> Result<PdRouteResponse, ApiError> {
    let fields = body.prompt_fields();
    let keys = extra_keys_of(&fields);
    let prompt = prompt(state, &fields, &keys)?;
    let options = PdOptions {
        prefill_workers: body.prefill_workers.as_deref(),
        decode_workers: body.decode_workers.as_deref(),
        same_rank: body.same_rank,
        excluded: &[],
        dry_run: body.dry_run,
        output_tokens: output_tokens(state, body.output_tokens)?,
    };
    let started = Instant::now();
    let decision = state.router.route_disaggregated(prompt, &options);
    state.metrics.observe_latency(Endpoint::Disaggregated, started.elapsed());
    let decision = decision?;
    if !options.dry_run {
        state.metrics.record_quality(Endpoint::Disaggregated, &decision.prefill);
    }
    let response = PdRouteResponse {
        prefill_request: decision.prefill_fields(),
        decode_request: decision.decode_fields(),
        request_id: decision.request().map(|r| r.0),
        bootstrap: decision.bootstrap,
        prefill: decision.prefill.into(),
        decode: decision.decode.into(),
    };
    tracing::debug!(
        prefill_worker = response.prefill.worker_id,
        prefill_rank = response.prefill.dp_rank,
        decode_worker = response.decode.worker_id,
        decode_rank = response.decode.dp_rank,
        room = response.bootstrap.room.0,
        request_id = response.request_id,
        "routed disaggregated"
    );
    Ok(response)
}
