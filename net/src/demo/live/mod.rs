//! `kvroute demo --live`: the whole system on one machine, over real sockets.
//!
//! For each policy, on a fresh fleet (empty caches):
//! 1. `--workers` engine simulators (`kvroute engine-sim`'s server, in this process), each
//!    with `--dp-size` ranks, GPU-like timing (`--prefill-us-per-token`,
//!    `--decode-ms-per-token`) and its KV events on ZeroMQ (per-rank ports, replay).
//! 2. `kvroute`: a `kvroute serve` daemon subscribed to every engine's events, its routing
//!    proxy in front of them; the load generator sends to the proxy. `round-robin`: the
//!    load generator sends request `i` straight to rank `i mod ranks` (the engine's DP-rank
//!    header), as a round-robin router would, with no router hop at all.
//! 3. The load generator ([`kvroute_net::trace_load`]) replays the first `--requests` requests of
//!    the built-in trace open loop at their timestamps divided by `--speedup`: each
//!    prompt's token ids are derived from its hash ids (512 tokens an id, equal ids equal
//!    tokens), sent as `POST /v1/completions` with `stream: true`, output capped at
//!    `--max-output-tokens`.
//!
//! Reported per policy: TTFT and end-to-end latency p50 / p99 as the client saw them, the
//! share of prompt tokens the engines reported cached (`usage.prompt_tokens_details`),
//! requests per rank, errors. Checks (any failure exits non-zero): every request answered
//! 200 with its usage, and after kvroute's run every rank's load in the router is zero.

mod fleet;

use std::time::Instant;

use kvroute_core::trace::TraceRequest;

use super::outcome::{min_mean_max, ms, percentile, row};
use super::{progress, DemoArgs, DemoError};
use fleet::{LiveFleet, LiveSettings};
use kvroute_net::trace_load::{replay, trace_prompts, LiveOutcome, PromptForm, Target};

/// What `--live` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LivePolicy {
    Kvroute,
    RoundRobin,
}

impl LivePolicy {
    fn label(self) -> &'static str {
        match self {
            LivePolicy::Kvroute => "kvroute",
            LivePolicy::RoundRobin => "round-robin",
        }
    }
}

pub(super) fn run(args: &DemoArgs, requests: &[TraceRequest]) -> Result<(), DemoError> {
    let settings = LiveSettings::from_args(args)?;
    let requests = &requests[..requests.len().min(settings.requests)];
    let prompts = trace_prompts(requests, settings.max_output_tokens, PromptForm::TokenIds);
    let span_s = requests.last().map_or(0.0, |r| r.timestamp_ms as f64 / 1000.0);
    println!(
        "kvroute demo --live: {} engines x {} DP ranks (simulated: {} us per uncached prefill token, {} ms per output \
         token, {} blocks of {} tokens per rank), {} trace requests ({:.0} s of trace) at {}x speed, open loop over HTTP",
        settings.workers,
        settings.dp_size,
        settings.prefill_us_per_token,
        settings.decode_ms_per_token,
        settings.capacity_blocks,
        settings.block_size,
        requests.len(),
        span_s,
        settings.speedup
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| DemoError::Config(format!("tokio runtime: {e}")))?;
    let started = Instant::now();
    let policies = [LivePolicy::Kvroute, LivePolicy::RoundRobin];
    let mut outcomes: Vec<LiveOutcome> = Vec::new();
    let mut per_rank: Vec<Vec<u64>> = Vec::new();
    for policy in policies {
        let outcome = runtime.block_on(async {
            let fleet = LiveFleet::start(&settings, policy == LivePolicy::Kvroute).await?;
            let target = match policy {
                LivePolicy::Kvroute => {
                    Target::Router { url: fleet.proxy_url().expect("the kvroute fleet has a proxy"), bearer: None }
                }
                LivePolicy::RoundRobin => Target::RoundRobin(fleet.engine_urls()),
            };
            let bar = progress(args, prompts.len(), policy.label());
            let outcome = replay(&prompts, &target, settings.dp_size, settings.speedup, &bar).await;
            bar.finish_and_clear();
            per_rank.push(fleet.requests_per_rank());
            if policy == LivePolicy::Kvroute {
                fleet.check_router_idle().await?;
            }
            fleet.shutdown().await;
            Ok::<LiveOutcome, DemoError>(outcome)
        })?;
        outcomes.push(outcome);
    }
    println!();
    row("", policies.iter().map(|p| p.label().to_string()));
    let us = |f: fn(&LiveOutcome) -> &Vec<u64>, p: f64| {
        outcomes.iter().map(move |o| ms(percentile(f(o), p))).collect::<Vec<_>>()
    };
    row("TTFT p50", us(|o| &o.ttft_us, 0.50));
    row("TTFT p99", us(|o| &o.ttft_us, 0.99));
    row("end-to-end p50", us(|o| &o.e2e_us, 0.50));
    row("end-to-end p99", us(|o| &o.e2e_us, 0.99));
    row("cached prompt tokens", outcomes.iter().map(|o| format!("{:.1}%", o.cached_ratio() * 100.0)));
    row("requests per rank", per_rank.iter().map(|counts| min_mean_max(counts)));
    row("errors", outcomes.iter().map(|o| o.errors.len().to_string()));
    println!("(both runs took {:.1} s)", started.elapsed().as_secs_f64());
    for (policy, outcome) in policies.iter().zip(&outcomes) {
        if let Some(error) = outcome.errors.first() {
            return Err(DemoError::Check(format!(
                "{}: {} of {} requests failed; the first: {error}",
                policy.label(),
                outcome.errors.len(),
                prompts.len()
            )));
        }
    }
    Ok(())
}
