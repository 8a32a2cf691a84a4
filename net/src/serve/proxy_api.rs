//! The routing proxy's endpoints on the daemon's HTTP server: `POST /v1/completions`,
//! `POST /v1/chat/completions` ([`crate::proxy::Proxy::forward`] with the daemon's router
//! and limits) and `GET /v1/models`.
//!
//! These routes are outside the API's request deadline (a generation may take minutes), so
//! the body is read here under `http_request_timeout` itself: a client that sends its body
//! too slowly gets a 408 and cannot hold a connection open by trickling bytes. A body over
//! the limit is a 413; both in OpenAI's error shape, like every other refusal here.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::state::AppState;
use crate::openai_error::OpenAiError;
use crate::proxy::{OpenAiEndpoint, RequestLimits};

pub async fn completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    forward(&state, OpenAiEndpoint::Completions, &headers, body).await
}

pub async fn chat_completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    forward(&state, OpenAiEndpoint::ChatCompletions, &headers, body).await
}

pub async fn models(State(state): State<AppState>) -> Response {
    state.proxy.models().await
}

async fn forward(state: &AppState, endpoint: OpenAiEndpoint, headers: &HeaderMap, body: Body) -> Response {
    let body = match read_body(state, body).await {
        Ok(body) => body,
        Err(error) => {
            state.proxy.metrics.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return error.into_response();
        }
    };
    let limits = RequestLimits {
        max_prompt_tokens: state.limits.max_prompt_tokens,
        max_output_tokens: state.limits.max_output_tokens,
        forward_authorization: state.http_token().is_none(),
    };
    state.proxy.forward(&state.router, endpoint, headers, body, limits).await
}

/// The whole body within the body limit and the request deadline.
async fn read_body(state: &AppState, body: Body) -> Result<Bytes, OpenAiError> {
    let limit = state.limits.max_body_bytes;
    match tokio::time::timeout(state.limits.request_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => {
            state.http_connections.timed_out.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(OpenAiError::with_status(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {:?}", state.limits.request_timeout),
            ))
        }
        Ok(Ok(bytes)) => Ok(bytes),
        // `to_bytes` fails on a body over the limit or a broken connection.
        Ok(Err(error)) if is_length_limit(&error) => Err(OpenAiError::with_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over this router's limit of {limit} bytes"),
        )),
        Ok(Err(error)) => Err(OpenAiError::bad_request(format!("reading the body: {error}"))),
    }
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}
