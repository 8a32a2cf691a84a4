//! A node's children: an open-addressing table from a child's first content hash to the
//! child's current shape (`node::Shape`), read without locks and written only under the
//! index's writer lock.
//!
//! Layout: one allocation, aligned to a cache line: a 16-byte header (writer-only counts)
//! followed by a power-of-two array of 16-byte slots `(key, child)`, so a two-slot table
//! is one cache line and no slot straddles two. The pointer a shape publishes is *packed*:
//! the table's address with log2 of its slot count in the low six bits (free: the address
//! is 64-aligned). A reader therefore finds a key's home slot from the pointer alone and
//! touches only the line(s) it probes: one dependent cache miss per table, not two (a
//! header read to learn the size, then the slot). Probing is linear from `key * φ >> shift`.
//!
//! A slot is *empty* while its child pointer is null, a *tombstone* once its child was
//! removed (`TOMBSTONE`), and live otherwise.
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
//! - The slot count never changes for the life of a table, so the packed size in every
//!   copy of the pointer stays right.

use std::alloc::Layout;
use std::ptr::{self, NonNull};
// Writer-only counters: std atomics (`Relaxed`, serialised by the writer lock) even under loom.
use std::sync::atomic::{AtomicU32, Ordering};

// The slots' atomics: loom's under `--cfg loom`, so that the loom tests (`loom_tests.rs`)
// check this very code; std's otherwise. Only the child table switches: the rest of the
// index stays on std atomics (seize, which loads the table pointer, cannot run under loom).
#[cfg(loom)]
use loom::sync::atomic::{AtomicPtr, AtomicU64};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicPtr, AtomicU64};

use super::node::Shape;

/// Marks a slot whose child was removed.
/// (A dangling, aligned address: never the address of a live allocation.)
const TOMBSTONE: *mut Shape = std::ptr::dangling_mut();

/// Alignment of a table's allocation; its low bits carry the size in a packed pointer.
const TABLE_ALIGN: usize = 64;
const SIZE_BITS: usize = TABLE_ALIGN - 1;

#[repr(C)]
struct Slot {
    key: AtomicU64,
    child: AtomicPtr<Shape>,
}

/// The pointee type of a packed table pointer (see the module docs). Never dereferenced
/// as such: [`ChildTable::from_packed`] turns the pointer back into a table.
pub(crate) enum PackedTable {}

/// A table, header and slots in one allocation (`slots.len()` is the slot count, carried
/// in the fat pointer, so reading it costs no memory access).
#[repr(C, align(64))]
pub(crate) struct ChildTable {
    /// Live entries plus tombstones; writer-only.
    used: AtomicU32,
    /// Live entries; writer-only.
    live: AtomicU32,
    /// Pads the header to one slot, so slots are 16-aligned and never straddle a line.
    _pad: u64,
    slots: [Slot],
}

/// Home slot of `key` in a table of `2^(64 - shift)` slots (`pub(super)` for the loom
/// tests, which pick colliding keys).
#[inline(always)]
pub(super) fn home(key: u64, shift: u32) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

/// An owned table not (or no longer) reachable by readers: built by the writer before it
/// publishes it with [`OwnedTable::into_packed`], or taken back with
/// [`OwnedTable::from_packed`] to be freed. Frees the table when dropped (never its
/// children, which the tree owns).
pub(crate) struct OwnedTable(NonNull<ChildTable>);

// SAFETY: the table is atomics only; ownership moves with the handle.
unsafe impl Send for OwnedTable {}
// SAFETY: shared access is through `&ChildTable`, whose fields are atomics.
unsafe impl Sync for OwnedTable {}

impl std::ops::Deref for OwnedTable {
    type Target = ChildTable;
    fn deref(&self) -> &ChildTable {
        // SAFETY: the handle owns a live, initialised table.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for OwnedTable {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_capacity` with `Self::layout(capacity)`, which equals
        // `Layout::for_value` of the table (checked there), and owned by this handle.
        // Dropping the slots in place first runs their atomics' drop (a no-op for std's).
        unsafe {
            let layout = Layout::for_value(self.0.as_ref());
            ptr::drop_in_place(self.0.as_ptr());
            std::alloc::dealloc(self.0.as_ptr().cast(), layout);
        }
    }
}

impl OwnedTable {
    /// Hands the table over to the tree: the packed pointer to store in a shape.
    pub(crate) fn into_packed(self) -> *mut PackedTable {
        let capacity = self.slots.len();
        let base = self.0.as_ptr().cast::<u8>();
        std::mem::forget(self);
        base.map_addr(|addr| addr | capacity.trailing_zeros() as usize).cast()
    }

    /// Takes back ownership of a table from its packed pointer (null: `None`).
    ///
    /// # Safety
    /// `packed` came from [`OwnedTable::into_packed`] and is not used again by anyone
    /// (unlinked, grace period over, or `&mut` access to the whole tree).
    pub(crate) unsafe fn from_packed(packed: *mut PackedTable) -> Option<OwnedTable> {
        // Straight from the pointer, through no shared reference: the handle may free it.
        unpack(packed).map(OwnedTable)
    }

    /// [`OwnedTable::from_packed`] and drop, for the reclamation scheme (`retire_with`).
    ///
    /// # Safety
    /// As for [`OwnedTable::from_packed`]; `packed` is a `*mut PackedTable`.
    pub(crate) unsafe fn free_packed(packed: *mut ()) {
        // SAFETY: forwarded from the caller.
        drop(unsafe { OwnedTable::from_packed(packed.cast()) });
    }
}

/// The table a packed pointer names, as a raw pointer carrying its slot count (null:
/// `None`). Reads no memory.
#[inline(always)]
fn unpack(packed: *mut PackedTable) -> Option<NonNull<ChildTable>> {
    let capacity = 1usize << (packed.addr() & SIZE_BITS);
    let base = packed.map_addr(|addr| addr & !SIZE_BITS).cast::<Slot>();
    // The cast keeps the address and the slice length, which becomes the slot count.
    NonNull::new(ptr::slice_from_raw_parts_mut(base, capacity) as *mut ChildTable)
}

impl ChildTable {
    /// Layout of a table of `capacity` slots: the same as `Layout::for_value` computes for
    /// this `repr(C)` type (a 16-byte header, then the slots, padded to the alignment).
    fn layout(capacity: usize) -> Layout {
        let header = Layout::new::<[u64; 2]>();
        let (layout, slots_at) =
            header.extend(Layout::array::<Slot>(capacity).expect("table size")).expect("table size");
        debug_assert_eq!(slots_at, 16);
        layout.align_to(TABLE_ALIGN).expect("table alignment").pad_to_align()
    }

    /// An empty table with room for at least `capacity` slots (a power of two, >= 2).
    pub(crate) fn with_capacity(capacity: usize) -> OwnedTable {
        let capacity = capacity.next_power_of_two().max(2);
        let layout = Self::layout(capacity);
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { std::alloc::alloc(layout) };
        if base.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // A slice pointer's length becomes the table's slot count (its DST metadata).
        let table = ptr::slice_from_raw_parts_mut(base.cast::<Slot>(), capacity) as *mut ChildTable;
        // SAFETY: `table` points to a fresh allocation of `layout`, big enough for the
        // header and `capacity` slots; every field is written once before any read.
        unsafe {
            ptr::addr_of_mut!((*table).used).write(AtomicU32::new(0));
            ptr::addr_of_mut!((*table).live).write(AtomicU32::new(0));
            ptr::addr_of_mut!((*table)._pad).write(0);
            let slots = ptr::addr_of_mut!((*table).slots).cast::<Slot>();
            for i in 0..capacity {
                slots.add(i).write(Slot { key: AtomicU64::new(0), child: AtomicPtr::new(ptr::null_mut()) });
            }
            debug_assert_eq!(Layout::for_value(&*table), layout);
            OwnedTable(NonNull::new_unchecked(table))
        }
    }

    /// The table a packed pointer names (null: `None`). Reads no memory.
    ///
    /// # Safety
    /// `packed` is null or came from [`OwnedTable::into_packed`], and the table is alive
    /// for `'a` (the caller is pinned, or holds the writer lock while it is linked).
    #[inline(always)]
    pub(crate) unsafe fn from_packed<'a>(packed: *mut PackedTable) -> Option<&'a ChildTable> {
        // SAFETY: per the contract, the table is alive and only read through `&` for `'a`.
        unpack(packed).map(|table| unsafe { &*table.as_ptr() })
    }

    #[inline(always)]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[inline(always)]
    fn shift(&self) -> u32 {
        64 - self.slots.len().trailing_zeros()
    }

    /// The shape of the child whose first content hash is `key`, if any. Lock-free; the
    /// caller is pinned so a returned shape is not freed while it uses it.
    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<*mut Shape> {
        // Acquire pairs with the Release that published the child, making its key and
        // the child node's contents visible.
        self.probe(key, Ordering::Acquire).map(|(_, child)| child)
    }

    /// The slot holding the live entry under `key`, and its child as loaded with `order`
    /// (readers: `Acquire`; the writer: `Relaxed`, its lock orders its own accesses).
    #[inline(always)]
    fn probe(&self, key: u64, order: Ordering) -> Option<(&Slot, *mut Shape)> {
        let mask = self.mask();
        let mut i = home(key, self.shift());
        for _ in 0..self.slots.len() {
            let slot = &self.slots[i];
            let child = slot.child.load(order);
            if child.is_null() {
                return None;
            }
            if child != TOMBSTONE && slot.key.load(Ordering::Relaxed) == key {
                return Some((slot, child));
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Asks the CPU to fetch `key`'s home slot, ahead of a [`ChildTable::get`] that must
    /// wait for other loads first. A hint: no effect on results.
    #[inline(always)]
    pub(crate) fn prefetch(&self, key: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let slot: *const Slot = &self.slots[home(key, self.shift())];
            // SAFETY: a prefetch never faults and SSE is baseline on x86-64; the address is
            // a slot of this table anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(slot.cast()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
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
    pub(crate) fn insert(&self, key: u64, child: *mut Shape) {
        debug_assert!(!self.needs_rebuild());
        let mask = self.mask();
        let mut i = home(key, self.shift());
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

    /// The slot holding the live entry under `key`, if any. Writer only (`Relaxed`: the
    /// writer lock orders the writer's own accesses).
    fn live_slot(&self, key: u64) -> Option<&Slot> {
        self.probe(key, Ordering::Relaxed).map(|(slot, _)| slot)
    }

    /// Points the live entry under `key` at `child` (the child's new shape). Writer only.
    /// Returns false if there is no such entry.
    pub(crate) fn replace(&self, key: u64, child: *mut Shape) -> bool {
        let Some(slot) = self.live_slot(key) else { return false };
        // Release: publishes the new shape's contents (and everything it points to) to
        // readers that load this slot with `Acquire` in `get`.
        slot.child.store(child, Ordering::Release);
        true
    }

    /// Removes the child under `key`, leaving a tombstone. Writer only.
    pub(crate) fn remove(&self, key: u64) -> bool {
        let Some(slot) = self.live_slot(key) else { return false };
        // Release: not needed by readers (a tombstone publishes nothing they read); kept so
        // that every store of a child pointer is a release, as the loom model checks them.
        slot.child.store(TOMBSTONE, Ordering::Release);
        self.live.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Live children. Writer only (or with a pinned guard, for a racy snapshot).
    pub(crate) fn children(&self) -> impl Iterator<Item = (u64, *mut Shape)> + '_ {
        self.slots.iter().filter_map(|slot| {
            let child = slot.child.load(Ordering::Acquire);
            (!child.is_null() && child != TOMBSTONE).then(|| (slot.key.load(Ordering::Relaxed), child))
        })
    }

    /// A new table holding the live entries of `self` plus room to grow.
    pub(crate) fn rebuilt(&self) -> OwnedTable {
        let live = self.live();
        let table = ChildTable::with_capacity((live + 1) * 2);
        for (key, child) in self.children() {
            table.insert(key, child);
        }
        table
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_packed_pointer_names_the_same_table_and_size() {
        // (Miri runs the small sizes only: the large one takes it minutes.)
        let sizes: &[usize] = if cfg!(miri) { &[2, 4, 8, 64] } else { &[2, 4, 8, 1024, 1 << 16] };
        for &capacity in sizes {
            let table = ChildTable::with_capacity(capacity);
            for key in 0..(capacity as u64 / 2) {
                table.insert(key * 7 + 1, std::ptr::without_provenance_mut::<Shape>(key as usize * 16 + 16));
            }
            let (address, slots) = (std::ptr::addr_of!(*table).cast::<u8>(), table.slots.len());
            let packed = table.into_packed();
            assert_eq!(packed.addr() & !SIZE_BITS, address.addr(), "the address survives packing");
            // SAFETY: just packed, not freed.
            let view = unsafe { ChildTable::from_packed(packed) }.unwrap();
            assert_eq!(view.slots.len(), slots);
            assert_eq!(view.live(), capacity / 2);
            for key in 0..(capacity as u64 / 2) {
                assert_eq!(
                    view.get(key * 7 + 1),
                    Some(std::ptr::without_provenance_mut::<Shape>(key as usize * 16 + 16))
                );
            }
            assert_eq!(view.get(3), None);
            // SAFETY: packed above, used no more.
            drop(unsafe { OwnedTable::from_packed(packed) });
        }
        // SAFETY: null is a valid packed pointer meaning "no table".
        assert!(unsafe { ChildTable::from_packed(std::ptr::null_mut()) }.is_none());
    }
}
