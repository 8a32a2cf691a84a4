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
//! Expiry: every opened request also goes to a lock-free FIFO of `(deadline, id)`, in
//! deadline order (the TTL is fixed and the clock monotonic, up to the few microseconds
//! between reading the clock and appending, which at worst expire a request that late).
//! A sweep pops what is due, at most a budget per call, and releases those still in the
//! map; entries of requests that finished already pop as no-ops. One sweeper at a time
//! (a `try_lock`); the entry it popped but found not yet due waits in `held`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_queue::SegQueue;

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
    /// zero at a clear; a removal of a block never stored can undercount it): the
    /// "smallest cache" that `Policy::CacheAware` spreads new prefixes to.
    held_blocks: AtomicU64,
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

    pub fn snapshot(&self) -> LoadSnapshot {
        LoadSnapshot {
            prefill_tokens: self.prefill_tokens.load(Ordering::Relaxed),
            decode_blocks: self.decode_blocks.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
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

    fn charge(&self) {
        let p = &self.prefill;
        p.load.prefill_tokens.fetch_add(p.prefill_tokens, Ordering::Relaxed);
        p.load.requests.fetch_add(u64::from(p.counts_request), Ordering::Relaxed);
        let d = &self.decode;
        d.load.decode_blocks.fetch_add(d.decode_blocks, Ordering::Relaxed);
        d.load.requests.fetch_add(u64::from(d.counts_request), Ordering::Relaxed);
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

    /// Charges the request's loads and records it.
    pub(crate) fn open(&self, request: ActiveRequest) -> RequestId {
        // Relaxed by design: ids need uniqueness only.
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        request.charge();
        let deadline = request.expires_at_ms;
        self.requests.pin().insert(id, request);
        self.deadlines.push((deadline, id));
        RequestId(id)
    }

    /// Prefill of `id` is done. False if the request is unknown (finished, expired, never
    /// routed) or its prefill was already released.
    pub(crate) fn prefill_done(&self, id: RequestId) -> bool {
        let map = self.requests.pin();
        map.get(&id.0).is_some_and(ActiveRequest::release_prefill)
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
