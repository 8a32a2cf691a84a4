//! [`Proxy::forward`]: one proxied request from body to streamed answer (the steps are in
//! the module doc of `proxy`), and `GET /v1/models` passed to a healthy upstream.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kvroute_core::hashing::BlockIdentity;
use kvroute_core::route::{PdOptions, Prompt, RouteError, RouteOptions, Router};
use kvroute_core::RankKey;
use serde_json::Value;

use super::load_guard::{MeteredBody, RequestLoad};
use super::lora_names::Lookup;
use super::prompt_tokens::{
    engine_tokenize_body, prompt_input, requested_output_tokens, tokenize_answer, OpenAiEndpoint, PromptInput,
    RequestBody,
};
use super::upstreams::Upstream;
use super::Proxy;
use crate::openai_error::OpenAiError;

/// The header carrying the chosen DP rank to the engine.
const DP_RANK_HEADER: &str = "x-data-parallel-rank";
/// Client headers passed on to the engine.
/// (`x-kvroute-sent-at`: a load generator's send stamp, which the engine simulator times.)
const FORWARDED_HEADERS: [&str; 5] =
    ["authorization", "x-request-id", "traceparent", "tracestate", "x-kvroute-sent-at"];
/// Upstream headers not passed back (hop-by-hop, or redone by the server).
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"];

/// The limits a proxied request is checked against.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    pub max_prompt_tokens: usize,
    pub max_output_tokens: u32,
    /// Pass the client's `Authorization` to the engine (not when it was kvroute's own token).
    pub forward_authorization: bool,
}

/// A disaggregated request's parts the decision needs.
struct PdRequest<'a> {
    json: &'a Value,
    prompt: Prompt<'a>,
    output_tokens: u32,
}

/// `json` (an object) with `fields`' keys set, as the upstream body.
fn with_fields(json: &Value, fields: &impl serde::Serialize) -> Bytes {
    let mut body = json.clone();
    if let (Some(body), Ok(Value::Object(fields))) = (body.as_object_mut(), serde_json::to_value(fields)) {
        body.extend(fields);
    }
    Bytes::from(body.to_string())
}

/// Why one attempt on one rank failed.
enum AttemptError {
    Connect(String),
    Timeout,
    Status(StatusCode),
}

impl Proxy {
    /// Serves one request on `endpoint` (see the module doc).
    pub async fn forward(
        &self,
        router: &Arc<Router>,
        endpoint: OpenAiEndpoint,
        headers: &HeaderMap,
        body: Bytes,
        limits: RequestLimits,
    ) -> Response {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        match self.try_forward(router, endpoint, headers, body, limits).await {
            Ok(response) => response,
            Err(error) => {
                let counter =
                    if error.status.is_server_error() { &self.metrics.unavailable } else { &self.metrics.refused };
                counter.fetch_add(1, Ordering::Relaxed);
                error.into_response()
            }
        }
    }

    async fn try_forward(
        &self,
        router: &Arc<Router>,
        endpoint: OpenAiEndpoint,
        headers: &HeaderMap,
        body: Bytes,
        limits: RequestLimits,
    ) -> Result<Response, OpenAiError> {
        let RequestBody { json, ids } = RequestBody::parse(&body)?;
        let tokens = match ids {
            Some(ids) if endpoint == OpenAiEndpoint::Completions => ids,
            _ => match (prompt_input(endpoint, &json)?, &self.tokenizer) {
                (PromptInput::Tokens(tokens), _) => tokens,
                (PromptInput::Text(text), Some(tokenizer)) => {
                    tokenizer.encode_prompt(text).map_err(OpenAiError::bad_request)?
                }
                (PromptInput::Chat, Some(tokenizer)) => {
                    tokenizer.encode_chat(&json).map_err(OpenAiError::bad_request)?
                }
                (input, None) => self.tokenize(&engine_tokenize_body(&input, &json)).await?,
            },
        };
        if tokens.len() > limits.max_prompt_tokens {
            return Err(OpenAiError::bad_request(format!(
                "the prompt has {} tokens, over this router's limit of {}",
                tokens.len(),
                limits.max_prompt_tokens
            )));
        }
        let output_tokens = match requested_output_tokens(endpoint, &json)? {
            Some(n) if n > u64::from(limits.max_output_tokens) => {
                return Err(OpenAiError::bad_request(format!(
                    "asks for {n} output tokens, over the limit of {}",
                    limits.max_output_tokens
                )))
            }
            Some(n) => n as u32,
            None => 0,
        };

        let lora = self.lora_of(&json).await;
        let identity = BlockIdentity { lora_name: lora.as_deref(), ..BlockIdentity::default() };
        let prompt = match lora {
            Some(_) => Prompt::TokensWith(&tokens, identity),
            None => Prompt::Tokens(&tokens),
        };
        // The ranks of workers that are down (usually none: no registry read then).
        let down = self.upstreams.down_workers();
        let mut excluded: Vec<RankKey> = Vec::new();
        if !down.is_empty() {
            for spec in router.workers().iter().filter(|spec| down.contains(&spec.worker)) {
                excluded.extend(
                    (spec.dp_start..spec.dp_start + spec.dp_size).map(|rank| RankKey::new(spec.worker.0, rank)),
                );
            }
        }
        if router.has_prefill_workers() {
            // The whole body, prompt included, to merge the bootstrap fields into.
            let json: Value = serde_json::from_slice(&body)
                .map_err(|error| OpenAiError::bad_request(format!("invalid JSON body: {error}")))?;
            let request = PdRequest { json: &json, prompt, output_tokens };
            return self.forward_disaggregated(router, endpoint, headers, request, excluded, limits).await;
        }
        let mut last_failure: Option<AttemptError> = None;
        let mut attempts = 0;
        while attempts < self.config.max_attempts.max(1) {
            let options = RouteOptions { excluded: &excluded, output_tokens, ..RouteOptions::default() };
            let decision = match router.best_worker(prompt, &options) {
                Ok(decision) => decision,
                Err(RouteError::NoCandidates) => break,
                Err(error) => return Err(OpenAiError::bad_request(error.to_string())),
            };
            self.metrics.quality.record(&decision);
            let rank = RankKey { worker: decision.worker, dp_rank: decision.dp_rank };
            let load = RequestLoad::new(Arc::clone(router), Arc::clone(&self.metrics), decision.request);
            let Some(upstream) = self.upstreams.get(decision.worker) else {
                // Registered for routing without a url: it cannot be proxied to.
                load.release_failed_attempt();
                excluded.push(rank);
                continue;
            };
            attempts += 1;
            if attempts > 1 {
                self.metrics.retries.fetch_add(1, Ordering::Relaxed);
            }
            match self.attempt(&upstream, endpoint, headers, &body, decision.dp_rank.0, limits).await {
                Ok(response) => {
                    self.upstreams.record_success(upstream.worker);
                    return Ok(passed_back(response, load, rank, decision.overlap_blocks));
                }
                Err(failure) => {
                    load.release_failed_attempt();
                    self.attempt_failed(&upstream, &failure);
                    excluded.push(rank);
                    last_failure = Some(failure);
                }
            }
        }
        Err(self.gave_up(last_failure, attempts))
    }

    /// The client's error once no attempt succeeded.
    fn gave_up(&self, last_failure: Option<AttemptError>, attempts: u32) -> OpenAiError {
        match last_failure {
            None => OpenAiError::unavailable(
                "no upstream worker can take the request: none is registered with a url, or all are down",
            ),
            Some(AttemptError::Timeout) => OpenAiError::with_status(
                StatusCode::GATEWAY_TIMEOUT,
                format!("no upstream answered within {:?} ({attempts} tried)", self.config.first_byte_timeout),
            ),
            Some(failure) => OpenAiError::with_status(
                StatusCode::BAD_GATEWAY,
                format!("no upstream answered ({attempts} tried); the last: {}", describe(&failure)),
            ),
        }
    }

    /// Counts a failed attempt on `upstream` and its health.
    fn attempt_failed(&self, upstream: &Upstream, failure: &AttemptError) {
        let counter = match failure {
            AttemptError::Connect(_) => &self.metrics.failed_connect,
            AttemptError::Timeout => &self.metrics.failed_timeout,
            AttemptError::Status(_) => &self.metrics.failed_status,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if self.upstreams.record_failure(upstream.worker, Instant::now(), &self.config.health) {
            tracing::warn!(worker = upstream.worker.0, url = %upstream.base, "upstream worker keeps failing: out of decisions until its health probe answers");
        }
        tracing::debug!(worker = upstream.worker.0, error = %describe(failure), "upstream attempt failed");
    }

    /// Prefill/decode disaggregation (SGLang): a prefill rank and a decode rank chosen
    /// together with their bootstrap room, both requests sent at once with the fields
    /// SGLang reads merged into the body, the decode answer streamed back, the prefill
    /// answer drained. A failure on either side releases the load, excludes that side's
    /// rank and tries again, up to `max_attempts`.
    async fn forward_disaggregated(
        &self,
        router: &Arc<Router>,
        endpoint: OpenAiEndpoint,
        headers: &HeaderMap,
        request: PdRequest<'_>,
        mut excluded: Vec<RankKey>,
        limits: RequestLimits,
    ) -> Result<Response, OpenAiError> {
        let mut last_failure: Option<AttemptError> = None;
        let mut attempts = 0;
        while attempts < self.config.max_attempts.max(1) {
            let options =
                PdOptions { excluded: &excluded, output_tokens: request.output_tokens, ..PdOptions::default() };
            let decision = match router.route_disaggregated(request.prompt, &options) {
                Ok(decision) => decision,
                Err(RouteError::NoCandidates) => break,
                Err(error) => return Err(OpenAiError::bad_request(error.to_string())),
            };
            self.metrics.quality.record(&decision.prefill);
            let load = RequestLoad::new(Arc::clone(router), Arc::clone(&self.metrics), decision.request());
            let prefill_rank = RankKey { worker: decision.prefill.worker, dp_rank: decision.prefill.dp_rank };
            let decode_rank = RankKey { worker: decision.decode.worker, dp_rank: decision.decode.dp_rank };
            let (Some(prefill), Some(decode)) =
                (self.upstreams.get(prefill_rank.worker), self.upstreams.get(decode_rank.worker))
            else {
                load.release_failed_attempt();
                for rank in [prefill_rank, decode_rank] {
                    if self.upstreams.get(rank.worker).is_none() {
                        excluded.push(rank);
                    }
                }
                continue;
            };
            attempts += 1;
            if attempts > 1 {
                self.metrics.retries.fetch_add(1, Ordering::Relaxed);
            }
            let prefill_body = with_fields(request.json, &decision.prefill_fields());
            let decode_body = with_fields(request.json, &decision.decode_fields());
            let (prefill_answer, decode_answer) = tokio::join!(
                self.attempt(&prefill, endpoint, headers, &prefill_body, prefill_rank.dp_rank.0, limits),
                self.attempt(&decode, endpoint, headers, &decode_body, decode_rank.dp_rank.0, limits),
            );
            match (prefill_answer, decode_answer) {
                (Ok(prefill_response), Ok(decode_response)) => {
                    self.upstreams.record_success(prefill.worker);
                    self.upstreams.record_success(decode.worker);
                    // The client reads the decode stream; the prefill answer is read and
                    // dropped (its connection then goes back to the pool).
                    tokio::spawn(async move {
                        let _ = prefill_response.into_body().collect().await;
                    });
                    let mut response = passed_back(decode_response, load, decode_rank, decision.prefill.overlap_blocks);
                    let headers = response.headers_mut();
                    headers.insert(
                        HeaderName::from_static("x-kvroute-prefill-worker-id"),
                        HeaderValue::from(prefill_rank.worker.0),
                    );
                    headers.insert(
                        HeaderName::from_static("x-kvroute-prefill-dp-rank"),
                        HeaderValue::from(prefill_rank.dp_rank.0),
                    );
                    headers.insert(
                        HeaderName::from_static("x-kvroute-bootstrap-room"),
                        HeaderValue::from(decision.bootstrap.room.0),
                    );
                    return Ok(response);
                }
                (prefill_answer, decode_answer) => {
                    load.release_failed_attempt();
                    for (upstream, rank, answer) in
                        [(&prefill, prefill_rank, prefill_answer), (&decode, decode_rank, decode_answer)]
                    {
                        if let Err(failure) = answer {
                            self.attempt_failed(upstream, &failure);
                            excluded.push(rank);
                            last_failure = Some(failure);
                        }
                    }
                }
            }
        }
        Err(self.gave_up(last_failure, attempts))
    }

    /// One try on one rank: the response, once its head is a non-5xx.
    async fn attempt(
        &self,
        upstream: &Upstream,
        endpoint: OpenAiEndpoint,
        headers: &HeaderMap,
        body: &Bytes,
        dp_rank: u32,
        limits: RequestLimits,
    ) -> Result<hyper::Response<hyper::body::Incoming>, AttemptError> {
        let mut request = hyper::Request::post(upstream.url(endpoint.path()))
            .header("content-type", "application/json")
            .header(DP_RANK_HEADER, dp_rank);
        for name in FORWARDED_HEADERS {
            if name == "authorization" && !limits.forward_authorization {
                continue;
            }
            if let Some(value) = headers.get(name) {
                request = request.header(name, value);
            }
        }
        let request =
            request.body(Full::new(body.clone())).map_err(|error| AttemptError::Connect(error.to_string()))?;
        let response = match tokio::time::timeout(self.config.first_byte_timeout, self.client.request(request)).await {
            Err(_) => return Err(AttemptError::Timeout),
            Ok(Err(error)) => return Err(AttemptError::Connect(error.to_string())),
            Ok(Ok(response)) => response,
        };
        if response.status().is_server_error() {
            return Err(AttemptError::Status(response.status()));
        }
        Ok(response)
    }

    /// The LoRA adapter the request runs under ([`super::lora_names`]), fetching the
    /// upstreams' model list when it is due.
    async fn lora_of(&self, json: &Value) -> Option<String> {
        match self.lora_names.adapter_of(json, Instant::now()) {
            Lookup::Known(adapter) => adapter,
            Lookup::Fetch => {
                let models = self.fetch_models().await;
                self.lora_names.store(models.as_ref(), Instant::now());
                match self.lora_names.adapter_of(json, Instant::now()) {
                    Lookup::Known(adapter) => adapter,
                    Lookup::Fetch => None,
                }
            }
        }
    }

    /// `GET /v1/models` of the first healthy upstream that answers, as JSON.
    async fn fetch_models(&self) -> Option<Value> {
        let down = self.upstreams.down_workers();
        for upstream in self.upstreams.all().into_iter().filter(|upstream| !down.contains(&upstream.worker)) {
            if let Ok((status, body)) = self.client.get(&upstream.url("/v1/models"), self.config.probe_timeout).await {
                if status.is_success() {
                    if let Ok(models) = serde_json::from_slice(&body) {
                        return Some(models);
                    }
                }
            }
        }
        None
    }

    /// The engine's token ids for a `/tokenize` body, from the first healthy upstream.
    async fn tokenize(&self, request: &Value) -> Result<Vec<u32>, OpenAiError> {
        let down = self.upstreams.down_workers();
        let upstream = self
            .upstreams
            .all()
            .into_iter()
            .find(|upstream| !down.contains(&upstream.worker))
            .ok_or_else(|| OpenAiError::unavailable("no healthy upstream worker to tokenize the prompt with"))?;
        let failed = |reason: String| {
            OpenAiError::with_status(
                StatusCode::BAD_GATEWAY,
                format!("tokenizing with worker {}'s /tokenize: {reason}", upstream.worker.0),
            )
        };
        let (status, body) = self
            .client
            .post_json(&upstream.url("/tokenize"), request, self.config.first_byte_timeout)
            .await
            .map_err(failed)?;
        if status == StatusCode::BAD_REQUEST {
            // The engine refused the prompt itself (e.g. too long): the client's error.
            return Err(OpenAiError::bad_request(format!(
                "the engine refused the prompt: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        if !status.is_success() {
            return Err(failed(format!("status {status}")));
        }
        let answer: Value = serde_json::from_slice(&body).map_err(|error| failed(error.to_string()))?;
        tokenize_answer(&answer).map_err(failed)
    }

    /// `GET /v1/models` from the first healthy upstream, passed back as it is.
    pub async fn models(&self) -> Response {
        let down = self.upstreams.down_workers();
        for upstream in self.upstreams.all().into_iter().filter(|upstream| !down.contains(&upstream.worker)) {
            let Ok(request) = hyper::Request::get(upstream.url("/v1/models")).body(Full::new(Bytes::new())) else {
                continue;
            };
            if let Ok(Ok(response)) =
                tokio::time::timeout(self.config.first_byte_timeout, self.client.request(request)).await
            {
                if response.status().is_success() {
                    let (parts, body) = response.into_parts();
                    let mut answer = Response::new(Body::new(body));
                    *answer.status_mut() = parts.status;
                    copy_headers(&parts.headers, answer.headers_mut());
                    return answer;
                }
            }
        }
        OpenAiError::unavailable("no healthy upstream worker to list the models of").into_response()
    }
}

fn describe(failure: &AttemptError) -> String {
    match failure {
        AttemptError::Connect(error) => format!("connection failed: {error}"),
        AttemptError::Timeout => "timed out".to_owned(),
        AttemptError::Status(status) => format!("answered {status}"),
    }
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The upstream answer as the client's: status and headers, the body metered, and where
/// it was routed (`x-kvroute-worker-id`, `x-kvroute-dp-rank`, `x-kvroute-overlap-blocks`).
fn passed_back(
    response: hyper::Response<hyper::body::Incoming>,
    load: RequestLoad,
    rank: RankKey,
    overlap_blocks: u32,
) -> Response {
    let (parts, body) = response.into_parts();
    let mut answer = Response::new(Body::new(MeteredBody::new(body, load)));
    *answer.status_mut() = parts.status;
    let headers = answer.headers_mut();
    copy_headers(&parts.headers, headers);
    headers.insert(HeaderName::from_static("x-kvroute-worker-id"), HeaderValue::from(rank.worker.0));
    headers.insert(HeaderName::from_static("x-kvroute-dp-rank"), HeaderValue::from(rank.dp_rank.0));
    headers.insert(HeaderName::from_static("x-kvroute-overlap-blocks"), HeaderValue::from(overlap_blocks));
    answer
}
