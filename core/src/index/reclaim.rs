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
//! --backends kvroute`, then again with `--features crossbeam`), seize sustained about
//! 18% more block ops/s on the 2-core machine, with half the p99.9 lookup latency, so it
//! is the default.
//!
//! Nothing else in the index names either crate, so switching scheme is a feature flag.
//! The index retires only `Box`-allocated values; dropping the box runs the value's
//! `Drop`, which is how a recycled rank id is handed back after a grace period.

use std::sync::atomic::{AtomicPtr, Ordering};

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

        /// Pushes this thread's deferred garbage towards collection (used by tests and
        /// memory reports; never needed for correctness).
        pub(crate) fn flush(&self) {
            self.inner.flush();
        }
    }
}

#[cfg(not(feature = "crossbeam"))]
mod scheme {
    use std::cell::RefCell;

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

    /// Everything one writer guard retired, handed to seize as a single value.
    struct Garbage {
        items: Vec<Retired>,
        /// Link in the graveyard's stack.
        next: *mut Garbage,
        /// The graveyard of the domain it was retired in (boxed, so its address is stable).
        graveyard: *const Graveyard,
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

    /// Garbage whose grace period is over, waiting for a writer to free it: a Treiber
    /// stack that any thread pushes onto and a writer empties as a whole.
    ///
    /// Why: seize frees a batch on the thread whose `leave` drops its last reference,
    /// which is often a reader. A reader that ran the destructors of a batch of nodes
    /// would pay for the writers' garbage inside its lookup; here it pays one push.
    #[derive(Default)]
    struct Graveyard {
        head: AtomicPtr<Garbage>,
    }

    impl Graveyard {
        fn push(&self, garbage: *mut Garbage) {
            // Relaxed: a first guess; the CAS below checks it.
            let mut head = self.head.load(Ordering::Relaxed);
            loop {
                // SAFETY: `garbage` is owned by this call until the CAS publishes it.
                unsafe { (*garbage).next = head };
                // Release: publishes `next` and the garbage's contents to the emptier.
                match self.head.compare_exchange_weak(head, garbage, Ordering::Release, Ordering::Relaxed) {
                    Ok(_) => return,
                    Err(current) => head = current,
                }
            }
        }

        /// Frees everything pushed so far.
        fn free_all(&self) {
            // Relaxed peek: most calls find nothing and skip the RMW.
            if self.head.load(Ordering::Relaxed).is_null() {
                return;
            }
            // Acquire: pairs with `push`'s Release, so the garbage is seen whole.
            let mut next = self.head.swap(std::ptr::null_mut(), Ordering::Acquire);
            while !next.is_null() {
                // SAFETY: the swap made this list ours alone; every element was boxed by
                // `Guard::drop` and pushed once.
                let garbage = unsafe { Box::from_raw(next) };
                next = garbage.next;
            }
        }
    }

    impl Drop for Graveyard {
        fn drop(&mut self) {
            self.free_all();
        }
    }

    /// seize's reclaimer for [`Garbage`]: runs when the grace period is over, on
    /// whichever thread ends it, and only moves the garbage to its graveyard.
    ///
    /// # Safety
    /// `garbage` came from `Box::into_raw` in `Guard::drop`, and its graveyard is alive
    /// (the domain drops its collector, whose drop runs the last reclaimers, first).
    unsafe fn bury(garbage: *mut Garbage, _: &seize::Collector) {
        // SAFETY: see the function's contract.
        let graveyard = unsafe { &*(*garbage).graveyard };
        graveyard.push(garbage);
    }

    /// Per-index seize collector and the graveyard its reclaimers fill.
    pub(crate) struct Domain {
        // Field order matters: the collector is dropped first, and its drop buries
        // every batch still pending into the graveyard, which is dropped (freed) after.
        collector: seize::Collector,
        graveyard: Box<Graveyard>,
    }

    /// A pinned section. A writer's guard also gathers what it retires and hands it to
    /// seize as one value when dropped; a reader's never retires and drops in O(1) apart
    /// from seize's own `leave`.
    pub(crate) struct Guard<'a> {
        inner: seize::LocalGuard<'a>,
        graveyard: &'a Graveyard,
        retired: RefCell<Vec<Retired>>,
    }

    /// Garbage values (one per writer guard) per seize batch. Retiring a batch costs a
    /// process-wide memory barrier (`membarrier`, an interrupt on every core running
    /// this process), so batches are large: at seize's default of 32, a writer applying
    /// ~1M events/s interrupted every lookup thread ~30k times a second.
    const BATCH: usize = 512;

    impl Default for Domain {
        fn default() -> Self {
            Domain { collector: seize::Collector::new().batch_size(BATCH), graveyard: Box::default() }
        }
    }

    impl Domain {
        pub(crate) fn pin(&self) -> Guard<'_> {
            Guard { inner: self.collector.enter(), graveyard: &self.graveyard, retired: RefCell::new(Vec::new()) }
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

        /// Hands what this guard retired so far to seize as one value.
        fn seal(&self) {
            let items = std::mem::take(&mut *self.retired.borrow_mut());
            if items.is_empty() {
                return;
            }
            let garbage =
                Box::into_raw(Box::new(Garbage { items, next: std::ptr::null_mut(), graveyard: self.graveyard }));
            // SAFETY: every item is unlinked and retired once (the `retire` contract); the
            // garbage box is fresh, and `bury` is its reclaimer.
            unsafe { self.inner.defer_retire(garbage, bury) };
        }

        pub(crate) fn flush(&self) {
            self.seal();
            self.inner.flush();
            self.graveyard.free_all();
        }
    }

    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            if self.retired.get_mut().is_empty() {
                return;
            }
            self.seal();
            // Only writers retire, so only writers get here: free what readers buried.
            self.graveyard.free_all();
        }
    }
}

pub(crate) use scheme::{Domain, Guard};
