//! Frame -> bytes. [`encode`] appends one frame to a buffer; [`encoded_len`] says how long
//! it will be, so that senders can size batches to the peer's maximum frame length.

use super::checksum::Crc32c;
use super::error::EncodeError;
use super::frame::{DumpBlock, DumpBlocks, Frame, Goodbye, Hello, MAX_GOODBYE_MESSAGE_LEN, MAX_PUBLISHER_NAME_LEN};
use super::header::{FrameHeader, FrameType, CHECKSUM_LEN, HEADER_LEN};
use super::layout::*;
use crate::event::KvEventData;
use crate::ids::RankKey;

/// Appends `frame` to `out` without a checksum (the QUIC transport's choice: see
/// `checksum.rs`) and returns the bytes written. On error `out` is left as it was.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    encode_frame(frame, false, out)
}

/// Appends `frame` to `out` followed by a CRC32C of its header and payload, and returns
/// the bytes written. On error `out` is left as it was.
pub fn encode_checksummed(frame: &Frame, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    encode_frame(frame, true, out)
}

/// Bytes [`encode`] writes for `frame` (header and payload, no checksum), whether or not
/// it can be encoded.
pub fn encoded_len(frame: &Frame) -> usize {
    HEADER_LEN.saturating_add(payload_len(frame))
}

/// Most blocks one `DumpBlocks` frame can carry within `max_frame_len` bytes (without a
/// checksum trailer).
pub fn max_dump_blocks_per_frame(max_frame_len: u32) -> usize {
    let max = usize::try_from(max_frame_len).unwrap_or(usize::MAX);
    max.saturating_sub(HEADER_LEN + DUMP_BLOCKS_FIXED_LEN) / DUMP_BLOCK_LEN
}

/// Bytes an event takes inside a `Deltas` payload.
pub fn event_encoded_len(event: &KvEventData) -> usize {
    match event {
        KvEventData::Stored { blocks, .. } => {
            (1 + OPTION_U64_LEN + COUNT_LEN).saturating_add(blocks.len().saturating_mul(STORED_BLOCK_LEN))
        }
        KvEventData::Removed { blocks } => (1 + COUNT_LEN).saturating_add(blocks.len().saturating_mul(ENGINE_HASH_LEN)),
        KvEventData::Cleared => 1,
    }
}

/// Bytes a `Deltas` frame takes before its events (header included).
pub const DELTAS_OVERHEAD: usize = HEADER_LEN + DELTAS_FIXED_LEN;

fn payload_len(frame: &Frame) -> usize {
    match frame {
        Frame::Hello(h) => (1 + 8 + 1 + COUNT_LEN)
            .saturating_add(h.publisher_name.len())
            .saturating_add(h.ranks.len().saturating_mul(RANK_KEY_LEN)),
        Frame::Subscribe(_) => RANK_KEY_LEN + OPTION_U64_LEN,
        Frame::Deltas(d) => d.events.iter().fold(DELTAS_FIXED_LEN, |len, e| len.saturating_add(event_encoded_len(e))),
        Frame::DumpBegin(_) => RANK_KEY_LEN + 8,
        Frame::DumpBlocks(d) => DUMP_BLOCKS_FIXED_LEN.saturating_add(d.blocks.len().saturating_mul(DUMP_BLOCK_LEN)),
        Frame::DumpEnd(_) => RANK_KEY_LEN + 8 + 8,
        Frame::Heartbeat(_) => RANK_KEY_LEN + 8,
        Frame::Goodbye(g) => (2 + 2usize).saturating_add(g.message.len()),
    }
}

fn encode_frame(frame: &Frame, checksummed: bool, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    let start = out.len();
    let result = write_frame(frame, checksummed, start, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn write_frame(frame: &Frame, checksummed: bool, start: usize, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    out.reserve(encoded_len(frame).saturating_add(CHECKSUM_LEN));
    out.extend_from_slice(&[0; HEADER_LEN]);
    write_payload(frame, out)?;
    let len = out.len() - start - HEADER_LEN;
    let payload_len = u32::try_from(len).map_err(|_| EncodeError::PayloadTooLong { len })?;
    let mut header = [0u8; HEADER_LEN];
    FrameHeader { frame_type: frame.frame_type(), checksummed, payload_len }.write(&mut header);
    out[start..start + HEADER_LEN].copy_from_slice(&header);
    if checksummed {
        let crc = Crc32c::new().update(&out[start..]).finish();
        out.extend_from_slice(&crc.to_le_bytes());
    }
    Ok(out.len() - start)
}

fn write_payload(frame: &Frame, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match frame {
        Frame::Hello(hello) => write_hello(hello, out)?,
        Frame::Subscribe(s) => {
            write_rank(s.rank, out);
            write_option_u64(s.resume_after, out);
        }
        Frame::Deltas(d) => {
            check_delta_seqs(d.first_seq, d.events.len())
                .map_err(|reason| EncodeError::Invalid { frame_type: FrameType::Deltas, reason })?;
            write_rank(d.rank, out);
            out.push(tier_code(d.tier));
            out.extend_from_slice(&d.first_seq.to_le_bytes());
            write_count("events", d.events.len(), out)?;
            for event in &d.events {
                write_event(event, out)?;
            }
        }
        Frame::DumpBegin(d) => {
            write_rank(d.rank, out);
            out.extend_from_slice(&d.as_of_seq.to_le_bytes());
        }
        Frame::DumpBlocks(d) => write_dump_blocks(d, out)?,
        Frame::DumpEnd(d) => {
            write_rank(d.rank, out);
            out.extend_from_slice(&d.as_of_seq.to_le_bytes());
            out.extend_from_slice(&d.block_count.to_le_bytes());
        }
        Frame::Heartbeat(h) => {
            write_rank(h.rank, out);
            out.extend_from_slice(&h.last_seq.to_le_bytes());
        }
        Frame::Goodbye(g) => write_goodbye(g, out)?,
    }
    Ok(())
}

fn write_hello(hello: &Hello, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    check_max_version(hello.max_version)
        .map_err(|reason| EncodeError::Invalid { frame_type: FrameType::Hello, reason })?;
    let name = hello.publisher_name.as_bytes();
    let name_len = u8::try_from(name.len()).map_err(|_| EncodeError::FieldTooLong {
        field: "publisher_name",
        len: name.len(),
        max: MAX_PUBLISHER_NAME_LEN,
    })?;
    out.push(hello.max_version);
    out.extend_from_slice(&hello.incarnation.to_le_bytes());
    out.push(name_len);
    out.extend_from_slice(name);
    write_count("ranks", hello.ranks.len(), out)?;
    for &rank in &hello.ranks {
        write_rank(rank, out);
    }
    Ok(())
}

fn write_dump_blocks(dump: &DumpBlocks, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    write_rank(dump.rank, out);
    out.push(tier_code(dump.tier));
    write_count("blocks", dump.blocks.len(), out)?;
    for &DumpBlock { parent, block, placeholder } in &dump.blocks {
        let mut flags = if parent.is_some() { DUMP_HAS_PARENT } else { 0 };
        if placeholder {
            flags |= DUMP_PLACEHOLDER;
        }
        out.push(flags);
        out.extend_from_slice(&parent.map_or(0, |p| p.0).to_le_bytes());
        out.extend_from_slice(&block.engine_hash.0.to_le_bytes());
        out.extend_from_slice(&block.content_hash.0.to_le_bytes());
    }
    Ok(())
}

fn write_goodbye(goodbye: &Goodbye, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let message = goodbye.message.as_bytes();
    if message.len() > MAX_GOODBYE_MESSAGE_LEN {
        return Err(EncodeError::FieldTooLong { field: "message", len: message.len(), max: MAX_GOODBYE_MESSAGE_LEN });
    }
    out.extend_from_slice(&goodbye.code.0.to_le_bytes());
    // Fits: bounded by MAX_GOODBYE_MESSAGE_LEN just above.
    out.extend_from_slice(&(message.len() as u16).to_le_bytes());
    out.extend_from_slice(message);
    Ok(())
}

fn write_event(event: &KvEventData, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match event {
        KvEventData::Stored { parent, blocks } => {
            out.push(EVENT_STORED);
            write_option_u64(parent.map(|p| p.0), out);
            write_count("stored blocks", blocks.len(), out)?;
            for block in blocks {
                out.extend_from_slice(&block.engine_hash.0.to_le_bytes());
                out.extend_from_slice(&block.content_hash.0.to_le_bytes());
            }
        }
        KvEventData::Removed { blocks } => {
            out.push(EVENT_REMOVED);
            write_count("removed blocks", blocks.len(), out)?;
            for hash in blocks {
                out.extend_from_slice(&hash.0.to_le_bytes());
            }
        }
        KvEventData::Cleared => out.push(EVENT_CLEARED),
    }
    Ok(())
}

fn write_rank(rank: RankKey, out: &mut Vec<u8>) {
    out.extend_from_slice(&rank.worker.0.to_le_bytes());
    out.extend_from_slice(&rank.dp_rank.0.to_le_bytes());
}

fn write_option_u64(value: Option<u64>, out: &mut Vec<u8>) {
    out.push(u8::from(value.is_some()));
    out.extend_from_slice(&value.unwrap_or(0).to_le_bytes());
}

fn write_count(field: &'static str, len: usize, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let count = u32::try_from(len).map_err(|_| EncodeError::FieldTooLong { field, len, max: u32::MAX as usize })?;
    out.extend_from_slice(&count.to_le_bytes());
    Ok(())
}
