//! The replay schedule: a trace plus the engine-cache simulator, turned once into the
//! ordered lookups and KV events every backend replays, with the exact answer of every
//! lookup.
//!
//! # Generation ([`build_schedule`])
//!
//! Requests are taken in trace order. For each request:
//! 1. its chain of content hashes is `trace::request_blocks(request, block_size)`;
//! 2. it is routed by the simulator's ground truth, every rank's `Fleet::cached_prefix`
//!    (see [`Routing`]): with `prefix`, the rank with the largest cached prefix, ties to the
//!    rank with the fewest requests routed so far, then to the lowest rank; with
//!    `cache-aware` (the default), the SGLang gateway's cache-aware rule over the same
//!    ground truth, because in the Mooncake traces every request starts with the same
//!    512-token block, so pure largest-prefix routing sends the whole trace to the first
//!    rank that served one request and leaves every other rank (and the index's multi-rank
//!    paths) idle;
//! 3. its **lookup** (the whole chain) enters the schedule, with its expected answer: what
//!    the single-threaded [`ReferenceIndex`] returns after every earlier event;
//! 4. the events of `Fleet::prefill` on the chosen rank follow it (a `Removed` with the
//!    evictions, then the `Stored` runs), and are applied to the reference.
//!
//! Block ops (the unit of throughput): the lookup's hashes, plus every stored and every
//! removed hash. An item's **pacing point** is the number of block ops scheduled before it;
//! an offered rate turns it into a deadline (see `replay`).
//!
//! # Positions
//!
//! Every block of every event and lookup is also given its *position*: the chained hash of
//! the content hashes from the root to it, chained the way Dynamo chains sequence hashes
//! (`seq[0] = content[0]`, `seq[i] = compute_next_seq_hash(seq[i-1], content[i])`). Two
//! blocks have the same position exactly when they sit at the end of the same content path
//! (the reference index's notion of a position, up to 64-bit collisions). Positions serve
//! two purposes: the dependency plan below, and the block hashes handed to Dynamo's
//! `PositionalIndexer`, whose lookups re-derive and verify exactly this chain.
//!
//! # Dependency plan ([`Plan`])
//!
//! Lookups run on query threads (lookup `k` on thread `k % Q`) and events on event lanes
//! (every event of a rank on lane `lane_of(rank)`, in order). A lookup's expected answer is
//! the reference's state after exactly the events scheduled before it, so the replay must not
//! let a lookup and an event that *conflict* run in the other order than the schedule's. An
//! event conflicts with a lookup when one of the event's block positions lies on the lookup's
//! chain (a stored or removed block there can change the overlap of the event's rank; an
//! event touching no position of the chain cannot, in any backend that is exact). For every
//! lookup the plan records, per event lane, how many of that lane's events must be visible
//! before it is issued (the last conflicting one before it, and thereby all earlier ones of
//! that lane); for every event, per query thread, how many of that thread's lookups must
//! have completed before it is applied. Non-conflicting items run freely in parallel, so
//! the check is deterministic without serialising the replay. Waiting on these edges is
//! charged to the achieved rate, never to a lookup's service latency.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::ops::Range;

use dynamo_kv_router::protocols::{compute_next_seq_hash, LocalBlockHash};
use kvroute_core::event::{KvEvent, KvEventData};
use kvroute_core::ids::{BlockHash, EngineHash, RankKey};
use kvroute_core::index::EventCounters;
use kvroute_core::reference::ReferenceIndex;
use kvroute_core::sim::{Fleet, FleetConfig};
use kvroute_core::trace::{request_blocks, TraceRequest};
use rustc_hash::FxHasher;

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// How the ground truth picks a request's rank (every rank's simulated cached prefix is
/// known exactly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// Largest cached prefix; ties to the fewest requests routed so far, then the lowest
    /// rank. Degenerates to one rank when every request shares its first block.
    Prefix,
    /// The SGLang gateway's cache-aware rule (REFERENCE.md section 5) with requests routed
    /// so far as the load: when the load is imbalanced (max - min > 32 requests and
    /// max > 1.1 x min), or the best cached prefix covers less than half the request, the
    /// least-loaded rank (ties: larger cached prefix, then lower rank); otherwise the
    /// `prefix` choice.
    CacheAware,
}

/// Match ratio below which `cache-aware` routing balances instead.
pub const CACHE_THRESHOLD: f64 = 0.5;
/// Absolute load imbalance (requests) that makes `cache-aware` routing balance.
pub const BALANCE_ABS: u64 = 32;
/// Relative load imbalance that makes `cache-aware` routing balance.
pub const BALANCE_REL: f64 = 1.1;

/// What the schedule is generated from.
#[derive(Clone, Debug)]
pub struct ScheduleConfig {
    pub routing: Routing,
    /// Tokens per block; must divide 512.
    pub block_size: u32,
    pub workers: u32,
    pub dp_size: u32,
    /// Per-rank cache capacity in tokens; `capacity_tokens / block_size` blocks.
    pub capacity_tokens: u64,
    /// Use only the first N requests of the trace.
    pub max_requests: Option<usize>,
}

/// One event of the schedule.
#[derive(Clone, Debug)]
pub struct ScheduledEvent {
    pub event: KvEvent,
    /// Index of the request whose prefill published it.
    pub request: u32,
    /// Positions of the event's blocks in [`Schedule::positions`]: one per stored block or
    /// removed hash; for `Cleared`, every position the rank held.
    pub positions: Range<usize>,
    /// Position of a `Stored` event's parent block.
    pub parent_position: Option<u64>,
    /// Block ops the event counts for.
    pub block_ops: u64,
}

/// One lookup of the schedule.
#[derive(Clone, Debug)]
pub struct ScheduledLookup {
    /// The request's content hashes in [`Schedule::lookup_hashes`].
    pub hashes: Range<usize>,
    /// The reference's answer at this point of the schedule, sorted by rank.
    pub expected: Vec<(RankKey, u32)>,
    /// The rank the ground truth routed the request to.
    pub routed_to: RankKey,
}

/// An entry of the schedule, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    Lookup(u32),
    Event(u32),
}

/// Sizes of a schedule.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Totals {
    pub requests: u64,
    pub lookup_blocks: u64,
    pub events: u64,
    pub stored_events: u64,
    pub removed_events: u64,
    pub cleared_events: u64,
    pub stored_blocks: u64,
    pub removed_blocks: u64,
    /// Blocks of the routed requests their rank already had cached.
    pub cached_blocks: u64,
    pub total_block_ops: u64,
}

/// The whole replay schedule; see the module docs.
pub struct Schedule {
    pub config: ScheduleConfig,
    pub capacity_blocks: usize,
    pub ranks: Vec<RankKey>,
    pub items: Vec<Item>,
    /// Block ops scheduled before each item (parallel to `items`).
    pub item_ops_before: Vec<u64>,
    /// Trace timestamp (ms) of the request each item belongs to (parallel to `items`).
    pub item_timestamp_ms: Vec<u64>,
    pub lookups: Vec<ScheduledLookup>,
    pub lookup_hashes: Vec<BlockHash>,
    pub events: Vec<ScheduledEvent>,
    pub positions: Vec<u64>,
    pub totals: Totals,
    /// Distinct positions held by at least one rank at the end (the reference's count).
    pub distinct_blocks_end: usize,
    /// (rank, position) pairs held at the end.
    pub held_pairs_end: usize,
    /// Ranks that were routed at least one request.
    pub ranks_used: usize,
    /// Lookups where the simulator's per-rank cached prefixes and the reference's answer
    /// disagree (should be 0: the simulator is consistent with the reference).
    pub oracle_disagreements: u64,
    /// The reference's event counters (anomalies should all be 0).
    pub reference_counters: EventCounters,
}

impl Schedule {
    /// The content hashes of lookup `k`.
    pub fn lookup(&self, k: usize) -> &[BlockHash] {
        &self.lookup_hashes[self.lookups[k].hashes.clone()]
    }

    /// The positions of event `j`'s blocks.
    pub fn event_positions(&self, j: usize) -> &[u64] {
        &self.positions[self.events[j].positions.clone()]
    }
}

/// Position of the block with content `content` under the block at position `parent`
/// (`None`: at the root). Dynamo's sequence-hash chain.
#[inline]
pub fn child_position(parent: Option<u64>, content: BlockHash) -> u64 {
    match parent {
        None => content.0,
        Some(parent) => compute_next_seq_hash(parent, LocalBlockHash(content.0)),
    }
}

/// Calls `f` with the position of every block of a request chain, in order.
pub fn for_each_position(chain: &[BlockHash], mut f: impl FnMut(u64)) {
    let mut at = None;
    for &content in chain {
        let pos = child_position(at, content);
        f(pos);
        at = Some(pos);
    }
}

/// Generates the schedule; see the module docs.
pub fn build_schedule(trace: &[TraceRequest], config: &ScheduleConfig) -> Result<Schedule, String> {
    if config.workers == 0 || config.dp_size == 0 {
        return Err("the fleet needs at least one worker and one dp rank".into());
    }
    if config.block_size == 0 || 512 % config.block_size != 0 {
        return Err(format!(
            "block size {} must divide the trace's 512-token blocks (1, 2, 4, ..., 512)",
            config.block_size
        ));
    }
    let capacity_blocks = (config.capacity_tokens / u64::from(config.block_size)) as usize;
    if capacity_blocks == 0 {
        return Err(format!(
            "capacity of {} tokens holds no {}-token block",
            config.capacity_tokens, config.block_size
        ));
    }
    let requests = match config.max_requests {
        Some(n) => &trace[..n.min(trace.len())],
        None => trace,
    };

    let mut fleet = Fleet::new(FleetConfig { workers: config.workers, dp_size: config.dp_size, capacity_blocks });
    let ranks: Vec<RankKey> = fleet.ranks().to_vec();
    let slot_of: FxMap<RankKey, usize> = ranks.iter().enumerate().map(|(i, r)| (*r, i)).collect();
    let mut reference = ReferenceIndex::new();
    for &rank in &ranks {
        reference.register_rank(rank);
    }
    let mut routed = vec![0u64; ranks.len()];
    // Per rank: engine hash -> position, as the reference keeps it.
    let mut held: Vec<FxMap<EngineHash, u64>> = vec![FxMap::default(); ranks.len()];

    let mut items = Vec::new();
    let mut item_ops_before = Vec::new();
    let mut item_timestamp_ms = Vec::new();
    let mut lookups = Vec::with_capacity(requests.len());
    let mut lookup_hashes = Vec::new();
    let mut events = Vec::new();
    let mut positions = Vec::new();
    let mut totals = Totals::default();
    let mut oracle_disagreements = 0u64;
    let mut cached = vec![0usize; ranks.len()];
    let mut sim_view = Vec::new();

    for (request_index, request) in requests.iter().enumerate() {
        let chain = request_blocks(request, config.block_size).map_err(|e| format!("request {request_index}: {e}"))?;

        // Ground truth: every rank's cached prefix, from the simulator.
        let mut best = 0usize;
        let mut least = 0usize;
        sim_view.clear();
        for (i, &rank) in ranks.iter().enumerate() {
            cached[i] = fleet.cached_prefix(rank, &chain);
            if cached[i] > 0 {
                sim_view.push((rank, cached[i] as u32));
            }
            if cached[i] > cached[best] || (cached[i] == cached[best] && routed[i] < routed[best]) {
                best = i;
            }
            if routed[i] < routed[least] || (routed[i] == routed[least] && cached[i] > cached[least]) {
                least = i;
            }
        }
        if config.routing == Routing::CacheAware {
            let (max, min) = (routed.iter().max().copied().unwrap_or(0), routed[least]);
            let imbalanced = max - min > BALANCE_ABS && max as f64 > BALANCE_REL * min as f64;
            let ratio = cached[best] as f64 / chain.len().max(1) as f64;
            if imbalanced || ratio < CACHE_THRESHOLD {
                best = least;
            }
        }
        let target = ranks[best];
        routed[best] += 1;

        let expected = reference.find_matches(&chain);
        if expected != sim_view {
            oracle_disagreements += 1;
        }
        let start = lookup_hashes.len();
        lookup_hashes.extend_from_slice(&chain);
        items.push(Item::Lookup(lookups.len() as u32));
        item_ops_before.push(totals.total_block_ops);
        item_timestamp_ms.push(request.timestamp_ms);
        totals.total_block_ops += chain.len() as u64;
        totals.lookup_blocks += chain.len() as u64;
        lookups.push(ScheduledLookup { hashes: start..lookup_hashes.len(), expected, routed_to: target });

        let prefill = fleet.prefill(target, &chain);
        totals.cached_blocks += prefill.cached_blocks as u64;
        for event in prefill.events {
            reference.apply(&event);
            let slot = *slot_of
                .get(&event.rank)
                .ok_or_else(|| format!("simulator published an event for unknown rank {}", event.rank))?;
            let map = &mut held[slot];
            let first = positions.len();
            let mut parent_position = None;
            match &event.data {
                KvEventData::Stored { parent, blocks } => {
                    totals.stored_events += 1;
                    totals.stored_blocks += blocks.len() as u64;
                    // Unknown parent (dropped by the reference): chain from a stand-in so
                    // the positions are defined; they match nothing.
                    let mut at = parent.map(|p| map.get(&p).copied().unwrap_or(p.0 ^ 0x5bd1_e995));
                    parent_position = at;
                    let known_parent = parent.is_none_or(|p| map.contains_key(&p));
                    for block in blocks {
                        let pos = match map.get(&block.engine_hash) {
                            Some(&existing) => existing,
                            None => {
                                let pos = child_position(at, block.content_hash);
                                if known_parent {
                                    map.insert(block.engine_hash, pos);
                                }
                                pos
                            }
                        };
                        positions.push(pos);
                        at = Some(pos);
                    }
                }
                KvEventData::Removed { blocks } => {
                    totals.removed_events += 1;
                    totals.removed_blocks += blocks.len() as u64;
                    for hash in blocks {
                        positions.push(map.remove(hash).unwrap_or(hash.0));
                    }
                }
                KvEventData::Cleared => {
                    totals.cleared_events += 1;
                    positions.extend(map.values().copied());
                    map.clear();
                }
            }
            let block_ops = event.block_count() as u64;
            items.push(Item::Event(events.len() as u32));
            item_ops_before.push(totals.total_block_ops);
            item_timestamp_ms.push(request.timestamp_ms);
            totals.total_block_ops += block_ops;
            totals.events += 1;
            events.push(ScheduledEvent {
                event,
                request: request_index as u32,
                positions: first..positions.len(),
                parent_position,
                block_ops,
            });
        }
        totals.requests += 1;
    }

    Ok(Schedule {
        config: config.clone(),
        capacity_blocks,
        ranks,
        items,
        item_ops_before,
        item_timestamp_ms,
        lookups,
        lookup_hashes,
        events,
        positions,
        totals,
        distinct_blocks_end: reference.distinct_blocks(),
        held_pairs_end: reference.held_pairs(),
        ranks_used: routed.iter().filter(|&&n| n > 0).count(),
        oracle_disagreements,
        reference_counters: reference.counters().clone(),
    })
}

/// The event lane of a rank among `lanes` (the partition kvroute's index shards by too).
pub fn lane_of(rank: RankKey, lanes: usize) -> usize {
    rank.partition(lanes)
}

/// Thread assignment and the dependency edges of a schedule; see the module docs.
pub struct Plan {
    pub query_threads: usize,
    pub event_threads: usize,
    /// Event indices of each lane, in schedule order.
    pub lane_events: Vec<Vec<u32>>,
    /// Lookup indices of each query thread, in schedule order.
    pub query_lookups: Vec<Vec<u32>>,
    /// `[k * event_threads + lane]`: events of `lane` that must be visible before lookup `k`.
    pub lookup_need: Vec<u32>,
    /// `[j * query_threads + q]`: lookups of thread `q` that must be complete before event `j`.
    pub event_need: Vec<u32>,
    /// Block ops scheduled before each lookup / event, and their trace timestamps.
    pub lookup_ops_before: Vec<u64>,
    pub event_ops_before: Vec<u64>,
    pub lookup_timestamp_ms: Vec<u64>,
    pub event_timestamp_ms: Vec<u64>,
    /// Lookups that need not wait for every earlier event (may overlap one), and events
    /// that need not wait for every earlier lookup: the concurrency the plan allows.
    pub lookups_overlappable: u64,
    pub events_overlappable: u64,
}

/// Builds the plan for `query_threads` query threads and `event_threads` event lanes.
/// With `total_order`, every lookup waits for every earlier event and every event for every
/// earlier lookup (the schedule's order, no overlap between lookups and events: a
/// diagnostic that separates a backend's sequential semantics from its behaviour under
/// concurrent writes).
pub fn build_plan(schedule: &Schedule, query_threads: usize, event_threads: usize, total_order: bool) -> Plan {
    let q_n = query_threads.max(1);
    let e_n = event_threads.max(1);
    let width = e_n + q_n;
    let lanes_of_rank: FxMap<RankKey, usize> = schedule.ranks.iter().map(|&r| (r, lane_of(r, e_n))).collect();

    let mut slots: FxMap<u64, u32> = FxMap::default();
    // Per position: [lane watermark needed after its last event; per thread lookups done].
    let mut last: Vec<u32> = Vec::new();
    let mut lane_events = vec![Vec::new(); e_n];
    let mut query_lookups = vec![Vec::new(); q_n];
    let n_lookups = schedule.lookups.len();
    let n_events = schedule.events.len();
    let mut lookup_need = vec![0u32; n_lookups * e_n];
    let mut event_need = vec![0u32; n_events * q_n];
    let mut lookup_ops_before = vec![0u64; n_lookups];
    let mut event_ops_before = vec![0u64; n_events];
    let mut lookup_timestamp_ms = vec![0u64; n_lookups];
    let mut event_timestamp_ms = vec![0u64; n_events];
    let mut lookups_overlappable = 0u64;
    let mut events_overlappable = 0u64;

    let mut slot_for = |pos: u64, last: &mut Vec<u32>| -> usize {
        let next = slots.len() as u32;
        let slot = *slots.entry(pos).or_insert(next);
        if slot == next {
            last.extend(std::iter::repeat_n(0, width));
        }
        slot as usize * width
    };

    for (i, item) in schedule.items.iter().enumerate() {
        match *item {
            Item::Lookup(k) => {
                let k = k as usize;
                let q = k % q_n;
                let seq = query_lookups[q].len() as u32;
                query_lookups[q].push(k as u32);
                lookup_ops_before[k] = schedule.item_ops_before[i];
                lookup_timestamp_ms[k] = schedule.item_timestamp_ms[i];
                let need = &mut lookup_need[k * e_n..(k + 1) * e_n];
                if total_order {
                    for (lane, n) in need.iter_mut().enumerate() {
                        *n = lane_events[lane].len() as u32;
                    }
                }
                for_each_position(schedule.lookup(k), |pos| {
                    let base = slot_for(pos, &mut last);
                    for (lane, n) in need.iter_mut().enumerate() {
                        *n = (*n).max(last[base + lane]);
                    }
                    last[base + e_n + q] = seq + 1;
                });
                if need.iter().zip(&lane_events).any(|(&n, events)| (n as usize) < events.len()) {
                    lookups_overlappable += 1;
                }
            }
            Item::Event(j) => {
                let j = j as usize;
                let lane = lanes_of_rank[&schedule.events[j].event.rank];
                let seq = lane_events[lane].len() as u32;
                lane_events[lane].push(j as u32);
                event_ops_before[j] = schedule.item_ops_before[i];
                event_timestamp_ms[j] = schedule.item_timestamp_ms[i];
                let need = &mut event_need[j * q_n..(j + 1) * q_n];
                if total_order {
                    for (q, n) in need.iter_mut().enumerate() {
                        *n = query_lookups[q].len() as u32;
                    }
                }
                for &pos in schedule.event_positions(j) {
                    let base = slot_for(pos, &mut last);
                    for (q, n) in need.iter_mut().enumerate() {
                        *n = (*n).max(last[base + e_n + q]);
                    }
                    last[base + lane] = seq + 1;
                }
                if need.iter().zip(&query_lookups).any(|(&n, lookups)| (n as usize) < lookups.len()) {
                    events_overlappable += 1;
                }
            }
        }
    }

    Plan {
        query_threads: q_n,
        event_threads: e_n,
        lane_events,
        query_lookups,
        lookup_need,
        event_need,
        lookup_ops_before,
        event_ops_before,
        lookup_timestamp_ms,
        event_timestamp_ms,
        lookups_overlappable,
        events_overlappable,
    }
}
