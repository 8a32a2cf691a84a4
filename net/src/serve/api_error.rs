//! [`ApiError`]: every refusal of the HTTP API, sent as `{"error": "<message>", "kind":
//! "<kind>"}` with the status of its [`ErrorKind`].
//!
//! Router refusals ([`RouteError`]) map one to one onto kinds; so do bad bodies, bad path
//! parameters, over-long prompts and unknown routes. Kinds are stable strings clients may
//! match on; messages are for people.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kvroute_core::route::RouteError;

/// The class of an API error: its `kind` string and HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The body is not JSON (syntax error).
    BadJson,
    /// The body is JSON but not the expected shape (missing or unknown field, wrong type),
    /// or a path parameter or option combination is invalid.
    InvalidRequest,
    /// The body is over the configured limit.
    BodyTooLarge,
    /// The prompt is over `max_prompt_tokens`.
    PromptTooLong,
    EmptyPrompt,
    UnknownWorker,
    /// No active request has this id (finished, expired or never routed).
    UnknownRequest,
    WorkerExists,
    /// A worker registration is inconsistent (DP size 0, world too small, no bootstrap).
    InvalidWorker,
    RankOutOfRange,
    BlockSizeMismatch,
    /// No rank passes the role and option filters.
    NoCandidates,
    /// Same-rank disaggregation with no shared rank index.
    NoSharedRanks,
    /// The index holds no more ranks.
    TooManyRanks,
    /// No such route.
    NotFound,
    MethodNotAllowed,
    /// No, a malformed or a wrong bearer token (when `http_token_file` is set).
    Unauthorized,
    /// A bug or an internal failure.
    Internal,
}

impl ErrorKind {
    /// Every kind, for exposing per-kind counters.
    pub const ALL: [ErrorKind; 18] = [
        ErrorKind::BadJson,
        ErrorKind::InvalidRequest,
        ErrorKind::BodyTooLarge,
        ErrorKind::PromptTooLong,
        ErrorKind::EmptyPrompt,
        ErrorKind::UnknownWorker,
        ErrorKind::UnknownRequest,
        ErrorKind::WorkerExists,
        ErrorKind::InvalidWorker,
        ErrorKind::RankOutOfRange,
        ErrorKind::BlockSizeMismatch,
        ErrorKind::NoCandidates,
        ErrorKind::NoSharedRanks,
        ErrorKind::TooManyRanks,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::Unauthorized,
        ErrorKind::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadJson => "bad_json",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::PromptTooLong => "prompt_too_long",
            ErrorKind::EmptyPrompt => "empty_prompt",
            ErrorKind::UnknownWorker => "unknown_worker",
            ErrorKind::UnknownRequest => "unknown_request",
            ErrorKind::WorkerExists => "worker_exists",
            ErrorKind::InvalidWorker => "invalid_worker",
            ErrorKind::RankOutOfRange => "rank_out_of_range",
            ErrorKind::BlockSizeMismatch => "block_size_mismatch",
            ErrorKind::NoCandidates => "no_candidates",
            ErrorKind::NoSharedRanks => "no_shared_ranks",
            ErrorKind::TooManyRanks => "too_many_ranks",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadJson
            | ErrorKind::InvalidRequest
            | ErrorKind::EmptyPrompt
            | ErrorKind::InvalidWorker
            | ErrorKind::RankOutOfRange
            | ErrorKind::BlockSizeMismatch => StatusCode::BAD_REQUEST,
            ErrorKind::BodyTooLarge | ErrorKind::PromptTooLong => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnknownWorker | ErrorKind::UnknownRequest | ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::WorkerExists | ErrorKind::TooManyRanks => StatusCode::CONFLICT,
            ErrorKind::NoCandidates | ErrorKind::NoSharedRanks => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An API error: a kind and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError { kind, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::InvalidRequest, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.as_str())
    }
}

impl std::error::Error for ApiError {}

impl From<RouteError> for ApiError {
    fn from(error: RouteError) -> ApiError {
        let kind = match &error {
            RouteError::EmptyPrompt => ErrorKind::EmptyPrompt,
            RouteError::UnknownWorker(_) => ErrorKind::UnknownWorker,
            RouteError::WorkerExists(_) => ErrorKind::WorkerExists,
            RouteError::ZeroDpSize(_)
            | RouteError::DpWorldTooSmall { .. }
            | RouteError::MissingBootstrap(_)
            | RouteError::BadBootstrapHost { .. } => ErrorKind::InvalidWorker,
            RouteError::RankOutOfRange { .. } => ErrorKind::RankOutOfRange,
            RouteError::BlockSizeMismatch { .. } => ErrorKind::BlockSizeMismatch,
            RouteError::NoCandidates => ErrorKind::NoCandidates,
            RouteError::NoSharedRanks => ErrorKind::NoSharedRanks,
            RouteError::TooManyRanks => ErrorKind::TooManyRanks,
            RouteError::InvalidConfig(_) => ErrorKind::InvalidRequest,
        };
        ApiError::new(kind, error.to_string())
    }
}

/// The JSON body of every error response.
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    kind: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        if status.is_server_error() && self.kind == ErrorKind::Internal {
            tracing::error!(message = %self.message, "internal error");
        } else {
            tracing::debug!(kind = self.kind.as_str(), message = %self.message, "request refused");
        }
        (status, Json(ErrorBody { error: &self.message, kind: self.kind.as_str() })).into_response()
    }
}
