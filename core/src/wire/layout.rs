//! Field sizes, value codes and validity rules shared by the encoder and the decoder, so
//! that the encoder never writes a frame the decoder would refuse.

use crate::tier::StorageTier;

/// `RankKey`: worker u64, dp_rank u32.
pub(crate) const RANK_KEY_LEN: usize = 12;
/// `Option<u64>`: presence byte (0 or 1) and the value (0 when absent).
pub(crate) const OPTION_U64_LEN: usize = 9;
/// `StoredBlock`: engine hash u64, content hash u64.
pub(crate) const STORED_BLOCK_LEN: usize = 16;
/// A removed engine hash.
pub(crate) const ENGINE_HASH_LEN: usize = 8;
/// `DumpBlock`: flags u8, parent u64, engine hash u64, content hash u64.
pub(crate) const DUMP_BLOCK_LEN: usize = 25;
/// A list's element count.
pub(crate) const COUNT_LEN: usize = 4;
/// The shortest event (`Cleared`: its tag alone).
pub(crate) const MIN_EVENT_LEN: usize = 1;
/// Elements a decoder reserves room for before it has decoded any, for lists whose
/// elements vary in size (events): beyond this the list grows as elements are decoded.
pub(crate) const MAX_UNTRUSTED_PREALLOC: usize = 1024;

/// `Deltas` before its events: rank, tier, first_seq, event count.
pub(crate) const DELTAS_FIXED_LEN: usize = RANK_KEY_LEN + 1 + 8 + COUNT_LEN;
/// `DumpBlocks` before its blocks: rank, tier, block count.
pub(crate) const DUMP_BLOCKS_FIXED_LEN: usize = RANK_KEY_LEN + 1 + COUNT_LEN;

pub(crate) const EVENT_STORED: u8 = 1;
pub(crate) const EVENT_REMOVED: u8 = 2;
pub(crate) const EVENT_CLEARED: u8 = 3;

/// `DumpBlock` flag: the parent field holds a parent.
pub(crate) const DUMP_HAS_PARENT: u8 = 1;
/// `DumpBlock` flag: a placeholder block.
pub(crate) const DUMP_PLACEHOLDER: u8 = 2;

pub(crate) fn tier_code(tier: StorageTier) -> u8 {
    match tier {
        StorageTier::Device => 0,
        StorageTier::Host => 1,
        StorageTier::Disk => 2,
    }
}

pub(crate) fn tier_from_code(code: u8) -> Option<StorageTier> {
    match code {
        0 => Some(StorageTier::Device),
        1 => Some(StorageTier::Host),
        2 => Some(StorageTier::Disk),
        _ => None,
    }
}

/// The rule on a `Deltas` batch: not empty, first_seq at least 1, last seq within u64.
pub(crate) fn check_delta_seqs(first_seq: u64, event_count: usize) -> Result<(), &'static str> {
    if event_count == 0 {
        return Err("no events");
    }
    if first_seq == 0 {
        return Err("first_seq is 0 (sequence numbers start at 1)");
    }
    let extra = u64::try_from(event_count - 1).map_err(|_| "too many events")?;
    first_seq.checked_add(extra).map(|_| ()).ok_or("last sequence number overflows u64")
}

/// The rule on a `Hello`: the publisher speaks at least the version the frame is in.
pub(crate) fn check_max_version(max_version: u8) -> Result<(), &'static str> {
    if max_version < super::header::VERSION {
        return Err("max_version is below the frame's own version");
    }
    Ok(())
}
