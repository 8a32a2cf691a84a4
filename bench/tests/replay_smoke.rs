//! Smoke test of the replay harness: the first 300 requests of the shipped trace on a tiny
//! fleet, every backend, one calibration trial and one trial at a low offered rate each.
//! Asserts that the schedule is consistent (simulator and reference agree, no anomalies),
//! that the dependency plan is well formed, that every backend ran and answered every
//! lookup, and that our index is exact. (The peers' exactness is what the benchmark
//! reports, not what this test asserts.)

use kvroute_bench::backend::{BackendKind, PositionalHashes};
use kvroute_bench::replay::Pacing;
use kvroute_bench::schedule::{build_plan, build_schedule, Item, Routing, ScheduleConfig};
use kvroute_bench::sweep::{default_trace, run_bench, BenchConfig, TraceSource};
use kvroute_bench::trace_shapes::TraceShape;

const REQUESTS: usize = 300;

fn config() -> BenchConfig {
    BenchConfig {
        trace: TraceSource::File(default_trace()),
        block_size: 128,
        workers: 4,
        dp_size: 2,
        capacity_tokens: 16_384,
        max_requests: Some(REQUESTS),
        routing: Routing::CacheAware,
        query_threads: 1,
        event_threads: 2,
        kvroute_shards: None,
        total_order: false,
        backends: BackendKind::ALL.to_vec(),
        pacing: Pacing::Ops,
        positional_hashes: PositionalHashes::DynamoChain,
        max_runs: 0,
        tolerance: 0.05,
        fixed_rate: Some(300_000.0),
        min_seconds_per_rate: 0.01,
        max_repeats: 1,
        verbose: false,
        mismatch_examples: 3,
    }
}

#[test]
fn schedule_and_plan_are_consistent() {
    let c = config();
    let trace = c.trace.load().expect("shipped trace");
    let schedule = build_schedule(
        &trace,
        &ScheduleConfig {
            routing: c.routing,
            block_size: c.block_size,
            workers: c.workers,
            dp_size: c.dp_size,
            capacity_tokens: c.capacity_tokens,
            max_requests: c.max_requests,
        },
    )
    .expect("schedule");
    assert_eq!(schedule.lookups.len(), REQUESTS);
    assert_eq!(schedule.oracle_disagreements, 0, "simulator and reference disagree");
    let anomalies = &schedule.reference_counters;
    assert_eq!(
        anomalies.unknown_parent
            + anomalies.unknown_remove
            + anomalies.duplicate_store
            + anomalies.unknown_rank
            + anomalies.stale_event,
        0,
        "the simulator's stream has anomalies: {anomalies:?}"
    );
    assert!(schedule.totals.removed_blocks > 0, "the tiny fleet should evict");
    assert!(schedule.ranks_used > 1, "cache-aware routing should spread requests");
    let ops: u64 = schedule.totals.lookup_blocks + schedule.totals.stored_blocks + schedule.totals.removed_blocks;
    assert_eq!(ops, schedule.totals.total_block_ops);
    // Every item in order, every lookup followed by its request's events.
    assert!(matches!(schedule.items.first(), Some(Item::Lookup(0))));

    for total_order in [false, true] {
        let plan = build_plan(&schedule, 2, 3, total_order);
        assert_eq!(plan.query_lookups.iter().map(Vec::len).sum::<usize>(), REQUESTS);
        assert_eq!(plan.lane_events.iter().map(Vec::len).sum::<usize>(), schedule.events.len());
        // A dependency only ever points backwards in the schedule.
        let mut lane_seen = [0u32; 3];
        let mut query_seen = [0u32; 2];
        for item in &schedule.items {
            match *item {
                Item::Lookup(k) => {
                    let k = k as usize;
                    for (lane, &seen) in lane_seen.iter().enumerate() {
                        assert!(plan.lookup_need[k * 3 + lane] <= seen);
                        if total_order {
                            assert_eq!(plan.lookup_need[k * 3 + lane], seen);
                        }
                    }
                    query_seen[k % 2] += 1;
                }
                Item::Event(j) => {
                    let j = j as usize;
                    for (q, &seen) in query_seen.iter().enumerate() {
                        assert!(plan.event_need[j * 2 + q] <= seen);
                    }
                    let lane = plan.lane_events.iter().position(|l| l.contains(&(j as u32))).unwrap();
                    lane_seen[lane] += 1;
                }
            }
        }
        // A request's own events always wait for its lookup (they store on its path).
        for (j, event) in schedule.events.iter().enumerate() {
            if matches!(event.event.data, kvroute_core::KvEventData::Stored { .. }) {
                let k = event.request as usize;
                let needed = plan.event_need[j * 2 + k % 2];
                let position = plan.query_lookups[k % 2].iter().position(|&x| x as usize == k).unwrap();
                assert!(needed as usize > position, "event {j} does not wait for lookup {k}");
            }
        }
    }
}

#[test]
fn every_backend_replays_and_kvroute_is_exact() {
    let report = run_bench(&config()).expect("bench runs");
    assert_eq!(report.workload.totals.requests, REQUESTS as u64);
    assert_eq!(report.backends.len(), BackendKind::ALL.len());
    for kind in BackendKind::ALL {
        let b = &report.backends[kind.name()];
        assert!(b.error.is_none(), "{kind}: {:?}", b.error);
        // Calibration plus the fixed-rate trial (plus perhaps the common-rate trial).
        assert!(b.trials.len() >= 2, "{kind}: {} trials", b.trials.len());
        let repeats: u64 = b.trials.iter().map(|t| u64::from(t.repeats)).sum();
        assert_eq!(b.lookups_checked, REQUESTS as u64 * repeats, "{kind}");
        assert!(b.max_achieved_block_ops_per_sec > 0.0, "{kind}");
        assert!(b.lookup_p50_ns > 0.0, "{kind}");
        assert_eq!(b.rejected_events, 0, "{kind} rejected events");
    }
    let ours = &report.backends["kvroute"];
    assert!(ours.exact, "kvroute mismatched {} lookups", ours.mismatches);
    assert!(report.workload.machine.cores > 0, "the report names its machine");
    assert_eq!(ours.mismatches, 0);
    // The report serialises with the required keys.
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
    for key in
        ["exact", "sustained_block_ops_per_sec", "lookup_p50_ns", "lookup_p99_ns", "lookup_p999_ns", "bytes_per_block"]
    {
        assert!(json["backends"]["kvroute"].get(key).is_some(), "missing {key}");
    }
    assert!(json["workload"].get("common_rate_block_ops_per_sec").is_some());
    assert_eq!(json["workload"]["requests"], REQUESTS as u64);
    assert_eq!(json["workload"]["kvroute_shards"], 2, "one shard per event lane by default");
}

/// kvroute is exact with 2 lanes over 1, 2 and 3 shards: lanes and shards partitioned
/// alike, a lane writing into a shard another lane also writes, and the one-tree case.
#[test]
fn kvroute_is_exact_for_every_shard_count_under_two_lanes() {
    for shards in [1, 2, 3] {
        let c = BenchConfig { backends: vec![BackendKind::Kvroute], kvroute_shards: Some(shards), ..config() };
        let report = run_bench(&c).expect("bench runs");
        assert_eq!(report.workload.kvroute_shards, shards);
        let ours = &report.backends["kvroute"];
        assert!(ours.exact && ours.lookups_checked > 0, "{shards} shards: {} mismatches", ours.mismatches);
    }
}

/// The generated shapes go through the same simulator: a consistent schedule (simulator
/// and reference agree, no anomalies), and our index exact on them.
#[test]
fn generated_shapes_replay_exactly() {
    for shape in [TraceShape::SharedPrefix, TraceShape::Agent] {
        let c = BenchConfig {
            trace: TraceSource::Shape { shape, requests: REQUESTS, seed: 3 },
            backends: vec![BackendKind::Kvroute],
            ..config()
        };
        let report = run_bench(&c).expect("bench runs");
        assert_eq!(report.workload.oracle_disagreements, 0, "{shape:?}");
        assert_eq!(report.workload.reference_anomalies, 0, "{shape:?}");
        assert!(report.workload.trace.starts_with("generated:"), "{}", report.workload.trace);
        let ours = &report.backends["kvroute"];
        assert!(ours.exact && ours.lookups_checked > 0, "{shape:?}: {} mismatches", ours.mismatches);
    }
}
