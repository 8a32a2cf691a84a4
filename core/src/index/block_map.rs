//! [`BlockMap`]: one rank's `engine hash -> Loc` map, laid out for the cache.
//!
//! # Why not a `HashMap`
//! Applying an event waits on these maps: one probe per block event, into a map too
//! large for the cache (a rank's KV cache of blocks, times every rank). A probe of
//! hashbrown's table reads a group of control bytes, then the bucket in another array:
//! two cache lines. And its bucket count is a power of two at most 7/8 full, so a map
//! sized for 4,096 blocks has 8,192 buckets (136 KiB); with 256 ranks that is 34 MiB,
//! more than this project's machines' L3.
//!
//! # Shape
//! One array of 16-byte slots, `(key, Loc)`, four to a cache line; key 0 marks an empty
//! slot, and the one real key 0 lives in `zero` beside the array. A key's home slot is
//! `mix(key) * slots >> 64` (any slot count, not only powers of two), and a key sits at
//! its home or in the first empty slot after it (linear probing, wrapping). The array is
//! at most 2/3 full, so 4,096 blocks take 6,148 slots (96 KiB), and a probe mostly reads
//! one cache line, two at the end of a run.
//!
//! # Invariant and removal
//! Between a key's home and its slot, no slot is empty. A removal keeps that without
//! tombstones: it empties the slot, then walks on and moves back every key whose home
//! is not strictly between the emptied slot and the key's own (backward-shift
//! deletion), until an empty slot.

use super::writer::Loc;
use crate::ids::EngineHash;

/// The largest share of slots in use: 2/3. Linear probing's misses (every insert of a
/// new key walks to an empty slot) get long past that: about 5 slots at 2/3, 13 at 4/5.
const LOAD_NUM: usize = 2;
const LOAD_DEN: usize = 3;

const EMPTY: u64 = 0;

#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    key: u64,
    loc: Loc,
}

const VACANT: Slot = Slot { key: EMPTY, loc: Loc::NONE };

/// Where [`BlockMap::probe`] found no entry: the slot its key takes (`usize::MAX` for key
/// 0, which lives beside the array).
#[must_use = "fill the slot, or drop it to insert nothing"]
pub(crate) struct VacantSlot {
    key: EngineHash,
    index: usize,
}

/// `engine hash -> Loc` for one rank (see the module docs).
#[derive(Default)]
pub(crate) struct BlockMap {
    slots: Box<[Slot]>,
    /// Keys in `slots` (not counting `zero`).
    filled: usize,
    zero: Option<Loc>,
}

#[inline(always)]
fn mix(key: u64) -> u64 {
    // A multiply spreads the key's bits upwards; the home slot takes the high ones.
    (key ^ (key >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl BlockMap {
    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.filled + usize::from(self.zero.is_some())
    }

    /// Entries it holds without growing.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len() * LOAD_NUM / LOAD_DEN
    }

    #[inline(always)]
    fn home(&self, key: u64) -> usize {
        ((u128::from(mix(key)) * self.slots.len() as u128) >> 64) as usize
    }

    #[inline(always)]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    /// The slot holding `key`, or the empty slot where it would go. `slots` is not empty
    /// and never full, so the walk ends.
    #[inline(always)]
    fn find(&self, key: u64) -> (usize, bool) {
        let mut i = self.home(key);
        loop {
            let slot = self.slots[i].key;
            if slot == key {
                return (i, true);
            }
            if slot == EMPTY {
                return (i, false);
            }
            i = self.next(i);
        }
    }

    #[inline]
    pub(crate) fn get(&self, key: EngineHash) -> Option<Loc> {
        if key.0 == EMPTY {
            return self.zero;
        }
        if self.slots.is_empty() {
            return None;
        }
        let (i, found) = self.find(key.0);
        found.then(|| self.slots[i].loc)
    }

    pub(crate) fn contains_key(&self, key: EngineHash) -> bool {
        self.get(key).is_some()
    }

    /// Reads the slot `key` would be in without using it: issued for a whole event's
    /// keys before the event is applied, so their cache misses overlap.
    #[inline]
    pub(crate) fn touch(&self, key: EngineHash) {
        if !self.slots.is_empty() {
            std::hint::black_box(self.slots[self.home(key.0)].key);
        }
    }

    /// The value of `key` if held, else the slot it would take, for [`fill`](Self::fill):
    /// one probe where `get` then `insert_new` would take two. Makes room first, so the
    /// slot stays valid until filled as long as nothing else is inserted or removed.
    #[inline]
    pub(crate) fn probe(&mut self, key: EngineHash) -> Result<Loc, VacantSlot> {
        if key.0 == EMPTY {
            return self.zero.ok_or(VacantSlot { key, index: usize::MAX });
        }
        if self.filled + 1 > self.capacity() {
            self.grow_for(self.filled + 1);
        }
        match self.find(key.0) {
            (i, true) => Ok(self.slots[i].loc),
            (index, false) => Err(VacantSlot { key, index }),
        }
    }

    /// Puts `loc` in the slot [`probe`](Self::probe) found for its key.
    #[inline]
    pub(crate) fn fill(&mut self, slot: VacantSlot, loc: Loc) {
        if slot.index == usize::MAX {
            self.zero = Some(loc);
        } else {
            debug_assert_eq!(self.slots[slot.index].key, EMPTY, "the slot was taken since the probe");
            self.slots[slot.index] = Slot { key: slot.key.0, loc };
            self.filled += 1;
        }
    }

    /// Inserts `key` unless it is held; returns whether it was inserted.
    #[inline]
    pub(crate) fn insert_new(&mut self, key: EngineHash, loc: Loc) -> bool {
        if key.0 == EMPTY {
            if self.zero.is_some() {
                return false;
            }
            self.zero = Some(loc);
            return true;
        }
        if self.filled + 1 > self.capacity() {
            self.grow_for(self.filled + 1);
        }
        let (i, found) = self.find(key.0);
        if found {
            return false;
        }
        self.slots[i] = Slot { key: key.0, loc };
        self.filled += 1;
        true
    }

    /// Removes `key`, returning its value.
    #[inline]
    pub(crate) fn remove(&mut self, key: EngineHash) -> Option<Loc> {
        if key.0 == EMPTY {
            return self.zero.take();
        }
        if self.slots.is_empty() {
            return None;
        }
        let (mut hole, found) = self.find(key.0);
        if !found {
            return None;
        }
        let loc = self.slots[hole].loc;
        self.slots[hole] = VACANT;
        self.filled -= 1;
        // Backward shift: a later key of the run moves into the hole unless its home lies
        // cyclically in (hole, j], where it can still be reached without the hole.
        let mut j = self.next(hole);
        while self.slots[j].key != EMPTY {
            let home = self.home(self.slots[j].key);
            let reachable = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !reachable {
                self.slots[hole] = self.slots[j];
                self.slots[j] = VACANT;
                hole = j;
            }
            j = self.next(j);
        }
        Some(loc)
    }

    /// Room for `additional` more entries without growing.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let wanted = self.filled + additional;
        if wanted > self.capacity() {
            self.grow_for(wanted);
        }
    }

    /// Rebuilds the array with room for `entries` (and at least twice the old size, so
    /// that growing one entry at a time costs amortised O(1)).
    #[cold]
    fn grow_for(&mut self, entries: usize) {
        let wanted = entries.div_ceil(LOAD_NUM) * LOAD_DEN + 1;
        let slots = wanted.max(self.slots.len() * 2).max(8).next_multiple_of(4);
        let old = std::mem::replace(&mut self.slots, vec![VACANT; slots].into_boxed_slice());
        for slot in old.iter().filter(|s| s.key != EMPTY) {
            let (i, _) = self.find(slot.key);
            self.slots[i] = *slot;
        }
    }

    /// Every `(engine hash, Loc)`, in no order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (EngineHash, Loc)> + '_ {
        let zero = self.zero.map(|loc| (EngineHash(EMPTY), loc));
        zero.into_iter().chain(self.slots.iter().filter(|s| s.key != EMPTY).map(|s| (EngineHash(s.key), s.loc)))
    }

    /// Takes every entry out (the array keeps its size).
    pub(crate) fn drain(&mut self) -> Vec<(EngineHash, Loc)> {
        let out: Vec<(EngineHash, Loc)> = self.iter().collect();
        self.slots.fill(VACANT);
        self.filled = 0;
        self.zero = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
        Get(u64),
        Reserve(usize),
        Drain,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few distinct keys, 0 among them, so inserts, removals and probe runs collide.
        let key = prop_oneof![0..40u64, any::<u64>()];
        prop_oneof![
            6 => (key.clone(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            4 => key.clone().prop_map(Op::Remove),
            3 => key.prop_map(Op::Get),
            1 => (0..100usize).prop_map(Op::Reserve),
            1 => Just(Op::Drain),
        ]
    }

    fn loc(v: u32) -> Loc {
        Loc::new(v, v / 3)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// The map answers as a `HashMap` does after every operation.
        #[test]
        fn block_map_equals_a_hash_map(ops in prop::collection::vec(op(), 1..300)) {
            let mut map = BlockMap::default();
            let mut model: HashMap<u64, Loc> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        // Odd values go through probe and fill, even ones through insert_new.
                        let inserted = if v % 2 == 1 {
                            match map.probe(EngineHash(k)) {
                                Ok(held) => {
                                    prop_assert_eq!(Some(held), model.get(&k).copied());
                                    false
                                }
                                Err(slot) => {
                                    map.fill(slot, loc(v));
                                    true
                                }
                            }
                        } else {
                            map.insert_new(EngineHash(k), loc(v))
                        };
                        prop_assert_eq!(inserted, !model.contains_key(&k));
                        model.entry(k).or_insert(loc(v));
                    }
                    Op::Remove(k) => prop_assert_eq!(map.remove(EngineHash(k)), model.remove(&k)),
                    Op::Get(k) => prop_assert_eq!(map.get(EngineHash(k)), model.get(&k).copied()),
                    Op::Reserve(n) => {
                        map.reserve(n);
                        // Key 0 lives beside the array and needs no room in it.
                        prop_assert!(map.capacity() >= map.filled + n);
                    }
                    Op::Drain => {
                        let mut drained = map.drain();
                        drained.sort_unstable_by_key(|e| e.0);
                        let mut expected: Vec<(EngineHash, Loc)> =
                            model.drain().map(|(k, v)| (EngineHash(k), v)).collect();
                        expected.sort_unstable_by_key(|e| e.0);
                        prop_assert_eq!(drained, expected);
                    }
                }
                prop_assert_eq!(map.len(), model.len());
                prop_assert!(map.filled < map.slots.len() || map.slots.is_empty(), "never full");
                for (&k, &v) in &model {
                    prop_assert_eq!(map.get(EngineHash(k)), Some(v), "key {}", k);
                }
                prop_assert_eq!(map.iter().count(), model.len());
            }
        }
    }

    #[test]
    fn a_map_sized_for_4096_blocks_takes_at_most_6148_slots() {
        let mut map = BlockMap::default();
        map.reserve(4096);
        assert!(map.capacity() >= 4096);
        assert!(map.slots.len() <= 6148, "{} slots", map.slots.len());
        for k in 1..=4096u64 {
            assert!(map.insert_new(EngineHash(k.wrapping_mul(0x5851_f42d_4c95_7f2d)), loc(k as u32)));
        }
        assert!(map.slots.len() <= 6148, "no growth within the reservation");
    }
}
