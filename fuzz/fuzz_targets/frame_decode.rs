//! Fuzzes the wire decoder: arbitrary bytes, fed to `FrameDecoder` whole and in
//! pseudo-random chunks. Checks that decoding never panics, that the outcome (frames, then
//! at most one error) does not depend on the chunking, that the decoder never buffers more
//! than the maximum frame length, and that every decoded frame re-encodes to exactly the
//! bytes it came from (the encoding is canonical).
//! The first input byte picks the settings and the chunking seed; the rest is the stream.
//! Run: `cargo +nightly fuzz run frame_decode` (from the repo root).
#![no_main]

use kvroute_core::wire::{
    encode, encode_checksummed, DecoderConfig, Frame, FrameDecoder, WireError, DEFAULT_MAX_FRAME_LEN,
};
use libfuzzer_sys::fuzz_target;

/// Frames decoded, the bytes each came from (when decoded from one chunk), and the error
/// that stopped decoding, if any.
struct Outcome<'a> {
    frames: Vec<(Frame, Option<&'a [u8]>)>,
    error: Option<WireError>,
}

fn decode<'a>(config: DecoderConfig, stream: &'a [u8], mut next_chunk_len: impl FnMut() -> usize) -> Outcome<'a> {
    let mut decoder = FrameDecoder::with_config(config);
    let mut outcome = Outcome { frames: Vec::new(), error: None };
    let mut rest = stream;
    while !rest.is_empty() {
        let len = next_chunk_len().clamp(1, rest.len());
        let (mut chunk, after) = rest.split_at(len);
        rest = after;
        loop {
            let before = chunk;
            let at_boundary = decoder.buffered_len() == 0;
            match decoder.decode(&mut chunk) {
                Ok(Some(frame)) => {
                    // Whole frame taken from this chunk: those are its bytes.
                    let source = at_boundary.then(|| &before[..before.len() - chunk.len()]);
                    outcome.frames.push((frame, source));
                }
                Ok(None) => break,
                Err(error) => {
                    outcome.error = Some(error);
                    return outcome;
                }
            }
            assert!(decoder.buffered_len() as u64 <= u64::from(config.max_frame_len));
        }
        assert!(chunk.is_empty(), "Ok(None) with bytes left in the chunk");
        assert!(decoder.buffer_capacity() as u64 <= u64::from(config.max_frame_len));
    }
    if let Err(error) = decoder.finish() {
        assert!(matches!(error, WireError::Truncated { .. }), "finish: {error:?}");
    }
    outcome
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else { return };
    let max_frame_len = if control & 0x80 != 0 { 16 + u32::from(control & 0x1F) * 24 } else { DEFAULT_MAX_FRAME_LEN };
    let config = DecoderConfig { max_frame_len, require_checksum: control & 0x40 != 0 };

    let whole = decode(config, stream, || usize::MAX);
    let mut state = u32::from(control) | 0x9E37_0000;
    let chunked = decode(config, stream, || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        1 + (state % 23) as usize
    });

    assert_eq!(whole.error, chunked.error);
    assert_eq!(whole.frames.len(), chunked.frames.len());
    for ((a, _), (b, _)) in whole.frames.iter().zip(&chunked.frames) {
        assert_eq!(a, b);
    }
    for (frame, source) in &whole.frames {
        let Some(source) = source else { continue };
        let mut reencoded = Vec::new();
        let checksummed = source.get(4).is_some_and(|flags| flags & 1 != 0);
        let written =
            if checksummed { encode_checksummed(frame, &mut reencoded) } else { encode(frame, &mut reencoded) };
        assert!(written.is_ok(), "a decoded frame must be encodable: {written:?}");
        assert_eq!(&reencoded[..], *source, "not canonical: {frame:?}");
    }
});
