//! [`Router`]: registry operations, event ingestion, and aggregated decisions.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use super::approx::{ApproxBook, ApproxStats};
use super::cost::{CostBreakdown, CostRange, CostWeights, Rng};
use super::load::{ActiveRequest, Charge, LoadBook, LoadReport, LoadSnapshot, RequestId};
use super::policy::{Candidate, PickContext, Picked, Policy, RequestShape};
use super::registry::{Fleet, RankSlot, Role, WorkerEntry, WorkerSpec};
use super::room::RoomAllocator;
use super::shortfall::{self, Pick, Shortfall};
use super::RouteError;
use crate::event::{KvEvent, KvEventData, StoredBlock};
use crate::hashing::{BlockHasher, BlockIdentity, HashScheme};
use crate::ids::{BlockHash, DpRank, EngineHash, RankId, RankKey, WorkerId};
use crate::index::KvIndex;
pub use crate::tier::StorageTier;

/// The router's only source of time: milliseconds on any monotonic scale.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

impl<F: Fn() -> u64 + Send + Sync> Clock for F {
    fn now_ms(&self) -> u64 {
        self()
    }
}

/// One (tier, rank) holding a prefix of a prompt, and how many blocks of it.
pub type TierOverlap = (StorageTier, RankKey, u32);

/// Router settings. `RouterConfig::default()` is a working configuration.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Tokens per KV block (every worker must use the same). Default 16.
    pub block_size: u32,
    /// How prompts given as tokens are hashed. Default [`HashScheme::Kv64`].
    pub hash_scheme: HashScheme,
    pub weights: CostWeights,
    /// A routed request never finished is released after this long. Default 300 s.
    pub request_ttl_ms: u64,
    /// Approximate-mode blocks are forgotten this long after last routed. Default 120 s.
    pub approx_ttl_ms: u64,
    /// Most blocks approximate mode credits one rank with; past it the least recently
    /// routed are evicted. Default 262,144 (a large GPU's KV cache, in 16-token blocks).
    pub approx_max_blocks_per_rank: u64,
    /// Shards of each tier's index ([`KvIndex::with_shards`]): writers of ranks in
    /// different shards apply in parallel, lookups walk every shard. Default 1.
    pub index_shards: usize,
    /// Start of the bootstrap-room counter; give each router lifetime a random one.
    pub room_seed: u64,
    /// Seed of the tie-break / sampling generator.
    pub rng_seed: u64,
    /// How a rank is picked among the scored candidates (aggregated and prefill
    /// decisions; decode ranks always go by `weights`' decode cost). Default
    /// [`Policy::PredictedTtft`] with its default weights.
    pub policy: Policy,
    /// An engine's load report ([`Router::apply_load_report`]) counts this long; then the
    /// router goes by its own bookkeeping again. Default 10 s.
    pub load_report_ttl_ms: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            block_size: 16,
            hash_scheme: HashScheme::Kv64,
            weights: CostWeights::default(),
            request_ttl_ms: 300_000,
            approx_ttl_ms: 120_000,
            approx_max_blocks_per_rank: 262_144,
            index_shards: 1,
            room_seed: 0x005e_ed0f_b007_5700,
            rng_seed: 0x0ddc_0ffe,
            policy: Policy::default(),
            load_report_ttl_ms: 10_000,
        }
    }
}

/// What one [`Router::expire_step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiryStep {
    pub requests_released: usize,
    /// Nothing due is left (false: run another step).
    pub done: bool,
}

/// A prompt, as token ids or as block content hashes already computed by the caller.
#[derive(Clone, Copy, Debug)]
pub enum Prompt<'a> {
    /// Plain token ids: blocks identified by their tokens alone.
    Tokens(&'a [u32]),
    /// Token ids of a request with a LoRA adapter, a cache salt or per-block extra keys
    /// (multimodal inputs): only blocks the engines stored under the same identity match.
    TokensWith(&'a [u32], BlockIdentity<'a>),
    /// Block content hashes, identity already folded in.
    Blocks(&'a [BlockHash]),
}

/// Options of [`Router::best_worker`]; `RouteOptions::default()` routes over every
/// aggregated worker and charges the chosen rank.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteOptions<'a> {
    /// Only these workers are candidates.
    pub workers: Option<&'a [WorkerId]>,
    /// Only this rank is a candidate (the decision still reports its overlap and cost).
    pub rank: Option<RankKey>,
    /// These ranks are not candidates (a proxy's ranks that just failed, or whose worker
    /// is down). Unknown ranks here are ignored.
    pub excluded: &'a [RankKey],
    /// Decide without charging any load or recording anything (a "what if" query).
    pub dry_run: bool,
    /// Expected output tokens, charged as decode blocks until finish. Default 0.
    pub output_tokens: u32,
}

/// Where a request goes and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Decision {
    pub worker: WorkerId,
    pub dp_rank: DpRank,
    /// Leading prompt blocks the rank holds in device memory.
    pub overlap_blocks: u32,
    /// The most leading prompt blocks any candidate held in device memory: what a
    /// decision that ignored load would have taken.
    pub best_overlap_blocks: u32,
    /// Why `overlap_blocks` is below `best_overlap_blocks`; `None` when it is not.
    pub shortfall: Option<Shortfall>,
    pub cost: CostBreakdown,
    /// The id to report prefill-done and finish under; `None` for a dry run.
    pub request: Option<RequestId>,
}

/// Which cost terms a decision uses and which role its candidates have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Aggregated,
    Prefill,
    Decode,
}

impl Side {
    fn role(self) -> Role {
        match self {
            Side::Aggregated => Role::Both,
            Side::Prefill => Role::Prefill,
            Side::Decode => Role::Decode,
        }
    }
}

/// The outcome of scoring: the chosen rank and what to charge it.
pub(crate) struct Scored {
    pub(crate) slot: usize,
    pub(crate) overlap_blocks: u32,
    pub(crate) best_overlap_blocks: u32,
    pub(crate) shortfall: Option<Shortfall>,
    pub(crate) cost: CostBreakdown,
    pub(crate) prefill_tokens: u64,
    pub(crate) decode_blocks: u64,
}

/// Per-thread buffers of a decision, reused so that deciding allocates nothing.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) hashes: Vec<BlockHash>,
    /// Per tier, the overlap of each slot of the fleet snapshot.
    depth: [Vec<u32>; 3],
    costs: Vec<f64>,
    candidates: Vec<Candidate>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

pub(crate) fn with_scratch<T>(f: impl FnOnce(&mut Scratch) -> T) -> T {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        // Re-entered (a clock calling back into the router): use fresh buffers.
        Err(_) => f(&mut Scratch::default()),
    })
}

/// Routes requests to (worker, dp_rank); see the module docs.
pub struct Router {
    pub(crate) config: RouterConfig,
    hasher: BlockHasher,
    pub(crate) indexes: [KvIndex; 3],
    pub(crate) tier_used: [AtomicBool; 3],
    pub(crate) fleet: ArcSwap<Fleet>,
    registry: Mutex<()>,
    pub(crate) loads: LoadBook,
    approx: Mutex<ApproxBook>,
    pub(crate) rooms: RoomAllocator,
    pub(crate) rng: Rng,
    clock: Arc<dyn Clock>,
    next_sweep_ms: AtomicU64,
    /// Decisions picked by the policy so far (round-robin's turn).
    turns: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves consistent data (every update is
    // completed before anything that can panic), so poisoning is ignored.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Router {
    /// A router with no workers. Errors if the configuration is out of range.
    pub fn new(config: RouterConfig, clock: Arc<dyn Clock>) -> Result<Router, RouteError> {
        config.weights.validate()?;
        config.policy.validate().map_err(RouteError::InvalidConfig)?;
        if config.request_ttl_ms == 0 || config.approx_ttl_ms == 0 {
            return Err(RouteError::InvalidConfig("request_ttl_ms and approx_ttl_ms must be above 0".into()));
        }
        if !(1..=crate::index::MAX_SHARDS).contains(&config.index_shards) {
            let max = crate::index::MAX_SHARDS;
            return Err(RouteError::InvalidConfig(format!("index_shards must be 1 to {max}")));
        }
        let hasher = BlockHasher::with_scheme(config.block_size as usize, config.hash_scheme)
            .map_err(|e| RouteError::InvalidConfig(e.to_string()))?;
        Ok(Router {
            hasher,
            indexes: std::array::from_fn(|_| KvIndex::with_shards(config.index_shards)),
            tier_used: [AtomicBool::new(true), AtomicBool::new(false), AtomicBool::new(false)],
            fleet: ArcSwap::from_pointee(Fleet::default()),
            registry: Mutex::new(()),
            // Below 2^52: ids stay exact as JSON numbers in JavaScript clients too.
            loads: LoadBook::new(config.room_seed.rotate_left(17) & ((1 << 52) - 1)),
            approx: Mutex::new(ApproxBook::new(
                config.approx_ttl_ms,
                usize::try_from(config.approx_max_blocks_per_rank).unwrap_or(usize::MAX),
            )),
            rooms: RoomAllocator::new(config.room_seed),
            rng: Rng::new(config.rng_seed),
            next_sweep_ms: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            clock,
            config,
        })
    }

    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The index of one storage tier (device is where engines' events usually go).
    pub fn tier_index(&self, tier: StorageTier) -> &KvIndex {
        &self.indexes[tier.index()]
    }

    /// Registers a worker and its ranks. It starts in approximate mode and switches to
    /// exact mode at its first KV event.
    pub fn add_worker(&self, spec: WorkerSpec) -> Result<(), RouteError> {
        spec.check(self.config.block_size)?;
        let _registry = lock(&self.registry);
        let fleet = self.fleet.load_full();
        if fleet.workers.contains_key(&spec.worker) {
            return Err(RouteError::WorkerExists(spec.worker));
        }
        let entry = Arc::new(WorkerEntry { spec: spec.clone(), exact: false });
        let keys: Vec<RankKey> = (spec.dp_start..spec.dp_start + spec.dp_size)
            .map(|dp| RankKey { worker: spec.worker, dp_rank: DpRank(dp) })
            .collect();
        let ids = match self.register_everywhere(&keys) {
            Ok(ids) => ids,
            Err(e) => {
                for index in &self.indexes {
                    index.remove_worker(spec.worker);
                }
                return Err(e);
            }
        };
        let new_slots: Vec<RankSlot> = keys
            .iter()
            .zip(ids)
            .map(|(&key, ids)| RankSlot { key, role: spec.role, ids, load: Arc::default(), worker: entry.clone() })
            .collect();
        let mut workers = fleet.workers.clone();
        workers.insert(spec.worker, entry);
        let mut ranks = fleet.ranks.clone();
        ranks.extend(new_slots);
        self.fleet.store(Arc::new(Fleet::build(workers, ranks)));
        Ok(())
    }

    /// Registers `keys` in every tier's index, one rank-table publication per index; the
    /// ids of each key, one per tier. On an error some keys may stay registered.
    fn register_everywhere(&self, keys: &[RankKey]) -> Result<Vec<[RankId; 3]>, RouteError> {
        let mut ids = vec![[RankId(0); 3]; keys.len()];
        for (tier, index) in self.indexes.iter().enumerate() {
            for (slot, outcome) in ids.iter_mut().zip(index.register_ranks(keys)) {
                slot[tier] = outcome?;
            }
        }
        Ok(ids)
    }

    /// Removes a worker: its ranks leave every decision that starts after this returns,
    /// and the index. Requests already routed there are released as they finish.
    pub fn remove_worker(&self, worker: WorkerId) -> Result<(), RouteError> {
        let _registry = lock(&self.registry);
        let fleet = self.fleet.load_full();
        if !fleet.workers.contains_key(&worker) {
            return Err(RouteError::UnknownWorker(worker));
        }
        let mut workers = fleet.workers.clone();
        workers.remove(&worker);
        let ranks = fleet.ranks.iter().filter(|s| s.key.worker != worker).cloned().collect();
        self.fleet.store(Arc::new(Fleet::build(workers, ranks)));
        {
            let mut approx = lock(&self.approx);
            for slot in fleet.ranks.iter().filter(|s| s.key.worker == worker) {
                approx.forget(slot.key);
            }
        }
        for index in &self.indexes {
            index.remove_worker(worker);
        }
        Ok(())
    }

    /// The registered workers, by id.
    pub fn workers(&self) -> Vec<WorkerSpec> {
        let fleet = self.fleet.load();
        let mut specs: Vec<WorkerSpec> = fleet.workers.values().map(|w| w.spec.clone()).collect();
        specs.sort_by_key(|s| s.worker);
        specs
    }

    /// Whether any prefill worker is registered (requests are then disaggregated), without
    /// copying the registry as [`Router::workers`] does.
    pub fn has_prefill_workers(&self) -> bool {
        self.fleet.load().ranks.iter().any(|slot| slot.role == Role::Prefill)
    }

    /// Whether the worker publishes events (exact mode); `None` if it is not registered.
    pub fn is_exact(&self, worker: WorkerId) -> Option<bool> {
        self.fleet.load().workers.get(&worker).map(|w| w.exact)
    }

    /// Every rank's current load, ordered by rank.
    pub fn rank_loads(&self) -> Vec<(RankKey, LoadSnapshot)> {
        self.fleet.load().ranks.iter().map(|s| (s.key, s.load.snapshot())).collect()
    }

    /// Folds `rank`'s engine-reported load into its load: what the report has beyond this
    /// router's own requests counts as other routers' (or clients') load until
    /// `load_report_ttl_ms` passes or the next report replaces it. This is how router
    /// replicas that each see part of the traffic agree on load (module docs of `load`).
    pub fn apply_load_report(&self, rank: RankKey, report: &LoadReport) -> Result<(), RouteError> {
        self.apply_load_reports(rank.worker, &[(rank.dp_rank, *report)])
    }

    /// [`Router::apply_load_report`] for several ranks of one worker (a scrape of its
    /// metrics page): every rank is checked before any is applied, so a bad one changes
    /// nothing; one registry read and one clock read for all.
    pub fn apply_load_reports(&self, worker: WorkerId, reports: &[(DpRank, LoadReport)]) -> Result<(), RouteError> {
        let fleet = self.fleet.load();
        for &(dp_rank, _) in reports {
            check_rank(&fleet, RankKey { worker, dp_rank })?;
        }
        let expires = self.clock.now_ms().saturating_add(self.config.load_report_ttl_ms).max(1);
        for slot in fleet.ranks.iter().filter(|slot| slot.key.worker == worker) {
            if let Some((_, report)) = reports.iter().find(|(dp_rank, _)| *dp_rank == slot.key.dp_rank) {
                slot.load.apply_report(report, expires);
            }
        }
        Ok(())
    }

    /// A registered worker's spec, without copying the registry as [`Router::workers`] does.
    pub fn worker(&self, worker: WorkerId) -> Option<WorkerSpec> {
        self.fleet.load().workers.get(&worker).map(|w| w.spec.clone())
    }

    /// Requests routed and not yet finished or expired.
    pub fn active_requests(&self) -> usize {
        self.loads.len()
    }

    /// What approximate mode holds now (blocks credited, expiry entries).
    pub fn approx_stats(&self) -> ApproxStats {
        lock(&self.approx).stats()
    }

    /// Applies an engine's KV event to the device tier.
    pub fn apply_event(&self, event: &KvEvent) {
        self.apply_event_in(StorageTier::Device, event);
    }

    /// Applies a KV event to a tier's index. A worker's first event switches it to exact
    /// mode (dropping what approximate mode recorded). Events of unregistered ranks are
    /// counted by the index (`unknown_rank`) and otherwise ignored.
    pub fn apply_event_in(&self, tier: StorageTier, event: &KvEvent) {
        self.apply_events_in(tier, std::slice::from_ref(event));
    }

    /// Applies KV events (each rank's in order) to a tier's index under one writer-lock
    /// acquisition per index shard they touch; otherwise as [`Router::apply_event_in`].
    pub fn apply_events_in(&self, tier: StorageTier, events: &[KvEvent]) {
        self.apply_events_as(tier, events, false);
    }

    /// [`apply_events_in`](Self::apply_events_in) for events the index may already hold
    /// (replayed after a snapshot restore; see [`KvIndex::apply_replayed_batch`]).
    pub fn apply_replayed_events_in(&self, tier: StorageTier, events: &[KvEvent]) {
        self.apply_events_as(tier, events, true);
    }

    fn apply_events_as(&self, tier: StorageTier, events: &[KvEvent], replayed: bool) {
        if events.is_empty() {
            return;
        }
        if tier != StorageTier::Device {
            // Relaxed by design: a lookup that misses the flag just skips an index that
            // held nothing a moment ago.
            self.tier_used[tier.index()].store(true, Ordering::Relaxed);
        }
        let mut previous = None;
        for event in events {
            let worker = event.rank.worker;
            if previous == Some(worker) {
                continue;
            }
            previous = Some(worker);
            if self.fleet.load().workers.get(&worker).is_some_and(|w| !w.exact) {
                self.switch_to_exact(worker);
            }
        }
        if replayed {
            self.indexes[tier.index()].apply_replayed_batch(events);
        } else {
            self.indexes[tier.index()].apply_batch(events);
        }
        if tier == StorageTier::Device {
            self.count_held(events);
        }
    }

    /// Keeps each rank's `held_blocks` (see [`RankLoad::held_blocks`]) with its events.
    fn count_held(&self, events: &[KvEvent]) {
        let fleet = self.fleet.load();
        let mut current: Option<(RankKey, Option<usize>)> = None;
        for event in events {
            let slot = match current {
                Some((rank, slot)) if rank == event.rank => slot,
                _ => {
                    let slot = fleet.ranks.binary_search_by_key(&event.rank, |s| s.key).ok();
                    current = Some((event.rank, slot));
                    slot
                }
            };
            let Some(load) = slot.map(|i| &fleet.ranks[i].load) else { continue };
            match &event.data {
                KvEventData::Stored { blocks, .. } => load.add_held(blocks.len() as u64),
                KvEventData::Removed { blocks } => load.remove_held(blocks.len() as u64),
                KvEventData::Cleared => load.set_held(0),
            }
        }
    }

    pub(crate) fn switch_to_exact(&self, worker: WorkerId) {
        let _registry = lock(&self.registry);
        // Held across the re-registration and the publish, so that an approximate record
        // (which re-checks the mode under this lock) never writes into an exact rank.
        let mut approx = lock(&self.approx);
        let fleet = self.fleet.load_full();
        let Some(entry) = fleet.workers.get(&worker) else { return };
        if entry.exact {
            return;
        }
        let exact = Arc::new(WorkerEntry { spec: entry.spec.clone(), exact: true });
        let mut ranks = fleet.ranks.clone();
        let keys: Vec<RankKey> = ranks.iter().filter(|s| s.key.worker == worker).map(|s| s.key).collect();
        for &key in &keys {
            approx.forget(key);
        }
        // Fresh device ids for the worker's ranks (the approximate blocks go with the old
        // ones), all published at once.
        let device = &self.indexes[StorageTier::Device.index()];
        device.deregister_ranks(&keys);
        // Re-registering ranks that were registered a moment ago cannot exceed the rank
        // limit; were it to, such a rank keeps routing with no cached blocks.
        let outcomes = device.register_ranks(&keys);
        for (slot, outcome) in ranks.iter_mut().filter(|s| s.key.worker == worker).zip(outcomes) {
            if let Ok(id) = outcome {
                slot.ids[StorageTier::Device.index()] = id;
            }
            slot.worker = exact.clone();
        }
        let mut workers = fleet.workers.clone();
        workers.insert(worker, exact);
        self.fleet.store(Arc::new(Fleet::build(workers, ranks)));
    }

    /// Replaces `rank`'s blocks in `tier` with a dump (runs of chained blocks stored from
    /// nothing, then the placeholders removed; see [`KvIndex::fill_staged`]), atomically
    /// for decisions and lookups: a decision sees the
    /// rank's old blocks or its new ones, never a mix and never neither.
    ///
    /// How: the dump is applied to a staged (hidden) index rank; a registry snapshot
    /// that maps both the old and the staged id to the rank is published, and the
    /// previous snapshot drained (decisions that loaded it have finished); the index then
    /// swaps the staged rank in with one table publication; finally a snapshot naming
    /// only the new id is published and drained, so the old id cannot be recycled under
    /// a decision that still maps it. Writers wait; decisions never do.
    ///
    /// Like a KV event, a dump switches its worker to exact mode. The rank must belong
    /// to a registered worker.
    pub fn replace_rank<R, B>(
        &self,
        tier: StorageTier,
        rank: RankKey,
        block_hint: usize,
        runs: R,
        placeholders: &[EngineHash],
    ) -> Result<(), RouteError>
    where
        R: IntoIterator<Item = (Option<EngineHash>, B)>,
        B: IntoIterator<Item = StoredBlock>,
    {
        let approximate = {
            let fleet = self.fleet.load();
            check_rank(&fleet, rank)?;
            fleet.workers.get(&rank.worker).is_some_and(|w| !w.exact)
        };
        // No snapshot may be held while waiting for the registry lock: its holder may be
        // draining snapshots (below), which would wait for this one forever.
        if approximate {
            self.switch_to_exact(rank.worker);
        }
        let mut runs = runs.into_iter().peekable();
        if tier != StorageTier::Device {
            // Relaxed by design; see `apply_event_in`.
            if runs.peek().is_none() && !self.tier_used[tier.index()].load(Ordering::Relaxed) {
                // Emptying a tier that never held a block changes nothing; marking it used
                // would make every later lookup walk it.
                return Ok(());
            }
            self.tier_used[tier.index()].store(true, Ordering::Relaxed);
        }
        let index = &self.indexes[tier.index()];
        let staged = index.stage_rank(rank)?;
        index.fill_staged(&staged, block_hint, runs, placeholders);
        let _registry = lock(&self.registry);
        let fleet = self.fleet.load_full();
        if let Err(e) = check_rank(&fleet, rank) {
            // The worker left while the dump was being built.
            index.discard_staged(staged);
            return Err(e);
        }
        let aliased = Fleet::build_with_alias(
            fleet.workers.clone(),
            fleet.ranks.clone(),
            Some((tier.index(), staged.id(), rank)),
        );
        let mut ranks = fleet.ranks.clone();
        let workers = fleet.workers.clone();
        drop(fleet);
        drain(self.fleet.swap(Arc::new(aliased)));
        let id = index.promote_staged(staged);
        for slot in ranks.iter_mut().filter(|s| s.key == rank) {
            slot.ids[tier.index()] = id;
            if tier == StorageTier::Device {
                slot.load.set_held(block_hint.saturating_sub(placeholders.len()) as u64);
            }
        }
        drain(self.fleet.swap(Arc::new(Fleet::build(workers, ranks))));
        Ok(())
    }

    /// Picks the (worker, dp_rank) for an aggregated request; see the module docs.
    pub fn best_worker(&self, prompt: Prompt<'_>, options: &RouteOptions<'_>) -> Result<Decision, RouteError> {
        let fleet = self.fleet.load();
        check_workers(&fleet, options.workers)?;
        if let Some(rank) = options.rank {
            check_rank(&fleet, rank)?;
        }
        self.with_prompt(prompt, |scratch, hashes, tokens| {
            let accepts = |slot: &RankSlot| {
                options.workers.is_none_or(|ws| ws.contains(&slot.key.worker))
                    && options.rank.is_none_or(|r| r == slot.key)
                    && !options.excluded.contains(&slot.key)
            };
            let scored =
                self.score(&fleet, scratch, hashes, tokens, options.output_tokens, Side::Aggregated, accepts)?;
            let slot = &fleet.ranks[scored.slot];
            let request = (!options.dry_run).then(|| {
                // Aggregated: both parts on one rank, counted there as one request.
                let prefill = Charge::prefill(slot, scored.prefill_tokens, false);
                let decode = Charge::decode(slot, scored.decode_blocks);
                self.open_request(slot, hashes, prefill, decode)
            });
            Ok(Decision {
                worker: slot.key.worker,
                dp_rank: slot.key.dp_rank,
                overlap_blocks: scored.overlap_blocks,
                best_overlap_blocks: scored.best_overlap_blocks,
                shortfall: scored.shortfall,
                cost: scored.cost,
                request,
            })
        })
    }

    /// What the index holds of a prompt: every (tier, rank) with a non-zero overlap, in
    /// tier then rank order, and the prompt's full-block count. For operators and checks;
    /// decisions use the lock-free per-slot path instead.
    pub fn overlaps(&self, prompt: Prompt<'_>) -> Result<(Vec<TierOverlap>, usize), RouteError> {
        self.with_prompt(prompt, |_, hashes, _| {
            let mut out = Vec::new();
            for tier in StorageTier::ALL {
                for (rank, overlap) in self.tier_index(tier).find_matches(hashes).sorted() {
                    out.push((tier, rank, overlap));
                }
            }
            Ok((out, hashes.len()))
        })
    }

    /// Runs `decide` with this thread's scratch buffers and the prompt's block hashes
    /// (hashed into a reused buffer when given as tokens) and token count.
    pub(crate) fn with_prompt<T>(
        &self,
        prompt: Prompt<'_>,
        decide: impl FnOnce(&mut Scratch, &[BlockHash], u64) -> Result<T, RouteError>,
    ) -> Result<T, RouteError> {
        with_scratch(|scratch| {
            let mut buf = std::mem::take(&mut scratch.hashes);
            let result =
                self.prompt_blocks(prompt, &mut buf).and_then(|(hashes, tokens)| decide(scratch, hashes, tokens));
            scratch.hashes = buf;
            result
        })
    }

    /// Charges a routed request and returns its id: sweeps expired requests when due,
    /// and records the prompt on `prefill_rank` if that rank is in approximate mode.
    pub(crate) fn open_request(
        &self,
        prefill_rank: &RankSlot,
        hashes: &[BlockHash],
        prefill: Charge,
        decode: Charge,
    ) -> RequestId {
        let now = self.clock.now_ms();
        self.maybe_sweep(now);
        if !prefill_rank.worker.exact {
            self.record_approx(prefill_rank.key, hashes, now);
        }
        let expires = now.saturating_add(self.config.request_ttl_ms);
        self.loads.open(ActiveRequest::new(prefill, decode, expires), now)
    }

    /// Prefill of a routed request is done: its prefill tokens leave the rank's load.
    /// False if the request is unknown (finished, expired or never routed) or was
    /// already marked.
    pub fn prefill_done(&self, request: RequestId) -> bool {
        self.loads.prefill_done(request, self.clock.now_ms())
    }

    /// A routed request finished or was cancelled: all its load is released (both ranks
    /// of a disaggregated request). False if it is unknown (already finished, expired or
    /// never routed).
    pub fn finish(&self, request: RequestId) -> bool {
        self.loads.finish(request)
    }

    /// Releases every request older than the TTL and forgets every expired approximate
    /// block now, in bounded steps ([`Router::expire_step`]) until nothing due is left;
    /// returns how many requests expired.
    pub fn expire(&self) -> usize {
        let mut released = 0;
        loop {
            let step = self.expire_step();
            released += step.requests_released;
            if step.done {
                return released;
            }
        }
    }

    /// Frees what the indexes' writers retired and no reader can see any more (replaced
    /// ranks past their grace period, unlinked nodes), without waiting for more events:
    /// call it on an idle timer (`kvroute serve` does, with the expiry steps), not on the
    /// routing path (it takes each tier's writer lock). Two calls a grace period apart
    /// free everything retired before the first.
    pub fn reclaim_idle(&self) {
        for index in &self.indexes {
            index.flush_reclamation();
        }
    }

    /// One bounded step of expiry: at most 65,536 requests and 65,536 approximate-mode
    /// entries looked at. Routing runs one about every `min(ttl) / 8` (at most every
    /// second, again at once while `done` is false); `kvroute serve` also runs them on a
    /// timer, so loads are right when traffic stops.
    pub fn expire_step(&self) -> ExpiryStep {
        let now = self.clock.now_ms();
        let approx_done = lock(&self.approx).expire(&self.indexes[StorageTier::Device.index()], now);
        let (requests_released, requests_done) = self.loads.expire(now, super::load::EXPIRY_BUDGET);
        for slot in &self.fleet.load().ranks {
            slot.load.expire_report(now);
        }
        ExpiryStep { requests_released, done: approx_done && requests_done }
    }

    /// How often expiry should run: `min(request_ttl, approx_ttl) / 8`, 1 ms to 1 s.
    pub fn expiry_interval_ms(&self) -> u64 {
        (self.config.request_ttl_ms.min(self.config.approx_ttl_ms) / 8).clamp(1, 1000)
    }

    pub(crate) fn maybe_sweep(&self, now: u64) {
        // Relaxed by design: the CAS alone elects one sweeper per interval.
        let due = self.next_sweep_ms.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        let interval = self.expiry_interval_ms();
        if self.next_sweep_ms.compare_exchange(due, now + interval, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            && !self.expire_step().done
        {
            // More is due: the next route goes on with it.
            self.next_sweep_ms.store(now, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_approx(&self, rank: RankKey, hashes: &[BlockHash], now: u64) {
        let mut approx = lock(&self.approx);
        // Re-checked under the approx lock: a switch to exact mode publishes under it.
        if self.fleet.load().workers.get(&rank.worker).is_some_and(|w| !w.exact) {
            approx.record(&self.indexes[StorageTier::Device.index()], rank, hashes, now);
        }
    }

    /// The prompt's block hashes (hashing tokens into `buf`) and its token count.
    pub(crate) fn prompt_blocks<'p>(
        &self,
        prompt: Prompt<'p>,
        buf: &'p mut Vec<BlockHash>,
    ) -> Result<(&'p [BlockHash], u64), RouteError> {
        match prompt {
            Prompt::Tokens([]) | Prompt::TokensWith([], _) | Prompt::Blocks([]) => Err(RouteError::EmptyPrompt),
            Prompt::Tokens(tokens) => {
                buf.clear();
                self.hasher.hash_blocks_into(tokens, buf);
                Ok((buf.as_slice(), tokens.len() as u64))
            }
            Prompt::TokensWith(tokens, identity) => {
                buf.clear();
                self.hasher.hash_blocks_with_into(tokens, &identity, buf);
                Ok((buf.as_slice(), tokens.len() as u64))
            }
            Prompt::Blocks(blocks) => Ok((blocks, blocks.len() as u64 * u64::from(self.config.block_size))),
        }
    }

    /// Scores every candidate of `side` that `accepts` and picks one.
    ///
    /// Each used tier's lookup hits `(rank id, overlap)` land, through the snapshot's
    /// `slot_of_id`, in a per-slot array ordered like `fleet.ranks`; the candidate loop
    /// then reads overlaps, loads and roles in slot order and computes only each
    /// candidate's total (the winner's breakdown is rebuilt once).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn score(
        &self,
        fleet: &Fleet,
        scratch: &mut Scratch,
        hashes: &[BlockHash],
        tokens: u64,
        output_tokens: u32,
        side: Side,
        accepts: impl Fn(&RankSlot) -> bool,
    ) -> Result<Scored, RouteError> {
        let weights = &self.config.weights;
        let block_size = u64::from(self.config.block_size);
        let bs = block_size as f64;
        let Scratch { depth, costs, candidates, .. } = scratch;
        let slots = fleet.ranks.len();
        let mut tier_looked_up = [false; 3];
        if side != Side::Decode {
            for tier in 0..3 {
                // Relaxed by design; see `apply_event_in`.
                if tier > 0 && !self.tier_used[tier].load(Ordering::Relaxed) {
                    continue;
                }
                tier_looked_up[tier] = true;
                let depth = &mut depth[tier];
                depth.clear();
                depth.resize(slots, 0);
                // An id the snapshot does not know (a rank registered since) maps to
                // NO_SLOT, outside `depth`, and is skipped.
                self.indexes[tier].find_depths_by_slot(hashes, &fleet.slot_of_id[tier], depth);
            }
        }
        let request_blocks = (tokens / block_size) as u32;
        let charged_blocks = (tokens + u64::from(output_tokens)).div_ceil(block_size);
        // The cost, expanded so that the per-candidate loop is a few multiply-adds:
        //   prefill_scale * (queued prefill tokens + this request's uncached tokens) / bs
        // + decode_weight * (decode blocks + this request's blocks)
        // + request_weight * active requests
        // with the terms of the other side zeroed for a prefill or decode decision.
        let (prefill_term, decode_term) = match side {
            Side::Aggregated => (weights.prefill_scale / bs, weights.decode_weight),
            Side::Prefill => (weights.prefill_scale / bs, 0.0),
            Side::Decode => (0.0, weights.decode_weight),
        };
        let fixed = decode_term * charged_blocks as f64;
        let tokens_f = tokens as f64;
        let device_only = !tier_looked_up[1] && !tier_looked_up[2];
        let depths_of = |i: usize| {
            let mut depths = [0u32; 3];
            for tier in 0..3 {
                if tier_looked_up[tier] {
                    depths[tier] = depth[tier][i];
                }
            }
            depths
        };
        costs.clear();
        candidates.clear();
        costs.reserve(fleet.ranks.len());
        candidates.reserve(fleet.ranks.len());
        let request_weight = weights.request_weight;
        let mut range = CostRange::default();
        let mut best_overlap = 0;
        let by_cost = side == Side::Decode || self.config.policy == Policy::Cost;
        // Only the predicted-TTFT pick reads a rank's progress, and its cache fullness only
        // when the cache size is known: the other picks skip those loads.
        let progress_at =
            (!by_cost && matches!(self.config.policy, Policy::PredictedTtft(_))).then(|| self.clock.now_ms());
        let reads_held = !by_cost && matches!(self.config.policy, Policy::PredictedTtft(w) if w.cache_blocks.is_some());
        let role = side.role();
        for (i, slot) in fleet.ranks.iter().enumerate() {
            if slot.role != role || !accepts(slot) {
                continue;
            }
            let credit = if !tier_looked_up[0] {
                0.0
            } else if device_only {
                f64::from(depth[0][i])
            } else {
                weights.overlap_credit(depths_of(i))
            };
            let load = slot.load.snapshot();
            let uncached = (tokens_f - credit * bs).max(0.0);
            // Loads are far below 2^63: the signed conversion is one instruction, the
            // unsigned one six.
            let cost = prefill_term * (load.prefill_tokens as i64 as f64 + uncached)
                + decode_term * load.decode_blocks as i64 as f64
                + request_weight * load.requests as i64 as f64
                + fixed;
            range.include(cost);
            costs.push(cost);
            let device_overlap = if tier_looked_up[0] { depth[0][i] } else { 0 };
            best_overlap = best_overlap.max(device_overlap);
            let held_blocks = if reads_held { slot.load.held_blocks() } else { 0 };
            let prefill_remaining = match progress_at {
                Some(now) => slot.load.own_prefill_remaining(now) + slot.load.external_prefill_tokens() as f64,
                None => 0.0,
            };
            candidates.push(Candidate { slot: i, load, device_overlap, credit, held_blocks, prefill_remaining });
        }
        if candidates.is_empty() {
            return Err(RouteError::NoCandidates);
        }
        let picked = if by_cost {
            Picked::sample(costs.len(), |i| costs[i], range, weights.temperature, &self.rng)
        } else {
            // Relaxed by design: round-robin needs distinct turns, not an ordering.
            let turn = self.turns.fetch_add(1, Ordering::Relaxed);
            let request = RequestShape { tokens: tokens_f, request_blocks, block_size: bs };
            let cx = PickContext { rng: &self.rng, turn, temperature: weights.temperature };
            self.config.policy.pick(candidates, costs, range, request, &cx)
        };
        let chosen = candidates[picked.index];
        let shortfall = shortfall::classify(&Pick {
            candidates,
            picked: picked.index,
            best_overlap,
            by_cost,
            policy: self.config.policy,
            sampled_above_lowest: picked.above_lowest,
        });
        let depths = depths_of(chosen.slot);
        let credit = weights.overlap_credit(depths);
        let new_prefill_tokens = (tokens_f - credit * bs).max(0.0);
        let prefill_blocks = (chosen.load.prefill_tokens as f64 + new_prefill_tokens) / bs;
        let decode_blocks = (chosen.load.decode_blocks + charged_blocks) as f64;
        let (prefill_blocks, decode_blocks) = match side {
            Side::Aggregated => (prefill_blocks, decode_blocks),
            Side::Prefill => (prefill_blocks, 0.0),
            Side::Decode => (0.0, decode_blocks),
        };
        let cost = CostBreakdown {
            request_blocks,
            overlap_credit: credit,
            prefill_blocks,
            decode_blocks,
            active_requests: chosen.load.requests,
            total: costs[picked.index],
        };
        let new_prefill_tokens = new_prefill_tokens.round() as u64;
        let (prefill_tokens, decode_blocks) = match side {
            Side::Aggregated => (new_prefill_tokens, charged_blocks),
            Side::Prefill => (new_prefill_tokens, 0),
            Side::Decode => (0, charged_blocks),
        };
        Ok(Scored {
            slot: chosen.slot,
            overlap_blocks: depths[0],
            best_overlap_blocks: best_overlap,
            shortfall,
            cost,
            prefill_tokens,
            decode_blocks,
        })
    }
}

/// Waits until no decision holds `snapshot` (arc-swap converts every reader's borrow of
/// a swapped-out value into a counted reference before `swap` returns). Called with the
/// registry lock held, so no code may hold a snapshot while it takes that lock.
fn drain(snapshot: Arc<Fleet>) {
    while Arc::strong_count(&snapshot) > 1 {
        std::thread::yield_now();
    }
}

/// Every worker of a subset must be registered.
pub(crate) fn check_workers(fleet: &Fleet, workers: Option<&[WorkerId]>) -> Result<(), RouteError> {
    for &worker in workers.unwrap_or(&[]) {
        if !fleet.workers.contains_key(&worker) {
            return Err(RouteError::UnknownWorker(worker));
        }
    }
    Ok(())
}

/// A fixed rank must belong to a registered worker's range.
pub(crate) fn check_rank(fleet: &Fleet, rank: RankKey) -> Result<(), RouteError> {
    let entry = fleet.workers.get(&rank.worker).ok_or(RouteError::UnknownWorker(rank.worker))?;
    if !entry.spec.owns(rank.dp_rank) {
        return Err(entry.spec.rank_error(rank.dp_rank));
    }
    Ok(())
}
