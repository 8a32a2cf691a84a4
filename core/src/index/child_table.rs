//! A node's children: an open-addressing table from a child's first content hash to the
//! child, read without locks and written only under the index's writer lock.
//!
//! Layout: a power-of-two array of slots `(key, child)`. A slot is *empty* while its
//! child pointer is null, a *tombstone* once its child was removed (`TOMBSTONE`), and
//! live otherwise. Probing is linear from `key * φ >> shift`.
//!
//! Invariants that make lock-free reads sound:
//! - A slot's key is written once, before its child pointer is first published
//!   (`Release`), and never changes for the life of the table. A tombstone is reused only
//!   for the *same* key, so a reader that loaded a child pointer always pairs it with the
//!   key that child was inserted under.
//! - Readers stop at the first empty slot; writers never turn a used slot back to empty.
//! - When live entries plus tombstones would pass 3/4 of the capacity, the writer builds
//!   a new table with the live entries only, publishes it in the node's shape and retires
//!   the old one; a reader still probing the old table sees a consistent, older view.

use std::sync::atomic::Ordering;

// The table's atomics: loom's under `--cfg loom`, so that the loom tests (`loom_tests.rs`)
// check this very code; std's otherwise. Only the child table switches: the rest of the
// index stays on std atomics (seize, which loads the table pointer, cannot run under loom).
#[cfg(loom)]
use loom::sync::atomic::{AtomicPtr, AtomicU64};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicPtr, AtomicU64};

use super::node::Node;

/// Marks a slot whose child was removed.
/// (A dangling, aligned address: never the address of a live allocation.)
const TOMBSTONE: *mut Node = std::ptr::dangling_mut();

struct Slot {
    key: AtomicU64,
    child: AtomicPtr<Node>,
}

pub(crate) struct ChildTable {
    shift: u32,
    /// Live entries plus tombstones; writer-only (`Relaxed`, serialised by the writer lock).
    used: AtomicU64,
    live: AtomicU64,
    slots: Box<[Slot]>,
}

/// Home slot of `key` in a table of `2^(64 - shift)` slots (`pub(super)` for the loom
/// tests, which pick colliding keys).
#[inline(always)]
pub(super) fn home(key: u64, shift: u32) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

impl ChildTable {
    pub(crate) fn with_capacity(capacity: usize) -> Box<ChildTable> {
        let capacity = capacity.next_power_of_two().max(2);
        let slots = (0..capacity)
            .map(|_| Slot { key: AtomicU64::new(0), child: AtomicPtr::new(std::ptr::null_mut()) })
            .collect();
        Box::new(ChildTable {
            shift: 64 - capacity.trailing_zeros(),
            used: AtomicU64::new(0),
            live: AtomicU64::new(0),
            slots,
        })
    }

    #[inline(always)]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The child whose first content hash is `key`, if any. Lock-free; the caller is
    /// pinned so a returned child is not freed while it uses it.
    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<*mut Node> {
        let mask = self.mask();
        let mut i = home(key, self.shift);
        for _ in 0..self.slots.len() {
            let slot = &self.slots[i];
            // Acquire pairs with the Release that published the child, making its key and
            // the child node's contents visible.
            let child = slot.child.load(Ordering::Acquire);
            if child.is_null() {
                return None;
            }
            if child != TOMBSTONE && slot.key.load(Ordering::Relaxed) == key {
                return Some(child);
            }
            i = (i + 1) & mask;
        }
        None
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed) as usize
    }

    /// True when one more insert must go to a rebuilt table.
    pub(crate) fn needs_rebuild(&self) -> bool {
        (self.used.load(Ordering::Relaxed) as usize + 1) * 4 > self.slots.len() * 3
    }

    /// Inserts `child` under `key` (absent). Writer only. The table must have room
    /// (`!needs_rebuild()`).
    pub(crate) fn insert(&self, key: u64, child: *mut Node) {
        debug_assert!(!self.needs_rebuild());
        let mask = self.mask();
        let mut i = home(key, self.shift);
        loop {
            let slot = &self.slots[i];
            let current = slot.child.load(Ordering::Relaxed);
            if current.is_null() {
                slot.key.store(key, Ordering::Relaxed);
                // Release: publishes the key (above) and the child's contents; pairs with the
                // Acquire loads in `get` and `children`.
                slot.child.store(child, Ordering::Release);
                self.used.fetch_add(1, Ordering::Relaxed);
                self.live.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if current == TOMBSTONE && slot.key.load(Ordering::Relaxed) == key {
                // Same key: reuse (see the module invariant). Release, as above: it publishes
                // the child's contents, and the key too to a reader that never saw the slot's
                // first child (the loom tests catch a `Relaxed` here).
                slot.child.store(child, Ordering::Release);
                self.live.fetch_add(1, Ordering::Relaxed);
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Removes the child under `key`, leaving a tombstone. Writer only.
    pub(crate) fn remove(&self, key: u64) -> bool {
        let mask = self.mask();
        let mut i = home(key, self.shift);
        for _ in 0..self.slots.len() {
            let slot = &self.slots[i];
            let current = slot.child.load(Ordering::Relaxed);
            if current.is_null() {
                return false;
            }
            if current != TOMBSTONE && slot.key.load(Ordering::Relaxed) == key {
                slot.child.store(TOMBSTONE, Ordering::Release);
                self.live.fetch_sub(1, Ordering::Relaxed);
                return true;
            }
            i = (i + 1) & mask;
        }
        false
    }

    /// Live children. Writer only (or with a pinned guard, for a racy snapshot).
    pub(crate) fn children(&self) -> impl Iterator<Item = (u64, *mut Node)> + '_ {
        self.slots.iter().filter_map(|slot| {
            let child = slot.child.load(Ordering::Acquire);
            (!child.is_null() && child != TOMBSTONE).then(|| (slot.key.load(Ordering::Relaxed), child))
        })
    }

    /// A new table holding the live entries of `self` plus room to grow.
    pub(crate) fn rebuilt(&self) -> Box<ChildTable> {
        let live = self.live();
        let table = ChildTable::with_capacity((live + 1) * 2);
        for (key, child) in self.children() {
            table.insert(key, child);
        }
        table
    }
}
