//! A router's added latency: how much longer a request takes to reach its engine through
//! the router than straight from the client, on one simulated fleet, open loop.
//!
//! Each run starts a fresh fleet (`--workers` engine simulators of `--dp-size` ranks, instant
//! prefill and decode, KV events on ZeroMQ) and sends `--rate` completions a second for
//! `--seconds`, each a `--prompt-tokens` prompt (the first half one of 64 shared system
//! prompts, the rest unique), `max_tokens` 1. The client stamps every request with its send
//! time (`x-kvroute-sent-at`, Unix nanoseconds); the engine records the time its head
//! arrived (`/sim/transits`). Runs:
//! - `direct`: the client sends request `i` to rank `i mod ranks` itself (the baseline);
//! - `kvroute`: through `kvroute serve`'s proxy (in this process), prompts as token ids, so
//!   no tokenization;
//! - `kvroute, text tokenized by kvroute`: text prompts, tokenized in the router
//!   (`--tokenizer bytes`, the simulator's byte tokenizer);
//! - `kvroute, text tokenized by the engine`: text prompts, tokenized through the engine's
//!   `/tokenize` before routing;
//! - `vllm-router` / `smg`, when `--vllm-router` / `--smg` name their executables
//!   (`pip install vllm-router==0.1.17 smg==1.13.0`): `--policy kv_aware` fed the fleet's KV
//!   events, and `--policy cache_aware --dp-aware` (SGLang-kind engines; text prompts, as
//!   smg refuses token ids in `prompt`).
//!
//! Printed per run: requests, errors, transit p50 / p99 / p99.9, added latency (the run's
//! transit quantile minus the direct run's), client round trip p50 / p99. Everything runs on
//! this machine's cores, load generator included.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use kvroute_bench::machine::Machine;
use kvroute_bench::router_fleet::{quantile, start_kvroute, PeerExecutables, PeerKind, PEER_API_KEY};
use kvroute_core::sim::{EngineModelConfig, EngineTiming};
use kvroute_net::engine_sim::{EngineKind, EngineSimConfig, SimFleet, SENT_AT_HEADER};
use kvroute_net::http_client::HttpClient;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "A router's added latency per request over a simulated fleet, beside direct requests")]
struct Args {
    #[arg(long, default_value_t = 16)]
    workers: u32,
    #[arg(long, default_value_t = 4)]
    dp_size: u32,
    #[arg(long, default_value_t = 2048)]
    prompt_tokens: usize,
    /// Requests per second, open loop.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[command(flatten)]
    peers: PeerExecutables,
    /// Skip the text-prompt kvroute runs.
    #[arg(long)]
    no_tokenize_run: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Direct,
    Kvroute,
    KvrouteTokenized,
    KvrouteEngineTokenized,
    VllmRouter,
    Smg,
}

impl Run {
    fn label(self) -> &'static str {
        match self {
            Run::Direct => "direct (no router)",
            Run::Kvroute => "kvroute",
            Run::KvrouteTokenized => "kvroute, text tokenized by kvroute",
            Run::KvrouteEngineTokenized => "kvroute, text tokenized by the engine",
            Run::VllmRouter => "vllm-router kv_aware",
            Run::Smg => "smg cache_aware --dp-aware",
        }
    }
}

/// What one run saw.
#[derive(Default)]
struct Outcome {
    sent: usize,
    errors: usize,
    first_error: Option<String>,
    transit_us: Vec<u64>,
    round_trip_us: Vec<u64>,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    println!("machine: {}", Machine::this().line());
    println!(
        "workload: {} engines x {} DP ranks (simulated, instant), {}-token prompts, {} requests/s for {} s, open loop",
        args.workers, args.dp_size, args.prompt_tokens, args.rate, args.seconds
    );
    let mut runs = vec![Run::Direct, Run::Kvroute];
    if !args.no_tokenize_run {
        runs.extend([Run::KvrouteTokenized, Run::KvrouteEngineTokenized]);
    }
    if args.peers.vllm_router.is_some() {
        runs.push(Run::VllmRouter);
    }
    if args.peers.smg.is_some() {
        runs.push(Run::Smg);
    }
    let mut direct: Option<(u64, u64)> = None;
    println!(
        "{:<34} {:>8} {:>6} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "run", "requests", "errors", "transit p50", "p99", "p99.9", "added p50", "added p99", "trip p50", "trip p99"
    );
    for run in runs {
        let outcome = match runtime.block_on(measure(&args, run)) {
            Ok(outcome) => outcome,
            Err(error) => {
                println!("{:<34} failed: {error}", run.label());
                continue;
            }
        };
        let q = |values: &[u64], p: f64| quantile(values, p);
        let (t50, t99, t999) =
            (q(&outcome.transit_us, 0.5), q(&outcome.transit_us, 0.99), q(&outcome.transit_us, 0.999));
        if run == Run::Direct {
            direct = Some((t50, t99));
        }
        let (d50, d99) = direct.unwrap_or((0, 0));
        let added = |t: u64, d: u64| format!("{} us", t as i64 - d as i64);
        let us = |v: u64| format!("{v} us");
        if outcome.transit_us.is_empty() {
            println!(
                "{:<34} {:>8} {:>6} (no transit times: the router does not pass the send stamp on) trip p50 {}, p99 {}",
                run.label(),
                outcome.sent,
                outcome.errors,
                us(q(&outcome.round_trip_us, 0.5)),
                us(q(&outcome.round_trip_us, 0.99)),
            );
        } else {
            println!(
                "{:<34} {:>8} {:>6} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
                run.label(),
                outcome.sent,
                outcome.errors,
                us(t50),
                us(t99),
                us(t999),
                added(t50, d50),
                added(t99, d99),
                us(q(&outcome.round_trip_us, 0.5)),
                us(q(&outcome.round_trip_us, 0.99)),
            );
        }
        if let Some(error) = outcome.first_error {
            println!("  first error: {error}");
        }
    }
}

async fn measure(args: &Args, run: Run) -> Result<Outcome, String> {
    let kind = if run == Run::Smg { EngineKind::Sglang } else { EngineKind::Vllm };
    let mut template = EngineSimConfig::new(kind, "127.0.0.1:0".parse().expect("address"));
    template.model = EngineModelConfig {
        dp_size: args.dp_size,
        block_size: 16,
        capacity_blocks: 65_536,
        max_prompt_tokens: 1 << 20,
        timing: EngineTiming {
            prefill_overhead: Duration::ZERO,
            prefill_per_token: Duration::ZERO,
            decode_per_token: Duration::ZERO,
        },
    };
    let fleet = SimFleet::start(&template, args.workers, 23_000).await.map_err(|e| e.to_string())?;
    let client = HttpClient::new(Duration::from_secs(2));
    let mut daemon = None;
    let mut _peer = None;
    let mut auth = false;
    let base = match run {
        Run::Direct => None,
        Run::Kvroute | Run::KvrouteTokenized | Run::KvrouteEngineTokenized => {
            let extra = if run == Run::KvrouteTokenized { "[proxy]\ntokenizer = \"bytes\"" } else { "" };
            let running = start_kvroute(&fleet, extra).await?;
            let url = format!("http://{}", running.http_address);
            daemon = Some(running);
            Some(url)
        }
        Run::VllmRouter | Run::Smg => {
            let kind = if run == Run::Smg { PeerKind::Smg } else { PeerKind::VllmRouter };
            let peer = args.peers.start(kind, &fleet, args.dp_size).await?;
            let url = peer.url.clone();
            _peer = Some(peer);
            auth = true;
            Some(url)
        }
    };
    let outcome = send_all(args, run, &client, base.as_deref(), &fleet.urls(), auth).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut outcome = outcome;
    outcome.transit_us = fleet.take_transits().into_iter().map(|ns| ns / 1000).collect();
    if let Some(daemon) = daemon {
        let _ = daemon.shutdown(Duration::from_secs(10)).await;
    }
    fleet.shutdown().await;
    Ok(outcome)
}

/// A request body: the shared half of system prompt `i % 64`, then tokens unique to `i`.
fn body(args: &Args, i: usize, text: bool) -> Bytes {
    let shared = args.prompt_tokens / 2;
    let system = (i % 64) as u32;
    let value = if text {
        let mut prompt: String =
            (0..shared).map(|t| char::from(b'a' + ((system as usize * 7 + t) % 26) as u8)).collect();
        prompt.extend((0..args.prompt_tokens - shared).map(|t| char::from(b'A' + ((i * 13 + t * 7) % 26) as u8)));
        serde_json::json!({"model": "kvroute-sim", "prompt": prompt, "max_tokens": 1})
    } else {
        let mut tokens: Vec<u32> = (0..shared as u32).map(|t| 1_000 + system * 100_000 + t).collect();
        tokens.extend((0..(args.prompt_tokens - shared) as u32).map(|t| 10_000_000 + i as u32 * 4096 + t));
        serde_json::json!({"model": "kvroute-sim", "prompt": tokens, "max_tokens": 1})
    };
    Bytes::from(value.to_string())
}

async fn send_all(
    args: &Args,
    run: Run,
    client: &HttpClient,
    base: Option<&str>,
    engines: &[String],
    auth: bool,
) -> Outcome {
    let total = (args.rate * args.seconds).round() as usize;
    let ranks = engines.len() * args.dp_size as usize;
    // smg takes text prompts only (a list of token ids is refused as the wrong type).
    let text = matches!(run, Run::KvrouteTokenized | Run::KvrouteEngineTokenized | Run::Smg);
    let bodies: Vec<Bytes> = (0..total).map(|i| body(args, i, text)).collect();
    let outcome = Arc::new(Mutex::new(Outcome { sent: total, ..Outcome::default() }));
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for (i, body) in bodies.into_iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / args.rate);
        let (url, rank) = match base {
            Some(base) => (format!("{base}/v1/completions"), None),
            None => (
                format!("{}/v1/completions", engines[(i % ranks) / args.dp_size as usize]),
                Some(i % args.dp_size as usize),
            ),
        };
        let (client, outcome) = (client.clone(), Arc::clone(&outcome));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let sent_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let mut request = hyper::Request::post(url)
                .header("content-type", "application/json")
                .header(SENT_AT_HEADER, sent_at.to_string());
            if let Some(rank) = rank {
                request = request.header("x-data-parallel-rank", rank);
            }
            if auth {
                request = request.header("authorization", format!("Bearer {PEER_API_KEY}"));
            }
            let started = Instant::now();
            let result = match request.body(Full::new(body)) {
                Ok(request) => match client.request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        match response.into_body().collect().await {
                            Ok(_) if status.is_success() => Ok(()),
                            Ok(body) => Err(format!("{status}: {}", String::from_utf8_lossy(&body.to_bytes()))),
                            Err(error) => Err(error.to_string()),
                        }
                    }
                    Err(error) => Err(error),
                },
                Err(error) => Err(error.to_string()),
            };
            let elapsed = started.elapsed().as_micros() as u64;
            let mut outcome = outcome.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match result {
                Ok(()) => outcome.round_trip_us.push(elapsed),
                Err(error) => {
                    outcome.errors += 1;
                    outcome.first_error.get_or_insert(error);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut outcome = outcome.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    std::mem::take(&mut *outcome)
}
