//! Who the router can send requests to: workers, their DP ranks, roles and bootstrap
//! endpoints.
//!
//! Readers (every decision) load an immutable [`Fleet`] snapshot through one `ArcSwap`
//! load, lock-free; a join, leave or mode switch builds a new snapshot under the
//! registry lock and swaps it in, so a leaving worker's ranks vanish from every decision
//! that starts after the swap. Each rank's [`RankLoad`] is carried over from snapshot to
//! snapshot (it is an `Arc`), so rebuilding never loses load.

use std::collections::HashMap;
use std::sync::Arc;

use super::load::RankLoad;
use super::RouteError;
use crate::ids::{DpRank, RankId, RankKey, WorkerId};
pub use crate::worker::{BootstrapEndpoint, Role, WorkerSpec};

impl WorkerSpec {
    pub(crate) fn check(&self, router_block_size: u32) -> Result<(), RouteError> {
        let worker = self.worker;
        if self.dp_size == 0 {
            return Err(RouteError::ZeroDpSize(worker));
        }
        if self.dp_size as usize > crate::index::MAX_RANKS {
            // Refused before any rank is registered (each would be, then all rolled back).
            return Err(RouteError::TooManyRanks);
        }
        let needed = u64::from(self.dp_start) + u64::from(self.dp_size);
        if needed > u64::from(u32::MAX) {
            return Err(RouteError::DpWorldTooSmall { worker, world: u32::MAX, needed: u32::MAX });
        }
        if u64::from(self.dp_world()) < needed {
            return Err(RouteError::DpWorldTooSmall { worker, world: self.dp_world(), needed: needed as u32 });
        }
        if self.block_size != router_block_size {
            return Err(RouteError::BlockSizeMismatch {
                worker,
                router: router_block_size,
                worker_block_size: self.block_size,
            });
        }
        if self.role == Role::Prefill && self.bootstrap.is_none() {
            return Err(RouteError::MissingBootstrap(worker));
        }
        if let Some(bootstrap) = &self.bootstrap {
            bootstrap.check_host().map_err(|reason| RouteError::BadBootstrapHost { worker, reason })?;
        }
        Ok(())
    }

    pub(crate) fn rank_error(&self, dp_rank: DpRank) -> RouteError {
        RouteError::RankOutOfRange { worker: self.worker, dp_rank, start: self.dp_start, size: self.dp_size }
    }
}

/// A registered worker as the snapshot sees it.
#[derive(Debug)]
pub(crate) struct WorkerEntry {
    pub(crate) spec: WorkerSpec,
    /// The worker publishes KV events (exact mode); until its first event the router
    /// records what it routes there itself (approximate mode).
    pub(crate) exact: bool,
}

/// One routable rank.
#[derive(Clone, Debug)]
pub(crate) struct RankSlot {
    pub(crate) key: RankKey,
    /// The worker's role (copied here: scoring reads it for every rank).
    pub(crate) role: Role,
    /// Dense id of this rank in each tier's index (device, host, disk).
    pub(crate) ids: [RankId; 3],
    pub(crate) load: Arc<RankLoad>,
    pub(crate) worker: Arc<WorkerEntry>,
}

/// `slot_of_id` entry of an id no slot has.
pub(crate) const NO_SLOT: u32 = u32::MAX;

/// An immutable registry snapshot.
#[derive(Debug, Default)]
pub(crate) struct Fleet {
    pub(crate) workers: HashMap<WorkerId, Arc<WorkerEntry>>,
    /// Every rank, ordered by key.
    pub(crate) ranks: Vec<RankSlot>,
    /// Per tier, the position in `ranks` of each index rank id ([`NO_SLOT`] if none), so
    /// that a lookup's `(id, overlap)` hits land in arrays ordered like `ranks`.
    pub(crate) slot_of_id: [Box<[u32]>; 3],
}

impl Fleet {
    pub(crate) fn build(workers: HashMap<WorkerId, Arc<WorkerEntry>>, ranks: Vec<RankSlot>) -> Fleet {
        Fleet::build_with_alias(workers, ranks, None)
    }

    /// As `build`, and index id `alias.1` of tier `alias.0` also names the slot of rank
    /// `alias.2`: the state of a rank whose replacement is about to be swapped in (see
    /// `Router::replace_rank`).
    pub(crate) fn build_with_alias(
        workers: HashMap<WorkerId, Arc<WorkerEntry>>,
        mut ranks: Vec<RankSlot>,
        alias: Option<(usize, RankId, RankKey)>,
    ) -> Fleet {
        ranks.sort_by_key(|slot| slot.key);
        let slot_of_id = std::array::from_fn(|tier| {
            let mut slots: Vec<u32> = Vec::new();
            let mut map = |id: RankId, slot: usize| {
                let id = id.0 as usize;
                if slots.len() <= id {
                    slots.resize(id + 1, NO_SLOT);
                }
                slots[id] = slot as u32;
            };
            for (i, slot) in ranks.iter().enumerate() {
                map(slot.ids[tier], i);
            }
            if let Some((_, id, key)) = alias.filter(|a| a.0 == tier) {
                if let Some(i) = ranks.iter().position(|s| s.key == key) {
                    map(id, i);
                }
            }
            slots.into_boxed_slice()
        });
        Fleet { workers, ranks, slot_of_id }
    }
}
