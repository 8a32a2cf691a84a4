//! `replay`: the open-loop replay benchmark of kvroute's index against the peers' indexers.
//!
//! ```text
//! cargo run --release -p kvroute-bench --bin replay -- [--trace FILE] [--block-size N]
//!     [--workers W --dp-size R] [--backends kvroute,dynamo-crtc,...] [--json]
//! ```
//!
//! See `--help` for every flag and the library docs (`kvroute_bench`) for the method. With
//! `--json` the last line on stdout is the result as one JSON object; progress goes to stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kvroute_bench::backend::{BackendKind, PositionalHashes};
use kvroute_bench::memory::CountingAlloc;
use kvroute_bench::replay::Pacing;
use kvroute_bench::schedule::Routing;
use kvroute_bench::sweep::{default_trace, run_bench, BenchConfig, TraceSource};
use kvroute_bench::trace_shapes::TraceShape;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: CountingAlloc<MiMalloc> = CountingAlloc(MiMalloc);

/// Open-loop replay of a Mooncake trace against kvroute's index and the peers' indexers
/// (Dynamo's ConcurrentRadixTreeCompressed and PositionalIndexer, the SGLang gateway's
/// ChainIndex), all in this process, on one schedule.
///
/// The trace is run once through a simulated fleet of engine caches (workers x dp ranks,
/// LRU caches of --capacity-tokens each); every request is routed by the simulator's
/// ground truth (see --routing), which yields a schedule of lookups (a request's block
/// hashes) and KV events (evictions, stores) with the reference index's answer to every
/// lookup. Each backend replays that schedule on
/// --query-threads query threads and --event-threads event lanes (sharded by rank); offered
/// rates set deadlines evenly over the block ops (or by trace timestamps with --pacing
/// trace). Every lookup of every trial is checked against the reference: a backend is
/// `exact` only if all of them match.
///
/// Per backend: one calibration trial as fast as possible, then trials at offered rates
/// searching for the highest rate it sustains (achieved >= 99% of offered), then one trial
/// at the common rate (the highest rate every exact backend sustains). Block ops = request
/// hashes + stored hashes + removed hashes; achieved = all block ops / (last completion -
/// start). Lookup latency is the service time of the backend's lookup call; memory is the
/// index's live heap bytes (counting allocator over mimalloc) per distinct block held at
/// the end.
#[derive(Parser, Debug)]
#[command(name = "replay", version, verbatim_doc_comment)]
struct Args {
    /// Mooncake-format trace (JSON lines with timestamp, input_length, output_length,
    /// hash_ids). Default: the trace the repository ships (data/conversation_trace.jsonl).
    #[arg(long, value_name = "FILE", conflicts_with = "trace_shape")]
    trace: Option<PathBuf>,

    /// Replay a generated workload instead of a trace file: `shared-prefix` (2,000 users
    /// behind one 8,192-token system prompt, short unique tails) or `agent` (12 agents with
    /// contexts growing turn by turn to 128 Ki tokens). Seeded: every run is the same.
    #[arg(long, value_enum, value_name = "SHAPE")]
    trace_shape: Option<TraceShape>,

    /// Requests of the generated workload (`--trace-shape`).
    #[arg(long, default_value_t = 4_000, value_parser = clap::value_parser!(u64).range(1..))]
    shape_requests: u64,

    /// Seed of the generated workload (`--trace-shape`).
    #[arg(long, default_value_t = 1)]
    shape_seed: u64,

    /// Write the trace (the file, or the generated workload) to FILE as Mooncake JSON lines
    /// and exit without replaying: e.g. to run a generated shape through
    /// `kvroute demo --trace FILE`.
    #[arg(long, value_name = "FILE")]
    write_trace: Option<PathBuf>,

    /// Tokens per KV block; must divide 512 (each trace hash id covers 512 tokens).
    #[arg(long, default_value_t = 16, value_parser = parse_block_size)]
    block_size: u32,

    /// Simulated engine workers.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    workers: u32,

    /// Data-parallel ranks per worker (each rank is its own KV cache and routing target).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    dp_size: u32,

    /// Per-rank KV cache capacity in tokens (capacity in blocks = tokens / block size), small
    /// enough that the fleet evicts.
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1..))]
    capacity_tokens: u64,

    /// Replay only the first N requests of the trace.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_requests: Option<u64>,

    /// Ground-truth routing of the schedule: `cache-aware` = the SGLang gateway's rule
    /// (largest cached prefix unless it covers under half the request or the load, in
    /// requests routed so far, is imbalanced by more than 32 and 10%; then the least-loaded
    /// rank); `prefix` = always the largest cached prefix (ties: fewest requests, lowest
    /// rank), which sends every Mooncake request to one rank since they all share their
    /// first block.
    #[arg(long, value_enum, default_value_t = Routing::CacheAware)]
    routing: Routing,

    /// Query threads (lookup k runs on thread k mod Q).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    query_threads: u64,

    /// Event lanes (every event of a rank goes through one lane, in order). Dynamo's
    /// ThreadPoolIndexer gets this many pool threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    event_threads: u64,

    /// Shards of kvroute's index, each its own tree and writer lock, ranks partitioned as
    /// the event lanes are [default: one per event lane]. 1 with several lanes: every lane
    /// writes the one tree, serialised.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    kvroute_shards: Option<u64>,

    /// Diagnostic: replay in the schedule's total order (every lookup waits for every
    /// earlier event, every event for every earlier lookup) instead of ordering only
    /// conflicting lookups and events. Separates a backend's sequential semantics from its
    /// behaviour under concurrent writes.
    #[arg(long)]
    total_order: bool,

    /// Backends to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kvroute,dynamo-crtc,dynamo-positional,sglang-chain"
    )]
    backends: Vec<BackendKind>,

    /// How deadlines are spread over the replay window: `ops` evenly by cumulative block
    /// ops; `trace` by the requests' trace timestamps scaled to the window.
    #[arg(long, value_enum, default_value_t = Pacing::Ops)]
    pacing: Pacing,

    /// Block hashes fed to Dynamo's PositionalIndexer: `dynamo-chain` = Dynamo's own
    /// sequence hash of each block's content path (the indexer re-derives and verifies this
    /// chain on every lookup, so it requires it); `engine` = the simulator's engine hashes,
    /// as every other backend gets them.
    #[arg(long, value_enum, default_value_t = PositionalHashes::DynamoChain)]
    positional_hashes: PositionalHashes,

    /// Rate-search trials per backend after the calibration (0: calibration only). While
    /// rates are sustained the search climbs past the calibrated rate in growing steps,
    /// then narrows the bracket to --tolerance.
    #[arg(long, default_value_t = 12)]
    max_runs: usize,

    /// Stop the search once highest failed / highest sustained rate <= 1 + this.
    #[arg(long, default_value_t = 0.05, value_parser = parse_tolerance)]
    tolerance: f64,

    /// Repeat a paced rate until its trials add up to this many seconds of replay window
    /// (at most --max-repeats times); the repeats form one window (sustained when their
    /// block ops over their summed time reach 99% of the rate), and its latency
    /// percentiles merge the repeats. Short schedules (large blocks)
    /// thus get several trials per rate.
    #[arg(long, default_value_t = 1.0, value_parser = parse_positive)]
    min_seconds_per_rate: f64,

    /// Most trials per paced rate.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_repeats: u32,

    /// Skip the search: run every backend at this offered rate (block ops/s) only.
    #[arg(long, value_name = "OPS_PER_SEC", value_parser = parse_rate)]
    rate: Option<f64>,

    /// Quick look: --max-runs 2 --tolerance 0.2 --max-repeats 1.
    #[arg(long)]
    quick: bool,

    /// Print the result as one JSON object on the last line of stdout (else a table).
    #[arg(long)]
    json: bool,

    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_block_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("`{s}` is not a positive integer"))?;
    if n == 0 || 512 % n != 0 {
        return Err(format!("{n} does not divide 512 (use 1, 2, 4, 8, 16, 32, 64, 128, 256 or 512)"));
    }
    Ok(n)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !(r.is_finite() && r > 0.0) {
        return Err("the rate must be a positive number of block ops per second".into());
    }
    Ok(r)
}

fn parse_positive(s: &str) -> Result<f64, String> {
    let t: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !(t.is_finite() && t > 0.0) {
        return Err("expected a positive number".into());
    }
    Ok(t)
}

fn parse_tolerance(s: &str) -> Result<f64, String> {
    let t: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !(t.is_finite() && t > 0.0) {
        return Err("the tolerance must be a positive number".into());
    }
    Ok(t)
}

fn main() -> ExitCode {
    GLOBAL.activate();
    let args = Args::parse();
    let mut backends = args.backends.clone();
    backends.dedup();
    let config = BenchConfig {
        trace: match args.trace_shape {
            Some(shape) => TraceSource::Shape { shape, requests: args.shape_requests as usize, seed: args.shape_seed },
            None => TraceSource::File(args.trace.unwrap_or_else(default_trace)),
        },
        block_size: args.block_size,
        workers: args.workers,
        dp_size: args.dp_size,
        capacity_tokens: args.capacity_tokens,
        max_requests: args.max_requests.map(|n| n as usize),
        routing: args.routing,
        query_threads: args.query_threads as usize,
        event_threads: args.event_threads as usize,
        kvroute_shards: args.kvroute_shards.map(|n| n as usize),
        total_order: args.total_order,
        backends,
        pacing: args.pacing,
        positional_hashes: args.positional_hashes,
        max_runs: if args.quick { args.max_runs.min(2) } else { args.max_runs },
        tolerance: if args.quick { args.tolerance.max(0.2) } else { args.tolerance },
        fixed_rate: args.rate,
        min_seconds_per_rate: args.min_seconds_per_rate,
        max_repeats: if args.quick { 1 } else { args.max_repeats },
        verbose: !args.quiet,
        mismatch_examples: 3,
    };
    if let Some(path) = &args.write_trace {
        return match write_trace(&config.trace, path) {
            Ok(requests) => {
                println!("wrote {requests} requests of {} to {}", config.trace.describe(), path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run_bench(&config) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `trace`'s requests to `path`, one JSON object a line; returns how many.
fn write_trace(trace: &TraceSource, path: &std::path::Path) -> Result<usize, String> {
    use std::io::Write;
    let requests = trace.load()?;
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for request in &requests {
        let line = serde_json::to_string(request).map_err(|e| e.to_string())?;
        writeln!(out, "{line}").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    out.flush().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(requests.len())
}
