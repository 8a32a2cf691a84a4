//! The streaming decoder: bytes arrive in chunks of any size, frames come out.
//!
//! It buffers at most one frame: first its 10 header bytes, then, once the header has
//! been checked (magic, version, type, flags, and the declared length against
//! [`DecoderConfig::max_frame_len`]), the rest of that frame. A frame that arrives whole
//! inside one chunk is decoded straight from the chunk, without copying.

use super::checksum::Crc32c;
use super::decode::decode_payload;
use super::error::WireError;
use super::frame::Frame;
use super::header::{FrameHeader, CHECKSUM_LEN, HEADER_LEN};

/// Default [`DecoderConfig::max_frame_len`]: 1 MiB.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 1 << 20;

/// A buffer that grew past this for a large frame is released once the frame is decoded,
/// so an idle stream does not keep a megabyte.
const RETAINED_BUFFER_CAPACITY: usize = 64 << 10;
/// Smallest buffer allocated for a frame that arrives in pieces.
const MIN_BUFFER_CAPACITY: usize = 4 << 10;

/// Decoder settings. `DecoderConfig::default()`: 1 MiB frames, checksum optional.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Longest frame accepted, header and checksum trailer included.
    pub max_frame_len: u32,
    /// Refuse frames without a CRC32C trailer (for carriers that do not authenticate
    /// bytes; QUIC does, so the transport leaves this off).
    pub require_checksum: bool,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig { max_frame_len: DEFAULT_MAX_FRAME_LEN, require_checksum: false }
    }
}

/// Turns a byte stream into frames. One decoder per stream.
///
/// ```
/// use kvroute_core::wire::{encode, Frame, FrameDecoder, Heartbeat};
/// use kvroute_core::RankKey;
///
/// let heartbeat = Frame::Heartbeat(Heartbeat { rank: RankKey::new(7, 0), last_seq: 42 });
/// let mut bytes = Vec::new();
/// encode(&heartbeat, &mut bytes).unwrap();
/// encode(&heartbeat, &mut bytes).unwrap();
/// let mut decoder = FrameDecoder::new();
/// let mut frames = Vec::new();
/// for chunk in bytes.chunks(3) {
///     let mut chunk = chunk;
///     while let Some(frame) = decoder.decode(&mut chunk).unwrap() {
///         frames.push(frame);
///     }
/// }
/// assert_eq!(frames, [heartbeat.clone(), heartbeat]);
/// assert!(decoder.finish().is_ok());
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    config: DecoderConfig,
    header_bytes: [u8; HEADER_LEN],
    header_filled: usize,
    /// The current frame's header, once all of it arrived and passed the checks.
    header: Option<FrameHeader>,
    /// The current frame's payload and trailer received so far (when it arrives in pieces).
    body: Vec<u8>,
    /// The first error: the stream is unusable after it.
    failed: Option<WireError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new()
    }
}

impl FrameDecoder {
    /// A decoder with the default settings.
    pub fn new() -> Self {
        FrameDecoder::with_config(DecoderConfig::default())
    }

    pub fn with_config(config: DecoderConfig) -> Self {
        FrameDecoder {
            config,
            header_bytes: [0; HEADER_LEN],
            header_filled: 0,
            header: None,
            body: Vec::new(),
            failed: None,
        }
    }

    pub fn config(&self) -> DecoderConfig {
        self.config
    }

    /// Takes bytes from the front of `input` up to the end of the next frame and returns
    /// that frame, or takes all of `input` and returns `Ok(None)` when no frame completed.
    /// Call it again while `input` is not empty. After an error the stream is unusable:
    /// every later call returns the same error.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, WireError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.step(input);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
            self.body = Vec::new();
        }
        result
    }

    /// Checks that the stream ended cleanly: on a frame boundary, with no error.
    pub fn finish(&self) -> Result<(), WireError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let needed = match self.header {
            None if self.header_filled == 0 => return Ok(()),
            None => (HEADER_LEN - self.header_filled) as u64,
            Some(header) => header.body_len().saturating_sub(self.body.len() as u64),
        };
        Err(WireError::Truncated { needed, available: 0 })
    }

    /// Bytes of the current, incomplete frame held (bounded by the maximum frame length).
    pub fn buffered_len(&self) -> usize {
        self.header_filled + self.body.len()
    }

    /// Bytes allocated for buffering (never more than the current frame's declared length,
    /// and released after a large frame).
    pub fn buffer_capacity(&self) -> usize {
        self.body.capacity()
    }

    fn step(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, WireError> {
        let header = match self.header {
            Some(header) => header,
            None => {
                let take = (HEADER_LEN - self.header_filled).min(input.len());
                let (head, rest) = input.split_at(take);
                *input = rest;
                let end = self.header_filled + take;
                if let Some(slot) = self.header_bytes.get_mut(self.header_filled..end) {
                    slot.copy_from_slice(head);
                }
                self.header_filled = end;
                if self.header_filled < HEADER_LEN {
                    return Ok(None);
                }
                let header = FrameHeader::parse(&self.header_bytes, self.config.max_frame_len)?;
                if self.config.require_checksum && !header.checksummed {
                    return Err(WireError::ChecksumRequired);
                }
                self.header = Some(header);
                header
            }
        };
        // At most max_frame_len (a u32), checked by FrameHeader::parse.
        let body_len = usize::try_from(header.body_len())
            .map_err(|_| WireError::TooLong { len: header.frame_len(), max: self.config.max_frame_len })?;
        let frame = if self.body.is_empty() && input.len() >= body_len {
            // The whole rest of the frame is in this chunk: decode it in place.
            let (body, rest) = input.split_at(body_len);
            *input = rest;
            decode_body(&self.header_bytes, header, body)?
        } else {
            let take = (body_len - self.body.len()).min(input.len());
            let (piece, rest) = input.split_at(take);
            *input = rest;
            self.reserve_body(take, body_len);
            self.body.extend_from_slice(piece);
            if self.body.len() < body_len {
                return Ok(None);
            }
            let frame = decode_body(&self.header_bytes, header, &self.body)?;
            if self.body.capacity() > RETAINED_BUFFER_CAPACITY {
                self.body = Vec::new();
            } else {
                self.body.clear();
            }
            frame
        };
        self.header = None;
        self.header_filled = 0;
        Ok(Some(frame))
    }

    /// Makes room for `incoming` more body bytes, growing geometrically but never past
    /// the frame's declared `body_len`.
    fn reserve_body(&mut self, incoming: usize, body_len: usize) {
        let needed = self.body.len() + incoming;
        if needed > self.body.capacity() {
            let target = needed.max(self.body.capacity().saturating_mul(2)).max(MIN_BUFFER_CAPACITY).min(body_len);
            self.body.reserve_exact(target - self.body.len());
        }
    }
}

/// Checks the trailer (when present) and decodes the payload of a complete frame body.
fn decode_body(header_bytes: &[u8; HEADER_LEN], header: FrameHeader, body: &[u8]) -> Result<Frame, WireError> {
    let payload_len = usize::try_from(header.payload_len).unwrap_or(usize::MAX);
    let Some((payload, trailer)) = body.split_at_checked(payload_len) else {
        return Err(WireError::Truncated { needed: u64::from(header.payload_len), available: body.len() as u64 });
    };
    if header.checksummed {
        let expected = match <[u8; CHECKSUM_LEN]>::try_from(trailer) {
            Ok(bytes) => u32::from_le_bytes(bytes),
            Err(_) => {
                return Err(WireError::Truncated { needed: CHECKSUM_LEN as u64, available: trailer.len() as u64 })
            }
        };
        let computed = Crc32c::new().update(header_bytes).update(payload).finish();
        if computed != expected {
            return Err(WireError::ChecksumMismatch { expected, computed });
        }
    }
    decode_payload(header.frame_type, payload)
}
