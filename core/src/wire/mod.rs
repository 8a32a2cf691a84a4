//! The binary frame format of the KV event transport (publisher <-> router over QUIC).
//!
//! A stream is a sequence of frames. Every frame is a fixed 10-byte header, a payload,
//! and optionally a 4-byte CRC32C trailer:
//!
//! ```text
//! offset  0      2        3      4       6             10                 10+len
//!         +------+--------+------+-------+-------------+------------------+---------+
//!         | "KR" | ver=1  | type | flags | payload len | payload          | CRC32C  |
//!         | 2 B  | u8     | u8   | u16   | u32         | len bytes        | u32, if |
//!         |      |        |      |       |             |                  | flag 0  |
//!         +------+--------+------+-------+-------------+------------------+---------+
//! ```
//!
//! All integers are little-endian and fixed-width (no varints: the payloads are mostly
//! 64-bit hashes, which varints would not shrink). Strings are UTF-8 with a length
//! prefix and a small bound; lists are a u32 count then the elements; `Option<u64>` is a
//! presence byte and the value (0 when absent). The encoding is canonical: the decoder
//! refuses anything the encoder would not write, so a decoded frame re-encodes to the same
//! bytes. docs/wire-format.md has every frame byte by byte.
//!
//! Frames ([`Frame`]): `Hello` (publisher: its incarnation and ranks), `Subscribe` (router,
//! per rank: resume after a sequence number, or ask for a dump), `Deltas` (a batch of
//! consecutively numbered events of one rank and tier), `DumpBegin` / `DumpBlocks` /
//! `DumpEnd` (a rank's whole block set, parents first), `Heartbeat` (per rank, when idle:
//! the last sequence number sent, so a lost last batch is noticed), and `Goodbye`
//! (closing, with a code and a message).
//!
//! Safety against hostile bytes: [`FrameDecoder`] checks the header, including the declared
//! length against [`DecoderConfig::max_frame_len`] (1 MiB by default), before buffering
//! any payload byte; buffers at most one frame; checks every list count against the
//! payload bytes left before allocating; and returns a typed [`WireError`], never panics.
//! After an error the stream is unusable (the transport closes it; other streams go on).
//!
//! Checksum: off on QUIC, whose AEAD already authenticates every byte; available
//! ([`encode_checksummed`], [`DecoderConfig::require_checksum`]) for carriers that do not,
//! such as recorded frame files. See `checksum.rs`.
//!
//! API: [`encode`] / [`encode_checksummed`] append a frame to a `Vec<u8>`; [`encoded_len`]
//! sizes one in advance; [`FrameDecoder::decode`] takes bytes and yields frames.

mod checksum;
mod decode;
mod decoder;
mod encode;
mod error;
mod frame;
mod header;
pub(crate) mod layout;
#[cfg(test)]
mod tests;

pub use checksum::crc32c;
pub use decoder::{DecoderConfig, FrameDecoder, DEFAULT_MAX_FRAME_LEN};
pub use encode::{
    encode, encode_checksummed, encoded_len, event_encoded_len, max_dump_blocks_per_frame, DELTAS_OVERHEAD,
};
pub use error::{EncodeError, WireError};
pub use frame::{
    Deltas, DumpBegin, DumpBlock, DumpBlocks, DumpEnd, Frame, Goodbye, GoodbyeCode, Heartbeat, Hello, Subscribe,
    MAX_GOODBYE_MESSAGE_LEN, MAX_PUBLISHER_NAME_LEN,
};
pub use header::{FrameType, CHECKSUM_LEN, HEADER_LEN, MAGIC, VERSION};
