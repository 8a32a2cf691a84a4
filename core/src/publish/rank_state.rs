//! [`RankState`]: the blocks one rank holds in one tier, as the router's index would hold
//! them after applying the same events, and its [`dump`](RankState::dump) for subscribers
//! that cannot resume from the ring.
//!
//! It follows the index's rules exactly (see `crate::reference`): a block sits at a
//! *position*, the path of content hashes from the root; a `Stored` whose parent the rank
//! does not hold is dropped whole; a stored engine hash the rank already holds stays where
//! it is and the chain continues from it; two engine hashes may share a position (copies).
//!
//! Removing a block whose descendants are still held keeps its position as a *ghost*: the
//! descendants' place in the tree depends on it. A dump lists every held block, parents
//! before children, and stands in for each ghost with a placeholder block (a made-up engine
//! hash, flagged) that the router stores during the dump and removes at its end, so the
//! replayed state equals this one exactly, holes included.

use std::collections::hash_map::Entry;
use std::hash::{Hash, Hasher};

use crate::event::{KvEventData, StoredBlock};
use crate::ids::{BlockHash, EngineHash};
use crate::index::prehashed::PrehashedMap;
use crate::wire::DumpBlock;

/// Slot of a position in [`RankState::positions`]. 32 bits keep a position at 24 bytes
/// and a map entry at 16: the publisher's `publish` walks these per block, so their
/// cache footprint is its cost.
type PositionSlot = u32;

/// `parent` of a root position.
const ROOT: PositionSlot = PositionSlot::MAX;

#[derive(Clone, Debug)]
struct Position {
    /// [`ROOT`] for a first block.
    parent: PositionSlot,
    /// Engine hashes of the rank at this position (0: a ghost, kept for its children).
    holders: u32,
    content: BlockHash,
    /// Positions directly below this one.
    children: u32,
}

/// A position's identity: its parent and its content hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PathKey {
    parent: PositionSlot,
    content: BlockHash,
}

impl Hash for PathKey {
    /// One word for the map's one-multiply hasher: content hashes are already uniform,
    /// and the parent slot is spread over the high bits so that siblings differ too.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.content.0 ^ u64::from(self.parent).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
}

/// One rank's blocks in one tier. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct RankState {
    /// Slab of positions; `None` slots are free and listed in `free`.
    positions: Vec<Option<Position>>,
    free: Vec<PositionSlot>,
    by_path: PrehashedMap<PathKey, PositionSlot>,
    blocks: PrehashedMap<EngineHash, PositionSlot>,
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
        self.position(slot).map(|p| p.content)
    }

    /// Positions kept: held ones and ghosts (removed blocks with held descendants).
    pub fn position_count(&self) -> usize {
        self.by_path.len()
    }

    /// Applies one event, by the index's rules.
    pub fn apply(&mut self, data: &KvEventData) {
        match data {
            KvEventData::Stored { parent, blocks } => self.store(*parent, blocks),
            KvEventData::Removed { blocks } => {
                for hash in blocks {
                    if let Some(slot) = self.blocks.remove(hash) {
                        if let Some(position) = self.position_mut(slot) {
                            position.holders = position.holders.saturating_sub(1);
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
    /// `Stored` events. Deterministic: children in content-hash order, copies in
    /// engine-hash order.
    pub fn dump(&self) -> Vec<DumpBlock> {
        let mut held_at: Vec<Vec<EngineHash>> = vec![Vec::new(); self.positions.len()];
        for (&hash, &slot) in &self.blocks {
            if let Some(list) = held_at.get_mut(slot as usize) {
                list.push(hash);
            }
        }
        let mut roots = Vec::new();
        let mut children: Vec<Vec<(BlockHash, PositionSlot)>> = vec![Vec::new(); self.positions.len()];
        for (&PathKey { parent, content }, &slot) in &self.by_path {
            if parent == ROOT {
                roots.push((content, slot));
            } else if let Some(list) = children.get_mut(parent as usize) {
                list.push((content, slot));
            }
        }
        let mut placeholders = PlaceholderHashes { next: u64::MAX, held: &self.blocks };
        let mut out = Vec::with_capacity(self.blocks.len());
        // Depth first; each entry carries the engine hash its parent position got in the dump.
        roots.sort_unstable_by_key(|&(content, _)| std::cmp::Reverse(content));
        let mut stack: Vec<(PositionSlot, Option<EngineHash>)> = roots.into_iter().map(|(_, s)| (s, None)).collect();
        while let Some((slot, parent)) = stack.pop() {
            let Some(position) = self.position(slot) else { continue };
            let hashes = held_at.get_mut(slot as usize).map(std::mem::take).unwrap_or_default();
            let stands_for = if hashes.is_empty() {
                let hash = placeholders.next_hash();
                let block = StoredBlock { engine_hash: hash, content_hash: position.content };
                out.push(DumpBlock { parent, block, placeholder: true });
                hash
            } else {
                let mut hashes = hashes;
                hashes.sort_unstable();
                for &hash in &hashes {
                    let block = StoredBlock { engine_hash: hash, content_hash: position.content };
                    out.push(DumpBlock { parent, block, placeholder: false });
                }
                // The last one, so that a child right after it continues the same run.
                hashes.last().copied().unwrap_or(EngineHash(0))
            };
            if let Some(list) = children.get_mut(slot as usize) {
                list.sort_unstable_by_key(|&(content, _)| std::cmp::Reverse(content));
                stack.extend(list.drain(..).map(|(_, child)| (child, Some(stands_for))));
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
                while let Some(position) = self.position(at) {
                    path.push(position.content);
                    at = position.parent;
                }
                path.reverse();
                (hash, path)
            })
            .collect();
        out.sort_unstable();
        out
    }

    fn position(&self, slot: PositionSlot) -> Option<&Position> {
        self.positions.get(slot as usize).and_then(Option::as_ref)
    }

    fn position_mut(&mut self, slot: PositionSlot) -> Option<&mut Position> {
        self.positions.get_mut(slot as usize).and_then(Option::as_mut)
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
            // sits; a new one is placed below `at`.
            let vacant = match self.blocks.entry(block.engine_hash) {
                Entry::Occupied(held) => {
                    at = *held.get();
                    continue;
                }
                Entry::Vacant(vacant) => vacant,
            };
            let Some(slot) =
                Self::position_below(&mut self.positions, &mut self.free, &mut self.by_path, at, block.content_hash)
            else {
                // Past 2^32 - 1 positions (about 100 GB of them): the rest is not kept.
                return;
            };
            vacant.insert(slot);
            if let Some(Some(position)) = self.positions.get_mut(slot as usize) {
                position.holders += 1;
            }
            at = slot;
        }
    }

    /// The position `content` below `parent` ([`ROOT`] for none), created if new; `None`
    /// only when the slab is out of slot numbers.
    fn position_below(
        positions: &mut Vec<Option<Position>>,
        free: &mut Vec<PositionSlot>,
        by_path: &mut PrehashedMap<PathKey, PositionSlot>,
        parent: PositionSlot,
        content: BlockHash,
    ) -> Option<PositionSlot> {
        let vacant = match by_path.entry(PathKey { parent, content }) {
            Entry::Occupied(existing) => return Some(*existing.get()),
            Entry::Vacant(vacant) => vacant,
        };
        let position = Position { parent, content, holders: 0, children: 0 };
        let slot = match free.pop() {
            Some(slot) => {
                if let Some(free) = positions.get_mut(slot as usize) {
                    *free = Some(position);
                }
                slot
            }
            None => {
                let slot = PositionSlot::try_from(positions.len()).ok().filter(|&s| s != ROOT)?;
                positions.push(Some(position));
                slot
            }
        };
        vacant.insert(slot);
        if let Some(Some(parent)) = positions.get_mut(parent as usize) {
            parent.children += 1;
        }
        Some(slot)
    }

    /// Drops `slot` if nothing holds it and nothing hangs below it, then its parent likewise.
    fn prune(&mut self, slot: PositionSlot) {
        let mut at = slot;
        while let Some(position) = self.position(at) {
            if position.holders > 0 || position.children > 0 {
                return;
            }
            let (parent, content) = (position.parent, position.content);
            self.by_path.remove(&PathKey { parent, content });
            if let Some(free) = self.positions.get_mut(at as usize) {
                *free = None;
            }
            self.free.push(at);
            if let Some(parent) = self.position_mut(parent) {
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
    held: &'a PrehashedMap<EngineHash, PositionSlot>,
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
