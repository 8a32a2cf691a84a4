//! [`JsonBody`]: the API's JSON body extractor. Unlike axum's `Json` it does not require a
//! `Content-Type` header (so `curl -d` works as is), and every failure is an [`ApiError`]:
//! a body over the limit is 413 `body_too_large`, broken JSON 400 `bad_json`, JSON of the
//! wrong shape (unknown field, missing field, wrong type) 400 `invalid_request`, each with
//! serde's message (which names the field, line and column).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::api_error::{ApiError, ErrorKind};

/// A request body parsed as JSON into `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            let kind = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ErrorKind::BodyTooLarge
            } else {
                ErrorKind::InvalidRequest
            };
            ApiError::new(kind, rejection.body_text())
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|error| {
            let kind = match error.classify() {
                serde_json::error::Category::Data => ErrorKind::InvalidRequest,
                _ => ErrorKind::BadJson,
            };
            ApiError::new(kind, format!("invalid JSON body: {error}"))
        })
    }
}
