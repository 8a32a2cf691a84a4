//! [`BlockMapper`]: one engine rank's decoded KV events as the index's events.
//!
//! # What is mapped, and how
//! - `BlockStored` becomes `Stored { parent, blocks }`: the engine's block hashes are the
//!   engine hashes (they only resolve parents and removals), the content hashes are
//!   computed from `token_ids` by the router's own hasher, with the block's identity
//!   folded in exactly as a request's ([`BlockHasher::hash_blocks_with_into`]): the
//!   `lora_name` into every block (so a LoRA request matches only its adapter's blocks,
//!   a plain request none of them), SGLang's `cache_salt` into a root block, and vLLM's
//!   per-block `extra_keys` (cache salt, multimodal `[mm_hash, offset]` pairs) into their
//!   block. vLLM repeats the LoRA name as each block's first extra key; that entry is
//!   dropped, as the adapter is already in the seed.
//! - `medium` picks the tier: nil or `GPU` -> device, `CPU_PINNED` or vLLM's `CPU` ->
//!   host, `DISK` or vLLM's `STORAGE` -> disk. `EXTERNAL` and unknown media are skipped and
//!   counted: a removal from one medium never touches another tier's copy.
//! - Hybrid models: only the full-attention KV-cache group is credited. A stored event
//!   whose `kv_cache_spec_kind` is set and is not `full_attention`, or that has a sliding
//!   window, or (without a kind) whose `group_idx` is not the configured full-attention
//!   group (default 0), is skipped and counted; so is a removal of such a group (a group
//!   is known as full attention from the kinds its stored events carried, else by the
//!   configured index). Their blocks are never credited and never remove anything.
//! - Block size: an event's `block_size` equal to the router's maps block for block. One
//!   that divides it (SGLang's default page size is 1) is re-chunked: `k = router / page`
//!   consecutive pages from the root form one router block, which is stored once all its
//!   pages are held and removed as soon as any of them is removed. Any other size is
//!   skipped and counted.
//! - `AllBlocksCleared` clears every tier of the rank.
//!
//! # Re-chunking, the shape of the data
//! Per tier, a page table: engine page hash -> its parent page, depth (pages from the
//! root), tokens, extra keys, the pages stored under it, and the router blocks it is part
//! of. A router block is named (its engine hash in the index) by its last page's hash,
//! and its parent is the last page of the router block before it. Storing a page at depth
//! `d` with `(d + 1) % k == 0` completes a block if the `k - 1` pages above it are held;
//! storing a page elsewhere looks down its children for the block-ending pages it
//! completes (a page evicted in the middle and stored again). Removing a page removes
//! every router block it is part of (several where chains branch inside a block).

use std::collections::HashMap;

use super::message::{BlockRemoved, BlockStored, Medium};
use crate::event::{KvEventData, StoredBlock};
use crate::hashing::{BlockHasher, BlockIdentity, KeyValue};
use crate::ids::{BlockHash, EngineHash};
use crate::tier::StorageTier;

/// The `kv_cache_spec_kind` of the groups that are credited.
const FULL_ATTENTION: &str = "full_attention";

/// How a rank's events are mapped.
#[derive(Clone, Copy, Debug)]
pub struct MapperConfig {
    /// The router's hasher (its block size and scheme).
    pub hasher: BlockHasher,
    /// The KV-cache group credited when an event names a group but not its kind.
    pub full_attention_group: u32,
    /// The page size the engine is configured with, if known: events of another size
    /// are skipped ([`SkipReason::BlockSize`]). `None`: any size that divides the router's.
    pub expected_page_size: Option<u32>,
}

impl MapperConfig {
    /// Maps with `hasher`, crediting group 0, any page size.
    pub fn new(hasher: BlockHasher) -> Self {
        MapperConfig { hasher, full_attention_group: 0, expected_page_size: None }
    }
}

/// Why (part of) an event was not mapped. Counted, never fatal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// `EXTERNAL` or an unknown medium.
    Medium,
    /// A hybrid model's group that is not full attention.
    NonFullAttention,
    /// A block size that neither equals nor divides the router's.
    BlockSize,
    /// A page size other than the one this rank's tier already uses.
    PageSizeChanged,
    /// A page whose parent page the rank does not hold (the rest of its chain is skipped).
    UnknownParentPage,
}

impl SkipReason {
    /// Every reason, for metrics.
    pub const ALL: [SkipReason; 5] = [
        SkipReason::Medium,
        SkipReason::NonFullAttention,
        SkipReason::BlockSize,
        SkipReason::PageSizeChanged,
        SkipReason::UnknownParentPage,
    ];

    /// A short stable label (a metric label value).
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::Medium => "medium",
            SkipReason::NonFullAttention => "non_full_attention",
            SkipReason::BlockSize => "block_size",
            SkipReason::PageSizeChanged => "page_size_changed",
            SkipReason::UnknownParentPage => "unknown_parent_page",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Block hashes skipped, by reason ([`SkipReason::ALL`] order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkipCounts(pub [u64; 5]);

impl SkipCounts {
    pub fn get(&self, reason: SkipReason) -> u64 {
        self.0[reason.index()]
    }
    fn add(&mut self, reason: SkipReason, blocks: usize) {
        self.0[reason.index()] += blocks.max(1) as u64;
    }
}

/// One page of a re-chunked tier: held, or a tombstone (evicted, kept while pages below
/// it are held, so that storing it again finds them).
#[derive(Clone, Debug)]
struct Page {
    held: bool,
    parent: Option<u64>,
    /// Pages from the root: 0 for a root page.
    depth: u64,
    tokens: Box<[u32]>,
    /// The page's extra keys (LoRA entry dropped), if any.
    keys: Option<Box<[KeyValue]>>,
    lora: Option<Box<str>>,
    children: Vec<u64>,
    /// Router blocks (by id: their last page's hash) this page is part of.
    blocks: Vec<u64>,
}

/// The re-chunking state of one tier of one rank.
#[derive(Clone, Debug, Default)]
struct PageTable {
    /// The page size this tier's events use; `None` until its first stored event.
    page_size: Option<u32>,
    pages: HashMap<u64, Page>,
}

/// Maps one engine rank's events; see the module docs.
#[derive(Clone, Debug)]
pub struct BlockMapper {
    config: MapperConfig,
    tiers: [PageTable; 3],
    /// Groups seen with their kind: true for full attention.
    group_kinds: HashMap<u32, bool>,
    skipped: SkipCounts,
    /// Reused hash buffer.
    hashes: Vec<BlockHash>,
}

impl BlockMapper {
    pub fn new(config: MapperConfig) -> Self {
        BlockMapper {
            config,
            tiers: Default::default(),
            group_kinds: HashMap::new(),
            skipped: SkipCounts::default(),
            hashes: Vec::new(),
        }
    }

    /// Blocks skipped so far, by reason.
    pub fn skipped(&self) -> SkipCounts {
        self.skipped
    }

    fn router_block_size(&self) -> u32 {
        self.config.hasher.block_size() as u32
    }

    /// The rank lost everything (engine restart, `AllBlocksCleared`, an unrepairable gap):
    /// forgets the page tables. The caller clears the index.
    pub fn clear(&mut self) {
        self.tiers = Default::default();
    }

    /// Maps a `BlockStored`, appending the index events to `out` (tier, event).
    pub fn stored(&mut self, event: &BlockStored, out: &mut Vec<(StorageTier, KvEventData)>) {
        let blocks = event.block_hashes.len();
        let Some(tier) = self.tier_of(event.medium, blocks) else { return };
        if !self.credited_group(event) {
            self.skipped.add(SkipReason::NonFullAttention, blocks);
            return;
        }
        let router = self.router_block_size();
        let page = event.block_size;
        let unexpected = self.config.expected_page_size.is_some_and(|expected| expected != page);
        if page == 0 || page > router || router % page != 0 || unexpected {
            self.skipped.add(SkipReason::BlockSize, blocks);
            return;
        }
        let table = &mut self.tiers[tier.index()];
        match table.page_size {
            Some(size) if size != page => {
                self.skipped.add(SkipReason::PageSizeChanged, blocks);
                return;
            }
            Some(_) => {}
            None => table.page_size = Some(page),
        }
        if page == router {
            self.stored_blocks(tier, event, out);
        } else {
            self.stored_pages(tier, event, (router / page) as u64, out);
        }
    }

    /// Maps a `BlockRemoved`.
    pub fn removed(&mut self, event: &BlockRemoved, out: &mut Vec<(StorageTier, KvEventData)>) {
        let blocks = event.block_hashes.len();
        let Some(tier) = self.tier_of(event.medium, blocks) else { return };
        if let Some(group) = event.group_idx {
            let full = self.group_kinds.get(&group).copied().unwrap_or(group == self.config.full_attention_group);
            if !full {
                self.skipped.add(SkipReason::NonFullAttention, blocks);
                return;
            }
        }
        let router = self.router_block_size();
        let table = &mut self.tiers[tier.index()];
        let page_size = table.page_size.filter(|&page| page != router && page != 0);
        let Some(page_size) = page_size else {
            push_removal(tier, event.block_hashes.iter().map(|&h| EngineHash(h)), out);
            return;
        };
        let k = u64::from(router / page_size);
        let mut removed = Vec::new();
        for &page in &event.block_hashes {
            table.remove_page(page, k, &mut removed);
        }
        push_removal(tier, removed, out);
    }

    /// The tier a medium maps to; counts and returns `None` for the skipped ones.
    fn tier_of(&mut self, medium: Option<Medium>, blocks: usize) -> Option<StorageTier> {
        match medium {
            None | Some(Medium::Gpu) => Some(StorageTier::Device),
            Some(Medium::CpuPinned | Medium::Cpu) => Some(StorageTier::Host),
            Some(Medium::Disk | Medium::Storage) => Some(StorageTier::Disk),
            Some(Medium::External | Medium::Other) => {
                self.skipped.add(SkipReason::Medium, blocks);
                None
            }
        }
    }

    /// Whether a stored event's group is credited (learning the group's kind).
    fn credited_group(&mut self, event: &BlockStored) -> bool {
        if event.sliding_window.is_some() {
            if let Some(group) = event.group_idx {
                self.group_kinds.insert(group, false);
            }
            return false;
        }
        match (&event.kv_cache_spec_kind, event.group_idx) {
            (Some(kind), group) => {
                let full = kind == FULL_ATTENTION;
                if let Some(group) = group {
                    self.group_kinds.insert(group, full);
                }
                full
            }
            (None, Some(group)) => {
                self.group_kinds.get(&group).copied().unwrap_or(group == self.config.full_attention_group)
            }
            (None, None) => true,
        }
    }

    /// Block-for-block: one `Stored` with the event's chain.
    fn stored_blocks(&mut self, tier: StorageTier, event: &BlockStored, out: &mut Vec<(StorageTier, KvEventData)>) {
        let lora = event.lora_name.as_deref();
        // vLLM sends an entry per block, nil for most: nothing to fold, nothing to build.
        let keys: Vec<Option<Vec<KeyValue>>> = match &event.extra_keys {
            Some(per_block) if per_block.iter().any(|k| own_keys(k.as_deref(), lora).is_some()) => {
                per_block.iter().map(|k| own_keys(k.as_deref(), lora).map(<[_]>::to_vec)).collect()
            }
            _ => Vec::new(),
        };
        let identity = BlockIdentity {
            lora_name: lora,
            // A salt reaches the index through the root block; children inherit it.
            cache_salt: event.parent.is_none().then_some(event.cache_salt.as_deref()).flatten(),
            extra_keys: &keys,
        };
        self.hashes.clear();
        self.config.hasher.hash_blocks_with_into(&event.token_ids, &identity, &mut self.hashes);
        let blocks: Vec<StoredBlock> = event
            .block_hashes
            .iter()
            .zip(&self.hashes)
            .map(|(&engine, &content)| StoredBlock { engine_hash: EngineHash(engine), content_hash: content })
            .collect();
        if !blocks.is_empty() {
            out.push((tier, KvEventData::Stored { parent: event.parent.map(EngineHash), blocks }));
        }
    }

    /// Re-chunked: pages into the table, completed router blocks out.
    fn stored_pages(
        &mut self,
        tier: StorageTier,
        event: &BlockStored,
        k: u64,
        out: &mut Vec<(StorageTier, KvEventData)>,
    ) {
        let page_len = event.block_size as usize;
        let lora = event.lora_name.as_deref();
        let hasher = self.config.hasher;
        let table = &mut self.tiers[tier.index()];
        let mut completed: Vec<u64> = Vec::new();
        let mut parent = event.parent;
        for (i, &hash) in event.block_hashes.iter().enumerate() {
            let depth = match parent {
                None => 0,
                Some(p) => match table.pages.get(&p).filter(|page| page.held) {
                    Some(page) => page.depth + 1,
                    None => {
                        self.skipped.add(SkipReason::UnknownParentPage, event.block_hashes.len() - i);
                        break;
                    }
                },
            };
            let known = table.pages.get(&hash).map(|page| page.held);
            if known != Some(true) {
                let tokens = event.token_ids.get(i * page_len..(i + 1) * page_len).unwrap_or(&[]);
                let extra = event.extra_keys.as_ref().and_then(|k| k.get(i)).and_then(|k| k.as_deref());
                let mut keys: Vec<KeyValue> = own_keys(extra, lora).map(<[_]>::to_vec).unwrap_or_default();
                if depth == 0 {
                    if let Some(salt) = event.cache_salt.as_deref().filter(|s| !s.is_empty()) {
                        keys.insert(0, KeyValue::Str(salt.to_owned()));
                    }
                }
                // A tombstone keeps the pages below it (and its place: same hash, same parent).
                let children = table.pages.remove(&hash).map(|old| old.children).unwrap_or_default();
                let page = Page {
                    held: true,
                    parent,
                    depth,
                    tokens: tokens.into(),
                    keys: (!keys.is_empty()).then(|| keys.into_boxed_slice()),
                    lora: lora.filter(|l| !l.is_empty()).map(Into::into),
                    children,
                    blocks: Vec::new(),
                };
                table.pages.insert(hash, page);
                if known.is_none() {
                    if let Some(p) = parent.and_then(|p| table.pages.get_mut(&p)) {
                        p.children.push(hash);
                    }
                }
                table.complete_from(hash, k, &mut completed);
            }
            parent = Some(hash);
        }
        // Completed blocks, in order; a block whose parent block was completed just
        // before continues its chain in the same event.
        let mut chain: Option<(Option<EngineHash>, Vec<StoredBlock>)> = None;
        for id in completed {
            let Some((block_parent, content)) = table.router_block(id, k, &hasher) else { continue };
            let block = StoredBlock { engine_hash: EngineHash(id), content_hash: content };
            let parent = block_parent.map(EngineHash);
            match &mut chain {
                Some((_, blocks)) if blocks.last().map(|b| Some(b.engine_hash)) == Some(parent) => blocks.push(block),
                _ => {
                    if let Some((p, blocks)) = chain.take() {
                        out.push((tier, KvEventData::Stored { parent: p, blocks }));
                    }
                    chain = Some((parent, vec![block]));
                }
            }
        }
        if let Some((parent, blocks)) = chain {
            out.push((tier, KvEventData::Stored { parent, blocks }));
        }
    }
}

/// A block's extra keys without vLLM's leading LoRA entry; `None` when nothing is left.
fn own_keys<'k>(keys: Option<&'k [KeyValue]>, lora: Option<&str>) -> Option<&'k [KeyValue]> {
    let keys = keys?;
    let keys = match (keys.first(), lora) {
        (Some(KeyValue::Str(first)), Some(lora)) if first == lora => &keys[1..],
        _ => keys,
    };
    (!keys.is_empty()).then_some(keys)
}

impl PageTable {
    /// After `hash` was stored: pushes the ids of the router blocks that are now held, in
    /// chain order (a parent block before its children). A block is held when its `k`
    /// pages are and its parent block is (block 0: none); so storing a page can complete
    /// the block it ends, a block whose later pages were held already (a page evicted in
    /// the middle and stored again), and below them every block that only waited for it.
    fn complete_from(&mut self, hash: u64, k: u64, completed: &mut Vec<u64>) {
        let Some(page) = self.pages.get(&hash) else { return };
        let end_depth = (page.depth / k + 1) * k - 1;
        // Depth first; each entry is a page and the depth where its block ends. Below a
        // tombstone nothing can complete.
        let mut stack = vec![(hash, end_depth)];
        while let Some((h, end)) = stack.pop() {
            let Some(p) = self.pages.get(&h).filter(|p| p.held) else { continue };
            if p.depth < end {
                stack.extend(p.children.iter().rev().map(|&c| (c, end)));
                continue;
            }
            if p.blocks.contains(&h) {
                // Held already, and so is everything below it that can be.
                continue;
            }
            let parent_held = match self.first_parent(h, k) {
                Some(None) => true,
                Some(Some(parent_end)) => self.pages.get(&parent_end).is_some_and(|p| p.blocks.contains(&parent_end)),
                None => false,
            };
            let Some(pages) = self.block_pages(h, k).filter(|_| parent_held) else { continue };
            for page in &pages {
                if let Some(entry) = self.pages.get_mut(page) {
                    entry.blocks.push(h);
                }
            }
            completed.push(h);
            // The next block down may have waited for this one.
            if let Some(p) = self.pages.get(&h) {
                stack.extend(p.children.iter().rev().map(|&c| (c, end + k)));
            }
        }
    }

    /// The parent of the first page of the block ending at `last` (the previous block's
    /// last page; `Some(None)` for block 0), if the block's pages are all held.
    fn first_parent(&self, last: u64, k: u64) -> Option<Option<u64>> {
        let pages = self.block_pages(last, k)?;
        Some(self.pages.get(pages.first()?)?.parent)
    }

    /// The `k` pages of the router block ending at `last`, root-most first, if all held.
    fn block_pages(&self, last: u64, k: u64) -> Option<Vec<u64>> {
        let mut pages = Vec::with_capacity(k as usize);
        let mut current = Some(last);
        for _ in 0..k {
            let hash = current?;
            let page = self.pages.get(&hash).filter(|p| p.held)?;
            pages.push(hash);
            current = page.parent;
        }
        pages.reverse();
        Some(pages)
    }

    /// The parent block id and content hash of the router block ending at `last`.
    fn router_block(&self, last: u64, k: u64, hasher: &BlockHasher) -> Option<(Option<u64>, BlockHash)> {
        let pages = self.block_pages(last, k)?;
        let first = self.pages.get(pages.first()?)?;
        let mut tokens = Vec::with_capacity(hasher.block_size());
        let mut keys: Vec<KeyValue> = Vec::new();
        for hash in &pages {
            let page = self.pages.get(hash)?;
            tokens.extend_from_slice(&page.tokens);
            if let Some(k) = &page.keys {
                keys.extend(k.iter().cloned());
            }
        }
        let extra_keys = [(!keys.is_empty()).then_some(keys)];
        let identity = BlockIdentity { lora_name: first.lora.as_deref(), cache_salt: None, extra_keys: &extra_keys };
        let mut out = Vec::with_capacity(1);
        hasher.hash_blocks_with_into(&tokens, &identity, &mut out);
        Some((first.parent, *out.first()?))
    }

    /// Evicts a page; pushes the ids of the router blocks it was part of. A page with
    /// pages below it stays as a tombstone; one without is forgotten, and so is every
    /// tombstone above it left without children.
    fn remove_page(&mut self, hash: u64, k: u64, removed: &mut Vec<EngineHash>) {
        let Some(page) = self.pages.get_mut(&hash).filter(|p| p.held) else {
            // Not held (or never placed): the index would count an unknown removal.
            removed.push(EngineHash(hash));
            return;
        };
        page.held = false;
        page.tokens = Box::default();
        page.keys = None;
        let blocks = std::mem::take(&mut page.blocks);
        for block in blocks {
            removed.push(EngineHash(block));
            // The block's other pages no longer make it: walk its k pages up from its last.
            let mut current = Some(block);
            for _ in 0..k {
                let Some(h) = current else { break };
                let Some(entry) = self.pages.get_mut(&h) else { break };
                entry.blocks.retain(|&b| b != block);
                current = entry.parent;
            }
        }
        self.prune(hash);
    }

    /// Forgets `hash` if it is a tombstone without children, then its parent likewise.
    fn prune(&mut self, mut hash: u64) {
        while let Some(page) = self.pages.get(&hash) {
            if page.held || !page.children.is_empty() {
                return;
            }
            let parent = page.parent;
            self.pages.remove(&hash);
            let Some(p) = parent else { return };
            let Some(parent_page) = self.pages.get_mut(&p) else { return };
            parent_page.children.retain(|&c| c != hash);
            hash = p;
        }
    }
}

/// Appends a removal of `blocks` in `tier` to `out`, into the `Removed` at its end when
/// there is one for the same tier: vLLM evicts one block per event, and a run of
/// removals becomes one index event (one allocation, one event id) instead of one each.
fn push_removal(
    tier: StorageTier,
    blocks: impl IntoIterator<Item = EngineHash>,
    out: &mut Vec<(StorageTier, KvEventData)>,
) {
    if let Some((last, KvEventData::Removed { blocks: run })) = out.last_mut() {
        if *last == tier {
            run.extend(blocks);
            return;
        }
    }
    let blocks: Vec<EngineHash> = blocks.into_iter().collect();
    if !blocks.is_empty() {
        out.push((tier, KvEventData::Removed { blocks }));
    }
}

#[cfg(test)]
#[path = "block_mapper_tests.rs"]
mod tests;
