//! [`IngestSink`]: where every ingest path (the QUIC transport's router side, the
//! engines' ZeroMQ subscriptions) puts what it receives. The core [`Router`] implements
//! it (in `route`); tests implement it with models.
//!
//! A sink is called from per-rank tasks: events of one rank always in order and never
//! concurrently (different ranks may be applied concurrently). Event ids come from
//! [`super::allocate_event_ids`], so a sink that keeps the index's "skip ids not above
//! the last" rule can use them as they come.
//!
//! [`Router`]: crate::route::Router

use crate::event::{DumpBlock, KvEvent};
use crate::ids::RankKey;
use crate::tier::StorageTier;

/// The receiving end of an ingest path (a router's index).
pub trait IngestSink: Send + Sync + 'static {
    /// Applies a batch of events (of any ranks, each rank's in order) to `tier`, under one
    /// writer-lock acquisition.
    fn apply_batch(&self, tier: StorageTier, events: &[KvEvent]);
    /// [`apply_batch`](Self::apply_batch) for events the sink may already hold: those a
    /// restored snapshot's blocks may reflect (after its cursor, up to its settled point).
    /// A sink that counts anomalies should not count the re-stores and re-removals these
    /// meet; by default they are applied as any batch.
    fn apply_replayed_batch(&self, tier: StorageTier, events: &[KvEvent]) {
        self.apply_batch(tier, events);
    }
    /// Replaces the rank's blocks in `tier` with a full dump, atomically for lookups: a
    /// lookup sees the old blocks or the new ones, never a mix. An empty dump empties it.
    fn replace_rank(&self, tier: StorageTier, rank: RankKey, dump: &[DumpBlock]);
    /// The rank's source is gone for good: forget its blocks in every tier.
    fn remove_rank(&self, rank: RankKey) {
        for tier in StorageTier::ALL {
            self.replace_rank(tier, rank, &[]);
        }
    }
}
