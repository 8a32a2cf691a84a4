//! Event ids for the index. The index skips an event whose `event_id` is not above the
//! rank's last one; wire sequence numbers restart with every publisher incarnation and
//! dump events have none. So the transport numbers the events it hands a sink itself,
//! from one process-wide counter that only increases: ids are then increasing per rank
//! whatever happened on the wire, across reconnects, incarnations and ingest servers of
//! the process. One `fetch_add` per `Deltas` frame.

use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_EVENT_ID: AtomicU64 = AtomicU64::new(1);

/// Reserves `count` consecutive event ids and returns the first.
pub(crate) fn allocate(count: usize) -> u64 {
    // Relaxed: ids only need to be unique and increasing per rank, and one rank's events
    // are numbered and applied by one task at a time (under its slot lock).
    NEXT_EVENT_ID.fetch_add(count as u64, Ordering::Relaxed)
}
