//! `--disagg`: a prefill pool and a decode pool whose DP sizes differ; every decision's
//! SGLang bootstrap room is checked against the rule the decode side resolves it by.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kvroute_core::route::{PdDecision, PdOptions, Prompt, Router, RouterConfig, WorkerSpec};
use kvroute_core::sim::{Fleet, FleetConfig};
use kvroute_core::trace::{request_blocks_into, TraceRequest};
use kvroute_core::{RankKey, WorkerId};

use super::outcome::{max_over_mean, min_mean_max, ms, percentile, row, PolicyOutcome, PoolLoad};
use super::timeline::{Completion, Routed, Timeline};
use super::{progress, DemoArgs, DemoError};

/// The bootstrap port the simulated prefill workers announce.
const BOOTSTRAP_PORT: u16 = 8998;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// `Router::route_disaggregated`: prefill by overlap and prefill load, decode by
    /// decode load.
    Kvroute,
    /// Request `i` goes to prefill rank `i mod P` and decode rank `i mod D`.
    RoundRobin,
}

impl Policy {
    fn label(self) -> &'static str {
        match self {
            Policy::Kvroute => "kvroute",
            Policy::RoundRobin => "round-robin",
        }
    }
}

/// Checks of the bootstrap room on every kvroute decision.
#[derive(Default)]
struct RoomChecks {
    checked: u64,
    /// `room % prefill_dp_size` is the chosen prefill rank and the room fits in an i64.
    rule_held: u64,
    /// The decode-side fields name the prefill rank and carry the same room.
    fields_agree: u64,
    rooms: HashSet<u64>,
    first_failure: Option<String>,
}

impl RoomChecks {
    fn check(&mut self, decision: &PdDecision, expected_dp_size: u32) {
        self.checked += 1;
        let room = decision.bootstrap.room.0;
        let p = u64::from(decision.prefill.dp_rank.0);
        let size = decision.bootstrap.prefill_dp_size;
        let rule = size == expected_dp_size && room % u64::from(size) == p && room <= i64::MAX as u64;
        let prefill = decision.prefill_fields();
        let decode = decision.decode_fields();
        // What SGLang's decode server does: `disagg_prefill_dp_rank` if set, else the room rule.
        let decode_resolves_to = u64::from(decode.disagg_prefill_dp_rank);
        let agree = decode_resolves_to == p
            && decode.bootstrap_room % u64::from(size.max(1)) == p
            && prefill.bootstrap_room == room
            && decode.bootstrap_room == room
            && u64::from(prefill.routed_dp_rank) == p
            && decode.routed_dp_rank == decision.decode.dp_rank.0
            && decode.data_parallel_rank == decision.decode.dp_rank.0
            && prefill.bootstrap_host == decode.bootstrap_host;
        self.rule_held += u64::from(rule);
        self.fields_agree += u64::from(agree);
        let unique = self.rooms.insert(room);
        if (!rule || !agree || !unique) && self.first_failure.is_none() {
            self.first_failure = Some(format!(
                "room {room}, prefill rank {p} of {size}, decode fields {decode:?} (rule {rule}, fields {agree}, \
                 unique {unique})"
            ));
        }
    }

    fn all_passed(&self) -> bool {
        self.first_failure.is_none()
            && self.rule_held == self.checked
            && self.fields_agree == self.checked
            && self.rooms.len() as u64 == self.checked
    }
}

struct PdOutcome {
    prefill: PolicyOutcome,
    prefill_pool: PoolLoad,
    decode_pool: PoolLoad,
    rooms: RoomChecks,
}

fn router(args: &DemoArgs, now_ms: &Arc<AtomicU64>) -> Result<Router, DemoError> {
    let clock = now_ms.clone();
    // Relaxed by design: the replay thread is the only writer and reader.
    let router = Router::new(
        RouterConfig { block_size: args.block_size, policy: args.default_policy(), ..RouterConfig::default() },
        Arc::new(move || clock.load(Ordering::Relaxed)),
    )?;
    for w in 0..args.prefill_workers {
        let host = format!("prefill-{w}.local");
        let spec =
            WorkerSpec::prefill(WorkerId(u64::from(w)), args.prefill_dp, args.block_size, &host, Some(BOOTSTRAP_PORT));
        router.add_worker(spec)?;
    }
    for w in 0..args.decode_workers {
        let worker = WorkerId(u64::from(args.prefill_workers + w));
        router.add_worker(WorkerSpec::decode(worker, args.decode_dp, args.block_size))?;
    }
    Ok(router)
}

fn replay(args: &DemoArgs, requests: &[TraceRequest], policy: Policy) -> Result<PdOutcome, DemoError> {
    let capacity_blocks = (args.capacity_tokens / u64::from(args.block_size)) as usize;
    let config = FleetConfig { workers: args.prefill_workers, dp_size: args.prefill_dp, capacity_blocks };
    let mut prefill_fleet = Fleet::new(config);
    let prefill_ranks: Vec<RankKey> = prefill_fleet.ranks().to_vec();
    let decode_ranks = (args.decode_workers * args.decode_dp) as usize;
    let now_ms = Arc::new(AtomicU64::new(0));
    let router = match policy {
        Policy::Kvroute => Some(router(args, &now_ms)?),
        Policy::RoundRobin => None,
    };
    let mut out = PdOutcome {
        prefill: PolicyOutcome::default(),
        prefill_pool: PoolLoad::new(prefill_ranks.len()),
        decode_pool: PoolLoad::new(decode_ranks),
        rooms: RoomChecks::default(),
    };
    let mut timeline = Timeline::new(prefill_ranks.len());
    let bar = progress(args, requests.len(), policy.label());
    let block_size = u64::from(args.block_size);
    let mut chain = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        request_blocks_into(request, args.block_size, &mut chain).map_err(|e| DemoError::Config(e.to_string()))?;
        let now_us = request.timestamp_ms * 1000;
        timeline.advance_to(now_us, |at_us, completion| match completion {
            Completion::PrefillDone { request, prefill_slot, .. } => {
                // The router hears of it at its time, not at the next arrival's.
                now_ms.store(at_us / 1000, Ordering::Relaxed);
                if let (Some(router), Some(routed)) = (&router, request) {
                    router.prefill_done(routed.id);
                }
                out.prefill_pool.end(prefill_slot, 1);
            }
            Completion::Finished { request, decode_slot, decode_blocks } => {
                if let (Some(router), Some(routed)) = (&router, request) {
                    router.finish(routed.id);
                }
                out.decode_pool.end(decode_slot, decode_blocks);
            }
        });
        let (p_slot, d_slot, predicted, request_id) = match &router {
            Some(router) => {
                now_ms.store(request.timestamp_ms, Ordering::Relaxed);
                let options = PdOptions { output_tokens: request.output_length, ..PdOptions::default() };
                let started = Instant::now();
                let decision = router.route_disaggregated(Prompt::Blocks(&chain), &options)?;
                out.prefill.decision_ns.push(started.elapsed().as_nanos() as u64);
                out.rooms.check(&decision, args.prefill_dp);
                let p = &decision.prefill;
                let d = &decision.decode;
                let p_slot = p.worker.0 as usize * args.prefill_dp as usize + p.dp_rank.0 as usize;
                let d_worker = d.worker.0.checked_sub(u64::from(args.prefill_workers));
                let d_slot = d_worker
                    .map(|w| w as usize * args.decode_dp as usize + d.dp_rank.0 as usize)
                    .filter(|&slot| slot < decode_ranks && p_slot < prefill_ranks.len())
                    .ok_or_else(|| DemoError::Check(format!("decision outside the pools: {decision:?}")))?;
                let routed = decision.request().map(|id| Routed { replica: 0, id });
                (p_slot, d_slot, Some(p.overlap_blocks), routed)
            }
            None => (i % prefill_ranks.len(), i % decode_ranks, None, None),
        };
        let prefill = prefill_fleet.prefill(prefill_ranks[p_slot], &chain);
        if let Some(router) = &router {
            prefill.events.iter().for_each(|event| router.apply_event(event));
        }
        if let Some(predicted) = predicted {
            out.prefill.predicted(predicted, prefill.cached_blocks);
        }
        let computed_blocks = (chain.len() - prefill.cached_blocks) as u64;
        out.prefill.requested_blocks += chain.len() as u64;
        out.prefill.reused_blocks += prefill.cached_blocks as u64;
        let timing = timeline.prefill(p_slot, now_us, computed_blocks * block_size, args.prefill_tokens_per_ms);
        out.prefill.ttft_us.push(timing.ttft_us);
        out.prefill_pool.start(p_slot, computed_blocks, 1);
        let prefill_done = Completion::PrefillDone {
            request: request_id,
            prefill_slot: p_slot,
            prefill_tokens: computed_blocks * block_size,
        };
        timeline.schedule(timing.end_us, prefill_done);
        // The decode rank holds the request's KV (prompt and output) from prefill's end.
        let decode_blocks = (u64::from(request.input_length) + u64::from(request.output_length)).div_ceil(block_size);
        out.decode_pool.start(d_slot, decode_blocks, decode_blocks);
        let decode_us = u64::from(request.output_length) * args.ms_per_output_token * 1000;
        let finished = Completion::Finished { request: request_id, decode_slot: d_slot, decode_blocks };
        timeline.schedule(timing.end_us + decode_us, finished);
        if i % 64 == 0 {
            bar.set_position(i as u64);
        }
    }
    bar.finish_and_clear();
    Ok(out)
}

pub(super) fn run(args: &DemoArgs, requests: &[TraceRequest]) -> Result<(), DemoError> {
    println!(
        "kvroute demo --disagg: {} requests, block size {}; prefill pool {} workers x DP {}, decode pool {} workers \
         x DP {}; {} tokens of KV cache and {} prefill tokens/ms per prefill rank",
        requests.len(),
        args.block_size,
        args.prefill_workers,
        args.prefill_dp,
        args.decode_workers,
        args.decode_dp,
        args.capacity_tokens,
        args.prefill_tokens_per_ms
    );
    let started = Instant::now();
    let policies = [Policy::Kvroute, Policy::RoundRobin];
    let mut results = Vec::new();
    for policy in policies {
        results.push(replay(args, requests, policy)?);
    }
    println!();
    row("", policies.iter().map(|p| p.label().to_string()));
    row("prefill prefix-cache hit rate", results.iter().map(|o| format!("{:.1}%", o.prefill.hit_rate() * 100.0)));
    row("simulated TTFT p50", results.iter().map(|o| ms(percentile(&o.prefill.ttft_us, 0.50))));
    row("simulated TTFT p99", results.iter().map(|o| ms(percentile(&o.prefill.ttft_us, 0.99))));
    println!("prefill pool, per rank (min/mean/max):");
    row("  requests", results.iter().map(|o| min_mean_max(&o.prefill_pool.requests)));
    row("  blocks computed", results.iter().map(|o| min_mean_max(&o.prefill_pool.work_blocks)));
    row(
        "  blocks computed max/mean",
        results.iter().map(|o| format!("{:.2}", max_over_mean(&o.prefill_pool.work_blocks))),
    );
    println!("decode pool, per rank (min/mean/max):");
    row("  requests", results.iter().map(|o| min_mean_max(&o.decode_pool.requests)));
    row("  requests max/mean", results.iter().map(|o| format!("{:.2}", max_over_mean(&o.decode_pool.requests))));
    row("  peak KV blocks held", results.iter().map(|o| min_mean_max(&o.decode_pool.peak_active)));
    row(
        "  peak KV blocks max/mean",
        results.iter().map(|o| format!("{:.2}", max_over_mean(&o.decode_pool.peak_active))),
    );
    println!();
    let kv = &results[0];
    println!(
        "kvroute decision latency (route_disaggregated): p50 {} ns, p99 {} ns, p99.9 {} ns",
        percentile(&kv.prefill.decision_ns, 0.50),
        percentile(&kv.prefill.decision_ns, 0.99),
        percentile(&kv.prefill.decision_ns, 0.999)
    );
    println!(
        "predicted prefill overlap equal to the engine's reuse: {}/{}",
        kv.prefill.exact_predictions, kv.prefill.predictions
    );
    println!(
        "bootstrap room: room % {} == prefill rank for {}/{} requests; decode fields resolve to it for {}/{}; {} \
         distinct rooms",
        args.prefill_dp,
        kv.rooms.rule_held,
        kv.rooms.checked,
        kv.rooms.fields_agree,
        kv.rooms.checked,
        kv.rooms.rooms.len()
    );
    println!("(both replays took {:.1} s)", started.elapsed().as_secs_f64());
    if let Some(failure) = &kv.rooms.first_failure {
        return Err(DemoError::Check(format!("bootstrap room: {failure}")));
    }
    if !kv.rooms.all_passed() {
        return Err(DemoError::Check("bootstrap room checks failed".into()));
    }
    if kv.prefill.exact_predictions != kv.prefill.predictions {
        return Err(DemoError::Check("the index disagreed with the simulated engines".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvroute_core::route::{Bootstrap, BootstrapRoom, CostBreakdown, Decision};
    use kvroute_core::DpRank;

    fn decision(p: u32, d: u32, room: u64, size: u32) -> PdDecision {
        let side = |worker: u64, rank: u32| Decision {
            worker: WorkerId(worker),
            dp_rank: DpRank(rank),
            overlap_blocks: 0,
            best_overlap_blocks: 0,
            shortfall: None,
            cost: CostBreakdown::default(),
            request: None,
        };
        PdDecision {
            prefill: side(0, p),
            decode: side(1, d),
            bootstrap: Bootstrap { host: "h".into(), port: None, room: BootstrapRoom(room), prefill_dp_size: size },
        }
    }

    #[test]
    fn room_checks_catch_a_wrong_rank_a_repeat_and_a_wrong_modulus() {
        let mut checks = RoomChecks::default();
        checks.check(&decision(1, 0, 4 * 10 + 1, 4), 4);
        assert!(checks.all_passed());
        let mut wrong_rank = RoomChecks::default();
        wrong_rank.check(&decision(2, 0, 4 * 10 + 1, 4), 4);
        assert!(!wrong_rank.all_passed());
        checks.check(&decision(1, 1, 4 * 10 + 1, 4), 4);
        assert!(!checks.all_passed(), "a repeated room must fail");
        let mut wrong_size = RoomChecks::default();
        wrong_size.check(&decision(1, 0, 2 * 10 + 1, 2), 4);
        assert!(!wrong_size.all_passed());
        let mut too_big = RoomChecks::default();
        too_big.check(&decision(0, 0, u64::MAX - 3, 4), 4);
        assert!(!too_big.all_passed());
    }
}
