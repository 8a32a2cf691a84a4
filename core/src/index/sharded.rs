//! [`KvIndex`]: the index as callers see it, one or more shards, each a whole tree with its
//! own writer lock ([`IndexShard`]).
//!
//! # Shape
//! Ranks are partitioned over the shards by [`RankKey::partition`]; every event, lookup
//! credit, dump and staged replacement of a rank lives in its shard alone. With one shard
//! (the default, [`KvIndex::new`]) the index is exactly that one tree. With `n`, writers of
//! ranks in different shards never wait for each other: events of different ranks are
//! applied in parallel, which one writer mutex over one tree cannot do.
//!
//! # Ids
//! A shard numbers its ranks densely (its holder bitsets). The index's [`RankId`] of shard
//! `s`'s own id `i` is `i * n + s`: unique across shards, and with one shard the shard's id
//! itself. Ids go out of [`KvIndex::register_rank`] and [`StagedRank::id`] and come back
//! only through [`KvIndex::find_depths_by_slot`]'s `slot_of_id`.
//!
//! # Lookup
//! A lookup walks every shard's tree in turn, lock-free each, and appends their results:
//! a rank is in one shard, so nothing is merged. The price is a walk per shard: positions
//! held by ranks of several shards are stored (and compared) once per shard, so lookups and
//! memory per block grow with the shard count where ranks share prefixes. One shard is
//! the choice for a lookup-bound router; more pay off where event apply is the bound and
//! there are cores for the writers.
//!
//! # Consistency
//! Each shard gives the guarantees of one tree (see the `index` module docs) for its ranks.
//! A lookup reads the shards one after another, so it may see one shard's ranks before an
//! event and another's after a later one; each rank's credit is still one it had before or
//! after each of its own events, which is all a lookup promises with one tree too.

use super::{EventCounters, IndexError, IndexShard, IndexSize, IndexStats, OverlapScores, StagedRank};
use crate::event::{DumpBlock, KvEvent, StoredBlock};
use crate::ids::{BlockHash, EngineHash, RankId, RankKey, WorkerId};

/// The most shards an index is built with (a larger request is capped).
pub const MAX_SHARDS: usize = 64;

/// The concurrent KV-block index. `Sync`: share it by reference or `Arc`.
pub struct KvIndex {
    shards: Box<[IndexShard]>,
}

impl Default for KvIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl KvIndex {
    /// One shard: one tree, one writer lock.
    pub fn new() -> Self {
        Self::with_shards(1)
    }

    /// `shards` trees (1 to [`MAX_SHARDS`]; outside that, the nearest bound), ranks
    /// partitioned over them by [`RankKey::partition`], each with its own writer lock.
    pub fn with_shards(shards: usize) -> Self {
        KvIndex { shards: (0..shards.clamp(1, MAX_SHARDS)).map(|_| IndexShard::new()).collect() }
    }

    /// The one shard of a one-shard index, for tests that look inside the writer.
    #[cfg(test)]
    pub(crate) fn only_shard(&self) -> &IndexShard {
        assert_eq!(self.shards.len(), 1, "a one-shard index");
        &self.shards[0]
    }

    /// How many shards the index has.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn shard_of(&self, rank: RankKey) -> (usize, &IndexShard) {
        let s = rank.partition(self.shards.len());
        (s, &self.shards[s])
    }

    /// The index's id of shard `s`'s own id.
    fn global_id(&self, s: usize, own: RankId) -> RankId {
        RankId(own.0 * self.shards.len() as u32 + s as u32)
    }

    /// A staged rank as its shard knows it (its own id).
    fn own_staged(&self, staged: &StagedRank) -> StagedRank {
        StagedRank { key: staged.key, id: staged.id / self.shards.len() as u32 }
    }

    /// Registers a rank (idempotent) and returns its dense id. Safe while lookups and
    /// other writers run.
    pub fn register_rank(&self, rank: RankKey) -> Result<RankId, IndexError> {
        self.register_rank_with_capacity(rank, 0)
    }

    /// [`register_rank`](Self::register_rank) with room for `blocks` blocks (the rank's
    /// KV cache capacity, when the caller knows it) reserved up front in the rank's
    /// engine-hash map, so that its first events do not pay for the map's growth (about
    /// 8% of applying the replay benchmark's events). Grows the reservation of a rank
    /// already registered; lookups and results are the same as without it. Hints are
    /// capped at 2^20 blocks per rank (the map grows past that as blocks come).
    pub fn register_rank_with_capacity(&self, rank: RankKey, blocks: usize) -> Result<RankId, IndexError> {
        let (s, shard) = self.shard_of(rank);
        shard.register_rank_with_capacity(rank, blocks).map(|id| self.global_id(s, id))
    }

    /// Registers several ranks (each idempotently, as [`register_rank`](Self::register_rank))
    /// and makes them live together: one rank-table publication per shard for all of
    /// them, where one call per rank would build and retire a table per rank (for a worker
    /// with thousands of ranks, megabytes of garbage). Returns each rank's outcome, in
    /// order: once a shard is full, that rank and every later new one of that shard get
    /// `TooManyRanks`; the ranks registered before stay registered (and live), and a
    /// caller that wants all or nothing deregisters them.
    pub fn register_ranks(&self, ranks: &[RankKey]) -> Vec<Result<RankId, IndexError>> {
        if let [shard] = &*self.shards {
            return shard.register_ranks(ranks);
        }
        let mut outcomes: Vec<Result<RankId, IndexError>> = vec![Err(IndexError::TooManyRanks); ranks.len()];
        for (s, shard) in self.shards.iter().enumerate() {
            let at: Vec<usize> = (0..ranks.len()).filter(|&i| ranks[i].partition(self.shards.len()) == s).collect();
            if at.is_empty() {
                continue;
            }
            let mine: Vec<RankKey> = at.iter().map(|&i| ranks[i]).collect();
            for (i, outcome) in at.into_iter().zip(shard.register_ranks(&mine)) {
                outcomes[i] = outcome.map(|id| self.global_id(s, id));
            }
        }
        outcomes
    }

    /// Starts a replacement of `rank`'s blocks (say, from a publisher's full dump): an
    /// empty state under a hidden id that lookups never report. Fill it with
    /// [`fill_staged`](Self::fill_staged), then [`promote_staged`](Self::promote_staged)
    /// swaps it in for every lookup at once, or [`discard_staged`](Self::discard_staged).
    pub fn stage_rank(&self, rank: RankKey) -> Result<StagedRank, IndexError> {
        let (s, shard) = self.shard_of(rank);
        let staged = shard.stage_rank(rank)?;
        Ok(StagedRank { key: rank, id: self.global_id(s, RankId(staged.id)).0 })
    }

    /// Fills a staged rank with a dump ([`stage_rank`](Self::stage_rank)): stores each
    /// `(parent, chain)` run in order, then removes the `placeholders` (engine hashes
    /// stored by the runs only to place their descendants), all under one writer-lock
    /// acquisition, with no event ids. `block_hint` (the runs' total length) presizes the
    /// rank's map. The one way a rank is rebuilt from a dump: live dumps and snapshot
    /// restore both come here (through `Router::replace_rank`).
    pub fn fill_staged<R, B>(&self, staged: &StagedRank, block_hint: usize, runs: R, placeholders: &[EngineHash])
    where
        R: IntoIterator<Item = (Option<EngineHash>, B)>,
        B: IntoIterator<Item = StoredBlock>,
    {
        self.shard_of(staged.key).1.fill_staged(&self.own_staged(staged), block_hint, runs, placeholders);
    }

    /// Makes a staged rank the rank's live state for every lookup at once; the state it
    /// replaces (if any) is freed after a grace period. Returns the rank's new id.
    pub fn promote_staged(&self, staged: StagedRank) -> RankId {
        let own = self.own_staged(&staged);
        let (s, shard) = self.shard_of(own.key);
        self.global_id(s, shard.promote_staged(own))
    }

    /// Drops a staged rank and its blocks; the rank's live state is untouched.
    pub fn discard_staged(&self, staged: StagedRank) {
        let own = self.own_staged(&staged);
        self.shard_of(own.key).1.discard_staged(own);
    }

    /// Removes a rank and every block it holds. Returns whether it was registered.
    pub fn deregister_rank(&self, rank: RankKey) -> bool {
        self.shard_of(rank).1.deregister_rank(rank)
    }

    /// Deregisters several ranks with one rank-table publication per shard (see
    /// [`register_ranks`](Self::register_ranks)); returns how many were registered.
    pub fn deregister_ranks(&self, ranks: &[RankKey]) -> usize {
        if let [shard] = &*self.shards {
            return shard.deregister_ranks(ranks);
        }
        (self.shards.iter().enumerate())
            .map(|(s, shard)| {
                let mine: Vec<RankKey> =
                    ranks.iter().copied().filter(|r| r.partition(self.shards.len()) == s).collect();
                if mine.is_empty() {
                    0
                } else {
                    shard.deregister_ranks(&mine)
                }
            })
            .sum()
    }

    /// Removes every rank of `worker`; returns how many there were.
    pub fn remove_worker(&self, worker: WorkerId) -> usize {
        self.shards.iter().map(|shard| shard.remove_worker(worker)).sum()
    }

    /// Applies one event. Callable from many threads; a rank's events must be applied in
    /// order by one thread at a time. Bad events are counted (see [`EventCounters`]).
    pub fn apply(&self, event: &KvEvent) {
        self.shard_of(event.rank).1.apply(event);
    }

    /// Applies a batch of events, under one lock acquisition per shard it touches.
    pub fn apply_batch<'a>(&self, events: impl IntoIterator<Item = &'a KvEvent>) {
        self.apply_split(events, false);
    }

    /// [`apply_batch`](Self::apply_batch) for events the index may already reflect (the
    /// events after a restored snapshot's cursor, up to its settled point): applying them
    /// again is idempotent, and the duplicate stores, unknown parents and unknown removals
    /// it meets are counted in `snapshot_replays` instead of as anomalies.
    pub fn apply_replayed_batch<'a>(&self, events: impl IntoIterator<Item = &'a KvEvent>) {
        self.apply_split(events, true);
    }

    /// Hands each shard its events of the batch, in the batch's order.
    fn apply_split<'a>(&self, events: impl IntoIterator<Item = &'a KvEvent>, replayed: bool) {
        if let [shard] = &*self.shards {
            return shard.apply_events(events, replayed);
        }
        let mut per_shard: Vec<Vec<&'a KvEvent>> = vec![Vec::new(); self.shards.len()];
        for event in events {
            per_shard[event.rank.partition(self.shards.len())].push(event);
        }
        for (shard, mine) in self.shards.iter().zip(per_shard) {
            if !mine.is_empty() {
                shard.apply_events(mine, replayed);
            }
        }
    }

    /// Overlap of every rank holding a non-empty prefix of `request`. Lock-free.
    pub fn find_matches(&self, request: &[BlockHash]) -> OverlapScores {
        let mut out = OverlapScores::default();
        self.find_matches_into(request, &mut out.entries);
        out
    }

    /// [`KvIndex::find_matches`] appending `(rank, overlap)` pairs (unordered, non-zero
    /// overlaps only) to a caller's buffer: a frontend that keeps one buffer per thread
    /// looks up without allocating.
    pub fn find_matches_into(&self, request: &[BlockHash], out: &mut Vec<(RankKey, u32)>) {
        for shard in &*self.shards {
            shard.find_matches_into(request, out);
        }
    }

    /// Writes each rank's overlap straight into `depths[slot_of_id[id]]`, for callers
    /// that keep per-rank arrays in their own order (the router's registry snapshot):
    /// no intermediate list. Ranks with no overlap, and ids outside `slot_of_id` or
    /// mapped to a slot outside `depths`, are left alone.
    pub fn find_depths_by_slot(&self, request: &[BlockHash], slot_of_id: &[u32], depths: &mut [u32]) {
        for (s, shard) in self.shards.iter().enumerate() {
            shard.find_depths_by_slot(request, slot_of_id, depths, (self.shards.len(), s));
        }
    }

    /// Every block `rank` holds, as a dump (parents before children); `None` if the rank
    /// is not registered. Replaying it on an empty rank rebuilds the same positions.
    pub fn export_rank(&self, rank: RankKey) -> Option<Vec<DumpBlock>> {
        self.shard_of(rank).1.export_rank(rank)
    }

    /// What the shards did with their events, summed.
    pub fn counters(&self) -> EventCounters {
        let mut sum = EventCounters::default();
        for shard in &*self.shards {
            sum.add(&shard.counters());
        }
        sum
    }

    /// The size as the writers keep it (a short hold of each writer lock; see
    /// [`IndexSize`]), summed over the shards.
    pub fn size(&self) -> IndexSize {
        let mut sum = IndexSize::default();
        for shard in &*self.shards {
            sum.add(&shard.size());
        }
        sum
    }

    /// Walks every tree under its writer lock, summing the shards: a position held by
    /// ranks of two shards counts in each (`distinct_blocks` is per shard).
    pub fn stats(&self) -> IndexStats {
        let mut sum = IndexStats::default();
        for shard in &*self.shards {
            sum.add(&shard.stats());
        }
        sum
    }

    /// Pushes deferred frees towards collection (for memory reports and tests).
    pub fn flush_reclamation(&self) {
        for shard in &*self.shards {
            shard.flush_reclamation();
        }
    }
}
