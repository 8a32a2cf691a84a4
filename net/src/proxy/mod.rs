//! The OpenAI-compatible routing proxy of `kvroute serve`: clients send
//! `POST /v1/completions` and `POST /v1/chat/completions` (streaming or not) to kvroute,
//! which picks the (worker, dp_rank) and forwards the request to that worker's HTTP server
//! with the rank in the `X-data-parallel-rank` header (vLLM and SGLang both read it), then
//! passes the answer back as it comes.
//!
//! One request ([`Proxy::forward`]):
//! 1. The body is JSON; its prompt becomes token ids ([`prompt_tokens`]): given ids as
//!    they are, text and chat messages through the router's tokenizer (`--tokenizer`:
//!    a model's `tokenizer.json` and chat template, [`crate::tokenization`]) or, without
//!    one, a healthy engine's own `/tokenize`.
//!    A LoRA request's blocks are hashed under its adapter ([`lora_names`]: SGLang's
//!    `lora_path`, or a vLLM `model` that the engines list as an adapter).
//! 2. The router decides over every rank not excluded (ranks of workers that are down,
//!    and ranks that already failed this request) and charges the rank's load.
//! 3. The request goes to the worker's `url` + the same path, body unchanged, within
//!    `connect_timeout` and `first_byte_timeout` (to the response head). A refused
//!    connection, a timeout or a 5xx there releases the load, counts a failure against the
//!    worker ([`health`]) and tries the next-best rank, up to `max_attempts` ranks; a 4xx
//!    is the client's and goes back as it is.
//! 4. The answer streams back through a [`load_guard::MeteredBody`]: prefill done at its
//!    first data, finish at its end, finish (cancelled) when the client goes away, which
//!    also drops the upstream connection so the engine cancels the request too.
//!
//! Workers that fail `failures_before_down` times in a row leave the decisions until their
//! `GET /health` answers; probes back off exponentially ([`Proxy::run_probes`]). With
//! `engine_load_interval`, every worker's own `/metrics` is scraped for its running and
//! waiting requests per rank ([`engine_load`]), which other router replicas sent too. Errors to
//! clients are OpenAI-style JSON ([`crate::openai_error`]): 400 for bad bodies, 413 for
//! bodies over the limit, 502 / 504 when no upstream answered, 503 when none can be tried.

pub mod engine_load;
mod forward;
pub mod health;
pub mod load_guard;
pub mod lora_names;
pub mod prompt_tokens;
pub mod upstreams;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::decision_quality::DecisionQuality;
use crate::http_client::HttpClient;
use crate::tokenization::PromptTokenizer;

pub use forward::RequestLimits;
pub use health::HealthPolicy;
pub use prompt_tokens::OpenAiEndpoint;
pub use upstreams::{Upstream, Upstreams};

/// The proxy's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Most ranks one request is tried on.
    pub max_attempts: u32,
    /// Longest wait for a TCP connection to an upstream.
    pub connect_timeout: Duration,
    /// Longest wait for an upstream's response head (a stream's head comes at once; a
    /// whole answer's only when it is done).
    pub first_byte_timeout: Duration,
    /// Longest wait for a health probe's answer.
    pub probe_timeout: Duration,
    pub health: HealthPolicy,
    /// Every upstream's `/metrics` is scraped for its running and waiting requests this
    /// often ([`engine_load`]); `None` (the default): never.
    pub engine_load_interval: Option<Duration>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_attempts: 3,
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(300),
            probe_timeout: Duration::from_secs(2),
            health: HealthPolicy::default(),
            engine_load_interval: None,
        }
    }
}

/// The proxy's counters (Relaxed by design: independent counts).
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    /// Requests received on the proxy endpoints.
    pub requests: AtomicU64,
    /// Answers passed back whole.
    pub completed: AtomicU64,
    /// Requests whose client went away before the end.
    pub cancelled: AtomicU64,
    /// Upstream bodies that broke part way.
    pub upstream_broken: AtomicU64,
    /// Attempts beyond the first.
    pub retries: AtomicU64,
    /// Failed attempts, by cause.
    pub failed_connect: AtomicU64,
    pub failed_timeout: AtomicU64,
    pub failed_status: AtomicU64,
    /// Refused by the proxy itself (bad body, limits), before routing.
    pub refused: AtomicU64,
    /// Requests that found no upstream to try, or exhausted their attempts.
    pub unavailable: AtomicU64,
    /// Health probes sent, and workers brought back by one.
    pub probes: AtomicU64,
    pub recovered: AtomicU64,
    /// Engine load scrapes that applied reports, and that failed.
    pub load_scrapes: AtomicU64,
    pub load_scrape_failures: AtomicU64,
    /// Every decision made for an attempt (retries included; disaggregated: the prefill side).
    pub quality: DecisionQuality,
}

/// The routing proxy's state: upstreams, HTTP client, settings, counters.
pub struct Proxy {
    pub config: ProxyConfig,
    pub upstreams: Upstreams,
    pub metrics: Arc<ProxyMetrics>,
    client: HttpClient,
    lora_names: lora_names::LoraNames,
    /// The router's own tokenizer; `None`: the engines' `/tokenize`.
    tokenizer: Option<Arc<PromptTokenizer>>,
}

impl Proxy {
    pub fn new(config: ProxyConfig) -> Proxy {
        let client = HttpClient::new(config.connect_timeout);
        Proxy {
            config,
            upstreams: Upstreams::default(),
            metrics: Arc::default(),
            client,
            lora_names: Default::default(),
            tokenizer: None,
        }
    }

    /// The proxy tokenizing text and chat prompts itself with `tokenizer`.
    pub fn with_tokenizer(mut self, tokenizer: Option<Arc<PromptTokenizer>>) -> Proxy {
        self.tokenizer = tokenizer;
        self
    }

    /// Probes down workers until `stop` turns true: every 100 ms, each worker whose probe
    /// is due gets `GET /health`; a 2xx brings it back up. The next probe is scheduled
    /// (with the doubled backoff) before this one is sent, so a slow probe is never doubled
    /// up.
    pub async fn run_probes(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let now = Instant::now();
            for upstream in self.upstreams.probes_due(now) {
                self.upstreams.probe_failed(upstream.worker, now, &self.config.health);
                let proxy = Arc::clone(&self);
                tokio::spawn(async move { proxy.probe(&upstream).await });
            }
        }
    }

    async fn probe(&self, upstream: &Upstream) {
        self.metrics.probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let answered = self
            .client
            .get(&upstream.url("/health"), self.config.probe_timeout)
            .await
            .is_ok_and(|(status, _)| status.is_success());
        if answered && self.upstreams.record_success(upstream.worker) {
            self.metrics.recovered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(worker = upstream.worker.0, url = %upstream.base, "upstream worker answers its health probe: back in decisions");
        }
    }
}
