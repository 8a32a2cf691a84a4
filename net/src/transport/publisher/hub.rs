//! [`RankHub`]: one rank on the publisher side: its [`RankPublisher`] (sequence numbers,
//! ring, block state) and the queues of its live subscribers, behind one mutex.
//!
//! Publishing and subscribing both take the mutex, so a new subscriber's starting point
//! (the dump or the resumed deltas, as of the last sequence number) and the first live
//! delta it is queued are consecutive: nothing is lost or sent twice between them.
//!
//! Fan-out: each published delta is put once in an `Arc` and queued on every subscriber's
//! bounded channel with `try_send`. A full queue cuts that subscriber (its writer resets
//! the stream; the router subscribes again, resuming from the ring); a closed one (the
//! writer is gone) is dropped. Publishing never blocks on a router.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use kvroute_core::event::KvEventData;
use kvroute_core::publish::{Delta, PublisherConfig as RankConfig, RankPublisher, SubscribeReply};
use kvroute_core::route::StorageTier;
use kvroute_core::RankKey;
use tokio::sync::mpsc;

use super::metrics::PublisherMetrics;
use crate::transport::metrics::bump;

/// The publisher's side of one subscription: where the writer task takes deltas from.
pub(crate) struct Subscription {
    /// What to send first: resumed deltas or a dump.
    pub reply: SubscribeReply,
    /// Sequence number the reply brings the router to.
    pub last_seq: u64,
    /// Live deltas after `last_seq`, in order.
    pub queue: mpsc::Receiver<Arc<Delta>>,
    /// Raised when the subscriber fell behind and was cut: the writer resets the stream.
    pub cut: Arc<CutSignal>,
}

/// A subscriber was cut: a flag, and a wake-up for a writer blocked on a slow router.
#[derive(Debug, Default)]
pub(crate) struct CutSignal {
    flag: AtomicBool,
    notify: Notify,
}

impl CutSignal {
    fn raise(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Resolves once the signal is raised (at once if it already was).
    pub(crate) async fn raised(&self) {
        while !self.is_raised() {
            self.notify.notified().await;
        }
    }
}

struct Subscriber {
    queue: mpsc::Sender<Arc<Delta>>,
    cut: Arc<CutSignal>,
}

struct HubState {
    publisher: RankPublisher,
    subscribers: Vec<Subscriber>,
}

/// One rank of a publisher. See the module docs.
pub(crate) struct RankHub {
    state: Mutex<HubState>,
}

impl RankHub {
    pub(crate) fn new(rank: RankKey, config: RankConfig) -> Self {
        RankHub { state: Mutex::new(HubState { publisher: RankPublisher::new(rank, config), subscribers: Vec::new() }) }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // Every update completes before anything that could panic: poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an event and queues its deltas for every subscriber; returns the sequence
    /// number of its (last) delta.
    pub(crate) fn publish(&self, tier: StorageTier, data: KvEventData, metrics: &PublisherMetrics) -> u64 {
        let mut state = self.lock();
        let before = state.publisher.last_seq();
        let seq = state.publisher.publish_in(tier, data);
        if state.subscribers.is_empty() {
            return seq;
        }
        let deltas: Option<Vec<Arc<Delta>>> =
            state.publisher.ring().deltas_after(before).map(|deltas| deltas.map(|d| Arc::new(d.clone())).collect());
        let Some(deltas) = deltas else {
            // The event was too large for the ring to keep: no subscriber can get it from
            // here. Cut them all; they will resubscribe and take a dump.
            for subscriber in state.subscribers.drain(..) {
                subscriber.cut.raise();
                bump(&metrics.subscribers_cut);
            }
            return seq;
        };
        state.subscribers.retain(|subscriber| {
            for delta in &deltas {
                match subscriber.queue.try_send(delta.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        subscriber.cut.raise();
                        bump(&metrics.subscribers_cut);
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
        seq
    }

    /// Registers a subscriber resuming after `resume_after` (or wanting a dump) and returns
    /// its starting point and queue.
    pub(crate) fn subscribe(&self, resume_after: Option<u64>, queue_len: usize) -> Subscription {
        let mut state = self.lock();
        let reply = state.publisher.subscribe(resume_after);
        let last_seq = state.publisher.last_seq();
        let (sender, queue) = mpsc::channel(queue_len.max(1));
        let cut = Arc::new(CutSignal::default());
        state.subscribers.retain(|s| !s.queue.is_closed());
        state.subscribers.push(Subscriber { queue: sender, cut: cut.clone() });
        Subscription { reply, last_seq, queue, cut }
    }

    /// Sequence number of the rank's last delta (0 before the first).
    pub(crate) fn last_seq(&self) -> u64 {
        self.lock().publisher.last_seq()
    }

    /// Drops every subscriber queue: their writers say goodbye and finish.
    pub(crate) fn close_subscribers(&self) {
        self.lock().subscribers.clear();
    }
}
