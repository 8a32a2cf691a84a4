//! [`DumpReplay`]: turns the blocks of a dump into the events that rebuild the rank's
//! state in the router's index.

use crate::event::DumpBlock;
use crate::event::{KvEventData, StoredBlock};
use crate::ids::EngineHash;
use crate::tier::StorageTier;

/// Replay of one dump, from `DumpBegin` to `DumpEnd`. The caller applies `Cleared` to
/// every tier of the rank at `DumpBegin`, the events of [`stored_events`] for each
/// `DumpBlocks` chunk, and those of [`finish`] at `DumpEnd`.
///
/// [`stored_events`]: DumpReplay::stored_events
/// [`finish`]: DumpReplay::finish
#[derive(Clone, Debug, Default)]
pub struct DumpReplay {
    /// Placeholder engine hashes stored so far, per tier: removed at the end.
    placeholders: [Vec<EngineHash>; 3],
}

impl DumpReplay {
    pub fn new() -> Self {
        DumpReplay::default()
    }

    /// The `Stored` events that replay a chunk of dump blocks of `tier`, in order. Each run
    /// of blocks whose parent is the block just before becomes one event (a dump lists
    /// chains depth first, so most runs are whole chains).
    pub fn stored_events(&mut self, tier: StorageTier, blocks: &[DumpBlock]) -> Vec<KvEventData> {
        let mut events = Vec::new();
        let mut run: Option<(Option<EngineHash>, Vec<StoredBlock>)> = None;
        for dump_block in blocks {
            if dump_block.placeholder {
                self.placeholders[tier.index()].push(dump_block.block.engine_hash);
            }
            if let Some((_, chain)) = &mut run {
                if chain.last().map(|b| b.engine_hash) == dump_block.parent {
                    chain.push(dump_block.block);
                    continue;
                }
            }
            if let Some((parent, chain)) = run.take() {
                events.push(KvEventData::Stored { parent, blocks: chain });
            }
            run = Some((dump_block.parent, vec![dump_block.block]));
        }
        if let Some((parent, chain)) = run {
            events.push(KvEventData::Stored { parent, blocks: chain });
        }
        events
    }

    /// The events that complete the dump: the placeholders' removal, per tier.
    pub fn finish(self) -> Vec<(StorageTier, KvEventData)> {
        StorageTier::ALL
            .into_iter()
            .zip(self.placeholders)
            .filter(|(_, hashes)| !hashes.is_empty())
            .map(|(tier, blocks)| (tier, KvEventData::Removed { blocks }))
            .collect()
    }
}
