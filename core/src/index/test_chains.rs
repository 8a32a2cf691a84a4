//! Test support shared by the index's property tests (`tests`, `export`): chains of
//! blocks whose engine hashes follow the chain, as an engine's do (the same content path
//! gives the same hash on every rank), and the bookkeeping of what each rank was told to
//! hold, from which the tests draw parents, removals and lookups.

use std::collections::HashMap;

use crate::event::StoredBlock;
use crate::ids::{BlockHash, EngineHash, RankKey};

/// A cheap 64-bit mix of two values (the tests' stand-in for an engine's chained hash).
pub(super) fn mix(a: u64, b: u64) -> u64 {
    let x = (a ^ b.rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

/// The blocks of a chain of `contents` (content hash `c + 100`) under `parent`: each
/// engine hash is `mix(previous engine hash, content)` unless `odd(i, content, previous)`
/// names another (a copy under an odd hash, a duplicate of a held one...).
pub(super) fn chain(
    parent: Option<EngineHash>,
    contents: &[u8],
    mut odd: impl FnMut(usize, BlockHash, u64) -> Option<EngineHash>,
) -> Vec<StoredBlock> {
    let mut prev = parent.map_or(0, |p| p.0);
    let mut blocks = Vec::with_capacity(contents.len());
    for (i, &c) in contents.iter().enumerate() {
        let content = BlockHash(u64::from(c) + 100);
        let engine = odd(i, content, prev).unwrap_or(EngineHash(mix(prev, content.0)));
        blocks.push(StoredBlock { engine_hash: engine, content_hash: content });
        prev = engine.0;
    }
    blocks
}

/// What each rank was told to store: the content path of each of its engine hashes, and
/// the engine hashes it holds (in store order, for picking).
#[derive(Default)]
pub(super) struct HeldChains {
    pub(super) paths: HashMap<(RankKey, EngineHash), Vec<BlockHash>>,
    held: HashMap<RankKey, Vec<EngineHash>>,
}

impl HeldChains {
    /// The engine hashes `rank` holds.
    pub(super) fn held(&self, rank: RankKey) -> Vec<EngineHash> {
        self.held.get(&rank).cloned().unwrap_or_default()
    }

    /// Records a store `rank` accepted, and pushes each block's content path (a lookup
    /// that should find it) to `probes`. A block already held keeps its path.
    pub(super) fn record_store(
        &mut self,
        rank: RankKey,
        parent: Option<EngineHash>,
        blocks: &[StoredBlock],
        probes: &mut Vec<Vec<BlockHash>>,
    ) {
        let mut path = parent.and_then(|p| self.paths.get(&(rank, p)).cloned()).unwrap_or_default();
        for b in blocks {
            if let Some(existing) = self.paths.get(&(rank, b.engine_hash)) {
                path = existing.clone();
            } else {
                path.push(b.content_hash);
                self.paths.insert((rank, b.engine_hash), path.clone());
                self.held.entry(rank).or_default().push(b.engine_hash);
            }
            probes.push(path.clone());
        }
    }

    /// Forgets and returns the held hashes `picks` points at (one per pick while any is
    /// left): the blocks of a removal.
    pub(super) fn take(&mut self, rank: RankKey, picks: &[usize]) -> Vec<EngineHash> {
        let held = self.held.entry(rank).or_default();
        let mut gone = Vec::new();
        for &p in picks {
            if !held.is_empty() {
                gone.push(held.swap_remove(p % held.len()));
            }
        }
        for g in &gone {
            self.paths.remove(&(rank, *g));
        }
        gone
    }

    /// Forgets everything `rank` held (a clear, or the rank going away).
    pub(super) fn forget_rank(&mut self, rank: RankKey) {
        self.held.remove(&rank);
        self.paths.retain(|(k, _), _| *k != rank);
    }
}
