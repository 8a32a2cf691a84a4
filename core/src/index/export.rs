//! One rank's blocks out of the index and back in, in bulk: what a router snapshot
//! stores per rank, and how it is restored.
//!
//! # Export
//! [`KvIndex::export_rank`] lists a rank's blocks as dump blocks, exactly as a publisher's
//! `RankState::dump` does (`crate::publish`): every held engine hash with its content
//! hash, each after its parent, chains contiguous (depth first), and a *placeholder* for
//! every position the rank no longer holds but whose descendants it does (a removed
//! block's position still places its children: the tree path of a block is its content
//! position). Replaying the list ([`crate::ingest::DumpReplay`]: one `Stored` per chain,
//! then the placeholders' removal) on an empty rank rebuilds the same positions, copies
//! included.
//!
//! How: under the writer lock, each of the rank's engine hashes is resolved to its
//! current (node, offset); the nodes holding them plus their ancestors (found through the
//! writer-only parent links) form the rank's own small tree of nodes. Holder sets are
//! uniform per node, so an ancestor node the rank does not hold is a run of placeholders.
//! That tree is walked depth first, children in content-hash order, copies at a position
//! in engine-hash order: the output is deterministic. Placeholder engine hashes count
//! down from `u64::MAX`, skipping any the rank holds (as the publisher does).
//!
//! Cost: one map pass, one sort of the rank's entries and a walk of its nodes, all under
//! the writer lock, which is held for one rank at a time (~tens of ns per block).
//!
//! # Bulk restore
//! [`KvIndex::replace_rank_blocks`] replaces a registered rank's blocks with chains and
//! placeholders (as a snapshot section holds them) under one writer-lock acquisition,
//! without consuming event ids: the rank's next event is judged against the id it had
//! before. Lookups running meanwhile may see the rank partly restored; restore before
//! routing (a router restores at start).

use std::sync::atomic::Ordering;

use super::node::Shape;
use super::prehashed::PrehashedMap;
use super::writer::NodePtr;
use super::{IndexShard, StagedRank};
use crate::event::DumpBlock;
use crate::event::{KvEventData, StoredBlock};
use crate::ids::{EngineHash, RankKey};

/// A node of the rank's own tree (a node of the index holding, or leading to, its blocks).
struct RankNode {
    node: NodePtr,
    /// Index of the parent in the rank's tree; `None` below the root.
    parent: Option<usize>,
    /// The rank's `(offset, engine hash)` entries in this node: a range of the sorted list.
    held: std::ops::Range<usize>,
    children: Vec<usize>,
}

/// The node's current shape.
///
/// SAFETY (for callers): `node` must be live and the writer lock held, so that no shape is
/// swapped or freed concurrently.
unsafe fn shape_of<'a>(node: NodePtr) -> &'a Shape {
    // SAFETY: per the function's contract.
    unsafe { &*(*node.0).shape.load(Ordering::Relaxed) }
}

impl IndexShard {
    /// Every block `rank` holds, as a dump (see the module docs); `None` if the rank is
    /// not registered. Parents precede children; replaying it on an empty rank rebuilds
    /// the same positions.
    pub fn export_rank(&self, rank: RankKey) -> Option<Vec<DumpBlock>> {
        let w = self.writer();
        let id = *w.rank_ids.get(&rank)?;
        let state = w.ranks.get(id as usize)?.as_ref()?;
        let mut held: Vec<(NodePtr, u32, EngineHash)> = Vec::with_capacity(state.entries.len());
        for (hash, loc) in state.entries.iter() {
            if let Some((node, offset)) = w.resolve(loc) {
                held.push((node, offset, hash));
            }
        }
        held.sort_unstable_by_key(|&(node, offset, hash)| (node.0 as usize, offset, hash));

        // The rank's tree: held nodes, then their ancestors up to the root.
        let mut nodes: Vec<RankNode> = Vec::new();
        let mut index: PrehashedMap<NodePtr, usize> = PrehashedMap::default();
        let mut roots: Vec<usize> = Vec::new();
        let mut start = 0;
        while start < held.len() {
            let node = held[start].0;
            let end = start + held[start..].iter().take_while(|e| e.0 == node).count();
            if let Some(&known) = index.get(&node) {
                // Met before as an ancestor: already linked.
                nodes[known].held = start..end;
                start = end;
                continue;
            }
            let mut child = nodes.len();
            nodes.push(RankNode { node, parent: None, held: start..end, children: Vec::new() });
            index.insert(node, child);
            loop {
                // Relaxed: a writer-only field, read under the writer lock.
                // SAFETY: `child`'s node is live (resolved from an entry, or an ancestor of
                // one) and the writer lock is held.
                let up = NodePtr(unsafe { (*nodes[child].node.0).parent.load(Ordering::Relaxed) });
                if up == self.root || up.0.is_null() {
                    roots.push(child);
                    break;
                }
                if let Some(&known) = index.get(&up) {
                    nodes[child].parent = Some(known);
                    nodes[known].children.push(child);
                    break;
                }
                let ghost = nodes.len();
                nodes.push(RankNode { node: up, parent: None, held: 0..0, children: vec![child] });
                index.insert(up, ghost);
                nodes[child].parent = Some(ghost);
                child = ghost;
            }
        }

        // SAFETY: every node of the rank's tree is live and the writer lock is held.
        let first_hash = |i: usize| unsafe { (*nodes[i].node.0).hash_at(0) };
        let mut placeholder = u64::MAX;
        let mut next_placeholder = || loop {
            let hash = EngineHash(placeholder);
            placeholder = placeholder.wrapping_sub(1);
            if !state.entries.contains_key(hash) {
                return hash;
            }
        };
        let mut out = Vec::with_capacity(held.len() + held.len() / 8);
        roots.sort_unstable_by_key(|&i| std::cmp::Reverse(first_hash(i)));
        let mut stack: Vec<(usize, Option<EngineHash>)> = roots.iter().map(|&i| (i, None)).collect();
        while let Some((i, mut parent)) = stack.pop() {
            let entry = &nodes[i];
            // SAFETY: as above.
            let (node, shape) = unsafe { (&*entry.node.0, shape_of(entry.node)) };
            let mine = &held[entry.held.clone()];
            // Below a node with children the whole node is on their path; in a leaf, only
            // up to the last position the rank holds.
            let len = if entry.children.is_empty() { mine.last().map_or(0, |e| e.1 + 1) } else { shape.len };
            let mut k = 0;
            for offset in 0..len.min(shape.len) {
                let content_hash = node.hash_at(offset);
                let first = k;
                while k < mine.len() && mine[k].1 == offset {
                    k += 1;
                }
                if first == k {
                    let block = StoredBlock { engine_hash: next_placeholder(), content_hash };
                    out.push(DumpBlock { parent, block, placeholder: true });
                    parent = Some(block.engine_hash);
                    continue;
                }
                for &(_, _, engine_hash) in &mine[first..k] {
                    let block = StoredBlock { engine_hash, content_hash };
                    out.push(DumpBlock { parent, block, placeholder: false });
                }
                // The last copy, so that the next position continues the same run.
                parent = Some(mine[k - 1].2);
            }
            let mut children = entry.children.clone();
            children.sort_unstable_by_key(|&c| std::cmp::Reverse(first_hash(c)));
            stack.extend(children.into_iter().map(|c| (c, parent)));
        }
        Some(out)
    }

    /// Fills a staged rank with a dump ([`stage_rank`](Self::stage_rank)): stores each
    /// `(parent, chain)` run in order, then removes the `placeholders` (engine hashes
    /// stored by the runs only to place their descendants), all under one writer-lock
    /// acquisition, with no event ids. `block_hint` (the runs' total length) presizes the
    /// rank's map. The one way a rank is rebuilt from a dump: live dumps and snapshot
    /// restore both come here (through `Router::replace_rank`).
    pub fn fill_staged<R, B>(&self, staged: &StagedRank, block_hint: usize, runs: R, placeholders: &[EngineHash])
    where
        R: IntoIterator<Item = (Option<EngineHash>, B)>,
        B: IntoIterator<Item = StoredBlock>,
    {
        let mut w = self.writer();
        let guard = self.domain.pin();
        let id = staged.id().0;
        if let Some(state) = w.ranks.get_mut(id as usize).and_then(Option::as_mut) {
            state.entries.reserve(block_hint);
        }
        // One event value, refilled per run: no allocation per chain.
        let mut data = KvEventData::Stored { parent: None, blocks: Vec::new() };
        for (parent, chain) in runs {
            if let KvEventData::Stored { parent: p, blocks } = &mut data {
                *p = parent;
                blocks.clear();
                blocks.extend(chain);
            }
            w.apply_to(&guard, id, &data);
        }
        if !placeholders.is_empty() {
            w.apply_to(&guard, id, &KvEventData::Removed { blocks: placeholders.to_vec() });
        }
    }
}

#[cfg(test)]
mod tests {
    //! Export, replay (through `DumpReplay` and through `replace_rank_blocks`) and compare:
    //! every lookup on the original, the replays and the reference model agrees, the
    //! replays export the same dump, and further events act alike on all of them.

    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::super::test_chains::{chain, mix, HeldChains};
    use super::*;
    use crate::event::KvEvent;
    use crate::ids::BlockHash;
    use crate::reference::ReferenceIndex;
    use crate::KvIndex;

    const RANKS: [RankKey; 3] = [RankKey::new(1, 0), RankKey::new(1, 1), RankKey::new(4, 2)];

    #[derive(Clone, Debug)]
    enum Op {
        /// A chain of `contents` under a parent picked by `parent` (0 mod 4: the root).
        Store {
            rank: usize,
            parent: usize,
            contents: Vec<u8>,
            odd_engine: u8,
        },
        Remove {
            rank: usize,
            picks: Vec<usize>,
        },
        Clear {
            rank: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..3usize, any::<usize>(), prop::collection::vec(0..3u8, 1..8), any::<u8>())
                .prop_map(|(rank, parent, contents, odd_engine)| Op::Store { rank, parent, contents, odd_engine }),
            4 => (0..3usize, prop::collection::vec(any::<usize>(), 1..4))
                .prop_map(|(rank, picks)| Op::Remove { rank, picks }),
            1 => (0..3usize).prop_map(|rank| Op::Clear { rank }),
        ]
    }

    /// Drives indexes and the reference with the same events (same ids for all).
    struct Harness {
        indexes: Vec<KvIndex>,
        reference: ReferenceIndex,
        chains: HeldChains,
        next_id: u64,
        probes: Vec<Vec<BlockHash>>,
    }

    impl Harness {
        fn new() -> Self {
            let mut reference = ReferenceIndex::new();
            let index = KvIndex::new();
            for r in RANKS {
                index.register_rank(r).unwrap();
                reference.register_rank(r);
            }
            Harness {
                indexes: vec![index],
                reference,
                chains: HeldChains::default(),
                next_id: 1_000_000,
                probes: Vec::new(),
            }
        }

        fn send(&mut self, rank: RankKey, data: KvEventData) {
            self.next_id += 1;
            let event = KvEvent { rank, event_id: self.next_id, data };
            for index in &self.indexes {
                index.apply(&event);
            }
            self.reference.apply(&event);
        }

        fn run(&mut self, op: &Op) {
            match op.clone() {
                Op::Store { rank, parent, contents, odd_engine } => {
                    let r = RANKS[rank];
                    let held = self.chains.held(r);
                    let parent = (parent % 4 != 0 && !held.is_empty()).then(|| held[parent % held.len()]);
                    // Mostly chain-derived (shared across ranks); some copies of a position
                    // under an odd hash, some duplicates of a held one.
                    let blocks = chain(parent, &contents, |i, content, prev| match odd_engine % 6 {
                        0 if i == 0 => Some(EngineHash(mix(prev, content.0) ^ 0x5555)),
                        1 if i == 1 && !held.is_empty() => Some(held[odd_engine as usize % held.len()]),
                        // Near the placeholders' range: export must skip held ones.
                        2 if i == 0 => Some(EngineHash(u64::MAX - u64::from(odd_engine % 3))),
                        _ => None,
                    });
                    self.chains.record_store(r, parent, &blocks, &mut self.probes);
                    self.send(r, KvEventData::Stored { parent, blocks });
                }
                Op::Remove { rank, picks } => {
                    let r = RANKS[rank];
                    let gone = self.chains.take(r, &picks);
                    self.send(r, KvEventData::Removed { blocks: gone });
                }
                Op::Clear { rank } => {
                    let r = RANKS[rank];
                    self.chains.forget_rank(r);
                    self.send(r, KvEventData::Cleared);
                }
            }
        }

        fn check(&self) {
            let mut probes = self.probes.clone();
            // Every probe with a wrong last block too, and cut short.
            for p in &self.probes {
                let mut q = p.clone();
                q.push(BlockHash(7));
                probes.push(q);
                probes.push(p[..p.len() / 2].to_vec());
            }
            for q in &probes {
                let expected = self.reference.find_matches(q);
                for (i, index) in self.indexes.iter().enumerate() {
                    assert_eq!(index.find_matches(q).sorted(), expected, "index {i}, request {q:?}");
                }
            }
            for (i, index) in self.indexes.iter().enumerate() {
                let stats = index.stats();
                assert_eq!(stats.held_pairs, self.reference.held_pairs(), "index {i}");
                assert_eq!(stats.distinct_blocks, self.reference.distinct_blocks(), "index {i}");
                assert_eq!(stats.empty_leaves, 0, "index {i}");
            }
        }
    }

    /// Parents precede children, placeholders are never held hashes, and every held
    /// engine hash appears exactly once.
    fn check_dump_shape(dump: &[DumpBlock], held: &HashSet<EngineHash>) {
        let mut seen = HashSet::new();
        for b in dump {
            if let Some(p) = b.parent {
                assert!(seen.contains(&p), "parent {p:?} after its child");
            }
            assert_eq!(b.placeholder, !held.contains(&b.block.engine_hash));
            assert!(seen.insert(b.block.engine_hash), "{:?} twice", b.block.engine_hash);
        }
        let listed: HashSet<_> = dump.iter().filter(|b| !b.placeholder).map(|b| b.block.engine_hash).collect();
        assert_eq!(&listed, held);
    }

    /// A fresh index with `RANKS` registered.
    fn fresh() -> KvIndex {
        let index = KvIndex::new();
        for r in RANKS {
            index.register_rank(r).unwrap();
        }
        index
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

        #[test]
        fn export_replays_to_the_same_index(
            before in prop::collection::vec(op(), 1..50),
            after in prop::collection::vec(op(), 0..20),
        ) {
            let mut h = Harness::new();
            for op in &before {
                h.run(op);
            }
            let replayed = fresh();
            let replaced = fresh();
            for r in RANKS {
                let dump = h.indexes[0].export_rank(r).expect("registered");
                let held: HashSet<EngineHash> = h.chains.held(r).into_iter().collect();
                check_dump_shape(&dump, &held);
                // As plain events.
                for (i, data) in crate::event::dump_events(&dump).into_iter().enumerate() {
                    replayed.apply(&KvEvent { rank: r, event_id: i as u64 + 1, data });
                }
                // Through the bulk restore, runs cut as a snapshot cuts them.
                let mut runs: Vec<(Option<EngineHash>, Vec<StoredBlock>)> = Vec::new();
                for b in &dump {
                    match runs.last_mut() {
                        Some((_, chain)) if chain.last().map(|c| c.engine_hash) == b.parent => chain.push(b.block),
                        _ => runs.push((b.parent, vec![b.block])),
                    }
                }
                let placeholders: Vec<EngineHash> =
                    dump.iter().filter(|b| b.placeholder).map(|b| b.block.engine_hash).collect();
                let staged = replaced.stage_rank(r).expect("stage");
                replaced.fill_staged(&staged, dump.len(), runs, &placeholders);
                replaced.promote_staged(staged);
            }
            for r in RANKS {
                let original = h.indexes[0].export_rank(r);
                prop_assert_eq!(&replayed.export_rank(r), &original);
                prop_assert_eq!(&replaced.export_rank(r), &original);
            }
            h.indexes.push(replayed);
            h.indexes.push(replaced);
            h.check();
            // Copies and holes were rebuilt too: further events act alike everywhere.
            for op in &after {
                h.run(op);
            }
            h.check();
        }
    }

    #[test]
    fn unknown_rank_exports_nothing() {
        let index = KvIndex::new();
        assert_eq!(index.export_rank(RankKey::new(9, 9)), None);
    }

    #[test]
    fn a_hole_exports_as_a_placeholder() {
        let index = fresh();
        let r = RANKS[0];
        let chain: Vec<StoredBlock> =
            (1..=3).map(|i| StoredBlock { engine_hash: EngineHash(i), content_hash: BlockHash(10 + i) }).collect();
        index.apply(&KvEvent { rank: r, event_id: 1, data: KvEventData::Stored { parent: None, blocks: chain } });
        index.apply(&KvEvent { rank: r, event_id: 2, data: KvEventData::Removed { blocks: vec![EngineHash(2)] } });
        let dump = index.export_rank(r).unwrap();
        let hole = EngineHash(u64::MAX);
        assert_eq!(
            dump,
            vec![
                DumpBlock {
                    parent: None,
                    block: StoredBlock { engine_hash: EngineHash(1), content_hash: BlockHash(11) },
                    placeholder: false
                },
                DumpBlock {
                    parent: Some(EngineHash(1)),
                    block: StoredBlock { engine_hash: hole, content_hash: BlockHash(12) },
                    placeholder: true
                },
                DumpBlock {
                    parent: Some(hole),
                    block: StoredBlock { engine_hash: EngineHash(3), content_hash: BlockHash(13) },
                    placeholder: false
                },
            ]
        );
        // Restored, the hole is a hole again, and the rank's event ids start afresh.
        let staged = index.stage_rank(r).expect("stage");
        index.fill_staged(&staged, 3, crate::event::dump_runs(&dump), &[hole]);
        index.promote_staged(staged);
        assert_eq!(index.find_matches(&[BlockHash(11), BlockHash(12)]).sorted(), vec![(r, 1)]);
        index.apply(&KvEvent { rank: r, event_id: 1, data: KvEventData::Cleared });
        assert_eq!(index.counters().stale_event, 0);
        assert!(index.find_matches(&[BlockHash(11)]).is_empty());
    }
}
