//! The backend interface of the replay: what an index must offer to be replayed, and the
//! list of backends the harness knows.
//!
//! A backend is driven through its production path:
//! - events arrive as **owned native payloads**, converted from the schedule's
//!   [`KvEvent`](kvroute_core::KvEvent)s before the trial (outside the timing, the same for
//!   every backend) and handed to the event lane that owns the rank, which frees them after
//!   the apply (or hands them on, as Dynamo's thread pool does);
//! - a lookup reads the request as a slice of the backend's own hash type (converted once
//!   per backend before its first trial) and reports `(rank, overlap)` pairs with a non-zero
//!   overlap into a reused buffer: the conversion to this common result type is part of the
//!   measured lookup time, sorting for the comparison is not.
//!
//! Event application may be asynchronous (Dynamo's `ThreadPoolIndexer` applies on its own
//! threads): [`Backend::visible`] tells the harness how many of a lane's submitted events a
//! lookup is now guaranteed to observe, which is what the dependency plan waits for.
//!
//! Adding a backend (say, our index with another reclamation scheme) is one adapter
//! implementing [`Backend`] plus one arm in [`BackendKind`].

use std::fmt;

use kvroute_core::ids::{BlockHash, RankKey};

use crate::schedule::{Schedule, ScheduledEvent};

/// What a backend is built from.
pub struct BuildContext<'a> {
    pub ranks: &'a [RankKey],
    pub block_size: u32,
    /// Each rank's KV cache capacity in blocks (what an engine reports when it registers).
    pub capacity_blocks: usize,
    /// Event lanes of the replay: a backend with its own event threads gets this many.
    pub event_threads: usize,
    /// Shards of kvroute's index (`KvIndex::with_shards`).
    pub kvroute_shards: usize,
    /// How Dynamo's `PositionalIndexer` is fed block hashes (see [`PositionalHashes`]).
    pub positional_hashes: PositionalHashes,
}

/// What `block_hash` the events handed to Dynamo's `PositionalIndexer` carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PositionalHashes {
    /// Dynamo's own sequence hash of the block's content path (`seq[0] = local[0]`,
    /// `seq[i] = xxh3(seq[i-1] ++ local[i], 1337)`), which `PositionalIndexer` re-derives
    /// from the request and verifies at every position; what an engine publishing
    /// Dynamo-compatible hashes sends. The renaming is one-to-one per block, so every other
    /// fact of the stream (parents, removals) is unchanged.
    DynamoChain,
    /// The simulator's engine hashes, as every other backend gets them.
    Engine,
}

/// Per-lane figures a backend reports when a lane finishes.
#[derive(Clone, Debug, Default)]
pub struct LaneReport {
    /// Events the backend refused (e.g. an unknown parent), by its own account.
    pub rejected_events: u64,
}

/// An index under test. See the module docs for the contract.
pub trait Backend: Sync + Sized {
    /// The backend's request hash type.
    type Hash: Copy + Send + Sync;
    /// The owned native event payload.
    type Event: Send;
    /// Per-event-lane state, created on the lane's thread.
    type Lane<'a>
    where
        Self: 'a;

    fn build(ctx: &BuildContext<'_>) -> Result<Self, String>;
    fn hash(hash: BlockHash) -> Self::Hash;
    /// Converts one scheduled event into the backend's payload (before the trial).
    fn prepare(&self, schedule: &Schedule, event: &ScheduledEvent) -> Self::Event;
    /// State of event lane `lane`, which owns `ranks`.
    fn new_lane(&self, lane: usize, ranks: &[RankKey]) -> Self::Lane<'_>;
    /// Applies (or enqueues) the lane's next event.
    fn submit<'a>(&'a self, lane: &mut Self::Lane<'a>, event: Self::Event);
    /// How many of the lane's submitted events lookups are now guaranteed to observe
    /// (a prefix in submission order; non-decreasing).
    fn visible<'a>(&'a self, lane: &mut Self::Lane<'a>) -> u64;
    /// The lane is done and every submitted event is visible; the backend keeps whatever
    /// state of it is part of the index (it is measured with the index).
    fn finish_lane<'a>(&'a self, lane: Self::Lane<'a>) -> LaneReport;
    /// Appends `(rank, overlap)` for every rank with a non-zero overlap to `out`.
    fn find(&self, hashes: &[Self::Hash], out: &mut Vec<(RankKey, u32)>);
    /// Called after the replay, before the memory reading, on the quiescent index: push
    /// deferred frees towards collection. Returns `false` if the backend defers nothing
    /// (then it is called once); otherwise the harness calls it until the live heap stops
    /// shrinking.
    fn settle(&self) -> bool {
        false
    }
    /// Backend-specific figures worth printing after a run (anomaly counters, shape).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The backends the replay knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum BackendKind {
    /// This project's `kvroute_core::KvIndex`.
    Kvroute,
    /// `dynamo-kv-router` 1.6.1 `ConcurrentRadixTreeCompressed` behind `ThreadPoolIndexer`.
    DynamoCrtc,
    /// `dynamo-kv-router` 1.6.1 `PositionalIndexer` (jump size 8) behind `ThreadPoolIndexer`.
    DynamoPositional,
    /// `kv-index` 2.0.0 `ChainIndex`, one `ChainBlockMap` per rank owned by its event lane.
    SglangChain,
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] =
        [BackendKind::Kvroute, BackendKind::DynamoCrtc, BackendKind::DynamoPositional, BackendKind::SglangChain];

    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Kvroute => "kvroute",
            BackendKind::DynamoCrtc => "dynamo-crtc",
            BackendKind::DynamoPositional => "dynamo-positional",
            BackendKind::SglangChain => "sglang-chain",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
