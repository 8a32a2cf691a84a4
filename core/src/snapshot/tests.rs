//! Round trips (owned and zero-copy), and refusal without panics: random bytes, every
//! truncation, every bit flip, and structural forgeries with a recomputed checksum.

use proptest::prelude::*;

use super::layout::{checksum, CHECKSUMMED_FROM, H_CHECKSUM};
use super::*;
use crate::event::StoredBlock;
use crate::ids::{BlockHash, EngineHash, WorkerId};
use crate::worker::{BootstrapEndpoint, Role};

fn meta() -> SnapshotMeta {
    SnapshotMeta { taken_at_ms: 1_700_000_000_123, block_size: 16, hash_scheme: HashScheme::Xxh3Compat }
}

fn worker() -> impl Strategy<Value = WorkerRecord> {
    (
        any::<u64>(),
        0..8u32,
        1..8u32,
        prop::option::of(8..16u32),
        prop_oneof![Just(Role::Prefill), Just(Role::Decode), Just(Role::Both)],
        prop::option::of(("[a-z0-9.é]{0,13}", prop::option::of(any::<u16>()))),
        any::<bool>(),
    )
        .prop_map(|(worker, dp_start, dp_size, dp_world_size, role, bootstrap, exact)| WorkerRecord {
            spec: WorkerSpec {
                worker: WorkerId(worker),
                dp_start,
                dp_size,
                dp_world_size,
                block_size: 16,
                role,
                bootstrap: bootstrap.map(|(host, port)| BootstrapEndpoint { host, port }),
            },
            exact,
        })
}

/// Blocks whose parents often chain to the block before (long runs) and sometimes not.
fn blocks() -> impl Strategy<Value = Vec<DumpBlock>> {
    prop::collection::vec((0..4u8, any::<u64>(), any::<u64>(), any::<bool>()), 0..40).prop_map(|raw| {
        let mut out: Vec<DumpBlock> = Vec::new();
        for (kind, engine, content, placeholder) in raw {
            let parent = match kind {
                0 => None,
                1 => Some(EngineHash(engine ^ 1)),
                _ => out.last().map(|b| b.block.engine_hash),
            };
            let block = StoredBlock { engine_hash: EngineHash(engine), content_hash: BlockHash(content) };
            out.push(DumpBlock { parent, block, placeholder });
        }
        out
    })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (prop::collection::vec(worker(), 0..4), prop::collection::vec((any::<u32>(), blocks()), 0..5)).prop_map(
        |(mut workers, sections)| {
            workers.sort_by_key(|w| w.spec.worker);
            workers.dedup_by_key(|w| w.spec.worker);
            let ranks = sections
                .into_iter()
                .enumerate()
                .map(|(i, (seed, blocks))| RankSnapshot {
                    // Unique (rank, tier); a rank's tiers share its cursor.
                    rank: RankKey::new(u64::from(seed % 3), i as u32 / 3),
                    tier: [StorageTier::Device, StorageTier::Host, StorageTier::Disk][i % 3],
                    cursor: (seed % 2 == 0).then_some(CursorState {
                        incarnation: 7,
                        applied_seq: u64::from(i as u32 / 3),
                        settled_seq: u64::from(i as u32 / 3) + u64::from(i as u32 / 3 % 2) * 3,
                    }),
                    blocks,
                })
                .collect::<Vec<_>>();
            Snapshot { meta: meta(), workers, ranks }
        },
    )
}

fn consistent(s: &Snapshot) -> bool {
    // The generator may give one rank's tiers different cursors; the decoder refuses that.
    let mut cursors = std::collections::HashMap::new();
    s.ranks.iter().all(|r| *cursors.entry(r.rank).or_insert(r.cursor) == r.cursor)
}

fn encode(s: &Snapshot) -> Vec<u8> {
    let mut out = Vec::new();
    let len = encode_snapshot(&s.meta, &s.workers, s.ranks.iter().cloned(), &mut out);
    assert_eq!(len, out.len());
    out
}

/// Rewrites the checksum so that a forged body passes it.
fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= HEADER_LEN {
        let sum = checksum(&bytes[CHECKSUMMED_FROM..]);
        bytes[H_CHECKSUM..H_CHECKSUM + 8].copy_from_slice(&sum.to_le_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn round_trips(s in snapshot().prop_filter("consistent cursors", consistent)) {
        let bytes = encode(&s);
        prop_assert_eq!(&decode_snapshot(&bytes).unwrap(), &s);
        // Zero-copy: the runs are the events a dump replay would make; placeholders match.
        let layout = verify_snapshot(&bytes).unwrap();
        let view = layout.view(&bytes).unwrap();
        prop_assert_eq!(view.block_count(), s.ranks.iter().map(|r| r.blocks.len() as u64).sum::<u64>());
        for (section, original) in view.sections().zip(&s.ranks) {
            let mut events = crate::event::dump_events(&original.blocks);
            if events.last().is_some_and(|e| matches!(e, crate::event::KvEventData::Removed { .. })) {
                events.pop(); // the placeholders' removal, compared below
            }
            let runs: Vec<_> = section
                .runs()
                .map(|run| crate::event::KvEventData::Stored { parent: run.parent(), blocks: run.blocks().collect() })
                .collect();
            prop_assert_eq!(runs, events);
            let placeholders: Vec<EngineHash> =
                original.blocks.iter().filter(|b| b.placeholder).map(|b| b.block.engine_hash).collect();
            prop_assert_eq!(section.placeholder_hashes(), placeholders);
        }
        // Appending to a non-empty buffer gives the same bytes after it.
        let mut out = b"prefix".to_vec();
        encode_snapshot(&s.meta, &s.workers, s.ranks.iter().cloned(), &mut out);
        prop_assert_eq!(&out[6..], &bytes[..]);
    }

    #[test]
    fn every_truncation_is_refused(s in snapshot().prop_filter("consistent cursors", consistent)) {
        let bytes = encode(&s);
        for cut in 0..bytes.len() {
            match verify_snapshot(&bytes[..cut]) {
                Err(SnapshotError::Truncated { available, .. }) => prop_assert_eq!(available, cut as u64),
                other => prop_assert!(false, "cut at {}: {:?}", cut, other),
            }
        }
    }

    #[test]
    fn every_bit_flip_is_refused(s in snapshot().prop_filter("consistent cursors", consistent), seed in any::<u64>()) {
        let bytes = encode(&s);
        // All bits of the header, and a sample of the rest.
        let bits = bytes.len() * 8;
        let picks = (0..HEADER_LEN * 8).chain((0..64).map(|i| (seed.wrapping_mul(i + 1) as usize) % bits));
        for bit in picks {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(verify_snapshot(&flipped).is_err(), "bit {} flipped went unnoticed", bit);
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        let mut bytes = bytes;
        if magic && bytes.len() >= HEADER_LEN {
            bytes[..8].copy_from_slice(&MAGIC);
            bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
            bytes[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
            let len = bytes.len() as u64;
            bytes[24..32].copy_from_slice(&len.to_le_bytes());
            reseal(&mut bytes);
        }
        let _ = decode_snapshot(&bytes);
    }

    /// Forgeries that pass the checksum: structural checks alone must refuse them (or
    /// accept a still-valid snapshot), never panic or over-allocate.
    #[test]
    fn resealed_forgeries_never_panic(
        s in snapshot().prop_filter("consistent cursors", consistent),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = encode(&s);
        for (at, value) in edits {
            // Past the checksummed header fields that would only make it Truncated.
            let span = bytes.len() - 32;
            bytes[32 + at % span] = value;
        }
        reseal(&mut bytes);
        if let Ok(decoded) = decode_snapshot(&bytes) {
            // Whatever was accepted re-encodes into a snapshot that decodes alike.
            prop_assert_eq!(decode_snapshot(&encode(&decoded)).unwrap(), decoded);
        }
    }
}

#[test]
fn errors_are_typed() {
    let s = Snapshot { meta: meta(), workers: Vec::new(), ranks: Vec::new() };
    let bytes = encode(&s);
    assert_eq!(bytes.len(), HEADER_LEN);
    assert_eq!(decode_snapshot(&bytes).unwrap(), s);
    assert_eq!(verify_snapshot(b"hello, world, this is not a snapshot").unwrap_err(), SnapshotError::BadMagic);
    assert_eq!(verify_snapshot(b"").unwrap_err(), SnapshotError::Truncated { needed: 64, available: 0 });
    let mut v2 = bytes.clone();
    v2[8] = 2;
    assert_eq!(verify_snapshot(&v2).unwrap_err(), SnapshotError::UnsupportedVersion { found: 2, supported: 1 });
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(verify_snapshot(&longer), Err(SnapshotError::Malformed { offset: 64, .. })));
    let mut flipped = bytes.clone();
    flipped[40] ^= 1;
    assert!(matches!(verify_snapshot(&flipped), Err(SnapshotError::ChecksumMismatch { .. })));
    // A count past the bytes, with a valid checksum: malformed, and nothing allocated for it.
    let mut forged = bytes.clone();
    forged[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
    reseal(&mut forged);
    assert!(matches!(verify_snapshot(&forged), Err(SnapshotError::Malformed { .. })));
    // A layout pairs only with its own bytes.
    let layout = verify_snapshot(&bytes).unwrap();
    assert!(layout.view(&bytes).is_some());
    assert!(layout.view(&longer).is_none());
}

#[test]
fn a_cursor_state_resumes_after_its_seq() {
    let cursor = CursorState::exact(3, 41).to_cursor();
    assert_eq!(cursor.resume_after(), Some(41));
    let mut same = cursor.clone();
    assert!(same.on_hello(3), "same incarnation keeps the position");
    assert_eq!(same.resume_after(), Some(41));
    let mut other = cursor;
    assert!(!other.on_hello(4));
    assert_eq!(other.resume_after(), None);
}
