//! [`IngestSink`]: where the router side of the transport puts what it receives, and its
//! implementation for the core [`Router`].
//!
//! The ingest calls a sink from its per-rank tasks: events of one rank always in order and
//! never concurrently (different ranks may be applied concurrently). Event ids are
//! assigned by the transport from a process-wide increasing counter (see
//! `event_ids.rs`), so a sink that keeps the index's "skip ids not above the last" rule
//! can use them as they come.
//!
//! For the `Router`, `replace_rank` is `Router::replace_rank` (the dump is built into a
//! hidden rank and swapped in, so decisions see the old blocks or the new ones), and
//! `remove_rank` replaces the rank with nothing in every tier.

use kvroute_core::event::{KvEvent, KvEventData};
use kvroute_core::route::{Router, StorageTier};
use kvroute_core::RankKey;

/// The receiving end of the KV event transport (a router's index).
pub trait IngestSink: Send + Sync + 'static {
    /// Applies one event of `event.rank` to `tier`.
    fn apply(&self, tier: StorageTier, event: &KvEvent);
    /// Replaces the rank's blocks in `tier` with `events` (a full dump), atomically for
    /// lookups: a lookup sees the old blocks or the new ones, never a mix.
    fn replace_rank(&self, tier: StorageTier, rank: RankKey, events: &[KvEventData]);
    /// The rank's publisher is gone for longer than the grace period: forget its blocks.
    fn remove_rank(&self, rank: RankKey);
}

impl IngestSink for Router {
    fn apply(&self, tier: StorageTier, event: &KvEvent) {
        self.apply_event_in(tier, event);
    }

    fn replace_rank(&self, tier: StorageTier, rank: RankKey, events: &[KvEventData]) {
        // Events of ranks the router does not know are dropped like `apply` drops them
        // (the index counts those as `unknown_rank`).
        if let Err(error) = Router::replace_rank(self, tier, rank, events) {
            tracing::debug!(%rank, ?tier, %error, "dump not applied");
        }
    }

    /// Replaces the rank with nothing in every tier (an empty replacement of a tier that
    /// never held a block is a no-op, so lookups keep skipping unused tiers).
    fn remove_rank(&self, rank: RankKey) {
        for tier in StorageTier::ALL {
            IngestSink::replace_rank(self, tier, rank, &[]);
        }
    }
}
