//! The frames: what each carries. Their byte layout is in `encode.rs` / `decode.rs` and in
//! docs/wire-format.md.

use super::header::FrameType;
pub use crate::event::DumpBlock;
use crate::event::KvEventData;
use crate::ids::RankKey;
use crate::tier::StorageTier;

/// Longest publisher name a [`Hello`] carries, in UTF-8 bytes (its length is one byte).
pub const MAX_PUBLISHER_NAME_LEN: usize = 255;
/// Longest [`Goodbye`] message, in UTF-8 bytes.
pub const MAX_GOODBYE_MESSAGE_LEN: usize = 1024;

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Subscribe(Subscribe),
    Deltas(Deltas),
    DumpBegin(DumpBegin),
    DumpBlocks(DumpBlocks),
    DumpEnd(DumpEnd),
    Heartbeat(Heartbeat),
    Goodbye(Goodbye),
}

impl Frame {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Subscribe(_) => FrameType::Subscribe,
            Frame::Deltas(_) => FrameType::Deltas,
            Frame::DumpBegin(_) => FrameType::DumpBegin,
            Frame::DumpBlocks(_) => FrameType::DumpBlocks,
            Frame::DumpEnd(_) => FrameType::DumpEnd,
            Frame::Heartbeat(_) => FrameType::Heartbeat,
            Frame::Goodbye(_) => FrameType::Goodbye,
        }
    }

    /// The rank a per-rank frame belongs to (`None` for connection-level frames).
    pub fn rank(&self) -> Option<RankKey> {
        match self {
            Frame::Subscribe(f) => Some(f.rank),
            Frame::Deltas(f) => Some(f.rank),
            Frame::DumpBegin(f) => Some(f.rank),
            Frame::DumpBlocks(f) => Some(f.rank),
            Frame::DumpEnd(f) => Some(f.rank),
            Frame::Heartbeat(f) => Some(f.rank),
            Frame::Hello(_) | Frame::Goodbye(_) => None,
        }
    }
}

/// Publisher -> router, first frame of a connection: who is publishing which ranks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Highest wire version the publisher speaks (at least the version of this frame).
    pub max_version: u8,
    /// Chosen anew each time the publisher starts. Sequence numbers are only meaningful
    /// within one incarnation: a router seeing a new one must not resume, it asks for dumps.
    pub incarnation: u64,
    /// For logs; at most [`MAX_PUBLISHER_NAME_LEN`] UTF-8 bytes.
    pub publisher_name: String,
    pub ranks: Vec<RankKey>,
}

/// Router -> publisher, first frame of a rank's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub rank: RankKey,
    /// The last sequence number the router applied in this incarnation: the publisher
    /// answers with the deltas after it if its ring still has them, else with a dump.
    /// `None` asks for a dump.
    pub resume_after: Option<u64>,
}

/// Publisher -> router: events of one rank and tier with consecutive sequence numbers
/// `first_seq, first_seq + 1, ...`. Never empty; `first_seq >= 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deltas {
    pub rank: RankKey,
    pub tier: StorageTier,
    pub first_seq: u64,
    pub events: Vec<KvEventData>,
}

impl Deltas {
    /// Sequence number of the last event (`None` when empty, or past `u64::MAX`).
    pub fn last_seq(&self) -> Option<u64> {
        let extra = u64::try_from(self.events.len().checked_sub(1)?).ok()?;
        self.first_seq.checked_add(extra)
    }
}

/// Publisher -> router: a dump of the rank's blocks follows, reflecting every event up to
/// and including `as_of_seq`. The router drops what it holds for the rank first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpBegin {
    pub rank: RankKey,
    pub as_of_seq: u64,
}

/// Publisher -> router: one chunk of a dump, blocks of one tier, every parent before its
/// children (a parent may also be in an earlier chunk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpBlocks {
    pub rank: RankKey,
    pub tier: StorageTier,
    pub blocks: Vec<DumpBlock>,
}

/// Publisher -> router: the dump begun at `as_of_seq` is complete; it held `block_count`
/// dump blocks (placeholders included). Live deltas from `as_of_seq + 1` follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpEnd {
    pub rank: RankKey,
    pub as_of_seq: u64,
    pub block_count: u64,
}

/// Publisher -> router, on a rank's stream while it has nothing else to send: every event
/// of `rank` up to `last_seq` has been sent on this stream before this frame (or is
/// reflected by the dump it carried). A router that applied less lost a batch: it
/// subscribes again. This bounds how long the loss of a rank's *last* batch goes unnoticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub rank: RankKey,
    pub last_seq: u64,
}

/// Either side: the sender is closing this stream (or, on the connection's first stream,
/// the connection), and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Goodbye {
    pub code: GoodbyeCode,
    /// For logs; at most [`MAX_GOODBYE_MESSAGE_LEN`] UTF-8 bytes.
    pub message: String,
}

/// Why a stream or connection is closed. Codes this build does not know are kept as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GoodbyeCode(pub u16);

impl GoodbyeCode {
    /// Orderly shutdown.
    pub const NORMAL: GoodbyeCode = GoodbyeCode(0);
    /// The peer sent a frame that could not be decoded or was out of place.
    pub const PROTOCOL_ERROR: GoodbyeCode = GoodbyeCode(1);
    /// Subscribe named a rank this publisher does not publish.
    pub const UNKNOWN_RANK: GoodbyeCode = GoodbyeCode(2);
    /// No common wire version.
    pub const UNSUPPORTED_VERSION: GoodbyeCode = GoodbyeCode(3);
    /// The router saw a sequence gap and will subscribe again.
    pub const SEQUENCE_GAP: GoodbyeCode = GoodbyeCode(4);
    /// The sender hit an internal error.
    pub const INTERNAL: GoodbyeCode = GoodbyeCode(5);
    /// The router holds as many connections as it takes: try again later.
    pub const BUSY: GoodbyeCode = GoodbyeCode(6);
}
