//! The request and response plumbing both simulated APIs share: JSON bodies in (typed,
//! unknown fields ignored as the engines ignore them), the DP-rank header, token-id and
//! output-length checks, server-sent events and the serving rank's header out.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;
use serde::de::DeserializeOwned;
use std::convert::Infallible;

use crate::openai_error::OpenAiError;

/// The header vLLM's and SGLang's servers read a request's DP rank from (any case).
pub const DP_RANK_HEADER: &str = "x-data-parallel-rank";
/// The response header naming the rank that served (the simulator's own).
pub const SERVED_RANK_HEADER: &str = "x-kvroute-sim-dp-rank";
/// Most output tokens one request may ask for.
pub const MAX_OUTPUT_TOKENS: u32 = 65_536;

/// `bytes` as JSON of type `T`; a 400 naming serde's complaint otherwise.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, OpenAiError> {
    serde_json::from_slice(bytes).map_err(|error| OpenAiError::bad_request(format!("invalid JSON body: {error}")))
}

/// The DP rank in the request's `X-data-parallel-rank` header, if any.
pub fn header_rank(headers: &HeaderMap) -> Result<Option<u32>, OpenAiError> {
    let Some(value) = headers.get(DP_RANK_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| OpenAiError::bad_request(format!("{DP_RANK_HEADER} must be a non-negative integer")))
}

/// The first of the ranks a request names (header first, then body fields in order); two
/// that disagree are a 400.
pub fn requested_rank(candidates: &[(&str, Option<u32>)]) -> Result<Option<u32>, OpenAiError> {
    let mut chosen: Option<(&str, u32)> = None;
    for &(name, rank) in candidates {
        match (chosen, rank) {
            (None, Some(rank)) => chosen = Some((name, rank)),
            (Some((first, a)), Some(b)) if a != b => {
                return Err(OpenAiError::bad_request(format!(
                    "{first} ({a}) and {name} ({b}) name different DP ranks"
                )));
            }
            _ => {}
        }
    }
    Ok(chosen.map(|(_, rank)| rank))
}

/// The DP rank a request names: the `X-data-parallel-rank` header, SGLang's body fields
/// `routed_dp_rank` and (older) `data_parallel_rank`; two that disagree are a 400.
pub fn named_rank(
    headers: &HeaderMap,
    routed_dp_rank: Option<u32>,
    data_parallel_rank: Option<u32>,
) -> Result<Option<u32>, OpenAiError> {
    requested_rank(&[
        ("X-data-parallel-rank", header_rank(headers)?),
        ("routed_dp_rank", routed_dp_rank),
        ("data_parallel_rank", data_parallel_rank),
    ])
}

/// A JSON value as token ids: every element an integer in `0..2^32`.
pub fn token_ids(value: &serde_json::Value, what: &str) -> Result<Vec<u32>, OpenAiError> {
    let bad =
        || OpenAiError::bad_request(format!("{what} must be a list of token ids (integers from 0 to 4294967295)"));
    let items = value.as_array().ok_or_else(bad)?;
    items.iter().map(|item| item.as_u64().and_then(|id| u32::try_from(id).ok()).ok_or_else(bad)).collect()
}

/// The output length a request asked for (`default` when it did not), checked.
pub fn output_tokens(asked: Option<u64>, default: u32, what: &str) -> Result<u32, OpenAiError> {
    match asked {
        None => Ok(default),
        Some(n) if (1..=u64::from(MAX_OUTPUT_TOKENS)).contains(&n) => Ok(n as u32),
        Some(n) => Err(OpenAiError::bad_request(format!("{what} must be from 1 to {MAX_OUTPUT_TOKENS}, not {n}"))),
    }
}

/// One server-sent event carrying `value` as JSON.
pub fn sse_json(value: &serde_json::Value) -> Bytes {
    let mut out = b"data: ".to_vec();
    // Serialising a `Value` cannot fail.
    let _ = serde_json::to_writer(&mut out, value);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The end of an engine's event stream.
pub fn sse_done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// A 200 JSON answer from the rank that served.
pub fn json_response(rank: u32, value: &serde_json::Value) -> Response {
    let mut response = Response::new(Body::from(value.to_string()));
    set_headers(&mut response, rank, "application/json");
    response
}

/// A 200 event-stream answer from the rank that served.
pub fn sse_response<S>(rank: u32, stream: S) -> Response
where
    S: Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    let mut response = Response::new(Body::from_stream(stream));
    set_headers(&mut response, rank, "text/event-stream");
    response.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

fn set_headers(response: &mut Response, rank: u32, content_type: &'static str) {
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(content_type));
    headers.insert(SERVED_RANK_HEADER, HeaderValue::from(rank));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_token_ids_and_lengths_are_checked() {
        let mut headers = HeaderMap::new();
        assert_eq!(header_rank(&headers), Ok(None));
        headers.insert("X-Data-Parallel-Rank", HeaderValue::from_static("3"));
        assert_eq!(header_rank(&headers), Ok(Some(3)));
        headers.insert("X-Data-Parallel-Rank", HeaderValue::from_static("-1"));
        assert!(header_rank(&headers).is_err());
        assert_eq!(requested_rank(&[("a", None), ("b", Some(2)), ("c", Some(2))]), Ok(Some(2)));
        assert!(requested_rank(&[("a", Some(1)), ("b", Some(2))]).unwrap_err().message.contains("a (1) and b (2)"));
        assert_eq!(token_ids(&serde_json::json!([1, 4294967295u64]), "p"), Ok(vec![1, u32::MAX]));
        for bad in [
            serde_json::json!([-1]),
            serde_json::json!([4294967296u64]),
            serde_json::json!([1.5]),
            serde_json::json!("x"),
        ] {
            assert!(token_ids(&bad, "p").is_err(), "{bad}");
        }
        assert_eq!(output_tokens(None, 16, "max_tokens"), Ok(16));
        assert!(output_tokens(Some(0), 16, "max_tokens").is_err());
        assert!(output_tokens(Some(u64::from(MAX_OUTPUT_TOKENS) + 1), 16, "max_tokens").is_err());
        assert_eq!(&sse_json(&serde_json::json!({"a": 1}))[..], b"data: {\"a\":1}\n\n");
    }
}
