//! `kvroute publish`: a stand-in for GPU workers, for trying a router without engines.
//!
//! Simulated engine caches (`kvroute_core::sim`) for the given workers x DP ranks prefill
//! the built-in Mooncake trace's requests (round-robin over the ranks, at `--rate`
//! requests per second), and every KV event they emit is published over QUIC to each
//! `--router` through the transport's [`Publisher`] — the same library an engine-side
//! bridge links. Register the same workers on the router (`kvroute serve --worker ...`),
//! then ask it where a prompt should go (`POST /v1/route`).

use std::io::BufReader;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kvroute_core::route::StorageTier;
use kvroute_core::sim::{Fleet, FleetConfig};
use kvroute_core::trace::{parse_trace, parse_trace_str, request_blocks_into};
use kvroute_core::{RankKey, WorkerId};
use kvroute_net::tls::WorkerGrant;
use kvroute_net::transport::{Publisher, PublisherConfig};

use crate::command_error::{error, CommandError};
use crate::router_targets_args::RouterTargetsArgs;

const BUILT_IN_TRACE: &str = include_str!("../../data/conversation_trace.jsonl");

#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    #[command(flatten)]
    routers: RouterTargetsArgs,
    /// Worker ids to simulate, e.g. 0-3,7.
    #[arg(long, default_value = "0-3")]
    workers: WorkerGrant,
    /// DP ranks per worker.
    #[arg(long, default_value_t = 4)]
    dp_size: u32,
    /// Tokens per KV block (must divide 512 and match the router's).
    #[arg(long, default_value_t = 16)]
    block_size: u32,
    /// KV-cache capacity of each rank, in tokens.
    #[arg(long, default_value_t = 262_144)]
    capacity_tokens: u64,
    /// Requests prefilled per second (0: as fast as possible).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Stop after this many requests (default: the whole trace, then keep the connection
    /// open until Ctrl-C so the routers keep the ranks).
    #[arg(long)]
    requests: Option<usize>,
    /// Mooncake-format JSONL trace (default: the built-in conversation trace).
    #[arg(long)]
    trace: Option<PathBuf>,
}

pub fn run(args: &PublishArgs) -> Result<(), CommandError> {
    if args.block_size == 0 || 512 % args.block_size != 0 {
        return Err(error(format!("--block-size {} must divide 512", args.block_size)));
    }
    if args.dp_size == 0 || args.capacity_tokens < u64::from(args.block_size) {
        return Err(error("--dp-size must be at least 1 and --capacity-tokens hold a block"));
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        return Err(error("--rate must be a finite number >= 0"));
    }
    // Best effort (see `huge_pages`): without it, only the publisher's tail latency suffers.
    let _ = kvroute_net::huge_pages::disable_transparent_huge_pages();
    let workers: Vec<WorkerId> = args.workers.ids().take(4097).collect();
    if workers.is_empty() || workers.len() * args.dp_size as usize > kvroute_core::index::MAX_RANKS {
        return Err(error(format!("--workers x --dp-size must be 1..={} ranks", kvroute_core::index::MAX_RANKS)));
    }
    let tls = args.routers.tls().map_err(error)?;
    let mut requests = match &args.trace {
        None => parse_trace_str(BUILT_IN_TRACE).map_err(|e| error(format!("built-in trace: {e}")))?,
        Some(path) => {
            let file = std::fs::File::open(path).map_err(|e| error(format!("{}: {e}", path.display())))?;
            parse_trace(BufReader::new(file)).map_err(|e| error(format!("{}: {e}", path.display())))?
        }
    };
    if let Some(n) = args.requests {
        requests.truncate(n);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| error(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        // The simulator numbers workers 0..n; `workers[i]` is the id it publishes as.
        let capacity_blocks = (args.capacity_tokens / u64::from(args.block_size)) as usize;
        let mut fleet =
            Fleet::new(FleetConfig { workers: workers.len() as u32, dp_size: args.dp_size, capacity_blocks });
        let sim_ranks: Vec<RankKey> = fleet.ranks().to_vec();
        let published = |rank: RankKey| RankKey { worker: workers[rank.worker.0 as usize], dp_rank: rank.dp_rank };
        let ranks: Vec<RankKey> = sim_ranks.iter().map(|&r| published(r)).collect();
        let targets = args.routers.targets();
        let publisher = Publisher::start(PublisherConfig::new("kvroute-publish", targets, tls, ranks.clone()))
            .map_err(|e| error(format!("cannot start the publisher: {e}")))?;
        println!(
            "publishing for {} workers x {} dp ranks (incarnation {:#x}) to {:?}; {} requests at {} /s",
            workers.len(),
            args.dp_size,
            publisher.incarnation(),
            args.routers,
            requests.len(),
            args.rate
        );
        let started = Instant::now();
        let mut chain = Vec::new();
        let mut block_events = 0u64;
        for (i, request) in requests.iter().enumerate() {
            if args.rate > 0.0 {
                let due = started + Duration::from_secs_f64(i as f64 / args.rate);
                tokio::time::sleep_until(due.into()).await;
            }
            request_blocks_into(request, args.block_size, &mut chain).map_err(|e| error(e.to_string()))?;
            let sim_rank = sim_ranks[i % sim_ranks.len()];
            for event in fleet.prefill(sim_rank, &chain).events {
                block_events += event.block_count() as u64;
                publisher
                    .publish(published(sim_rank), StorageTier::Device, event.data)
                    .map_err(|e| error(format!("publish: {e}")))?;
            }
            if (i + 1) % 1000 == 0 {
                println!("{} requests, {block_events} block events published", i + 1);
            }
        }
        println!("done: {} requests, {block_events} block events; Ctrl-C to disconnect", requests.len());
        if let Some(first) = requests.first() {
            // The simulator's block hashes are synthetic (from the trace's hash ids), so a
            // prompt that hits is given as block hashes: the first request's first blocks.
            request_blocks_into(first, args.block_size, &mut chain).map_err(|e| error(e.to_string()))?;
            let hashes: Vec<String> = chain.iter().take(8).map(|h| h.0.to_string()).collect();
            println!(
                "try: curl -s localhost:8080/v1/route -d '{{\"block_hashes\": [{}], \"dry_run\": true}}'",
                hashes.join(", ")
            );
        }
        let _ = tokio::signal::ctrl_c().await;
        publisher.shutdown().await;
        Ok(())
    })
}
