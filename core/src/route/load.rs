//! Load per rank, from the requests the router itself sent.
//!
//! A request's life: routed (its loads are charged) -> prefill done (its prefill tokens
//! are released) -> finished or cancelled (everything else is released). A request the
//! router never hears the end of expires after a TTL and is released then.
//!
//! Shape: per rank a [`RankLoad`] of three atomic counters, charged and released with
//! `fetch_add`/`fetch_sub`; per request an [`ActiveRequest`] in a lock-free map (papaya)
//! that remembers exactly what it charged where. Exactly-once release is what keeps the
//! counters exact under concurrent callers: `finish` and expiry both *remove* the entry
//! and only the caller whose remove returned it releases; the prefill part is released by
//! whoever flips its `prefill_open` flag first (prefill-done, finish or expiry).
//!
//! A rank's `RankLoad` is shared (`Arc`) by the registry and by the requests charged to
//! it, so a request finishing after its worker left releases harmlessly.
//!
//! Engine reports: a router replica sees only its own share of the traffic. When the
//! rank's engine reports its whole load ([`LoadReport`], e.g. scraped from its metrics),
//! the part this router did not send, `reported - own` per counter (never below zero), is
//! kept as the rank's *external* load until the report's TTL passes; decisions read own +
//! external ([`RankLoad::snapshot`]). Own requests keep moving the own part between
//! reports, so a replica reacts to its own decisions at once and to the others' at the
//! report interval. A stale report is dropped by the expiry sweep, and the replica falls
//! back to its own bookkeeping.
//!
//! Expiry: every opened request also goes to a lock-free FIFO of `(deadline, id)`, in
//! deadline order (the TTL is fixed and the clock monotonic, up to the few microseconds
//! between reading the clock and appending, which at worst expire a request that late).
//! A sweep pops what is due, at most a budget per call, and releases those still in the
//! map; entries of requests that finished already pop as no-ops. One sweeper at a time
//! (a `try_lock`); the entry it popped but found not yet due waits in `held`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_queue::SegQueue;

use super::prefill_progress::PrefillProgress;
use super::registry::RankSlot;

/// A router-assigned request id. Ids start from a value derived from the room seed, so
/// that a late `finish` for a request of an earlier router lifetime does not release a
/// request of this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

/// The load of one rank. Counters are Relaxed by design: each is an independent sum;
/// a reader wants a recent value, not an ordering with other memory.
#[derive(Debug, Default)]
pub struct RankLoad {
    prefill_tokens: AtomicU64,
    decode_blocks: AtomicU64,
    requests: AtomicU64,
    /// Blocks the rank's device cache holds as its events tell (stored minus removed,
    /// zero at a clear; a removal of a block never stored can undercount it): how full
    /// `Policy::PredictedTtft`'s pressure term finds the rank's cache.
    held_blocks: AtomicU64,
    /// Load the engine last reported beyond this router's own; see the module docs.
    external: ExternalLoad,
    /// How far the rank has got through `prefill_tokens`, and how fast it prefills.
    progress: PrefillProgress,
}

/// The external part of a rank's load and when its report goes stale.
#[derive(Debug, Default)]
struct ExternalLoad {
    prefill_tokens: AtomicU64,
    decode_blocks: AtomicU64,
    requests: AtomicU64,
    /// Router clock time past which the report no longer counts (0: none).
    expires_ms: AtomicU64,
}

/// A rank's load as its engine reports it, in the router's units; a counter the engine
/// does not report is `None` (only the router's own bookkeeping counts for it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Prompt tokens queued or being prefilled (not yet computed).
    pub prefill_tokens: Option<u64>,
    /// KV blocks of the requests running or waiting on the rank.
    pub decode_blocks: Option<u64>,
    /// Requests running or waiting on the rank.
    pub requests: Option<u64>,
}

/// A reading of a [`RankLoad`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LoadSnapshot {
    /// Prompt tokens routed here whose prefill is not done, minus their cached overlap.
    pub prefill_tokens: u64,
    /// KV blocks of requests running here.
    pub decode_blocks: u64,
    /// Requests active here.
    pub requests: u64,
}

impl RankLoad {
    /// Blocks the rank's device cache holds, as its events tell.
    pub fn held_blocks(&self) -> u64 {
        self.held_blocks.load(Ordering::Relaxed)
    }

    pub(crate) fn add_held(&self, blocks: u64) {
        self.held_blocks.fetch_add(blocks, Ordering::Relaxed);
    }

    pub(crate) fn remove_held(&self, blocks: u64) {
        // Saturating: one writer per rank at a time, so the update never retries long.
        let _ = self.held_blocks.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| Some(h.saturating_sub(blocks)));
    }

    pub(crate) fn set_held(&self, blocks: u64) {
        self.held_blocks.store(blocks, Ordering::Relaxed);
    }

    /// The load decisions see: this router's own plus what the engine reported beyond it.
    pub fn snapshot(&self) -> LoadSnapshot {
        let own = self.own_snapshot();
        let e = &self.external;
        // No report held (the common case without replicas): one load, not three.
        if e.expires_ms.load(Ordering::Relaxed) == 0 {
            return own;
        }
        LoadSnapshot {
            prefill_tokens: own.prefill_tokens + e.prefill_tokens.load(Ordering::Relaxed),
            decode_blocks: own.decode_blocks + e.decode_blocks.load(Ordering::Relaxed),
            requests: own.requests + e.requests.load(Ordering::Relaxed),
        }
    }

    /// This router's own prefill tokens still to compute on the rank at `now_ms`, counted
    /// down at the rank's observed prefill rate (the charged tokens while none is
    /// observed); see `prefill_progress.rs`.
    pub(crate) fn own_prefill_remaining(&self, now_ms: u64) -> f64 {
        self.progress.remaining(self.prefill_tokens.load(Ordering::Relaxed), self.progress.rate(), now_ms)
    }

    /// The external part of the prefill tokens (an engine's report beyond this router's own).
    pub(crate) fn external_prefill_tokens(&self) -> u64 {
        if self.external.expires_ms.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.external.prefill_tokens.load(Ordering::Relaxed)
    }

    /// The load of this router's own requests alone.
    fn own_snapshot(&self) -> LoadSnapshot {
        LoadSnapshot {
            prefill_tokens: self.prefill_tokens.load(Ordering::Relaxed),
            decode_blocks: self.decode_blocks.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }

    /// Keeps what `report` has beyond this router's own load, until `expires_ms`.
    pub(crate) fn apply_report(&self, report: &LoadReport, expires_ms: u64) {
        let own = self.own_snapshot();
        let beyond = |reported: Option<u64>, own: u64| reported.map_or(0, |r| r.saturating_sub(own));
        let e = &self.external;
        e.prefill_tokens.store(beyond(report.prefill_tokens, own.prefill_tokens), Ordering::Relaxed);
        e.decode_blocks.store(beyond(report.decode_blocks, own.decode_blocks), Ordering::Relaxed);
        e.requests.store(beyond(report.requests, own.requests), Ordering::Relaxed);
        e.expires_ms.store(expires_ms, Ordering::Relaxed);
    }

    /// Drops the external load if its report is stale at `now_ms`. A report applied
    /// concurrently may be dropped with it; the next one restores it.
    pub(crate) fn expire_report(&self, now_ms: u64) {
        let e = &self.external;
        let expires = e.expires_ms.load(Ordering::Relaxed);
        if expires != 0 && expires <= now_ms {
            e.expires_ms.store(0, Ordering::Relaxed);
            e.prefill_tokens.store(0, Ordering::Relaxed);
            e.decode_blocks.store(0, Ordering::Relaxed);
            e.requests.store(0, Ordering::Relaxed);
        }
    }
}

/// What one side of a request charged to one rank.
pub(crate) struct Charge {
    pub(crate) load: Arc<RankLoad>,
    pub(crate) prefill_tokens: u64,
    pub(crate) decode_blocks: u64,
    /// Counts in the rank's active requests until the part it belongs to ends.
    pub(crate) counts_request: bool,
}

impl Charge {
    /// The prefill part on `rank`; `counts_request` when it is the request's only
    /// presence there (disaggregated prefill).
    pub(crate) fn prefill(rank: &RankSlot, tokens: u64, counts_request: bool) -> Charge {
        Charge { load: Arc::clone(&rank.load), prefill_tokens: tokens, decode_blocks: 0, counts_request }
    }

    /// The decode part on `rank`, which counts as an active request until finish.
    pub(crate) fn decode(rank: &RankSlot, blocks: u64) -> Charge {
        Charge { load: Arc::clone(&rank.load), prefill_tokens: 0, decode_blocks: blocks, counts_request: true }
    }
}

/// A routed request: a prefill part (released at prefill done) and a decode part
/// (released at finish); aggregated requests have both on one rank.
pub(crate) struct ActiveRequest {
    pub(crate) prefill: Charge,
    pub(crate) decode: Charge,
    prefill_open: AtomicBool,
    pub(crate) expires_at_ms: u64,
}

impl ActiveRequest {
    pub(crate) fn new(prefill: Charge, decode: Charge, expires_at_ms: u64) -> ActiveRequest {
        ActiveRequest { prefill, decode, prefill_open: AtomicBool::new(true), expires_at_ms }
    }

    fn charge(&self, now_ms: u64) {
        let p = &self.prefill;
        let before = p.load.prefill_tokens.fetch_add(p.prefill_tokens, Ordering::Relaxed);
        if p.prefill_tokens > 0 {
            p.load.progress.charged(before, now_ms);
        }
        p.load.requests.fetch_add(u64::from(p.counts_request), Ordering::Relaxed);
        let d = &self.decode;
        d.load.decode_blocks.fetch_add(d.decode_blocks, Ordering::Relaxed);
        d.load.requests.fetch_add(u64::from(d.counts_request), Ordering::Relaxed);
    }

    /// The prefill ended at `now_ms`: releases the prefill part (once, whoever calls
    /// first) and tells the rank's progress estimate.
    fn prefill_done(&self, now_ms: u64) -> bool {
        let released = self.release_prefill();
        if released && self.prefill.prefill_tokens > 0 {
            self.prefill.load.progress.done(self.prefill.prefill_tokens, now_ms);
        }
        released
    }

    /// Releases the prefill part once, whoever calls first.
    fn release_prefill(&self) -> bool {
        // Relaxed by design: the swap's atomicity alone makes the release happen once.
        if !self.prefill_open.swap(false, Ordering::Relaxed) {
            return false;
        }
        let p = &self.prefill;
        p.load.prefill_tokens.fetch_sub(p.prefill_tokens, Ordering::Relaxed);
        p.load.requests.fetch_sub(u64::from(p.counts_request), Ordering::Relaxed);
        true
    }

    /// Releases the decode part; the caller removed the request from the book, so this
    /// runs once.
    fn release_decode(&self) {
        let d = &self.decode;
        d.load.decode_blocks.fetch_sub(d.decode_blocks, Ordering::Relaxed);
        d.load.requests.fetch_sub(u64::from(d.counts_request), Ordering::Relaxed);
    }
}

/// Every active request, by id.
pub(crate) struct LoadBook {
    requests: papaya::HashMap<u64, ActiveRequest>,
    next_id: AtomicU64,
    /// `(deadline, id)` of every opened request, in deadline order; see the module docs.
    deadlines: SegQueue<(u64, u64)>,
    /// The sweeper's lock, and the entry it popped that was not due yet.
    held: Mutex<Option<(u64, u64)>>,
}

/// Requests one expiry call may look at.
pub(crate) const EXPIRY_BUDGET: usize = 65_536;

impl LoadBook {
    pub(crate) fn new(first_id: u64) -> LoadBook {
        LoadBook {
            requests: papaya::HashMap::new(),
            next_id: AtomicU64::new(first_id),
            deadlines: SegQueue::new(),
            held: Mutex::new(None),
        }
    }

    /// Charges the request's loads at `now_ms` and records it.
    pub(crate) fn open(&self, request: ActiveRequest, now_ms: u64) -> RequestId {
        // Relaxed by design: ids need uniqueness only.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.charge(now_ms);
        let deadline = request.expires_at_ms;
        self.requests.pin().insert(id, request);
        self.deadlines.push((deadline, id));
        RequestId(id)
    }

    /// Prefill of `id` ended at `now_ms`. False if the request is unknown (finished,
    /// expired, never routed) or its prefill was already released.
    pub(crate) fn prefill_done(&self, id: RequestId, now_ms: u64) -> bool {
        let map = self.requests.pin();
        map.get(&id.0).is_some_and(|request| request.prefill_done(now_ms))
    }

    /// Request `id` finished or was cancelled. False if it is unknown (already finished,
    /// expired, never routed).
    pub(crate) fn finish(&self, id: RequestId) -> bool {
        let map = self.requests.pin();
        match map.remove(&id.0) {
            Some(request) => {
                request.release_prefill();
                request.release_decode();
                true
            }
            None => false,
        }
    }

    /// Releases requests whose deadline is at or before `now_ms`, looking at most at
    /// `budget` of them; returns how many it released and whether it got through all that
    /// were due (false: call again). Returns `(0, true)` at once while another call sweeps.
    pub(crate) fn expire(&self, now_ms: u64, budget: usize) -> (usize, bool) {
        let Ok(mut held) = self.held.try_lock() else { return (0, true) };
        let mut released = 0;
        for _ in 0..budget {
            let Some((deadline, id)) = held.take().or_else(|| self.deadlines.pop()) else { return (released, true) };
            if deadline > now_ms {
                *held = Some((deadline, id));
                return (released, true);
            }
            released += usize::from(self.finish(RequestId(id)));
        }
        (released, false)
    }

    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }
}
