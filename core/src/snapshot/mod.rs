//! Router snapshots, without I/O: the router's worker registry, each rank's blocks per
//! storage tier and each rank's event cursor, as one checksummed byte string, so that a
//! restarted router starts with its index instead of asking every publisher for a dump.
//!
//! # Shape
//! ```text
//! header (64 B)   magic "KVRTSNAP", version 1, XXH3-64 checksum of everything after it,
//!                 file length, taken_at_ms, block size, hash scheme, counts
//! workers         one record per registered worker: WorkerSpec + exact-mode flag
//! sections        one per (rank, tier): rank, tier, cursor, then the rank's blocks as
//!                 runs (parent, chain of (engine hash, content hash)) and the ordinals of
//!                 the placeholder blocks among them
//! ```
//! A section's blocks are the rank's dump (`KvIndex::export_rank`, the same list a
//! publisher's dump carries) cut into runs where each block's parent is the block just
//! before, i.e. exactly the `Stored` events `DumpReplay` would make: restoring a section is
//! one `Stored` per run and one `Removed` of the placeholders. The byte layout is in
//! `docs/snapshot-format.md`.
//!
//! # Use
//! - Write: [`SnapshotEncoder`] (streaming: one section at a time, header patched at the
//!   end) or [`encode_snapshot`]; `Router::encode_snapshot` does it for a router.
//! - Read: [`verify_snapshot`] checks the checksum and every count and offset once and
//!   returns a small owned [`SnapshotLayout`]; [`SnapshotLayout::view`] then gives a
//!   zero-copy [`SnapshotView`] over the same bytes (say, a memory map) whose iterators
//!   read blocks straight from them. [`decode_snapshot`] builds an owned [`Snapshot`]
//!   instead (simpler, slower for millions of blocks).
//! - Restore: `Router::restore_snapshot(&view)`.
//!
//! Untrusted bytes never panic and never allocate more than their own length would
//! allow: every error is a [`SnapshotError`] (bad magic, unsupported version, truncated,
//! checksum mismatch, malformed), and a caller ignores such a snapshot (never trusts it).

mod decode;
mod encode;
mod error;
mod layout;
#[cfg(test)]
mod tests;

pub use decode::{
    decode_snapshot, verify_snapshot, RunBlocks, RunView, Runs, SectionView, SnapshotLayout, SnapshotView,
};
pub use encode::{encode_snapshot, SnapshotEncoder};
pub use error::SnapshotError;
pub use layout::{FORMAT_VERSION, HEADER_LEN, MAGIC};

use crate::event::DumpBlock;
use crate::hashing::HashScheme;
use crate::ids::RankKey;
use crate::ingest::RankCursor;
use crate::tier::StorageTier;
use crate::worker::WorkerSpec;

/// What a snapshot says about itself: when it was taken (on the caller's clock) and the
/// hashing it was taken under (content hashes are meaningless under another).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub taken_at_ms: u64,
    pub block_size: u32,
    pub hash_scheme: HashScheme,
}

/// A registered worker and whether it was in exact mode (publishing KV events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRecord {
    pub spec: WorkerSpec,
    pub exact: bool,
}

/// Where the router stood in a rank's event stream: every event up to `applied_seq` of
/// publisher incarnation `incarnation` is in the snapshot's blocks, and none after
/// `settled_seq` (read once the rank's blocks were exported, `applied_seq` or more):
/// events in between, re-applied after a restore, may already be in the blocks
/// ([`crate::ingest::RankSession::restored`] applies them as replays).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CursorState {
    pub incarnation: u64,
    pub applied_seq: u64,
    pub settled_seq: u64,
}

impl CursorState {
    /// A cursor whose blocks hold exactly the events up to `applied_seq`.
    pub fn exact(incarnation: u64, applied_seq: u64) -> Self {
        CursorState { incarnation, applied_seq, settled_seq: applied_seq }
    }

    /// The cursor read before a rank's export (`self`) joined with the one read after it:
    /// `settled_seq` from `after` when it is of the same incarnation (else the blocks may
    /// be a newer incarnation's, which a resume at `self` would refuse anyway).
    pub fn settled_by(self, after: Option<CursorState>) -> Self {
        match after {
            Some(a) if a.incarnation == self.incarnation && a.applied_seq >= self.applied_seq => {
                CursorState { settled_seq: a.applied_seq.max(self.settled_seq), ..self }
            }
            _ => self,
        }
    }

    /// A cursor synchronised at `applied_seq` of `incarnation`: subscribing with its
    /// `resume_after()` asks the publisher to resume after it (or dump, if its ring no
    /// longer covers it).
    pub fn to_cursor(self) -> RankCursor {
        RankCursor::resumed(self.incarnation, self.applied_seq)
    }
}

/// One rank's blocks in one tier, and the rank's cursor (the same in each of its tiers'
/// sections: one event stream carries all tiers of a rank).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankSnapshot {
    pub rank: RankKey,
    pub tier: StorageTier,
    pub cursor: Option<CursorState>,
    /// A dump: parents before children, placeholders flagged.
    pub blocks: Vec<DumpBlock>,
}

/// A whole snapshot, decoded into owned values ([`decode_snapshot`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub workers: Vec<WorkerRecord>,
    pub ranks: Vec<RankSnapshot>,
}
