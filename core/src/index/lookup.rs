//! The read path: `find_matches` walks the tree from the root along the request's
//! content hashes without taking a lock, waiting for a writer, or writing shared memory.
//!
//! Per level the walk touches a child table slot and the child's shape (the table points
//! at shapes, see `node`): two dependent cache misses, plus the run's hashes and holder
//! words, whose addresses are known together once the shape is in.
//!
//! The walk keeps `alive`, the set of ranks that hold every position matched so far, as
//! a bitset on the stack. Entering a node, the ranks not among its holders drop out and
//! score the number of blocks matched before the node; the node's run is then compared
//! against the request (a tight loop over contiguous hashes, no per-block pointer
//! chase); a divergence inside the run, the end of the request or a missing child ends
//! the walk and every rank still alive scores the blocks matched. The result is appended
//! to the caller's buffer, reserved once for the ranks holding the first node; the walk
//! starts from the rank table's live mask, so a rank id is translated to its key with one
//! indexed load (and a word whose 64 ranks all score alike is one straight copy).

use std::sync::atomic::Ordering;

use super::child_table::ChildTable;
use super::node::{Node, Shape};
use super::rank_table::{RankTable, MAX_WORDS};
use super::reclaim::Guard;
use crate::ids::{BlockHash, RankKey};

/// How far ahead of its comparison `common_prefix` prefetches the run, in hashes.
const PREFETCH_AHEAD: usize = 64;

/// Number of leading equal hashes of `run` and `request`.
#[inline(always)]
pub(crate) fn common_prefix(run: &[BlockHash], request: &[BlockHash]) -> usize {
    let n = run.len().min(request.len());
    let (run, request) = (&run[..n], &request[..n]);
    let mut i = 0;
    // Eight at a time with one branch: OR of XORs, which the compiler vectorises (SSE2
    // on any x86-64). Runs of hundreds of blocks make this loop most of a long lookup.
    while i + 8 <= n {
        // A deep match streams kilobytes of run from L3: ask for the line PREFETCH_AHEAD
        // hashes ahead.
        #[cfg(target_arch = "x86_64")]
        if i + PREFETCH_AHEAD < n {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: a prefetch is a hint that never faults; SSE is baseline on x86-64;
            // the address is inside `run` anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(run[i + PREFETCH_AHEAD..].as_ptr().cast()) };
        }
        let (a, b) = (&run[i..i + 8], &request[i..i + 8]);
        let mut diff = 0u64;
        for j in 0..8 {
            diff |= a[j].0 ^ b[j].0;
        }
        if diff != 0 {
            break;
        }
        i += 8;
    }
    while i < n && run[i] == request[i] {
        i += 1;
    }
    i
}

#[inline(always)]
fn child_of(guard: &Guard, shape: &Shape, key: BlockHash) -> Option<*mut Shape> {
    // SAFETY: the table was loaded under `guard`, so it is not freed before the guard is.
    unsafe { ChildTable::from_packed(guard.load(&shape.children)) }?.get(key.0)
}

/// Where a walk writes its scores: `(RankKey, overlap)` pairs for callers, or overlaps
/// straight into the router's per-slot array ([`SlotDepths`]).
pub(crate) trait ScoreSink {
    fn reserve(&mut self, additional: usize);
    /// Records `(rank, depth)` for every rank id set in `bits` (word `word` of the
    /// bitset). Every id in `bits` is live in `ranks` (the walk starts from its live mask).
    fn emit(&mut self, ranks: &RankTable, word: usize, bits: u64, depth: u32);
}

impl ScoreSink for Vec<(RankKey, u32)> {
    fn reserve(&mut self, additional: usize) {
        Vec::reserve(self, additional);
    }

    #[inline(always)]
    fn emit(&mut self, ranks: &RankTable, word: usize, bits: u64, depth: u32) {
        let keys = &ranks.keys[word * 64..ranks.keys.len().min(word * 64 + 64)];
        if bits == u64::MAX {
            // The common case with hundreds of ranks sharing a prefix: a straight copy.
            self.extend(keys.iter().map(|&key| (key, depth)));
            return;
        }
        let mut rest = bits;
        while rest != 0 {
            let bit = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            if let Some(&key) = keys.get(bit) {
                self.push((key, depth));
            }
        }
    }
}

/// Overlaps written into a caller's per-slot array through an id -> slot map.
pub(crate) struct SlotDepths<'a> {
    pub(crate) slot_of_id: &'a [u32],
    pub(crate) depths: &'a mut [u32],
    /// How a shard's own id becomes the index's: `own * stride + offset`.
    pub(crate) stride: usize,
    pub(crate) offset: usize,
}

impl ScoreSink for SlotDepths<'_> {
    fn reserve(&mut self, _additional: usize) {}

    #[inline(always)]
    fn emit(&mut self, _ranks: &RankTable, word: usize, bits: u64, depth: u32) {
        let mut rest = bits;
        while rest != 0 {
            let id = (word * 64 + rest.trailing_zeros() as usize) * self.stride + self.offset;
            rest &= rest - 1;
            if let Some(&slot) = self.slot_of_id.get(id) {
                if let Some(d) = self.depths.get_mut(slot as usize) {
                    *d = depth;
                }
            }
        }
    }
}

/// Appends to `out` the overlap of every rank with a non-zero one (see [`KvIndex::find_matches`]).
///
/// [`KvIndex::find_matches`]: super::KvIndex::find_matches
pub(crate) fn find_matches_into<S: ScoreSink>(
    guard: &Guard,
    root: &Node,
    ranks: &RankTable,
    request: &[BlockHash],
    out: &mut S,
) {
    let Some(&first) = request.first() else { return };
    let words = ranks.words.min(MAX_WORDS);
    let mut alive = [0u64; MAX_WORDS];
    alive[..words].copy_from_slice(&ranks.live[..words]);
    // SAFETY (all derefs below): the root's shape is loaded through `guard`, every other
    // shape from a slot of a table loaded through a shape loaded so; the reclamation scheme
    // keeps them (and the nodes whose runs they point into) alive until the guard drops.
    let root_shape = unsafe { &*guard.load(&root.shape) };
    let mut next = child_of(guard, root_shape, first);
    let mut matched = 0usize;
    let mut reserved = false;
    while let Some(shape) = next {
        let shape = unsafe { &*shape };
        // If the whole run matches, the walk goes on at the child under the request's
        // next hash: start that slot's cache miss now, alongside the holder words' and the
        // run's, instead of after the comparison. Only a hint: `child_of` loads the table
        // pointer again after this node's holders (their `Acquire` must come first).
        if let Some(&after) = request.get(matched + shape.len as usize) {
            // SAFETY: as `child_of`: the table is loaded under `guard`.
            if let Some(table) = unsafe { ChildTable::from_packed(guard.load(&shape.children)) } {
                table.prefetch(after.0);
            }
        }
        if !reserved {
            // Only ranks holding the first node can score: one reservation, no regrowth.
            // Relaxed: a capacity hint; a bit set since then only costs a regrowth.
            let holders: u32 = shape.holders.iter().take(words).map(|h| h.load(Ordering::Relaxed).count_ones()).sum();
            out.reserve(holders as usize);
            reserved = true;
        }
        let mut any = 0;
        for (w, alive_word) in alive.iter_mut().enumerate().take(words) {
            // Acquire: a holder bit set after deeper ones (stores go bottom-up) implies
            // those deeper bits are visible when this walk reaches them.
            let holders = shape.holders.get(w).map_or(0, |h| h.load(Ordering::Acquire));
            let dropped = *alive_word & !holders;
            if dropped != 0 && matched > 0 {
                out.emit(ranks, w, dropped, matched as u32);
            }
            *alive_word &= holders;
            any |= *alive_word;
        }
        if any == 0 {
            return;
        }
        let run = shape.hashes();
        let m = common_prefix(run, &request[matched..]);
        matched += m;
        if m < run.len() || matched == request.len() {
            break;
        }
        next = child_of(guard, shape, request[matched]);
    }
    if matched > 0 {
        for (w, &bits) in alive.iter().enumerate().take(words) {
            out.emit(ranks, w, bits, matched as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;
    use crate::ids::BlockHash;

    #[test]
    fn common_prefix_finds_the_first_difference_at_every_offset() {
        let run: Vec<BlockHash> = (0..150u64).map(BlockHash).collect();
        for len in [0usize, 1, 7, 8, 9, 64, 65, 72, 150] {
            for diverge in 0..=len {
                let mut request = run[..len].to_vec();
                if diverge < len {
                    request[diverge] = BlockHash(u64::MAX);
                }
                assert_eq!(common_prefix(&run, &request), diverge, "len {len}, diverge {diverge}");
                assert_eq!(common_prefix(&request, &run), diverge, "swapped, len {len}, diverge {diverge}");
            }
        }
    }
}
