//! [`RankState`]: the blocks one rank holds in one tier, as the router's index would hold
//! them after applying the same events, and its [`dump`](RankState::dump) for subscribers
//! that cannot resume from the ring.
//!
//! Shape: a slab of *entries*, one per stored engine hash, each naming its parent entry and
//! its content hash, plus one map from held engine hash to entry. An entry's position in the
//! index is the path of content hashes up its parent links. It follows the index's rules
//! exactly (see `crate::reference`): a `Stored` whose parent the rank does not hold is
//! dropped whole; a stored engine hash the rank already holds stays where it is and the
//! chain continues from it.
//!
//! Removing a block whose entry still has children keeps the entry as a *ghost*: the
//! children's place in the tree depends on it. Entries are not merged by path: two
//! engine hashes stored at one path (copies), or a block stored where a ghost sits, get an
//! entry each, and the router's index merges them into one node when it replays them. So
//! `publish` costs one map probe per stored or removed block and no lookup by path; the
//! slab's free list hands the slots of evicted blocks to the next stores, which keeps the
//! slab's hot part small.
//!
//! A dump lists every entry, parents before children, depth first: each held one as its
//! block, each ghost as a placeholder block (a made-up engine hash, flagged) that the router
//! stores during the dump and removes at its end, so the replayed state equals this one
//! exactly, holes included.

use std::collections::hash_map::Entry;

use crate::event::DumpBlock;
use crate::event::{KvEventData, StoredBlock};
use crate::ids::{BlockHash, EngineHash};
use crate::index::prehashed::PrehashedMap;

/// Slot of an entry in [`RankState::entries`]. 32 bits keep a map entry at 16 bytes: the
/// publisher's `publish` probes the map once per block, so its cache footprint is its cost.
type Slot = u32;

/// `parent` of a first block.
const ROOT: Slot = Slot::MAX;

#[derive(Clone, Debug)]
struct BlockEntry {
    /// [`ROOT`] for a first block.
    parent: Slot,
    /// Entries whose parent this one is.
    children: u32,
    content: BlockHash,
    /// The engine hash stored here; `None` once removed (a ghost, kept for its children).
    held: Option<EngineHash>,
}

/// One rank's blocks in one tier. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct RankState {
    /// Slab of entries; `None` slots are free and listed in `free`.
    entries: Vec<Option<BlockEntry>>,
    free: Vec<Slot>,
    /// Held engine hash to its entry (ghosts are not here).
    blocks: PrehashedMap<EngineHash, Slot>,
}

impl RankState {
    pub fn new() -> Self {
        RankState::default()
    }

    /// Engine hashes held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn contains(&self, engine_hash: EngineHash) -> bool {
        self.blocks.contains_key(&engine_hash)
    }

    /// Content hash of a held block.
    pub fn content_hash(&self, engine_hash: EngineHash) -> Option<BlockHash> {
        let slot = *self.blocks.get(&engine_hash)?;
        self.entry(slot).map(|e| e.content)
    }

    /// Entries kept: held blocks and ghosts (removed blocks with entries below them).
    pub fn entry_count(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Applies one event, by the index's rules.
    pub fn apply(&mut self, data: &KvEventData) {
        match data {
            KvEventData::Stored { parent, blocks } => self.store(*parent, blocks),
            KvEventData::Removed { blocks } => {
                for hash in blocks {
                    if let Some(slot) = self.blocks.remove(hash) {
                        if let Some(entry) = self.entry_mut(slot) {
                            entry.held = None;
                        }
                        self.prune(slot);
                    }
                }
            }
            KvEventData::Cleared => *self = RankState::default(),
        }
    }

    /// Every held block, and a placeholder for every ghost, each after its parent; chains
    /// come out contiguous (depth first), so the router can replay runs of them as single
    /// `Stored` events. Deterministic for a given history: siblings in content-hash order,
    /// held ones by engine hash before ghosts by slot.
    pub fn dump(&self) -> Vec<DumpBlock> {
        let mut roots = Vec::new();
        let mut children: Vec<Vec<Slot>> = vec![Vec::new(); self.entries.len()];
        for (slot, entry) in (0..).zip(&self.entries) {
            let Some(entry) = entry else { continue };
            if entry.parent == ROOT {
                roots.push(slot);
            } else if let Some(list) = children.get_mut(entry.parent as usize) {
                list.push(slot);
            }
        }
        // Popped from the end of the stack: sorted last-first.
        let order = |slot: &Slot| {
            let key = self.entry(*slot).map(|e| (e.content, e.held.is_none(), e.held));
            std::cmp::Reverse((key, *slot))
        };
        let mut placeholders = PlaceholderHashes { next: u64::MAX, held: &self.blocks };
        let mut out = Vec::with_capacity(self.entry_count());
        // Depth first; each stack item carries the engine hash its parent got in the dump.
        roots.sort_unstable_by_key(order);
        let mut stack: Vec<(Slot, Option<EngineHash>)> = roots.into_iter().map(|s| (s, None)).collect();
        while let Some((slot, parent)) = stack.pop() {
            let Some(entry) = self.entry(slot) else { continue };
            let (engine_hash, placeholder) = match entry.held {
                Some(hash) => (hash, false),
                None => (placeholders.next_hash(), true),
            };
            let block = StoredBlock { engine_hash, content_hash: entry.content };
            out.push(DumpBlock { parent, block, placeholder });
            if let Some(list) = children.get_mut(slot as usize) {
                list.sort_unstable_by_key(order);
                stack.extend(list.drain(..).map(|child| (child, Some(engine_hash))));
            }
        }
        out
    }

    /// Every held engine hash with its position's path of content hashes, sorted: two
    /// states with equal `paths()` answer every lookup alike and react alike to any event.
    #[cfg(test)]
    pub(crate) fn paths(&self) -> Vec<(EngineHash, Vec<BlockHash>)> {
        let mut out: Vec<_> = self
            .blocks
            .iter()
            .map(|(&hash, &slot)| {
                let mut path = Vec::new();
                let mut at = slot;
                while let Some(entry) = self.entry(at) {
                    path.push(entry.content);
                    at = entry.parent;
                }
                path.reverse();
                (hash, path)
            })
            .collect();
        out.sort_unstable();
        out
    }

    fn entry(&self, slot: Slot) -> Option<&BlockEntry> {
        self.entries.get(slot as usize).and_then(Option::as_ref)
    }

    fn entry_mut(&mut self, slot: Slot) -> Option<&mut BlockEntry> {
        self.entries.get_mut(slot as usize).and_then(Option::as_mut)
    }

    fn store(&mut self, parent: Option<EngineHash>, blocks: &[StoredBlock]) {
        let mut at = match parent {
            None => ROOT,
            Some(parent) => match self.blocks.get(&parent) {
                Some(&slot) => slot,
                None => return,
            },
        };
        for block in blocks {
            // One probe per block: a held engine hash continues the chain from where it
            // sits; a new one gets an entry below `at`.
            let vacant = match self.blocks.entry(block.engine_hash) {
                Entry::Occupied(held) => {
                    at = *held.get();
                    continue;
                }
                Entry::Vacant(vacant) => vacant,
            };
            let entry =
                BlockEntry { parent: at, children: 0, content: block.content_hash, held: Some(block.engine_hash) };
            let slot = match self.free.pop() {
                Some(slot) => {
                    if let Some(free) = self.entries.get_mut(slot as usize) {
                        *free = Some(entry);
                    }
                    slot
                }
                None => match Slot::try_from(self.entries.len()).ok().filter(|&s| s != ROOT) {
                    Some(slot) => {
                        self.entries.push(Some(entry));
                        slot
                    }
                    // Past 2^32 - 1 entries (about 100 GB of them): the rest is not kept.
                    None => return,
                },
            };
            vacant.insert(slot);
            if let Some(parent) = self.entry_mut(at) {
                parent.children += 1;
            }
            at = slot;
        }
    }

    /// Frees `slot` if it is a ghost with no children, then its parent likewise.
    fn prune(&mut self, slot: Slot) {
        let mut at = slot;
        while let Some(entry) = self.entry(at) {
            if entry.held.is_some() || entry.children > 0 {
                return;
            }
            let parent = entry.parent;
            if let Some(free) = self.entries.get_mut(at as usize) {
                *free = None;
            }
            self.free.push(at);
            if let Some(parent) = self.entry_mut(parent) {
                parent.children = parent.children.saturating_sub(1);
            }
            at = parent;
        }
    }
}

/// Made-up engine hashes for ghosts: counting down from `u64::MAX`, skipping any the rank
/// holds (at most `held.len()` skips in all).
struct PlaceholderHashes<'a> {
    next: u64,
    held: &'a PrehashedMap<EngineHash, Slot>,
}

impl PlaceholderHashes<'_> {
    fn next_hash(&mut self) -> EngineHash {
        loop {
            let hash = EngineHash(self.next);
            self.next = self.next.wrapping_sub(1);
            if !self.held.contains_key(&hash) {
                return hash;
            }
        }
    }
}
