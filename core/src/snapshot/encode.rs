//! Writing a snapshot: [`SnapshotEncoder`] appends the header and workers, then one
//! section at a time (so a router can export and encode rank by rank without holding
//! every dump at once), and [`SnapshotEncoder::finish`] patches the counts, the length and
//! the checksum into the header.

use super::layout::*;
use super::{CursorState, RankSnapshot, SnapshotMeta, WorkerRecord};
use crate::event::DumpBlock;
use crate::ids::{EngineHash, RankKey};
use crate::tier::StorageTier;

fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut [u8], at: usize, v: u64) {
    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Counts past `u32::MAX` cannot be written; such a snapshot is refused on read
/// (`Malformed`) rather than wrong. No router comes near (ranks are at most 4096).
fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Builds one snapshot at the end of a byte buffer; see the module docs.
pub struct SnapshotEncoder<'a> {
    out: &'a mut Vec<u8>,
    /// Where this snapshot starts in `out`.
    start: usize,
    sections: usize,
    blocks: u64,
    ordinals: Vec<u64>,
}

impl<'a> SnapshotEncoder<'a> {
    /// Appends the header (counts still zero) and the worker records.
    pub fn new(meta: &SnapshotMeta, workers: &[WorkerRecord], out: &'a mut Vec<u8>) -> Self {
        let start = out.len();
        out.resize(start + HEADER_LEN, 0);
        let h = &mut out[start..];
        h[..8].copy_from_slice(&MAGIC);
        put_u32(h, H_VERSION, FORMAT_VERSION);
        put_u32(h, H_HEADER_LEN, HEADER_LEN as u32);
        put_u64(h, H_TAKEN_AT, meta.taken_at_ms);
        put_u32(h, H_BLOCK_SIZE, meta.block_size);
        h[H_HASH_SCHEME] = scheme_code(meta.hash_scheme);
        put_u32(h, H_WORKER_COUNT, count_u32(workers.len()));
        for w in workers {
            write_worker(w, out);
        }
        SnapshotEncoder { out, start, sections: 0, blocks: 0, ordinals: Vec::new() }
    }

    /// Appends one (rank, tier) section. `blocks` is a dump: parents before children.
    pub fn section(&mut self, rank: RankKey, tier: StorageTier, cursor: Option<CursorState>, blocks: &[DumpBlock]) {
        let out = &mut *self.out;
        let header = out.len();
        out.resize(header + SECTION_HEADER_LEN, 0);
        let h = &mut out[header..];
        put_u64(h, 0, rank.worker.0);
        put_u32(h, 8, rank.dp_rank.0);
        h[12] = tier_code(tier);
        if let Some(c) = cursor {
            h[13] = SECTION_HAS_CURSOR;
            put_u64(h, 16, c.incarnation);
            put_u64(h, 24, c.applied_seq);
            // Clamped: a narrower window only counts some replays as anomalies.
            let window = u16::try_from(c.settled_seq.saturating_sub(c.applied_seq)).unwrap_or(u16::MAX);
            if window > 0 {
                h[13] |= SECTION_HAS_SETTLED;
                h[S_SETTLED_WINDOW..S_SETTLED_WINDOW + 2].copy_from_slice(&window.to_le_bytes());
            }
        }
        // Runs: a block continues the current run when its parent is the run's last block
        // (as `DumpReplay` groups them), else it starts one.
        let mut runs = 0u64;
        let mut run: Option<(usize, u32, EngineHash)> = None; // (header offset, length, last hash)
        self.ordinals.clear();
        for (i, b) in blocks.iter().enumerate() {
            let continues = matches!(run, Some((_, len, last)) if b.parent == Some(last) && len < u32::MAX);
            if !continues {
                if let Some((at, len, _)) = run {
                    put_u32(out, at + 8, len);
                }
                let at = out.len();
                out.extend_from_slice(&b.parent.map_or(0, |p| p.0).to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                out.extend_from_slice(&(if b.parent.is_some() { RUN_HAS_PARENT } else { 0 }).to_le_bytes());
                run = Some((at, 0, b.block.engine_hash));
                runs += 1;
            }
            out.extend_from_slice(&b.block.engine_hash.0.to_le_bytes());
            out.extend_from_slice(&b.block.content_hash.0.to_le_bytes());
            if let Some((_, len, last)) = &mut run {
                *len += 1;
                *last = b.block.engine_hash;
            }
            if b.placeholder {
                self.ordinals.push(i as u64);
            }
        }
        if let Some((at, len, _)) = run {
            put_u32(out, at + 8, len);
        }
        for &ordinal in &self.ordinals {
            out.extend_from_slice(&ordinal.to_le_bytes());
        }
        let h = &mut out[header..];
        put_u64(h, S_RUN_COUNT, runs);
        put_u64(h, S_BLOCK_COUNT, blocks.len() as u64);
        put_u64(h, S_PLACEHOLDER_COUNT, self.ordinals.len() as u64);
        self.sections += 1;
        self.blocks += blocks.len() as u64;
    }

    /// Patches counts, length and checksum; returns the snapshot's length in bytes.
    pub fn finish(self) -> usize {
        let len = self.out.len() - self.start;
        let snapshot = &mut self.out[self.start..];
        put_u32(snapshot, H_SECTION_COUNT, count_u32(self.sections));
        put_u64(snapshot, H_BLOCK_COUNT, self.blocks);
        put_u64(snapshot, H_FILE_LEN, len as u64);
        let sum = checksum(&snapshot[CHECKSUMMED_FROM..]);
        put_u64(snapshot, H_CHECKSUM, sum);
        len
    }
}

fn write_worker(w: &WorkerRecord, out: &mut Vec<u8>) {
    let spec = &w.spec;
    let mut flags = 0u8;
    if w.exact {
        flags |= WORKER_EXACT;
    }
    if spec.dp_world_size.is_some() {
        flags |= WORKER_HAS_WORLD;
    }
    let (host, port) = match &spec.bootstrap {
        Some(b) => {
            flags |= WORKER_HAS_BOOTSTRAP;
            if b.port.is_some() {
                flags |= WORKER_HAS_PORT;
            }
            (b.host.as_bytes(), b.port.unwrap_or(0))
        }
        None => (&[][..], 0),
    };
    out.extend_from_slice(&spec.worker.0.to_le_bytes());
    out.extend_from_slice(&spec.dp_start.to_le_bytes());
    out.extend_from_slice(&spec.dp_size.to_le_bytes());
    out.extend_from_slice(&spec.dp_world_size.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&spec.block_size.to_le_bytes());
    out.push(role_code(spec.role));
    out.push(flags);
    out.extend_from_slice(&port.to_le_bytes());
    out.extend_from_slice(&count_u32(host.len()).to_le_bytes());
    out.extend_from_slice(host);
    out.resize(out.len() + padded8(host.len()) - host.len(), 0);
}

/// Encodes a whole snapshot at the end of `out`; returns its length.
pub fn encode_snapshot(
    meta: &SnapshotMeta,
    workers: &[WorkerRecord],
    ranks: impl IntoIterator<Item = RankSnapshot>,
    out: &mut Vec<u8>,
) -> usize {
    let mut encoder = SnapshotEncoder::new(meta, workers, out);
    for r in ranks {
        encoder.section(r.rank, r.tier, r.cursor, &r.blocks);
    }
    encoder.finish()
}
