//! The seam between the index and its memory-reclamation scheme.
//!
//! Readers *pin* before touching shared nodes and load every shared pointer through
//! their [`Guard`]; writers unlink a node (or shape, or child table) and then *retire*
//! it: the memory is dropped only once every reader that could have loaded the pointer
//! has unpinned. Two schemes sit behind the same three calls:
//!
//! - seize (default): a per-index collector with reservation lists; loads go through
//!   `Guard::protect`. Seize ends a batch's grace period on whichever thread drops its
//!   last reference, often a reader leaving; so a writer's guard hands seize one
//!   `Garbage` value holding all it retired, whose reclaimer only pushes it onto the
//!   domain's graveyard stack, and writers free the graveyard. A lookup never runs a
//!   destructor: at most a few pushes when it unpins.
//! - crossbeam-epoch (feature `crossbeam`): a global epoch; pinning is a thread-local
//!   increment and a fence; loads are plain `Acquire` loads; every 128th pin also
//!   collects garbage, on whichever thread pinned, readers included.
//!
//! Measured with the replay (`cargo run --release -p kvroute-bench --bin replay --
//! --backends kvroute`, then again with `--features crossbeam`; four alternating runs each
//! on the 2-core machine, README), both sustain the same block ops/s within the machine's
//! noise, and seize's lookup p99.9 is 6-7x lower (3.5-4.3 us against 24.6-27.7 us: the
//! crossbeam scheme collects on readers' pins), so seize is the default.
//!
//! Nothing else in the index names either crate, so switching scheme is a feature flag.
//! The index retires `Box`-allocated values (dropping the box runs the value's `Drop`,
//! which is how a recycled rank id is handed back after a grace period) and child tables,
//! which are one allocation of a header and slots freed by their own function
//! (`retire_with`).

use std::sync::atomic::{AtomicPtr, Ordering};

/// The seize scheme's graveyard stack, generic and on its own so that the loom tests
/// (`loom_tests.rs`, built with `--cfg loom`) check this very code.
#[cfg_attr(feature = "crossbeam", allow(dead_code))]
pub(super) mod graveyard {
    use std::ptr;
    use std::sync::atomic::Ordering;

    use sync::{AtomicPtr, UnsafeCell};

    /// The graveyard's atomics and cells: loom's under `--cfg loom`, std's otherwise. Only
    /// this module uses them; the rest of the index stays on std atomics (seize itself
    /// cannot run under loom).
    mod sync {
        #[cfg(loom)]
        pub(super) use loom::{cell::UnsafeCell, sync::atomic::AtomicPtr};
        #[cfg(not(loom))]
        pub(super) use std::sync::atomic::AtomicPtr;

        /// std's `UnsafeCell` behind loom's closure API, so the same code compiles against
        /// both and loom can check every access for a data race.
        #[cfg(not(loom))]
        pub(super) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

        #[cfg(not(loom))]
        impl<T> UnsafeCell<T> {
            pub(super) fn new(value: T) -> Self {
                UnsafeCell(std::cell::UnsafeCell::new(value))
            }

            #[inline(always)]
            pub(super) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
                f(self.0.get())
            }

            #[inline(always)]
            pub(super) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
                f(self.0.get())
            }
        }
    }

    /// A value on its way through a [`Graveyard`]: the value and the stack's link.
    pub(crate) struct Grave<T> {
        pub(crate) value: T,
        /// Written by the pusher before the CAS that publishes the grave, read by the
        /// emptier after the swap that takes it.
        next: UnsafeCell<*mut Grave<T>>,
    }

    impl<T> Grave<T> {
        pub(crate) fn new(value: T) -> Box<Self> {
            Box::new(Grave { value, next: UnsafeCell::new(ptr::null_mut()) })
        }
    }

    /// Graves whose grace period is over, waiting to be dropped: a Treiber stack that any
    /// thread pushes onto and that is only ever emptied as a whole (one `swap` to null).
    /// Nothing pops a single entry, so there is no ABA problem, and emptiers may race each
    /// other and the pushers.
    pub(crate) struct Graveyard<T> {
        head: AtomicPtr<Grave<T>>,
    }

    impl<T> Default for Graveyard<T> {
        fn default() -> Self {
            Graveyard { head: AtomicPtr::new(ptr::null_mut()) }
        }
    }

    impl<T> Graveyard<T> {
        /// Pushes `grave`; lock-free, from any thread.
        ///
        /// # Safety
        /// `grave` came from `Box::into_raw`, is pushed once and not touched by the caller
        /// afterwards, and its value may be dropped on whichever thread empties the stack.
        pub(crate) unsafe fn push(&self, grave: *mut Grave<T>) {
            // Relaxed: a first guess; the CAS below checks it.
            let mut head = self.head.load(Ordering::Relaxed);
            loop {
                // SAFETY: `grave` is owned by this call until the CAS publishes it.
                unsafe { (*grave).next.with_mut(|next| *next = head) };
                // Release: pairs with the Acquire swap in `free_all`, publishing `next` and
                // the value's contents to the emptier. A later push's CAS continues this
                // release sequence, so taking the head synchronises with every push below it.
                match self.head.compare_exchange_weak(head, grave, Ordering::Release, Ordering::Relaxed) {
                    Ok(_) => return,
                    Err(current) => head = current,
                }
            }
        }

        /// Drops every value pushed before this call, unless a racing call took it first; a
        /// push racing with this call may be left for the next one (or the graveyard's drop).
        pub(crate) fn free_all(&self) {
            drop(self.take_all());
        }

        /// Takes every grave pushed before this call (see `free_all`), to be dropped by the
        /// caller at its own pace.
        pub(crate) fn take_all(&self) -> Taken<T> {
            // Relaxed peek: most calls find nothing and skip the RMW.
            if self.head.load(Ordering::Relaxed).is_null() {
                return Taken { head: ptr::null_mut() };
            }
            // Acquire: pairs with `push`'s Release CAS, so each grave is seen whole.
            Taken { head: self.head.swap(ptr::null_mut(), Ordering::Acquire) }
        }
    }

    impl<T> Drop for Graveyard<T> {
        fn drop(&mut self) {
            self.free_all();
        }
    }

    /// Graves taken from a graveyard: a list owned by one holder, dropped a few at a time
    /// ([`Taken::drop_some`]) or all at once (its `Drop`).
    pub(crate) struct Taken<T> {
        head: *mut Grave<T>,
    }

    // SAFETY: the list is owned (the swap in `take_all` made it ours alone) and its values
    // may be dropped on any thread (the `push` contract).
    unsafe impl<T: Send> Send for Taken<T> {}

    impl<T> Taken<T> {
        pub(crate) fn is_empty(&self) -> bool {
            self.head.is_null()
        }

        /// Drops up to `n` graves; returns how many it dropped.
        pub(crate) fn drop_some(&mut self, n: usize) -> usize {
            let mut dropped = 0;
            while dropped < n && !self.head.is_null() {
                // SAFETY: the list is ours alone (see `take_all`); every grave in it was
                // leaked by its pusher and pushed once (the `push` contract).
                let grave = unsafe { Box::from_raw(self.head) };
                // SAFETY: the grave is ours (above); nothing else accesses its link.
                self.head = grave.next.with(|next| unsafe { *next });
                dropped += 1;
            }
            dropped
        }
    }

    impl<T> Drop for Taken<T> {
        fn drop(&mut self) {
            while self.drop_some(usize::MAX) > 0 {}
        }
    }
}

#[cfg(feature = "crossbeam")]
mod scheme {
    use super::*;

    /// Per-index reclamation state (none for the global crossbeam epoch).
    #[derive(Default)]
    pub(crate) struct Domain;

    pub(crate) struct Guard {
        inner: crossbeam_epoch::Guard,
    }

    impl Domain {
        pub(crate) fn pin(&self) -> Guard {
            Guard { inner: crossbeam_epoch::pin() }
        }
    }

    impl Guard {
        /// Loads a shared pointer. `Acquire` pairs with the writer's `Release` publication,
        /// so the pointee's initialisation is visible.
        #[inline(always)]
        pub(crate) fn load<T>(&self, ptr: &AtomicPtr<T>) -> *mut T {
            ptr.load(Ordering::Acquire)
        }

        /// Drops `ptr` (a `Box<T>` leaked with `Box::into_raw`) once no pinned reader can see it.
        ///
        /// # Safety
        /// `ptr` came from `Box::into_raw`, is unreachable from shared memory for readers
        /// that pin after this call, and is retired exactly once.
        pub(crate) unsafe fn retire<T>(&self, ptr: *mut T) {
            let addr = ptr as usize;
            // SAFETY: the caller guarantees the box is unlinked and retired once; the
            // closure runs after every guard that could have loaded it is dropped.
            unsafe {
                self.inner.defer_unchecked(move || drop(Box::from_raw(addr as *mut T)));
            }
        }

        /// Calls `free(ptr)` once no pinned reader can see `ptr`: for values not boxed
        /// as one `T` (the child tables' packed pointers).
        ///
        /// # Safety
        /// `free(ptr)` is sound once, after the grace period; `ptr` is unreachable from
        /// shared memory for readers that pin after this call and retired exactly once.
        pub(crate) unsafe fn retire_with(&self, ptr: *mut (), free: unsafe fn(*mut ())) {
            let addr = ptr as usize;
            // SAFETY: per the contract; the closure runs after the grace period.
            unsafe {
                self.inner.defer_unchecked(move || free(addr as *mut ()));
            }
        }

        /// Pushes this thread's deferred garbage towards collection (used by tests and
        /// memory reports; never needed for correctness).
        pub(crate) fn flush(&self) {
            self.inner.flush();
        }

        /// The seize scheme's size hint; crossbeam collects every 128th pin anyway.
        pub(crate) fn note_retired_bytes(&self, _bytes: usize) {}
    }
}

#[cfg(not(feature = "crossbeam"))]
mod scheme {
    use std::cell::{Cell, RefCell};
    use std::sync::atomic::AtomicUsize;

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::graveyard::{Grave, Graveyard, Taken};
    use super::*;
    use seize::Guard as _;

    /// One retired value and the function that drops it.
    struct Retired {
        ptr: *mut (),
        drop: unsafe fn(*mut ()),
    }

    /// # Safety
    /// `ptr` came from `Box::<T>::into_raw` and is dropped once.
    unsafe fn drop_box<T>(ptr: *mut ()) {
        // SAFETY: forwarded from the caller.
        drop(unsafe { Box::from_raw(ptr.cast::<T>()) });
    }

    /// Everything one writer guard retired, handed to seize as a single value (in a
    /// [`Grave`], ready for the graveyard).
    struct Garbage {
        items: Vec<Retired>,
        /// The graveyard of the domain it was retired in (boxed, so its address is stable).
        graveyard: *const Graveyard<Garbage>,
    }

    impl Drop for Garbage {
        fn drop(&mut self) {
            for item in self.items.drain(..) {
                // SAFETY: each item was retired once through `Guard::retire`, whose caller
                // vouched for the box, and its grace period is over (it reached the graveyard).
                unsafe { (item.drop)(item.ptr) };
            }
        }
    }

    /// seize's reclaimer for [`Garbage`]: runs when the grace period is over, on
    /// whichever thread ends it, and only moves the garbage to its graveyard.
    ///
    /// Why: seize frees a batch on the thread whose `leave` drops its last reference,
    /// which is often a reader. A reader that ran the destructors of a batch of nodes
    /// would pay for the writers' garbage inside its lookup; here it pays one push, and
    /// writers free the graveyard.
    ///
    /// # Safety
    /// `grave` came from `Box::into_raw` in `Guard::seal`, seize calls this once per
    /// retirement, and its graveyard is alive (the domain drops its collector, whose drop
    /// runs the last reclaimers, first).
    unsafe fn bury(grave: *mut Grave<Garbage>, _: &seize::Collector) {
        // SAFETY: see the function's contract.
        let graveyard = unsafe { &*(*grave).value.graveyard };
        // SAFETY: a leaked box, pushed once (seize runs a reclaimer once); its grace period
        // is over, so any thread may drop it, and `Garbage` holds nothing tied to a thread.
        unsafe { graveyard.push(grave) };
    }

    /// Per-index seize collector, the graveyard its reclaimers fill, and the graves
    /// writers took from it and have yet to drop.
    pub(crate) struct Domain {
        // Field order matters: the collector is dropped first, and its drop buries
        // every batch still pending into the graveyard, which is dropped (freed) after.
        collector: seize::Collector,
        graveyard: Box<Graveyard<Garbage>>,
        backlog: Mutex<VecDeque<Taken<Garbage>>>,
        /// Bytes (as hinted by writers) retired into seize's current batch.
        pending_bytes: AtomicUsize,
    }

    /// A pinned section. A writer's guard also gathers what it retires and hands it to
    /// seize as one value when dropped; a reader's never retires and drops in O(1) apart
    /// from seize's own `leave`.
    pub(crate) struct Guard<'a> {
        inner: seize::LocalGuard<'a>,
        graveyard: &'a Graveyard<Garbage>,
        backlog: &'a Mutex<VecDeque<Taken<Garbage>>>,
        pending_bytes: &'a AtomicUsize,
        retired: RefCell<Vec<Retired>>,
        retired_bytes: Cell<usize>,
    }

    /// Graves (each one writer guard's garbage) a writer guard drops when it ends.
    ///
    /// Why not all of them: a batch's grace period ends all at once, burying
    /// [`BATCH`] graves, and the writer that frees them all stalls for that long: about
    /// a millisecond of frees in the middle of applying one event (seen as the
    /// transport bench's event-to-visible tail). Dropping a few per write spreads that
    /// work over the next writes; since each write adds at most one grave, the backlog
    /// shrinks by at least `GRAVES_PER_WRITE - 1` a write and never outgrows a batch or two.
    const GRAVES_PER_WRITE: usize = 4;

    /// Garbage values (one per writer guard) per seize batch. Retiring a batch costs a
    /// process-wide memory barrier (`membarrier`, an interrupt on every core running
    /// this process), so batches are large: at seize's default of 32, a writer applying
    /// ~1M events/s interrupted every lookup thread ~30k times a second. At 512 those
    /// interrupts still set the decision bench's p99 (10.5 us under a 27M block events/s
    /// writer); at 4096 it is 3.9-4.5 us, for up to 4096 writer guards' garbage (a few
    /// MB at most) waiting per batch.
    const BATCH: usize = 4096;

    /// Retired bytes that end seize's batch early. A batch counts writer guards, not bytes:
    /// a guard that retires a node of a long prompt (a 1 M-token approximate-mode record
    /// holds 512 KiB of hashes in one run) would otherwise let 4096 of them, gigabytes,
    /// wait for the batch to fill. Past this many bytes the batch is retired at once, so
    /// the garbage waiting stays about this size; ordinary events, whose nodes are a few
    /// hundred bytes, fill the batch long before.
    const FLUSH_BYTES: usize = 16 << 20;

    impl Default for Domain {
        fn default() -> Self {
            Domain {
                collector: seize::Collector::new().batch_size(BATCH),
                graveyard: Box::default(),
                backlog: Mutex::new(VecDeque::new()),
                pending_bytes: AtomicUsize::new(0),
            }
        }
    }

    impl Domain {
        pub(crate) fn pin(&self) -> Guard<'_> {
            Guard {
                inner: self.collector.enter(),
                graveyard: &self.graveyard,
                backlog: &self.backlog,
                pending_bytes: &self.pending_bytes,
                retired: RefCell::new(Vec::new()),
                retired_bytes: Cell::new(0),
            }
        }
    }

    impl Guard<'_> {
        /// Loads a shared pointer under seize's protection (an `Acquire` load, plus the
        /// fence seize needs to see the pointer as reserved).
        #[inline(always)]
        pub(crate) fn load<T>(&self, ptr: &AtomicPtr<T>) -> *mut T {
            self.inner.protect(ptr, Ordering::Acquire)
        }

        /// # Safety
        /// As for the crossbeam scheme: a leaked box, unlinked, retired once.
        pub(crate) unsafe fn retire<T>(&self, ptr: *mut T) {
            self.retired.borrow_mut().push(Retired { ptr: ptr.cast(), drop: drop_box::<T> });
        }

        /// # Safety
        /// As for the crossbeam scheme: `free(ptr)` sound once, after the grace period.
        pub(crate) unsafe fn retire_with(&self, ptr: *mut (), free: unsafe fn(*mut ())) {
            self.retired.borrow_mut().push(Retired { ptr, drop: free });
        }

        /// Says how much memory the values retired by this guard hold beyond their own box
        /// (a node's run of hashes): a hint for [`FLUSH_BYTES`], never needed for safety.
        pub(crate) fn note_retired_bytes(&self, bytes: usize) {
            self.retired_bytes.set(self.retired_bytes.get().saturating_add(bytes));
        }

        /// Hands what this guard retired so far to seize as one value.
        fn seal(&self) {
            let items = std::mem::take(&mut *self.retired.borrow_mut());
            if items.is_empty() {
                return;
            }
            let grave = Box::into_raw(Grave::new(Garbage { items, graveyard: self.graveyard }));
            // SAFETY: every item is unlinked and retired once (the `retire` contract); the
            // grave is a fresh box, and `bury` is its reclaimer.
            unsafe { self.inner.defer_retire(grave, bury) };
        }

        pub(crate) fn flush(&self) {
            self.seal();
            self.inner.flush();
            // Everything, backlog included: callers flush to get memory (or ids) back now.
            drop(std::mem::take(&mut *lock(self.backlog)));
            self.graveyard.free_all();
        }

        /// Moves what reclaimers buried to the backlog and drops up to `GRAVES_PER_WRITE`
        /// graves from it.
        fn free_some(&self) {
            let mut backlog = lock(self.backlog);
            let taken = self.graveyard.take_all();
            if !taken.is_empty() {
                backlog.push_back(taken);
            }
            let mut budget = GRAVES_PER_WRITE;
            while budget > 0 {
                let Some(oldest) = backlog.front_mut() else { break };
                budget -= oldest.drop_some(budget);
                if oldest.is_empty() {
                    backlog.pop_front();
                }
            }
        }
    }

    /// The backlog's lock: taken by writers only, one at a time in practice (they hold
    /// the index's writer lock or are the sole writer of a staged rank). A panic while
    /// it was held left a list of graves, still sound to drop.
    fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            if self.retired.get_mut().is_empty() {
                return;
            }
            self.seal();
            // Relaxed by design: a size heuristic; writers are serialised by the index's
            // writer lock in practice, and a lost update only delays one early retirement.
            let bytes = self.retired_bytes.take();
            if bytes > 0 && self.pending_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes >= FLUSH_BYTES {
                self.pending_bytes.store(0, Ordering::Relaxed);
                // Retires seize's partial batch now (one process-wide barrier).
                self.inner.flush();
            }
            // Only writers retire, so only writers get here: free some of what readers
            // and earlier writers buried.
            self.free_some();
        }
    }
}

pub(crate) use scheme::{Domain, Guard};

#[cfg(all(test, not(feature = "crossbeam"), not(loom)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::Domain;

    /// Counts its drops.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// One writer guard retiring one value.
    fn write(domain: &Domain, dropped: &Arc<AtomicUsize>) {
        let guard = domain.pin();
        // SAFETY: a fresh box, reachable from nowhere, retired once.
        unsafe { guard.retire(Box::into_raw(Box::new(Counted(dropped.clone())))) };
    }

    #[test]
    fn big_garbage_ends_the_batch_early() {
        // Each write says it retired 4 MiB: the batch (4096 writes) must not wait to fill.
        let domain = Domain::default();
        let dropped = Arc::new(AtomicUsize::new(0));
        for _ in 0..12 {
            let guard = domain.pin();
            // SAFETY: a fresh box, reachable from nowhere, retired once.
            unsafe { guard.retire(Box::into_raw(Box::new(Counted(dropped.clone())))) };
            guard.note_retired_bytes(4 << 20);
        }
        // 16 MiB pending after the 4th write retires the batch; later writes free it.
        assert!(dropped.load(Ordering::SeqCst) >= 4, "{} dropped", dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn a_finished_batch_is_freed_a_few_graves_per_write_never_all_at_once() {
        // Mirrors the scheme's constants: seize batch 4096, 4 graves per write.
        const BATCH: usize = 4096;
        const PER_WRITE: usize = 4;
        let domain = Domain::default();
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut most_in_one_write = 0;
        for _ in 0..3 * BATCH {
            let before = dropped.load(Ordering::SeqCst);
            write(&domain, &dropped);
            most_in_one_write = most_in_one_write.max(dropped.load(Ordering::SeqCst) - before);
        }
        // With no reader pinned, each full batch's grace period ends at once: thousands of
        // graves buried together, yet no write dropped more than its share...
        assert!(most_in_one_write <= PER_WRITE, "one write dropped {most_in_one_write} values");
        // ...and the backlog keeps up: the first two batches are gone by now.
        assert!(dropped.load(Ordering::SeqCst) >= 2 * BATCH, "{} dropped", dropped.load(Ordering::SeqCst));
        drop(domain);
        assert_eq!(dropped.load(Ordering::SeqCst), 3 * BATCH, "the domain's drop frees the rest");
    }
}
