//! The routing proxy's endpoints on the daemon's HTTP server: `POST /v1/completions`,
//! `POST /v1/chat/completions` ([`crate::proxy::Proxy::forward`] with the daemon's router
//! and limits) and `GET /v1/models`. A body over the limit is a 413 in OpenAI's error
//! shape, like every other refusal here.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::state::AppState;
use crate::openai_error::OpenAiError;
use crate::proxy::{OpenAiEndpoint, RequestLimits};

pub async fn completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    forward(&state, OpenAiEndpoint::Completions, &headers, body).await
}

pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    forward(&state, OpenAiEndpoint::ChatCompletions, &headers, body).await
}

pub async fn models(State(state): State<AppState>) -> Response {
    state.proxy.models().await
}

async fn forward(
    state: &AppState,
    endpoint: OpenAiEndpoint,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            state.proxy.metrics.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!("the body is over this router's limit of {} bytes", state.limits.max_body_bytes)
            } else {
                rejection.body_text()
            };
            return OpenAiError::with_status(status, message).into_response();
        }
    };
    let limits = RequestLimits {
        max_prompt_tokens: state.limits.max_prompt_tokens,
        max_output_tokens: state.limits.max_output_tokens,
        forward_authorization: state.http_token().is_none(),
    };
    state.proxy.forward(&state.router, endpoint, headers, body, limits).await
}
