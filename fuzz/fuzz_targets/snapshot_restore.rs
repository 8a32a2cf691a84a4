//! Fuzzes the snapshot reader and a router's restore from it: a snapshot file is untrusted
//! bytes (a disk may corrupt it, a bug or a person may forge it), and the router reads it
//! at start. Checks that neither `verify_snapshot`, `decode_snapshot`, the zero-copy view's
//! iterators nor `Router::restore_snapshot` panics; that the view and the owned decoder
//! agree; and that a router that restored whatever was accepted writes a snapshot of its
//! own that verifies.
//!
//! The first input byte picks how the rest becomes a snapshot:
//! - `0`: the bytes as they are (mostly bad magic, truncation, checksum mismatches);
//! - `1`: the bytes as the header's fields from offset 24 and the body, with the magic,
//!   version, header length, file length and checksum made right, so that every input
//!   reaches the structural checks;
//! - `2`, `3`: a real snapshot encoded from workers and dumps built from the bytes, then
//!   edited at a few places the bytes pick; with `2` it is resealed (file length and
//!   checksum made right again), with `3` the edits stay under the old checksum, which
//!   must then refuse any edit that changed a byte.
//!
//! Run: `cargo +nightly fuzz run snapshot_restore` (from the repo root).
#![no_main]

use std::sync::Arc;

use kvroute_core::hashing::HashScheme;
use kvroute_core::ids::{BlockHash, EngineHash, RankKey, WorkerId};
use kvroute_core::route::{Router, RouterConfig, StorageTier, WorkerSpec};
use kvroute_core::snapshot::{
    decode_snapshot, encode_snapshot, verify_snapshot, CursorState, RankSnapshot, SnapshotMeta, WorkerRecord,
    FORMAT_VERSION, HEADER_LEN, MAGIC,
};
use kvroute_core::wire::DumpBlock;
use kvroute_core::StoredBlock;
use libfuzzer_sys::fuzz_target;

/// Offsets of the header fields this target sets (the format: docs/snapshot-format.md).
const CHECKSUM_AT: usize = 16;
const CHECKSUMMED_FROM: usize = 24;
const FILE_LEN_AT: usize = 24;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (bytes, edited_under_old_checksum) = match mode % 4 {
        0 => (rest.to_vec(), false),
        1 => (sealed_from_fields(rest), false),
        m => {
            let (mut bytes, edits) = encoded_from(rest);
            let changed = apply_edits(&mut bytes, edits);
            if m == 2 {
                reseal(&mut bytes);
            }
            (bytes, m == 3 && changed)
        }
    };
    check(&bytes, edited_under_old_checksum);
});

fn check(bytes: &[u8], edited_under_old_checksum: bool) {
    let verified = verify_snapshot(bytes);
    let decoded = decode_snapshot(bytes);
    if edited_under_old_checksum {
        assert!(verified.is_err(), "an edit under the old checksum was accepted");
    }
    let layout = match (verified, decoded) {
        (Ok(layout), Ok(decoded)) => {
            let view = layout.view(bytes).expect("a layout views the bytes it was verified from");
            assert_eq!(view.to_snapshot(), decoded, "the view and the decoder disagree");
            layout
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "verify and decode refuse for different reasons");
            return;
        }
        (a, b) => panic!("verify and decode disagree: {:?} vs {:?}", a.map(|_| ()), b.map(|_| ())),
    };
    let view = layout.view(bytes).expect("checked above");
    let mut blocks = 0u64;
    for section in view.sections() {
        let mut in_runs = 0u64;
        for run in section.runs() {
            let _ = run.parent();
            in_runs += run.blocks().count() as u64;
        }
        assert_eq!(in_runs, section.block_count(), "a section's runs hold its block count");
        assert_eq!(section.dump_blocks().len() as u64, section.block_count());
        assert_eq!(section.placeholder_hashes().len() as u64, section.placeholder_count());
        blocks += section.block_count();
    }
    assert_eq!(blocks, view.block_count());

    // Restore into a router hashing as the snapshot did (else it refuses up front).
    let meta = view.meta();
    let config = RouterConfig { block_size: meta.block_size, hash_scheme: meta.hash_scheme, ..RouterConfig::default() };
    let Ok(router) = Router::new(config, Arc::new(|| 1_000u64)) else { return };
    let Ok(report) = router.restore_snapshot(&view) else { return };
    assert!(report.blocks_restored <= view.block_count());
    let mut own = Vec::new();
    let len = router.encode_snapshot(2_000, |_| None, &mut own);
    assert_eq!(len, own.len());
    verify_snapshot(&own).expect("a restored router's own snapshot verifies");
}

/// Header fields from offset 24 (file length excepted) and the body from `rest`, the rest
/// of the header made right.
fn sealed_from_fields(rest: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; HEADER_LEN];
    bytes[..8].copy_from_slice(&MAGIC);
    bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    let fields = rest.len().min(HEADER_LEN - CHECKSUMMED_FROM);
    bytes[CHECKSUMMED_FROM..CHECKSUMMED_FROM + fields].copy_from_slice(&rest[..fields]);
    bytes.extend_from_slice(&rest[fields..]);
    reseal(&mut bytes);
    bytes
}

/// Sets the file length and the checksum to match the bytes.
fn reseal(bytes: &mut [u8]) {
    if bytes.len() < HEADER_LEN {
        return;
    }
    let len = bytes.len() as u64;
    bytes[FILE_LEN_AT..FILE_LEN_AT + 8].copy_from_slice(&len.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[CHECKSUMMED_FROM..]);
    bytes[CHECKSUM_AT..CHECKSUM_AT + 8].copy_from_slice(&sum.to_le_bytes());
}

/// Reads `rest` front to back as small numbers; zeros once it runs out.
struct Bytes<'a>(std::slice::Iter<'a, u8>);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        self.0.next().copied().unwrap_or(0)
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| acc << 8 | u64::from(self.u8()))
    }
}

/// A valid snapshot of up to 3 workers and 4 sections built from the bytes, and the
/// bytes left over (the edits).
fn encoded_from(rest: &[u8]) -> (Vec<u8>, &[u8]) {
    let mut b = Bytes(rest.iter());
    let scheme = if b.u8() & 1 == 0 { HashScheme::Kv64 } else { HashScheme::Xxh3Compat };
    let meta = SnapshotMeta { taken_at_ms: 77, block_size: 16, hash_scheme: scheme };
    let mut workers: Vec<WorkerRecord> = Vec::new();
    for _ in 0..b.u8() % 4 {
        let id = WorkerId(u64::from(b.u8() % 8));
        if workers.iter().any(|w| w.spec.worker == id) {
            continue;
        }
        let dp_size = u32::from(b.u8() % 4) + 1;
        let spec = WorkerSpec::new(id, dp_size, 16);
        workers.push(WorkerRecord { spec, exact: b.u8() & 1 == 1 });
    }
    let mut sections: Vec<RankSnapshot> = Vec::new();
    for _ in 0..b.u8() % 5 {
        let rank = RankKey::new(u64::from(b.u8() % 8), u32::from(b.u8() % 5));
        let tier = [StorageTier::Device, StorageTier::Host, StorageTier::Disk][usize::from(b.u8() % 3)];
        if sections.iter().any(|s| s.rank == rank && s.tier == tier) {
            continue;
        }
        // A rank's sections carry the same cursor.
        let cursor = sections.iter().find(|s| s.rank == rank).map(|s| s.cursor).unwrap_or_else(|| {
            (b.u8() & 1 == 1).then(|| CursorState { incarnation: u64::from(b.u8()), applied_seq: u64::from(b.u8()) })
        });
        let mut blocks: Vec<DumpBlock> = Vec::new();
        for _ in 0..b.u8() % 12 {
            let kind = b.u8();
            let engine = EngineHash(u64::from(b.u8()));
            let parent = match kind % 3 {
                0 => None,
                1 => Some(EngineHash(u64::from(b.u8()))),
                _ => blocks.last().map(|d| d.block.engine_hash),
            };
            let block = StoredBlock { engine_hash: engine, content_hash: BlockHash(b.u64() % 16) };
            blocks.push(DumpBlock { parent, block, placeholder: kind & 8 != 0 });
        }
        sections.push(RankSnapshot { rank, tier, cursor, blocks });
    }
    workers.sort_by_key(|w| w.spec.worker);
    let mut bytes = Vec::new();
    encode_snapshot(&meta, &workers, sections.into_iter(), &mut bytes);
    (bytes, b.0.as_slice())
}

/// Applies up to six `(offset, xor)` edits, offsets over the whole snapshot; true if the
/// bytes differ afterwards (two edits of one byte may cancel out).
fn apply_edits(bytes: &mut [u8], edits: &[u8]) -> bool {
    let before = bytes.to_vec();
    for edit in edits.chunks_exact(3).take(6) {
        let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % bytes.len().max(1);
        if let Some(byte) = bytes.get_mut(at) {
            *byte ^= edit[2];
        }
    }
    *bytes != *before
}
