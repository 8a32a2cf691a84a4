//! Round trips of every frame type, hostile input (random bytes, truncations, bit flips,
//! oversize lengths, lying counts), the exact bytes of a few frames, and encoder refusals.

use proptest::prelude::*;

use super::*;
use crate::event::{KvEventData, StoredBlock};
use crate::ids::{BlockHash, EngineHash, RankKey};
use crate::tier::StorageTier;

fn arb_rank() -> impl Strategy<Value = RankKey> {
    (any::<u64>(), any::<u32>()).prop_map(|(w, d)| RankKey::new(w, d))
}

fn arb_tier() -> impl Strategy<Value = StorageTier> {
    prop_oneof![Just(StorageTier::Device), Just(StorageTier::Host), Just(StorageTier::Disk)]
}

fn arb_stored_block() -> impl Strategy<Value = StoredBlock> {
    (any::<u64>(), any::<u64>())
        .prop_map(|(e, c)| StoredBlock { engine_hash: EngineHash(e), content_hash: BlockHash(c) })
}

fn arb_event() -> impl Strategy<Value = KvEventData> {
    prop_oneof![
        (proptest::option::of(any::<u64>()), prop::collection::vec(arb_stored_block(), 0..6))
            .prop_map(|(p, blocks)| KvEventData::Stored { parent: p.map(EngineHash), blocks }),
        prop::collection::vec(any::<u64>(), 0..6)
            .prop_map(|b| KvEventData::Removed { blocks: b.into_iter().map(EngineHash).collect() }),
        Just(KvEventData::Cleared),
    ]
}

fn arb_dump_block() -> impl Strategy<Value = DumpBlock> {
    (proptest::option::of(any::<u64>()), arb_stored_block(), any::<bool>())
        .prop_map(|(p, block, placeholder)| DumpBlock { parent: p.map(EngineHash), block, placeholder })
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (1..=u8::MAX, any::<u64>(), "\\PC{0,40}", prop::collection::vec(arb_rank(), 0..5)).prop_map(
            |(max_version, incarnation, name, ranks)| {
                // Non-ASCII names may exceed the byte bound: cut on a char boundary.
                let mut publisher_name = name;
                while publisher_name.len() > MAX_PUBLISHER_NAME_LEN {
                    publisher_name.pop();
                }
                Frame::Hello(Hello { max_version, incarnation, publisher_name, ranks })
            }
        ),
        (arb_rank(), proptest::option::of(any::<u64>()))
            .prop_map(|(rank, resume_after)| Frame::Subscribe(Subscribe { rank, resume_after })),
        (arb_rank(), arb_tier(), 1..u64::MAX - 16, prop::collection::vec(arb_event(), 1..6))
            .prop_map(|(rank, tier, first_seq, events)| Frame::Deltas(Deltas { rank, tier, first_seq, events })),
        (arb_rank(), any::<u64>()).prop_map(|(rank, as_of_seq)| Frame::DumpBegin(DumpBegin { rank, as_of_seq })),
        (arb_rank(), arb_tier(), prop::collection::vec(arb_dump_block(), 0..6))
            .prop_map(|(rank, tier, blocks)| Frame::DumpBlocks(DumpBlocks { rank, tier, blocks })),
        (arb_rank(), any::<u64>(), any::<u64>()).prop_map(|(rank, as_of_seq, block_count)| Frame::DumpEnd(DumpEnd {
            rank,
            as_of_seq,
            block_count
        })),
        (arb_rank(), any::<u64>()).prop_map(|(rank, last_seq)| Frame::Heartbeat(Heartbeat { rank, last_seq })),
        (any::<u16>(), "\\PC{0,60}")
            .prop_map(|(code, message)| Frame::Goodbye(Goodbye { code: GoodbyeCode(code), message })),
    ]
}

/// Feeds `bytes` to `decoder` in pieces of the given sizes (cycled) and collects frames
/// until the bytes run out or an error.
fn decode_chunked(decoder: &mut FrameDecoder, bytes: &[u8], chunk_sizes: &[usize]) -> Result<Vec<Frame>, WireError> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunk_sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let size = sizes.next().unwrap_or(usize::MAX).clamp(1, rest.len());
        let (mut chunk, after) = rest.split_at(size);
        rest = after;
        while let Some(frame) = decoder.decode(&mut chunk)? {
            frames.push(frame);
        }
        assert!(chunk.is_empty(), "decode returned None with bytes left");
    }
    Ok(frames)
}

fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, WireError> {
    decode_chunked(&mut FrameDecoder::new(), bytes, &[usize::MAX])
}

/// A frame with this header and payload, bypassing the encoder.
fn raw_frame(frame_type: u8, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![b'K', b'R', VERSION, frame_type];
    bytes.extend_from_slice(&flags.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode(frame, &mut bytes).unwrap();
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_frame_type_round_trips_in_any_chunking(
        frames in prop::collection::vec(arb_frame(), 1..8),
        checksummed in any::<bool>(),
        chunk_sizes in prop::collection::vec(1usize..40, 1..6),
    ) {
        let mut bytes = Vec::new();
        for frame in &frames {
            let before = bytes.len();
            let written = if checksummed { encode_checksummed(frame, &mut bytes) } else { encode(frame, &mut bytes) };
            let written = written.unwrap();
            prop_assert_eq!(written, bytes.len() - before);
            let trailer = if checksummed { CHECKSUM_LEN } else { 0 };
            prop_assert_eq!(written, encoded_len(frame) + trailer);
        }
        let config = DecoderConfig { require_checksum: checksummed, ..DecoderConfig::default() };
        let mut decoder = FrameDecoder::with_config(config);
        let decoded = decode_chunked(&mut decoder, &bytes, &chunk_sizes).unwrap();
        prop_assert_eq!(&decoded, &frames);
        prop_assert!(decoder.finish().is_ok());
        prop_assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn random_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        chunk_sizes in prop::collection::vec(1usize..20, 1..4),
    ) {
        let mut decoder = FrameDecoder::new();
        let _ = decode_chunked(&mut decoder, &bytes, &chunk_sizes);
        let _ = decoder.finish();
    }

    #[test]
    fn random_payloads_behind_a_valid_header_never_panic(
        frame_type in 0u8..10,
        payload in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        // Valid magic, version and length, so the payload decoders get exercised.
        let bytes = raw_frame(frame_type, 0, &payload);
        if let Ok(frames) = decode_all(&bytes) {
            // Whatever decodes is canonical: it re-encodes to the same bytes.
            prop_assert_eq!(frames.len(), 1);
            prop_assert_eq!(encoded(&frames[0]), bytes);
        }
    }

    #[test]
    fn truncations_wait_for_more_and_report_truncated_at_end(frame in arb_frame(), checksummed in any::<bool>()) {
        let mut bytes = Vec::new();
        if checksummed { encode_checksummed(&frame, &mut bytes).unwrap(); } else { encode(&frame, &mut bytes).unwrap(); }
        for cut in 0..bytes.len() {
            let mut decoder = FrameDecoder::new();
            prop_assert_eq!(decode_chunked(&mut decoder, &bytes[..cut], &[usize::MAX]), Ok(vec![]));
            prop_assert_eq!(decoder.buffered_len(), cut);
            let at_end = decoder.finish();
            if cut == 0 {
                prop_assert_eq!(at_end, Ok(()));
            } else {
                prop_assert!(matches!(at_end, Err(WireError::Truncated { .. })), "{:?}", at_end);
            }
        }
    }

    #[test]
    fn bit_flips_are_caught_by_the_checksum(frame in arb_frame()) {
        let mut bytes = Vec::new();
        encode_checksummed(&frame, &mut bytes).unwrap();
        let config = DecoderConfig { require_checksum: true, ..DecoderConfig::default() };
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let mut decoder = FrameDecoder::with_config(config);
            // An error, or nothing yet: a flip in the length field can make the frame look
            // longer than the bytes.
            if let Ok(frames) = decode_chunked(&mut decoder, &flipped, &[usize::MAX]) {
                prop_assert!(frames.is_empty(), "bit {} flipped, yet decoded {:?}", bit, frames);
            }
        }
    }

    #[test]
    fn bit_flips_without_checksum_never_panic(frame in arb_frame()) {
        let bytes = encoded(&frame);
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            if let Ok(frames) = decode_all(&flipped) {
                // A flip that still decodes gives a canonical frame of its own.
                if let Some(first) = frames.first() {
                    let mut reencoded = Vec::new();
                    if flipped[4] & 1 != 0 {
                        encode_checksummed(first, &mut reencoded).unwrap();
                    } else {
                        encode(first, &mut reencoded).unwrap();
                    }
                    prop_assert!(flipped.starts_with(&reencoded), "bit {}: {:?}", bit, first);
                }
            }
        }
    }
}

#[test]
fn exact_bytes_of_a_subscribe_frame() {
    let frame = Frame::Subscribe(Subscribe { rank: RankKey::new(0x0102, 3), resume_after: Some(0x2A) });
    #[rustfmt::skip]
    let expected = [
        b'K', b'R', 1, 2, 0, 0, 21, 0, 0, 0,       // header: magic, version 1, Subscribe, no flags, 21 bytes
        0x02, 0x01, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0,  // rank: worker 0x0102, dp_rank 3
        1, 0x2A, 0, 0, 0, 0, 0, 0, 0,              // resume_after: Some(42)
    ];
    assert_eq!(encoded(&frame), expected);
}

#[test]
fn exact_bytes_of_a_deltas_frame() {
    let frame = Frame::Deltas(Deltas {
        rank: RankKey::new(7, 1),
        tier: StorageTier::Host,
        first_seq: 5,
        events: vec![
            KvEventData::Stored {
                parent: None,
                blocks: vec![StoredBlock { engine_hash: EngineHash(0xAA), content_hash: BlockHash(0xBB) }],
            },
            KvEventData::Removed { blocks: vec![EngineHash(0xAA)] },
            KvEventData::Cleared,
        ],
    });
    #[rustfmt::skip]
    let expected = [
        b'K', b'R', 1, 3, 0, 0, 69, 0, 0, 0,       // header: Deltas, 69 bytes
        7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,        // rank 7/1
        1,                                         // tier Host
        5, 0, 0, 0, 0, 0, 0, 0,                    // first_seq 5
        3, 0, 0, 0,                                // 3 events
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0,              // Stored, parent None
        1, 0, 0, 0,                                // 1 block
        0xAA, 0, 0, 0, 0, 0, 0, 0, 0xBB, 0, 0, 0, 0, 0, 0, 0,
        2, 1, 0, 0, 0, 0xAA, 0, 0, 0, 0, 0, 0, 0,  // Removed [0xAA]
        3,                                         // Cleared
    ];
    assert_eq!(encoded(&frame), expected);
}

/// A small frame for the header tests.
fn heartbeat() -> Frame {
    Frame::Heartbeat(Heartbeat { rank: RankKey::new(2, 1), last_seq: 9 })
}

#[test]
fn exact_bytes_of_a_checksummed_heartbeat() {
    let mut bytes = Vec::new();
    encode_checksummed(&heartbeat(), &mut bytes).unwrap();
    #[rustfmt::skip]
    let expected: [u8; 30] = [
        b'K', b'R', 1, 7, 1, 0, 20, 0, 0, 0,  // header: Heartbeat, checksummed, 20 bytes
        2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,   // rank 2/1
        9, 0, 0, 0, 0, 0, 0, 0,               // last_seq 9
    ];
    let crc = checksum::Crc32c::new().update(&expected).finish().to_le_bytes();
    assert_eq!(bytes, [&expected[..], &crc].concat());
}

#[test]
fn oversize_length_is_refused_from_the_header_alone() {
    let max = 4096;
    let mut decoder = FrameDecoder::with_config(DecoderConfig { max_frame_len: max, require_checksum: false });
    // Declares a payload that makes the frame one byte too long; only the header is sent.
    let header = raw_frame(FrameType::Heartbeat.code(), 0, &[]);
    let mut header = header[..HEADER_LEN].to_vec();
    header[6..10].copy_from_slice(&(max - HEADER_LEN as u32 + 1).to_le_bytes());
    let mut input = &header[..];
    assert_eq!(decoder.decode(&mut input), Err(WireError::TooLong { len: u64::from(max) + 1, max }));
    assert_eq!(decoder.buffer_capacity(), 0);
    // The largest declared length of all, with the checksum flag: still refused, no overflow.
    let mut huge = header.clone();
    huge[4..6].copy_from_slice(&1u16.to_le_bytes());
    huge[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut input = &huge[..];
    let mut decoder = FrameDecoder::new();
    assert_eq!(
        decoder.decode(&mut input),
        Err(WireError::TooLong { len: HEADER_LEN as u64 + u64::from(u32::MAX) + 4, max: DEFAULT_MAX_FRAME_LEN })
    );
    // Exactly the maximum is accepted (and waits for the payload).
    let mut decoder = FrameDecoder::with_config(DecoderConfig { max_frame_len: max, require_checksum: false });
    header[6..10].copy_from_slice(&(max - HEADER_LEN as u32).to_le_bytes());
    let mut input = &header[..];
    assert_eq!(decoder.decode(&mut input), Ok(None));
}

#[test]
fn a_count_larger_than_the_payload_is_refused_before_allocating() {
    // Removed event claiming u32::MAX hashes in a 40-byte payload.
    let mut payload = vec![0u8; 12];
    payload.push(0); // tier
    payload.extend_from_slice(&1u64.to_le_bytes());
    payload.extend_from_slice(&1u32.to_le_bytes());
    payload.push(2);
    payload.extend_from_slice(&u32::MAX.to_le_bytes());
    let bytes = raw_frame(FrameType::Deltas.code(), 0, &payload);
    assert_eq!(decode_all(&bytes), Err(WireError::Truncated { needed: u64::from(u32::MAX) * 8, available: 0 }));
    // And a Hello claiming more ranks than the bytes hold.
    let mut payload = vec![1u8];
    payload.extend_from_slice(&0u64.to_le_bytes());
    payload.push(0);
    payload.extend_from_slice(&2u32.to_le_bytes());
    payload.extend_from_slice(&[0; 12]);
    let bytes = raw_frame(FrameType::Hello.code(), 0, &payload);
    assert_eq!(decode_all(&bytes), Err(WireError::Truncated { needed: 24, available: 12 }));
}

#[test]
fn header_errors_are_typed() {
    let good = encoded(&heartbeat());
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert_eq!(decode_all(&bad_magic), Err(WireError::BadMagic { found: [b'X', b'R'] }));
    let mut bad_version = good.clone();
    bad_version[2] = 2;
    assert_eq!(decode_all(&bad_version), Err(WireError::UnsupportedVersion { found: 2, supported: 1 }));
    let mut bad_type = good.clone();
    bad_type[3] = 0;
    assert_eq!(decode_all(&bad_type), Err(WireError::UnknownFrameType { found: 0 }));
    let mut bad_flags = good.clone();
    bad_flags[5] = 0x80;
    assert_eq!(decode_all(&bad_flags), Err(WireError::UnknownFlags { flags: 0x8000 }));
    let trailing = raw_frame(FrameType::Heartbeat.code(), 0, &[0; 21]);
    assert_eq!(decode_all(&trailing), Err(WireError::TrailingBytes { frame_type: FrameType::Heartbeat, extra: 1 }));
    let mut decoder = FrameDecoder::with_config(DecoderConfig { require_checksum: true, ..DecoderConfig::default() });
    assert_eq!(decode_chunked(&mut decoder, &good, &[usize::MAX]), Err(WireError::ChecksumRequired));
}

#[test]
fn payload_errors_are_typed() {
    let malformed = |frame_type: FrameType, payload: &[u8]| decode_all(&raw_frame(frame_type.code(), 0, payload));
    let is_malformed = |r: Result<Vec<Frame>, WireError>, why: &str| match r {
        Err(WireError::Malformed { reason, .. }) => assert!(reason.contains(why), "{reason}"),
        other => panic!("expected Malformed({why}), got {other:?}"),
    };
    let rank = [0u8; 12];
    // Option presence byte 2, and absent with a value.
    is_malformed(malformed(FrameType::Subscribe, &[&rank[..], &[2], &[0; 8]].concat()), "presence");
    is_malformed(malformed(FrameType::Subscribe, &[&rank[..], &[0], &[1, 0, 0, 0, 0, 0, 0, 0]].concat()), "non-zero");
    // Unknown tier, first_seq 0, empty batch, unknown event kind.
    let deltas = |tier: u8, first_seq: u64, count: u32, events: &[u8]| {
        [&rank[..], &[tier], &first_seq.to_le_bytes(), &count.to_le_bytes(), events].concat()
    };
    is_malformed(malformed(FrameType::Deltas, &deltas(3, 1, 1, &[3])), "tier");
    is_malformed(malformed(FrameType::Deltas, &deltas(0, 0, 1, &[3])), "first_seq");
    is_malformed(malformed(FrameType::Deltas, &deltas(0, 1, 0, &[])), "no events");
    is_malformed(malformed(FrameType::Deltas, &deltas(0, u64::MAX, 2, &[3, 3])), "overflow");
    is_malformed(malformed(FrameType::Deltas, &deltas(0, 1, 1, &[9])), "event kind");
    // Dump block with an unknown flag, and with no parent but a parent value.
    let dump = |flags: u8, parent: u64| {
        [&rank[..], &[0], &1u32.to_le_bytes(), &[flags], &parent.to_le_bytes(), &[0; 16]].concat()
    };
    is_malformed(malformed(FrameType::DumpBlocks, &dump(4, 0)), "flags");
    is_malformed(malformed(FrameType::DumpBlocks, &dump(0, 5)), "non-zero");
    assert!(malformed(FrameType::DumpBlocks, &dump(3, 5)).is_ok());
    // Strings: not UTF-8, and a message over its bound.
    let hello = [&[1u8][..], &[0; 8], &[2, 0xC3, 0x28], &0u32.to_le_bytes()].concat();
    is_malformed(malformed(FrameType::Hello, &hello), "UTF-8");
    let hello_v0 = [&[0u8][..], &[0; 8], &[0], &0u32.to_le_bytes()].concat();
    is_malformed(malformed(FrameType::Hello, &hello_v0), "max_version");
    let long = [&[0u8, 0][..], &1025u16.to_le_bytes(), &[b'a'; 1025]].concat();
    is_malformed(malformed(FrameType::Goodbye, &long), "1024");
}

#[test]
fn errors_are_sticky() {
    let mut decoder = FrameDecoder::new();
    let mut garbage = &b"XX0000000000"[..];
    let first = decoder.decode(&mut garbage);
    assert!(matches!(first, Err(WireError::BadMagic { .. })));
    let good = encoded(&heartbeat());
    let mut input = &good[..];
    assert_eq!(decoder.decode(&mut input), first);
    assert_eq!(decoder.finish(), first.map(|_| ()));
}

#[test]
fn a_frame_split_across_chunks_releases_a_large_buffer() {
    let frame = Frame::DumpBlocks(DumpBlocks {
        rank: RankKey::new(1, 0),
        tier: StorageTier::Device,
        blocks: vec![DumpBlock { parent: None, block: some_block(), placeholder: false }; 10_000],
    });
    let bytes = encoded(&frame);
    let mut decoder = FrameDecoder::new();
    let (first, second) = bytes.split_at(1000);
    let mut first = first;
    assert_eq!(decoder.decode(&mut first), Ok(None));
    assert!(decoder.buffer_capacity() <= bytes.len() - HEADER_LEN);
    let mut second = second;
    assert_eq!(decoder.decode(&mut second), Ok(Some(frame)));
    assert_eq!(decoder.buffer_capacity(), 0);
}

#[test]
fn encoder_refuses_what_the_decoder_would() {
    let too_long_name = "n".repeat(MAX_PUBLISHER_NAME_LEN + 1);
    let hello = Frame::Hello(Hello { max_version: 1, incarnation: 0, publisher_name: too_long_name, ranks: vec![] });
    let mut out = vec![9];
    assert!(matches!(encode(&hello, &mut out), Err(EncodeError::FieldTooLong { field: "publisher_name", .. })));
    assert_eq!(out, [9], "a refused frame leaves the buffer as it was");
    let hello_v0 = Frame::Hello(Hello { max_version: 0, incarnation: 0, publisher_name: String::new(), ranks: vec![] });
    assert!(matches!(encode(&hello_v0, &mut out), Err(EncodeError::Invalid { .. })));
    let message = "m".repeat(MAX_GOODBYE_MESSAGE_LEN + 1);
    let goodbye = Frame::Goodbye(Goodbye { code: GoodbyeCode::NORMAL, message });
    assert!(matches!(encode(&goodbye, &mut out), Err(EncodeError::FieldTooLong { field: "message", .. })));
    let deltas = |first_seq, events: Vec<KvEventData>| {
        Frame::Deltas(Deltas { rank: RankKey::new(1, 0), tier: StorageTier::Device, first_seq, events })
    };
    assert!(matches!(encode(&deltas(1, vec![]), &mut out), Err(EncodeError::Invalid { .. })));
    assert!(matches!(encode(&deltas(0, vec![KvEventData::Cleared]), &mut out), Err(EncodeError::Invalid { .. })));
    let two = vec![KvEventData::Cleared, KvEventData::Cleared];
    assert!(matches!(encode(&deltas(u64::MAX, two), &mut out), Err(EncodeError::Invalid { .. })));
    assert_eq!(out, [9]);
}

#[test]
fn dump_blocks_per_frame_fill_but_never_exceed_the_maximum() {
    for max in [DEFAULT_MAX_FRAME_LEN, 4096, 100, 10] {
        let n = max_dump_blocks_per_frame(max);
        let frame = |n| {
            Frame::DumpBlocks(DumpBlocks {
                rank: RankKey::new(1, 0),
                tier: StorageTier::Disk,
                blocks: vec![DumpBlock { parent: None, block: some_block(), placeholder: true }; n],
            })
        };
        if encoded_len(&frame(0)) > max as usize {
            assert_eq!(n, 0);
            continue;
        }
        assert!(encoded_len(&frame(n)) <= max as usize);
        assert!(encoded_len(&frame(n + 1)) > max as usize);
    }
}

fn some_block() -> StoredBlock {
    StoredBlock { engine_hash: EngineHash(3), content_hash: BlockHash(4) }
}
