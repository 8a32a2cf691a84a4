//! [`RankPublisher`]: everything a publisher keeps for one rank: the sequence counter, the
//! ring of recent deltas and the rank's blocks per tier, and the answer to a `Subscribe`.

use super::rank_state::RankState;
use super::ring::{Delta, DeltaRing};
use crate::event::DumpBlock;
use crate::event::KvEventData;
use crate::ids::RankKey;
use crate::tier::StorageTier;

/// Publisher settings. `PublisherConfig::default()` is a working configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublisherConfig {
    /// Deltas the ring keeps for resuming subscribers. Default 16384.
    pub ring_max_entries: usize,
    /// Blocks the ring's deltas may carry in all. Default 1 Mi (~16 MiB of block hashes).
    pub ring_max_blocks: usize,
    /// Longest `Stored` / `Removed` kept as one delta; longer events are split into
    /// several consecutive deltas with the same effect. Default 16384, so that any delta
    /// fits a 1 MiB frame (16 bytes per block). At least 1.
    pub max_event_blocks: usize,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig { ring_max_entries: 16 << 10, ring_max_blocks: 1 << 20, max_event_blocks: 16 << 10 }
    }
}

/// A rank's whole block set as of a sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankDump {
    /// Every delta up to and including this one is reflected.
    pub as_of_seq: u64,
    /// One entry per tier holding anything, blocks parents first.
    pub tiers: Vec<TierDump>,
}

impl RankDump {
    /// Dump blocks in all tiers, placeholders included (what `DumpEnd` announces).
    pub fn block_count(&self) -> u64 {
        self.tiers.iter().map(|t| t.blocks.len() as u64).sum()
    }
}

/// The dump of one tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierDump {
    pub tier: StorageTier,
    pub blocks: Vec<DumpBlock>,
}

/// The answer to a `Subscribe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscribeReply {
    /// The deltas after the subscriber's `resume_after`, oldest first (possibly none).
    Resume(Vec<Delta>),
    /// The ring no longer covers the subscriber (or it asked for a dump): the whole block
    /// set, then live deltas after `as_of_seq`.
    Dump(RankDump),
}

/// Publisher state of one rank. See the module docs of [`crate::publish`].
#[derive(Clone, Debug)]
pub struct RankPublisher {
    rank: RankKey,
    max_event_blocks: usize,
    ring: DeltaRing,
    tiers: [RankState; 3],
}

impl RankPublisher {
    pub fn new(rank: RankKey, config: PublisherConfig) -> Self {
        RankPublisher {
            rank,
            max_event_blocks: config.max_event_blocks.max(1),
            ring: DeltaRing::new(config.ring_max_entries, config.ring_max_blocks),
            tiers: Default::default(),
        }
    }

    pub fn rank(&self) -> RankKey {
        self.rank
    }

    /// Publishes a device-tier event; see [`publish_in`](Self::publish_in).
    pub fn publish(&mut self, data: KvEventData) -> u64 {
        self.publish_in(StorageTier::Device, data)
    }

    /// Records an event of `tier` under the next sequence number and returns it. An event
    /// longer than `max_event_blocks` becomes several consecutive deltas (a `Stored` chain
    /// cut into runs, each under the last block of the previous), and the last one's
    /// sequence number is returned.
    pub fn publish_in(&mut self, tier: StorageTier, data: KvEventData) -> u64 {
        let max = self.max_event_blocks;
        match data {
            KvEventData::Stored { parent, blocks } if blocks.len() > max => {
                // A Stored under a parent the rank does not hold is dropped whole by the
                // index; its first run is dropped alike, the later runs must not be sent.
                let applies = parent.is_none_or(|p| self.state(tier).contains(p));
                let mut parent = parent;
                let mut seq = self.ring.last_seq();
                for run in blocks.chunks(max) {
                    seq = self.record(tier, KvEventData::Stored { parent, blocks: run.to_vec() });
                    if !applies {
                        break;
                    }
                    parent = run.last().map(|b| b.engine_hash);
                }
                seq
            }
            KvEventData::Removed { blocks } if blocks.len() > max => {
                let mut seq = self.ring.last_seq();
                for run in blocks.chunks(max) {
                    seq = self.record(tier, KvEventData::Removed { blocks: run.to_vec() });
                }
                seq
            }
            data => self.record(tier, data),
        }
    }

    /// Sequence number of the last delta (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.ring.last_seq()
    }

    /// The answer to `Subscribe { resume_after }`: the deltas after it when the ring still
    /// holds them all, else a dump.
    pub fn subscribe(&self, resume_after: Option<u64>) -> SubscribeReply {
        if let Some(deltas) = resume_after.and_then(|after| self.ring.deltas_after(after)) {
            return SubscribeReply::Resume(deltas.cloned().collect());
        }
        SubscribeReply::Dump(self.dump())
    }

    /// The rank's block set in every tier, as of the last delta.
    pub fn dump(&self) -> RankDump {
        let tiers = StorageTier::ALL
            .iter()
            .filter(|&&tier| self.state(tier).entry_count() > 0)
            .map(|&tier| TierDump { tier, blocks: self.state(tier).dump() })
            .collect();
        RankDump { as_of_seq: self.ring.last_seq(), tiers }
    }

    /// The rank's blocks in one tier.
    pub fn state(&self, tier: StorageTier) -> &RankState {
        &self.tiers[tier.index()]
    }

    pub fn ring(&self) -> &DeltaRing {
        &self.ring
    }

    fn record(&mut self, tier: StorageTier, data: KvEventData) -> u64 {
        self.tiers[tier.index()].apply(&data);
        self.ring.push(tier, data)
    }
}
