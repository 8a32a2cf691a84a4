//! `soak`: the soak test of `kvroute serve` (issue 14 item 7), run by hand, not in CI.
//!
//! ```text
//! cargo build --release -p kvroute-net --bin kvroute
//! cargo run --release -p kvroute-bench --bin soak -- --minutes 10
//!     [--kvroute target/release/kvroute] [--sample-secs 5] [--warmup-secs 60]
//!     [--rss-growth-mb 64] [--rss-max-mb 512] [--insecure] ...
//! ```
//!
//! Starts the release `kvroute serve` as a child process on free loopback ports (mutual
//! TLS with certificates from `kvroute certs`), registers exact-mode workers (each with an
//! in-process QUIC publisher fed by a simulated engine, and a reference model of what the
//! index must hold) and approximate-mode workers (no publisher), and for `--minutes` runs:
//! route clients (`/v1/route`, `prefill_done`, `finish`), publisher churn (restart, crash,
//! leave past the grace and rejoin), and bad HTTP and QUIC traffic. Every `--sample-secs`
//! it prints the daemon's RSS, index size, decisions, events applied, active requests and
//! approximate blocks, and times `/healthz`. At the end it compares `/v1/overlaps` of every
//! chain with the reference and exits non-zero on any failure (RSS growth after the
//! warm-up, a mismatch, an index anomaly counter, lost or doubled requests, a slow health
//! check, the daemon dying, ...). The module `kvroute_bench::soak` documents the
//! pieces and `kvroute_bench::soak::verdict` every failure condition.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kvroute_bench::soak::{run, SoakConfig};

/// Soak test of `kvroute serve`: churning publishers, routing load and bad traffic for N
/// minutes; fails on RSS growth, lost or doubled events, or an index that differs from
/// the reference model at the end.
#[derive(Parser, Debug)]
#[command(name = "soak", version, after_help = AFTER_HELP)]
struct Args {
    /// How long the load runs, in minutes (fractions allowed: 0.5).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// The kvroute binary (build it with `cargo build --release -p kvroute-net --bin kvroute`).
    #[arg(long, value_name = "PATH", default_value = "target/release/kvroute")]
    kvroute: PathBuf,
    /// Seconds between samples (RSS, /metrics, timed /healthz).
    #[arg(long, default_value_t = 5.0)]
    sample_secs: f64,
    /// Seconds of warm-up before the RSS bound applies.
    #[arg(long, default_value_t = 60.0)]
    warmup_secs: f64,
    /// Fail if RSS after the warm-up grows more than this above its minimum after the
    /// warm-up, in MB.
    #[arg(long, default_value_t = 64.0)]
    rss_growth_mb: f64,
    /// Fail if RSS after the warm-up ever exceeds this, in MB.
    #[arg(long, default_value_t = 512.0)]
    rss_max_mb: f64,
    /// A /healthz slower than this (milliseconds, fresh connection) is a miss.
    #[arg(long, default_value_t = 50.0)]
    healthz_ms: f64,
    /// Health-check misses allowed before the run fails.
    #[arg(long, default_value_t = 0)]
    max_healthz_misses: usize,
    /// Workers with a publisher (exact mode), ids 0..N.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(1..=64))]
    exact_workers: u64,
    /// Workers that never publish (approximate mode), ids after the exact ones.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=64))]
    approx_workers: u64,
    /// Data-parallel ranks per worker.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    dp_size: u32,
    /// Tokens per KV block (the daemon's --block-size).
    #[arg(long, default_value_t = 16)]
    block_size: u32,
    /// KV cache of each simulated rank, in blocks (bounds the true index size).
    #[arg(long, default_value_t = 1024)]
    cache_blocks: usize,
    /// Conversations in the prompt universe (8 turns each, sharing 16 system prompts).
    #[arg(long, default_value_t = 1024)]
    conversations: usize,
    /// Distinct prompts served by exact-mode engines kept for the final comparison
    /// (the most recent ones).
    #[arg(long, default_value_t = 8192)]
    distinct_checked: usize,
    /// Concurrent route clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Routes per second, all clients together.
    #[arg(long, default_value_t = 200.0)]
    routes_per_sec: f64,
    /// Seconds between churn actions (restart, crash, leave), round-robin over the
    /// exact-mode workers.
    #[arg(long, default_value_t = 6.0)]
    churn_secs: f64,
    /// The daemon's --publisher-grace, in seconds (a leave stays away longer).
    #[arg(long, default_value_t = 3.0)]
    grace_secs: f64,
    /// The daemon's --http-header-timeout, in seconds (slow-header and idle connections
    /// must be closed within it; at least 2).
    #[arg(long, default_value_t = 2.0)]
    header_timeout_secs: f64,
    /// The daemon's --approx-ttl, in seconds (short, so approximate mode reaches its
    /// steady state within the warm-up).
    #[arg(long, default_value_t = 20.0)]
    approx_ttl_secs: f64,
    /// The daemon's --approx-max-blocks (per approximate-mode rank).
    #[arg(long, default_value_t = 32_768)]
    approx_max_blocks: u64,
    /// Milliseconds between bad requests (HTTP) and datagram bursts (QUIC).
    #[arg(long, default_value_t = 250)]
    bad_ms: u64,
    /// Run the daemon with --insecure-loopback instead of mutual TLS (certificate
    /// rejection is then not exercised).
    #[arg(long)]
    insecure: bool,
    /// Seed of the workload.
    #[arg(long, default_value_t = 0x50A4)]
    seed: u64,
    /// More arguments for `kvroute serve` (repeatable), e.g. --daemon-arg=--log-filter=debug.
    #[arg(long = "daemon-arg", value_name = "ARG", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
}

const AFTER_HELP: &str = "\
The run directory (certificates, daemon.log) is kept and printed at the start.
Exit status: 0 on PASS, 1 on FAIL, 2 when the run could not be set up.";

fn seconds(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0))
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.header_timeout_secs < 2.0 {
        eprintln!("soak: --header-timeout-secs must be at least 2 (clients reuse connections idle up to 1 s)");
        return ExitCode::from(2);
    }
    let config = SoakConfig {
        duration: seconds(args.minutes * 60.0),
        kvroute: args.kvroute,
        sample_every: seconds(args.sample_secs.max(0.5)),
        warmup: seconds(args.warmup_secs),
        rss_growth_mb: args.rss_growth_mb,
        rss_max_mb: args.rss_max_mb,
        healthz_limit: seconds(args.healthz_ms / 1e3),
        max_healthz_misses: args.max_healthz_misses,
        exact_workers: args.exact_workers,
        approx_workers: args.approx_workers,
        dp_size: args.dp_size,
        block_size: args.block_size,
        cache_blocks: args.cache_blocks,
        conversations: args.conversations.max(1),
        distinct_checked: args.distinct_checked,
        clients: args.clients.max(1),
        routes_per_sec: args.routes_per_sec,
        churn_every: seconds(args.churn_secs.max(0.5)),
        publisher_grace: seconds(args.grace_secs),
        header_timeout: seconds(args.header_timeout_secs),
        approx_ttl: seconds(args.approx_ttl_secs.max(1.0)),
        approx_max_blocks: args.approx_max_blocks,
        bad_every: Duration::from_millis(args.bad_ms.max(10)),
        insecure: args.insecure,
        seed: args.seed,
        daemon_args: args.daemon_args,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("soak: tokio runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("soak: {error}");
            ExitCode::from(2)
        }
    }
}
