//! Engine simulators for end-to-end tests: per-rank KV-event and replay ports on
//! consecutive free loopback ports, as a real engine binds them, and one LoRA adapter.

use std::net::SocketAddr;
use std::time::Duration;

use kvroute_core::sim::{EngineModelConfig, EngineTiming};
use kvroute_net::engine_sim::{DisaggregationMode, EngineKind, EngineSim, EngineSimConfig};

use crate::ports::free_base_port;

/// The LoRA adapter every test simulator serves besides its base model.
pub const ADAPTER: &str = "adapter-a";

/// What a test simulator looks like.
#[derive(Clone, Copy, Debug)]
pub struct SimShape {
    pub kind: EngineKind,
    pub dp_size: u32,
    pub block_size: u32,
    pub capacity_blocks: usize,
    /// Between output tokens (prefill is instant).
    pub decode: Duration,
    /// Publish KV events (with replay sockets).
    pub events: bool,
    pub disaggregation: DisaggregationMode,
}

impl SimShape {
    /// A vLLM-like simulator: `dp_size` ranks, 16-token blocks, room for 1,000 blocks a
    /// rank, instant prefill and decode, events on.
    pub fn vllm(dp_size: u32) -> SimShape {
        SimShape {
            kind: EngineKind::Vllm,
            dp_size,
            block_size: 16,
            capacity_blocks: 1_000,
            decode: Duration::ZERO,
            events: true,
            disaggregation: DisaggregationMode::Null,
        }
    }
}

/// Starts a simulator of `shape` listening on `listen` (port 0: any).
pub async fn start_sim_on(shape: SimShape, listen: SocketAddr) -> EngineSim {
    EngineSim::start(sim_config(shape, listen)).await.expect("engine simulator")
}

/// The configuration of a simulator of `shape` on `listen`, for a test to change further.
pub fn sim_config(shape: SimShape, listen: SocketAddr) -> EngineSimConfig {
    let mut config = EngineSimConfig::new(shape.kind, listen);
    config.model = EngineModelConfig {
        dp_size: shape.dp_size,
        block_size: shape.block_size,
        capacity_blocks: shape.capacity_blocks,
        timing: EngineTiming {
            prefill_overhead: Duration::ZERO,
            prefill_per_token: Duration::ZERO,
            decode_per_token: shape.decode,
        },
        ..EngineModelConfig::default()
    };
    let ports = shape.dp_size as u16;
    config.kv_events_port = shape.events.then(|| free_base_port(ports));
    config.replay_port = shape.events.then(|| free_base_port(ports));
    config.lora_adapters = vec![ADAPTER.to_owned()];
    config.disaggregation = shape.disaggregation;
    config
}

/// Starts a simulator of `shape` on any free port.
pub async fn start_sim(shape: SimShape) -> EngineSim {
    start_sim_on(shape, "127.0.0.1:0".parse().expect("address")).await
}
