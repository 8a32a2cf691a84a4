//! NVIDIA Dynamo's indexers (`dynamo-kv-router` 1.6.1), driven the way Dynamo's own Mooncake
//! bench drives them: the `SyncIndexer` backend (`ConcurrentRadixTreeCompressed`, or
//! `PositionalIndexer` with jump size 8 and the default strided search) wrapped in a
//! `ThreadPoolIndexer` with as many event threads as the replay has event lanes. Lookups call
//! the pool's shared backend inline on the query thread, which is exactly what
//! `ThreadPoolIndexer::find_matches` does (minus the `async_trait` box and the owned `Vec`
//! the async interface takes).
//!
//! Event mapping: our `KvEvent` becomes a `RouterEvent` for `worker_id = rank.worker`,
//! carrying a `KvCacheEvent { event_id, dp_rank, data }`; a store is
//! `KvCacheStoreData { parent_hash, start_position: None, blocks }` with, per block,
//! `tokens_hash` = our content hash and `block_hash` = our engine hash (for the positional
//! indexer, by default, the block's Dynamo sequence hash instead; see
//! [`PositionalHashes`](crate::backend::PositionalHashes)); a removal carries the engine
//! hashes (or sequence hashes); a clear is `Cleared`.
//!
//! Visibility: the replay's event lane submits each event with
//! `ThreadPoolIndexer::apply_event_and_wait`, whose future enqueues the event on the rank's
//! sticky pool thread when first polled and resolves once that thread has applied it (with
//! `false`, counted as rejected, when the backend refused it). The lane polls these futures
//! while it waits for its next deadline, with a waker that unparks the lane's thread, so a
//! waiting lane sleeps instead of competing with the pool's threads for the cores; the
//! count of resolved futures, in submission order, is the lane's visible watermark. No
//! other synchronisation is added: the pool applies at its own pace and the lane only
//! observes completions.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use dynamo_kv_router::indexer::{KvRouterError, SyncIndexer, ThreadPoolIndexer};
use dynamo_kv_router::nested_map::SearchMode;
use dynamo_kv_router::protocols::{
    ExternalSequenceBlockHash, KvCacheEvent, KvCacheEventData, KvCacheRemoveData, KvCacheStoreData,
    KvCacheStoredBlockData, LocalBlockHash, RouterEvent,
};
use dynamo_kv_router::{ConcurrentRadixTreeCompressed, PositionalIndexer};
use kvroute_core::event::KvEventData;
use kvroute_core::ids::{BlockHash, RankKey};

use crate::backend::{Backend, BuildContext, LaneReport, PositionalHashes};
use crate::schedule::{Schedule, ScheduledEvent};

/// Jump size of the positional indexer (Dynamo's Mooncake bench compares it at 8).
pub const POSITIONAL_JUMP_SIZE: usize = 8;

/// A Dynamo `SyncIndexer` the replay can build.
pub trait DynamoIndex: SyncIndexer {
    fn create() -> Self;
    /// Whether the backend verifies Dynamo sequence hashes (takes positional hashes).
    fn positional() -> bool;
}

impl DynamoIndex for ConcurrentRadixTreeCompressed {
    fn create() -> Self {
        ConcurrentRadixTreeCompressed::new()
    }
    fn positional() -> bool {
        false
    }
}

impl DynamoIndex for PositionalIndexer {
    fn create() -> Self {
        PositionalIndexer::new_with_mode(POSITIONAL_JUMP_SIZE, SearchMode::Strided)
    }
    fn positional() -> bool {
        true
    }
}

/// A Dynamo indexer behind its `ThreadPoolIndexer`.
pub struct DynamoBackend<T: DynamoIndex> {
    pool: ThreadPoolIndexer<T>,
    /// Feed sequence hashes (positions) instead of engine hashes.
    sequence_hashes: bool,
}

pub type DynamoCrtc = DynamoBackend<ConcurrentRadixTreeCompressed>;
pub type DynamoPositional = DynamoBackend<PositionalIndexer>;

type Ack<'a> = Pin<Box<dyn Future<Output = Result<(), KvRouterError>> + 'a>>;

enum Pending<'a> {
    Waiting(Ack<'a>),
    Done(bool),
}

/// Wakes the lane's thread when an acknowledgement completes.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// An event lane's in-flight acknowledgements.
pub struct DynamoLane<'a> {
    pending: VecDeque<Pending<'a>>,
    visible: u64,
    rejected: u64,
    waker: Waker,
}

fn poll_once(ack: &mut Ack<'_>, waker: &Waker) -> Poll<Result<(), KvRouterError>> {
    let mut cx = Context::from_waker(waker);
    ack.as_mut().poll(&mut cx)
}

impl<T: DynamoIndex> Backend for DynamoBackend<T> {
    type Hash = LocalBlockHash;
    type Event = RouterEvent;
    type Lane<'a> = DynamoLane<'a>;

    fn build(ctx: &BuildContext<'_>) -> Result<Self, String> {
        let pool = ThreadPoolIndexer::new(T::create(), ctx.event_threads.max(1), ctx.block_size);
        Ok(DynamoBackend {
            pool,
            sequence_hashes: T::positional() && ctx.positional_hashes == PositionalHashes::DynamoChain,
        })
    }

    fn hash(hash: BlockHash) -> LocalBlockHash {
        LocalBlockHash(hash.0)
    }

    fn prepare(&self, schedule: &Schedule, scheduled: &ScheduledEvent) -> RouterEvent {
        let event = &scheduled.event;
        let positions = &schedule.positions[scheduled.positions.clone()];
        let data = match &event.data {
            KvEventData::Stored { parent, blocks } => {
                let parent_hash = if self.sequence_hashes { scheduled.parent_position } else { parent.map(|p| p.0) };
                KvCacheEventData::Stored(KvCacheStoreData {
                    parent_hash: parent_hash.map(ExternalSequenceBlockHash),
                    start_position: None,
                    blocks: blocks
                        .iter()
                        .zip(positions)
                        .map(|(block, &position)| KvCacheStoredBlockData {
                            block_hash: ExternalSequenceBlockHash(if self.sequence_hashes {
                                position
                            } else {
                                block.engine_hash.0
                            }),
                            tokens_hash: LocalBlockHash(block.content_hash.0),
                            mm_extra_info: None,
                        })
                        .collect(),
                })
            }
            KvEventData::Removed { blocks } => KvCacheEventData::Removed(KvCacheRemoveData {
                block_hashes: blocks
                    .iter()
                    .zip(positions)
                    .map(|(hash, &position)| {
                        ExternalSequenceBlockHash(if self.sequence_hashes { position } else { hash.0 })
                    })
                    .collect(),
            }),
            KvEventData::Cleared => KvCacheEventData::Cleared,
        };
        RouterEvent::new(
            event.rank.worker.0,
            KvCacheEvent { event_id: event.event_id, data, dp_rank: event.rank.dp_rank.0 },
        )
    }

    fn new_lane(&self, _lane: usize, _ranks: &[RankKey]) -> DynamoLane<'_> {
        DynamoLane {
            pending: VecDeque::new(),
            visible: 0,
            rejected: 0,
            waker: Waker::from(Arc::new(Unpark(std::thread::current()))),
        }
    }

    fn submit<'a>(&'a self, lane: &mut DynamoLane<'a>, event: RouterEvent) {
        let mut ack: Ack<'a> = Box::pin(self.pool.apply_event_and_wait(event));
        // The first poll enqueues the event on its pool thread.
        let entry = match poll_once(&mut ack, &lane.waker) {
            Poll::Ready(result) => Pending::Done(result.is_ok()),
            Poll::Pending => Pending::Waiting(ack),
        };
        lane.pending.push_back(entry);
    }

    fn visible<'a>(&'a self, lane: &mut DynamoLane<'a>) -> u64 {
        while let Some(front) = lane.pending.front_mut() {
            let applied = match front {
                Pending::Done(applied) => *applied,
                Pending::Waiting(ack) => match poll_once(ack, &lane.waker) {
                    Poll::Ready(result) => result.is_ok(),
                    Poll::Pending => break,
                },
            };
            lane.pending.pop_front();
            lane.visible += 1;
            if !applied {
                lane.rejected += 1;
            }
        }
        lane.visible
    }

    fn finish_lane<'a>(&'a self, lane: DynamoLane<'a>) -> LaneReport {
        debug_assert!(lane.pending.is_empty());
        LaneReport { rejected_events: lane.rejected }
    }

    fn find(&self, hashes: &[LocalBlockHash], out: &mut Vec<(RankKey, u32)>) {
        let scores = self.pool.backend().find_matches(hashes, false);
        out.extend(
            scores
                .scores
                .iter()
                .filter(|&(_, &overlap)| overlap > 0)
                .map(|(w, &overlap)| (RankKey::new(w.worker_id, w.dp_rank), overlap)),
        );
    }

    fn notes(&self) -> Vec<String> {
        let nodes = self.pool.backend().node_count();
        let mut notes = Vec::new();
        if nodes > 0 {
            notes.push(format!("radix nodes created: {nodes}"));
        }
        if T::positional() {
            notes.push(format!(
                "block hashes fed: {}",
                if self.sequence_hashes { "Dynamo sequence hashes" } else { "engine hashes" }
            ));
        }
        notes
    }
}
