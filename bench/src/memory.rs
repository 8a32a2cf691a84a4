//! Live-heap accounting: a counting wrapper around the global allocator.
//!
//! The replay binary installs `CountingAlloc<MiMalloc>` as its global allocator. Every
//! allocation, reallocation and free adjusts a signed counter of requested bytes (the
//! `Layout` sizes, not what mimalloc rounds them up to), so [`live_bytes`] is the number of
//! heap bytes the process holds at any instant. An index's memory is the difference between
//! two readings taken around its construction and replay (see `replay::run_replay`).
//!
//! The counter is sharded: each thread adds to one of [`SHARDS`] cache-padded atomics picked
//! on its first allocation, so the event and query threads of a replay never write a common
//! cache line on their allocation paths. A reading sums the shards; a block freed by another
//! thread than the one that allocated it is still accounted exactly (the counts are signed).
//!
//! In a process whose global allocator is not `CountingAlloc` (the unit tests, for instance)
//! [`counting_active`] is false and memory figures are reported as unknown.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};

/// Number of counter shards.
pub const SHARDS: usize = 64;

#[repr(align(128))]
struct Padded(AtomicIsize);

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: Padded = Padded(AtomicIsize::new(0));
static COUNTS: [Padded; SHARDS] = [ZERO; SHARDS];
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
static ACTIVE: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Const-initialised and without a destructor: usable from inside the allocator, even
    // while the thread is being torn down.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn shard() -> usize {
    SHARD
        .try_with(|slot| {
            let mut index = slot.get();
            if index == usize::MAX {
                index = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
                slot.set(index);
            }
            index
        })
        .unwrap_or(0)
}

#[inline]
fn add(delta: isize) {
    COUNTS[shard()].0.fetch_add(delta, Ordering::Relaxed);
}

/// A global allocator that forwards to `A` and counts live requested bytes.
pub struct CountingAlloc<A>(pub A);

// SAFETY: every call is forwarded unchanged to the wrapped allocator; the counting only
// touches atomics and a const thread-local, never allocates.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAlloc<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { self.0.alloc(layout) };
        if !ptr.is_null() {
            add(layout.size() as isize);
        }
        ptr
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { self.0.alloc_zeroed(layout) };
        if !ptr.is_null() {
            add(layout.size() as isize);
        }
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(ptr, layout) };
        add(-(layout.size() as isize));
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        new
    }
}

impl<A> CountingAlloc<A> {
    /// Marks counting as active; the replay binary calls it at start-up. (The allocator
    /// itself cannot tell whether it is the global one.)
    pub fn activate(&self) {
        ACTIVE.store(true, Ordering::Relaxed);
    }
}

/// Whether the process's global allocator is a [`CountingAlloc`] that was activated.
pub fn counting_active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Live heap bytes (requested sizes) of the whole process, if counting is active.
pub fn live_bytes() -> Option<i64> {
    if !counting_active() {
        return None;
    }
    Some(COUNTS.iter().map(|c| c.0.load(Ordering::Relaxed) as i64).sum())
}
