//! Aggregated serving: every rank prefills and decodes. Every routing policy
//! (`kvroute_core::route::Policy`) on one trace, each on a fresh simulated fleet, beside the
//! ceiling: the reuse of one cache of unlimited size that every request reads.
//!
//! Then router replicas (`--replicas`): the default policy again with the trace's requests
//! dealt in turn to several routers, each hearing every engine's KV events but only its own
//! requests' lifecycle, so each sees only its share of the load. Once on that alone, once
//! with engine load reports every `--load-report-ms`: each engine's uncached prompt tokens
//! of requests whose prefill has not ended, KV blocks of the requests it holds and their
//! count (the router's own units), sampled at the report's time and applied to every
//! replica (`Router::apply_load_report`). The table gives each setup's TTFT against one
//! router's.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kvroute_core::route::{
    CostWeights, LoadReport, Policy, Prompt, RouteOptions, Router, RouterConfig, StorageTier, WorkerSpec,
};
use kvroute_core::sim::{Fleet, FleetConfig};
use kvroute_core::trace::{request_blocks_into, TraceRequest};
use kvroute_core::{BlockHash, RankKey, WorkerId};

use super::outcome::{duration, max_over_mean, percentile, PolicyOutcome, PoolLoad};
use super::timeline::{Completion, Routed, Timeline};
use super::{progress, report, DemoArgs, DemoError};

/// One column of the comparison: a router policy, or the ceiling.
#[derive(Clone, Copy, PartialEq)]
enum Contender {
    Policy(Policy),
    /// One cache of unlimited size that every request reads: the reuse no router can beat.
    Ceiling,
}

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::Ceiling => "ceiling (one unlimited cache)",
            Contender::Policy(Policy::PredictedTtft(_)) => "kvroute predicted TTFT (default)",
            Contender::Policy(Policy::Cost) => "kvroute cost (Dynamo's)",
            Contender::Policy(Policy::CacheAware(_)) => "SGLang cache_aware",
            Contender::Policy(Policy::Weighted(_)) => "llm-d weighted scorers",
            Contender::Policy(Policy::LargestOverlap) => "largest overlap",
            Contender::Policy(Policy::LeastLoaded) => "least loaded",
            Contender::Policy(Policy::RoundRobin) => "round-robin",
            Contender::Policy(Policy::Random) => "random",
        }
    }
}

/// The routers in front of the fleet.
#[derive(Clone, Copy, Debug)]
struct Routers {
    /// Request `i` goes to replica `i mod replicas`.
    replicas: usize,
    /// Engines report their load to every replica this often (trace ms); `None`: never.
    load_report_ms: Option<u64>,
}

impl Routers {
    const ONE: Routers = Routers { replicas: 1, load_report_ms: None };
}

/// Router `replica` of `replicas` (replicas sample their picks at `--replica-temperature`).
fn router_for(
    policy: Policy,
    args: &DemoArgs,
    now_ms: &Arc<AtomicU64>,
    replica: usize,
    replicas: usize,
) -> Result<Router, DemoError> {
    let clock = now_ms.clone();
    let defaults = RouterConfig::default();
    let temperature = if replicas > 1 { args.replica_temperature } else { 0.0 };
    let config = RouterConfig {
        block_size: args.block_size,
        policy,
        // Each replica its own request ids and tie-breaks.
        room_seed: defaults.room_seed + replica as u64 * 0x1_0000_0000,
        rng_seed: (defaults.rng_seed ^ args.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)) ^ replica as u64,
        // Reports count for three intervals, so one late report does not drop them.
        load_report_ttl_ms: defaults.load_report_ttl_ms.max(args.load_report_ms.saturating_mul(3)),
        weights: CostWeights { temperature, ..defaults.weights },
        ..defaults
    };
    // Relaxed by design: the replay thread is the only writer and reader.
    let router = Router::new(config, Arc::new(move || clock.load(Ordering::Relaxed)))?;
    for worker in 0..args.workers() {
        router.add_worker(WorkerSpec::new(WorkerId(u64::from(worker)), args.dp_size(), args.block_size))?;
    }
    Ok(router)
}

/// The ceiling's reuse: leading blocks of each request seen in any earlier request (block
/// hashes are chained, so a block seen means its whole prefix was).
fn ceiling(args: &DemoArgs, requests: &[TraceRequest]) -> Result<PolicyOutcome, DemoError> {
    let mut seen: HashSet<BlockHash> = HashSet::new();
    let mut outcome = PolicyOutcome::default();
    let mut chain = Vec::new();
    for request in requests {
        request_blocks_into(request, args.block_size, &mut chain).map_err(|e| DemoError::Config(e.to_string()))?;
        let reused = chain.iter().take_while(|h| seen.contains(h)).count();
        outcome.requested_blocks += chain.len() as u64;
        outcome.reused_blocks += reused as u64;
        seen.extend(chain.iter().copied());
    }
    Ok(outcome)
}

/// What each simulated engine would report of its load, per rank: the uncached prompt
/// tokens of its requests whose prefill has not ended, the KV blocks of the requests it
/// holds and their count (the router's own units).
struct EngineLoad {
    prefill_tokens: Vec<u64>,
    kv_blocks: Vec<u64>,
    requests: Vec<u64>,
}

/// Replays `requests` with `policy` behind `routers` on a fresh fleet. With
/// `sample_every_ms`, every rank's active requests are also sampled at that interval of
/// trace time (`PoolLoad::over_time`), for the report.
fn replay(
    args: &DemoArgs,
    requests: &[TraceRequest],
    policy: Policy,
    routers: Routers,
    sample_every_ms: Option<u64>,
) -> Result<(PolicyOutcome, PoolLoad), DemoError> {
    let capacity_blocks = (args.capacity_tokens / u64::from(args.block_size)) as usize;
    let mut fleet = Fleet::new(FleetConfig { workers: args.workers(), dp_size: args.dp_size(), capacity_blocks });
    let ranks: Vec<RankKey> = fleet.ranks().to_vec();
    let slots: HashMap<RankKey, usize> = ranks.iter().enumerate().map(|(slot, rank)| (*rank, slot)).collect();
    let now_ms = Arc::new(AtomicU64::new(0));
    let n = routers.replicas.max(1);
    let replicas = (0..n).map(|r| router_for(policy, args, &now_ms, r, n)).collect::<Result<Vec<_>, _>>()?;
    let label = Contender::Policy(policy).label();
    let mut outcome = PolicyOutcome::default();
    let mut pool = PoolLoad::new(ranks.len());
    let mut engines = EngineLoad {
        prefill_tokens: vec![0; ranks.len()],
        kv_blocks: vec![0; ranks.len()],
        requests: vec![0; ranks.len()],
    };
    let mut timeline = Timeline::new(ranks.len());
    let bar = progress(args, requests.len(), label);
    let block_size = u64::from(args.block_size);
    let mut next_report_ms = requests.first().map_or(0, |r| r.timestamp_ms);
    let mut next_sample_ms = next_report_ms;
    let mut chain = Vec::new();
    let complete = |at_us: u64, completion: Completion, pool: &mut PoolLoad, engines: &mut EngineLoad| match completion
    {
        Completion::PrefillDone { request, prefill_slot, prefill_tokens } => {
            // The routers hear of it at its time, not at the next arrival's.
            now_ms.store(at_us / 1000, Ordering::Relaxed);
            if let Some(Routed { replica, id }) = request {
                replicas[replica].prefill_done(id);
            }
            engines.prefill_tokens[prefill_slot] -= prefill_tokens;
        }
        Completion::Finished { request, decode_slot, decode_blocks } => {
            if let Some(Routed { replica, id }) = request {
                replicas[replica].finish(id);
            }
            pool.end(decode_slot, 1);
            engines.kv_blocks[decode_slot] -= decode_blocks;
            engines.requests[decode_slot] -= 1;
        }
    };
    for (i, request) in requests.iter().enumerate() {
        request_blocks_into(request, args.block_size, &mut chain).map_err(|e| DemoError::Config(e.to_string()))?;
        let now_us = request.timestamp_ms * 1000;
        if let Some(interval) = routers.load_report_ms {
            // Every report due before this arrival, each of the engines' state at its time.
            while next_report_ms <= request.timestamp_ms {
                let at_us = next_report_ms * 1000;
                timeline.advance_to(at_us, |at, c| complete(at, c, &mut pool, &mut engines));
                now_ms.store(next_report_ms, Ordering::Relaxed);
                for (slot, &rank) in ranks.iter().enumerate() {
                    let report = LoadReport {
                        prefill_tokens: Some(engines.prefill_tokens[slot]),
                        decode_blocks: Some(engines.kv_blocks[slot]),
                        requests: Some(engines.requests[slot]),
                    };
                    for router in &replicas {
                        router.apply_load_report(rank, &report)?;
                    }
                }
                next_report_ms += interval.max(1);
            }
        }
        if let Some(interval) = sample_every_ms {
            // Every sample due before this arrival: completions up to its time, then the load.
            while next_sample_ms <= request.timestamp_ms {
                timeline.advance_to(next_sample_ms * 1000, |at, c| complete(at, c, &mut pool, &mut engines));
                pool.sample(next_sample_ms);
                next_sample_ms += interval.max(1);
            }
        }
        timeline.advance_to(now_us, |at, c| complete(at, c, &mut pool, &mut engines));
        now_ms.store(request.timestamp_ms, Ordering::Relaxed);
        let replica = i % replicas.len();
        let options = RouteOptions { output_tokens: request.output_length, ..RouteOptions::default() };
        let started = Instant::now();
        let decision = replicas[replica].best_worker(Prompt::Blocks(&chain), &options)?;
        outcome.decision_ns.push(started.elapsed().as_nanos() as u64);
        outcome.chosen_overlap_blocks += u64::from(decision.overlap_blocks);
        outcome.best_overlap_blocks += u64::from(decision.best_overlap_blocks);
        let rank = RankKey { worker: decision.worker, dp_rank: decision.dp_rank };
        let slot = *slots.get(&rank).ok_or_else(|| DemoError::Check(format!("unknown rank {rank:?}")))?;
        let (predicted, routed) = (decision.overlap_blocks, decision.request.map(|id| Routed { replica, id }));
        let prefill = fleet.prefill(ranks[slot], &chain);
        for router in &replicas {
            router.apply_events_in(StorageTier::Device, &prefill.events);
        }
        outcome.predicted(predicted, prefill.cached_blocks);
        let computed_blocks = (chain.len() - prefill.cached_blocks) as u64;
        outcome.requested_blocks += chain.len() as u64;
        outcome.reused_blocks += prefill.cached_blocks as u64;
        let timing = timeline.prefill(slot, now_us, computed_blocks * block_size, args.prefill_tokens_per_ms);
        outcome.ttft_us.push(timing.ttft_us);
        let decode_us = u64::from(request.output_length) * args.ms_per_output_token * 1000;
        let prefill_tokens = computed_blocks * block_size;
        engines.prefill_tokens[slot] += prefill_tokens;
        timeline
            .schedule(timing.end_us, Completion::PrefillDone { request: routed, prefill_slot: slot, prefill_tokens });
        // The engine holds the request's KV (prompt and output) until it finishes: the
        // blocks the router charges it with.
        let kv_blocks = (chain.len() as u64 * block_size + u64::from(request.output_length)).div_ceil(block_size);
        engines.kv_blocks[slot] += kv_blocks;
        engines.requests[slot] += 1;
        let finished = Completion::Finished { request: routed, decode_slot: slot, decode_blocks: kv_blocks };
        timeline.schedule(timing.end_us + decode_us, finished);
        pool.start(slot, computed_blocks, 1);
        if i % 64 == 0 {
            bar.set_position(i as u64);
        }
    }
    bar.finish_and_clear();
    Ok((outcome, pool))
}

pub(super) fn run(args: &DemoArgs, requests: &[TraceRequest]) -> Result<(), DemoError> {
    println!(
        "kvroute demo: {} requests, block size {}, {} workers x {} dp ranks, {} tokens of KV cache and {} prefill \
         tokens/ms per rank",
        requests.len(),
        args.block_size,
        args.workers(),
        args.dp_size(),
        args.capacity_tokens,
        args.prefill_tokens_per_ms
    );
    let started = Instant::now();
    let ceiling = ceiling(args, requests)?;
    let sample_every_ms = args.report.as_ref().map(|_| report::sample_interval_ms(requests));
    let mut results = Vec::new();
    for policy in Policy::ALL {
        let policy = args.with_weights(policy);
        results.push((policy, replay(args, requests, policy, Routers::ONE, sample_every_ms)?));
    }
    println!();
    let ceiling_rate = ceiling.hit_rate();
    let header = [
        "hit rate",
        "/ ceiling",
        "TTFT p50",
        "TTFT p99",
        "req max/mean",
        "work max/mean",
        "cache taken",
        "decision p50",
    ];
    table_row(&format!("policy ({} replays, simulated time)", results.len()), header.map(String::from));
    table_row(
        Contender::Ceiling.label(),
        [percent(ceiling_rate), "1.00".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into()],
    );
    for (policy, (outcome, pool)) in &results {
        table_row(
            Contender::Policy(*policy).label(),
            [
                percent(outcome.hit_rate()),
                format!("{:.2}", outcome.hit_rate() / ceiling_rate.max(f64::MIN_POSITIVE)),
                duration(percentile(&outcome.ttft_us, 0.50)),
                duration(percentile(&outcome.ttft_us, 0.99)),
                format!("{:.2}", max_over_mean(&pool.requests)),
                format!("{:.2}", max_over_mean(&pool.work_blocks)),
                percent(outcome.overlap_taken()),
                format!("{:.1} us", percentile(&outcome.decision_ns, 0.50) as f64 / 1000.0),
            ],
        );
    }
    println!(
        "\nhit rate: prompt blocks the engines reused; ceiling: what one cache of unlimited size would reuse; \
         TTFT: simulated time to first token; req, work max/mean: requests and blocks computed per rank, the \
         busiest over the mean (1.00 = even); cache taken: cached blocks on the chosen ranks over the most any \
         candidate held (the rest is the hit rate left on the table); decision: wall-clock time of the router's \
         call."
    );
    let (policy, (outcome, _)) = &results[0];
    println!(
        "{}: decision latency p50 {} ns, p99 {} ns, p99.9 {} ns; predicted overlap equal to the engine's reuse: {}/{}",
        Contender::Policy(*policy).label(),
        percentile(&outcome.decision_ns, 0.50),
        percentile(&outcome.decision_ns, 0.99),
        percentile(&outcome.decision_ns, 0.999),
        outcome.exact_predictions,
        outcome.predictions
    );
    println!("(the {} replays took {:.1} s)", results.len(), started.elapsed().as_secs_f64());
    let replicas = if args.replicas > 1 { replicas(args, requests, &results[0])? } else { Vec::new() };
    if let Some(path) = &args.report {
        write_report(args, requests.len(), path, &ceiling, &results)?;
        println!("\nreport: {}", path.display());
    }
    for (policy, (outcome, _)) in results.iter().chain(&replicas) {
        if outcome.exact_predictions != outcome.predictions {
            return Err(DemoError::Check(format!(
                "{}: the index disagreed with the simulated engines",
                Contender::Policy(*policy).label()
            )));
        }
    }
    Ok(())
}

/// A policy's replay: what the engines reused and how load spread.
type Replayed = (Policy, (PolicyOutcome, PoolLoad));

/// The default policy behind `--replicas` routers, without and with engine load reports,
/// against one router (`single`, already replayed); returns the two replays.
fn replicas(args: &DemoArgs, requests: &[TraceRequest], single: &Replayed) -> Result<Vec<Replayed>, DemoError> {
    let (policy, (one, _)) = single;
    let n = args.replicas as usize;
    let started = Instant::now();
    let own = replay(args, requests, *policy, Routers { replicas: n, load_report_ms: None }, None)?;
    let reported =
        replay(args, requests, *policy, Routers { replicas: n, load_report_ms: Some(args.load_report_ms) }, None)?;
    println!(
        "\n{} behind {n} router replicas (request i to replica i mod {n}; every replica hears every KV event; \
         replicas sample at temperature {}):",
        Contender::Policy(*policy).label(),
        args.replica_temperature
    );
    let header = ["hit rate", "TTFT p50", "TTFT p99", "p99 / 1 router", "req max/mean"];
    table_row("routers", header.map(String::from));
    let one_p99 = percentile(&one.ttft_us, 0.99).max(1);
    let rows = [
        ("1 router".to_owned(), &single.1),
        (format!("{n} replicas, own bookkeeping"), &own),
        (format!("{n} replicas + engine reports/{}ms", args.load_report_ms), &reported),
    ];
    for (label, (outcome, pool)) in rows {
        let p99 = percentile(&outcome.ttft_us, 0.99);
        table_row(
            &label,
            [
                percent(outcome.hit_rate()),
                duration(percentile(&outcome.ttft_us, 0.50)),
                duration(p99),
                format!("{:.2}", p99 as f64 / one_p99 as f64),
                format!("{:.2}", max_over_mean(&pool.requests)),
            ],
        );
    }
    println!(
        "engine reports: each engine's prompt tokens still to prefill, KV blocks and count of the requests it \
         holds, sampled every {} ms of trace time and applied to every replica (the 2 replays took {:.1} s)",
        args.load_report_ms,
        started.elapsed().as_secs_f64()
    );
    Ok(vec![(*policy, own), (*policy, reported)])
}

/// `--report`: the policy replays' charts, as one HTML file at `path`.
fn write_report(
    args: &DemoArgs,
    request_count: usize,
    path: &std::path::Path,
    ceiling: &PolicyOutcome,
    results: &[Replayed],
) -> Result<(), DemoError> {
    let trace = match &args.trace {
        Some(path) => path.display().to_string(),
        None => "the built-in Mooncake conversation trace".to_owned(),
    };
    let run = report::RunParameters {
        trace,
        requests: request_count,
        workers: args.workers(),
        dp_size: args.dp_size(),
        block_size: args.block_size,
        capacity_tokens: args.capacity_tokens,
        prefill_tokens_per_ms: args.prefill_tokens_per_ms,
    };
    let policies = results
        .iter()
        .map(|(policy, (outcome, pool))| report::PolicyRun {
            label: Contender::Policy(*policy).label(),
            hit_rate: outcome.hit_rate(),
            ttft_us: &outcome.ttft_us,
            chosen_overlap_blocks: outcome.chosen_overlap_blocks,
            best_overlap_blocks: outcome.best_overlap_blocks,
            load_over_time: &pool.over_time,
        })
        .collect::<Vec<_>>();
    // The default policy's load, and round-robin's beside it for contrast.
    let load_panels = [Some(0), policies.iter().position(|p| p.label == Contender::Policy(Policy::RoundRobin).label())]
        .into_iter()
        .flatten();
    let input = report::ReportInput {
        run,
        ceiling_label: Contender::Ceiling.label(),
        ceiling_hit_rate: ceiling.hit_rate(),
        load_panels: load_panels.collect(),
        policies,
    };
    report::write(path, &input)
}

/// A row of the policy table: a label, then fixed-width cells.
fn table_row<const N: usize>(label: &str, cells: [String; N]) {
    let mut line = format!("{label:<36}");
    for cell in cells {
        line.push_str(&format!(" {cell:>13}"));
    }
    println!("{line}");
}

fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}
