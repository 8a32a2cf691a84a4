//! Aggregated serving: every rank prefills and decodes. Three policies on one trace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kvroute_core::route::{Prompt, RouteOptions, Router, RouterConfig, WorkerSpec};
use kvroute_core::sim::{Fleet, FleetConfig};
use kvroute_core::trace::{request_blocks_into, TraceRequest};
use kvroute_core::{KvIndex, RankKey, WorkerId};

use super::outcome::{max_over_mean, min_mean_max, ms, percentile, row, PolicyOutcome, PoolLoad};
use super::timeline::{Completion, Timeline};
use super::{progress, DemoArgs, DemoError};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// `Router::best_worker` with the default, load-aware cost.
    Kvroute,
    /// The rank with the longest cached prefix; ties to the fewest active requests.
    LargestOverlap,
    RoundRobin,
}

impl Policy {
    fn label(self) -> &'static str {
        match self {
            Policy::Kvroute => "kvroute",
            Policy::LargestOverlap => "largest overlap",
            Policy::RoundRobin => "round-robin",
        }
    }
}

/// How a policy picks a rank: returns the rank's slot, the overlap it predicted (if it
/// looks at the index) and the router's request id (if the router tracks it).
enum Picker {
    Kvroute { router: Box<Router>, now_ms: Arc<AtomicU64>, slots: HashMap<RankKey, usize> },
    LargestOverlap { index: Box<KvIndex> },
    RoundRobin,
}

fn picker(policy: Policy, args: &DemoArgs, ranks: &[RankKey]) -> Result<Picker, DemoError> {
    Ok(match policy {
        Policy::Kvroute => {
            let now_ms = Arc::new(AtomicU64::new(0));
            let clock = now_ms.clone();
            // Relaxed by design: the replay thread is the only writer and reader.
            let router = Router::new(
                RouterConfig { block_size: args.block_size, ..RouterConfig::default() },
                Arc::new(move || clock.load(Ordering::Relaxed)),
            )?;
            for worker in 0..args.workers() {
                router.add_worker(WorkerSpec::new(WorkerId(u64::from(worker)), args.dp_size(), args.block_size))?;
            }
            let slots = ranks.iter().enumerate().map(|(slot, rank)| (*rank, slot)).collect();
            Picker::Kvroute { router: Box::new(router), now_ms, slots }
        }
        Policy::LargestOverlap => {
            let index = KvIndex::new();
            for rank in ranks {
                index.register_rank(*rank).map_err(|e| DemoError::Config(e.to_string()))?;
            }
            Picker::LargestOverlap { index: Box::new(index) }
        }
        Policy::RoundRobin => Picker::RoundRobin,
    })
}

fn replay(args: &DemoArgs, requests: &[TraceRequest], policy: Policy) -> Result<(PolicyOutcome, PoolLoad), DemoError> {
    let capacity_blocks = (args.capacity_tokens / u64::from(args.block_size)) as usize;
    let mut fleet = Fleet::new(FleetConfig { workers: args.workers(), dp_size: args.dp_size(), capacity_blocks });
    let ranks: Vec<RankKey> = fleet.ranks().to_vec();
    let mut picker = picker(policy, args, &ranks)?;
    let mut outcome = PolicyOutcome::default();
    let mut pool = PoolLoad::new(ranks.len());
    let mut timeline = Timeline::new(ranks.len());
    let bar = progress(args, requests.len(), policy.label());
    let block_size = u64::from(args.block_size);
    let mut chain = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        request_blocks_into(request, args.block_size, &mut chain).map_err(|e| DemoError::Config(e.to_string()))?;
        let now_us = request.timestamp_ms * 1000;
        timeline.advance_to(now_us, |completion| match completion {
            Completion::PrefillDone { request, .. } => {
                if let (Picker::Kvroute { router, .. }, Some(id)) = (&picker, request) {
                    router.prefill_done(id);
                }
            }
            Completion::Finished { request, decode_slot, .. } => {
                if let (Picker::Kvroute { router, .. }, Some(id)) = (&picker, request) {
                    router.finish(id);
                }
                pool.end(decode_slot, 1);
            }
        });
        let (slot, predicted, request_id) = match &mut picker {
            Picker::Kvroute { router, now_ms, slots } => {
                now_ms.store(request.timestamp_ms, Ordering::Relaxed);
                let options = RouteOptions { output_tokens: request.output_length, ..RouteOptions::default() };
                let started = Instant::now();
                let decision = router.best_worker(Prompt::Blocks(&chain), &options)?;
                outcome.decision_ns.push(started.elapsed().as_nanos() as u64);
                let rank = RankKey { worker: decision.worker, dp_rank: decision.dp_rank };
                let slot = *slots.get(&rank).ok_or_else(|| DemoError::Check(format!("unknown rank {rank:?}")))?;
                (slot, Some(decision.overlap_blocks), decision.request)
            }
            Picker::LargestOverlap { index } => {
                let started = Instant::now();
                let scores = index.find_matches(&chain);
                let mut best = (0u32, u64::MAX, usize::MAX);
                for (slot, rank) in ranks.iter().enumerate() {
                    let overlap = scores.get(*rank);
                    let active = pool.active[slot];
                    // Largest overlap; ties to the fewest active requests, then the lowest rank.
                    if overlap > best.0 || (overlap == best.0 && active < best.1) {
                        best = (overlap, active, slot);
                    }
                }
                outcome.decision_ns.push(started.elapsed().as_nanos() as u64);
                (best.2, Some(best.0), None)
            }
            Picker::RoundRobin => (i % ranks.len(), None, None),
        };
        let prefill = fleet.prefill(ranks[slot], &chain);
        match &picker {
            Picker::Kvroute { router, .. } => prefill.events.iter().for_each(|event| router.apply_event(event)),
            Picker::LargestOverlap { index } => index.apply_batch(&prefill.events),
            Picker::RoundRobin => {}
        }
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
    let policies = [Policy::Kvroute, Policy::LargestOverlap, Policy::RoundRobin];
    let mut results = Vec::new();
    for policy in policies {
        results.push(replay(args, requests, policy)?);
    }
    println!();
    row("", policies.iter().map(|p| p.label().to_string()));
    row("prefix-cache hit rate", results.iter().map(|(o, _)| format!("{:.1}%", o.hit_rate() * 100.0)));
    row("simulated TTFT p50", results.iter().map(|(o, _)| ms(percentile(&o.ttft_us, 0.50))));
    row("simulated TTFT p99", results.iter().map(|(o, _)| ms(percentile(&o.ttft_us, 0.99))));
    println!("per-rank load (min/mean/max):");
    row("  requests", results.iter().map(|(_, p)| min_mean_max(&p.requests)));
    row("  requests max/mean", results.iter().map(|(_, p)| format!("{:.2}", max_over_mean(&p.requests))));
    row("  blocks computed", results.iter().map(|(_, p)| min_mean_max(&p.work_blocks)));
    row("  blocks computed max/mean", results.iter().map(|(_, p)| format!("{:.2}", max_over_mean(&p.work_blocks))));
    row("  peak active requests", results.iter().map(|(_, p)| min_mean_max(&p.peak_active)));
    println!();
    for (policy, (outcome, _)) in policies.iter().zip(&results) {
        if outcome.decision_ns.is_empty() {
            continue;
        }
        println!(
            "{:<16} decision latency p50 {} ns, p99 {} ns, p99.9 {} ns; predicted overlap equal to the engine's \
             reuse: {}/{}",
            policy.label(),
            percentile(&outcome.decision_ns, 0.50),
            percentile(&outcome.decision_ns, 0.99),
            percentile(&outcome.decision_ns, 0.999),
            outcome.exact_predictions,
            outcome.predictions
        );
    }
    println!("(the three replays took {:.1} s)", started.elapsed().as_secs_f64());
    for (policy, (outcome, _)) in policies.iter().zip(&results) {
        if outcome.exact_predictions != outcome.predictions {
            return Err(DemoError::Check(format!(
                "{}: the index disagreed with the simulated engines",
                policy.label()
            )));
        }
    }
    Ok(())
}
