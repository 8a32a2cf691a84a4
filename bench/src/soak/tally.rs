//! [`Tally`]: what the soak's own tasks did and saw, counted on their side of the wire,
//! plus the problems they found while the run was going ([`Tally::fail`]).
//!
//! Every task holds an `Arc<Tally>` and bumps relaxed atomic counters (`Tally::add`):
//! routes and lifecycle calls by outcome, where decisions landed (exact- or
//! approximate-mode workers, cache hits), block events the engines published, churn
//! actions, and each kind of bad traffic sent with how the daemon answered it. The final
//! verdict compares some of them with the daemon's own counters (decisions, finishes),
//! which is how a lost or doubled request shows. A task that sees something wrong (a
//! route answered 500, a leave whose ranks were not removed) calls `fail`, which counts
//! it and keeps the first [`KEPT_FAILURES`] messages for the report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Failure messages kept for the report (all are counted).
pub const KEPT_FAILURES: usize = 20;

macro_rules! tally_counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// See the module docs.
        #[derive(Debug, Default)]
        pub struct Tally {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
            failures: AtomicU64,
            messages: Mutex<Vec<String>>,
        }
    };
}

tally_counters! {
    /// `POST /v1/route` answered 200.
    routes_ok,
    /// Routes to an exact-mode worker.
    routed_exact,
    /// Of those, with a non-zero overlap (a cache hit).
    routed_exact_hits,
    /// Routes to an approximate-mode worker.
    routed_approx,
    /// Of those, with a non-zero overlap (approximate mode's own records).
    routed_approx_hits,
    /// Routes restricted (`workers`) to the approximate-mode workers.
    routes_approx_only,
    /// Routes to an exact-mode worker whose engine was down (not served).
    served_down,
    /// `prefill_done` answered 200.
    prefill_done_ok,
    /// `finish` answered 200.
    finishes_ok,
    /// Block hashes in the events the engines published.
    block_events_published,
    /// Publisher restarts (orderly shutdown, then a new incarnation).
    restarts,
    /// Publisher crashes (killed without a goodbye, then a new incarnation).
    crashes,
    /// Publisher leaves longer than the grace.
    leaves,
    /// Leaves whose ranks the daemon kept during the grace and removed after it.
    leaves_verified,
    /// Malformed HTTP requests sent (garbage, bad JSON, oversize, unknown paths, ...).
    bad_http_sent,
    /// Slow-header connections the daemon closed in time.
    slow_headers_closed,
    /// Idle keep-alive connections the daemon closed in time.
    idle_keepalive_closed,
    /// Random UDP datagrams sent to the ingest port.
    bad_datagrams,
    /// QUIC connections with no or a foreign client certificate, refused by the daemon.
    quic_certs_refused,
    /// QUIC `Hello`s for another worker's ranks (a valid certificate of a rogue worker).
    quic_wrong_worker,
    /// QUIC connections sending garbage instead of a `Hello`.
    quic_garbage,
}

impl Tally {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn bump(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records a problem found during the run.
    pub fn fail(&self, message: impl Into<String>) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut messages = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        if messages.len() < KEPT_FAILURES {
            messages.push(message.into());
        }
    }

    /// Problems found, and the first messages.
    pub fn failures(&self) -> (u64, Vec<String>) {
        let messages = self.messages.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (self.failures.load(Ordering::Relaxed), messages)
    }
}
