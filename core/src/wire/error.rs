//! Why bytes were refused ([`WireError`]) or a frame could not be written ([`EncodeError`]).
//! Every bad input is one of these, never a panic.

use super::header::FrameType;

/// A frame could not be decoded. The stream it came from is unusable after any of these:
/// the decoder keeps returning the same error, and the transport closes that stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The frame does not start with the magic bytes "KR".
    BadMagic { found: [u8; 2] },
    /// The header names a format version this code does not speak.
    UnsupportedVersion { found: u8, supported: u8 },
    /// The header's frame type byte names no frame type.
    UnknownFrameType { found: u8 },
    /// A header flag this version does not define is set.
    UnknownFlags { flags: u16 },
    /// The header declares a frame (header, payload and trailer) longer than the decoder's
    /// maximum. Refused from the header alone, before any payload byte is buffered.
    TooLong { len: u64, max: u32 },
    /// The payload ended before a field (or the elements a count announced) could be read,
    /// or the stream ended in the middle of a frame.
    Truncated { needed: u64, available: u64 },
    /// The payload holds bytes past its last field.
    TrailingBytes { frame_type: FrameType, extra: usize },
    /// A field holds a value the format does not allow (the reason says which).
    Malformed { frame_type: FrameType, reason: &'static str },
    /// The CRC32C trailer does not match the header and payload.
    ChecksumMismatch { expected: u32, computed: u32 },
    /// The decoder requires checksummed frames and this one has none.
    ChecksumRequired,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::BadMagic { found } => write!(f, "bad magic {:02x}{:02x} (expected \"KR\")", found[0], found[1]),
            WireError::UnsupportedVersion { found, supported } => {
                write!(f, "unsupported wire version {found} (this build speaks {supported})")
            }
            WireError::UnknownFrameType { found } => write!(f, "unknown frame type {found}"),
            WireError::UnknownFlags { flags } => write!(f, "unknown header flags {flags:#06x}"),
            WireError::TooLong { len, max } => write!(f, "frame of {len} bytes exceeds the maximum of {max}"),
            WireError::Truncated { needed, available } => {
                write!(f, "truncated frame: {needed} more bytes needed, {available} available")
            }
            WireError::TrailingBytes { frame_type, extra } => {
                write!(f, "{frame_type:?} frame has {extra} bytes after its last field")
            }
            WireError::Malformed { frame_type, reason } => write!(f, "malformed {frame_type:?} frame: {reason}"),
            WireError::ChecksumMismatch { expected, computed } => {
                write!(f, "checksum mismatch: frame says {expected:#010x}, bytes give {computed:#010x}")
            }
            WireError::ChecksumRequired => write!(f, "frame has no checksum and this decoder requires one"),
        }
    }
}

impl std::error::Error for WireError {}

/// A frame that cannot be written: a field exceeds what the format can carry, or the frame
/// breaks a rule the decoder enforces (so it would be refused by the peer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// A string or list is longer than its length field or bound allows.
    FieldTooLong { field: &'static str, len: usize, max: usize },
    /// The payload would exceed the u32 length field.
    PayloadTooLong { len: usize },
    /// The frame breaks a format rule (the reason says which).
    Invalid { frame_type: FrameType, reason: &'static str },
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::FieldTooLong { field, len, max } => {
                write!(f, "{field} is {len} long, the wire format allows at most {max}")
            }
            EncodeError::PayloadTooLong { len } => write!(f, "payload of {len} bytes exceeds the u32 length field"),
            EncodeError::Invalid { frame_type, reason } => write!(f, "invalid {frame_type:?} frame: {reason}"),
        }
    }
}

impl std::error::Error for EncodeError {}
