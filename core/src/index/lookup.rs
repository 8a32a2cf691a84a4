//! The read path: `find_matches` walks the tree from the root along the request's
//! content hashes without taking a lock, waiting for a writer, or writing shared memory.
//!
//! The walk keeps `alive`, the set of ranks that hold every position matched so far, as
//! a bitset on the stack. Entering a node, the ranks not among its holders drop out and
//! score the number of blocks matched before the node; the node's run is then compared
//! against the request (a tight loop over contiguous hashes, no per-block pointer
//! chase); a divergence inside the run, the end of the request or a missing child ends
//! the walk and every rank still alive scores the blocks matched. The only allocation is
//! the result.

use std::sync::atomic::Ordering;

use super::child_table::ChildTable;
use super::node::{Node, Shape};
use super::rank_table::{RankTable, MAX_WORDS};
use super::reclaim::Guard;
use super::OverlapScores;
use crate::ids::BlockHash;

/// Number of leading equal hashes of `run` and `request`.
#[inline(always)]
pub(crate) fn common_prefix(run: &[BlockHash], request: &[BlockHash]) -> usize {
    let n = run.len().min(request.len());
    let (run, request) = (&run[..n], &request[..n]);
    let mut i = 0;
    // Four at a time: the compiler turns each chunk compare into two vector compares.
    while i + 4 <= n {
        if run[i..i + 4] != request[i..i + 4] {
            break;
        }
        i += 4;
    }
    while i < n && run[i] == request[i] {
        i += 1;
    }
    i
}

#[inline(always)]
fn child_of(guard: &Guard, shape: &Shape, key: BlockHash) -> Option<*mut Node> {
    let table = guard.load(&shape.children);
    if table.is_null() {
        return None;
    }
    // SAFETY: the table was loaded under `guard`, so it is not freed before the guard is.
    unsafe { &*(table as *const ChildTable) }.get(key.0)
}

fn emit(out: &mut OverlapScores, ranks: &RankTable, word: usize, mut bits: u64, depth: u32) {
    out.entries.reserve(bits.count_ones() as usize);
    while bits != 0 {
        let id = word * 64 + bits.trailing_zeros() as usize;
        bits &= bits - 1;
        if let Some(Some(key)) = ranks.keys.get(id) {
            out.entries.push((*key, depth));
        }
    }
}

pub(crate) fn find_matches(guard: &Guard, root: &Node, ranks: &RankTable, request: &[BlockHash]) -> OverlapScores {
    let mut out = OverlapScores::default();
    let Some(&first) = request.first() else { return out };
    let words = ranks.words.min(MAX_WORDS);
    let mut alive = [u64::MAX; MAX_WORDS];
    // SAFETY (all derefs below): nodes and shapes are loaded through `guard` or from
    // tables loaded through it; the reclamation scheme keeps them alive until it drops.
    let root_shape = unsafe { &*guard.load(&root.shape) };
    let mut next = child_of(guard, root_shape, first);
    let mut matched = 0usize;
    while let Some(node) = next {
        let node = unsafe { &*node };
        let shape = unsafe { &*guard.load(&node.shape) };
        let mut any = 0;
        for (w, alive_word) in alive.iter_mut().enumerate().take(words) {
            // Acquire: a holder bit set after deeper ones (stores go bottom-up) implies
            // those deeper bits are visible when this walk reaches them.
            let holders = shape.holders.get(w).map_or(0, |h| h.load(Ordering::Acquire));
            let dropped = *alive_word & !holders;
            if dropped != 0 && matched > 0 {
                emit(&mut out, ranks, w, dropped, matched as u32);
            }
            *alive_word &= holders;
            any |= *alive_word;
        }
        if any == 0 {
            return out;
        }
        let run = node.hashes(shape.len);
        let m = common_prefix(run, &request[matched..]);
        matched += m;
        if m < run.len() || matched == request.len() {
            break;
        }
        next = child_of(guard, shape, request[matched]);
    }
    if matched > 0 {
        for (w, &bits) in alive.iter().enumerate().take(words) {
            emit(&mut out, ranks, w, bits, matched as u32);
        }
    }
    out
}
