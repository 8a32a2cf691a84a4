//! Cutting a publisher's output into frames no longer than the peer accepts: deltas into
//! `Deltas` batches, a dump into `DumpBegin`, `DumpBlocks` chunks and `DumpEnd`.

use super::publisher::RankDump;
use super::ring::Delta;
use crate::ids::RankKey;
use crate::wire::{self, Deltas, DumpBegin, DumpBlocks, DumpEnd, Frame};

/// A delta too large for any frame of the peer's maximum length (only possible when
/// `PublisherConfig::max_event_blocks` is set too high for that maximum).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaTooLarge {
    pub seq: u64,
    /// Length of a frame holding this delta alone.
    pub frame_len: usize,
    pub max_frame_len: u32,
}

impl std::fmt::Display for DeltaTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let DeltaTooLarge { seq, frame_len, max_frame_len } = self;
        write!(f, "delta {seq} needs a {frame_len}-byte frame, the peer accepts at most {max_frame_len}")
    }
}

impl std::error::Error for DeltaTooLarge {}

/// `Deltas` frames carrying `deltas` in order, each at most `max_frame_len` bytes
/// encoded (without a checksum). A frame holds consecutive deltas of one tier with
/// consecutive sequence numbers, as many as fit.
pub fn delta_frames(rank: RankKey, deltas: &[Delta], max_frame_len: u32) -> Result<Vec<Frame>, DeltaTooLarge> {
    let max = usize::try_from(max_frame_len).unwrap_or(usize::MAX);
    let mut frames = Vec::new();
    let mut current: Option<(Deltas, usize)> = None;
    for delta in deltas {
        let event_len = wire::event_encoded_len(&delta.data);
        let alone = wire::DELTAS_OVERHEAD.saturating_add(event_len);
        if alone > max {
            return Err(DeltaTooLarge { seq: delta.seq, frame_len: alone, max_frame_len });
        }
        if let Some((batch, len)) = &mut current {
            let follows =
                batch.tier == delta.tier && batch.last_seq().and_then(|s| s.checked_add(1)) == Some(delta.seq);
            if follows && len.saturating_add(event_len) <= max {
                batch.events.push(delta.data.clone());
                *len += event_len;
                continue;
            }
        }
        if let Some((batch, _)) = current.take() {
            frames.push(Frame::Deltas(batch));
        }
        let batch = Deltas { rank, tier: delta.tier, first_seq: delta.seq, events: vec![delta.data.clone()] };
        current = Some((batch, alone));
    }
    if let Some((batch, _)) = current {
        frames.push(Frame::Deltas(batch));
    }
    Ok(frames)
}

/// The frames of a dump: `DumpBegin`, `DumpBlocks` chunks (each at most `max_frame_len`
/// bytes encoded, without a checksum; at least one block per chunk), then `DumpEnd`.
pub fn dump_frames(rank: RankKey, dump: &RankDump, max_frame_len: u32) -> impl Iterator<Item = Frame> + '_ {
    let per_frame = wire::max_dump_blocks_per_frame(max_frame_len).max(1);
    let begin = Frame::DumpBegin(DumpBegin { rank, as_of_seq: dump.as_of_seq });
    let chunks = dump.tiers.iter().flat_map(move |tier_dump| {
        tier_dump
            .blocks
            .chunks(per_frame)
            .map(move |chunk| Frame::DumpBlocks(DumpBlocks { rank, tier: tier_dump.tier, blocks: chunk.to_vec() }))
    });
    let end = Frame::DumpEnd(DumpEnd { rank, as_of_seq: dump.as_of_seq, block_count: dump.block_count() });
    std::iter::once(begin).chain(chunks).chain(std::iter::once(end))
}
