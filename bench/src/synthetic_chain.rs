//! Synthetic stored chains for the criterion benches: engine hashes chained along the
//! content hashes, so that each position has its own engine hash, as an engine's would.

use kvroute_core::{BlockHash, EngineHash, StoredBlock};

/// The blocks of a `Stored` event for `chain`, engine hashes seeded by `salt`.
pub fn stored_chain(chain: &[BlockHash], salt: u64) -> Vec<StoredBlock> {
    let mut prev = salt;
    chain
        .iter()
        .map(|c| {
            prev = (prev ^ c.0).wrapping_mul(0xff51_afd7_ed55_8ccd).rotate_left(29);
            StoredBlock { engine_hash: EngineHash(prev), content_hash: *c }
        })
        .collect()
}
