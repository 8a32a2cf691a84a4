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
    pub(crate) keys: Box<[Option<RankKey>]>,
    /// Holder words needed to cover every id in `keys`.
    pub(crate) words: usize,
}

impl RankTable {
    pub(crate) fn new(keys: Box<[Option<RankKey>]>) -> Box<RankTable> {
        let words = keys.len().div_ceil(64);
        Box::new(RankTable { keys, words })
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
