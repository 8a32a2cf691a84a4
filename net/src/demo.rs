//! `kvroute demo`: the main job on built-in defaults.
//!
//! The Mooncake conversation trace that ships inside the binary is expanded into blocks
//! and replayed in arrival order against a fleet of simulated engine caches
//! (`kvroute_core::sim`), twice:
//! - **cache-aware**: every request is looked up in the index, sent to the rank with the
//!   largest overlap (ties to the rank with the fewest active requests), and the events
//!   its engine publishes are applied to the index;
//! - **round-robin**: request `i` goes to rank `i mod ranks`.
//!
//! A request is *active* on its rank from its arrival for `output_length x
//! --ms-per-output-token` of trace time. Reported: prefix-cache hit rate (blocks the
//! engine reused / blocks requested), per-rank load spread (requests and blocks
//! computed), the index's lookup latency, and whether every overlap the index predicted
//! for the chosen rank equals what the engine then reused (exactness, live).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::BufReader;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use kvroute_core::sim::{Fleet, FleetConfig};
use kvroute_core::trace::{parse_trace, parse_trace_str, request_blocks_into, TraceRequest};
use kvroute_core::{KvIndex, RankKey};

/// The trace the demo replays when no `--trace` is given (Mooncake, Apache-2.0).
const BUILT_IN_TRACE: &str = include_str!("../../data/conversation_trace.jsonl");

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Mooncake-format JSONL trace (default: the conversation trace built into the binary).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Tokens per KV block (must divide 512, the trace's block size).
    #[arg(long, default_value_t = 16)]
    block_size: u32,
    /// Simulated workers.
    #[arg(long, default_value_t = 16)]
    workers: u32,
    /// Data-parallel ranks per worker (each has its own KV cache).
    #[arg(long, default_value_t = 4)]
    dp_size: u32,
    /// KV-cache capacity of each rank, in tokens.
    #[arg(long, default_value_t = 262_144)]
    capacity_tokens: u64,
    /// Replay only the first N requests (default: all).
    #[arg(long)]
    requests: Option<usize>,
    /// How long a request stays active on its rank per output token, in trace ms.
    #[arg(long, default_value_t = 20)]
    ms_per_output_token: u64,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug)]
pub enum DemoError {
    Trace(String),
    Config(String),
}

impl std::error::Error for DemoError {}

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DemoError::Trace(e) => write!(f, "cannot read the trace: {e}"),
            DemoError::Config(e) => write!(f, "invalid option: {e}"),
        }
    }
}

/// What one routing policy achieved over the replay.
#[derive(Default)]
struct PolicyOutcome {
    requested_blocks: u64,
    reused_blocks: u64,
    requests_per_rank: Vec<u64>,
    computed_blocks_per_rank: Vec<u64>,
    lookup_ns: Vec<u64>,
    predictions: u64,
    exact_predictions: u64,
}

impl PolicyOutcome {
    fn new(ranks: usize) -> Self {
        PolicyOutcome {
            requests_per_rank: vec![0; ranks],
            computed_blocks_per_rank: vec![0; ranks],
            ..PolicyOutcome::default()
        }
    }
    fn hit_rate(&self) -> f64 {
        self.reused_blocks as f64 / self.requested_blocks.max(1) as f64
    }
}

/// Active requests per rank over trace time.
struct ActiveRequests {
    ends: BinaryHeap<Reverse<(u64, usize)>>,
    active: Vec<u32>,
}

impl ActiveRequests {
    fn new(ranks: usize) -> Self {
        ActiveRequests { ends: BinaryHeap::new(), active: vec![0; ranks] }
    }
    fn advance_to(&mut self, now_ms: u64) {
        while let Some(Reverse((end, rank))) = self.ends.peek().copied() {
            if end > now_ms {
                break;
            }
            self.ends.pop();
            self.active[rank] -= 1;
        }
    }
    fn start(&mut self, rank: usize, end_ms: u64) {
        self.active[rank] += 1;
        self.ends.push(Reverse((end_ms, rank)));
    }
}

fn load_trace(args: &DemoArgs) -> Result<Vec<TraceRequest>, DemoError> {
    let mut requests = match &args.trace {
        None => parse_trace_str(BUILT_IN_TRACE).map_err(|e| DemoError::Trace(e.to_string()))?,
        Some(path) => {
            let file = std::fs::File::open(path).map_err(|e| DemoError::Trace(format!("{}: {e}", path.display())))?;
            parse_trace(BufReader::new(file)).map_err(|e| DemoError::Trace(format!("{}: {e}", path.display())))?
        }
    };
    if let Some(n) = args.requests {
        requests.truncate(n);
    }
    if requests.is_empty() {
        return Err(DemoError::Trace("the trace has no requests".into()));
    }
    Ok(requests)
}

fn progress(args: &DemoArgs, len: usize, label: &'static str) -> ProgressBar {
    if args.quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:40}] {pos}/{len} requests ({per_sec}, eta {eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label);
    bar
}

fn replay(args: &DemoArgs, requests: &[TraceRequest], cache_aware: bool) -> Result<PolicyOutcome, DemoError> {
    let capacity_blocks = (args.capacity_tokens / args.block_size as u64) as usize;
    let mut fleet = Fleet::new(FleetConfig { workers: args.workers, dp_size: args.dp_size, capacity_blocks });
    let ranks: Vec<RankKey> = fleet.ranks().to_vec();
    let index = KvIndex::new();
    for rank in &ranks {
        index.register_rank(*rank).map_err(|e| DemoError::Config(e.to_string()))?;
    }
    let mut outcome = PolicyOutcome::new(ranks.len());
    let mut active = ActiveRequests::new(ranks.len());
    let bar = progress(args, requests.len(), if cache_aware { "cache-aware" } else { "round-robin" });
    let mut chain = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        request_blocks_into(request, args.block_size, &mut chain).map_err(|e| DemoError::Config(e.to_string()))?;
        active.advance_to(request.timestamp_ms);
        let (slot, predicted) = if cache_aware {
            let started = Instant::now();
            let scores = index.find_matches(&chain);
            outcome.lookup_ns.push(started.elapsed().as_nanos() as u64);
            let mut best = (0u32, u32::MAX, usize::MAX);
            for (slot, rank) in ranks.iter().enumerate() {
                let overlap = scores.get(*rank);
                let load = active.active[slot];
                // Largest overlap; ties to the least active, then the lowest rank.
                if overlap > best.0 || (overlap == best.0 && load < best.1) {
                    best = (overlap, load, slot);
                }
            }
            (best.2, Some(best.0))
        } else {
            (i % ranks.len(), None)
        };
        let prefill = fleet.prefill(ranks[slot], &chain);
        if let Some(predicted) = predicted {
            outcome.predictions += 1;
            outcome.exact_predictions += u64::from(predicted as usize == prefill.cached_blocks);
        }
        if cache_aware {
            index.apply_batch(&prefill.events);
        }
        outcome.requested_blocks += chain.len() as u64;
        outcome.reused_blocks += prefill.cached_blocks as u64;
        outcome.requests_per_rank[slot] += 1;
        outcome.computed_blocks_per_rank[slot] += (chain.len() - prefill.cached_blocks) as u64;
        let end = request.timestamp_ms + request.output_length as u64 * args.ms_per_output_token;
        active.start(slot, end);
        if i % 64 == 0 {
            bar.set_position(i as u64);
        }
    }
    bar.finish_and_clear();
    Ok(outcome)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn spread_ratio(values: &[u64]) -> f64 {
    let mean = values.iter().sum::<u64>() as f64 / values.len().max(1) as f64;
    values.iter().copied().max().unwrap_or(0) as f64 / mean.max(f64::MIN_POSITIVE)
}

/// min / mean / max and max over mean of a per-rank quantity.
fn spread(values: &[u64]) -> String {
    let min = values.iter().copied().min().unwrap_or(0);
    let max = values.iter().copied().max().unwrap_or(0);
    let mean = values.iter().sum::<u64>() as f64 / values.len().max(1) as f64;
    format!("{min:>8} {mean:>10.1} {max:>8} {:>8.2}", max as f64 / mean.max(f64::MIN_POSITIVE))
}

pub fn run(args: &DemoArgs) -> Result<(), DemoError> {
    if args.block_size == 0 || 512 % args.block_size != 0 {
        return Err(DemoError::Config(format!("--block-size {} must divide 512", args.block_size)));
    }
    if args.workers == 0 || args.dp_size == 0 {
        return Err(DemoError::Config("--workers and --dp-size must be at least 1".into()));
    }
    let ranks = args.workers as u64 * args.dp_size as u64;
    if ranks > kvroute_core::index::MAX_RANKS as u64 {
        return Err(DemoError::Config(format!("{ranks} ranks; at most {}", kvroute_core::index::MAX_RANKS)));
    }
    if args.capacity_tokens < args.block_size as u64 {
        return Err(DemoError::Config("--capacity-tokens must hold at least one block".into()));
    }
    let requests = load_trace(args)?;
    println!(
        "kvroute demo: {} requests, block size {}, {} workers x {} dp ranks, {} tokens of KV cache per rank",
        requests.len(),
        args.block_size,
        args.workers,
        args.dp_size,
        args.capacity_tokens
    );
    let started = Instant::now();
    let aware = replay(args, &requests, true)?;
    let robin = replay(args, &requests, false)?;
    let mut lookups = aware.lookup_ns.clone();
    lookups.sort_unstable();

    println!();
    println!("{:<26} {:>12} {:>12}", "", "cache-aware", "round-robin");
    println!("{:<26} {:>11.1}% {:>11.1}%", "prefix-cache hit rate", aware.hit_rate() * 100.0, robin.hit_rate() * 100.0);
    println!("{:<26} {:>12} {:>12}", "blocks reused", aware.reused_blocks, robin.reused_blocks);
    println!("{:<26} {:>12} {:>12}", "blocks requested", aware.requested_blocks, robin.requested_blocks);
    println!();
    println!("per-rank load spread            min       mean      max  max/mean");
    println!("  cache-aware requests   {}", spread(&aware.requests_per_rank));
    println!("  round-robin requests   {}", spread(&robin.requests_per_rank));
    println!("  cache-aware computed   {}", spread(&aware.computed_blocks_per_rank));
    println!("  round-robin computed   {}", spread(&robin.computed_blocks_per_rank));
    println!();
    println!(
        "index lookup latency: p50 {} ns, p99 {} ns, p99.9 {} ns over {} lookups",
        percentile(&lookups, 0.50),
        percentile(&lookups, 0.99),
        percentile(&lookups, 0.999),
        lookups.len()
    );
    println!("index predictions equal to the engine's reuse: {}/{}", aware.exact_predictions, aware.predictions);
    if spread_ratio(&aware.requests_per_rank) > 4.0 {
        println!(
            "note: largest-overlap routing ignores load, so requests pile onto the ranks that hold the shared \
             system prompt; a load-aware cost is needed to spread them"
        );
    }
    println!("(both replays took {:.1} s)", started.elapsed().as_secs_f64());
    if aware.exact_predictions != aware.predictions {
        return Err(DemoError::Config("the index disagreed with the simulated engines".into()));
    }
    Ok(())
}
