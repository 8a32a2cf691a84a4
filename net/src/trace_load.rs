//! An open-loop load generator over HTTP (`kvroute demo --live` and the router benches):
//! trace requests as OpenAI completions at their (sped-up) timestamps, each on its own
//! task, whatever the earlier ones are doing.
//!
//! A request's prompt ([`PromptForm`]): hash id `h` of the trace becomes 512 tokens
//! `token(h, 0..512)` (a mix of `h` and the position; equal ids give equal tokens, so the
//! trace's shared prefixes are shared token prefixes), cut to the request's
//! `input_length`; as token ids, or as text of one ASCII letter per token (the engine
//! simulator's byte tokenizer reads it back as exactly that many tokens, so routers that
//! take text only see the same prefixes). Each is sent with `stream: true` and
//! `stream_options.include_usage`; TTFT is the time to the first body chunk (the engine
//! sends its first token there), end-to-end the time to the end of the stream; the usage
//! chunk gives the prompt and cached token counts. Every request carries its send time
//! (`x-kvroute-sent-at`), so the simulator can time its transit. Which rank served is the engines'
//! count (their `/sim/stats`), not this module's.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::http_client::HttpClient;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use indicatif::ProgressBar;
use kvroute_core::trace::{TraceRequest, TRACE_BLOCK_TOKENS};

/// One request to send.
pub struct LivePrompt {
    /// When to send it, from the start of the run, before the speedup.
    pub at_ms: u64,
    /// The request body (JSON).
    pub body: Bytes,
}

/// How prompts are written into the request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptForm {
    /// `prompt` as token ids.
    TokenIds,
    /// `prompt` as text, one letter per token.
    Text,
}

/// The prompts of `requests` as completion bodies.
pub fn trace_prompts(requests: &[TraceRequest], max_output_tokens: u32, form: PromptForm) -> Vec<LivePrompt> {
    let first_ms = requests.first().map_or(0, |r| r.timestamp_ms);
    requests
        .iter()
        .map(|request| {
            let mut tokens: Vec<u32> = Vec::with_capacity(request.input_length as usize);
            'ids: for &id in &request.hash_ids {
                for position in 0..TRACE_BLOCK_TOKENS {
                    if tokens.len() == request.input_length as usize {
                        break 'ids;
                    }
                    tokens.push(token(id, position));
                }
            }
            let prompt = match form {
                PromptForm::TokenIds => serde_json::json!(tokens),
                PromptForm::Text => {
                    serde_json::Value::String(tokens.iter().map(|&t| char::from(b'a' + (t % 26) as u8)).collect())
                }
            };
            let body = serde_json::json!({
                "model": "kvroute-sim",
                "prompt": prompt,
                "max_tokens": request.output_length.clamp(1, max_output_tokens),
                "stream": true,
                "stream_options": {"include_usage": true},
            });
            LivePrompt { at_ms: request.timestamp_ms - first_ms, body: Bytes::from(body.to_string()) }
        })
        .collect()
}

/// Token `position` of the block with hash id `id` (splitmix64 of both, in a 100k vocabulary).
fn token(id: u64, position: u32) -> u32 {
    let mut z = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(position).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) % 100_000) as u32
}

/// Where requests go.
pub enum Target {
    /// A router picks the rank: its base URL, and the bearer token it wants, if any.
    Router { url: String, bearer: Option<String> },
    /// Request `i` to rank `i mod ranks` of the engines (by worker id, then rank), by
    /// the DP-rank header.
    RoundRobin(Vec<String>),
}

/// What the clients saw.
#[derive(Default)]
pub struct LiveOutcome {
    pub ttft_us: Vec<u64>,
    pub e2e_us: Vec<u64>,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    /// Output tokens received (usage `completion_tokens`).
    pub output_tokens: u64,
    /// From the first request sent to the last answer's end.
    pub makespan: Duration,
    pub errors: Vec<String>,
}

impl LiveOutcome {
    pub fn cached_ratio(&self) -> f64 {
        self.cached_tokens as f64 / self.prompt_tokens.max(1) as f64
    }

    /// Requests answered per second of the makespan.
    pub fn requests_per_s(&self) -> f64 {
        self.ttft_us.len() as f64 / self.makespan.as_secs_f64().max(1e-9)
    }

    /// Output tokens per second of the makespan.
    pub fn output_tokens_per_s(&self) -> f64 {
        self.output_tokens as f64 / self.makespan.as_secs_f64().max(1e-9)
    }
}

/// One answered request.
struct Answer {
    ttft: Duration,
    e2e: Duration,
    prompt_tokens: u64,
    cached_tokens: u64,
    output_tokens: u64,
}

/// Sends every prompt at its time (divided by `speedup`) to `target` (round-robin: over
/// its engines' `dp` ranks each) and waits for all answers.
pub async fn replay(prompts: &[LivePrompt], target: &Target, dp: u32, speedup: f64, bar: &ProgressBar) -> LiveOutcome {
    let client = HttpClient::new(Duration::from_secs(5));
    let dp = dp as usize;
    let outcome = Arc::new(Mutex::new(LiveOutcome::default()));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let due = start + Duration::from_secs_f64(prompt.at_ms as f64 / 1000.0 / speedup);
        let (url, pinned, bearer) = match target {
            Target::Router { url, bearer } => (format!("{url}/v1/completions"), None, bearer.clone()),
            Target::RoundRobin(urls) => {
                let slot = i % (urls.len() * dp).max(1);
                (format!("{}/v1/completions", urls[slot / dp]), Some(slot % dp), None)
            }
        };
        let (client, body, outcome, bar) = (client.clone(), prompt.body.clone(), Arc::clone(&outcome), bar.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let result = send(&client, &url, pinned, bearer.as_deref(), body).await;
            let mut outcome = outcome.lock().unwrap_or_else(PoisonError::into_inner);
            match result {
                Ok(answer) => {
                    outcome.ttft_us.push(answer.ttft.as_micros() as u64);
                    outcome.e2e_us.push(answer.e2e.as_micros() as u64);
                    outcome.prompt_tokens += answer.prompt_tokens;
                    outcome.cached_tokens += answer.cached_tokens;
                    outcome.output_tokens += answer.output_tokens;
                }
                Err(error) => outcome.errors.push(error),
            }
            bar.inc(1);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut outcome = outcome.lock().unwrap_or_else(PoisonError::into_inner);
    outcome.makespan = start.elapsed();
    std::mem::take(&mut *outcome)
}

/// One streamed completion, pinned to `rank` of the URL's engine when given.
async fn send(
    client: &HttpClient,
    url: &str,
    rank: Option<usize>,
    bearer: Option<&str>,
    body: Bytes,
) -> Result<Answer, String> {
    let sent = Instant::now();
    let mut request = hyper::Request::post(url).header("content-type", "application/json");
    if let Some(rank) = rank {
        request = request.header("x-data-parallel-rank", rank);
    }
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    // The engine simulator records when the head arrived (routers' added latency).
    let sent_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    request = request.header(crate::engine_sim::SENT_AT_HEADER, sent_at.to_string());
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status();
    let mut body = response.into_body();
    let mut ttft = None;
    let mut text = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("POST {url}: the stream broke: {e}"))?;
        if let Ok(data) = frame.into_data() {
            ttft.get_or_insert_with(|| sent.elapsed());
            text.extend_from_slice(&data);
        }
    }
    let e2e = sent.elapsed();
    if !status.is_success() {
        return Err(format!("POST {url}: {status}: {}", String::from_utf8_lossy(&text)));
    }
    let text = String::from_utf8_lossy(&text);
    let usage = text
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .find_map(|chunk| chunk.get("usage").cloned())
        .ok_or_else(|| format!("POST {url}: the stream had no usage chunk"))?;
    Ok(Answer {
        ttft: ttft.unwrap_or(e2e),
        e2e,
        prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0),
        cached_tokens: usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0),
        output_tokens: usage["completion_tokens"].as_u64().unwrap_or(0),
    })
}
