//! The `kvroute` binary. Subcommands:
//! - `demo`: replay the built-in Mooncake trace through simulated engines, routing with
//!   the index beside round-robin, and print hit rate, load spread and lookup latency.

use clap::{Parser, Subcommand};

mod demo;

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
    /// Replay a trace through simulated engines: cache-aware routing vs round-robin.
    Demo(demo::DemoArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
    };
    if let Err(error) = result {
        eprintln!("kvroute: {error}");
        std::process::exit(2);
    }
}
