//! [`SimError`]: every refusal of the engine simulator, answered as vLLM's OpenAI server
//! answers: `{"error": {"message", "type", "param": null, "code"}}` with the HTTP status
//! as `code` (SGLang's endpoints answer the same shape).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kvroute_core::sim::EngineModelError;

/// A refused request: the status and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimError {
    pub status: StatusCode,
    pub message: String,
}

impl SimError {
    pub fn bad_request(message: impl Into<String>) -> SimError {
        SimError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    pub fn not_found(message: impl Into<String>) -> SimError {
        SimError { status: StatusCode::NOT_FOUND, message: message.into() }
    }

    pub fn unavailable(message: impl Into<String>) -> SimError {
        SimError { status: StatusCode::SERVICE_UNAVAILABLE, message: message.into() }
    }

    /// The `type` vLLM gives this status.
    fn error_type(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "BadRequestError",
            StatusCode::NOT_FOUND => "NotFoundError",
            StatusCode::PAYLOAD_TOO_LARGE => "BadRequestError",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailableError",
            _ => "InternalServerError",
        }
    }
}

impl From<EngineModelError> for SimError {
    fn from(error: EngineModelError) -> Self {
        SimError::bad_request(error.to_string())
    }
}

impl IntoResponse for SimError {
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
