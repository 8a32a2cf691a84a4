//! Everything that changes the tree, run under the index's writer lock.
//!
//! Each rank keeps `engine hash -> Loc`, where a `Loc` is the node a block was placed in
//! and its offset there *at that time*. Nodes only shrink (a split moves the tail of a
//! node into a new child) and never merge, so a stale `Loc` is resolved by following the
//! continuation child (`resolve`), and rewritten when convenient.
//!
//! Holder sets are uniform per node, so changing which ranks hold part of a node first
//! *isolates* that part into a node of its own (at most two splits). Stores set holder
//! bits bottom-up along the path and a new chain is published with its holder already
//! set, so a lookup walking top-down never credits a rank with a deeper position than it
//! had either before or after the event. A node with no holders and no children is
//! unlinked and retired, then its parent is checked the same way: the tree holds only
//! what some rank holds, plus path nodes above held nodes.
//!
//! A rank may hold one position through several engine hashes (copies); the extra ones
//! are counted in `copies`, keyed by (rank, node, offset), and re-keyed when a split
//! moves them.

use std::collections::hash_map::Entry;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::block_map::BlockMap;
use super::child_table::{ChildTable, OwnedTable};
use super::node::{empty_holders, Node, Shape};
use super::prehashed::PrehashedMap;
use super::reclaim::Guard;
use super::EventCounters;
use crate::event::{KvEvent, KvEventData, StoredBlock};
use crate::ids::{EngineHash, RankKey};

/// A node pointer owned by the tree. Raw because nodes are shared with lock-free readers
/// and freed through the reclamation scheme.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct NodePtr(pub(crate) *mut Node);

// SAFETY: a NodePtr is only dereferenced under the writer lock (which serialises all
// mutation) or by pinned readers, and nodes are only freed through the reclamation scheme.
unsafe impl Send for NodePtr {}

/// The most entries a capacity hint reserves in one rank's map (a hint beyond it, say a
/// wrong unit, must not allocate gigabytes up front; the map still grows past it).
pub(crate) const MAX_RESERVED_BLOCKS: usize = 1 << 20;

/// Where a block was placed: a node, by its number in the writer's node table, and an
/// offset. Eight bytes, so that a rank's map slot (engine hash, `Loc`) is sixteen: these
/// maps ([`BlockMap`]) are most of the index's memory and of the cache misses of applying
/// events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    node: u32,
    offset: u32,
}

impl Loc {
    /// The value of an empty [`BlockMap`] slot (never read as a position).
    pub(crate) const NONE: Loc = Loc { node: u32::MAX, offset: 0 };

    #[cfg(test)]
    pub(crate) fn new(node: u32, offset: u32) -> Loc {
        Loc { node, offset }
    }
}

/// Events with at least this many blocks probe their rank-map slots ahead.
const TOUCH_AHEAD_MIN_BLOCKS: usize = 4;

/// Reads the home slot of every key of a multi-block event before the event is applied,
/// results unused. The map probes are where applying an event waits on memory (a rank's
/// map is too large for the cache), and the apply loop cannot overlap them: each block's
/// probe sits behind the tree walk of the one before. Here no probe depends on another, so the
/// processor keeps several cache misses in flight, and the apply loop then hits.
fn touch_ahead(entries: &BlockMap, keys: impl ExactSizeIterator<Item = EngineHash>) {
    if keys.len() < TOUCH_AHEAD_MIN_BLOCKS {
        return;
    }
    for key in keys {
        entries.touch(key);
    }
}

/// Positions `lo..=hi` of `node`.
#[derive(Clone, Copy, Debug)]
struct PositionRun {
    node: NodePtr,
    lo: u32,
    hi: u32,
}

pub(crate) struct RankState {
    pub(crate) key: RankKey,
    pub(crate) entries: BlockMap,
    last_event_id: Option<u64>,
}

pub(crate) struct WriterState {
    pub(crate) root: NodePtr,
    pub(crate) rank_ids: PrehashedMap<RankKey, u32>,
    pub(crate) ranks: Vec<Option<RankState>>,
    pub(crate) free_ids: Arc<Mutex<Vec<u32>>>,
    /// Holder words every new shape gets (covers every rank id handed out).
    pub(crate) words: usize,
    copies: PrehashedMap<(u32, NodePtr, u32), u32>,
    pub(crate) counters: EventCounters,
    /// Live nodes by number (`Loc::node`); a number is reused once its node is pruned
    /// (no `Loc` names a pruned node: its blocks are held by no rank).
    node_table: Vec<NodePtr>,
    free_node_numbers: Vec<u32>,
    /// Reused per event: positions matched by a store.
    scratch: Vec<Loc>,
    /// Reused per event: the stretches of positions a removal drops.
    runs: Vec<PositionRun>,
    /// Rank ids replaced by a promoted staged rank: no longer live in the published
    /// table, but lookups that loaded the previous table may still walk their bits, so
    /// they are released only once the flag (set by a retired marker's drop, i.e. after
    /// the grace period) is up.
    pub(crate) retiring: Vec<(u32, Arc<AtomicBool>)>,
}

#[inline(always)]
fn shape<'a>(node: NodePtr) -> &'a Shape {
    // SAFETY: the node is alive (reachable from the tree or held by a Loc, see the module
    // docs) and only the writer lock holder swaps shapes; Relaxed suffices under the lock.
    unsafe { &*(*node.0).shape.load(Ordering::Relaxed) }
}

#[inline(always)]
fn node_ref<'a>(node: NodePtr) -> &'a Node {
    // SAFETY: as for `shape`.
    unsafe { &*node.0 }
}

/// The node a child-table slot's shape belongs to.
#[inline(always)]
fn node_of(shape: *mut Shape) -> NodePtr {
    // SAFETY: a shape found in a linked table under the writer lock is live.
    NodePtr(unsafe { (*shape).node })
}

/// `node`'s current shape pointer, to store in a child table.
#[inline(always)]
fn shape_ptr(node: NodePtr) -> *mut Shape {
    node_ref(node).shape.load(Ordering::Relaxed)
}

fn table<'a>(shape: &Shape) -> Option<&'a ChildTable> {
    // SAFETY: a non-null table pointer in a live shape is a live table (tables are
    // retired only after being unlinked from the node's current shape).
    unsafe { ChildTable::from_packed(shape.children.load(Ordering::Relaxed)) }
}

/// Retires a table that was just unlinked from its node's current shape.
///
/// # Safety
/// `packed` is a live table's packed pointer, no longer reachable for readers that pin
/// from now on, retired once.
unsafe fn retire_table(guard: &Guard, packed: *mut super::child_table::PackedTable) {
    // SAFETY: per the contract; `free_packed` frees exactly such a pointer.
    unsafe { guard.retire_with(packed.cast(), OwnedTable::free_packed) };
}

impl WriterState {
    pub(crate) fn new(root: *mut Node) -> Self {
        WriterState {
            root: NodePtr(root),
            rank_ids: PrehashedMap::default(),
            ranks: Vec::new(),
            free_ids: Arc::new(Mutex::new(Vec::new())),
            words: 1,
            copies: PrehashedMap::default(),
            counters: EventCounters::default(),
            node_table: Vec::new(),
            free_node_numbers: Vec::new(),
            scratch: Vec::new(),
            runs: Vec::new(),
            retiring: Vec::new(),
        }
    }

    pub(crate) fn new_rank(key: RankKey) -> RankState {
        RankState { key, entries: BlockMap::default(), last_event_id: None }
    }

    /// Makes room for `blocks` entries (at most [`MAX_RESERVED_BLOCKS`]) in rank id
    /// `rank`'s engine-hash map.
    pub(crate) fn reserve_entries(&mut self, rank: u32, blocks: usize) {
        if let Some(state) = self.ranks.get_mut(rank as usize).and_then(Option::as_mut) {
            let blocks = blocks.min(MAX_RESERVED_BLOCKS);
            state.entries.reserve(blocks.saturating_sub(state.entries.len()));
        }
    }

    /// Live nodes, the root excepted (each has a number).
    pub(crate) fn node_count(&self) -> usize {
        self.node_table.len() - self.free_node_numbers.len()
    }

    /// Gives a new node its number in the node table, and returns it.
    fn number(&mut self, node: NodePtr) -> u32 {
        let number = match self.free_node_numbers.pop() {
            Some(n) => {
                self.node_table[n as usize] = node;
                n
            }
            None => {
                self.node_table.push(node);
                (self.node_table.len() - 1) as u32
            }
        };
        // Relaxed: writer-only field.
        node_ref(node).id.store(number, Ordering::Relaxed);
        number
    }

    /// A `Loc` for position `offset` of `node` (a numbered node).
    #[inline(always)]
    fn loc(node: NodePtr, offset: u32) -> Loc {
        // Relaxed: writer-only field.
        Loc { node: node_ref(node).id.load(Ordering::Relaxed), offset }
    }

    /// Current (node, offset) of a block placed at `loc`. `None` only if the tree's
    /// invariants were broken (never expected; the block is then treated as unknown).
    pub(crate) fn resolve(&self, loc: Loc) -> Option<(NodePtr, u32)> {
        let (mut node, mut offset) = (*self.node_table.get(loc.node as usize)?, loc.offset);
        loop {
            let s = shape(node);
            if offset < s.len {
                return Some((node, offset));
            }
            let key = node_ref(node).hash_at(s.len);
            node = node_of(table(s)?.get(key.0)?);
            offset -= s.len;
        }
    }

    /// Publishes `new` as `node`'s shape, in the node and in its parent's table slot, and
    /// retires the old one.
    fn swap_shape(&self, guard: &Guard, node: NodePtr, new: Box<Shape>) {
        let new = Box::into_raw(new);
        let n = node_ref(node);
        // Release: lookups load the root's shape from here (other nodes' only from slots).
        let old = n.shape.swap(new, Ordering::Release);
        if node != self.root {
            let parent = NodePtr(n.parent.load(Ordering::Relaxed));
            // Release (in `replace`): a lookup that loads the slot sees the new shape, its
            // table and holder words fully initialised.
            let replaced = table(shape(parent)).is_some_and(|t| t.replace(n.hash_at(0).0, new));
            debug_assert!(replaced, "a linked node missing from its parent's table");
        }
        // SAFETY: `old` is no longer reachable from the node or its parent's table (older
        // tables that still name it are retired, so only pinned readers hold it); retired
        // once, here.
        unsafe { guard.retire(old) };
    }

    /// Splits `node` at `at` (0 < at < len): the node keeps positions `..at`, a new child
    /// takes `at..` with the same holders and all of the node's children. Returns the tail.
    fn split(&mut self, guard: &Guard, node: NodePtr, at: u32) -> NodePtr {
        let n = node_ref(node);
        let old = shape(node);
        debug_assert!(at > 0 && at < old.len);
        let (run, start) = n.run();
        let moved_children = old.children.load(Ordering::Relaxed);
        let tail_holders = old.copy_holders(self.words);
        let tail = NodePtr(Node::new(run.clone(), start + at, old.len - at, moved_children, tail_holders, node.0));
        self.number(tail);
        if let Some(children) = table(old) {
            for (_, child) in children.children() {
                // Relaxed: writer-only field.
                node_ref(node_of(child)).parent.store(tail.0, Ordering::Relaxed);
            }
        }
        let head_table = ChildTable::with_capacity(2);
        head_table.insert(n.hash_at(at).0, shape_ptr(tail));
        let head_shape = old.reshaped(at, head_table.into_packed(), old.copy_holders(self.words));
        // Release (in swap_shape): a reader that loads the new shape sees the new table,
        // the tail node and its shape fully initialised.
        self.swap_shape(guard, node, head_shape);
        if !self.copies.is_empty() {
            let moved: Vec<_> = self.copies.keys().filter(|(_, n, off)| *n == node && *off >= at).copied().collect();
            for key in moved {
                if let Some(count) = self.copies.remove(&key) {
                    self.copies.insert((key.0, tail, key.2 - at), count);
                }
            }
        }
        tail
    }

    /// Makes positions `offset..offset + count` of `node` a node of their own.
    fn isolate(&mut self, guard: &Guard, node: NodePtr, offset: u32, count: u32) -> NodePtr {
        let mut node = node;
        if offset > 0 {
            node = self.split(guard, node, offset);
        }
        if count < shape(node).len {
            self.split(guard, node, count);
        }
        node
    }

    fn set_holder(&self, guard: &Guard, node: NodePtr, rank: u32) {
        let (word, bit) = (rank as usize / 64, 1u64 << (rank % 64));
        let s = shape(node);
        if word >= s.holders.len() {
            let wider = s.reshaped(s.len, s.children.load(Ordering::Relaxed), s.copy_holders(self.words));
            self.swap_shape(guard, node, wider);
        }
        // Release: a reader that sees this bit also sees bits set earlier (deeper nodes).
        shape(node).holders[word].fetch_or(bit, Ordering::Release);
    }

    fn clear_holder(&self, node: NodePtr, rank: u32) {
        let (word, bit) = (rank as usize / 64, 1u64 << (rank % 64));
        if let Some(h) = shape(node).holders.get(word) {
            // Release: orders this removal after the removals the same event made earlier.
            h.fetch_and(!bit, Ordering::Release);
        }
    }

    fn insert_child(&self, guard: &Guard, parent: NodePtr, key: u64, child: NodePtr) {
        let s = shape(parent);
        let current = s.children.load(Ordering::Relaxed);
        match table(s) {
            None => {
                let t = ChildTable::with_capacity(2);
                t.insert(key, shape_ptr(child));
                // Release: publishes the table and the child.
                s.children.store(t.into_packed(), Ordering::Release);
            }
            Some(t) if t.needs_rebuild() => {
                let rebuilt = t.rebuilt();
                rebuilt.insert(key, shape_ptr(child));
                // Release: publishes the rebuilt table and the child.
                s.children.store(rebuilt.into_packed(), Ordering::Release);
                // SAFETY: the old table is unlinked from the current shape. Older shapes
                // retired earlier may still name it, but only pinned readers hold those.
                unsafe { retire_table(guard, current) };
            }
            Some(t) => t.insert(key, shape_ptr(child)),
        }
    }

    /// Unlinks and retires nodes from `node` upwards while they hold nothing and have no
    /// children.
    fn prune(&mut self, guard: &Guard, mut node: NodePtr) {
        while node != self.root && !node_ref(node).dead.load(Ordering::Relaxed) {
            let s = shape(node);
            if s.has_holders() || table(s).is_some_and(|t| t.live() > 0) {
                return;
            }
            let n = node_ref(node);
            let parent = NodePtr(n.parent.load(Ordering::Relaxed));
            let ps = shape(parent);
            if let Some(t) = table(ps) {
                t.remove(n.hash_at(0).0);
                if t.live() == 0 {
                    let old = ps.children.swap(std::ptr::null_mut(), Ordering::Release);
                    // SAFETY: unlinked from the parent's current shape; retired once.
                    unsafe { retire_table(guard, old) };
                }
            }
            n.dead.store(true, Ordering::Relaxed);
            // Relaxed: writer-only field. No `Loc` names the node (it holds nothing).
            self.free_node_numbers.push(n.id.load(Ordering::Relaxed));
            let own_table = s.children.load(Ordering::Relaxed);
            // SAFETY: the node, its shape and its (empty) table are now unreachable for
            // readers that pin from here on; each is retired exactly once.
            unsafe {
                if !own_table.is_null() {
                    retire_table(guard, own_table);
                }
                guard.retire(n.shape.load(Ordering::Relaxed));
                guard.retire(node.0);
                guard.note_retired_bytes(s.len as usize * std::mem::size_of::<crate::ids::BlockHash>());
            }
            node = parent;
        }
    }

    pub(crate) fn apply(&mut self, guard: &Guard, event: &KvEvent) {
        let Some(&rank) = self.rank_ids.get(&event.rank) else {
            self.counters.unknown_rank += 1;
            return;
        };
        let Some(state) = self.ranks[rank as usize].as_mut() else {
            self.counters.unknown_rank += 1;
            return;
        };
        if state.last_event_id.is_some_and(|last| event.event_id <= last) {
            self.counters.stale_event += 1;
            return;
        }
        state.last_event_id = Some(event.event_id);
        self.apply_to(guard, rank, &event.data);
    }

    /// Applies `data` to rank id `rank` (registered or staged), with no event-id check.
    pub(crate) fn apply_to(&mut self, guard: &Guard, rank: u32, data: &KvEventData) {
        let Some(state) = self.ranks.get_mut(rank as usize).and_then(Option::as_mut) else {
            self.counters.unknown_rank += 1;
            return;
        };
        self.counters.events_applied += 1;
        // The entries map is taken out for the event so the tree methods can borrow self.
        let mut entries = std::mem::take(&mut state.entries);
        match data {
            KvEventData::Stored { parent, blocks } => self.store(guard, rank, &mut entries, *parent, blocks),
            KvEventData::Removed { blocks } => self.remove(guard, rank, &mut entries, blocks),
            KvEventData::Cleared => self.clear(guard, rank, &mut entries),
        }
        if let Some(state) = self.ranks[rank as usize].as_mut() {
            state.entries = entries;
        }
    }

    fn store(
        &mut self,
        guard: &Guard,
        rank: u32,
        entries: &mut BlockMap,
        parent: Option<EngineHash>,
        blocks: &[StoredBlock],
    ) {
        let (mut node, mut pos) = match parent {
            None => (self.root, 0),
            Some(p) => match entries.get(p).and_then(|loc| self.resolve(loc)) {
                Some((node, offset)) => (node, offset + 1),
                None => {
                    self.counters.unknown_parent += 1;
                    return;
                }
            },
        };
        let mut matched = std::mem::take(&mut self.scratch);
        matched.clear();
        touch_ahead(entries, blocks.iter().map(|b| b.engine_hash));
        let mut i = 0;
        while i < blocks.len() {
            let block = blocks[i];
            // One map probe per block: a held engine hash is a duplicate, a vacant slot is
            // filled below once the block's place in the tree is known (nothing else
            // enters the map in between).
            let slot = match entries.probe(block.engine_hash) {
                Ok(held) => {
                    self.counters.duplicate_store += 1;
                    if let Some((n, off)) = self.resolve(held) {
                        (node, pos) = (n, off + 1);
                    }
                    i += 1;
                    continue;
                }
                Err(slot) => slot,
            };
            if pos < shape(node).len && node_ref(node).hash_at(pos) != block.content_hash {
                // The chain leaves this node mid-run: cut it so the new branch can hang here.
                self.split(guard, node, pos);
            }
            if pos == shape(node).len {
                if let Some(child) = table(shape(node)).and_then(|t| t.get(block.content_hash.0)) {
                    (node, pos) = (node_of(child), 0);
                }
            }
            if pos < shape(node).len {
                // The position exists (its hash matched, or it is a child's first one).
                let loc = Self::loc(node, pos);
                entries.fill(slot, loc);
                matched.push(loc);
                pos += 1;
                i += 1;
                continue;
            }
            // Nothing here yet: the rest of the chain (up to a block the rank already
            // holds) becomes one new node, published with this rank as its holder.
            let fresh = NodePtr(Node::unpublished(node.0));
            let number = self.number(fresh);
            entries.fill(slot, Loc { node: number, offset: 0 });
            let mut contents = vec![block.content_hash];
            let mut j = i + 1;
            while j < blocks.len() {
                if !entries.insert_new(blocks[j].engine_hash, Loc { node: number, offset: contents.len() as u32 }) {
                    break;
                }
                contents.push(blocks[j].content_hash);
                j += 1;
            }
            let count = contents.len() as u32;
            let holders = empty_holders(self.words);
            holders[rank as usize / 64].store(1 << (rank % 64), Ordering::Relaxed);
            // SAFETY: from `unpublished` just above, filled in once, published only below.
            unsafe { Node::init_run(fresh.0, Arc::from(contents), holders) };
            self.insert_child(guard, node, block.content_hash.0, fresh);
            self.counters.blocks_stored += count as u64;
            (node, pos) = (fresh, count);
            i = j;
        }
        // Existing positions the rank now holds: set its bit bottom-up, one isolated
        // piece per stretch of consecutive positions in one node.
        let mut k = matched.len();
        while k > 0 {
            k -= 1;
            let Some((n, hi)) = self.resolve(matched[k]) else {
                continue;
            };
            self.counters.blocks_stored += 1;
            if shape(n).holds(rank) {
                *self.copies.entry((rank, n, hi)).or_insert(0) += 1;
                continue;
            }
            let mut lo = hi;
            while k > 0 {
                match self.resolve(matched[k - 1]) {
                    Some((n2, off2)) if n2 == n && off2 + 1 == lo => {
                        lo = off2;
                        k -= 1;
                        self.counters.blocks_stored += 1;
                    }
                    _ => break,
                }
            }
            let piece = self.isolate(guard, n, lo, hi - lo + 1);
            self.set_holder(guard, piece, rank);
        }
        self.scratch = matched;
    }

    fn remove(&mut self, guard: &Guard, rank: u32, entries: &mut BlockMap, blocks: &[EngineHash]) {
        let mut runs = std::mem::take(&mut self.runs);
        runs.clear();
        touch_ahead(entries, blocks.iter().copied());
        for hash in blocks {
            let Some(loc) = entries.remove(*hash) else {
                self.counters.unknown_remove += 1;
                continue;
            };
            self.counters.blocks_removed += 1;
            let Some((node, offset)) = self.resolve(loc) else { continue };
            // Copies are rare: skip hashing the key when there are none at all.
            if !self.copies.is_empty() {
                if let Entry::Occupied(mut extra) = self.copies.entry((rank, node, offset)) {
                    *extra.get_mut() -= 1;
                    if *extra.get() == 0 {
                        extra.remove();
                    }
                    continue;
                }
            }
            // An evicted chain comes in chain order, one way or the other: it grows one run.
            match runs.last_mut() {
                Some(run) if run.node == node && offset + 1 == run.lo => run.lo = offset,
                Some(run) if run.node == node && offset == run.hi + 1 => run.hi = offset,
                _ => runs.push(PositionRun { node, lo: offset, hi: offset }),
            }
        }
        // One cut per maximal stretch of consecutive positions in a node (runs of a node
        // that touch are joined), highest offsets first so the node keeps its lower part
        // and the runs still to come keep their offsets. Sorting runs, not blocks: an
        // eviction is usually one run.
        if runs.len() > 1 {
            runs.sort_unstable_by_key(|r| (r.node.0 as usize, std::cmp::Reverse(r.hi)));
        }
        let mut i = 0;
        while i < runs.len() {
            let PositionRun { node, mut lo, hi } = runs[i];
            i += 1;
            while i < runs.len() && runs[i].node == node && runs[i].hi + 1 == lo {
                lo = runs[i].lo;
                i += 1;
            }
            self.drop_positions(guard, rank, node, lo, hi - lo + 1);
        }
        self.runs = runs;
    }

    /// `rank` stops holding positions `offset..offset + count` of `node`.
    fn drop_positions(&mut self, guard: &Guard, rank: u32, node: NodePtr, offset: u32, count: u32) {
        let s = shape(node);
        let sole_holder = s.holder_count() == 1 && s.holds(rank);
        let childless = table(s).is_none_or(|t| t.live() == 0);
        if sole_holder && childless && offset > 0 && offset + count == s.len {
            // The only holder evicts the node's tail: shorten the node, no new piece.
            let shorter = s.reshaped(offset, s.children.load(Ordering::Relaxed), s.copy_holders(self.words));
            self.swap_shape(guard, node, shorter);
            return;
        }
        let piece = self.isolate(guard, node, offset, count);
        self.clear_holder(piece, rank);
        self.prune(guard, piece);
    }

    fn clear(&mut self, guard: &Guard, rank: u32, entries: &mut BlockMap) {
        let mut nodes: HashSet<NodePtr, super::prehashed::Prehashed> = HashSet::default();
        for (_, loc) in entries.drain() {
            if let Some((node, _)) = self.resolve(loc) {
                nodes.insert(node);
            }
        }
        // Every position the rank holds has an entry, so its bit can go from whole nodes.
        for &node in &nodes {
            self.clear_holder(node, rank);
        }
        for node in nodes {
            self.prune(guard, node);
        }
        self.copies.retain(|(r, _, _), _| *r != rank);
    }

    /// Drops every block of `rank` (bits cleared, dead nodes retired) and forgets it.
    pub(crate) fn release_rank(&mut self, guard: &Guard, rank: u32) {
        if let Some(mut state) = self.ranks[rank as usize].take() {
            self.clear(guard, rank, &mut state.entries);
        }
    }
}
