//! The fixed 10-byte header every frame starts with, and the frame type codes.
//!
//! ```text
//! offset  size  field
//! 0       2     magic "KR" (0x4B 0x52)
//! 2       1     version (1)
//! 3       1     frame type (see FrameType)
//! 4       2     flags, u16 LE: bit 0 = a CRC32C trailer follows the payload; others must be 0
//! 6       4     payload length, u32 LE (header and trailer not included)
//! ```

use super::error::WireError;

/// The two bytes every frame starts with ("KR", for kvroute).
pub const MAGIC: [u8; 2] = *b"KR";
/// The only frame format version this code reads and writes.
pub const VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 10;
/// Bytes in the optional CRC32C trailer.
pub const CHECKSUM_LEN: usize = 4;
/// Header flag: a CRC32C of header and payload follows the payload.
pub const FLAG_CHECKSUM: u16 = 1;
/// Every flag this version defines; a header with any other bit set is refused.
pub const KNOWN_FLAGS: u16 = FLAG_CHECKSUM;

/// What a frame's payload holds. The discriminant is the byte on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Hello = 1,
    Subscribe = 2,
    Deltas = 3,
    DumpBegin = 4,
    DumpBlocks = 5,
    DumpEnd = 6,
    Heartbeat = 7,
    Goodbye = 8,
}

impl FrameType {
    /// The frame type with this wire code, if any.
    pub fn from_code(code: u8) -> Option<FrameType> {
        Some(match code {
            1 => FrameType::Hello,
            2 => FrameType::Subscribe,
            3 => FrameType::Deltas,
            4 => FrameType::DumpBegin,
            5 => FrameType::DumpBlocks,
            6 => FrameType::DumpEnd,
            7 => FrameType::Heartbeat,
            8 => FrameType::Goodbye,
            _ => return None,
        })
    }

    /// The byte that names this type on the wire.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A parsed and checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) frame_type: FrameType,
    pub(crate) checksummed: bool,
    pub(crate) payload_len: u32,
}

impl FrameHeader {
    /// Bytes that follow the header: the payload and, when flagged, the checksum.
    pub(crate) fn body_len(&self) -> u64 {
        u64::from(self.payload_len) + if self.checksummed { CHECKSUM_LEN as u64 } else { 0 }
    }

    /// Whole frame length: header, payload and trailer.
    pub(crate) fn frame_len(&self) -> u64 {
        HEADER_LEN as u64 + self.body_len()
    }

    pub(crate) fn write(&self, out: &mut [u8; HEADER_LEN]) {
        let flags = if self.checksummed { FLAG_CHECKSUM } else { 0 };
        let len = self.payload_len.to_le_bytes();
        let flags = flags.to_le_bytes();
        *out =
            [MAGIC[0], MAGIC[1], VERSION, self.frame_type.code(), flags[0], flags[1], len[0], len[1], len[2], len[3]];
    }

    /// Parses a header and checks everything knowable from it, including that the whole
    /// frame fits in `max_frame_len`, so nothing past the header is buffered for a frame
    /// that will be refused.
    pub(crate) fn parse(bytes: &[u8; HEADER_LEN], max_frame_len: u32) -> Result<FrameHeader, WireError> {
        let [m0, m1, version, code, f0, f1, l0, l1, l2, l3] = *bytes;
        if [m0, m1] != MAGIC {
            return Err(WireError::BadMagic { found: [m0, m1] });
        }
        if version != VERSION {
            return Err(WireError::UnsupportedVersion { found: version, supported: VERSION });
        }
        let frame_type = FrameType::from_code(code).ok_or(WireError::UnknownFrameType { found: code })?;
        let flags = u16::from_le_bytes([f0, f1]);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::UnknownFlags { flags });
        }
        let header = FrameHeader {
            frame_type,
            checksummed: flags & FLAG_CHECKSUM != 0,
            payload_len: u32::from_le_bytes([l0, l1, l2, l3]),
        };
        if header.frame_len() > u64::from(max_frame_len) {
            return Err(WireError::TooLong { len: header.frame_len(), max: max_frame_len });
        }
        Ok(header)
    }
}
