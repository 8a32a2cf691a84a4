//! Payload bytes -> frame, for one complete payload whose header was already checked.
//!
//! Every read is bounds-checked against the payload, and every list count is checked
//! against the bytes left before anything is allocated for it. The encoding is canonical:
//! a value the encoder would never write (an absent option with a non-zero value, a flag
//! bit not defined) is refused, so a decoded frame re-encodes to the same bytes.

use super::error::WireError;
use super::frame::{
    DumpBegin, DumpBlock, DumpBlocks, DumpEnd, Frame, Goodbye, GoodbyeCode, Heartbeat, Hello, Subscribe,
    MAX_GOODBYE_MESSAGE_LEN,
};
use super::header::FrameType;
use super::layout::*;
use crate::event::{KvEventData, StoredBlock};
use crate::ids::{BlockHash, DpRank, EngineHash, RankKey, WorkerId};
use crate::tier::StorageTier;

/// Decodes the payload of a frame of type `frame_type`.
pub(crate) fn decode_payload(frame_type: FrameType, payload: &[u8]) -> Result<Frame, WireError> {
    let mut reader = PayloadReader { rest: payload, frame_type };
    let frame = match frame_type {
        FrameType::Hello => Frame::Hello(read_hello(&mut reader)?),
        FrameType::Subscribe => {
            let rank = reader.rank()?;
            let resume_after = reader.option_u64("absent resume_after has a non-zero value")?;
            Frame::Subscribe(Subscribe { rank, resume_after })
        }
        FrameType::Deltas => Frame::Deltas(read_deltas(&mut reader)?),
        FrameType::DumpBegin => Frame::DumpBegin(DumpBegin { rank: reader.rank()?, as_of_seq: reader.u64()? }),
        FrameType::DumpBlocks => Frame::DumpBlocks(read_dump_blocks(&mut reader)?),
        FrameType::DumpEnd => {
            Frame::DumpEnd(DumpEnd { rank: reader.rank()?, as_of_seq: reader.u64()?, block_count: reader.u64()? })
        }
        FrameType::Heartbeat => Frame::Heartbeat(Heartbeat { rank: reader.rank()?, last_seq: reader.u64()? }),
        FrameType::Goodbye => Frame::Goodbye(read_goodbye(&mut reader)?),
    };
    reader.finish()?;
    Ok(frame)
}

fn read_hello(reader: &mut PayloadReader<'_>) -> Result<Hello, WireError> {
    let max_version = reader.u8()?;
    check_max_version(max_version).map_err(|reason| reader.malformed(reason))?;
    let incarnation = reader.u64()?;
    let name_len = usize::from(reader.u8()?);
    let publisher_name = reader.utf8(name_len, "publisher_name is not UTF-8")?;
    let count = reader.count(RANK_KEY_LEN)?;
    let mut ranks = Vec::with_capacity(count);
    for _ in 0..count {
        ranks.push(reader.rank()?);
    }
    Ok(Hello { max_version, incarnation, publisher_name, ranks })
}

fn read_deltas(reader: &mut PayloadReader<'_>) -> Result<super::frame::Deltas, WireError> {
    let rank = reader.rank()?;
    let tier = reader.tier()?;
    let first_seq = reader.u64()?;
    let count = reader.count(MIN_EVENT_LEN)?;
    check_delta_seqs(first_seq, count).map_err(|reason| reader.malformed(reason))?;
    // Events vary in size: reserve for a bounded number and grow as they decode.
    let mut events = Vec::with_capacity(count.min(MAX_UNTRUSTED_PREALLOC));
    for _ in 0..count {
        events.push(read_event(reader)?);
    }
    Ok(super::frame::Deltas { rank, tier, first_seq, events })
}

fn read_event(reader: &mut PayloadReader<'_>) -> Result<KvEventData, WireError> {
    match reader.u8()? {
        EVENT_STORED => {
            let parent = reader.option_u64("absent stored parent has a non-zero value")?.map(EngineHash);
            let count = reader.count(STORED_BLOCK_LEN)?;
            let mut blocks = Vec::with_capacity(count);
            for _ in 0..count {
                let engine_hash = EngineHash(reader.u64()?);
                let content_hash = BlockHash(reader.u64()?);
                blocks.push(StoredBlock { engine_hash, content_hash });
            }
            Ok(KvEventData::Stored { parent, blocks })
        }
        EVENT_REMOVED => {
            let count = reader.count(ENGINE_HASH_LEN)?;
            let mut blocks = Vec::with_capacity(count);
            for _ in 0..count {
                blocks.push(EngineHash(reader.u64()?));
            }
            Ok(KvEventData::Removed { blocks })
        }
        EVENT_CLEARED => Ok(KvEventData::Cleared),
        _ => Err(reader.malformed("unknown event kind")),
    }
}

fn read_dump_blocks(reader: &mut PayloadReader<'_>) -> Result<DumpBlocks, WireError> {
    let rank = reader.rank()?;
    let tier = reader.tier()?;
    let count = reader.count(DUMP_BLOCK_LEN)?;
    let mut blocks = Vec::with_capacity(count);
    for _ in 0..count {
        let flags = reader.u8()?;
        if flags & !(DUMP_HAS_PARENT | DUMP_PLACEHOLDER) != 0 {
            return Err(reader.malformed("unknown dump block flags"));
        }
        let parent_value = reader.u64()?;
        let parent = if flags & DUMP_HAS_PARENT != 0 {
            Some(EngineHash(parent_value))
        } else if parent_value == 0 {
            None
        } else {
            return Err(reader.malformed("dump block without a parent has a non-zero parent field"));
        };
        let engine_hash = EngineHash(reader.u64()?);
        let content_hash = BlockHash(reader.u64()?);
        let placeholder = flags & DUMP_PLACEHOLDER != 0;
        blocks.push(DumpBlock { parent, block: StoredBlock { engine_hash, content_hash }, placeholder });
    }
    Ok(DumpBlocks { rank, tier, blocks })
}

fn read_goodbye(reader: &mut PayloadReader<'_>) -> Result<Goodbye, WireError> {
    let code = GoodbyeCode(reader.u16()?);
    let len = usize::from(reader.u16()?);
    if len > MAX_GOODBYE_MESSAGE_LEN {
        return Err(reader.malformed("message longer than 1024 bytes"));
    }
    let message = reader.utf8(len, "message is not UTF-8")?;
    Ok(Goodbye { code, message })
}

/// A bounds-checked little-endian reader over one payload.
struct PayloadReader<'a> {
    rest: &'a [u8],
    frame_type: FrameType,
}

impl<'a> PayloadReader<'a> {
    fn malformed(&self, reason: &'static str) -> WireError {
        WireError::Malformed { frame_type: self.frame_type, reason }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], WireError> {
        match self.rest.split_at_checked(len) {
            Some((taken, rest)) => {
                self.rest = rest;
                Ok(taken)
            }
            None => Err(WireError::Truncated { needed: len as u64, available: self.rest.len() as u64 }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn rank(&mut self) -> Result<RankKey, WireError> {
        let worker = WorkerId(self.u64()?);
        let dp_rank = DpRank(self.u32()?);
        Ok(RankKey { worker, dp_rank })
    }

    fn tier(&mut self) -> Result<StorageTier, WireError> {
        let code = self.u8()?;
        tier_from_code(code).ok_or_else(|| self.malformed("unknown storage tier"))
    }

    /// An `Option<u64>`; `absent_but_set` is the reason given when the presence byte says
    /// absent and the value is not 0.
    fn option_u64(&mut self, absent_but_set: &'static str) -> Result<Option<u64>, WireError> {
        let present = self.u8()?;
        let value = self.u64()?;
        match (present, value) {
            (0, 0) => Ok(None),
            (0, _) => Err(self.malformed(absent_but_set)),
            (1, v) => Ok(Some(v)),
            _ => Err(self.malformed("option presence byte is neither 0 nor 1")),
        }
    }

    fn utf8(&mut self, len: usize, reason: &'static str) -> Result<String, WireError> {
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.to_owned()),
            Err(_) => Err(self.malformed(reason)),
        }
    }

    /// Reads a list's element count and checks that the payload has room for that many
    /// elements of at least `min_element_len` bytes, before the caller allocates.
    fn count(&mut self, min_element_len: usize) -> Result<usize, WireError> {
        let count = self.u32()?;
        let needed = u64::from(count).saturating_mul(min_element_len as u64);
        let available = self.rest.len() as u64;
        if needed > available {
            return Err(WireError::Truncated { needed, available });
        }
        // Fits: at most the payload length, which is a usize.
        Ok(count as usize)
    }

    fn finish(self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes { frame_type: self.frame_type, extra: self.rest.len() })
        }
    }
}
