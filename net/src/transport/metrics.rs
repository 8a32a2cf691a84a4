//! [`IngestMetrics`]: the router side's counters (relaxed atomics, bumped on the ingest
//! tasks), and [`IngestMetricsSnapshot`], a plain copy of them with their names for a
//! `/metrics` page.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! ingest_metrics {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Counters of an ingest server. Read them with [`snapshot`](Self::snapshot).
        #[derive(Debug, Default)]
        pub struct IngestMetrics {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`IngestMetrics`] at one moment (each counter read separately).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct IngestMetricsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl IngestMetrics {
            pub fn snapshot(&self) -> IngestMetricsSnapshot {
                IngestMetricsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl IngestMetricsSnapshot {
            /// Every counter with its name (`kvroute_ingest_` prefixed names are up to the
            /// renderer), in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

ingest_metrics! {
    /// Events handed to the sink from `Deltas` frames (duplicates skipped).
    events_applied,
    /// Block hashes those events carried (stored plus removed).
    block_events_applied,
    /// `Deltas` frames received.
    deltas_frames,
    /// Sequence gaps seen (a lost batch, found by the next batch or a heartbeat).
    gaps,
    /// Subscriptions sent with a `resume_after` (the publisher may still answer with a dump).
    resumes,
    /// Dumps completed and handed to the sink (`replace_rank`).
    dumps,
    /// Blocks received in dumps (placeholders included).
    dump_blocks,
    /// Streams closed for bytes that do not decode or frames out of order.
    rejected_frames,
    /// Ranks (in `Hello`) or frames for workers the peer's certificate does not allow, and
    /// connections whose certificate grant cannot be read.
    rejected_unauthorized,
    /// Connections open now.
    connections_open,
    /// Connections accepted since start (handshake completed).
    connections_total,
    /// Handshakes that failed (no or bad client certificate, wrong ALPN, ...) or did not
    /// complete within the handshake timeout.
    handshakes_failed,
    /// Handshakes in progress now (each holds one of the `max_handshakes` slots).
    handshakes_in_flight,
    /// Connection attempts from unvalidated addresses answered with a stateless Retry
    /// (past half of `max_handshakes` in progress).
    handshakes_retried,
    /// Connection attempts refused because `max_handshakes` were in progress.
    handshakes_refused,
    /// Connection attempts refused because `max_connections` were established (at once,
    /// or, when the last slot went during the handshake, closed right after it).
    connections_refused,
    /// Ranks whose publisher stayed away past the grace period, removed from the sink.
    ranks_removed_after_grace,
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    add(counter, 1);
}
