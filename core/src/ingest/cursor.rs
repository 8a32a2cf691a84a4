//! [`RankCursor`]: where the router stands in one rank's numbered event stream, and what
//! to do with each batch or dump frame that arrives.

/// What to do with a `Deltas` batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaVerdict {
    /// Contiguous with what was applied: apply `events[skip..]`. The first `skip` events
    /// were applied before (a duplicate overlap); `skip == events.len()` means all were.
    Apply { skip: usize },
    /// Events are missing between the last applied and this batch: apply nothing, close
    /// the stream and subscribe again with `resume_after = expected - 1`.
    Gap { expected: u64, got: u64 },
}

/// A frame that breaks the protocol's order: the stream should be closed
/// (`GoodbyeCode::PROTOCOL_ERROR`) and the rank subscribed again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorError {
    /// Deltas arrived before the stream was synchronised (no resume point, no dump).
    DeltasBeforeSync,
    /// Deltas arrived between `DumpBegin` and `DumpEnd`.
    DeltasDuringDump,
    /// `DumpBlocks` or `DumpEnd` without a `DumpBegin`.
    NotDumping,
    /// A second `DumpBegin` before the first dump ended.
    DumpAlreadyStarted,
    /// `DumpEnd` names another sequence number than its `DumpBegin`.
    DumpSeqMismatch { begin: u64, end: u64 },
    /// `DumpEnd` announces another number of blocks than the chunks carried.
    DumpCountMismatch { received: u64, announced: u64 },
    /// The batch's sequence numbers run past `u64::MAX`.
    SeqOverflow,
}

impl std::fmt::Display for CursorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CursorError::DeltasBeforeSync => write!(f, "deltas before a resume point or dump"),
            CursorError::DeltasDuringDump => write!(f, "deltas in the middle of a dump"),
            CursorError::NotDumping => write!(f, "dump frame without DumpBegin"),
            CursorError::DumpAlreadyStarted => write!(f, "DumpBegin in the middle of a dump"),
            CursorError::DumpSeqMismatch { begin, end } => {
                write!(f, "dump began as of seq {begin} but ended as of seq {end}")
            }
            CursorError::DumpCountMismatch { received, announced } => {
                write!(f, "dump carried {received} blocks but DumpEnd announced {announced}")
            }
            CursorError::SeqOverflow => write!(f, "sequence numbers past u64::MAX"),
        }
    }
}

impl std::error::Error for CursorError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing trustworthy applied: the next subscription asks for a dump.
    Unsynced,
    /// Between `DumpBegin` and `DumpEnd`.
    Dumping { as_of_seq: u64, received: u64 },
    /// Every event up to `applied` is applied.
    Synced { applied: u64 },
}

/// The router's position in one rank's stream, for one publisher incarnation.
///
/// Pure bookkeeping: it never sees the events, it says which to apply. Use: on each
/// `Hello`, [`on_hello`](Self::on_hello); subscribe with
/// [`resume_after`](Self::resume_after); feed it every `Deltas` and dump frame; call
/// [`on_stream_closed`](Self::on_stream_closed) when the rank's stream ends.
#[derive(Clone, Debug)]
pub struct RankCursor {
    incarnation: Option<u64>,
    phase: Phase,
}

impl Default for RankCursor {
    fn default() -> Self {
        RankCursor::new()
    }
}

impl RankCursor {
    /// A cursor that has applied nothing.
    pub fn new() -> Self {
        RankCursor { incarnation: None, phase: Phase::Unsynced }
    }

    /// A cursor synchronised at `applied_seq`, as after a dump as of that sequence number:
    /// every event up to `applied_seq` counts as applied and the next `Deltas` batch is
    /// expected at `applied_seq + 1`. No incarnation is recorded (the next
    /// [`on_hello`](Self::on_hello) forgets the position, as for [`new`](Self::new)).
    ///
    /// For streams that carry no dumps, such as the engines' ZeroMQ streams
    /// (`engine_events::sequence`), where the tracker positions the cursor itself once it
    /// has applied a batch.
    pub fn synced_at(applied_seq: u64) -> Self {
        RankCursor { incarnation: None, phase: Phase::Synced { applied: applied_seq } }
    }

    /// A cursor synchronised at `applied_seq` of publisher `incarnation`, as saved with a
    /// snapshot: subscribing with its [`resume_after`](Self::resume_after) asks the
    /// publisher to resume after it (or dump, if its ring no longer covers it), and a
    /// `Hello` of the same incarnation keeps the position.
    pub fn resumed(incarnation: u64, applied_seq: u64) -> Self {
        RankCursor { incarnation: Some(incarnation), phase: Phase::Synced { applied: applied_seq } }
    }

    /// The publisher incarnation of the last `Hello`, if any.
    pub fn incarnation(&self) -> Option<u64> {
        self.incarnation
    }

    /// Records the publisher incarnation a `Hello` announced. A different one than before
    /// makes the old sequence numbers meaningless: the cursor forgets its position and
    /// returns `false` (the next subscription asks for a dump).
    pub fn on_hello(&mut self, incarnation: u64) -> bool {
        if self.incarnation == Some(incarnation) {
            return true;
        }
        self.incarnation = Some(incarnation);
        self.phase = Phase::Unsynced;
        false
    }

    /// The `resume_after` to subscribe with: the last applied sequence number, or `None`
    /// (ask for a dump) when unsynchronised or a dump was cut short.
    pub fn resume_after(&self) -> Option<u64> {
        match self.phase {
            Phase::Synced { applied } => Some(applied),
            Phase::Unsynced | Phase::Dumping { .. } => None,
        }
    }

    /// Sequence number of the last event applied, when synchronised.
    pub fn applied_seq(&self) -> Option<u64> {
        self.resume_after()
    }

    /// Whether a dump is in progress.
    pub fn is_dumping(&self) -> bool {
        matches!(self.phase, Phase::Dumping { .. })
    }

    /// Classifies a `Deltas` batch of `count` events numbered from `first_seq`, and on
    /// [`DeltaVerdict::Apply`] advances past it (the caller applies `events[skip..]`).
    pub fn on_deltas(&mut self, first_seq: u64, count: usize) -> Result<DeltaVerdict, CursorError> {
        let applied = match self.phase {
            Phase::Synced { applied } => applied,
            Phase::Unsynced => return Err(CursorError::DeltasBeforeSync),
            Phase::Dumping { .. } => return Err(CursorError::DeltasDuringDump),
        };
        let expected = applied.checked_add(1).ok_or(CursorError::SeqOverflow)?;
        if first_seq > expected {
            return Ok(DeltaVerdict::Gap { expected, got: first_seq });
        }
        let count_u64 = u64::try_from(count).map_err(|_| CursorError::SeqOverflow)?;
        // first_seq <= expected: the first `expected - first_seq` events are already applied.
        let skip = expected - first_seq;
        if skip >= count_u64 {
            return Ok(DeltaVerdict::Apply { skip: count });
        }
        let last = first_seq.checked_add(count_u64 - 1).ok_or(CursorError::SeqOverflow)?;
        self.phase = Phase::Synced { applied: last };
        // skip < count, a usize.
        Ok(DeltaVerdict::Apply { skip: skip as usize })
    }

    /// A `DumpBegin`: the caller drops what it holds for the rank.
    pub fn on_dump_begin(&mut self, as_of_seq: u64) -> Result<(), CursorError> {
        if self.is_dumping() {
            return Err(CursorError::DumpAlreadyStarted);
        }
        self.phase = Phase::Dumping { as_of_seq, received: 0 };
        Ok(())
    }

    /// A `DumpBlocks` chunk of `count` blocks.
    pub fn on_dump_blocks(&mut self, count: usize) -> Result<(), CursorError> {
        match &mut self.phase {
            Phase::Dumping { received, .. } => {
                *received = received.saturating_add(count as u64);
                Ok(())
            }
            Phase::Unsynced | Phase::Synced { .. } => Err(CursorError::NotDumping),
        }
    }

    /// A `DumpEnd`: the cursor stands at `as_of_seq`, live deltas follow.
    pub fn on_dump_end(&mut self, as_of_seq: u64, block_count: u64) -> Result<(), CursorError> {
        let Phase::Dumping { as_of_seq: begin, received } = self.phase else {
            return Err(CursorError::NotDumping);
        };
        if begin != as_of_seq {
            return Err(CursorError::DumpSeqMismatch { begin, end: as_of_seq });
        }
        if received != block_count {
            return Err(CursorError::DumpCountMismatch { received, announced: block_count });
        }
        self.phase = Phase::Synced { applied: as_of_seq };
        Ok(())
    }

    /// The rank's stream ended (any reason). A dump cut short leaves the rank partly
    /// replayed: the next subscription asks for a new dump. A synchronised cursor keeps
    /// its position and resumes.
    pub fn on_stream_closed(&mut self) {
        if self.is_dumping() {
            self.phase = Phase::Unsynced;
        }
    }
}
