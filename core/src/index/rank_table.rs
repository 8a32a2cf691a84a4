//! The readers' view of which rank each dense rank id names.
//!
//! Registration is rare, so the table is copy-on-write: the writer builds a new
//! `RankTable`, publishes it with one pointer store and retires the old one. A lookup
//! loads the table once, so every score it reports names the rank that held the id when
//! the lookup started. A deregistered id is recycled only after a grace period
//! ([`IdReturn`] is retired through the reclamation scheme and hands the id back when it
//! is dropped), by which time no lookup that could still see the old key is running, and
//! the rank's bits were cleared from every node before that.

use std::sync::{Arc, Mutex};

use crate::ids::RankKey;

/// Most ranks one index can hold (the lookup keeps its live-rank bitset on the stack).
pub const MAX_RANKS: usize = 4096;
pub(crate) const MAX_WORDS: usize = MAX_RANKS / 64;

pub(crate) struct RankTable {
    /// The key of each id; an unregistered id holds a placeholder that `live` masks out.
    pub(crate) keys: Box<[RankKey]>,
    /// Bit `id` set iff `keys[id]` is registered. A lookup starts from this mask, so an id
    /// that is not registered in this table is never reported.
    pub(crate) live: Box<[u64]>,
    /// Holder words needed to cover every id in `keys` (`live.len()`).
    pub(crate) words: usize,
}

impl RankTable {
    pub(crate) fn new(slots: &[Option<RankKey>]) -> Box<RankTable> {
        let words = slots.len().div_ceil(64);
        let mut live = vec![0u64; words].into_boxed_slice();
        let placeholder = RankKey::new(0, 0);
        let keys = slots
            .iter()
            .enumerate()
            .map(|(id, slot)| match slot {
                Some(key) => {
                    live[id / 64] |= 1 << (id % 64);
                    *key
                }
                None => placeholder,
            })
            .collect();
        Box::new(RankTable { keys, live, words })
    }
}

/// Returns a rank id to the free pool when dropped (after the reclamation grace period).
pub(crate) struct IdReturn {
    pub(crate) pool: Arc<Mutex<Vec<u32>>>,
    pub(crate) id: u32,
}

impl Drop for IdReturn {
    fn drop(&mut self) {
        // A poisoned pool only means a panic elsewhere; the id list itself is still valid.
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.push(self.id);
    }
}
