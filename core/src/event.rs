//! KV-cache events as the index consumes them, one stream per (worker, dp_rank).
//!
//! An engine reports three things about a rank's cache: blocks were stored (appended
//! under a parent block, or at the root), blocks were removed, or everything was cleared.
//! Each event carries the rank it belongs to and an event id that increases by one per
//! event of that rank; the index applies a rank's events in id order and skips an event
//! whose id is not above the last one applied (a duplicate or a replay).

use crate::ids::{BlockHash, EngineHash, RankKey};

/// One stored block: the engine's hash (for later `parent` and `Removed` references)
/// and the content hash the router computes from tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StoredBlock {
    pub engine_hash: EngineHash,
    pub content_hash: BlockHash,
}

/// What happened to a rank's cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvEventData {
    /// `blocks` were stored as a chain: the first under `parent` (or at the root when
    /// `None`), each next one under the previous.
    Stored { parent: Option<EngineHash>, blocks: Vec<StoredBlock> },
    /// The blocks with these engine hashes were evicted.
    Removed { blocks: Vec<EngineHash> },
    /// Every block of the rank was dropped.
    Cleared,
}

/// An event of one rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEvent {
    pub rank: RankKey,
    /// Strictly increasing per rank (not necessarily contiguous for the index).
    pub event_id: u64,
    pub data: KvEventData,
}

impl KvEvent {
    /// Number of block hashes the event carries (the unit of "block ops").
    pub fn block_count(&self) -> usize {
        match &self.data {
            KvEventData::Stored { blocks, .. } => blocks.len(),
            KvEventData::Removed { blocks } => blocks.len(),
            KvEventData::Cleared => 0,
        }
    }
}

/// One block of a dump: replayed as `Stored { parent, blocks: [block] }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DumpBlock {
    pub parent: Option<EngineHash>,
    pub block: StoredBlock,
    /// The rank does not hold this block; it stands for a removed block whose descendants
    /// the rank still holds, so that they can be placed. Stored during the dump and
    /// removed at its end. Its engine hash is made up by the publisher.
    pub placeholder: bool,
}

/// A dump cut into runs, each a chain under its first block's parent (every next block's
/// parent is the block before), in dump order. A dump lists chains depth first, so most
/// runs are whole chains. Placeholders are included (see [`dump_placeholders`]).
pub fn dump_runs(
    blocks: &[DumpBlock],
) -> impl Iterator<Item = (Option<EngineHash>, impl Iterator<Item = StoredBlock> + '_)> + '_ {
    let mut rest = blocks;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let len = 1 + rest.windows(2).take_while(|w| w[1].parent == Some(w[0].block.engine_hash)).count();
        let (run, tail) = rest.split_at(len);
        rest = tail;
        Some((first.parent, run.iter().map(|b| b.block)))
    })
}

/// The engine hashes of a dump's placeholder blocks: removed once the dump is stored.
pub fn dump_placeholders(blocks: &[DumpBlock]) -> Vec<EngineHash> {
    blocks.iter().filter(|b| b.placeholder).map(|b| b.block.engine_hash).collect()
}

/// A dump as the plain events that rebuild it on an empty rank: one `Stored` per run,
/// then one `Removed` of the placeholders (for models and tests that take events).
pub fn dump_events(blocks: &[DumpBlock]) -> Vec<KvEventData> {
    let mut events: Vec<KvEventData> =
        dump_runs(blocks).map(|(parent, run)| KvEventData::Stored { parent, blocks: run.collect() }).collect();
    let placeholders = dump_placeholders(blocks);
    if !placeholders.is_empty() {
        events.push(KvEventData::Removed { blocks: placeholders });
    }
    events
}
