//! Fuzzes the decoder of vLLM's / SGLang's KV-event messages (`engine_events::decode`):
//! arbitrary frames fed to `decode_message`, `decode_replay_reply` or `decode_batch`.
//! Checks that decoding never panics (nor allocates past the RSS limit: forged lengths),
//! and that whatever decodes survives the encoder: re-encoded in each of the four engine
//! formats it decodes again to exactly what that format can carry (`representable`), and
//! re-encoding that gives the same bytes.
//!
//! Input layout: byte 0 picks the entry point (bits 0-1: message, replay reply, batch),
//! the frame count (bits 2-3, plus one: 1 to 4 frames) and small limits (bit 4: a
//! 256-byte payload and 4-byte topic limit, to reach `oversize`). Then every frame but
//! the last is a big-endian u16 length and that many bytes; the last frame is the rest.
//! Run: `cargo +nightly fuzz run engine_message_decode` (from the repo root). Seed corpus
//! (gitignored): each fixture payload of data/engine-events/*.jsonl as one file, byte
//! `0x02` then the payload bytes, in `fuzz/corpus/engine_message_decode/`.
#![no_main]

use kvroute_core::engine_events::decode::{
    decode_batch, decode_message, decode_replay_reply, DecodeLimits, ReplayReply,
};
use kvroute_core::engine_events::encode::{encode_batch, representable, EngineFormat};
use kvroute_core::engine_events::EventBatch;
use libfuzzer_sys::fuzz_target;

/// Splits `input` into `count` frames: u16-length-prefixed ones, then the rest.
fn split_frames(mut input: &[u8], count: usize) -> Vec<&[u8]> {
    let mut frames = Vec::with_capacity(count);
    for _ in 1..count {
        let len = match input {
            [high, low, rest @ ..] => {
                input = rest;
                usize::from(u16::from_be_bytes([*high, *low]))
            }
            _ => std::mem::take(&mut input).len(),
        };
        let (frame, rest) = input.split_at(len.min(input.len()));
        frames.push(frame);
        input = rest;
    }
    frames.push(input);
    frames
}

/// Re-encodes `batch` in every format and checks the trip back.
fn check_round_trips(batch: &EventBatch) {
    for format in EngineFormat::ALL {
        let bytes = encode_batch(batch, format);
        let decoded =
            match decode_batch(&bytes, &DecodeLimits { max_payload_bytes: usize::MAX, ..DecodeLimits::default() }) {
                Ok(decoded) => decoded,
                Err(error) => panic!("{}: re-encoded batch does not decode: {error}\n{batch:?}", format.name()),
            };
        // Debug text compares floats bit for bit where `==` would not (NaN).
        let expected = representable(batch, format);
        assert_eq!(format!("{decoded:?}"), format!("{expected:?}"), "{}", format.name());
        assert_eq!(
            encode_batch(&decoded, format),
            bytes,
            "{}: encoding not a function of the decoded value",
            format.name()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else { return };
    let frame_count = usize::from((control >> 2) & 3) + 1;
    let limits = if control & 0x10 != 0 {
        DecodeLimits { max_payload_bytes: 256, max_topic_bytes: 4 }
    } else {
        DecodeLimits::default()
    };
    match control & 3 {
        0 => {
            let frames = split_frames(rest, frame_count);
            if let Ok(message) = decode_message(&frames, &limits) {
                assert_eq!(frames.len(), 3);
                check_round_trips(&message.batch);
            }
        }
        1 => {
            let frames = split_frames(rest, frame_count);
            match decode_replay_reply(&frames, &limits) {
                Ok(ReplayReply::Batch(message)) => check_round_trips(&message.batch),
                Ok(ReplayReply::End) => assert!(frames.last().is_some_and(|payload| payload.is_empty())),
                Err(error) => assert!(!error.reason().is_empty()),
            }
        }
        _ => {
            if let Ok(batch) = decode_batch(rest, &limits) {
                check_round_trips(&batch);
            }
        }
    }
});
