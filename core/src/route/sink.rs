//! The [`Router`] as an [`IngestSink`]: what every ingest path calls.
//!
//! `apply_batch` is [`Router::apply_events_in`] (one index writer-lock acquisition per
//! batch); `replace_rank` is [`Router::replace_rank`] over the dump's runs (built into a
//! hidden rank and swapped in, so decisions see the old blocks or the new ones); the
//! default `remove_rank` replaces the rank with nothing in every tier (an empty
//! replacement of a tier that never held a block is a no-op, so lookups keep skipping
//! unused tiers). Dumps of ranks the router does not know are dropped like events of
//! such ranks are (the index counts those as `unknown_rank`).

use super::router::Router;
use crate::event::{dump_placeholders, dump_runs, DumpBlock, KvEvent};
use crate::ids::RankKey;
use crate::ingest::IngestSink;
use crate::tier::StorageTier;

impl IngestSink for Router {
    fn apply_batch(&self, tier: StorageTier, events: &[KvEvent]) {
        self.apply_events_in(tier, events);
    }

    fn apply_replayed_batch(&self, tier: StorageTier, events: &[KvEvent]) {
        self.apply_replayed_events_in(tier, events);
    }

    fn replace_rank(&self, tier: StorageTier, rank: RankKey, dump: &[DumpBlock]) {
        let placeholders = dump_placeholders(dump);
        // An error means the rank's worker is not (or no longer) registered: the dump is
        // dropped, as its events would be (see the module docs).
        let _ = Router::replace_rank(self, tier, rank, dump.len(), dump_runs(dump), &placeholders);
    }
}
