//! `kvroute demo`: the main job on built-in defaults.
//!
//! The Mooncake conversation trace that ships inside the binary is expanded into blocks
//! and replayed in arrival order against simulated engine caches (`kvroute_core::sim`)
//! whose KV events feed the router, once per routing policy, on the same trace:
//!
//! - **aggregated** (default): every rank both prefills and decodes.
//!   - `kvroute`: [`Router::best_worker`](kvroute_core::route::Router::best_worker),
//!     the load-aware cost (uncached prefill work plus decode blocks already on the rank);
//!   - `largest overlap`: the rank holding the longest prefix, ties to the least busy;
//!   - `round-robin`: request `i` goes to rank `i mod ranks`.
//! - **`--disagg`**: a prefill pool and a decode pool with different DP sizes.
//!   - `kvroute`: [`Router::route_disaggregated`](kvroute_core::route::Router::route_disaggregated);
//!     every decision's bootstrap room is checked: `room % prefill_dp_size` must name
//!     the chosen prefill rank, the decode-side fields must agree, and rooms must be
//!     unique;
//!   - `round-robin` on both pools.
//!
//! Time ([`timeline`]): each rank is a serial prefill server (`--prefill-tokens-per-ms`),
//! so a rank that attracts too much work makes its requests wait; the simulated time to
//! first token (TTFT) shows it. A request decodes for `output_length x
//! --ms-per-output-token` after its prefill; the router is told `prefill_done` and
//! `finish` at those trace times, as a frontend would tell it.
//!
//! Reported: prefix-cache hit rate (blocks the engine reused / blocks requested),
//! simulated TTFT, per-rank (per-pool) load spread, decision latency, and whether every
//! overlap the router predicted equals what the engine then reused (exactness, live).
//! Any failed check makes the command exit non-zero.
//!
//! **`--live`** ([`live`]) runs the same trace over real sockets instead: simulated engine
//! servers publishing KV events over ZeroMQ, a `kvroute serve` proxy in front of them and
//! an open-loop HTTP load generator, beside round-robin on the same fleet.
//!
//! **`--report FILE.html`** ([`report`], aggregated mode) also writes the policy replays
//! as charts in one self-contained HTML file.

mod aggregated;
mod disagg;
mod live;
mod outcome;
mod report;
mod timeline;

use std::io::BufReader;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use kvroute_core::route::{CostWeights, Policy, TtftWeights};
use kvroute_core::trace::{parse_trace, parse_trace_str, TraceRequest};

/// A softmax temperature, checked by the router's own rule (`CostWeights::validate`).
fn parse_temperature(text: &str) -> Result<f64, String> {
    let temperature = text.trim().parse::<f64>().map_err(|_| format!("expected a finite number >= 0, got {text:?}"))?;
    CostWeights { temperature, ..CostWeights::default() }.validate().map_err(|e| e.to_string())?;
    Ok(temperature)
}

/// `R,D,P` as predicted-TTFT weights, each a finite number >= 0.
fn parse_ttft_weights(text: &str) -> Result<TtftWeights, String> {
    let numbers: Vec<f64> = text
        .split(',')
        .map(|part| part.trim().parse::<f64>().map_err(|_| format!("{part:?} is not a number")))
        .collect::<Result<_, _>>()?;
    let [recompute, decode, pressure] = numbers[..] else {
        return Err(format!("expected RECOMPUTE,DECODE,PRESSURE (three numbers), got {text:?}"));
    };
    let weights = TtftWeights { recompute, decode, pressure, cache_blocks: None };
    Policy::PredictedTtft(weights).validate()?;
    Ok(weights)
}

/// The trace the demo replays when no `--trace` is given (Mooncake, Apache-2.0).
const BUILT_IN_TRACE: &str = include_str!("../../../data/conversation_trace.jsonl");

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Mooncake-format JSONL trace (default: the conversation trace built into the binary).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Tokens per KV block (must divide 512, the trace's block size).
    #[arg(long, default_value_t = 16)]
    block_size: u32,
    /// Aggregated mode: simulated workers [default: 16; --live: 4].
    #[arg(long)]
    workers: Option<u32>,
    /// Aggregated mode: data-parallel ranks per worker (each has its own KV cache)
    /// [default: 4].
    #[arg(long)]
    dp_size: Option<u32>,
    /// Prefill/decode disaggregation: route each request to a prefill rank and a decode
    /// rank, and check the SGLang bootstrap room of every decision.
    #[arg(long)]
    disagg: bool,
    /// --disagg: prefill workers.
    #[arg(long, default_value_t = 8)]
    prefill_workers: u32,
    /// --disagg: DP size of each prefill worker (the room's modulus).
    #[arg(long, default_value_t = 4)]
    prefill_dp: u32,
    /// --disagg: decode workers.
    #[arg(long, default_value_t = 8)]
    decode_workers: u32,
    /// --disagg: DP size of each decode worker (independent of --prefill-dp).
    #[arg(long, default_value_t = 2)]
    decode_dp: u32,
    /// KV-cache capacity of each (prefill) rank, in tokens.
    #[arg(long, default_value_t = 262_144)]
    capacity_tokens: u64,
    /// Prefill speed of one rank, in uncached prompt tokens per ms of trace time.
    #[arg(long, default_value_t = 2)]
    prefill_tokens_per_ms: u64,
    /// Decode time per output token, in ms of trace time.
    #[arg(long, default_value_t = 20)]
    ms_per_output_token: u64,
    /// The default policy's weights, RECOMPUTE,DECODE,PRESSURE (see `kvroute serve --help`,
    /// --policy predicted-ttft) [default: 1.5,0.25,5].
    #[arg(long, value_name = "R,D,P", value_parser = parse_ttft_weights)]
    ttft_weights: Option<TtftWeights>,
    /// Aggregated mode: after the policy table, replay the default policy behind this many
    /// router replicas (requests dealt in turn; each replica hears every engine's KV events
    /// but only its own requests' lifecycle), on their own bookkeeping and then with the
    /// engines' load reports; 1 skips it.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    replicas: u32,
    /// --replicas: how often every engine reports its load (prompt tokens still to
    /// prefill, KV blocks and count of the requests it holds) to every replica, in ms of
    /// trace time.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    load_report_ms: u64,
    /// --replicas: each replica samples its pick at this softmax temperature over the
    /// normalised predicted TTFTs (`kvroute serve --temperature`), so replicas that split a
    /// burst of arrivals do not all fill the same emptiest ranks; 0 picks the smallest.
    /// One router always picks the smallest.
    #[arg(long, default_value_t = 0.05, value_name = "T", allow_negative_numbers = true, value_parser = parse_temperature)]
    replica_temperature: f64,
    /// Aggregated mode: seed of every router's tie-breaks and sampling (each replica derives its
    /// own from it); the figures of other seeds show how much of a result is the draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replay only the first N requests [default: all; --live: 600].
    #[arg(long)]
    requests: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// Aggregated mode: also write the policy replays as charts (hit rate against the
    /// ceiling, TTFT CDF, per-rank load over time, cache taken) to this self-contained
    /// HTML file.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,
    /// Run the whole system over real sockets: simulated engines (HTTP, KV events over
    /// ZeroMQ), a kvroute proxy subscribed to their events, and an open-loop load
    /// generator replaying the trace, beside round-robin on the same fleet.
    #[arg(long, help_heading = "Live demo (--live)")]
    live: bool,
    /// --live: how many times faster than the trace's timestamps requests are sent.
    #[arg(long, default_value_t = 8.0, help_heading = "Live demo (--live)")]
    speedup: f64,
    /// --live: output tokens of a request at most (the trace's own length below it).
    #[arg(long, default_value_t = 32, help_heading = "Live demo (--live)")]
    max_output_tokens: u32,
    /// --live: the simulated engines' prefill time per uncached prompt token, in us.
    #[arg(long, default_value_t = 40, help_heading = "Live demo (--live)")]
    prefill_us_per_token: u64,
    /// --live: the simulated engines' time per output token, in ms.
    #[arg(long, default_value_t = 10, help_heading = "Live demo (--live)")]
    decode_ms_per_token: u64,
}

impl DemoArgs {
    fn workers(&self) -> u32 {
        self.workers.unwrap_or(16)
    }

    fn dp_size(&self) -> u32 {
        self.dp_size.unwrap_or(4)
    }

    /// The default policy, at `--ttft-weights` if given, told the simulated caches' size.
    fn default_policy(&self) -> Policy {
        let policy = Policy::PredictedTtft(self.ttft_weights.unwrap_or_default());
        // `check_args` makes sure --capacity-tokens holds a block, so this never fails.
        policy.with_engine_cache_tokens(self.capacity_tokens, self.block_size).unwrap_or(policy)
    }

    /// `policy`, the default one at `--ttft-weights`.
    fn with_weights(&self, policy: Policy) -> Policy {
        match policy {
            Policy::PredictedTtft(_) => self.default_policy(),
            other => other,
        }
    }
}

#[derive(Debug)]
pub enum DemoError {
    Trace(String),
    Config(String),
    /// The router failed (a bug: the demo's configuration is checked up front).
    Route(kvroute_core::route::RouteError),
    /// A check the demo makes on every request failed.
    Check(String),
    /// `--report`: the charts could not be drawn or the file written.
    Report(String),
}

impl std::error::Error for DemoError {}

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DemoError::Trace(e) => write!(f, "cannot read the trace: {e}"),
            DemoError::Config(e) => write!(f, "invalid option: {e}"),
            DemoError::Route(e) => write!(f, "routing failed: {e}"),
            DemoError::Check(e) => write!(f, "check failed: {e}"),
            DemoError::Report(e) => write!(f, "cannot write the report: {e}"),
        }
    }
}

impl From<kvroute_core::route::RouteError> for DemoError {
    fn from(e: kvroute_core::route::RouteError) -> Self {
        DemoError::Route(e)
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
    if requests.windows(2).any(|w| w[1].timestamp_ms < w[0].timestamp_ms) {
        return Err(DemoError::Trace("timestamps must not decrease (the demo replays in arrival order)".into()));
    }
    Ok(requests)
}

fn progress(args: &DemoArgs, len: usize, label: &'static str) -> ProgressBar {
    if args.quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    let style = ProgressStyle::with_template("{prefix:>16} [{bar:40}] {pos}/{len} requests ({per_sec}, eta {eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label);
    bar
}

fn check_pool(name: &str, workers: u32, dp: u32) -> Result<u64, DemoError> {
    if workers == 0 || dp == 0 {
        return Err(DemoError::Config(format!("{name}: workers and DP size must be at least 1")));
    }
    let ranks = u64::from(workers) * u64::from(dp);
    if ranks > kvroute_core::index::MAX_RANKS as u64 {
        return Err(DemoError::Config(format!("{name}: {ranks} ranks; at most {}", kvroute_core::index::MAX_RANKS)));
    }
    Ok(ranks)
}

fn check_args(args: &DemoArgs) -> Result<(), DemoError> {
    if args.block_size == 0 || 512 % args.block_size != 0 {
        return Err(DemoError::Config(format!("--block-size {} must divide 512", args.block_size)));
    }
    if args.report.is_some() && (args.disagg || args.live) {
        return Err(DemoError::Config("--report charts the aggregated demo; drop --disagg and --live".into()));
    }
    if args.disagg {
        check_pool("--prefill-workers x --prefill-dp", args.prefill_workers, args.prefill_dp)?;
        let decode = check_pool("--decode-workers x --decode-dp", args.decode_workers, args.decode_dp)?;
        if u64::from(args.prefill_workers) + decode > u64::from(u32::MAX) {
            return Err(DemoError::Config("too many workers".into()));
        }
    } else {
        check_pool("--workers x --dp-size", args.workers(), args.dp_size())?;
    }
    if args.capacity_tokens < u64::from(args.block_size) {
        return Err(DemoError::Config("--capacity-tokens must hold at least one block".into()));
    }
    if args.prefill_tokens_per_ms == 0 {
        return Err(DemoError::Config("--prefill-tokens-per-ms must be at least 1".into()));
    }
    Ok(())
}

pub fn run(args: &DemoArgs) -> Result<(), DemoError> {
    check_args(args)?;
    let requests = load_trace(args)?;
    if args.live {
        live::run(args, &requests)
    } else if args.disagg {
        disagg::run(args, &requests)
    } else {
        aggregated::run(args, &requests)
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, Command};
    use kvroute_core::route::TtftWeights;

    use super::DemoArgs;

    /// `--ttft-weights`' help states the default weights; it must follow them.
    #[test]
    fn ttft_weights_help_gives_the_defaults() {
        let command = DemoArgs::augment_args(Command::new("demo"));
        let arg = command.get_arguments().find(|a| a.get_id() == "ttft_weights").expect("the flag");
        let help = arg.get_help().expect("documented").to_string();
        let w = TtftWeights::DEFAULT;
        let defaults = format!("[default: {},{},{}]", w.recompute, w.decode, w.pressure);
        assert!(help.contains(&defaults), "{help:?} lacks {defaults:?}");
    }
}
