//! Event ids for the index. The index skips an event whose `event_id` is not above the
//! rank's last one; wire sequence numbers restart with every publisher incarnation (and
//! with every engine process), and dump events have none. So every ingest path (the QUIC
//! transport, the engines' ZeroMQ streams) numbers the events it hands a sink from this
//! one process-wide counter that only increases: ids are then increasing per rank
//! whatever happened on the wire, across reconnects, restarts, sources and ingest servers
//! of the process. One `fetch_add` per batch.

use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_EVENT_ID: AtomicU64 = AtomicU64::new(1);

/// Reserves `count` consecutive event ids and returns the first.
pub fn allocate_event_ids(count: usize) -> u64 {
    // Relaxed: ids only need to be unique and increasing per rank, and one rank's events
    // are numbered and applied by one task at a time.
    NEXT_EVENT_ID.fetch_add(count as u64, Ordering::Relaxed)
}
