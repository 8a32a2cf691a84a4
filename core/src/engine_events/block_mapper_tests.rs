//! [`BlockMapper`] against a model of what an engine holds.
//!
//! The model engine stores and evicts *pages* (its blocks, `page` tokens each) as a tree of
//! token paths: a page is named by its whole path, its hash derived from its parent's and
//! its tokens as the engines derive theirs. Stores extend a held page (or the root) with
//! a run of pages, evictions take any held page (a leaf, or one in the middle whose
//! children stay held), clears drop everything. The mapper turns each event into index
//! events, applied to the reference index. After every step, for every held path and
//! random others, the index must report exactly the model's overlap: the number of
//! leading router blocks (`k = router / page` pages each) whose every page is held.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::{BlockMapper, MapperConfig, SkipReason};
use crate::engine_events::message::{BlockRemoved, BlockStored, Medium};
use crate::event::{KvEvent, KvEventData};
use crate::hashing::{xxh3_64_with_seed, BlockHasher};
use crate::ids::RankKey;
use crate::reference::ReferenceIndex;
use crate::tier::StorageTier;

const RANK: RankKey = RankKey::new(1, 0);
/// A small token alphabet, so that paths share prefixes and branch.
const ALPHABET: u32 = 3;

#[derive(Clone, Debug)]
enum Op {
    /// Extend the `at`-th held page (or the root when there is none / `at` is 0) by `pages`.
    Store {
        at: usize,
        pages: Vec<Vec<u32>>,
    },
    /// Evict the `at`-th held page.
    Remove {
        at: usize,
    },
    Clear,
}

fn ops(page: usize) -> impl Strategy<Value = Vec<Op>> {
    let tokens = proptest::collection::vec(0..ALPHABET, page);
    let store =
        (any::<usize>(), proptest::collection::vec(tokens, 1..12)).prop_map(|(at, pages)| Op::Store { at, pages });
    let op = prop_oneof![6 => store, 3 => any::<usize>().prop_map(|at| Op::Remove { at }), 1 => Just(Op::Clear)];
    proptest::collection::vec(op, 1..40)
}

/// The engine: held pages by path (tokens from the root), each with its hash.
#[derive(Default)]
struct Engine {
    held: HashMap<Vec<u32>, u64>,
}

impl Engine {
    fn hash(parent: Option<u64>, tokens: &[u32]) -> u64 {
        let mut bytes = parent.unwrap_or(0x5eed).to_le_bytes().to_vec();
        bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
        xxh3_64_with_seed(&bytes, 7)
    }

    /// Held paths in a stable order.
    fn paths(&self) -> Vec<Vec<u32>> {
        let mut paths: Vec<Vec<u32>> = self.held.keys().cloned().collect();
        paths.sort();
        paths
    }

    /// Model overlap of a request: leading full router blocks with every page held.
    fn overlap(&self, request: &[u32], page: usize, block: usize) -> u32 {
        let pages_held =
            (1..=request.len() / page).take_while(|&n| self.held.contains_key(&request[..n * page])).count();
        (pages_held * page / block) as u32
    }
}

fn run(page: u32, block: u32, ops: &[Op]) -> Result<(), TestCaseError> {
    let hasher = BlockHasher::new(block as usize).unwrap();
    let mut mapper = BlockMapper::new(MapperConfig::new(hasher));
    let mut index = ReferenceIndex::new();
    index.register_rank(RANK);
    let mut engine = Engine::default();
    let mut next_id = 0u64;
    let (page_len, block_len) = (page as usize, block as usize);
    let mut apply = |index: &mut ReferenceIndex, out: Vec<(StorageTier, KvEventData)>| {
        for (tier, data) in out {
            assert_eq!(tier, StorageTier::Device);
            next_id += 1;
            index.apply(&KvEvent { rank: RANK, event_id: next_id, data });
        }
    };
    for op in ops {
        let mut out = Vec::new();
        match op {
            Op::Store { at, pages } => {
                let paths = engine.paths();
                let start: Vec<u32> = if paths.is_empty() || at % (paths.len() + 1) == 0 {
                    Vec::new()
                } else {
                    paths[at % (paths.len() + 1) - 1].clone()
                };
                let mut parent = engine.held.get(&start).copied();
                let first_parent = parent;
                let mut path = start;
                let mut event = BlockStored { block_size: page, medium: Some(Medium::Gpu), ..BlockStored::default() };
                for tokens in pages {
                    path.extend_from_slice(tokens);
                    let hash = Engine::hash(parent, &path);
                    engine.held.insert(path.clone(), hash);
                    event.block_hashes.push(hash);
                    event.token_ids.extend_from_slice(tokens);
                    parent = Some(hash);
                }
                event.parent = first_parent;
                mapper.stored(&event, &mut out);
            }
            Op::Remove { at } => {
                let paths = engine.paths();
                if paths.is_empty() {
                    continue;
                }
                let path = &paths[at % paths.len()];
                let hash = engine.held.remove(path).unwrap();
                let event = BlockRemoved { block_hashes: vec![hash], medium: Some(Medium::Gpu), group_idx: None };
                mapper.removed(&event, &mut out);
            }
            Op::Clear => {
                engine.held.clear();
                mapper.clear();
                out.push((StorageTier::Device, KvEventData::Cleared));
            }
        }
        apply(&mut index, out);
        // Every held path, each extended by a page nobody holds, and its prefixes.
        let mut probes: HashSet<Vec<u32>> = engine.held.keys().cloned().collect();
        for path in engine.held.keys() {
            let mut longer = path.clone();
            longer.extend(std::iter::repeat_n(ALPHABET, page_len));
            probes.insert(longer);
        }
        for probe in probes {
            let want = engine.overlap(&probe, page_len, block_len);
            let got = index
                .find_matches(&hasher.hash_blocks(&probe))
                .into_iter()
                .find(|(r, _)| *r == RANK)
                .map_or(0, |e| e.1);
            prop_assert_eq!(got, want, "probe {:?} after {:?}", probe, op);
        }
    }
    prop_assert_eq!(mapper.skipped().get(SkipReason::UnknownParentPage), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn one_token_pages_into_four_token_blocks(ops in ops(1)) {
        run(1, 4, &ops)?;
    }

    #[test]
    fn two_token_pages_into_eight_token_blocks(ops in ops(2)) {
        run(2, 8, &ops)?;
    }

    #[test]
    fn pages_the_size_of_blocks_map_one_to_one(ops in ops(4)) {
        run(4, 4, &ops)?;
    }
}

#[test]
fn a_block_size_that_does_not_divide_is_skipped_and_counted() {
    let mut mapper = BlockMapper::new(MapperConfig::new(BlockHasher::new(16).unwrap()));
    let event = BlockStored { block_hashes: vec![1], token_ids: vec![0; 12], block_size: 12, ..BlockStored::default() };
    let mut out = Vec::new();
    mapper.stored(&event, &mut out);
    assert!(out.is_empty());
    assert_eq!(mapper.skipped().get(SkipReason::BlockSize), 1);
}

#[test]
fn media_pick_tiers_and_external_is_skipped() {
    let mut mapper = BlockMapper::new(MapperConfig::new(BlockHasher::new(4).unwrap()));
    let stored = |medium| BlockStored {
        block_hashes: vec![7],
        token_ids: vec![1, 2, 3, 4],
        block_size: 4,
        medium,
        ..BlockStored::default()
    };
    let cases = [
        (None, Some(StorageTier::Device)),
        (Some(Medium::Gpu), Some(StorageTier::Device)),
        (Some(Medium::CpuPinned), Some(StorageTier::Host)),
        (Some(Medium::Cpu), Some(StorageTier::Host)),
        (Some(Medium::Disk), Some(StorageTier::Disk)),
        (Some(Medium::Storage), Some(StorageTier::Disk)),
        (Some(Medium::External), None),
        (Some(Medium::Other), None),
    ];
    for (medium, tier) in cases {
        let mut out = Vec::new();
        mapper.stored(&stored(medium), &mut out);
        assert_eq!(out.first().map(|(t, _)| *t), tier, "{medium:?}");
        // A removal goes to the same tier only.
        let mut out = Vec::new();
        mapper.removed(&BlockRemoved { block_hashes: vec![7], medium, group_idx: None }, &mut out);
        assert_eq!(out.first().map(|(t, _)| *t), tier, "{medium:?}");
    }
    assert_eq!(mapper.skipped().get(SkipReason::Medium), 4);
}

#[test]
fn only_the_full_attention_group_is_credited() {
    let mut mapper = BlockMapper::new(MapperConfig::new(BlockHasher::new(4).unwrap()));
    let stored = |group, kind: Option<&str>, window| BlockStored {
        block_hashes: vec![9],
        token_ids: vec![1, 2, 3, 4],
        block_size: 4,
        group_idx: group,
        kv_cache_spec_kind: kind.map(str::to_owned),
        sliding_window: window,
        ..BlockStored::default()
    };
    let mut out = Vec::new();
    mapper.stored(&stored(Some(0), Some("full_attention"), None), &mut out);
    assert_eq!(out.len(), 1);
    for event in [
        stored(Some(1), Some("sliding_window"), Some(128)),
        stored(Some(2), None, Some(64)),
        stored(Some(3), None, None),
    ] {
        let mut out = Vec::new();
        mapper.stored(&event, &mut out);
        assert!(out.is_empty(), "{event:?}");
    }
    assert_eq!(mapper.skipped().get(SkipReason::NonFullAttention), 3);
    // Removals of the sliding-window group never remove the full-attention copy; group 0's do.
    let removal = |group| BlockRemoved { block_hashes: vec![9], medium: None, group_idx: Some(group) };
    let mut out = Vec::new();
    mapper.removed(&removal(1), &mut out);
    mapper.removed(&removal(3), &mut out);
    assert!(out.is_empty());
    mapper.removed(&removal(0), &mut out);
    assert_eq!(out.len(), 1);
}
