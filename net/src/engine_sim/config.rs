//! What one engine simulator is: the engine kind it imitates, where it listens, its model
//! (ranks, block size, cache, timing) and where each rank publishes its KV events.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use kvroute_core::engine_events::encode::EngineFormat;
use kvroute_core::sim::{EngineModelConfig, EngineModelError};

use crate::tokenization::PromptTokenizer;

/// The engine an [`EngineSimConfig`] imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum EngineKind {
    Vllm,
    Sglang,
}

impl EngineKind {
    /// The KV-event encoding of the engine's newest release (maps).
    pub fn default_event_format(self) -> EngineFormat {
        match self {
            EngineKind::Vllm => EngineFormat::VllmMap,
            EngineKind::Sglang => EngineFormat::SglangMap,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Vllm => "vllm",
            EngineKind::Sglang => "sglang",
        }
    }
}

/// SGLang's `--disaggregation-mode`: what the server does with the bootstrap fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum DisaggregationMode {
    /// Aggregated: prefill and decode here; bootstrap fields ignored.
    #[default]
    Null,
    /// Prefill only: a request with a `bootstrap_room` leaves its KV for the decode server
    /// to fetch (`GET /sim/bootstrap/{room}`), and is answered after one token.
    Prefill,
    /// Decode only: a request must carry the bootstrap fields; its KV is fetched from the
    /// prefill server they name, on the rank the room rule gives, before decoding.
    Decode,
}

impl DisaggregationMode {
    pub fn name(self) -> &'static str {
        match self {
            DisaggregationMode::Null => "null",
            DisaggregationMode::Prefill => "prefill",
            DisaggregationMode::Decode => "decode",
        }
    }
}

/// One engine simulator.
#[derive(Clone, Debug)]
pub struct EngineSimConfig {
    pub kind: EngineKind,
    /// HTTP listen address (port 0: any free port).
    pub listen: SocketAddr,
    /// The name `/v1/models` lists and requests must name (`model`).
    pub served_model_name: String,
    /// LoRA adapters served besides the base model: a request naming one as its `model`
    /// (OpenAI API) or `lora_path` (SGLang) runs under that adapter.
    pub lora_adapters: Vec<String>,
    pub model: EngineModelConfig,
    /// Rank `r`'s PUB binds `tcp://{kv_events_host}:{kv_events_port + r}`; `None`: no
    /// KV events. Port 0 binds any free port for every rank.
    pub kv_events_port: Option<u16>,
    /// Rank `r`'s replay ROUTER binds `replay_port + r`; `None`: no replay socket.
    pub replay_port: Option<u16>,
    /// Host the ZeroMQ sockets bind (`*`: every interface).
    pub kv_events_host: String,
    /// The encoding of the published batches.
    pub event_format: EngineFormat,
    /// The ZeroMQ topic of every message (the engines' default is empty).
    pub topic: String,
    pub disaggregation: DisaggregationMode,
    /// A prefill server dispatches a request that names no rank by `bootstrap_room %
    /// dp_size` and tells decode servers so (SGLang's `follow_bootstrap_room`); `false`: by
    /// load, decode servers asking where the KV went.
    pub follow_bootstrap_room: bool,
    /// How text prompts and chat messages become token ids (default: the byte tokenizer
    /// and its chat format; a model's `tokenizer.json` to match a router tokenizing with it).
    pub tokenizer: Arc<PromptTokenizer>,
}

impl EngineSimConfig {
    /// A simulator of `kind` on `listen` with the model's defaults, publishing on free
    /// loopback ports (with replay).
    pub fn new(kind: EngineKind, listen: SocketAddr) -> EngineSimConfig {
        EngineSimConfig {
            kind,
            listen,
            served_model_name: "kvroute-sim".to_owned(),
            lora_adapters: Vec::new(),
            model: EngineModelConfig::default(),
            kv_events_port: Some(0),
            replay_port: Some(0),
            kv_events_host: "127.0.0.1".to_owned(),
            event_format: kind.default_event_format(),
            topic: String::new(),
            disaggregation: DisaggregationMode::Null,
            follow_bootstrap_room: true,
            tokenizer: Arc::new(PromptTokenizer::bytes()),
        }
    }
}

/// The simulator could not start.
#[derive(Debug)]
pub enum EngineSimError {
    /// The model configuration is invalid.
    Model(EngineModelError),
    /// A port range does not fit: `port + dp_size - 1` is over 65535.
    PortRange { port: u16, dp_size: u32 },
    /// The HTTP listener could not bind.
    Bind { address: String, reason: String },
    /// A rank's ZeroMQ sockets could not bind.
    Publisher { rank: u32, reason: String },
}

impl fmt::Display for EngineSimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineSimError::Model(error) => write!(f, "engine simulator: {error}"),
            EngineSimError::PortRange { port, dp_size } => {
                write!(f, "ports {port} + rank do not fit {dp_size} ranks under 65536")
            }
            EngineSimError::Bind { address, reason } => write!(f, "cannot listen on {address}: {reason}"),
            EngineSimError::Publisher { rank, reason } => write!(f, "rank {rank}'s KV event sockets: {reason}"),
        }
    }
}

impl std::error::Error for EngineSimError {}
