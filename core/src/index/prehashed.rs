//! A hasher for keys that are already hashes (engine block hashes, node addresses):
//! one multiply and a fold instead of SipHash. Engine hashes come from authenticated
//! publishers, so flooding resistance is not needed on this map.

use std::hash::{BuildHasher, Hasher};

#[derive(Clone, Copy, Default)]
pub(crate) struct Prehashed;

#[derive(Default)]
pub(crate) struct PrehashedHasher(u64);

const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for PrehashedHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(26) ^ v).wrapping_mul(K);
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 31)
    }
}

impl BuildHasher for Prehashed {
    type Hasher = PrehashedHasher;
    #[inline]
    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher(0)
    }
}

pub(crate) type PrehashedMap<K, V> = std::collections::HashMap<K, V, Prehashed>;
