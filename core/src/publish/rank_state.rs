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

use crate::event::{KvEventData, StoredBlock};
use crate::ids::{BlockHash, EngineHash};
use crate::index::prehashed::PrehashedMap;
use crate::wire::DumpBlock;

/// Slot of a position in [`RankState::positions`].
type PositionSlot = usize;

#[derive(Clone, Debug)]
struct Position {
    parent: Option<PositionSlot>,
    content: BlockHash,
    /// Engine hashes of the rank at this position (0: a ghost, kept for its children).
    holders: usize,
    /// Positions directly below this one.
    children: usize,
}

/// One rank's blocks in one tier. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct RankState {
    /// Slab of positions; `None` slots are free and listed in `free`.
    positions: Vec<Option<Position>>,
    free: Vec<PositionSlot>,
    by_path: PrehashedMap<(Option<PositionSlot>, BlockHash), PositionSlot>,
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
            if let Some(list) = held_at.get_mut(slot) {
                list.push(hash);
            }
        }
        let mut roots = Vec::new();
        let mut children: Vec<Vec<(BlockHash, PositionSlot)>> = vec![Vec::new(); self.positions.len()];
        for (&(parent, content), &slot) in &self.by_path {
            match parent {
                None => roots.push((content, slot)),
                Some(parent) => {
                    if let Some(list) = children.get_mut(parent) {
                        list.push((content, slot));
                    }
                }
            }
        }
        let mut placeholders = PlaceholderHashes { next: u64::MAX, held: &self.blocks };
        let mut out = Vec::with_capacity(self.blocks.len());
        // Depth first; each entry carries the engine hash its parent position got in the dump.
        roots.sort_unstable_by_key(|&(content, _)| std::cmp::Reverse(content));
        let mut stack: Vec<(PositionSlot, Option<EngineHash>)> = roots.into_iter().map(|(_, s)| (s, None)).collect();
        while let Some((slot, parent)) = stack.pop() {
            let Some(position) = self.position(slot) else { continue };
            let hashes = held_at.get_mut(slot).map(std::mem::take).unwrap_or_default();
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
            if let Some(list) = children.get_mut(slot) {
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
                let mut at = Some(slot);
                while let Some(position) = at.and_then(|s| self.position(s)) {
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
        self.positions.get(slot).and_then(Option::as_ref)
    }

    fn position_mut(&mut self, slot: PositionSlot) -> Option<&mut Position> {
        self.positions.get_mut(slot).and_then(Option::as_mut)
    }

    fn store(&mut self, parent: Option<EngineHash>, blocks: &[StoredBlock]) {
        let mut at = match parent {
            None => None,
            Some(parent) => match self.blocks.get(&parent) {
                Some(&slot) => Some(slot),
                None => return,
            },
        };
        for block in blocks {
            if let Some(&slot) = self.blocks.get(&block.engine_hash) {
                at = Some(slot);
                continue;
            }
            let slot = self.position_below(at, block.content_hash);
            if let Some(position) = self.position_mut(slot) {
                position.holders += 1;
            }
            self.blocks.insert(block.engine_hash, slot);
            at = Some(slot);
        }
    }

    /// The position `content` below `parent` (the root when `None`), created if new.
    fn position_below(&mut self, parent: Option<PositionSlot>, content: BlockHash) -> PositionSlot {
        if let Some(&slot) = self.by_path.get(&(parent, content)) {
            return slot;
        }
        let position = Position { parent, content, holders: 0, children: 0 };
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(free) = self.positions.get_mut(slot) {
                    *free = Some(position);
                }
                slot
            }
            None => {
                self.positions.push(Some(position));
                self.positions.len() - 1
            }
        };
        self.by_path.insert((parent, content), slot);
        if let Some(parent) = parent.and_then(|p| self.position_mut(p)) {
            parent.children += 1;
        }
        slot
    }

    /// Drops `slot` if nothing holds it and nothing hangs below it, then its parent likewise.
    fn prune(&mut self, slot: PositionSlot) {
        let mut at = Some(slot);
        while let Some(slot) = at {
            let Some(position) = self.position(slot) else { return };
            if position.holders > 0 || position.children > 0 {
                return;
            }
            let (parent, content) = (position.parent, position.content);
            self.by_path.remove(&(parent, content));
            if let Some(free) = self.positions.get_mut(slot) {
                *free = None;
            }
            self.free.push(slot);
            if let Some(parent) = parent.and_then(|p| self.position_mut(p)) {
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
