//! Aggregated serving: every rank prefills and decodes. Every routing policy
//! (`kvroute_core::route::Policy`) on one trace, each on a fresh simulated fleet, beside the
//! ceiling: the reuse of one cache of unlimited size that every request reads.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kvroute_core::route::{Policy, Prompt, RouteOptions, Router, RouterConfig, StorageTier, WorkerSpec};
use kvroute_core::sim::{Fleet, FleetConfig};
use kvroute_core::trace::{request_blocks_into, TraceRequest};
use kvroute_core::{BlockHash, RankKey, WorkerId};

use super::outcome::{duration, max_over_mean, percentile, PolicyOutcome, PoolLoad};
use super::timeline::{Completion, Timeline};
use super::{progress, DemoArgs, DemoError};

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

fn router_for(policy: Policy, args: &DemoArgs, now_ms: &Arc<AtomicU64>) -> Result<Router, DemoError> {
    let clock = now_ms.clone();
    // Relaxed by design: the replay thread is the only writer and reader.
    let router = Router::new(
        RouterConfig { block_size: args.block_size, policy, ..RouterConfig::default() },
        Arc::new(move || clock.load(Ordering::Relaxed)),
    )?;
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

fn replay(args: &DemoArgs, requests: &[TraceRequest], policy: Policy) -> Result<(PolicyOutcome, PoolLoad), DemoError> {
    let capacity_blocks = (args.capacity_tokens / u64::from(args.block_size)) as usize;
    let mut fleet = Fleet::new(FleetConfig { workers: args.workers(), dp_size: args.dp_size(), capacity_blocks });
    let ranks: Vec<RankKey> = fleet.ranks().to_vec();
    let slots: HashMap<RankKey, usize> = ranks.iter().enumerate().map(|(slot, rank)| (*rank, slot)).collect();
    let now_ms = Arc::new(AtomicU64::new(0));
    let router = router_for(policy, args, &now_ms)?;
    let label = Contender::Policy(policy).label();
    let mut outcome = PolicyOutcome::default();
    let mut pool = PoolLoad::new(ranks.len());
    let mut timeline = Timeline::new(ranks.len());
    let bar = progress(args, requests.len(), label);
    let block_size = u64::from(args.block_size);
    let mut chain = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        request_blocks_into(request, args.block_size, &mut chain).map_err(|e| DemoError::Config(e.to_string()))?;
        let now_us = request.timestamp_ms * 1000;
        timeline.advance_to(now_us, |completion| match completion {
            Completion::PrefillDone { request, .. } => {
                if let Some(id) = request {
                    router.prefill_done(id);
                }
            }
            Completion::Finished { request, decode_slot, .. } => {
                if let Some(id) = request {
                    router.finish(id);
                }
                pool.end(decode_slot, 1);
            }
        });
        now_ms.store(request.timestamp_ms, Ordering::Relaxed);
        let options = RouteOptions { output_tokens: request.output_length, ..RouteOptions::default() };
        let started = Instant::now();
        let decision = router.best_worker(Prompt::Blocks(&chain), &options)?;
        outcome.decision_ns.push(started.elapsed().as_nanos() as u64);
        let rank = RankKey { worker: decision.worker, dp_rank: decision.dp_rank };
        let slot = *slots.get(&rank).ok_or_else(|| DemoError::Check(format!("unknown rank {rank:?}")))?;
        let (predicted, request_id) = (Some(decision.overlap_blocks), decision.request);
        let prefill = fleet.prefill(ranks[slot], &chain);
        router.apply_events_in(StorageTier::Device, &prefill.events);
        if let Some(predicted) = predicted {
            outcome.predicted(predicted, prefill.cached_blocks);
        }
        let computed_blocks = (chain.len() - prefill.cached_blocks) as u64;
        outcome.requested_blocks += chain.len() as u64;
        outcome.reused_blocks += prefill.cached_blocks as u64;
        let timing = timeline.prefill(slot, now_us, computed_blocks * block_size, args.prefill_tokens_per_ms);
        outcome.ttft_us.push(timing.ttft_us);
        let decode_us = u64::from(request.output_length) * args.ms_per_output_token * 1000;
        timeline.schedule(timing.end_us, Completion::PrefillDone { request: request_id, prefill_slot: slot });
        let finished = Completion::Finished { request: request_id, decode_slot: slot, decode_blocks: 0 };
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
    let mut results = Vec::new();
    for policy in Policy::ALL {
        let policy = args.with_weights(policy);
        results.push((policy, replay(args, requests, policy)?));
    }
    println!();
    let ceiling_rate = ceiling.hit_rate();
    let header = ["hit rate", "/ ceiling", "TTFT p50", "TTFT p99", "req max/mean", "work max/mean", "decision p50"];
    table_row(&format!("policy ({} replays, simulated time)", results.len()), header.map(String::from));
    table_row(
        Contender::Ceiling.label(),
        [percent(ceiling_rate), "1.00".into(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into()],
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
                format!("{:.1} us", percentile(&outcome.decision_ns, 0.50) as f64 / 1000.0),
            ],
        );
    }
    println!(
        "\nhit rate: prompt blocks the engines reused; ceiling: what one cache of unlimited size would reuse; \
         TTFT: simulated time to first token; req, work max/mean: requests and blocks computed per rank, the \
         busiest over the mean (1.00 = even); decision: wall-clock time of the router's call."
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
    for (policy, (outcome, _)) in &results {
        if outcome.exact_predictions != outcome.predictions {
            return Err(DemoError::Check(format!(
                "{}: the index disagreed with the simulated engines",
                Contender::Policy(*policy).label()
            )));
        }
    }
    Ok(())
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
