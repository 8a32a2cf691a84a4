//! The simulator's OpenAI-compatible API, shaped as vLLM's server answers it:
//! `POST /v1/completions` (prompt as text or token ids), `POST /v1/chat/completions`
//! (messages through the configured chat template), `GET /v1/models`, `POST /tokenize`.
//! Text and messages are tokenized with the simulator's [`PromptTokenizer`]
//! ([`crate::tokenization`]).
//!
//! The `model` must be the served name or one of the LoRA adapters (404 otherwise, as
//! vLLM); an adapter's requests hash their blocks under its name. One prompt per request
//! (a list of several prompts is a 400). `max_tokens` (chat: also
//! `max_completion_tokens`) defaults to 16; every response runs to that length
//! (`finish_reason: "length"`). `usage` carries `prompt_tokens_details.cached_tokens`;
//! a stream sends it in a last chunk with empty `choices` when
//! `stream_options.include_usage` is set, then `data: [DONE]`. The disaggregation fields
//! (`bootstrap_host`, `bootstrap_port`, `bootstrap_room`, `disagg_prefill_dp_rank`) are
//! read as SGLang's OpenAI server reads them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::bootstrap::DisaggFields;
use super::output_words;
use super::serving::{Output, PromptRequest, Served, SimState};
use super::wire_json::{
    json_response, named_rank, output_tokens, parse_json, sse_done, sse_json, sse_response, token_ids,
};
use crate::openai_error::OpenAiError;
use crate::token_id_list::parse_token_id_list;
use crate::tokenization::PromptTokenizer;

/// OpenAI's default `max_tokens` for completions.
const DEFAULT_MAX_TOKENS: u32 = 16;

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    /// SGLang's OpenAI server also takes the DP rank in the body.
    routed_dp_rank: Option<u32>,
    data_parallel_rank: Option<u32>,
    /// Raw, so that plain token ids are read straight into a `Vec<u32>`.
    prompt: Box<serde_json::value::RawValue>,
    #[serde(flatten)]
    disagg: DisaggFields,
    max_tokens: Option<u64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    /// SGLang's OpenAI server also takes the DP rank in the body.
    routed_dp_rank: Option<u32>,
    data_parallel_rank: Option<u32>,
    #[serde(flatten)]
    disagg: DisaggFields,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct TokenizeRequest {
    prompt: Option<Value>,
    messages: Option<Value>,
}

/// What a request's `model` selects: the base model or one LoRA adapter.
fn lora_of(state: &SimState, model: Option<&str>) -> Result<Option<String>, OpenAiError> {
    match model {
        None => Ok(None),
        Some(name) if name == state.config.served_model_name => Ok(None),
        Some(name) if state.config.lora_adapters.iter().any(|adapter| adapter == name) => Ok(Some(name.to_owned())),
        Some(name) => Err(OpenAiError::not_found(format!("The model `{name}` does not exist."))),
    }
}

/// [`prompt_tokens`] of a raw prompt, plain token ids read without a `Value` per id.
fn raw_prompt_tokens(tokenizer: &PromptTokenizer, raw: &serde_json::value::RawValue) -> Result<Vec<u32>, OpenAiError> {
    match parse_token_id_list(raw.get()) {
        Some(ids) => Ok(ids),
        None => prompt_tokens(
            tokenizer,
            &serde_json::from_str(raw.get()).map_err(|e| OpenAiError::bad_request(e.to_string()))?,
        ),
    }
}

/// A completion prompt as token ids: a string (tokenized), token ids, or a list holding
/// exactly one of those.
fn prompt_tokens(tokenizer: &PromptTokenizer, prompt: &Value) -> Result<Vec<u32>, OpenAiError> {
    match prompt {
        Value::String(text) => tokenizer.encode_prompt(text).map_err(OpenAiError::bad_request),
        Value::Array(items) if items.iter().all(Value::is_number) => token_ids(prompt, "prompt"),
        Value::Array(items) if items.len() == 1 => prompt_tokens(tokenizer, &items[0]),
        Value::Array(_) => Err(OpenAiError::bad_request("the simulator serves one prompt per request")),
        _ => Err(OpenAiError::bad_request("prompt must be a string or a list of token ids")),
    }
}

/// The token ids of a chat request body (`messages`, `add_generation_prompt`, `tools`,
/// `chat_template_kwargs`).
fn chat_tokens(tokenizer: &PromptTokenizer, body: &Value) -> Result<Vec<u32>, OpenAiError> {
    tokenizer.encode_chat(body).map_err(OpenAiError::bad_request)
}

fn usage(served: &Served, completion_tokens: u32) -> Value {
    let admission = &served.admission;
    json!({
        "prompt_tokens": admission.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": admission.prompt_tokens + completion_tokens as usize,
        "prompt_tokens_details": { "cached_tokens": admission.cached_tokens },
    })
}

fn model_name(state: &SimState, lora: &Option<String>) -> String {
    lora.clone().unwrap_or_else(|| state.config.served_model_name.clone())
}

/// What the two generation endpoints take from a request to admit it.
struct OpenAiPrompt {
    /// The LoRA adapter the `model` names, if any.
    lora: Option<String>,
    tokens: Vec<u32>,
    max_tokens: u32,
    /// The DP rank the request names, if any.
    rank: Option<u32>,
}

/// An admitted request with what every answer about it repeats.
struct Admitted {
    served: Served,
    /// The tokens to produce (1 on a prefill server).
    max_tokens: u32,
    id: String,
    created: u64,
    model: String,
    rank: u32,
}

/// Serves `prompt` (see [`SimState::serve`]); answer ids are `{id_prefix}-{n}`.
async fn admit(
    state: &Arc<SimState>,
    prompt: OpenAiPrompt,
    disagg: &DisaggFields,
    id_prefix: &str,
) -> Result<Admitted, OpenAiError> {
    let request = PromptRequest {
        tokens: &prompt.tokens,
        rank: prompt.rank,
        lora_name: prompt.lora.as_deref(),
        max_tokens: prompt.max_tokens,
        disagg,
    };
    let (served, max_tokens) = state.serve(request).await?;
    Ok(Admitted {
        id: format!("{id_prefix}-{}", served.number),
        created: served.created,
        model: model_name(state, &prompt.lora),
        rank: served.rank(),
        max_tokens,
        served,
    })
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    let parsed = (|| {
        let request: CompletionRequest = parse_json(&body)?;
        let prompt = OpenAiPrompt {
            lora: lora_of(&state, request.model.as_deref())?,
            tokens: raw_prompt_tokens(&state.config.tokenizer, &request.prompt)?,
            max_tokens: output_tokens(request.max_tokens, DEFAULT_MAX_TOKENS, "max_tokens")?,
            rank: named_rank(&headers, request.routed_dp_rank, request.data_parallel_rank)?,
        };
        Ok((request, prompt))
    })();
    let (request, prompt) = parsed.map_err(|error| state.refuse(error))?;
    let Admitted { mut served, max_tokens, id, created, model, rank } =
        admit(&state, prompt, &request.disagg, "cmpl").await?;
    let choice = |text: String, finish: Option<&str>| json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish, "stop_reason": null});
    if !request.stream {
        served.wait_until_done(max_tokens).await;
        let text: String = (0..max_tokens).map(output_words::output_text).collect();
        let body = json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [choice(text, Some("length"))], "usage": usage(&served, max_tokens),
        });
        return Ok(json_response(rank, &body));
    }
    let include_usage = request.stream_options.is_some_and(|options| options.include_usage);
    let usage = usage(&served, max_tokens);
    let stream = served.token_stream(max_tokens, move |output| match output {
        Output::Token(index) => {
            let finish = (index + 1 == max_tokens).then_some("length");
            sse_json(&json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [choice(output_words::output_text(index), finish)],
            }))
        }
        Output::Done => done_chunks(include_usage.then(|| {
            json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": [], "usage": usage})
        })),
    });
    Ok(sse_response(rank, stream))
}

/// The end of a stream: the usage chunk when asked for, then `[DONE]`.
fn done_chunks(usage_chunk: Option<Value>) -> Bytes {
    match usage_chunk {
        Some(chunk) => [sse_json(&chunk), sse_done()].concat().into(),
        None => sse_done(),
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OpenAiError> {
    let parsed = (|| {
        let whole: Value = parse_json(&body)?;
        let request = ChatRequest::deserialize(&whole).map_err(|error| OpenAiError::bad_request(error.to_string()))?;
        let asked = request.max_completion_tokens.or(request.max_tokens);
        let prompt = OpenAiPrompt {
            lora: lora_of(&state, request.model.as_deref())?,
            tokens: chat_tokens(&state.config.tokenizer, &whole)?,
            max_tokens: output_tokens(asked, DEFAULT_MAX_TOKENS, "max_tokens")?,
            rank: named_rank(&headers, request.routed_dp_rank, request.data_parallel_rank)?,
        };
        Ok((request, prompt))
    })();
    let (request, prompt) = parsed.map_err(|error| state.refuse(error))?;
    let Admitted { mut served, max_tokens, id, created, model, rank } =
        admit(&state, prompt, &request.disagg, "chatcmpl").await?;
    if !request.stream {
        served.wait_until_done(max_tokens).await;
        let text: String = (0..max_tokens).map(output_words::output_text).collect();
        let body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": "length"}],
            "usage": usage(&served, max_tokens),
        });
        return Ok(json_response(rank, &body));
    }
    let include_usage = request.stream_options.is_some_and(|options| options.include_usage);
    let usage = usage(&served, max_tokens);
    let usage_chunk = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [], "usage": usage});
    let chunk = move |delta: Value, finish: Option<&str>| {
        sse_json(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        }))
    };
    let stream = served.token_stream(max_tokens, move |output| match output {
        Output::Token(index) => {
            let finish = (index + 1 == max_tokens).then_some("length");
            let text = chunk(json!({"content": output_words::output_text(index)}), finish);
            if index == 0 {
                [chunk(json!({"role": "assistant", "content": ""}), None), text].concat().into()
            } else {
                text
            }
        }
        Output::Done => done_chunks(include_usage.then(|| usage_chunk.clone())),
    });
    Ok(sse_response(rank, stream))
}

/// `GET /v1/models`: the served model and its LoRA adapters.
pub async fn models(State(state): State<Arc<SimState>>) -> axum::Json<Value> {
    let base = &state.config.served_model_name;
    let max_model_len = state.config.model.max_prompt_tokens;
    let entry = |id: &str, parent: Option<&str>| {
        json!({"id": id, "object": "model", "created": 0, "owned_by": state.config.kind.name(), "root": parent.unwrap_or(id),
            "parent": parent, "max_model_len": max_model_len})
    };
    let mut data = vec![entry(base, None)];
    data.extend(state.config.lora_adapters.iter().map(|adapter| entry(adapter, Some(base))));
    axum::Json(json!({"object": "list", "data": data}))
}

/// `POST /tokenize`: the simulator's token ids for a `prompt` or chat `messages`.
pub async fn tokenize(State(state): State<Arc<SimState>>, body: Bytes) -> Result<axum::Json<Value>, OpenAiError> {
    let whole: Value = parse_json(&body).map_err(|error| state.refuse(error))?;
    let request = TokenizeRequest::deserialize(&whole)
        .map_err(|error| state.refuse(OpenAiError::bad_request(error.to_string())))?;
    let tokenizer = &state.config.tokenizer;
    let tokens = match (&request.prompt, &request.messages) {
        (Some(prompt), None) => prompt_tokens(tokenizer, prompt),
        (None, Some(_)) => chat_tokens(tokenizer, &whole),
        _ => Err(OpenAiError::bad_request("give exactly one of prompt and messages")),
    }
    .map_err(|error| state.refuse(error))?;
    state.counters.tokenize_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(axum::Json(
        json!({"count": tokens.len(), "max_model_len": state.config.model.max_prompt_tokens, "tokens": tokens}),
    ))
}
