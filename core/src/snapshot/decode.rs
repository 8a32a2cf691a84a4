//! Reading a snapshot: [`verify_snapshot`] checks everything once (magic, version,
//! length, checksum, then every count, code and offset of every worker, section and run)
//! and returns a [`SnapshotLayout`]: the header, the worker records and, per section, its
//! byte ranges. [`SnapshotLayout::view`] pairs it with the same bytes as a
//! [`SnapshotView`], whose iterators ([`Runs`], [`RunBlocks`]) read blocks straight from
//! the bytes: no copy, no allocation per block. [`decode_snapshot`] builds owned values.
//!
//! Validation walks run headers, not blocks, so it costs the checksum plus a few
//! nanoseconds per run. What it cannot check without hashing every block (that each run's
//! parent appears earlier) the index tolerates: a `Stored` with an unknown parent is
//! dropped and counted.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use super::layout::*;
use super::{CursorState, RankSnapshot, Snapshot, SnapshotError, SnapshotMeta, WorkerRecord};
use crate::event::DumpBlock;
use crate::event::StoredBlock;
use crate::ids::{BlockHash, DpRank, EngineHash, RankKey, WorkerId};
use crate::tier::StorageTier;
use crate::worker::{BootstrapEndpoint, WorkerSpec};

fn le_u16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2).and_then(|s| s.try_into().ok()).map_or(0, u16::from_le_bytes)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map_or(0, u32::from_le_bytes)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes)
}

/// Bounded reads over the checksummed bytes; running out is `Malformed` (the file has the
/// length its header says, so a count that runs past it is a bad count).
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn malformed(&self, reason: &'static str) -> SnapshotError {
        SnapshotError::Malformed { offset: self.pos as u64, reason }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: u64, reason: &'static str) -> Result<&'a [u8], SnapshotError> {
        let n = usize::try_from(n).ok().filter(|&n| n <= self.remaining()).ok_or_else(|| self.malformed(reason))?;
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }
}

/// Where one section's parts lie in the bytes.
#[derive(Clone, Debug)]
struct SectionInfo {
    rank: RankKey,
    tier: StorageTier,
    cursor: Option<CursorState>,
    run_count: u64,
    block_count: u64,
    placeholder_count: u64,
    runs: Range<usize>,
    placeholders: Range<usize>,
}

/// A verified snapshot's header, workers and section offsets (small and owned; the blocks
/// stay in the bytes). Pair it with the bytes it was verified from: [`Self::view`].
#[derive(Clone, Debug)]
pub struct SnapshotLayout {
    meta: SnapshotMeta,
    workers: Vec<WorkerRecord>,
    sections: Vec<SectionInfo>,
    len: usize,
    checksum: u64,
    block_count: u64,
}

impl SnapshotLayout {
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    pub fn workers(&self) -> &[WorkerRecord] {
        &self.workers
    }

    /// Dump blocks in all sections, placeholders included.
    pub fn block_count(&self) -> u64 {
        self.block_count
    }

    pub fn section_count(&self) -> usize {
        self.sections.len()
    }

    /// A zero-copy view over `bytes`, which must be the bytes this layout was verified
    /// from: `None` if their length or stored checksum differ (a cheap guard; the
    /// checksum is not recomputed).
    pub fn view<'a>(&'a self, bytes: &'a [u8]) -> Option<SnapshotView<'a>> {
        (bytes.len() == self.len && le_u64(bytes, H_CHECKSUM) == self.checksum)
            .then_some(SnapshotView { bytes, layout: self })
    }
}

/// A verified snapshot over its bytes; see the module docs.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotView<'a> {
    bytes: &'a [u8],
    layout: &'a SnapshotLayout,
}

impl<'a> SnapshotView<'a> {
    pub fn meta(&self) -> &'a SnapshotMeta {
        &self.layout.meta
    }

    pub fn workers(&self) -> &'a [WorkerRecord] {
        &self.layout.workers
    }

    pub fn block_count(&self) -> u64 {
        self.layout.block_count
    }

    /// Every (rank, tier) section, in file order.
    pub fn sections(&self) -> impl ExactSizeIterator<Item = SectionView<'a>> + 'a {
        let bytes = self.bytes;
        self.layout.sections.iter().map(move |info| SectionView {
            info,
            runs: bytes.get(info.runs.clone()).unwrap_or_default(),
            placeholders: bytes.get(info.placeholders.clone()).unwrap_or_default(),
        })
    }

    /// Owned values of the whole snapshot.
    pub fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            meta: self.layout.meta,
            workers: self.layout.workers.clone(),
            ranks: self
                .sections()
                .map(|s| RankSnapshot { rank: s.rank(), tier: s.tier(), cursor: s.cursor(), blocks: s.dump_blocks() })
                .collect(),
        }
    }
}

/// One (rank, tier) section of a [`SnapshotView`].
#[derive(Clone, Copy, Debug)]
pub struct SectionView<'a> {
    info: &'a SectionInfo,
    runs: &'a [u8],
    placeholders: &'a [u8],
}

impl<'a> SectionView<'a> {
    pub fn rank(&self) -> RankKey {
        self.info.rank
    }

    pub fn tier(&self) -> StorageTier {
        self.info.tier
    }

    pub fn cursor(&self) -> Option<CursorState> {
        self.info.cursor
    }

    /// Dump blocks in the section, placeholders included.
    pub fn block_count(&self) -> u64 {
        self.info.block_count
    }

    pub fn run_count(&self) -> u64 {
        self.info.run_count
    }

    pub fn placeholder_count(&self) -> u64 {
        self.info.placeholder_count
    }

    /// The runs: each a `Stored` event's parent and chain.
    pub fn runs(&self) -> Runs<'a> {
        Runs { bytes: self.runs }
    }

    /// Placeholder ordinals (positions in the section's block order), increasing.
    fn ordinals(&self) -> impl Iterator<Item = u64> + 'a {
        self.placeholders.chunks_exact(ORDINAL_LEN).map(|c| le_u64(c, 0))
    }

    /// Engine hashes of the placeholder blocks: to remove once the runs are stored.
    pub fn placeholder_hashes(&self) -> Vec<EngineHash> {
        let mut out = Vec::with_capacity(self.placeholders.len() / ORDINAL_LEN);
        let mut ordinals = self.ordinals().peekable();
        let mut first = 0u64; // ordinal of the current run's first block
        for run in self.runs() {
            let end = first + run.len() as u64;
            while let Some(&o) = ordinals.peek() {
                if o >= end {
                    break;
                }
                let at = ((o - first) as usize) * BLOCK_LEN;
                out.push(EngineHash(le_u64(run.blocks, at)));
                ordinals.next();
            }
            first = end;
        }
        out
    }

    /// The section's blocks as a dump (owned).
    pub fn dump_blocks(&self) -> Vec<DumpBlock> {
        let mut out = Vec::with_capacity(self.runs.len() / BLOCK_LEN);
        let mut ordinals = self.ordinals().peekable();
        for run in self.runs() {
            let mut parent = run.parent();
            for block in run.blocks() {
                let ordinal = out.len() as u64;
                let placeholder = ordinals.next_if_eq(&ordinal).is_some();
                out.push(DumpBlock { parent, block, placeholder });
                parent = Some(block.engine_hash);
            }
        }
        out
    }
}

/// The runs of a section, in order.
#[derive(Clone, Debug)]
pub struct Runs<'a> {
    bytes: &'a [u8],
}

impl<'a> Iterator for Runs<'a> {
    type Item = RunView<'a>;

    fn next(&mut self) -> Option<RunView<'a>> {
        let header = self.bytes.get(..RUN_HEADER_LEN)?;
        let len = le_u32(header, 8) as usize;
        let parent = (le_u32(header, 12) & RUN_HAS_PARENT != 0).then(|| EngineHash(le_u64(header, 0)));
        let end = len.checked_mul(BLOCK_LEN)?.checked_add(RUN_HEADER_LEN)?;
        let blocks = self.bytes.get(RUN_HEADER_LEN..end)?;
        self.bytes = self.bytes.get(end..).unwrap_or_default();
        Some(RunView { parent, blocks })
    }
}

/// One run: `Stored { parent, blocks }`.
#[derive(Clone, Copy, Debug)]
pub struct RunView<'a> {
    parent: Option<EngineHash>,
    blocks: &'a [u8],
}

impl<'a> RunView<'a> {
    pub fn parent(&self) -> Option<EngineHash> {
        self.parent
    }

    pub fn len(&self) -> usize {
        self.blocks.len() / BLOCK_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn blocks(&self) -> RunBlocks<'a> {
        RunBlocks { chunks: self.blocks.chunks_exact(BLOCK_LEN) }
    }
}

/// The blocks of a run, read from the bytes.
#[derive(Clone, Debug)]
pub struct RunBlocks<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
}

impl Iterator for RunBlocks<'_> {
    type Item = StoredBlock;

    #[inline]
    fn next(&mut self) -> Option<StoredBlock> {
        let c = self.chunks.next()?;
        Some(StoredBlock { engine_hash: EngineHash(le_u64(c, 0)), content_hash: BlockHash(le_u64(c, 8)) })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for RunBlocks<'_> {}

/// Checks a whole snapshot; see the module docs.
pub fn verify_snapshot(bytes: &[u8]) -> Result<SnapshotLayout, SnapshotError> {
    let available = bytes.len() as u64;
    let truncated = |needed: u64| SnapshotError::Truncated { needed, available };
    if bytes.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(bytes) { truncated(HEADER_LEN as u64) } else { SnapshotError::BadMagic });
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    if bytes.len() < H_VERSION + 4 {
        return Err(truncated(HEADER_LEN as u64));
    }
    let version = le_u32(bytes, H_VERSION);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
    }
    if bytes.len() < HEADER_LEN {
        return Err(truncated(HEADER_LEN as u64));
    }
    let malformed = |offset: usize, reason| SnapshotError::Malformed { offset: offset as u64, reason };
    if le_u32(bytes, H_HEADER_LEN) != HEADER_LEN as u32 {
        return Err(malformed(H_HEADER_LEN, "header length is not 64"));
    }
    let file_len = le_u64(bytes, H_FILE_LEN);
    if file_len > available {
        return Err(truncated(file_len));
    }
    if file_len < available {
        return Err(malformed(file_len as usize, "bytes past the snapshot's length"));
    }
    let stored = le_u64(bytes, H_CHECKSUM);
    let computed = checksum(&bytes[CHECKSUMMED_FROM..]);
    if stored != computed {
        return Err(SnapshotError::ChecksumMismatch { stored, computed });
    }

    let hash_scheme = scheme_from_code(bytes[H_HASH_SCHEME]).ok_or(malformed(H_HASH_SCHEME, "unknown hash scheme"))?;
    if bytes[H_HASH_SCHEME + 1..H_WORKER_COUNT].iter().any(|&b| b != 0) {
        return Err(malformed(H_HASH_SCHEME + 1, "reserved header bytes are not zero"));
    }
    let meta =
        SnapshotMeta { taken_at_ms: le_u64(bytes, H_TAKEN_AT), block_size: le_u32(bytes, H_BLOCK_SIZE), hash_scheme };
    let mut r = Reader { bytes, pos: HEADER_LEN };
    let worker_count = le_u32(bytes, H_WORKER_COUNT) as usize;
    let mut workers = Vec::with_capacity(worker_count.min(r.remaining() / WORKER_FIXED_LEN));
    let mut worker_ids = HashSet::with_capacity(workers.capacity());
    for _ in 0..worker_count {
        let record = read_worker(&mut r)?;
        if !worker_ids.insert(record.spec.worker) {
            return Err(r.malformed("a worker listed twice"));
        }
        workers.push(record);
    }

    let section_count = le_u32(bytes, H_SECTION_COUNT) as usize;
    let mut sections = Vec::with_capacity(section_count.min(r.remaining() / SECTION_HEADER_LEN));
    let mut seen: HashSet<(RankKey, u8)> = HashSet::with_capacity(sections.capacity());
    let mut cursors: HashMap<RankKey, Option<CursorState>> = HashMap::with_capacity(sections.capacity());
    let mut total = 0u64;
    for _ in 0..section_count {
        let info = read_section(&mut r)?;
        if !seen.insert((info.rank, tier_code(info.tier))) {
            return Err(r.malformed("a (rank, tier) section listed twice"));
        }
        if *cursors.entry(info.rank).or_insert(info.cursor) != info.cursor {
            return Err(r.malformed("a rank's sections disagree on its cursor"));
        }
        total = total.checked_add(info.block_count).ok_or(r.malformed("block count overflows"))?;
        sections.push(info);
    }
    if total != le_u64(bytes, H_BLOCK_COUNT) {
        return Err(malformed(H_BLOCK_COUNT, "block count differs from the sections' sum"));
    }
    if r.remaining() != 0 {
        return Err(r.malformed("bytes after the last section"));
    }
    Ok(SnapshotLayout { meta, workers, sections, len: bytes.len(), checksum: stored, block_count: total })
}

fn read_worker(r: &mut Reader<'_>) -> Result<WorkerRecord, SnapshotError> {
    let at = r.pos;
    let malformed = |reason| SnapshotError::Malformed { offset: at as u64, reason };
    let w = r.take(WORKER_FIXED_LEN as u64, "worker record past the end")?;
    let flags = w[25];
    if flags & !WORKER_FLAGS != 0 {
        return Err(malformed("unknown worker flags"));
    }
    let role = role_from_code(w[24]).ok_or(malformed("unknown worker role"))?;
    let world = le_u32(w, 16);
    let port = le_u16(w, 26);
    let host_len = le_u32(w, 28);
    let has = |bit: u8| flags & bit != 0;
    if (!has(WORKER_HAS_WORLD) && world != 0)
        || (!has(WORKER_HAS_PORT) && port != 0)
        || (!has(WORKER_HAS_BOOTSTRAP) && (host_len != 0 || has(WORKER_HAS_PORT)))
    {
        return Err(malformed("worker field set without its flag"));
    }
    let padded = padded8(host_len as usize) as u64;
    let host = r.take(padded, "worker host past the end")?;
    let (host, padding) = host.split_at(host_len as usize);
    if padding.iter().any(|&b| b != 0) {
        return Err(malformed("worker host padding is not zero"));
    }
    let host = std::str::from_utf8(host).map_err(|_| malformed("worker host is not UTF-8"))?;
    let bootstrap = has(WORKER_HAS_BOOTSTRAP)
        .then(|| BootstrapEndpoint { host: host.to_owned(), port: has(WORKER_HAS_PORT).then_some(port) });
    let spec = WorkerSpec {
        worker: WorkerId(le_u64(w, 0)),
        dp_start: le_u32(w, 8),
        dp_size: le_u32(w, 12),
        dp_world_size: has(WORKER_HAS_WORLD).then_some(world),
        block_size: le_u32(w, 20),
        role,
        bootstrap,
    };
    Ok(WorkerRecord { spec, exact: has(WORKER_EXACT) })
}

fn read_section(r: &mut Reader<'_>) -> Result<SectionInfo, SnapshotError> {
    let at = r.pos;
    let malformed = |reason| SnapshotError::Malformed { offset: at as u64, reason };
    let h = r.take(SECTION_HEADER_LEN as u64, "section header past the end")?;
    let rank = RankKey { worker: WorkerId(le_u64(h, 0)), dp_rank: DpRank(le_u32(h, 8)) };
    let tier = tier_from_code(h[12]).ok_or(malformed("unknown tier"))?;
    let flags = h[13];
    let window = le_u16(h, S_SETTLED_WINDOW);
    if flags & !(SECTION_HAS_CURSOR | SECTION_HAS_SETTLED) != 0 {
        return Err(malformed("unknown section flags"));
    }
    let settled = flags & SECTION_HAS_SETTLED != 0;
    if settled != (window != 0) || (settled && flags & SECTION_HAS_CURSOR == 0) {
        return Err(malformed("settled window without its flag or without a cursor"));
    }
    let (incarnation, applied_seq) = (le_u64(h, 16), le_u64(h, 24));
    let cursor = if flags & SECTION_HAS_CURSOR != 0 {
        let settled_seq = applied_seq.checked_add(u64::from(window)).ok_or(malformed("settled window overflows"))?;
        Some(CursorState { incarnation, applied_seq, settled_seq })
    } else if incarnation != 0 || applied_seq != 0 {
        return Err(malformed("cursor fields set without the cursor flag"));
    } else {
        None
    };
    let run_count = le_u64(h, S_RUN_COUNT);
    let block_count = le_u64(h, S_BLOCK_COUNT);
    let placeholder_count = le_u64(h, S_PLACEHOLDER_COUNT);
    // Cheap bounds first: every run and block takes at least 16 bytes.
    let room = (r.remaining() / BLOCK_LEN) as u64;
    if run_count > room || block_count > room || run_count > block_count {
        return Err(malformed("section counts exceed the bytes left"));
    }
    let runs_start = r.pos;
    let mut blocks = 0u64;
    for _ in 0..run_count {
        let run_at = r.pos;
        let run_malformed = |reason| SnapshotError::Malformed { offset: run_at as u64, reason };
        let header = r.take(RUN_HEADER_LEN as u64, "run header past the end")?;
        let len = u64::from(le_u32(header, 8));
        let run_flags = le_u32(header, 12);
        if len == 0 {
            return Err(run_malformed("empty run"));
        }
        if run_flags & !RUN_HAS_PARENT != 0 {
            return Err(run_malformed("unknown run flags"));
        }
        if run_flags & RUN_HAS_PARENT == 0 && le_u64(header, 0) != 0 {
            return Err(run_malformed("run parent set without its flag"));
        }
        r.take(len * BLOCK_LEN as u64, "run blocks past the end")?;
        blocks += len; // at most the file length / 16: no overflow
    }
    if blocks != block_count {
        return Err(malformed("section block count differs from its runs"));
    }
    let runs = runs_start..r.pos;
    let placeholders_start = r.pos;
    let ordinals = r.take(placeholder_count.saturating_mul(ORDINAL_LEN as u64), "placeholder ordinals past the end")?;
    let mut next_allowed = 0u64;
    for c in ordinals.chunks_exact(ORDINAL_LEN) {
        let o = le_u64(c, 0);
        if o < next_allowed || o >= block_count {
            return Err(malformed("placeholder ordinals out of order or range"));
        }
        next_allowed = o + 1;
    }
    Ok(SectionInfo {
        rank,
        tier,
        cursor,
        run_count,
        block_count,
        placeholder_count,
        runs,
        placeholders: placeholders_start..r.pos,
    })
}

/// Verifies `bytes` and decodes them into owned values.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let layout = verify_snapshot(bytes)?;
    // Just verified from these very bytes: the pairing guard cannot fail.
    let view = layout.view(bytes).ok_or(SnapshotError::Malformed { offset: 0, reason: "layout mismatch" })?;
    Ok(view.to_snapshot())
}
