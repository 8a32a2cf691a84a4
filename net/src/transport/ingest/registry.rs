//! [`Registry`]: the router's per-rank state ([`RankSlot`]) and who owns each rank.
//!
//! A rank is owned by the latest connection whose `Hello` announced it; each claim bumps
//! the slot's *generation*, and a rank task whose generation is no longer the slot's stops
//! at its next frame, so two subscriptions never feed one rank. When the owning connection
//! ends the rank is released (kept, unowned); a grace timer then removes it from the sink
//! unless it was claimed again meanwhile (the generation tells). Each slot has its own
//! mutex, taken per frame by the rank's task, never across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kvroute_core::ingest::{IngestSink, RankSession};
use kvroute_core::RankKey;

use super::config::RankCursorState;
use super::session::RankSlot;

/// Identifies one accepted connection.
pub(crate) type ConnId = u64;

/// A rank's slot, shared by the rank's task, the connection and the grace timer.
pub(crate) type SlotRef = Arc<Mutex<RankSlot>>;

pub(crate) fn lock(slot: &SlotRef) -> MutexGuard<'_, RankSlot> {
    // Slot updates complete before anything that can panic: poisoning is ignored.
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every rank the router has heard of. See the module docs.
#[derive(Default)]
pub(crate) struct Registry {
    slots: Mutex<HashMap<RankKey, SlotRef>>,
}

impl Registry {
    /// A registry starting from saved cursors (the ranks start unowned).
    pub(crate) fn with_cursors(cursors: &[RankCursorState]) -> Self {
        let registry = Registry::default();
        for saved in cursors {
            let settled = saved.settled_seq.max(saved.applied_seq);
            lock(&registry.slot(saved.rank)).session =
                RankSession::restored(saved.incarnation, saved.applied_seq, settled);
        }
        registry
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<RankKey, SlotRef>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot(&self, rank: RankKey) -> SlotRef {
        self.slots()
            .entry(rank)
            .or_insert_with(|| Arc::new(Mutex::new(RankSlot::new(rank, RankSession::new()))))
            .clone()
    }

    /// Connection `conn` (publisher incarnation `incarnation`) takes the rank over;
    /// returns the slot and the new generation.
    pub(crate) fn claim(&self, rank: RankKey, conn: ConnId, incarnation: u64) -> (SlotRef, u64) {
        loop {
            let slot = self.slot(rank);
            let generation = {
                let mut state = lock(&slot);
                if state.retired {
                    // Expired and taken out of the map after we found it: take the new one.
                    continue;
                }
                state.generation += 1;
                state.owner = Some(conn);
                state.session.on_hello(incarnation);
                state.generation
            };
            return (slot, generation);
        }
    }

    /// Connection `conn` ended: the rank is kept, unowned, if `conn` still owned it.
    /// Returns the generation a grace timer must find unchanged to remove it.
    pub(crate) fn release(&self, rank: RankKey, conn: ConnId) -> Option<u64> {
        let slot = self.slots().get(&rank).cloned()?;
        let mut state = lock(&slot);
        if state.owner != Some(conn) {
            return None;
        }
        state.owner = None;
        state.session.abandon_stream();
        Some(state.generation)
    }

    /// Ranks nobody owns, with their generations (restored ranks at start).
    pub(crate) fn unowned(&self) -> Vec<(RankKey, u64)> {
        let slots: Vec<SlotRef> = self.slots().values().cloned().collect();
        slots
            .iter()
            .filter_map(|slot| {
                let state = lock(slot);
                state.owner.is_none().then_some((state.rank, state.generation))
            })
            .collect()
    }

    /// One rank's position now (`None`: unknown or not synchronised).
    pub(crate) fn cursor_of(&self, rank: RankKey) -> Option<RankCursorState> {
        let slot = self.slots().get(&rank).cloned()?;
        position_of(&slot)
    }

    /// The grace period of a release ended: if the rank is still unowned at `generation`,
    /// removes it from `sink` and drops its slot (its next publisher starts afresh with a
    /// dump), so ranks that come and go do not accumulate. Done under the slot's lock, so a
    /// claim racing with it comes strictly after, on a new slot.
    pub(crate) fn expire(&self, rank: RankKey, generation: u64, sink: &dyn IngestSink) -> bool {
        let Some(slot) = self.slots().get(&rank).cloned() else { return false };
        let mut state = lock(&slot);
        if state.retired || state.owner.is_some() || state.generation != generation {
            return false;
        }
        sink.remove_rank(rank);
        state.retired = true;
        state.session = RankSession::new();
        // Lock order slot -> map is safe: nothing takes a slot's lock while holding the map's.
        self.slots().remove(&rank);
        true
    }

    /// Every rank's position, for saving with a snapshot (ranks synchronised only).
    pub(crate) fn cursors(&self) -> Vec<RankCursorState> {
        let slots: Vec<SlotRef> = self.slots().values().cloned().collect();
        let mut cursors: Vec<RankCursorState> = slots.iter().filter_map(position_of).collect();
        cursors.sort_unstable_by_key(|c| c.rank);
        cursors
    }
}

fn position_of(slot: &SlotRef) -> Option<RankCursorState> {
    let state = lock(slot);
    let (incarnation, applied_seq) = state.session.position()?;
    Some(RankCursorState::exact(state.rank, incarnation, applied_seq))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use kvroute_core::event::{DumpBlock, KvEvent};
    use kvroute_core::tier::StorageTier;

    use super::*;

    #[derive(Default)]
    struct Removals(StdMutex<Vec<RankKey>>);

    impl IngestSink for Removals {
        fn apply_batch(&self, _: StorageTier, _: &[KvEvent]) {}
        fn replace_rank(&self, _: StorageTier, _: RankKey, _: &[DumpBlock]) {}
        fn remove_rank(&self, rank: RankKey) {
            self.0.lock().unwrap().push(rank);
        }
    }

    const RANK: RankKey = RankKey::new(3, 1);

    #[test]
    fn the_latest_claim_owns_the_rank_and_grace_removes_only_unclaimed_ranks() {
        let registry = Registry::default();
        let sink = Removals::default();
        let (slot, first) = registry.claim(RANK, 1, 42);
        let (_, second) = registry.claim(RANK, 2, 42);
        assert!(second > first);
        assert_eq!(lock(&slot).owner, Some(2));
        // The superseded connection ending releases nothing.
        assert_eq!(registry.release(RANK, 1), None);
        let released = registry.release(RANK, 2).unwrap();
        // Claimed again within the grace period: the timer finds another generation.
        registry.claim(RANK, 3, 43);
        assert!(!registry.expire(RANK, released, &sink));
        let released = registry.release(RANK, 3).unwrap();
        assert!(registry.expire(RANK, released, &sink));
        assert_eq!(*sink.0.lock().unwrap(), [RANK]);
        assert!(!registry.expire(RANK, released, &sink), "removed once");
        assert!(registry.cursors().is_empty());
    }

    #[test]
    fn saved_cursors_come_back_unowned_and_resume() {
        let saved = RankCursorState::exact(RANK, 42, 17);
        let registry = Registry::with_cursors(&[saved]);
        assert_eq!(registry.cursors(), [saved]);
        assert_eq!(registry.unowned(), [(RANK, 0)]);
        let (slot, _) = registry.claim(RANK, 1, 42);
        assert_eq!(lock(&slot).session.resume_after(), Some(17));
        // Another incarnation cannot resume.
        let (slot, _) = registry.claim(RANK, 2, 43);
        assert_eq!(lock(&slot).session.resume_after(), None);
    }
}
