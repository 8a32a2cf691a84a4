//! CRC32C (Castagnoli), the optional frame trailer.
//!
//! Why optional: over QUIC every byte is already authenticated by TLS 1.3's AEAD (a 16-byte
//! tag per packet), which catches corruption far better than a CRC could, so the transport
//! sends frames without one. The trailer exists for carriers without that guarantee:
//! frames recorded to a file for replay, or a plain-TCP test harness. A decoder can be set
//! to require it ([`super::DecoderConfig::require_checksum`]).
//!
//! Computed by the `crc32c` crate (the CPU's CRC32 instructions where it has them: SSE4.2
//! on x86-64, the CRC extension on ARMv8; a table otherwise), several slices chained as if
//! they were one.

/// A CRC32C over several slices, as if they were one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Crc32c(u32);

impl Crc32c {
    pub(crate) fn new() -> Self {
        Crc32c(0)
    }

    pub(crate) fn update(self, bytes: &[u8]) -> Self {
        Crc32c(crc32c::crc32c_append(self.0, bytes))
    }

    pub(crate) fn finish(self) -> u32 {
        self.0
    }
}

/// The CRC32C of `bytes` (the frame trailer's checksum), for callers outside the codec.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

#[cfg(test)]
mod tests {
    use super::{crc32c, Crc32c};

    #[test]
    fn matches_the_standard_check_value() {
        // The CRC-32C check value of "123456789" (RFC 3720, iSCSI).
        assert_eq!(Crc32c::new().update(b"123456789").finish(), 0xE306_9283);
        assert_eq!(Crc32c::new().update(b"1234").update(b"56789").finish(), 0xE306_9283);
        assert_eq!(Crc32c::new().finish(), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
