//! [`DeltaRing`]: the most recent events of one rank, numbered, for subscribers that
//! reconnect and want to resume where they were.

use std::collections::vec_deque::{self, VecDeque};

use crate::event::KvEventData;
use crate::tier::StorageTier;

/// One event of a rank as published: its sequence number, tier and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub seq: u64,
    pub tier: StorageTier,
    pub data: KvEventData,
}

/// Blocks an event carries, the unit of the ring's block bound.
pub(crate) fn event_blocks(data: &KvEventData) -> usize {
    match data {
        KvEventData::Stored { blocks, .. } => blocks.len(),
        KvEventData::Removed { blocks } => blocks.len(),
        KvEventData::Cleared => 0,
    }
}

/// A bounded ring of a rank's latest deltas. It numbers them itself, `1, 2, 3, ...`, so
/// the deltas it holds are always contiguous. The oldest are dropped once it holds more
/// than `max_entries` deltas or more than `max_blocks` blocks in all.
#[derive(Clone, Debug)]
pub struct DeltaRing {
    entries: VecDeque<Delta>,
    blocks: usize,
    max_entries: usize,
    max_blocks: usize,
    last_seq: u64,
}

impl DeltaRing {
    pub fn new(max_entries: usize, max_blocks: usize) -> Self {
        DeltaRing { entries: VecDeque::new(), blocks: 0, max_entries, max_blocks, last_seq: 0 }
    }

    /// Appends an event under the next sequence number, which it returns.
    pub fn push(&mut self, tier: StorageTier, data: KvEventData) -> u64 {
        // A u64 counted up by one per event does not wrap in practice; saturate regardless.
        self.last_seq = self.last_seq.saturating_add(1);
        self.blocks = self.blocks.saturating_add(event_blocks(&data));
        self.entries.push_back(Delta { seq: self.last_seq, tier, data });
        while self.entries.len() > self.max_entries || self.blocks > self.max_blocks {
            let Some(oldest) = self.entries.pop_front() else { break };
            self.blocks = self.blocks.saturating_sub(event_blocks(&oldest.data));
        }
        self.last_seq
    }

    /// Sequence number of the newest delta ever pushed (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Sequence number of the oldest delta still held.
    pub fn first_retained_seq(&self) -> Option<u64> {
        self.entries.front().map(|d| d.seq)
    }

    /// The deltas after `after`, oldest first: every delta from `after + 1` to
    /// [`last_seq`](Self::last_seq) (none when `after` is the last). `None` when the ring
    /// no longer holds `after + 1`, or `after` is past the last sequence number (a
    /// subscriber from another incarnation): such a subscriber needs a dump.
    pub fn deltas_after(&self, after: u64) -> Option<vec_deque::Iter<'_, Delta>> {
        if after > self.last_seq {
            return None;
        }
        if after == self.last_seq {
            return Some(self.entries.range(self.entries.len()..));
        }
        let first = self.first_retained_seq()?;
        let skip = after.checked_add(1)?.checked_sub(first)?;
        let skip = usize::try_from(skip).ok()?;
        (skip <= self.entries.len()).then(|| self.entries.range(skip..))
    }

    /// Deltas held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Blocks carried by the deltas held.
    pub fn blocks(&self) -> usize {
        self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StoredBlock;
    use crate::ids::{BlockHash, EngineHash};

    fn stored(n: usize) -> KvEventData {
        let blocks =
            (0..n as u64).map(|i| StoredBlock { engine_hash: EngineHash(i), content_hash: BlockHash(i) }).collect();
        KvEventData::Stored { parent: None, blocks }
    }

    fn seqs(ring: &DeltaRing, after: u64) -> Option<Vec<u64>> {
        ring.deltas_after(after).map(|it| it.map(|d| d.seq).collect())
    }

    #[test]
    fn numbers_from_one_and_resumes_after_any_held_seq() {
        let mut ring = DeltaRing::new(10, 100);
        assert_eq!(seqs(&ring, 0), Some(vec![]));
        assert_eq!(seqs(&ring, 1), None);
        for expected in 1..=3 {
            assert_eq!(ring.push(StorageTier::Device, KvEventData::Cleared), expected);
        }
        assert_eq!(seqs(&ring, 0), Some(vec![1, 2, 3]));
        assert_eq!(seqs(&ring, 2), Some(vec![3]));
        assert_eq!(seqs(&ring, 3), Some(vec![]));
        assert_eq!(seqs(&ring, 4), None);
        assert_eq!(seqs(&ring, u64::MAX), None);
    }

    #[test]
    fn drops_the_oldest_past_either_bound() {
        let mut ring = DeltaRing::new(3, 100);
        for _ in 0..5 {
            ring.push(StorageTier::Host, KvEventData::Cleared);
        }
        assert_eq!((ring.len(), ring.first_retained_seq()), (3, Some(3)));
        assert_eq!(seqs(&ring, 1), None);
        assert_eq!(seqs(&ring, 2), Some(vec![3, 4, 5]));

        let mut ring = DeltaRing::new(100, 10);
        ring.push(StorageTier::Device, stored(4));
        ring.push(StorageTier::Device, stored(4));
        assert_eq!(ring.blocks(), 8);
        ring.push(StorageTier::Device, stored(4));
        assert_eq!((ring.len(), ring.blocks(), ring.first_retained_seq()), (2, 8, Some(2)));
        // An event larger than the block bound leaves the ring empty but numbered.
        ring.push(StorageTier::Device, stored(11));
        assert!(ring.is_empty());
        assert_eq!((ring.last_seq(), ring.blocks()), (4, 0));
        assert_eq!(seqs(&ring, 3), None);
        assert_eq!(seqs(&ring, 4), Some(vec![]));
    }
}
