//! The live demo's open-loop load generator: trace requests as OpenAI completions over
//! HTTP at their (sped-up) timestamps, each on its own task, whatever the earlier ones
//! are doing.
//!
//! A request's prompt is token ids: hash id `h` of the trace becomes 512 tokens
//! `token(h, 0..512)` (a mix of `h` and the position; equal ids give equal tokens, so the
//! trace's shared prefixes are shared token prefixes), cut to the request's
//! `input_length`. Each is sent with `stream: true` and `stream_options.include_usage`;
//! TTFT is the time to the first body chunk (the engine sends its first token there),
//! end-to-end the time to the end of the stream; the usage chunk gives the prompt and
//! cached token counts, the engine's `x-kvroute-sim-dp-rank` header and the URL (or the
//! proxy's `x-kvroute-worker-id`) the rank that served.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use indicatif::ProgressBar;
use kvroute_core::trace::{TraceRequest, TRACE_BLOCK_TOKENS};
use kvroute_net::http_client::HttpClient;

/// One request to send.
pub struct LivePrompt {
    /// When to send it, from the start of the run, before the speedup.
    pub at_ms: u64,
    /// The request body (JSON).
    pub body: Bytes,
}

/// The prompts of `requests` as completion bodies.
pub fn trace_prompts(requests: &[TraceRequest], max_output_tokens: u32) -> Vec<LivePrompt> {
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
            let body = serde_json::json!({
                "model": "kvroute-sim",
                "prompt": tokens,
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
    /// kvroute's proxy picks the rank.
    Proxy(String),
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
    /// Requests served per rank, worker-major.
    pub per_rank: Vec<u64>,
    pub errors: Vec<String>,
}

impl LiveOutcome {
    pub fn cached_ratio(&self) -> f64 {
        self.cached_tokens as f64 / self.prompt_tokens.max(1) as f64
    }
}

/// One answered request.
struct Answer {
    ttft: Duration,
    e2e: Duration,
    prompt_tokens: u64,
    cached_tokens: u64,
    /// (worker, rank) the proxy routed to, from its headers.
    routed: Option<(usize, usize)>,
}

/// Sends every prompt at its time (divided by `speedup`) to a fleet of `workers x dp`
/// ranks and waits for all answers.
pub async fn replay(
    prompts: &[LivePrompt],
    target: &Target,
    (workers, dp): (u32, u32),
    speedup: f64,
    bar: &ProgressBar,
) -> LiveOutcome {
    let client = HttpClient::new(Duration::from_secs(5));
    let dp = dp as usize;
    let ranks = workers as usize * dp;
    let outcome = Arc::new(Mutex::new(LiveOutcome { per_rank: vec![0; ranks], ..LiveOutcome::default() }));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        let due = start + Duration::from_secs_f64(prompt.at_ms as f64 / 1000.0 / speedup);
        let (url, pinned) = match target {
            Target::Proxy(base) => (format!("{base}/v1/completions"), None),
            Target::RoundRobin(urls) => {
                let slot = i % ranks;
                (format!("{}/v1/completions", urls[slot / dp]), Some((slot / dp, slot % dp)))
            }
        };
        let (client, body, outcome, bar) = (client.clone(), prompt.body.clone(), Arc::clone(&outcome), bar.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let result = send(&client, &url, pinned.map(|(_, rank)| rank), body).await;
            let mut outcome = outcome.lock().unwrap_or_else(PoisonError::into_inner);
            match result {
                Ok(answer) => {
                    let (worker, rank) = pinned.or(answer.routed).unwrap_or((usize::MAX, 0));
                    match outcome.per_rank.get_mut(worker.saturating_mul(dp).saturating_add(rank)) {
                        Some(count) if rank < dp => *count += 1,
                        _ => outcome.errors.push(format!("POST {url}: answered from an unknown rank {worker}/{rank}")),
                    }
                    outcome.ttft_us.push(answer.ttft.as_micros() as u64);
                    outcome.e2e_us.push(answer.e2e.as_micros() as u64);
                    outcome.prompt_tokens += answer.prompt_tokens;
                    outcome.cached_tokens += answer.cached_tokens;
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
    std::mem::take(&mut *outcome)
}

/// One streamed completion, pinned to `rank` of the URL's engine when given.
async fn send(client: &HttpClient, url: &str, rank: Option<usize>, body: Bytes) -> Result<Answer, String> {
    let sent = Instant::now();
    let mut request = hyper::Request::post(url).header("content-type", "application/json");
    if let Some(rank) = rank {
        request = request.header("x-data-parallel-rank", rank);
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status();
    let header =
        |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let routed = header("x-kvroute-worker-id").zip(header("x-kvroute-dp-rank"));
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
        routed,
    })
}
