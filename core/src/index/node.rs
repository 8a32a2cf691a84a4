//! A node of the radix tree: a run of consecutive block positions on one chain, all held
//! by the same set of ranks.
//!
//! ```text
//!   Node ──run──▶ Arc<[BlockHash]>   (content hashes; shared with the node's split pieces)
//!    │ start: where this node's run begins in that array (immutable)
//!    └──shape──▶ Shape { len, holders: [u64 words], children ──▶ ChildTable }
//! ```
//!
//! The *shape* is everything a reader needs that can change: how many positions the node
//! spans, which ranks hold them, and where its children are. `len` and `children` change
//! only together (a split shortens the node and hands its children to the new tail), so
//! they live behind one pointer that a writer swaps as a whole and readers load once.
//! Holder bits change in place (one atomic RMW per rank bit); a shape swap copies them, so
//! a reader that still holds an old shape sees the holders as they were when it was
//! replaced: an older but consistent picture of the node.
//!
//! The hash array never changes after the node is published. A node only ever shrinks
//! (by a split that moves its tail into a new child), never grows and never merges, so a
//! writer-side reference `(node, offset)` taken when a block was stored stays resolvable:
//! if `offset >= len`, the block now lives in the child that continues the run, found
//! under the hash at position `len` of the original array (see `Tree::resolve`).
//!
//! Fields marked *writer-only* are read and written only under the index's writer lock;
//! they are atomics (`Relaxed`) so that `Node` is `Sync` without `unsafe impl`.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;

use super::child_table::PackedTable;
use crate::ids::BlockHash;

pub(crate) struct Shape {
    /// Positions this node spans (>= 1 except for the root).
    pub(crate) len: u32,
    /// The children table's packed pointer (`child_table`); null when the node has none.
    pub(crate) children: AtomicPtr<PackedTable>,
    /// Bit `r` set iff rank id `r` holds every position of this node.
    pub(crate) holders: Box<[AtomicU64]>,
}

impl Shape {
    pub(crate) fn new(len: u32, children: *mut PackedTable, holders: Box<[AtomicU64]>) -> Box<Shape> {
        Box::new(Shape { len, children: AtomicPtr::new(children), holders })
    }

    /// A copy of the holder words, widened to at least `words`.
    pub(crate) fn copy_holders(&self, words: usize) -> Box<[AtomicU64]> {
        let n = words.max(self.holders.len());
        (0..n).map(|w| AtomicU64::new(self.holders.get(w).map_or(0, |h| h.load(Ordering::Relaxed)))).collect()
    }

    pub(crate) fn holds(&self, rank: u32) -> bool {
        let (w, bit) = (rank as usize / 64, 1u64 << (rank % 64));
        self.holders.get(w).is_some_and(|h| h.load(Ordering::Relaxed) & bit != 0)
    }

    pub(crate) fn holder_count(&self) -> u32 {
        self.holders.iter().map(|h| h.load(Ordering::Relaxed).count_ones()).sum()
    }

    pub(crate) fn has_holders(&self) -> bool {
        self.holders.iter().any(|h| h.load(Ordering::Relaxed) != 0)
    }
}

pub(crate) fn empty_holders(words: usize) -> Box<[AtomicU64]> {
    (0..words).map(|_| AtomicU64::new(0)).collect()
}

pub(crate) struct Node {
    run: Arc<[BlockHash]>,
    start: u32,
    pub(crate) shape: AtomicPtr<Shape>,
    /// Writer-only: the node whose child table holds this node (null for the root).
    pub(crate) parent: AtomicPtr<Node>,
    /// Writer-only: set when the node is unlinked and retired.
    pub(crate) dead: AtomicBool,
}

impl Node {
    pub(crate) fn new(run: Arc<[BlockHash]>, start: u32, shape: Box<Shape>, parent: *mut Node) -> Box<Node> {
        Box::new(Node {
            run,
            start,
            shape: AtomicPtr::new(Box::into_raw(shape)),
            parent: AtomicPtr::new(parent),
            dead: AtomicBool::new(false),
        })
    }

    /// A node to be filled in by [`Node::init_run`] before it is published.
    pub(crate) fn unpublished(parent: *mut Node) -> Box<Node> {
        Box::new(Node {
            run: Arc::from(Vec::new()),
            start: 0,
            shape: AtomicPtr::new(std::ptr::null_mut()),
            parent: AtomicPtr::new(parent),
            dead: AtomicBool::new(false),
        })
    }

    /// Content hashes of the node's first `len` positions (`len` from a shape of this node).
    #[inline(always)]
    pub(crate) fn hashes(&self, len: u32) -> &[BlockHash] {
        let start = self.start as usize;
        &self.run[start..start + len as usize]
    }

    /// Content hash at `offset` of the run as it was when the node was created; valid for
    /// any offset below the node's original length.
    #[inline(always)]
    pub(crate) fn hash_at(&self, offset: u32) -> BlockHash {
        self.run[self.start as usize + offset as usize]
    }

    /// The run array and this node's start in it, for building a split piece.
    pub(crate) fn run(&self) -> (&Arc<[BlockHash]>, u32) {
        (&self.run, self.start)
    }

    /// Fills in a node from [`Node::unpublished`], before it is published.
    pub(crate) fn init_run(&mut self, run: Arc<[BlockHash]>, shape: Box<Shape>) {
        debug_assert!(self.shape.get_mut().is_null(), "init_run on a node that has a shape");
        self.run = run;
        self.start = 0;
        *self.shape.get_mut() = Box::into_raw(shape);
    }
}
