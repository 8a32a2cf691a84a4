//! The KV-block index: for a request's block content hashes, how many leading blocks
//! each (worker, dp_rank) holds.
//!
//! # Shape
//! A compressed radix tree over content hashes. A node is a *run*: consecutive positions
//! on one chain that the same set of ranks holds, stored as a contiguous array of content
//! hashes plus a bitset of holder rank ids (`RankId`s are dense, so 256 ranks are 4
//! words). Children hang off a node's end in a small open-addressing table keyed by the
//! child's first hash. A chain that an engine stores in one event becomes one node; it
//! is cut only where holders differ (a rank holds part of it, or evicted a block inside
//! it) or where another chain branches off mid-run. See [`node`] for the node layout.
//!
//! # Lookup
//! [`KvIndex::find_matches`] pins the reclamation epoch, walks from the root comparing
//! the request against each run with a tight loop (going from shape to child table to
//! child shape, never through a `Node`), and ANDs a stack bitset of ranks
//! still matching with each node's holders; a rank that drops out scores the blocks
//! matched before that node. No lock, no retry, no shared write, no allocation but the
//! result. See [`lookup`].
//!
//! # Writes
//! Events are applied under the tree's writer mutex (readers never touch it); an index of
//! several shards (`KvIndex::with_shards`) is a tree and a mutex per shard of the ranks.
//! Each rank keeps `engine hash -> (node, offset)` to resolve `parent` links and removals. A writer
//! changes a node's length and children together by swapping in a new `Shape` (in the
//! node and in the parent's child-table slot, which is where lookups find it), so a
//! reader always sees a consistent node, and sets holder bits bottom-up so
//! a reader never credits a rank with more than it held before or after an event. See
//! [`writer`].
//!
//! # Memory
//! Unlinked nodes, replaced shapes, rebuilt child tables and recycled rank ids go
//! through epoch-based reclamation ([`reclaim`]: seize by default, crossbeam-epoch with
//! the `crossbeam` feature): freed once no pinned reader can hold them. A node with no holders
//! and no children is unlinked at once, so the tree holds what the ranks hold, plus the
//! path nodes above it.

mod block_map;
mod child_table;
mod export;
mod lookup;
mod node;
pub(crate) mod prehashed;
mod rank_table;
mod reclaim;
mod sharded;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard};

use child_table::{ChildTable, OwnedTable};
use node::{empty_holders, Node};
pub use rank_table::MAX_RANKS;
use rank_table::{IdReturn, RankTable};
use reclaim::Domain;
pub use sharded::{KvIndex, MAX_SHARDS};
use writer::{NodePtr, WriterState};

use crate::event::KvEvent;
use crate::ids::{BlockHash, RankId, RankKey, WorkerId};

/// What the index did with the events it was given. Anything but `events_applied`,
/// `blocks_stored` and `blocks_removed` is an anomaly in the stream, counted, never fatal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventCounters {
    pub events_applied: u64,
    pub blocks_stored: u64,
    pub blocks_removed: u64,
    /// A stored block whose engine hash the rank already held.
    pub duplicate_store: u64,
    /// A `Stored` whose parent the rank does not hold: the event was dropped.
    pub unknown_parent: u64,
    /// A removed engine hash the rank did not hold.
    pub unknown_remove: u64,
    /// An event for a rank that is not registered: dropped.
    pub unknown_rank: u64,
    /// An event whose id was not above the rank's last applied id: skipped.
    pub stale_event: u64,
    /// Duplicate stores, unknown parents and unknown removals of events re-applied after
    /// a snapshot restore that the snapshot may already hold ([`KvIndex::apply_replayed_batch`]):
    /// expected there, so counted here and not as anomalies.
    pub snapshot_replays: u64,
}

impl EventCounters {
    /// Adds `other`'s counts to these (sums over shards).
    pub fn add(&mut self, other: &EventCounters) {
        self.events_applied += other.events_applied;
        self.blocks_stored += other.blocks_stored;
        self.blocks_removed += other.blocks_removed;
        self.duplicate_store += other.duplicate_store;
        self.unknown_parent += other.unknown_parent;
        self.unknown_remove += other.unknown_remove;
        self.unknown_rank += other.unknown_rank;
        self.stale_event += other.stale_event;
        self.snapshot_replays += other.snapshot_replays;
    }
}

/// For each rank with a non-zero overlap, the number of leading request blocks it holds.
/// Order is unspecified; [`OverlapScores::sorted`] orders by rank.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverlapScores {
    pub entries: Vec<(RankKey, u32)>,
}

impl OverlapScores {
    /// Overlap of `rank` (0 when it holds nothing of the request).
    pub fn get(&self, rank: RankKey) -> u32 {
        self.entries.iter().find(|(k, _)| *k == rank).map_or(0, |(_, v)| *v)
    }
    pub fn sorted(mut self) -> Vec<(RankKey, u32)> {
        self.entries.sort_unstable();
        self.entries
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Sizes of the index, for leak checks and memory reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Distinct block positions held by at least one rank.
    pub distinct_blocks: usize,
    /// (rank, position) pairs held.
    pub held_pairs: usize,
    /// Live tree nodes, excluding the root.
    pub nodes: usize,
    /// Nodes that hold nothing but lead to held nodes.
    pub path_nodes: usize,
    /// Nodes that hold nothing and lead nowhere: always 0 unless something leaked.
    pub empty_leaves: usize,
    pub ranks: usize,
}

impl IndexStats {
    /// Adds `other`'s sizes to these (sums over shards).
    pub fn add(&mut self, other: &IndexStats) {
        self.distinct_blocks += other.distinct_blocks;
        self.held_pairs += other.held_pairs;
        self.nodes += other.nodes;
        self.path_nodes += other.path_nodes;
        self.empty_leaves += other.empty_leaves;
        self.ranks += other.ranks;
    }
}

/// The index's size as its writer keeps it: cheap to read (one pass over the ranks,
/// not the tree), for gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexSize {
    pub ranks: usize,
    /// (rank, engine hash) pairs held: the sum of the ranks' block maps (an engine that
    /// stores one position under two engine hashes counts twice).
    pub held_blocks: usize,
    /// Live tree nodes, excluding the root.
    pub nodes: usize,
}

impl IndexSize {
    /// Adds `other`'s sizes to these (sums over shards).
    pub fn add(&mut self, other: &IndexSize) {
        self.ranks += other.ranks;
        self.held_blocks += other.held_blocks;
        self.nodes += other.nodes;
    }
}

/// Errors of rank registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexError {
    /// The index (with shards, the rank's shard) already holds [`MAX_RANKS`] ranks.
    TooManyRanks,
}

impl std::fmt::Display for IndexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexError::TooManyRanks => {
                write!(f, "the index (or the rank's shard of it) already holds {MAX_RANKS} ranks")
            }
        }
    }
}

impl std::error::Error for IndexError {}

/// A replacement for one rank's blocks, built under an id that lookups do not report;
/// see [`KvIndex::stage_rank`].
#[derive(Debug)]
#[must_use = "promote or discard a staged rank; a dropped one keeps its id and blocks until the index drops"]
pub struct StagedRank {
    key: RankKey,
    id: u32,
}

impl StagedRank {
    pub fn rank(&self) -> RankKey {
        self.key
    }

    /// The id the rank will have once promoted (lookups report it only from then on).
    pub fn id(&self) -> RankId {
        RankId(self.id)
    }
}

/// Raises its flag when dropped, which the reclamation scheme does after a grace period.
struct GraceMarker(std::sync::Arc<AtomicBool>);

impl Drop for GraceMarker {
    fn drop(&mut self) {
        // Release pairs with the Acquire in `release_retired`.
        self.0.store(true, Ordering::Release);
    }
}

/// One tree with its writer lock: the whole index when it has one shard, else the ranks
/// [`KvIndex`] routes to it (see [`sharded`]). Rank ids here are the shard's own.
pub(crate) struct IndexShard {
    root: NodePtr,
    ranks: AtomicPtr<RankTable>,
    writer: Mutex<WriterState>,
    domain: Domain,
}

// SAFETY: the root pointer is owned by the index and freed in Drop; all shared mutation
// goes through atomics, the writer mutex, and the reclamation scheme (module docs).
unsafe impl Sync for IndexShard {}
// SAFETY: as above; nothing in the index is tied to the creating thread.
unsafe impl Send for IndexShard {}

impl IndexShard {
    pub fn new() -> Self {
        let root = Node::new(
            std::sync::Arc::from(Vec::new()),
            0,
            0,
            std::ptr::null_mut(),
            empty_holders(1),
            std::ptr::null_mut(),
        );
        IndexShard {
            root: NodePtr(root),
            ranks: AtomicPtr::new(Box::into_raw(RankTable::new(&[]))),
            writer: Mutex::new(WriterState::new(root)),
            #[allow(clippy::default_constructed_unit_structs)] // a unit struct with `crossbeam`
            domain: Domain::default(),
        }
    }

    fn writer(&self) -> MutexGuard<'_, WriterState> {
        // A panic while applying an event would be a bug; the state stays usable for
        // lookups either way, so poisoning is not propagated.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_ranks(&self, w: &WriterState, guard: &reclaim::Guard) {
        // Only ids their key maps to are live: a staged rank, and a replaced one waiting
        // for its grace period, stay invisible.
        let keys: Vec<Option<RankKey>> = (w.ranks.iter().enumerate())
            .map(|(id, r)| r.as_ref().map(|s| s.key).filter(|key| w.rank_ids.get(key) == Some(&(id as u32))))
            .collect();
        let old = self.ranks.swap(Box::into_raw(RankTable::new(&keys)), Ordering::Release);
        // SAFETY: the old table is unlinked; retired once.
        unsafe { guard.retire(old) };
    }

    /// [`register_rank`](Self::register_rank) with room for `blocks` blocks (the rank's
    /// KV cache capacity, when the caller knows it) reserved up front in the rank's
    /// engine-hash map, so that its first events do not pay for the map's growth (about
    /// 8% of applying the replay benchmark's events). Grows the reservation of a rank
    /// already registered; lookups and results are the same as without it. Hints are
    /// capped at 2^20 blocks per rank (the map grows past that as blocks come).
    pub fn register_rank_with_capacity(&self, rank: RankKey, blocks: usize) -> Result<RankId, IndexError> {
        let outcome = self.register_all(&[rank], blocks).pop();
        outcome.unwrap_or(Err(IndexError::TooManyRanks))
    }

    /// Registers several ranks (each idempotently, as [`register_rank`](Self::register_rank))
    /// and makes them live together: one rank-table publication for all of them, where
    /// one call per rank would build and retire a table per rank (for a worker with
    /// thousands of ranks, megabytes of garbage). Returns each rank's outcome, in order:
    /// once the index is full, that rank and every later new one get `TooManyRanks`; the
    /// ranks registered before stay registered (and live), and a caller that wants all
    /// or nothing deregisters them.
    pub fn register_ranks(&self, ranks: &[RankKey]) -> Vec<Result<RankId, IndexError>> {
        self.register_all(ranks, 0)
    }

    /// What `register_ranks` and `register_rank_with_capacity` do: registers `ranks`,
    /// reserves `blocks` map entries for each, and publishes the rank table once if any
    /// rank is new.
    fn register_all(&self, ranks: &[RankKey], blocks: usize) -> Vec<Result<RankId, IndexError>> {
        let mut w = self.writer();
        let (mut full, mut added) = (false, false);
        let outcomes = ranks
            .iter()
            .map(|&rank| {
                let id = match w.rank_ids.get(&rank) {
                    Some(&id) => id,
                    None if full => return Err(IndexError::TooManyRanks),
                    None => {
                        let id = self.allocate_id(&mut w, rank).inspect_err(|_| full = true)?;
                        w.rank_ids.insert(rank, id);
                        added = true;
                        id
                    }
                };
                w.reserve_entries(id, blocks);
                Ok(RankId(id))
            })
            .collect();
        if added {
            let guard = self.domain.pin();
            self.publish_ranks(&w, &guard);
        }
        outcomes
    }

    /// A fresh (or recycled) id holding an empty state for `rank`; not yet live.
    ///
    /// Freed ids come back only after a grace period, which seize ends a batch of garbage
    /// at a time; with every id taken, this thread's pending batch is flushed (twice: a
    /// replaced rank's id is released, then returned, each after a grace period) before
    /// giving up, so that churning workers do not run out of ids that are merely pending.
    fn allocate_id(&self, w: &mut WriterState, rank: RankKey) -> Result<u32, IndexError> {
        let mut recycled = w.free_ids.lock().unwrap_or_else(|e| e.into_inner()).pop();
        for _ in 0..3 {
            if recycled.is_some() || w.ranks.len() < MAX_RANKS {
                break;
            }
            let guard = self.domain.pin();
            guard.flush();
            self.release_retired(w, &guard);
            guard.flush();
            recycled = w.free_ids.lock().unwrap_or_else(|e| e.into_inner()).pop();
        }
        let id = match recycled {
            Some(id) => id,
            None if w.ranks.len() < MAX_RANKS => {
                w.ranks.push(None);
                (w.ranks.len() - 1) as u32
            }
            None => return Err(IndexError::TooManyRanks),
        };
        w.ranks[id as usize] = Some(WriterState::new_rank(rank));
        w.words = w.words.max(w.ranks.len().div_ceil(64));
        Ok(id)
    }

    /// Starts a replacement of `rank`'s blocks (say, from a publisher's full dump): an
    /// empty state under a hidden id that lookups never report. Fill it with
    /// [`fill_staged`](Self::fill_staged), then [`promote_staged`](Self::promote_staged)
    /// swaps it in for every lookup at once, or [`discard_staged`](Self::discard_staged).
    pub fn stage_rank(&self, rank: RankKey) -> Result<StagedRank, IndexError> {
        let mut w = self.writer();
        let guard = self.domain.pin();
        self.release_retired(&mut w, &guard);
        let id = self.allocate_id(&mut w, rank)?;
        Ok(StagedRank { key: rank, id })
    }

    /// Makes the staged blocks `rank`'s blocks, atomically for lookups: one table
    /// publication makes the staged id live and the previous id dead, so a lookup reports
    /// the old state or the new one, never a mix. The previous id's blocks are released
    /// only after the grace period (lookups that loaded the older table may still walk
    /// them). Registers the rank if it was not; returns its new id. The rank's event ids
    /// start afresh (its next event is accepted whatever its id).
    pub fn promote_staged(&self, staged: StagedRank) -> RankId {
        let replaced = {
            let mut w = self.writer();
            let guard = self.domain.pin();
            let previous = w.rank_ids.insert(staged.key, staged.id);
            self.publish_ranks(&w, &guard);
            if let Some(previous) = previous {
                let elapsed = std::sync::Arc::new(AtomicBool::new(false));
                let marker = Box::new(GraceMarker(elapsed.clone()));
                // SAFETY: a fresh box, retired once; its drop only raises the flag.
                unsafe { guard.retire(Box::into_raw(marker)) };
                w.retiring.push((previous, elapsed));
            }
            previous.is_some()
        };
        if replaced {
            // The replaced rank's blocks wait for the marker: hand this thread's batch to
            // the reclaimer now rather than when it fills (promotions are rare; a quiet
            // ingest would otherwise keep a replaced copy of the rank indefinitely). Outside
            // the writer lock, as `flush_reclamation` does: a flush frees garbage.
            self.domain.pin().flush();
        }
        RankId(staged.id)
    }

    /// Drops a staged rank that will not be promoted.
    pub fn discard_staged(&self, staged: StagedRank) {
        let mut w = self.writer();
        let guard = self.domain.pin();
        self.release_id(&mut w, &guard, staged.id);
    }

    /// Releases replaced rank ids whose grace period is over.
    fn release_retired(&self, w: &mut WriterState, guard: &reclaim::Guard) {
        if w.retiring.is_empty() {
            return;
        }
        // Acquire pairs with the marker's Release store: the grace period is over.
        let (due, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut w.retiring).into_iter().partition(|(_, elapsed)| elapsed.load(Ordering::Acquire));
        w.retiring = waiting;
        for (id, _) in due {
            self.release_id(w, guard, id);
        }
    }

    /// Clears an unpublished id's bits and returns it to the pool after a grace period.
    fn release_id(&self, w: &mut WriterState, guard: &reclaim::Guard, id: u32) {
        w.release_rank(guard, id);
        let pool = w.free_ids.clone();
        // SAFETY: a fresh box, retired once; its Drop returns the id after the grace period.
        unsafe { guard.retire(Box::into_raw(Box::new(IdReturn { pool, id }))) };
    }

    /// Removes a rank and every block it holds. Returns whether it was registered.
    pub fn deregister_rank(&self, rank: RankKey) -> bool {
        self.deregister_ranks(&[rank]) == 1
    }

    /// Deregisters several ranks with one rank-table publication (see
    /// [`register_ranks`](Self::register_ranks)); returns how many were registered.
    pub fn deregister_ranks(&self, ranks: &[RankKey]) -> usize {
        let mut w = self.writer();
        let guard = self.domain.pin();
        let mut released = Vec::new();
        for rank in ranks {
            if let Some(id) = w.rank_ids.remove(rank) {
                w.release_rank(&guard, id);
                released.push(id);
            }
        }
        if released.is_empty() {
            return 0;
        }
        self.publish_ranks(&w, &guard);
        for &id in &released {
            let pool = w.free_ids.clone();
            // SAFETY: a fresh box, retired once; its Drop returns the id after the grace period.
            unsafe { guard.retire(Box::into_raw(Box::new(IdReturn { pool, id }))) };
        }
        released.len()
    }

    /// Removes every rank of `worker`; returns how many there were.
    pub fn remove_worker(&self, worker: WorkerId) -> usize {
        let ranks: Vec<RankKey> = self.writer().rank_ids.keys().filter(|k| k.worker == worker).copied().collect();
        self.deregister_ranks(&ranks)
    }

    /// Applies one event. Callable from many threads; a rank's events must be applied in
    /// order by one thread at a time. Bad events are counted (see [`EventCounters`]).
    pub fn apply(&self, event: &KvEvent) {
        self.apply_events(std::iter::once(event), false);
    }

    /// Applies `events` in order under one writer-lock acquisition; `replayed`: see
    /// [`KvIndex::apply_replayed_batch`].
    fn apply_events<'a>(&self, events: impl IntoIterator<Item = &'a KvEvent>, replayed: bool) {
        let mut w = self.writer();
        let guard = self.domain.pin();
        self.release_retired(&mut w, &guard);
        let c = &w.counters;
        let before = (c.duplicate_store, c.unknown_parent, c.unknown_remove);
        for event in events {
            w.apply(&guard, event);
        }
        if replayed {
            let c = &mut w.counters;
            c.snapshot_replays +=
                (c.duplicate_store - before.0) + (c.unknown_parent - before.1) + (c.unknown_remove - before.2);
            (c.duplicate_store, c.unknown_parent, c.unknown_remove) = before;
        }
    }

    /// [`KvIndex::find_matches`] appending `(rank, overlap)` pairs (unordered, non-zero
    /// overlaps only) to a caller's buffer: a frontend that keeps one buffer per thread
    /// looks up without allocating.
    pub fn find_matches_into(&self, request: &[BlockHash], out: &mut Vec<(RankKey, u32)>) {
        self.walk(request, out);
    }

    /// Writes each rank's overlap straight into `depths[slot_of_id[id]]`, for callers
    /// that keep per-rank arrays in their own order (the router's registry snapshot):
    /// no intermediate list. Ranks with no overlap, and ids outside `slot_of_id` or
    /// mapped to a slot outside `depths`, are left alone.
    /// Ids here are the shard's own: the index's id of own id `i` is `i * stride + offset`.
    pub fn find_depths_by_slot(
        &self,
        request: &[BlockHash],
        slot_of_id: &[u32],
        depths: &mut [u32],
        (stride, offset): (usize, usize),
    ) {
        self.walk(request, &mut lookup::SlotDepths { slot_of_id, depths, stride, offset });
    }

    fn walk<S: lookup::ScoreSink>(&self, request: &[BlockHash], out: &mut S) {
        let guard = self.domain.pin();
        // SAFETY: the root lives as long as the index; the rank table is loaded under
        // the guard and retired only through the reclamation scheme.
        let (root, ranks) = unsafe { (&*self.root.0, &*guard.load(&self.ranks)) };
        lookup::find_matches_into(&guard, root, ranks, request, out);
    }

    pub fn counters(&self) -> EventCounters {
        self.writer().counters.clone()
    }

    /// The size as the writer keeps it (a short hold of the writer lock; see [`IndexSize`]).
    pub fn size(&self) -> IndexSize {
        let w = self.writer();
        // Registered ranks only: a replaced rank's old id waits for its grace period.
        let live = w.rank_ids.values().filter_map(|&id| w.ranks.get(id as usize).and_then(Option::as_ref));
        IndexSize {
            ranks: w.rank_ids.len(),
            held_blocks: live.map(|state| state.entries.len()).sum(),
            nodes: w.node_count(),
        }
    }

    /// Walks the whole tree under the writer lock.
    pub fn stats(&self) -> IndexStats {
        let w = self.writer();
        let mut stats = IndexStats { ranks: w.rank_ids.len(), ..IndexStats::default() };
        let mut stack = vec![self.root.0];
        while let Some(node) = stack.pop() {
            // SAFETY: under the writer lock nothing is unlinked or freed concurrently.
            let shape = unsafe { &*(*node).shape.load(Ordering::Relaxed) };
            // SAFETY: as above.
            let table = unsafe { ChildTable::from_packed(shape.children.load(Ordering::Relaxed)) };
            if node != self.root.0 {
                stats.nodes += 1;
                let holders = shape.holder_count() as usize;
                stats.distinct_blocks += if holders > 0 { shape.len as usize } else { 0 };
                stats.held_pairs += shape.len as usize * holders;
                match (holders, table.map_or(0, |t| t.live())) {
                    (0, 0) => stats.empty_leaves += 1,
                    (0, _) => stats.path_nodes += 1,
                    _ => {}
                }
            }
            if let Some(table) = table {
                // SAFETY: as above: a linked table's shapes and their nodes are live.
                stack.extend(table.children().map(|(_, c)| unsafe { (*c).node }));
            }
        }
        debug_assert_eq!(stats.nodes, w.node_count());
        stats
    }

    /// Pushes deferred frees towards collection (for memory reports and tests).
    pub fn flush_reclamation(&self) {
        {
            let mut w = self.writer();
            let guard = self.domain.pin();
            self.release_retired(&mut w, &guard);
        }
        let guard = self.domain.pin();
        guard.flush();
    }
}

impl Drop for IndexShard {
    fn drop(&mut self) {
        // `&mut self`: no reader or writer is left; free the live tree directly.
        let mut stack = vec![self.root.0];
        while let Some(node) = stack.pop() {
            // SAFETY: every live node, shape and table is reachable exactly once from the
            // root and owned by the tree; retired ones belong to the reclamation scheme.
            unsafe {
                let node = Box::from_raw(node);
                let shape = Box::from_raw(node.shape.load(Ordering::Relaxed));
                if let Some(table) = OwnedTable::from_packed(shape.children.load(Ordering::Relaxed)) {
                    stack.extend(table.children().map(|(_, c)| (*c).node));
                }
            }
        }
        // SAFETY: the table was created with Box::into_raw and is owned by the index.
        drop(unsafe { Box::from_raw(self.ranks.load(Ordering::Relaxed)) });
    }
}

#[cfg(test)]
mod concurrency_tests;
#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(test)]
mod staging_tests;
#[cfg(test)]
mod test_chains;
#[cfg(test)]
mod tests;
