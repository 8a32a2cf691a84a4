use super::*;

const RANK: RankKey = RankKey::new(1, 0);

fn blocks(first: u64, n: u64) -> Vec<BlockHash> {
    (first..first + n).map(BlockHash).collect()
}

fn index() -> KvIndex {
    let index = KvIndex::new();
    index.register_rank(RANK).unwrap();
    index
}

fn overlap(index: &KvIndex, prompt: &[BlockHash]) -> u32 {
    index.find_matches(prompt).entries.iter().map(|&(_, n)| n).max().unwrap_or(0)
}

#[test]
fn the_same_prompt_routed_again_refreshes_instead_of_adding_entries() {
    let index = index();
    let mut book = ApproxBook::new(10_000, 1 << 20);
    let prompt = blocks(0, 128);
    for now in 0..5_000 {
        book.record(&index, RANK, &prompt, now);
    }
    let stats = book.stats();
    assert_eq!(stats.blocks, 128, "one entry per (rank, block)");
    assert!(stats.queued <= 2 * 128 + COMPACT_SLACK, "stale entries compacted: {stats:?}");
    assert_eq!(overlap(&index, &prompt), 128);
    // Expired 10 s after the last refresh, not the first.
    assert!(book.expire(&index, 10_000 + 4_998));
    assert_eq!(overlap(&index, &prompt), 128);
    assert!(book.expire(&index, 10_000 + 4_999));
    assert_eq!(overlap(&index, &prompt), 0);
    assert_eq!(book.stats(), ApproxStats { ranks: 0, blocks: 0, queued: 0 });
}

#[test]
fn a_rank_past_its_cap_evicts_the_least_recently_routed_blocks() {
    let index = index();
    let mut book = ApproxBook::new(1_000_000, 100);
    let old = blocks(1_000, 60);
    let newer = blocks(2_000, 60);
    book.record(&index, RANK, &old, 0);
    book.record(&index, RANK, &newer, 1);
    assert_eq!(book.stats().blocks, 100);
    assert_eq!(overlap(&index, &newer), 60, "the newest prompt is whole");
    assert_eq!(overlap(&index, &old), 0, "the oldest prompt lost its first blocks");
    // A prompt longer than the cap is credited with its first `max_blocks` blocks.
    let long = blocks(5_000, 500);
    book.record(&index, RANK, &long, 2);
    assert_eq!(book.stats().blocks, 100);
    assert_eq!(overlap(&index, &long), 100);
}

#[test]
fn expiry_is_incremental_and_gives_memory_back() {
    let index = index();
    let mut book = ApproxBook::new(100, 1 << 22);
    // Distinct prompts, more blocks than one call's budget.
    for n in 0..(3 * EXPIRY_BUDGET as u64 / 64) {
        book.record(&index, RANK, &blocks(n * 1_000_000, 64), 0);
    }
    let before = book.stats().blocks;
    assert_eq!(before, 3 * EXPIRY_BUDGET);
    assert!(!book.expire(&index, 1_000), "one call stops at its budget");
    assert_eq!(book.stats().blocks, before - EXPIRY_BUDGET);
    let mut calls = 1;
    loop {
        calls += 1;
        if book.expire(&index, 1_000) {
            break;
        }
    }
    // The third call empties the queue exactly at its budget; the fourth finds nothing.
    assert_eq!(calls, 4);
    assert_eq!(book.stats().blocks, 0);
    let state = &book.ranks[&RANK];
    assert!(state.expiry.capacity() <= COMPACT_SLACK * 2 && state.queue.capacity() <= COMPACT_SLACK * 2);
    // The rank keeps its event counter: it is credited again.
    book.record(&index, RANK, &blocks(7, 4), 2_000);
    assert_eq!(overlap(&index, &blocks(7, 4)), 4);
}
