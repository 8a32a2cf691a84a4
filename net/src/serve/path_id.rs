//! [`PathId`]: the extractor for the `{id}` path parameter of `/v1/workers/{id}` and
//! `/v1/requests/{id}/...`, a decimal `u64`. A malformed id is a 400 `invalid_request`
//! [`ApiError`] like every other bad input, not axum's plain-text rejection.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::api_error::ApiError;

/// A `u64` id taken from the route's one path parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathId(pub u64);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::invalid(format!("bad path parameter: {}", rejection.body_text())))?;
        text.parse()
            .map(PathId)
            .map_err(|_| ApiError::invalid(format!("`{text}` is not an id (a decimal integer from 0 to 2^64 - 1)")))
    }
}
