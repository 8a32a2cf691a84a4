//! `kvroute bridge`: runs next to a vLLM or SGLang engine, subscribes to its own ZeroMQ KV
//! events and publishes them to routers over the QUIC transport (mutual TLS, resume, full
//! dumps for routers that join late); see `kvroute_net::bridge`.

use std::time::Duration;

use kvroute_core::engine_events::block_mapper::MapperConfig;
use kvroute_core::hashing::{BlockHasher, HashScheme};
use kvroute_net::bridge::{BridgeConfig, BridgeHandle};
use kvroute_net::engine_ingest::{EngineIngestConfig, EngineSource};
use kvroute_net::serve::config::LogSettings;
use kvroute_net::serve::logging::init_logging;
use kvroute_net::serve::options::{HashSchemeName, LogFormat};
use kvroute_net::serve::worker_registration::{WorkerRegistration, ENGINE_EVENTS_FLAG_SYNTAX};
use kvroute_net::transport::PublisherConfig;

use crate::command_error::{error, CommandError};
use crate::router_targets_args::RouterTargetsArgs;

#[derive(clap::Args, Debug)]
#[command(after_help = "Example, next to a vLLM server started with \
--kv-events-config '{\"enable_kv_cache_events\": true, \"publisher\": \"zmq\", \"endpoint\": \"tcp://*:5557\", \
\"replay_endpoint\": \"tcp://*:5600\"}' and --data-parallel-size 2:\n  kvroute bridge --engine-events \
worker_id=3,endpoint=tcp://127.0.0.1:5557,replay=tcp://127.0.0.1:5600,dp_size=2 --router 10.0.0.1:4433 \
--ca ca.pem --cert publisher-3.pem --key publisher-3.key")]
pub struct BridgeArgs {
    /// An engine to subscribe to (repeatable): worker_id=N,endpoint=tcp://HOST:PORT with
    /// optional replay=tcp://HOST:PORT, dp_size (default 1), dp_start, engine=vllm|sglang,
    /// engine_block_size (SGLang page size), topic, bind=true. Rank i uses port + i.
    #[arg(long = "engine-events", value_name = "SPEC", required = true, value_parser = WorkerRegistration::parse_engine_flag)]
    engine_events: Vec<WorkerRegistration>,
    #[command(flatten)]
    routers: RouterTargetsArgs,
    /// The routers' block size: the bridge hashes blocks as they do.
    #[arg(long, default_value_t = 16)]
    block_size: u32,
    /// The routers' hash scheme.
    #[arg(long, value_enum, default_value = "kv64")]
    hash_scheme: HashSchemeName,
    /// How often to log the counters (0: never).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    stats_interval: Duration,
}

pub fn run(args: &BridgeArgs) -> Result<(), CommandError> {
    init_logging(&LogSettings { format: LogFormat::Text, filter: None }).map_err(|e| error(e.to_string()))?;
    // As `kvroute serve` does: no 2 MiB page zeroing on the event path (best effort).
    if let Err(e) = kvroute_net::huge_pages::disable_transparent_huge_pages() {
        tracing::warn!(error = %e, "transparent huge pages stay on");
    }
    let tls = args.routers.tls().map_err(error)?;
    let scheme = match args.hash_scheme {
        HashSchemeName::Kv64 => HashScheme::Kv64,
        HashSchemeName::Xxh3 => HashScheme::Xxh3Compat,
    };
    let hasher = BlockHasher::with_scheme(args.block_size as usize, scheme).map_err(|e| error(e.to_string()))?;
    let mut sources: Vec<EngineSource> = Vec::new();
    for registration in &args.engine_events {
        let source = registration
            .engine_source()
            .map_err(|e| error(format!("--engine-events: {e}")))?
            .ok_or_else(|| error(format!("--engine-events needs an endpoint: {ENGINE_EVENTS_FLAG_SYNTAX}")))?;
        if sources.iter().any(|s| s.worker == source.worker) {
            return Err(error(format!("worker {} is given twice", source.worker.0)));
        }
        sources.push(source);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| error(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let targets = args.routers.targets();
        let config = BridgeConfig {
            sources,
            publisher: PublisherConfig::new("kvroute-bridge", targets, tls, Vec::new()),
            ingest: EngineIngestConfig::new(MapperConfig::new(hasher)),
        };
        let bridge = BridgeHandle::start(config).map_err(|e| error(e.to_string()))?;
        tracing::info!(incarnation = format!("{:#x}", bridge.publisher().incarnation()), routers = ?args.routers.routers, "bridge running");
        let stats = async {
            if args.stats_interval.is_zero() {
                return std::future::pending().await;
            }
            let mut tick = tokio::time::interval(args.stats_interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = bridge.engines().snapshot();
                tracing::info!(
                    messages = s.stream.messages,
                    block_events = s.stream.block_events_applied,
                    gaps = s.seq.gaps,
                    replays = s.seq.replays_requested,
                    unrecovered = s.seq.unrecovered_batches,
                    dropped = ?s.stream.dropped,
                    "bridge counters"
                );
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = stats => {}
        }
        tracing::info!("bridge stopping");
        bridge.shutdown().await;
        Ok(())
    })
}
