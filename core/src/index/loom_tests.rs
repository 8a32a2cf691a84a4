//! Loom model checks of the index's lock-free protocols. Built only with `--cfg loom`:
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" cargo test -p kvroute-core --release --lib loom_tests
//! ```
//!
//! What runs for real: under `--cfg loom` the graveyard stack (`reclaim::graveyard`) and
//! the child table take their atomics (the graveyard also its link cell) from loom, so
//! [`graveyard_pushes_and_emptiers_race`] and [`child_table_pairs_each_child_with_its_key`]
//! drive the real code. The rest of the index stays on std atomics: every shared node,
//! shape, child-table and rank-table pointer is loaded through seize's `Guard::protect`,
//! which takes a std `AtomicPtr` and whose thread registry cannot run under loom (loom runs
//! a model's threads as coroutines on one OS thread). So the tests of publication through
//! those pointers ([`split_publishes_shape_table_and_tail`],
//! [`insert_child_publishes_new_and_rebuilt_tables`], [`rank_table_snapshot_is_whole`]) are
//! minimal models of the pointer ([`Guarded`], standing for the writer's `Release`
//! store/swap and the reader's `Acquire` `Guard::load`), while the values they publish are
//! built and read by the real code (`Shape::reshaped`, `Node::new`, `ChildTable`, `RankTable::new`,
//! the lookup's `common_prefix` and `ScoreSink::emit`).
//!
//! Loom checks plain memory only through its own `UnsafeCell`, so the models keep each
//! published value in one and a test item keeps its contents in one; a read that no
//! `Release`/`Acquire` pair orders after the write is a "causality violation" panic. Atomics
//! are checked by value: loom lets a `Relaxed` load return any store coherence allows.
//!
//! Readers run on threads spawned after the writers', never on the main thread before it
//! joins: loom's partial-order reduction remembers only the last access to each atomic, so
//! when a main-thread reader ran first, a writer that loads a slot before storing it hid the
//! race, and a model was explored in a single execution.
//!
//! Every other test of the crate builds loom atomics outside a loom model in a `--cfg loom`
//! build (the index's graveyard and child tables), which panics: run only `loom_tests` there.
//!
//! Loom's exploration of the graveyard model is bounded at [`GRAVEYARD_PREEMPTIONS`]
//! preemptions per execution (about 10 s; unbounded it took 170 s and 2.4 M executions and
//! passed); the other models are explored without a bound in well under a second.
//! `LOOM_MAX_PREEMPTIONS` overrides both.

use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicPtr;
use loom::sync::Arc;
use loom::thread;

use super::child_table::{home, ChildTable, OwnedTable};
use super::lookup::{common_prefix, ScoreSink};
use super::node::{empty_holders, Node, Shape};
use super::rank_table::RankTable;
use super::reclaim::graveyard::{Grave, Graveyard};
use crate::ids::{BlockHash, RankKey};

/// Runs `model` under every interleaving loom explores, with at most `preemptions` thread
/// preemptions per execution (`None`: unbounded) unless `LOOM_MAX_PREEMPTIONS` says
/// otherwise.
fn check(preemptions: Option<usize>, model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemptions;
    }
    builder.check(model);
}

// ---------------------------------------------------------------------------------------
// 1. The graveyard: real code.

const ITEMS: usize = 2;

/// Preemption bound of [`graveyard_pushes_and_emptiers_race`] (see the module docs).
const GRAVEYARD_PREEMPTIONS: usize = 5;

fn payload_of(id: usize) -> usize {
    0x5eed + id
}

/// A buried value that counts its drops.
struct Item {
    id: usize,
    /// Written by the thread that pushes the item, after making it; read by whichever
    /// thread drops it. Loom flags the read unless the push's `Release` CAS and the
    /// emptier's `Acquire` swap order it after the write.
    payload: UnsafeCell<usize>,
    /// Drops per item id. Plain std atomics: bookkeeping outside the model, read after
    /// the threads are joined (loom runs a model's threads on one OS thread).
    drops: std::sync::Arc<[AtomicUsize; ITEMS]>,
}

impl Drop for Item {
    fn drop(&mut self) {
        // SAFETY: the item is being dropped: nothing else refers to it.
        let payload = self.payload.with(|p| unsafe { *p });
        assert_eq!(payload, payload_of(self.id), "item {} dropped without its contents", self.id);
        self.drops[self.id].fetch_add(1, Ordering::Relaxed);
    }
}

/// What `reclaim::bury` does for a batch whose grace period is over: one push.
fn bury(yard: &Graveyard<Item>, id: usize, drops: &std::sync::Arc<[AtomicUsize; ITEMS]>) {
    let item = Item { id, payload: UnsafeCell::new(0), drops: drops.clone() };
    // SAFETY: the item is not shared yet.
    item.payload.with_mut(|p| unsafe { *p = payload_of(id) });
    // SAFETY: a fresh leaked box, pushed once and not touched again here; an `Item` may be
    // dropped on any thread.
    unsafe { yard.push(Box::into_raw(Grave::new(item))) };
}

fn drop_counts(drops: &[AtomicUsize; ITEMS]) -> [usize; ITEMS] {
    std::array::from_fn(|i| drops[i].load(Ordering::Relaxed))
}

/// Two pushes race two emptiers: a reader ending a grace period (one push), a writer whose
/// guard drop buried a batch and then frees the graveyard, and a `flush_reclamation` on
/// another thread (an emptier racing both). No item may be dropped twice or before its
/// contents are visible (the `Item` drop asserts), and once the threads are joined one
/// `free_all` drops every item still buried: nothing is lost.
#[test]
fn graveyard_pushes_and_emptiers_race() {
    check(Some(GRAVEYARD_PREEMPTIONS), || {
        let drops = std::sync::Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let yard = Arc::new(Graveyard::<Item>::default());
        let reader = {
            let (yard, drops) = (yard.clone(), drops.clone());
            thread::spawn(move || bury(&yard, 0, &drops))
        };
        let writer = {
            let (yard, drops) = (yard.clone(), drops.clone());
            thread::spawn(move || {
                bury(&yard, 1, &drops);
                yard.free_all();
            })
        };
        let flusher = {
            let yard = yard.clone();
            thread::spawn(move || yard.free_all())
        };
        for thread in [reader, writer, flusher] {
            thread.join().unwrap();
        }
        let counts = drop_counts(&drops);
        assert!(counts.iter().all(|&n| n <= 1), "an item was dropped twice: {counts:?}");
        yard.free_all();
        assert_eq!(drop_counts(&drops), [1; ITEMS], "free_all after the pushes left an item behind");
        drop(yard);
        assert_eq!(drop_counts(&drops), [1; ITEMS], "dropping the graveyard dropped an item again");
    });
}

// ---------------------------------------------------------------------------------------
// 2. Child-table slots: real code.

/// A node pointer to hand to a model thread (a leaf: one position, no children).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ptr(*mut Node);

// SAFETY: the nodes are read by the threads of one model execution and freed by its main
// thread after joining them.
unsafe impl Send for Ptr {}

impl Ptr {
    /// A one-position node holding `hash` (run `[hash]`, no holders, no children).
    fn leaf(hash: u64) -> Ptr {
        let run = std::sync::Arc::from(vec![BlockHash(hash)]);
        Ptr(Node::new(run, 0, 1, ptr::null_mut(), empty_holders(1), ptr::null_mut()))
    }

    /// The node's shape: what a child table holds.
    fn get(self) -> *mut Shape {
        // SAFETY: the node is alive until `free`; its shape is set by `Node::new`.
        unsafe { (*self.0).shape.load(Ordering::Relaxed) }
    }

    /// # Safety
    /// A node from [`Ptr::leaf`] or [`Node::new`] with a childless shape, freed once, that
    /// no thread uses any more.
    unsafe fn free(self) {
        // SAFETY: per the contract, the node and its shape are boxes owned by the caller.
        unsafe {
            let node = Box::from_raw(self.0);
            drop(Box::from_raw(node.shape.load(Ordering::Relaxed)));
        }
    }
}

/// Stand-ins for the contents of the leaves a child-table test inserts. A `Node` is std
/// memory, which loom cannot check, so the writer also writes a leaf's witness cell right
/// before inserting the leaf, as it initialises the node before publishing it, and the
/// reader reads the witness of each leaf it finds.
struct Witnesses([UnsafeCell<u64>; 3]);

impl Witnesses {
    fn new() -> Self {
        Witnesses(std::array::from_fn(|_| UnsafeCell::new(0)))
    }

    /// Before leaf `i` is published, by the only thread that writes it.
    fn init(&self, i: usize, key: u64) {
        // SAFETY: written once, by the writer, before the leaf is published.
        self.0[i].with_mut(|p| unsafe { *p = key });
    }

    /// After leaf `i` was found: its "contents" must be visible.
    fn check(&self, i: usize, key: u64) {
        // SAFETY: the write happens before the publication the caller found the leaf through
        // (loom panics otherwise, which is the point).
        let seen = self.0[i].with(|p| unsafe { *p });
        assert_eq!(seen, key, "leaf {i} found before its contents were written");
    }
}

/// The real `ChildTable` with a writer inserting, removing and re-inserting (the tombstone
/// reuse) while a reader probes as `lookup::child_of` does and lists children as `rebuilt`
/// does. `ka` and `kb` share a home slot, so `kb` is found only by probing past `ka`'s slot,
/// live, tombstoned or re-used. Checks the module invariants: a child pointer a reader
/// loads is always paired with the key it was inserted under (the key's `Relaxed` store is
/// published by the child's `Release` store), `get` returns nothing but that child, a found
/// child's contents are visible (`get`'s `Acquire`), and a tombstone never hides the entries
/// behind it.
#[test]
fn child_table_pairs_each_child_with_its_key() {
    const SLOTS: usize = 4;
    let shift = 64 - SLOTS.trailing_zeros();
    let ka = 1;
    let kb = (2..).find(|&k| home(k, shift) == home(ka, shift)).unwrap();
    check(None, move || {
        let table = Arc::new(ChildTable::with_capacity(SLOTS));
        let witnesses = Arc::new(Witnesses::new());
        let leaves = [(Ptr::leaf(ka), ka), (Ptr::leaf(ka), ka), (Ptr::leaf(kb), kb)];
        let [(a, _), (a2, _), (b, _)] = leaves;
        let writer = {
            let (table, witnesses) = (table.clone(), witnesses.clone());
            thread::spawn(move || {
                for (i, remove_first) in [(0, false), (2, false), (1, true)] {
                    let (leaf, key) = leaves[i];
                    if remove_first {
                        table.remove(key);
                    }
                    witnesses.init(i, key);
                    table.insert(key, leaf.get());
                }
            })
        };
        let reader = {
            let (table, witnesses) = (table.clone(), witnesses.clone());
            thread::spawn(move || {
                let index = |child: *mut Shape| leaves.iter().position(|(leaf, _)| leaf.get() == child);
                let got_b = table.get(kb);
                assert!(got_b.is_none() || got_b == Some(b.get()), "get(kb) returned {got_b:?}");
                let got_a = table.get(ka);
                let a_ok = got_a.is_none() || got_a == Some(a.get()) || got_a == Some(a2.get());
                assert!(a_ok, "get(ka) returned {got_a:?}");
                for child in [got_a, got_b].into_iter().flatten() {
                    let i = index(child).unwrap();
                    witnesses.check(i, leaves[i].1);
                }
                for (key, child) in table.children() {
                    let i = index(child).unwrap_or_else(|| panic!("children() listed {child:?}"));
                    assert_eq!(key, leaves[i].1, "a child was listed under the wrong key");
                    witnesses.check(i, key);
                }
            })
        };
        writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!((table.get(ka), table.get(kb)), (Some(a2.get()), Some(b.get())));
        assert_eq!(table.live(), 2);
        // SAFETY: the writer is joined and the reader is done; each leaf is freed once.
        unsafe { [a, a2, b].into_iter().for_each(|n| n.free()) };
    });
}

// ---------------------------------------------------------------------------------------
// 3. Publication through a seize-guarded pointer: a model of the pointer, real values.

/// Model of a shared pointer the index loads through seize: `Node::shape`,
/// `Shape::children` and `KvIndex::ranks`. The real ones are std `AtomicPtr`s loaded with
/// `Guard::load` (seize's `protect`: an `Acquire` load plus seize's fence), which cannot
/// run under loom, so this stands in for them with the same orderings: `publish` is the
/// writer's `Release` swap (`WriterState::swap_shape`, `KvIndex::publish_ranks`; the
/// `Release` store of `WriterState::insert_child` is the same edge) and `read` is the
/// reader's `Acquire` load. The value sits in a loom `UnsafeCell`, so loom checks the
/// reader's accesses to its plain fields against their initialisation. Replaced values are
/// returned to the caller, who frees them once every reader is done: the grace period
/// (seize's part, which these models do not check).
struct Guarded<T> {
    ptr: AtomicPtr<UnsafeCell<T>>,
}

impl<T> Guarded<T> {
    fn new(value: Option<T>) -> Self {
        Guarded { ptr: AtomicPtr::new(value.map_or(ptr::null_mut(), |v| Box::into_raw(Box::new(UnsafeCell::new(v))))) }
    }

    /// Publishes `value`; returns the value it replaced, now retired: the caller drops it
    /// only after joining every reader (the grace period).
    fn publish(&self, value: T) -> Option<Box<UnsafeCell<T>>> {
        // Release: pairs with the Acquire load in `read`, as the real publication pairs
        // with `Guard::load`.
        let old = self.ptr.swap(Box::into_raw(Box::new(UnsafeCell::new(value))), Ordering::Release);
        // SAFETY: `old` is null or a box from `new`/`publish`, unlinked just now by the swap.
        (!old.is_null()).then(|| unsafe { Box::from_raw(old) })
    }

    /// Loads the pointer once and reads the value it names, as a pinned lookup does.
    fn read<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        // Acquire: pairs with the Release swap in `publish` (`Guard::load` in the index).
        let p = self.ptr.load(Ordering::Acquire);
        if p.is_null() {
            return f(None);
        }
        // SAFETY: published values are freed only after every reader is done (`publish`),
        // and nothing writes a value after publishing it.
        unsafe { (*p).with(|value| f(Some(&*value))) }
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        let p = self.ptr.load(Ordering::Relaxed);
        if !p.is_null() {
            // SAFETY: `&mut self`: no reader is left; the box came from `new`/`publish`.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

/// Frees the children below `shape` (a table of leaves), once no thread uses them.
///
/// # Safety
/// The table and its children are owned by the caller and freed once.
unsafe fn free_children(shape: &Shape) {
    // SAFETY: per the contract.
    if let Some(table) = unsafe { OwnedTable::from_packed(shape.children.load(Ordering::Relaxed)) } {
        // SAFETY: per the contract; the leaves have no children of their own.
        table.children().for_each(|(_, child)| unsafe { Ptr((*child).node).free() });
    }
}

/// Model of `WriterState::split` publishing through `swap_shape`, raced by a lookup.
///
/// A rank holds a two-position node `[h0, h1]`. The writer splits it at 1 as `split` does,
/// with the real constructors: a tail node for `h1` (same holders), a child table holding
/// the tail's shape, a head shape of length 1 pointing at that table, published in place
/// of the old shape (in the index, in the parent's table slot and the node). The lookup,
/// as `lookup::find_matches_into` walks it, loads the shape once and follows it; whichever
/// shape it sees, it must match both positions for the rank (the split changes no
/// holdings). Seeing the new shape without the table or the tail's shape fully initialised
/// would be a loom causality violation (the shape's cell, the table's slot atomics) or a
/// short match. The tail's shape and node are std memory, which loom cannot check; they
/// are published by the same `Release`, which the table's atomics witness.
#[test]
fn split_publishes_shape_table_and_tail() {
    check(None, || {
        let (h0, h1) = (BlockHash(10), BlockHash(11));
        let run: std::sync::Arc<[BlockHash]> = std::sync::Arc::from(vec![h0, h1]);
        let holders = empty_holders(1);
        holders[0].store(1, Ordering::Relaxed);
        let head = Ptr(Node::new(run.clone(), 0, 2, ptr::null_mut(), holders, ptr::null_mut()));
        // SAFETY: the node is freed only at the end, after the threads are joined.
        let first = unsafe { &*head.get() };
        let node_shape = Arc::new(Guarded::new(Some(*first.reshaped(2, ptr::null_mut(), first.copy_holders(1)))));
        let writer = {
            let node_shape = node_shape.clone();
            thread::spawn(move || {
                let head_shape = node_shape.read(|old| {
                    let old = old.unwrap();
                    let tail_holders = old.copy_holders(1);
                    let tail = Node::new(run, 1, old.len - 1, ptr::null_mut(), tail_holders, ptr::null_mut());
                    let table = ChildTable::with_capacity(2);
                    table.insert(h1.0, Ptr(tail).get());
                    old.reshaped(1, table.into_packed(), old.copy_holders(1))
                });
                node_shape.publish(*head_shape)
            })
        };
        let request = [h0, h1];
        let lookup = {
            let node_shape = node_shape.clone();
            thread::spawn(move || {
                node_shape.read(|shape| {
                    let shape = shape.unwrap();
                    assert!(shape.holds(0), "the node lost its holder");
                    let m = common_prefix(shape.hashes(), &request);
                    if m == request.len() {
                        return m;
                    }
                    assert_eq!(m, shape.len as usize, "the head run diverged from the request");
                    // `child_of`: the table pointer (std memory here, inside the shape's cell).
                    // SAFETY: freed only after the threads are joined.
                    let table = unsafe { ChildTable::from_packed(shape.children.load(Ordering::Acquire)) };
                    let table = table.expect("a split head shape without its child table");
                    let tail = table.get(request[m].0).expect("the tail is missing from the new table");
                    // SAFETY: as above; the tail's shape is never replaced in this model.
                    let tail_shape = unsafe { &*tail };
                    assert!(tail_shape.holds(0), "the tail lost its holder");
                    m + common_prefix(tail_shape.hashes(), &request[m..])
                })
            })
        };
        let old = writer.join().unwrap();
        let matched = lookup.join().unwrap();
        assert_eq!(matched, 2, "a lookup racing the split matched {matched} positions");
        assert!(old.is_some(), "the split replaced nothing");
        drop(old);
        // SAFETY: all threads are joined; the tail and its table are freed once, here.
        node_shape.read(|shape| unsafe { free_children(shape.unwrap()) });
        // SAFETY: as above; the head node and its first shape, once.
        unsafe { head.free() };
    });
}

/// Model of `WriterState::insert_child`'s two publications, raced by `lookup::child_of`.
///
/// The writer gives a childless node its first child (`None` arm: a fresh table holding
/// the child, stored with `Release`), then a second child into that full table (`rebuilt`,
/// insert, `Release` store, old table retired), with the real `ChildTable`. The reader
/// loads the table pointer once and must find the first child in any table it sees, and
/// the second one either nowhere or under its key.
#[test]
fn insert_child_publishes_new_and_rebuilt_tables() {
    check(None, || {
        let (k1, k2) = (21, 22);
        let (c1, c2) = (Ptr::leaf(k1), Ptr::leaf(k2));
        let children = Arc::new(Guarded::<OwnedTable>::new(None));
        let writer = {
            let children = children.clone();
            thread::spawn(move || {
                let first = ChildTable::with_capacity(2);
                first.insert(k1, c1.get());
                assert!(children.publish(first).is_none());
                let rebuilt = children.read(|current| {
                    let current = current.unwrap();
                    assert!(current.needs_rebuild(), "the model means to exercise the rebuild arm");
                    current.rebuilt()
                });
                rebuilt.insert(k2, c2.get());
                children.publish(rebuilt)
            })
        };
        let lookup = {
            let children = children.clone();
            thread::spawn(move || {
                children.read(|table| {
                    if let Some(table) = table {
                        assert_eq!(table.get(k1), Some(c1.get()), "a published table without the first child");
                        let got = table.get(k2);
                        assert!(got.is_none() || got == Some(c2.get()), "get(k2) returned {got:?}");
                    }
                })
            })
        };
        let old = writer.join().unwrap();
        lookup.join().unwrap();
        assert!(old.is_some(), "the rebuild replaced nothing");
        drop(old);
        drop(children);
        // SAFETY: all threads are joined and both tables are freed (they do not own their
        // children); each leaf is freed once.
        unsafe { [c1, c2].into_iter().for_each(|n| n.free()) };
    });
}

/// Model of `KvIndex::publish_ranks` (from `register_rank` / `deregister_rank`), raced by
/// the lookup's id-to-key translation (`KvIndex::walk` loads the table once;
/// `ScoreSink::emit` maps live ids to keys).
///
/// `rank_table.rs` itself has no lock-free state: a `RankTable`'s live mask and keys are
/// plain memory, built by `RankTable::new` before publication and never written after, so
/// the protocol to check is the copy-on-write publication. The writer registers `b` (id 1)
/// next to `a` (id 0), then deregisters `a`. The reader must report exactly the live ranks
/// of one of the three tables, under their keys: never a placeholder key for an id it
/// thinks live, never a mix of two tables.
#[test]
fn rank_table_snapshot_is_whole() {
    check(None, || {
        let (a, b) = (RankKey::new(1, 0), RankKey::new(2, 3));
        let ranks = Arc::new(Guarded::new(Some(*RankTable::new(&[Some(a)]))));
        let writer = {
            let ranks = ranks.clone();
            thread::spawn(move || {
                let registered = ranks.publish(*RankTable::new(&[Some(a), Some(b)]));
                let deregistered = ranks.publish(*RankTable::new(&[None, Some(b)]));
                (registered, deregistered)
            })
        };
        let lookup = {
            let ranks = ranks.clone();
            thread::spawn(move || {
                ranks.read(|table| {
                    let table = table.unwrap();
                    assert_eq!(table.live.len(), table.words);
                    let mut out: Vec<(RankKey, u32)> = Vec::new();
                    for (word, &bits) in table.live.iter().enumerate() {
                        out.emit(table, word, bits, 1);
                    }
                    out
                })
            })
        };
        let retired = writer.join().unwrap();
        let mut seen = lookup.join().unwrap();
        seen.sort_unstable();
        let snapshots = [vec![(a, 1)], vec![(a, 1), (b, 1)], vec![(b, 1)]];
        assert!(snapshots.contains(&seen), "the lookup saw ranks {seen:?}");
        assert!(retired.0.is_some() && retired.1.is_some());
    });
}
