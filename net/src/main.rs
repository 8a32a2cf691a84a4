//! The `kvroute` binary. Subcommands:
//! - `demo`: replay the built-in Mooncake trace through simulated engines, routing with
//!   the router beside simpler policies, and print hit rate, load spread and latency.
//! - `certs`: make a CA and certificates for a local test deployment (mutual TLS).
//! - `serve`: the routing daemon (HTTP/JSON API, QUIC KV event ingest, metrics, snapshots).
//! - `publish`: simulated engines publishing their KV events to routers over QUIC.
//! - `bridge`: next to a vLLM or SGLang engine, its own ZeroMQ KV events to routers over QUIC.
//! - `engine-sim`: a simulated vLLM / SGLang server with DP ranks, publishing its KV events
//!   over ZeroMQ as the engines do.

use clap::{Parser, Subcommand};

mod bridge_cmd;
mod command_error;
mod demo;
mod engine_sim_cmd;
mod publish_cmd;
mod router_targets_args;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "kvroute", version, about = "KV-cache-aware routing to (worker, dp_rank) for LLM inference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a trace through simulated engines: cache-aware routing vs round-robin
    /// (`--live`: over real sockets, simulated engine servers behind the kvroute proxy).
    Demo(demo::DemoArgs),
    /// Make a CA, a router certificate and publisher certificates for a local test
    /// deployment of the KV event transport (mutual TLS).
    Certs(kvroute_net::tls::CertsArgs),
    /// Run the routing daemon: HTTP/JSON API, OpenAI-compatible routing proxy, QUIC and
    /// ZeroMQ KV event ingest, Prometheus metrics.
    Serve(kvroute_net::serve::ServeArgs),
    /// Simulate GPU workers: prefill the built-in trace in engine-cache simulators and
    /// publish their KV events to routers over QUIC (for trying `serve` without engines).
    Publish(publish_cmd::PublishArgs),
    /// Bridge an engine's own KV events (vLLM / SGLang ZeroMQ publishers) to routers over
    /// QUIC with mutual TLS; routers need no ZeroMQ access to the workers.
    Bridge(bridge_cmd::BridgeArgs),
    /// Simulate a vLLM or SGLang server with DP ranks (OpenAI API, SGLang /generate,
    /// prefix caches, GPU-like timing) publishing its KV events over ZeroMQ as the engines do.
    EngineSim(engine_sim_cmd::EngineSimArgs),
}

fn main() {
    let cli = Cli::parse();
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Demo(args) => demo::run(&args).map_err(Into::into),
        Command::Certs(args) => kvroute_net::tls::run_certs(&args).map_err(Into::into),
        Command::Serve(args) => kvroute_net::serve::run(&args).map_err(Into::into),
        Command::Publish(args) => publish_cmd::run(&args).map_err(Into::into),
        Command::Bridge(args) => bridge_cmd::run(&args).map_err(Into::into),
        Command::EngineSim(args) => engine_sim_cmd::run(&args).map_err(Into::into),
    };
    if let Err(error) = result {
        eprintln!("kvroute: {error}");
        std::process::exit(2);
    }
}
