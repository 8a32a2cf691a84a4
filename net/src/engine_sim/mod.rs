//! `kvroute engine-sim`: an HTTP server that behaves enough like a vLLM or an SGLang
//! server with `dp_size` data-parallel ranks for kvroute and the peers' routers to drive
//! it on a machine without GPUs, and that publishes its KV events over ZeroMQ in the
//! engines' own wire format, exactly as `kvroute serve --engine-events` ingests them.
//!
//! Shape: one [`EngineModel`] (core; per rank a prefix cache, a prefill queue and timing)
//! behind a mutex, the clock it runs on (an `Instant` taken at start), and per rank an
//! [`EnginePublisher`] (PUB at `kv_events_port + rank`, replay ROUTER at
//! `replay_port + rank`) fed through a bounded queue by one task, so each rank's batches
//! go out in the order its requests were admitted (a `BlockStored` naming a parent always
//! follows the batch that stored the parent).
//!
//! A request ([`serving`]): its prompt becomes token ids (a list of ids as given; text and
//! chat messages through the configured [`crate::tokenization::PromptTokenizer`]: by
//! default one token per byte, or the `tokenizer.json` the router also loads); its DP rank comes from the
//! `X-data-parallel-rank` header (vLLM, SGLang) or the body's `routed_dp_rank` /
//! `data_parallel_rank` (SGLang), else the model's least-loaded rank; the model admits it
//! and its events are queued on that rank's stream under the same lock; then the response
//! waits for the prefill to end and produces one output token per decode step, streamed
//! as server-sent events or answered whole. The rank that served is in the response
//! header `x-kvroute-sim-dp-rank`; `usage.prompt_tokens_details.cached_tokens` (OpenAI
//! API) and `meta_info.cached_tokens` (SGLang) say how much of the prompt was cached.
//! A request leaves the rank's in-flight count when its response ends, fails or is
//! dropped because the client went away.
//!
//! Endpoints ([`app`]): `POST /v1/completions`, `POST /v1/chat/completions` (SSE with
//! `stream`, the usage chunk with `stream_options.include_usage`), `GET /v1/models`,
//! `POST /tokenize`, `GET /health`, `GET /version` (vLLM); `POST /generate`,
//! `GET /get_server_info`, `GET /get_model_info`, `GET /health_generate` (SGLang); and
//! `GET /metrics`, the load gauges under the imitated engine's names ([`engine_metrics`]),
//! and `GET /sim/stats`, every rank's counters. Both engine kinds serve all of them; the
//! kind picks the KV-event encoding, the gauges' names and what the server-info endpoints
//! report.
//!
//! Prefill/decode disaggregation ([`bootstrap`], SGLang's `--disaggregation-mode`): a
//! prefill server records each request's `bootstrap_room` with its rank and answers after
//! one token; a decode server fetches the KV from the `bootstrap_host:bootstrap_port` the
//! request names and refuses it (500, counted) unless the KV sits on the prefill rank the
//! room rule gives (`disagg_prefill_dp_rank`, else `room % prefill dp_size`), so a router
//! that breaks the rule fails visibly.

mod app;
mod bootstrap;
mod config;
mod engine_metrics;
mod events;
mod fleet;
mod generate_api;
mod openai_api;
pub mod output_words;
mod serving;
mod wire_json;

pub use app::{app, SENT_AT_HEADER};
pub use config::{DisaggregationMode, EngineKind, EngineSimConfig, EngineSimError};
pub use fleet::SimFleet;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine_zmq::EngineEndpoint;
use crate::serve::http_server::{self, HttpConnectionMetrics, HttpServerLimits};
use kvroute_core::sim::EngineModel;
use serving::SimState;

/// A running engine simulator.
pub struct EngineSim {
    http_address: SocketAddr,
    state: Arc<SimState>,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
}

impl EngineSim {
    /// Binds the HTTP listener and every rank's ZeroMQ sockets and starts serving. Call it
    /// inside a tokio runtime.
    pub async fn start(config: EngineSimConfig) -> Result<EngineSim, EngineSimError> {
        let model = EngineModel::new(config.model.clone()).map_err(EngineSimError::Model)?;
        let publishers = events::start_rank_publishers(&config).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|error| EngineSimError::Bind { address: config.listen.to_string(), reason: error.to_string() })?;
        let http_address = listener
            .local_addr()
            .map_err(|error| EngineSimError::Bind { address: config.listen.to_string(), reason: error.to_string() })?;
        let state = Arc::new(SimState::new(config, model, publishers));
        let (stop, stop_rx) = watch::channel(false);
        let server = tokio::spawn(http_server::serve(
            listener,
            app(Arc::clone(&state)),
            HttpServerLimits::default(),
            Arc::new(HttpConnectionMetrics::default()),
            stop_rx,
        ));
        Ok(EngineSim { http_address, state, stop, server })
    }

    /// The bound HTTP address (port resolved).
    pub fn http_address(&self) -> SocketAddr {
        self.http_address
    }

    /// Rank `rank`'s PUB endpoint as a subscriber reaches it (loopback for a wildcard).
    pub fn subscriber_endpoint(&self, rank: u32) -> Option<EngineEndpoint> {
        self.state.rank_events(rank).map(|events| events.subscriber_endpoint.clone())
    }

    /// Rank `rank`'s replay endpoint as a client reaches it.
    pub fn replay_endpoint(&self, rank: u32) -> Option<EngineEndpoint> {
        self.state.rank_events(rank).and_then(|events| events.replay_endpoint.clone())
    }

    /// Every rank's counters now.
    pub fn stats(&self) -> Vec<kvroute_core::sim::RankStats> {
        self.state.stats()
    }

    /// Leading full blocks of `tokens` (under `lora_name`) that `rank` holds now: what a
    /// router fed the rank's events should credit it with.
    pub fn held_prefix_blocks(&self, rank: u32, tokens: &[u32], lora_name: Option<&str>) -> Option<usize> {
        self.state.held_prefix_blocks(rank, tokens, lora_name)
    }

    /// Its data-parallel ranks.
    pub fn dp_size(&self) -> u32 {
        self.state.config.model.dp_size
    }

    /// Transit times of stamped requests since the last call (see `/sim/transits`).
    pub fn take_transits(&self) -> Vec<u64> {
        self.state.take_transits()
    }

    /// `POST /tokenize` requests answered so far.
    pub fn tokenize_requests(&self) -> u64 {
        self.state.counters.tokenize_requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Event batches queued for publishing so far (every rank).
    pub fn batches_queued(&self) -> u64 {
        self.state.counters.batches_queued.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops accepting, lets responses in flight end, closes the sockets.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        self.state.shutdown().await;
    }

    /// Stops at once, as a crashed server would: the listener and every connection are
    /// dropped where they are, responses mid-stream included (for failure tests).
    pub async fn kill(self) {
        // Aborting the server task drops its connection set, which aborts every
        // connection's task.
        self.server.abort();
        let _ = self.server.await;
        self.state.shutdown().await;
    }

    /// Serves until ctrl-c (the `kvroute engine-sim` command).
    pub async fn run_until_ctrl_c(self) -> Result<(), EngineSimError> {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("engine simulator: stopping");
        self.shutdown().await;
        Ok(())
    }
}
