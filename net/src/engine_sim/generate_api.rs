//! The simulator's SGLang-native API: `POST /generate`, `GET /get_server_info`,
//! `GET /get_model_info`.
//!
//! `/generate` takes `text` or `input_ids` (one prompt), `sampling_params.max_new_tokens`
//! (default 128, SGLang's), `stream`, `lora_path` (one of the adapters), the DP rank as
//! `routed_dp_rank` or the older `data_parallel_rank` (or the header), and the
//! disaggregation fields `bootstrap_host`, `bootstrap_port`, `bootstrap_room` (checked:
//! a room is `0..=i64::MAX`; echoed in `meta_info`). It answers
//! `{text, output_ids, meta_info: {id, finish_reason, prompt_tokens, completion_tokens,
//! cached_tokens, routed_dp_rank, bootstrap_room}}`; a stream sends that object after each
//! token, text and ids so far, as SGLang does, then `data: [DONE]`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::bootstrap::DisaggFields;
use super::output_words;
use super::serving::{Output, PromptRequest, SimState};
use super::wire_json::{
    json_response, named_rank, output_tokens, parse_json, sse_done, sse_json, sse_response, token_ids,
};
use crate::openai_error::OpenAiError;
use crate::tokenization::PromptTokenizer;

/// SGLang's default `max_new_tokens`.
const DEFAULT_MAX_NEW_TOKENS: u32 = 128;

#[derive(Deserialize, Default)]
struct SamplingParams {
    max_new_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct GenerateRequest {
    text: Option<Value>,
    input_ids: Option<Value>,
    #[serde(default)]
    sampling_params: SamplingParams,
    #[serde(default)]
    stream: bool,
    lora_path: Option<String>,
    rid: Option<String>,
    routed_dp_rank: Option<u32>,
    data_parallel_rank: Option<u32>,
    #[serde(flatten)]
    disagg: DisaggFields,
}

/// One prompt's token ids from `text` (a string, or a list of one) or `input_ids`.
fn generate_tokens(tokenizer: &PromptTokenizer, request: &GenerateRequest) -> Result<Vec<u32>, OpenAiError> {
    let one = |value: &Value| match value {
        Value::Array(items) if items.len() == 1 => items[0].clone(),
        Value::Array(items) if !items.iter().all(Value::is_number) => Value::Null,
        other => other.clone(),
    };
    match (&request.text, &request.input_ids) {
        (Some(text), None) => match one(text) {
            Value::String(text) => tokenizer.encode_prompt(&text).map_err(OpenAiError::bad_request),
            _ => Err(OpenAiError::bad_request("text must be one string (the simulator serves one prompt per request)")),
        },
        (None, Some(ids)) => match one(ids) {
            ids @ Value::Array(_) => token_ids(&ids, "input_ids"),
            _ => Err(OpenAiError::bad_request("input_ids must be one list of token ids")),
        },
        _ => Err(OpenAiError::bad_request("give exactly one of text and input_ids")),
    }
}

/// `POST /generate`.
pub async fn generate(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    let parsed = (|| {
        let request: GenerateRequest = parse_json(&body)?;
        let tokens = generate_tokens(&state.config.tokenizer, &request)?;
        let max_tokens =
            output_tokens(request.sampling_params.max_new_tokens, DEFAULT_MAX_NEW_TOKENS, "max_new_tokens")?;
        if let Some(adapter) = &request.lora_path {
            if !state.config.lora_adapters.contains(adapter) {
                return Err(OpenAiError::bad_request(format!("unknown lora_path `{adapter}`")));
            }
        }
        let rank = named_rank(&headers, request.routed_dp_rank, request.data_parallel_rank)?;
        Ok((request, tokens, max_tokens, rank))
    })();
    let (request, tokens, max_tokens, rank) = parsed.map_err(|error| state.refuse(error))?;
    let prompt = PromptRequest {
        tokens: &tokens,
        rank,
        lora_name: request.lora_path.as_deref(),
        max_tokens,
        disagg: &request.disagg,
    };
    let (mut served, max_tokens) = state.serve(prompt).await?;
    let rank = served.rank();
    let meta = {
        let admission = &served.admission;
        let id = request.rid.clone().unwrap_or_else(|| format!("{:032x}", served.number));
        json!({
            "id": id, "prompt_tokens": admission.prompt_tokens, "cached_tokens": admission.cached_tokens,
            "routed_dp_rank": rank, "bootstrap_host": request.disagg.bootstrap_host, "bootstrap_port": request.disagg.bootstrap_port,
            "bootstrap_room": request.disagg.bootstrap_room,
        })
    };
    let answer = move |done: u32| {
        let mut meta = meta.clone();
        meta["completion_tokens"] = json!(done);
        meta["finish_reason"] =
            if done == max_tokens { json!({"type": "length", "length": max_tokens}) } else { Value::Null };
        let text: String = (0..done).map(output_words::output_text).collect();
        let ids: Vec<u32> = (0..done).map(output_words::output_id).collect();
        json!({"text": text, "output_ids": ids, "meta_info": meta})
    };
    if !request.stream {
        served.wait_until_done(max_tokens).await;
        return Ok(json_response(rank, &answer(max_tokens)));
    }
    let stream = served.token_stream(max_tokens, move |output| match output {
        Output::Token(index) => sse_json(&answer(index + 1)),
        Output::Done => sse_done(),
    });
    Ok(sse_response(rank, stream))
}

/// `GET /get_server_info`: the settings a router reads (DP size, page size, model).
pub async fn server_info(State(state): State<Arc<SimState>>) -> axum::Json<Value> {
    let config = &state.config;
    axum::Json(json!({
        "model_path": config.served_model_name,
        "served_model_name": config.served_model_name,
        "dp_size": config.model.dp_size,
        "page_size": config.model.block_size,
        "disaggregation_mode": config.disaggregation.name(),
        "max_total_num_tokens": config.model.capacity_blocks * config.model.block_size as usize,
        "engine": config.kind.name(),
        "version": concat!("kvroute-sim-", env!("CARGO_PKG_VERSION")),
    }))
}

/// `GET /get_model_info`.
pub async fn model_info(State(state): State<Arc<SimState>>) -> axum::Json<Value> {
    axum::Json(json!({"model_path": state.config.served_model_name, "tokenizer_path": null, "is_generation": true}))
}
