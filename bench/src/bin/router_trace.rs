//! Routers side by side on the trace: the same simulated fleet and the same open-loop
//! replay of the built-in trace, one router after the other, each on a fresh fleet (empty
//! caches).
//!
//! The fleet: `--workers` engine simulators of `--dp-size` ranks (GPU-like timing: 2 ms +
//! `--prefill-us-per-token` per uncached prompt token, `--decode-ms-per-token` per output
//! token; `--capacity-tokens` per rank), their KV events on ZeroMQ. The load: the first
//! `--requests` trace requests at their timestamps divided by `--speedup`, streamed
//! completions with the prompt as text (one letter per token: the simulator's byte
//! tokenizer reads it back as the trace's token count, so every router sees the same
//! prefixes, including smg, which takes text only; `--token-id-prompts` sends token ids to
//! the others), output capped at
//! `--max-output-tokens` (`kvroute_net::trace_load`). Routers:
//! - `round-robin`: no router; the client sends request `i` to rank `i mod ranks`;
//! - `kvroute`: `kvroute serve`'s proxy (in this process), tokenizing the text itself
//!   (`--tokenizer bytes`), once per policy of `--kvroute-policies` (default: the default
//!   policy; told the engines' cache size with `--kvroute-knows-cache-size`).
//!   `cache_aware` and `largest_overlap` are our reimplementations of smg's and
//!   vllm-router's rules on the exact index: run beside the peers, they show how close the
//!   reimplementation comes to the real router (cached share, requests per rank);
//! - `vllm-router kv_aware` (`--vllm-router PATH`), fed every rank's KV events; it
//!   tokenizes through the engine's `/tokenize`;
//! - `smg cache_aware --dp-aware` (`--smg PATH`), on SGLang-kind engines (the same timing).
//!
//! Printed per router: TTFT and end-to-end p50 / p99, the share of prompt tokens the
//! engines reported cached, throughput (requests and output tokens per second of the
//! run), added latency p50 / p99 (the engine's arrival time of the request head minus the
//! client's send stamp, minus the same quantile of round-robin's direct requests; smg does
//! not pass the stamp on), requests per rank (min/mean/max, and max over mean), errors.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use kvroute_bench::machine::Machine;
use kvroute_bench::router_fleet::{quantile, start_kvroute, PeerExecutables, PeerKind, PEER_API_KEY};
use kvroute_core::route::Policy;
use kvroute_core::sim::{EngineModelConfig, EngineTiming};
use kvroute_core::trace::parse_trace;
use kvroute_net::engine_sim::{EngineKind, EngineSimConfig, SimFleet};
use kvroute_net::trace_load::{replay, trace_prompts, LiveOutcome, PromptForm, Target};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    about = "Routers side by side on the trace over one simulated fleet: TTFT, cache hits, throughput, added latency"
)]
struct Args {
    #[arg(long, default_value_t = 16)]
    workers: u32,
    #[arg(long, default_value_t = 4)]
    dp_size: u32,
    /// Trace requests replayed (from the first).
    #[arg(long, default_value_t = 2400)]
    requests: usize,
    /// How many times faster than the trace's timestamps requests are sent.
    #[arg(long, default_value_t = 32.0)]
    speedup: f64,
    #[arg(long, default_value_t = 32)]
    max_output_tokens: u32,
    #[arg(long, default_value_t = 40)]
    prefill_us_per_token: u64,
    #[arg(long, default_value_t = 10)]
    decode_ms_per_token: u64,
    /// KV cache of each rank, in tokens.
    #[arg(long, default_value_t = 262_144)]
    capacity_tokens: usize,
    /// kvroute's policies, each run on its own fresh fleet (names as `kvroute serve
    /// --policy`; comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "predicted_ttft", value_parser = parse_policy)]
    kvroute_policies: Vec<Policy>,
    /// Send the prompts as token ids instead of text to every router but smg (which takes
    /// text only): vllm-router then skips the engine's `/tokenize`, so its decisions are
    /// not delayed by it.
    #[arg(long)]
    token_id_prompts: bool,
    /// Tell kvroute the engines' cache size (`kvroute serve --engine-cache-tokens`, here
    /// --capacity-tokens), as an operator who read it from the engines' start-up log would:
    /// `predicted_ttft` then prices evictions and caps its decode term. Off: as `kvroute
    /// serve` runs without the flag.
    #[arg(long)]
    kvroute_knows_cache_size: bool,
    #[command(flatten)]
    peers: PeerExecutables,
    /// The Mooncake-format trace [default: data/conversation_trace.jsonl].
    #[arg(long)]
    trace: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Contender {
    RoundRobin,
    Kvroute(Policy),
    VllmRouter,
    Smg,
}

impl Contender {
    fn label(self) -> String {
        match self {
            Contender::RoundRobin => "round-robin (direct)".to_owned(),
            Contender::Kvroute(policy) => format!("kvroute {}", policy.name()),
            Contender::VllmRouter => "vllm-router kv_aware".to_owned(),
            Contender::Smg => "smg cache_aware dp-aware".to_owned(),
        }
    }
}

fn parse_policy(name: &str) -> Result<Policy, String> {
    Policy::from_name(name).ok_or_else(|| {
        let names: Vec<_> = Policy::ALL.iter().map(Policy::name).collect();
        format!("unknown policy {name:?}; one of {}", names.join(", "))
    })
}

/// What one router's run gave.
struct RunResult {
    outcome: LiveOutcome,
    transit_us: Vec<u64>,
    per_rank: Vec<u64>,
}

const BLOCK_SIZE: u32 = 16;

fn main() {
    let args = Args::parse();
    let path = args.trace.clone().unwrap_or_else(kvroute_bench::sweep::default_trace);
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let trace = parse_trace(std::io::BufReader::new(file)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let requests = &trace[..trace.len().min(args.requests)];
    let text_prompts = trace_prompts(requests, args.max_output_tokens, PromptForm::Text);
    let id_prompts =
        args.token_id_prompts.then(|| trace_prompts(requests, args.max_output_tokens, PromptForm::TokenIds));
    let span_s = requests.last().map_or(0.0, |r| (r.timestamp_ms - requests[0].timestamp_ms) as f64 / 1000.0);
    println!("machine: {}", Machine::this().line());
    println!(
        "fleet: {} engines x {} DP ranks (simulated: 2 ms + {} us per uncached prompt token, {} ms per output token, \
         {} tokens of KV per rank); load: {} trace requests ({:.0} s of trace) at {}x, open loop, streamed, {} prompts, \
         at most {} output tokens",
        args.workers,
        args.dp_size,
        args.prefill_us_per_token,
        args.decode_ms_per_token,
        args.capacity_tokens,
        requests.len(),
        span_s,
        args.speedup,
        if args.token_id_prompts { "token-id (smg: text)" } else { "text" },
        args.max_output_tokens
    );
    let mut routers = vec![Contender::RoundRobin];
    routers.extend(args.kvroute_policies.iter().map(|&policy| Contender::Kvroute(policy)));
    if args.peers.vllm_router.is_some() {
        routers.push(Contender::VllmRouter);
    }
    if args.peers.smg.is_some() {
        routers.push(Contender::Smg);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let mut results: Vec<(Contender, RunResult)> = Vec::new();
    for router in routers {
        let started = std::time::Instant::now();
        let prompts = match &id_prompts {
            Some(ids) if router != Contender::Smg => ids,
            _ => &text_prompts,
        };
        match runtime.block_on(run(&args, router, prompts)) {
            Ok(result) => {
                eprintln!("{}: {:.1} s", router.label(), started.elapsed().as_secs_f64());
                results.push((router, result));
            }
            Err(error) => println!("{}: failed: {error}", router.label()),
        }
    }
    print_table(&results);
}

async fn run(
    args: &Args,
    router: Contender,
    prompts: &[kvroute_net::trace_load::LivePrompt],
) -> Result<RunResult, String> {
    let kind = if router == Contender::Smg { EngineKind::Sglang } else { EngineKind::Vllm };
    let mut template = EngineSimConfig::new(kind, "127.0.0.1:0".parse().expect("address"));
    template.model = EngineModelConfig {
        dp_size: args.dp_size,
        block_size: BLOCK_SIZE,
        capacity_blocks: args.capacity_tokens / BLOCK_SIZE as usize,
        max_prompt_tokens: 1 << 20,
        timing: EngineTiming {
            prefill_overhead: Duration::from_millis(2),
            prefill_per_token: Duration::from_micros(args.prefill_us_per_token),
            decode_per_token: Duration::from_millis(args.decode_ms_per_token),
        },
    };
    let fleet = SimFleet::start(&template, args.workers, 24_000).await.map_err(|e| e.to_string())?;
    let mut daemon = None;
    let mut peer = None;
    let target = match router {
        Contender::RoundRobin => Target::RoundRobin(fleet.urls()),
        Contender::Kvroute(policy) => {
            let cache = if args.kvroute_knows_cache_size {
                format!("engine_cache_tokens = {}\n", args.capacity_tokens)
            } else {
                String::new()
            };
            let extra = format!("[router]\npolicy = \"{}\"\n{cache}[proxy]\ntokenizer = \"bytes\"", policy.name());
            let running = start_kvroute(&fleet, &extra).await?;
            let url = format!("http://{}", running.http_address);
            daemon = Some(running);
            Target::Router { url, bearer: None }
        }
        Contender::VllmRouter | Contender::Smg => {
            let kind = if router == Contender::Smg { PeerKind::Smg } else { PeerKind::VllmRouter };
            let started = args.peers.start(kind, &fleet, args.dp_size).await?;
            let url = started.url.clone();
            peer = Some(started);
            Target::Router { url, bearer: Some(PEER_API_KEY.to_owned()) }
        }
    };
    let bar = indicatif::ProgressBar::new(prompts.len() as u64).with_message(router.label());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>26} [{bar:40}] {pos}/{len} {elapsed}").expect("template"),
    );
    let outcome = replay(prompts, &target, args.dp_size, args.speedup, &bar).await;
    bar.finish_and_clear();
    let result = RunResult {
        outcome,
        transit_us: fleet.take_transits().into_iter().map(|ns| ns / 1000).collect(),
        per_rank: fleet.requests_per_rank(),
    };
    drop(peer);
    if let Some(daemon) = daemon {
        let _ = daemon.shutdown(Duration::from_secs(10)).await;
    }
    fleet.shutdown().await;
    Ok(result)
}

/// Fewest, mean and most requests of any rank.
fn rank_spread(per_rank: &[u64]) -> (u64, f64, u64) {
    let min = per_rank.iter().min().copied().unwrap_or(0);
    let max = per_rank.iter().max().copied().unwrap_or(0);
    let mean = per_rank.iter().sum::<u64>() as f64 / per_rank.len().max(1) as f64;
    (min, mean, max)
}

fn print_table(results: &[(Contender, RunResult)]) {
    let direct = results.iter().find(|(router, _)| *router == Contender::RoundRobin).map(|(_, r)| &r.transit_us);
    let cell = |label: &str, cells: Vec<String>| {
        let mut line = format!("{label:<24}");
        for cell in cells {
            line.push_str(&format!(" {cell:>26}"));
        }
        println!("{line}");
    };
    let ms = |us: u64| format!("{:.1} ms", us as f64 / 1000.0);
    let each = |f: &dyn Fn(&RunResult) -> String| results.iter().map(|(_, r)| f(r)).collect::<Vec<_>>();
    println!();
    cell("", results.iter().map(|(router, _)| router.label()).collect());
    cell("TTFT p50", each(&|r| ms(quantile(&r.outcome.ttft_us, 0.5))));
    cell("TTFT p99", each(&|r| ms(quantile(&r.outcome.ttft_us, 0.99))));
    cell("end-to-end p50", each(&|r| ms(quantile(&r.outcome.e2e_us, 0.5))));
    cell("end-to-end p99", each(&|r| ms(quantile(&r.outcome.e2e_us, 0.99))));
    cell("cached prompt tokens", each(&|r| format!("{:.1}%", r.outcome.cached_ratio() * 100.0)));
    cell("throughput", each(&|r| format!("{:.1} req/s", r.outcome.requests_per_s())));
    cell("output tokens/s", each(&|r| format!("{:.0}", r.outcome.output_tokens_per_s())));
    let added = |r: &RunResult, p: f64| match direct {
        Some(direct) if !r.transit_us.is_empty() && !direct.is_empty() => {
            format!("{} us", quantile(&r.transit_us, p) as i64 - quantile(direct, p) as i64)
        }
        _ => "-".to_owned(),
    };
    cell(
        "transit p50",
        each(&|r| if r.transit_us.is_empty() { "-".into() } else { format!("{} us", quantile(&r.transit_us, 0.5)) }),
    );
    cell("added latency p50", each(&|r| added(r, 0.5)));
    cell("added latency p99", each(&|r| added(r, 0.99)));
    cell(
        "requests per rank",
        each(&|r| {
            let (min, mean, max) = rank_spread(&r.per_rank);
            format!("{min}/{mean:.0}/{max}")
        }),
    );
    cell(
        "requests per rank max/mean",
        each(&|r| match rank_spread(&r.per_rank) {
            (_, mean, max) if mean > 0.0 => format!("{:.2}", max as f64 / mean),
            _ => "-".to_owned(),
        }),
    );
    cell("errors", each(&|r| r.outcome.errors.len().to_string()));
    for (router, result) in results {
        if let Some(error) = result.outcome.errors.first() {
            println!("{}: first error: {error}", router.label());
        }
    }
}
