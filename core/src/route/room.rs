//! SGLang's `bootstrap_room`: the id that pairs a disaggregated request's prefill and
//! decode halves, and that tells the decode side which prefill DP rank holds the KV.
//!
//! SGLang's decode side resolves the prefill rank as `room % prefill_dp_size` when no
//! explicit rank is sent (REFERENCE.md section 4), so a room for prefill rank `p` of `P`
//! must satisfy `room % P == p`, lie in `0..=i64::MAX`, and never repeat while the
//! rooms it could collide with are alive.
//!
//! Allocation: one atomic counter. A caller takes the `P` consecutive integers
//! `[base, base + P)` with one `fetch_add(P)`; exactly one of them is `≡ p (mod P)`, and
//! the intervals of different callers are disjoint whatever their `P`, so rooms are
//! unique across threads with no lock. The counter starts at a seed the caller hands
//! in (the daemon draws a random one at start), not at 0: two router lifetimes collide
//! only if their intervals overlap, with odds of about (rooms issued) / 2^62 for a random
//! seed. Rooms are reduced modulo the largest multiple of `P` not above 2^63, which keeps
//! them in range and keeps `room % P`.

use std::sync::atomic::{AtomicU64, Ordering};

use super::RouteError;
use crate::ids::WorkerId;

/// A bootstrap room, `0..=i64::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct BootstrapRoom(pub u64);

impl BootstrapRoom {
    /// The prefill rank SGLang's decode side derives from this room: `room % dp_size`.
    pub fn prefill_rank(self, prefill_dp_size: u32) -> Option<u32> {
        (prefill_dp_size > 0).then(|| (self.0 % u64::from(prefill_dp_size)) as u32)
    }
}

/// Hands out rooms; shared by every routing thread.
#[derive(Debug)]
pub struct RoomAllocator {
    next: AtomicU64,
}

const ROOM_SPACE: u128 = 1 << 63;

impl RoomAllocator {
    /// A fresh allocator whose counter starts from `seed` (reduced below 2^62, so that
    /// 2^62 rooms can be issued before the counter nears the top of the range).
    pub fn new(seed: u64) -> RoomAllocator {
        RoomAllocator { next: AtomicU64::new(seed & ((1 << 62) - 1)) }
    }

    /// For tests: a counter at any value, including near the wrap.
    #[cfg(test)]
    pub(crate) fn starting_at(next: u64) -> RoomAllocator {
        RoomAllocator { next: AtomicU64::new(next) }
    }

    /// A room with `room % dp_size == rank`.
    pub fn allocate(&self, rank: u32, dp_size: u32) -> Result<BootstrapRoom, RouteError> {
        if dp_size == 0 {
            return Err(RouteError::ZeroDpSize(WorkerId(0)));
        }
        if rank >= dp_size {
            return Err(RouteError::InvalidConfig(format!("prefill rank {rank} is not below the dp size {dp_size}")));
        }
        let size = u64::from(dp_size);
        // Relaxed by design: uniqueness comes from the atomicity of the RMW, and a room
        // carries no data that another thread must see.
        let base = self.next.fetch_add(size, Ordering::Relaxed);
        let (base, size, rank) = (u128::from(base), u128::from(size), u128::from(rank));
        let room = base + (rank + size - base % size) % size;
        let modulus = ROOM_SPACE / size * size;
        Ok(BootstrapRoom((room % modulus) as u64))
    }
}
