//! Byte offsets, lengths and value codes of the snapshot format, shared by the encoder and
//! the decoder (the reference is `docs/snapshot-format.md`). All integers little-endian.

use crate::hashing::HashScheme;
use crate::worker::Role;

/// The file's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"KVRTSNAP";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 64;

// Header fields.
pub(crate) const H_VERSION: usize = 8;
pub(crate) const H_HEADER_LEN: usize = 12;
pub(crate) const H_CHECKSUM: usize = 16;
/// The checksum covers every byte from here to the end of the file.
pub(crate) const CHECKSUMMED_FROM: usize = 24;
pub(crate) const H_FILE_LEN: usize = 24;
pub(crate) const H_TAKEN_AT: usize = 32;
pub(crate) const H_BLOCK_SIZE: usize = 40;
pub(crate) const H_HASH_SCHEME: usize = 44;
pub(crate) const H_WORKER_COUNT: usize = 48;
pub(crate) const H_SECTION_COUNT: usize = 52;
pub(crate) const H_BLOCK_COUNT: usize = 56;

/// A worker record before its host bytes.
pub(crate) const WORKER_FIXED_LEN: usize = 32;
pub(crate) const WORKER_EXACT: u8 = 1;
pub(crate) const WORKER_HAS_WORLD: u8 = 2;
pub(crate) const WORKER_HAS_BOOTSTRAP: u8 = 4;
pub(crate) const WORKER_HAS_PORT: u8 = 8;
pub(crate) const WORKER_FLAGS: u8 = WORKER_EXACT | WORKER_HAS_WORLD | WORKER_HAS_BOOTSTRAP | WORKER_HAS_PORT;

/// A section's header.
pub(crate) const SECTION_HEADER_LEN: usize = 56;
pub(crate) const S_RUN_COUNT: usize = 32;
pub(crate) const S_BLOCK_COUNT: usize = 40;
pub(crate) const S_PLACEHOLDER_COUNT: usize = 48;
pub(crate) const SECTION_HAS_CURSOR: u8 = 1;
/// The cursor's settled window (`settled_seq - applied_seq`, u16, clamped) is set.
pub(crate) const SECTION_HAS_SETTLED: u8 = 2;
pub(crate) const S_SETTLED_WINDOW: usize = 14;

/// A run's header: parent u64, length u32, flags u32.
pub(crate) const RUN_HEADER_LEN: usize = 16;
pub(crate) const RUN_HAS_PARENT: u32 = 1;
/// One block of a run: engine hash u64, content hash u64.
pub(crate) const BLOCK_LEN: usize = 16;
/// One placeholder ordinal.
pub(crate) const ORDINAL_LEN: usize = 8;

/// Tiers are coded as in wire frames.
pub(crate) use crate::wire::layout::{tier_code, tier_from_code};

pub(crate) fn role_code(role: Role) -> u8 {
    match role {
        Role::Prefill => 0,
        Role::Decode => 1,
        Role::Both => 2,
    }
}

pub(crate) fn role_from_code(code: u8) -> Option<Role> {
    match code {
        0 => Some(Role::Prefill),
        1 => Some(Role::Decode),
        2 => Some(Role::Both),
        _ => None,
    }
}

pub(crate) fn scheme_code(scheme: HashScheme) -> u8 {
    match scheme {
        HashScheme::Kv64 => 0,
        HashScheme::Xxh3Compat => 1,
    }
}

pub(crate) fn scheme_from_code(code: u8) -> Option<HashScheme> {
    match code {
        0 => Some(HashScheme::Kv64),
        1 => Some(HashScheme::Xxh3Compat),
        _ => None,
    }
}

/// The checksum: XXH3-64, seed 0. About 10x faster than a table-driven CRC32C, which
/// matters at hundreds of MB (see the restart bench).
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// `bytes.len()` padded up to a multiple of 8.
pub(crate) fn padded8(len: usize) -> usize {
    len.div_ceil(8) * 8
}
