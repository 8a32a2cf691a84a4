//! A node of the radix tree: a run of consecutive block positions on one chain, all held
//! by the same set of ranks.
//!
//! ```text
//!   parent's child table slot ──▶ Shape { len, run, holders: [u64 words], children ──▶ ChildTable, node }
//!                                            │                                     (slots ──▶ child Shapes)
//!   Node ──shape──▶ (the same current Shape)  └─▶ the node's first hash in an Arc<[BlockHash]>
//!    │ run, start: the node's hashes (immutable; the array is shared with its split pieces)
//!    └ parent, dead: writer-only
//! ```
//!
//! The *shape* is everything a reader needs, and all it touches: how many positions the
//! node spans, a pointer to its hashes, which ranks hold them, and where its children are.
//! Child tables point at children's shapes, not nodes, so a lookup goes shape → table →
//! shape with one dependent cache miss per hop and never reads a `Node`. `len` and
//! `children` change only together (a split shortens the node and hands its children to
//! the new tail), so a writer builds a new shape and swaps it in as a whole, in the node
//! and in the parent's table slot, and readers load it once. Holder bits change in place
//! (one atomic RMW per rank bit); a shape swap copies them, so a reader that still holds
//! an old shape sees the holders as they were when it was replaced: an older but
//! consistent picture of the node.
//!
//! The `Node` is the writer's stable handle. The hash array never changes after the node
//! is published. A node only ever shrinks (by a split that moves its tail into a new
//! child), never grows and never merges, so a writer-side reference `(node, offset)` taken
//! when a block was stored stays resolvable: if `offset >= len`, the block now lives in
//! the child that continues the run, found under the hash at position `len` of the
//! original array (see `Tree::resolve`).
//!
//! Fields marked *writer-only* are read and written only under the index's writer lock;
//! they are atomics (`Relaxed`) so that `Node` is `Sync` without `unsafe impl`.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::child_table::PackedTable;
use crate::ids::BlockHash;

pub(crate) struct Shape {
    /// Positions this node spans (>= 1 except for the root).
    pub(crate) len: u32,
    /// The node's first hash in its run array (immutable; `len` hashes from here are valid).
    run: *const BlockHash,
    /// The children table's packed pointer (`child_table`); null when the node has none.
    /// Its slots point at the children's current shapes.
    pub(crate) children: AtomicPtr<PackedTable>,
    /// Bit `r` set iff rank id `r` holds every position of this node.
    pub(crate) holders: Box<[AtomicU64]>,
    /// Writer-only: the node this is a shape of (never changes).
    pub(crate) node: *mut Node,
}

// SAFETY: the raw pointers are to immutable memory (the run array) that lives as long as
// the node, which outlives every shape of it (a node is retired with or after its shapes,
// see `writer`), and to the node itself, which only the writer lock holder dereferences.
unsafe impl Send for Shape {}
// SAFETY: as above; everything mutable in a shape is atomic.
unsafe impl Sync for Shape {}

impl Shape {
    /// The first shape of `node`, spanning `len` positions of its run.
    ///
    /// # Safety
    /// `node` is a live node whose run is set and holds at least `len` positions from its
    /// start; the node outlives the shape.
    unsafe fn first(node: *mut Node, len: u32, children: *mut PackedTable, holders: Box<[AtomicU64]>) -> Box<Shape> {
        // SAFETY: per the contract.
        let node_ref = unsafe { &*node };
        debug_assert!(len as usize <= node_ref.run.len() - node_ref.start as usize);
        let run = node_ref.run_start();
        Box::new(Shape { len, run, children: AtomicPtr::new(children), holders, node })
    }

    /// A replacement shape for the same node: `len` at most the node's current length.
    pub(crate) fn reshaped(&self, len: u32, children: *mut PackedTable, holders: Box<[AtomicU64]>) -> Box<Shape> {
        debug_assert!(len <= self.len, "a node never grows");
        Box::new(Shape { len, run: self.run, children: AtomicPtr::new(children), holders, node: self.node })
    }

    /// Content hashes of the node's positions.
    #[inline(always)]
    pub(crate) fn hashes(&self) -> &[BlockHash] {
        // SAFETY: `run` points into the node's run array, immutable and alive as long as
        // the node, which outlives this shape; it holds at least `len` hashes from there
        // (a shape never spans more than the node's original length).
        unsafe { std::slice::from_raw_parts(self.run, self.len as usize) }
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
    /// The current shape (the one the parent's table slot names, too).
    pub(crate) shape: AtomicPtr<Shape>,
    /// Writer-only: the node whose child table holds this node (null for the root).
    pub(crate) parent: AtomicPtr<Node>,
    /// Writer-only: set when the node is unlinked and retired.
    pub(crate) dead: AtomicBool,
    /// Writer-only: the node's number in the writer's node table (`writer::Loc` names
    /// nodes by it).
    pub(crate) id: AtomicU32,
}

impl Node {
    /// A node for positions `start..start + len` of `run`, with its first shape; not yet
    /// linked anywhere (the caller publishes it with a `Release` store of its shape).
    pub(crate) fn new(
        run: Arc<[BlockHash]>,
        start: u32,
        len: u32,
        children: *mut PackedTable,
        holders: Box<[AtomicU64]>,
        parent: *mut Node,
    ) -> *mut Node {
        let node = Node::unpublished(parent);
        // SAFETY: a fresh node, not shared yet and not filled in.
        unsafe { Node::fill(node, run, start, len, children, holders) };
        node
    }

    /// A node to be filled in by [`Node::init_run`] before it is published.
    pub(crate) fn unpublished(parent: *mut Node) -> *mut Node {
        Box::into_raw(Box::new(Node {
            run: Arc::from(Vec::new()),
            start: 0,
            shape: AtomicPtr::new(std::ptr::null_mut()),
            parent: AtomicPtr::new(parent),
            dead: AtomicBool::new(false),
            id: AtomicU32::new(u32::MAX),
        }))
    }

    /// Fills in a node from [`Node::unpublished`]: `run` from its start, held by `holders`.
    ///
    /// # Safety
    /// `node` came from [`Node::unpublished`], is not published yet and not filled in.
    pub(crate) unsafe fn init_run(node: *mut Node, run: Arc<[BlockHash]>, holders: Box<[AtomicU64]>) {
        let len = run.len() as u32;
        // SAFETY: per the contract.
        unsafe { Node::fill(node, run, 0, len, std::ptr::null_mut(), holders) };
    }

    /// Sets an unpublished node's run (positions `start..start + len` of `run`) and builds
    /// its first shape.
    ///
    /// # Safety
    /// `node` came from [`Node::unpublished`], is not published yet and not filled in.
    unsafe fn fill(
        node: *mut Node,
        run: Arc<[BlockHash]>,
        start: u32,
        len: u32,
        children: *mut PackedTable,
        holders: Box<[AtomicU64]>,
    ) {
        // SAFETY: per the contract, nothing else reads or writes the node yet; its run is
        // set before its shape is built from it.
        unsafe {
            debug_assert!((*node).shape.get_mut().is_null(), "a node filled in twice");
            (*node).run = run;
            (*node).start = start;
            let shape = Shape::first(node, len, children, holders);
            *(*node).shape.get_mut() = Box::into_raw(shape);
        }
    }

    /// Where the node's hashes begin.
    fn run_start(&self) -> *const BlockHash {
        self.run[self.start as usize..].as_ptr()
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
}
