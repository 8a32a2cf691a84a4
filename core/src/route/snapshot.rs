//! A [`Router`]'s state into a snapshot and back (the format: [`crate::snapshot`]).
//!
//! # Taking one
//! [`Router::encode_snapshot`] writes the worker registry (each worker's spec and whether
//! it is in exact mode) and, for every rank of an exact-mode worker, one section per
//! storage tier: the rank's blocks exported from that tier's index
//! ([`KvIndex::export_rank`](crate::index::KvIndex::export_rank), under the index's writer
//! lock, one rank at a time) and the rank's event cursor, which the caller supplies (the
//! transport owns cursors). The device section is always written (it carries the cursor);
//! host and disk sections only when non-empty. Approximate-mode blocks (what the router
//! recorded itself for workers that publish no events) expire within minutes and are not
//! saved. `cursor_of` is asked for a rank's cursor twice, before its tiers are exported
//! and after: the first is where a restored router resumes (the blocks hold every event
//! up to it), the second bounds the events the blocks may already hold
//! ([`CursorState::settled_seq`]), which the restored session applies as replays rather
//! than counting them as anomalies. [`Router::snapshot_ranks`] yields the same sections
//! lazily, for callers that encode themselves.
//!
//! # Restoring one
//! [`Router::restore_snapshot`] (zero-copy, from a verified [`SnapshotView`]) or
//! [`Router::restore_ranks`] (owned [`Snapshot`]), normally at start, before routing:
//! 1. the snapshot's block size and hash scheme must be the router's (else nothing is
//!    restored: its content hashes would match nothing);
//! 2. each worker of the registry is registered if it is not (a worker registered with
//!    a different spec keeps it, and its sections are skipped: they describe another
//!    deployment), and switched to exact mode if it was;
//! 3. each section replaces its rank's blocks in its tier: one `Stored` per run and one
//!    `Removed` of the placeholders, under one writer-lock acquisition per section, event
//!    ids untouched.
//!
//! The [`RestoreReport`] lists the cursors to resume from: subscribe to each rank with
//! `CursorState::to_cursor().resume_after()`; a publisher whose ring no longer covers it
//! (or a new incarnation) answers with a dump, which replaces the restored blocks.

use super::registry::Fleet;
use super::router::Router;
use super::{RouteError, StorageTier};
use crate::event::{dump_placeholders, dump_runs};
use crate::ids::{RankKey, WorkerId};
use crate::snapshot::{
    CursorState, RankSnapshot, SectionView, Snapshot, SnapshotEncoder, SnapshotMeta, SnapshotView, WorkerRecord,
};

/// Why a snapshot could not be restored at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreError {
    /// The snapshot was taken under another block size or hash scheme.
    HashingMismatch { snapshot: SnapshotMeta, router_block_size: u32 },
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::HashingMismatch { snapshot, router_block_size } => write!(
                f,
                "snapshot hashed {:?} blocks of {} tokens; the router uses blocks of {router_block_size} tokens \
                 and its own scheme",
                snapshot.hash_scheme, snapshot.block_size
            ),
        }
    }
}

impl std::error::Error for RestoreError {}

/// Why a section of a snapshot was not restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The worker is registered with another spec than the snapshot's.
    SpecChanged,
    /// Registering the snapshot's worker failed.
    Rejected(RouteError),
    /// The rank's worker is not in the snapshot's registry in exact mode, or the rank is
    /// outside its ranks.
    UnknownRank,
}

/// What [`Router::restore_snapshot`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Workers the snapshot registered (those already registered are not counted).
    pub workers_added: usize,
    pub sections_restored: usize,
    /// Blocks the restored sections hold (placeholders excluded).
    pub blocks_restored: u64,
    pub skipped: Vec<(RankKey, StorageTier, SkipReason)>,
    /// The cursor of each restored rank that had one: resume its stream from there.
    pub cursors: Vec<(RankKey, CursorState)>,
}

/// What restoring needs of a section, from a view or from owned values.
trait Section {
    fn rank(&self) -> RankKey;
    fn tier(&self) -> StorageTier;
    fn cursor(&self) -> Option<CursorState>;
    /// Blocks held (placeholders excluded).
    fn held(&self) -> u64;
    /// Replaces the rank's blocks in the router's tier index (the one road for dumps).
    fn replace_in(&self, router: &Router) -> Result<(), RouteError>;
}

impl Section for SectionView<'_> {
    fn rank(&self) -> RankKey {
        SectionView::rank(self)
    }
    fn tier(&self) -> StorageTier {
        SectionView::tier(self)
    }
    fn cursor(&self) -> Option<CursorState> {
        SectionView::cursor(self)
    }
    fn held(&self) -> u64 {
        self.block_count() - self.placeholder_count()
    }
    fn replace_in(&self, router: &Router) -> Result<(), RouteError> {
        let runs = self.runs().map(|run| (run.parent(), run.blocks()));
        router.replace_rank(self.tier(), self.rank(), self.block_count() as usize, runs, &self.placeholder_hashes())
    }
}

impl Section for &RankSnapshot {
    fn rank(&self) -> RankKey {
        self.rank
    }
    fn tier(&self) -> StorageTier {
        self.tier
    }
    fn cursor(&self) -> Option<CursorState> {
        self.cursor
    }
    fn held(&self) -> u64 {
        self.blocks.iter().filter(|b| !b.placeholder).count() as u64
    }
    fn replace_in(&self, router: &Router) -> Result<(), RouteError> {
        let placeholders = dump_placeholders(&self.blocks);
        router.replace_rank(self.tier, self.rank, self.blocks.len(), dump_runs(&self.blocks), &placeholders)
    }
}

impl Router {
    /// The snapshot header for this router's hashing.
    pub fn snapshot_meta(&self, taken_at_ms: u64) -> SnapshotMeta {
        SnapshotMeta { taken_at_ms, block_size: self.config.block_size, hash_scheme: self.config.hash_scheme }
    }

    /// The worker registry: every worker's spec and mode, by id.
    pub fn snapshot_workers(&self) -> Vec<WorkerRecord> {
        workers_of(&self.fleet.load())
    }

    /// Every section a snapshot of this router holds (see the module docs), exported
    /// lazily, one (rank, tier) at a time; `cursor_of` gives each rank's cursor.
    pub fn snapshot_ranks<'a>(
        &'a self,
        cursor_of: impl FnMut(RankKey) -> Option<CursorState> + 'a,
    ) -> impl Iterator<Item = RankSnapshot> + 'a {
        self.sections_of(self.fleet.load_full(), cursor_of)
    }

    fn sections_of<'a>(
        &'a self,
        fleet: std::sync::Arc<Fleet>,
        mut cursor_of: impl FnMut(RankKey) -> Option<CursorState> + 'a,
    ) -> impl Iterator<Item = RankSnapshot> + 'a {
        let ranks: Vec<RankKey> = fleet.ranks.iter().filter(|s| s.worker.exact).map(|s| s.key).collect();
        ranks.into_iter().flat_map(move |rank| {
            // The cursor before the rank's tiers are exported and again after: the blocks
            // hold every event up to the first, none past the second.
            let before = cursor_of(rank);
            let exported: Vec<(StorageTier, Vec<crate::event::DumpBlock>)> = StorageTier::ALL
                .into_iter()
                .filter_map(|tier| Some((tier, self.tier_index(tier).export_rank(rank)?)))
                .collect();
            let cursor = before.map(|b| b.settled_by(cursor_of(rank)));
            exported.into_iter().filter_map(move |(tier, blocks)| {
                (tier == StorageTier::Device || !blocks.is_empty()).then_some(RankSnapshot {
                    rank,
                    tier,
                    cursor,
                    blocks,
                })
            })
        })
    }

    /// Encodes a snapshot of this router at the end of `out` (see the module docs),
    /// exporting and encoding one (rank, tier) at a time; returns its length.
    pub fn encode_snapshot(
        &self,
        taken_at_ms: u64,
        cursor_of: impl FnMut(RankKey) -> Option<CursorState>,
        out: &mut Vec<u8>,
    ) -> usize {
        let fleet = self.fleet.load_full();
        let mut encoder = SnapshotEncoder::new(&self.snapshot_meta(taken_at_ms), &workers_of(&fleet), out);
        for section in self.sections_of(fleet, cursor_of) {
            encoder.section(section.rank, section.tier, section.cursor, &section.blocks);
        }
        encoder.finish()
    }

    /// Restores a verified snapshot, zero-copy (see the module docs).
    pub fn restore_snapshot(&self, view: &SnapshotView<'_>) -> Result<RestoreReport, RestoreError> {
        self.restore_sections(view.meta(), view.workers(), view.sections())
    }

    /// Restores a decoded snapshot (see the module docs).
    pub fn restore_ranks(&self, snapshot: &Snapshot) -> Result<RestoreReport, RestoreError> {
        self.restore_sections(&snapshot.meta, &snapshot.workers, snapshot.ranks.iter())
    }

    fn restore_sections(
        &self,
        meta: &SnapshotMeta,
        workers: &[WorkerRecord],
        sections: impl Iterator<Item = impl Section>,
    ) -> Result<RestoreReport, RestoreError> {
        if meta.block_size != self.config.block_size || meta.hash_scheme != self.config.hash_scheme {
            return Err(RestoreError::HashingMismatch { snapshot: *meta, router_block_size: self.config.block_size });
        }
        let mut report = RestoreReport::default();
        // Per worker of the snapshot: restorable, or why not.
        let mut verdicts: Vec<(WorkerId, Result<&WorkerRecord, SkipReason>)> = Vec::with_capacity(workers.len());
        for record in workers {
            let registered = self.fleet.load().workers.get(&record.spec.worker).map(|w| w.spec.clone());
            let verdict = match registered {
                Some(spec) if spec != record.spec => Err(SkipReason::SpecChanged),
                Some(_) => Ok(record),
                None => match self.add_worker(record.spec.clone()) {
                    Ok(()) => {
                        report.workers_added += 1;
                        Ok(record)
                    }
                    Err(e) => Err(SkipReason::Rejected(e)),
                },
            };
            if verdict.is_ok() && record.exact {
                self.switch_to_exact(record.spec.worker);
            }
            verdicts.push((record.spec.worker, verdict));
        }
        verdicts.sort_unstable_by_key(|(w, _)| *w);
        for section in sections {
            let (rank, tier) = (section.rank(), section.tier());
            let verdict = match verdicts.binary_search_by_key(&rank.worker, |(w, _)| *w) {
                Ok(i) => match &verdicts[i].1 {
                    Ok(record) if record.exact && record.spec.owns(rank.dp_rank) => Ok(()),
                    Ok(_) => Err(SkipReason::UnknownRank),
                    Err(reason) => Err(reason.clone()),
                },
                Err(_) => Err(SkipReason::UnknownRank),
            };
            let verdict = verdict.and_then(|()| section.replace_in(self).map_err(|_| SkipReason::UnknownRank));
            if let Err(reason) = verdict {
                report.skipped.push((rank, tier, reason));
                continue;
            }
            let held = section.held();
            if tier != StorageTier::Device && held > 0 {
                // Relaxed by design; see `Router::apply_event_in`.
                self.tier_used[tier.index()].store(true, std::sync::atomic::Ordering::Relaxed);
            }
            report.sections_restored += 1;
            report.blocks_restored += held;
            if let Some(cursor) = section.cursor() {
                report.cursors.push((rank, cursor));
            }
        }
        // One per rank (a rank's sections carry the same cursor).
        report.cursors.sort_unstable_by_key(|(rank, _)| *rank);
        report.cursors.dedup_by_key(|(rank, _)| *rank);
        Ok(report)
    }
}

fn workers_of(fleet: &Fleet) -> Vec<WorkerRecord> {
    let mut out: Vec<WorkerRecord> =
        fleet.workers.values().map(|w| WorkerRecord { spec: w.spec.clone(), exact: w.exact }).collect();
    out.sort_by_key(|w| w.spec.worker);
    out
}

#[cfg(test)]
mod tests {
    //! A router with exact, approximate and prefill workers, blocks in two tiers and holes,
    //! snapshotted and restored into a fresh router: same registry and modes, same
    //! overlaps in every tier, the cursors back; and the refusals.

    use std::sync::Arc;

    use super::*;
    use crate::event::StoredBlock;
    use crate::event::{KvEvent, KvEventData};
    use crate::ids::{BlockHash, EngineHash};
    use crate::route::{RouteOptions, RouterConfig, WorkerSpec};
    use crate::snapshot::{decode_snapshot, verify_snapshot};

    fn router() -> Router {
        Router::new(RouterConfig::default(), Arc::new(|| 1_000u64)).unwrap()
    }

    fn chain(seed: u64, n: u64) -> Vec<StoredBlock> {
        (0..n)
            .map(|i| StoredBlock {
                engine_hash: EngineHash(seed << 32 | i),
                content_hash: BlockHash(seed % 5 * 100 + i),
            })
            .collect()
    }

    /// Workers 1 (2 ranks) and 2 (prefill) exact, 3 approximate with a routed request.
    fn populated() -> Router {
        let r = router();
        r.add_worker(WorkerSpec::new(WorkerId(1), 2, 16)).unwrap();
        r.add_worker(WorkerSpec::prefill(WorkerId(2), 1, 16, "10.0.0.2", Some(8998))).unwrap();
        r.add_worker(WorkerSpec::new(WorkerId(3), 1, 16)).unwrap();
        let mut id = 0;
        let mut send = |tier, rank, data| {
            id += 1;
            r.apply_event_in(tier, &KvEvent { rank, event_id: id, data });
        };
        for (seed, rank) in [(1, RankKey::new(1, 0)), (6, RankKey::new(1, 1)), (11, RankKey::new(2, 0))] {
            send(StorageTier::Device, rank, KvEventData::Stored { parent: None, blocks: chain(seed, 40) });
            let tail = chain(seed + 1, 8);
            let parent = Some(EngineHash(seed << 32 | 20));
            send(StorageTier::Device, rank, KvEventData::Stored { parent, blocks: tail });
            // A hole: position 10 removed, its descendants kept.
            send(StorageTier::Device, rank, KvEventData::Removed { blocks: vec![EngineHash(seed << 32 | 10)] });
        }
        send(StorageTier::Host, RankKey::new(1, 1), KvEventData::Stored { parent: None, blocks: chain(21, 30) });
        let prompt: Vec<u32> = (0..64).collect();
        let options = RouteOptions { workers: Some(&[WorkerId(3)]), ..RouteOptions::default() };
        r.best_worker(crate::route::Prompt::Tokens(&prompt), &options).unwrap();
        r
    }

    fn probes() -> Vec<Vec<BlockHash>> {
        let mut out = Vec::new();
        for seed in [1u64, 6, 11, 21] {
            let base: Vec<BlockHash> = (0..40).map(|i| BlockHash(seed % 5 * 100 + i)).collect();
            for cut in [1, 5, 10, 11, 21, 30, 40] {
                out.push(base[..cut].to_vec());
            }
            let mut branch = base[..21].to_vec();
            branch.extend((0..8).map(|i| BlockHash((seed + 1) % 5 * 100 + i)));
            out.push(branch);
        }
        out
    }

    fn cursor_of(rank: RankKey) -> Option<CursorState> {
        (rank.worker == WorkerId(1)).then_some(CursorState::exact(9, u64::from(rank.dp_rank.0) + 5))
    }

    #[test]
    fn restore_rebuilds_the_router() {
        let original = populated();
        let mut bytes = Vec::new();
        let len = original.encode_snapshot(77, cursor_of, &mut bytes);
        assert_eq!(len, bytes.len());
        let layout = verify_snapshot(&bytes).unwrap();
        // Exact workers' ranks: 3 device sections, 1 host section; worker 3 is approximate.
        assert_eq!(layout.section_count(), 4);
        let restored = router();
        let report = restored.restore_snapshot(&layout.view(&bytes).unwrap()).unwrap();
        assert_eq!(report.workers_added, 3);
        assert_eq!(report.sections_restored, 4);
        assert!(report.skipped.is_empty());
        assert_eq!(report.blocks_restored, 3 * (40 + 8 - 1) + 30);
        assert_eq!(
            report.cursors,
            vec![
                (RankKey::new(1, 0), cursor_of(RankKey::new(1, 0)).unwrap()),
                (RankKey::new(1, 1), cursor_of(RankKey::new(1, 1)).unwrap())
            ]
        );
        assert_eq!(restored.workers(), original.workers());
        for w in [1, 2, 3] {
            assert_eq!(restored.is_exact(WorkerId(w)), original.is_exact(WorkerId(w)), "worker {w}");
        }
        for tier in StorageTier::ALL {
            for q in probes() {
                let (a, b) = (original.tier_index(tier).find_matches(&q), restored.tier_index(tier).find_matches(&q));
                let exact = |s: crate::index::OverlapScores| -> Vec<_> {
                    s.sorted().into_iter().filter(|(k, _)| k.worker != WorkerId(3)).collect()
                };
                assert_eq!(exact(a), exact(b), "{tier:?} {q:?}");
            }
        }
        // The host tier takes part in decisions again.
        let q: Vec<BlockHash> = (0..30).map(|i| BlockHash(100 + i)).collect();
        let options = RouteOptions { dry_run: true, rank: Some(RankKey::new(1, 1)), ..RouteOptions::default() };
        let (a, b) = (
            original.best_worker(crate::route::Prompt::Blocks(&q), &options).unwrap(),
            restored.best_worker(crate::route::Prompt::Blocks(&q), &options).unwrap(),
        );
        assert_eq!(a.cost, b.cost);
        // The owned path restores the same, and the restored router snapshots identically.
        let again = router();
        again.restore_ranks(&decode_snapshot(&bytes).unwrap()).unwrap();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        restored.encode_snapshot(77, cursor_of, &mut x);
        again.encode_snapshot(77, cursor_of, &mut y);
        assert_eq!(x, bytes);
        assert_eq!(y, bytes);
        // Events after a restore are numbered afresh by the transport: still applied.
        let rank = RankKey::new(1, 0);
        restored.apply_event(&KvEvent { rank, event_id: 1, data: KvEventData::Cleared });
        assert!(restored.tier_index(StorageTier::Device).find_matches(&probes()[0]).get(rank) == 0);
    }

    #[test]
    fn refusals_and_skips() {
        let original = populated();
        let mut bytes = Vec::new();
        original.encode_snapshot(1, cursor_of, &mut bytes);
        let snapshot = decode_snapshot(&bytes).unwrap();
        let other = Router::new(RouterConfig { block_size: 32, ..RouterConfig::default() }, Arc::new(|| 0u64)).unwrap();
        assert!(matches!(other.restore_ranks(&snapshot), Err(RestoreError::HashingMismatch { .. })));
        // Worker 1 registered with another DP size keeps it; its sections are skipped.
        let changed = router();
        changed.add_worker(WorkerSpec::new(WorkerId(1), 4, 16)).unwrap();
        let report = changed.restore_ranks(&snapshot).unwrap();
        assert_eq!(report.workers_added, 2);
        assert_eq!(report.sections_restored, 1);
        assert_eq!(report.skipped.len(), 3);
        assert!(report
            .skipped
            .iter()
            .all(|(rank, _, why)| rank.worker == WorkerId(1) && *why == SkipReason::SpecChanged));
        assert_eq!(changed.is_exact(WorkerId(1)), Some(false));
        assert_eq!(changed.is_exact(WorkerId(2)), Some(true));
    }

    /// A snapshot taken while events 6 to 8 were being applied (cursor 5 before the
    /// export, 8 after): after a restore, the publisher resumes after 5, and the events the
    /// blocks already hold are replays, not anomalies; the index ends equal to one that
    /// saw every event once.
    #[test]
    fn events_the_snapshot_may_hold_replay_without_anomalies() {
        use crate::ingest::{FrameContext, RankSession};
        use crate::reference::ReferenceIndex;
        use crate::wire::{Deltas, Frame};

        let rank = RankKey::new(1, 0);
        let stream: Vec<KvEventData> = vec![
            KvEventData::Stored { parent: None, blocks: chain(1, 10) },
            KvEventData::Stored { parent: Some(EngineHash(1 << 32 | 4)), blocks: chain(2, 5) },
            KvEventData::Removed { blocks: vec![EngineHash(1 << 32 | 9)] },
            KvEventData::Stored { parent: None, blocks: chain(3, 6) },
            KvEventData::Removed { blocks: vec![EngineHash(3 << 32 | 5), EngineHash(3 << 32 | 4)] },
            // 6..=8: in the blocks, after the cursor.
            KvEventData::Stored { parent: Some(EngineHash(3 << 32 | 3)), blocks: chain(4, 4) },
            KvEventData::Removed { blocks: vec![EngineHash(2 << 32 | 4), EngineHash(1 << 32 | 8)] },
            KvEventData::Stored { parent: Some(EngineHash(4 << 32 | 3)), blocks: chain(6, 3) },
            // 9..=10: after the snapshot.
            KvEventData::Removed { blocks: vec![EngineHash(4 << 32 | 3)] },
            KvEventData::Stored { parent: Some(EngineHash(1 << 32 | 7)), blocks: chain(7, 2) },
        ];
        let original = router();
        original.add_worker(WorkerSpec::new(WorkerId(1), 1, 16)).unwrap();
        let mut reference = ReferenceIndex::new();
        reference.register_rank(rank);
        for (i, data) in stream.iter().enumerate() {
            let event = KvEvent { rank, event_id: i as u64 + 1, data: data.clone() };
            reference.apply(&event);
            if i < 8 {
                original.apply_event(&event);
            }
        }
        let mut reads = 0;
        let cursor_of = |_| {
            reads += 1;
            Some(CursorState::exact(9, if reads == 1 { 5 } else { 8 }))
        };
        let mut bytes = Vec::new();
        original.encode_snapshot(1, cursor_of, &mut bytes);
        let restored = router();
        let report = restored.restore_ranks(&decode_snapshot(&bytes).unwrap()).unwrap();
        let cursor = report.cursors[0].1;
        assert_eq!(cursor, CursorState { incarnation: 9, applied_seq: 5, settled_seq: 8 });

        let mut session = RankSession::restored(cursor.incarnation, cursor.applied_seq, cursor.settled_seq);
        session.on_hello(9);
        assert_eq!(session.resume_after(), Some(5));
        let may_publish = |_: WorkerId| true;
        let ctx = FrameContext { rank, may_publish: &may_publish, sink: &restored, max_dump_blocks: 1 << 20 };
        for (first_seq, events) in [(6u64, &stream[5..7]), (8, &stream[7..10])] {
            let frame = Frame::Deltas(Deltas { rank, tier: StorageTier::Device, first_seq, events: events.to_vec() });
            session.on_frame(frame, &ctx).unwrap();
        }
        let counters = restored.tier_index(StorageTier::Device).counters();
        assert_eq!(
            (counters.duplicate_store, counters.unknown_parent, counters.unknown_remove),
            (0, 0, 0),
            "{counters:?}"
        );
        assert!(counters.snapshot_replays > 0, "{counters:?}");
        let probes: Vec<Vec<BlockHash>> = [1u64, 2, 3, 4, 6, 7]
            .iter()
            .flat_map(|&seed| (1..=10).map(move |n| chain(seed, n).iter().map(|b| b.content_hash).collect()))
            .collect();
        for q in &probes {
            let got = restored.tier_index(StorageTier::Device).find_matches(q).sorted();
            assert_eq!(got, reference.find_matches(q), "{q:?}");
        }
    }
}
