//! Why snapshot bytes were refused. Every bad input is one of these, never a panic; a
//! refused snapshot is ignored whole (nothing in it is trusted).

/// A snapshot that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// The bytes do not start with the snapshot magic: not a snapshot.
    BadMagic,
    /// A snapshot of a format version this code does not read.
    UnsupportedVersion { found: u32, supported: u32 },
    /// Fewer bytes than the header (or the header's file length) says: a write cut short.
    Truncated { needed: u64, available: u64 },
    /// The bytes after the checksum field do not hash to it: corrupted.
    ChecksumMismatch { stored: u64, computed: u64 },
    /// A field or count that the format does not allow, at byte `offset` (the checksum
    /// matched, so the writer produced it, or the bytes were forged consistently).
    Malformed { offset: u64, reason: &'static str },
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::BadMagic => write!(f, "not a kvroute snapshot (bad magic)"),
            SnapshotError::UnsupportedVersion { found, supported } => {
                write!(f, "snapshot format version {found} is not supported (this build reads {supported})")
            }
            SnapshotError::Truncated { needed, available } => {
                write!(f, "truncated snapshot: {needed} bytes expected, {available} present")
            }
            SnapshotError::ChecksumMismatch { stored, computed } => {
                write!(f, "snapshot checksum mismatch: header says {stored:#018x}, bytes give {computed:#018x}")
            }
            SnapshotError::Malformed { offset, reason } => write!(f, "malformed snapshot at byte {offset}: {reason}"),
        }
    }
}

impl std::error::Error for SnapshotError {}
