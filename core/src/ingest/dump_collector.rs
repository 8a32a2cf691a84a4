//! [`DumpCollector`]: the blocks of one dump as they arrive (`DumpBlocks` chunks, any
//! tier), bounded, handed to the sink tier by tier at `DumpEnd` so that lookups never see
//! a half-replayed rank.

use crate::event::DumpBlock;
use crate::tier::StorageTier;

/// A dump went past the collector's bound: the stream should be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpTooLarge {
    pub max_blocks: u64,
}

impl std::fmt::Display for DumpTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dump larger than {} blocks", self.max_blocks)
    }
}

impl std::error::Error for DumpTooLarge {}

/// A dump being received, per tier, at most `max_blocks` blocks in all.
#[derive(Clone, Debug)]
pub struct DumpCollector {
    blocks: [Vec<DumpBlock>; 3],
    received: u64,
    max_blocks: u64,
}

impl DumpCollector {
    pub fn new(max_blocks: u64) -> Self {
        DumpCollector { blocks: Default::default(), received: 0, max_blocks }
    }

    /// Adds a chunk of `tier`'s blocks.
    pub fn add(&mut self, tier: StorageTier, chunk: &[DumpBlock]) -> Result<(), DumpTooLarge> {
        self.received = self.received.saturating_add(chunk.len() as u64);
        if self.received > self.max_blocks {
            return Err(DumpTooLarge { max_blocks: self.max_blocks });
        }
        self.blocks[tier.index()].extend_from_slice(chunk);
        Ok(())
    }

    /// Blocks received so far, every tier.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The dump's blocks, per tier in [`StorageTier::ALL`] order.
    pub fn finish(self) -> [Vec<DumpBlock>; 3] {
        self.blocks
    }
}
