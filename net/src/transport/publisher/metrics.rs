//! [`PublisherMetrics`]: a publisher's counters (relaxed atomics) and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! publisher_metrics {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Counters of a publisher, summed over its routers.
        #[derive(Debug, Default)]
        pub struct PublisherMetrics {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`PublisherMetrics`] at one moment.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct PublisherMetricsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl PublisherMetrics {
            pub fn snapshot(&self) -> PublisherMetricsSnapshot {
                PublisherMetricsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

publisher_metrics! {
    /// Connections established (handshake completed).
    connects,
    /// Connection attempts that failed.
    connect_failures,
    /// Subscriptions served.
    subscriptions,
    /// Subscriptions answered with a dump.
    dumps_sent,
    /// Subscriptions answered from the ring.
    resumes_served,
    /// Subscribers cut for falling behind their queue bound.
    subscribers_cut,
    /// Events written in `Deltas` frames.
    events_sent,
    /// `Deltas` frames written.
    deltas_frames_sent,
    /// Heartbeats written.
    heartbeats_sent,
    /// Deltas dropped by the fault-injection hook.
    fault_dropped,
    /// Deltas duplicated by the fault-injection hook.
    fault_duplicated,
}
