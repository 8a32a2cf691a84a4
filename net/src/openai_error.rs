//! [`OpenAiError`]: an error answered as vLLM's OpenAI-compatible server answers one:
//! `{"error": {"message", "type", "param": null, "code"}}` with the HTTP status as `code`
//! and vLLM's `type` for that status. The engine simulator refuses requests with it, and
//! the routing proxy answers its clients with it, so that OpenAI clients see one shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kvroute_core::sim::EngineModelError;

/// A refused request: the status and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenAiError {
    pub status: StatusCode,
    pub message: String,
}

impl OpenAiError {
    pub fn bad_request(message: impl Into<String>) -> OpenAiError {
        OpenAiError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    pub fn not_found(message: impl Into<String>) -> OpenAiError {
        OpenAiError { status: StatusCode::NOT_FOUND, message: message.into() }
    }

    pub fn unavailable(message: impl Into<String>) -> OpenAiError {
        OpenAiError { status: StatusCode::SERVICE_UNAVAILABLE, message: message.into() }
    }

    pub fn with_status(status: StatusCode, message: impl Into<String>) -> OpenAiError {
        OpenAiError { status, message: message.into() }
    }

    /// The `type` vLLM gives this status.
    fn error_type(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "BadRequestError",
            StatusCode::NOT_FOUND => "NotFoundError",
            StatusCode::PAYLOAD_TOO_LARGE => "BadRequestError",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailableError",
            StatusCode::BAD_GATEWAY => "BadGatewayError",
            StatusCode::GATEWAY_TIMEOUT => "GatewayTimeoutError",
            _ => "InternalServerError",
        }
    }
}

impl From<EngineModelError> for OpenAiError {
    fn from(error: EngineModelError) -> Self {
        OpenAiError::bad_request(error.to_string())
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.error_type(),
                "param": null,
                "code": self.status.as_u16(),
            }
        });
        (self.status, Json(body)).into_response()
    }
}
