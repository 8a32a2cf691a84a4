//! A fleet of simulated engines: `workers x dp_size` rank caches, each publishing its own
//! event stream with ids 1, 2, 3, ...

use super::rank_cache::RankCache;
use crate::event::KvEvent;
use crate::ids::{BlockHash, RankKey};

/// Shape of a simulated fleet: every rank of every worker gets a cache of
/// `capacity_blocks` blocks.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub workers: u32,
    pub dp_size: u32,
    pub capacity_blocks: usize,
}

/// What one prefill on a fleet rank did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetPrefill {
    /// Leading chain blocks the rank had cached.
    pub cached_blocks: usize,
    /// The rank's events in publish order, with the rank and its next event ids.
    pub events: Vec<KvEvent>,
}

/// Simulated engines with ids `0..workers`, each with ranks `0..dp_size`
/// (`RankKey::new(w, r)`).
#[derive(Clone, Debug)]
pub struct Fleet {
    config: FleetConfig,
    /// Worker-major: rank `(w, r)` is at `w * dp_size + r`.
    ranks: Vec<RankKey>,
    caches: Vec<RankCache>,
    /// Id of each rank's last published event (0: none yet).
    last_event_ids: Vec<u64>,
}

impl Fleet {
    pub fn new(config: FleetConfig) -> Self {
        let ranks: Vec<RankKey> =
            (0..config.workers).flat_map(|w| (0..config.dp_size).map(move |r| RankKey::new(u64::from(w), r))).collect();
        let caches = ranks.iter().map(|_| RankCache::new(config.capacity_blocks)).collect();
        let last_event_ids = vec![0; ranks.len()];
        Fleet { config, ranks, caches, last_event_ids }
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// Every rank, worker-major (`(0,0), (0,1), ..., (1,0), ...`).
    pub fn ranks(&self) -> &[RankKey] {
        &self.ranks
    }

    fn slot(&self, rank: RankKey) -> Option<usize> {
        let worker = u32::try_from(rank.worker.0).ok().filter(|&w| w < self.config.workers)?;
        let dp_rank = rank.dp_rank.0;
        if dp_rank >= self.config.dp_size {
            return None;
        }
        Some(worker as usize * self.config.dp_size as usize + dp_rank as usize)
    }

    /// The cache of `rank`, or `None` for a rank outside the fleet.
    pub fn cache(&self, rank: RankKey) -> Option<&RankCache> {
        self.slot(rank).map(|slot| &self.caches[slot])
    }

    /// Leading blocks of `chain` that `rank` holds; 0 for a rank outside the fleet.
    pub fn cached_prefix(&self, rank: RankKey, chain: &[BlockHash]) -> usize {
        self.cache(rank).map_or(0, |cache| cache.cached_prefix(chain))
    }

    /// Runs prefill on `rank` and returns the events with the rank and per-rank event ids
    /// (1, 2, 3, ... per rank). A rank outside the fleet gives an empty outcome.
    pub fn prefill(&mut self, rank: RankKey, chain: &[BlockHash]) -> FleetPrefill {
        let Some(slot) = self.slot(rank) else {
            return FleetPrefill::default();
        };
        let outcome = self.caches[slot].prefill(chain);
        let last_event_id = &mut self.last_event_ids[slot];
        let events = outcome
            .events
            .into_iter()
            .map(|data| {
                *last_event_id += 1;
                KvEvent { rank, event_id: *last_event_id, data }
            })
            .collect();
        FleetPrefill { cached_blocks: outcome.cached_blocks, events }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::KvEventData;
    use crate::reference::ReferenceIndex;
    use crate::trace::{parse_trace, request_blocks_into};

    fn chain(contents: &[u64]) -> Vec<BlockHash> {
        contents.iter().map(|&c| BlockHash(c)).collect()
    }

    #[test]
    fn ranks_are_worker_major() {
        let fleet = Fleet::new(FleetConfig { workers: 2, dp_size: 3, capacity_blocks: 4 });
        let expected: Vec<RankKey> = vec![
            RankKey::new(0, 0),
            RankKey::new(0, 1),
            RankKey::new(0, 2),
            RankKey::new(1, 0),
            RankKey::new(1, 1),
            RankKey::new(1, 2),
        ];
        assert_eq!(fleet.ranks(), &expected[..]);
        assert!(fleet.ranks().iter().all(|&r| fleet.cache(r).is_some_and(|c| c.capacity() == 4 && c.is_empty())));
        assert_eq!(fleet.config().dp_size, 3);
    }

    #[test]
    fn event_ids_count_per_rank() {
        let mut fleet = Fleet::new(FleetConfig { workers: 2, dp_size: 2, capacity_blocks: 2 });
        let a = RankKey::new(1, 1);
        let b = RankKey::new(0, 1);
        let first = fleet.prefill(a, &chain(&[1, 2]));
        assert_eq!(first.cached_blocks, 0);
        assert_eq!(first.events.iter().map(|e| (e.rank, e.event_id)).collect::<Vec<_>>(), vec![(a, 1)]);
        let other = fleet.prefill(b, &chain(&[1]));
        assert_eq!(other.events.iter().map(|e| (e.rank, e.event_id)).collect::<Vec<_>>(), vec![(b, 1)]);
        // Evicts both blocks of `a` (Removed) and stores two (Stored): ids 2 and 3.
        let second = fleet.prefill(a, &chain(&[3, 4]));
        assert_eq!(second.events.iter().map(|e| e.event_id).collect::<Vec<_>>(), vec![2, 3]);
        assert!(matches!(second.events[0].data, KvEventData::Removed { .. }));
        // Fully cached: no events, ids unchanged.
        assert_eq!(fleet.prefill(a, &chain(&[3, 4])), FleetPrefill { cached_blocks: 2, events: vec![] });
        assert_eq!(fleet.prefill(a, &chain(&[5])).events[0].event_id, 4);
        assert_eq!(fleet.cached_prefix(b, &chain(&[1, 2])), 1);
    }

    #[test]
    fn unknown_ranks_are_empty() {
        let mut fleet = Fleet::new(FleetConfig { workers: 2, dp_size: 2, capacity_blocks: 8 });
        for rank in [RankKey::new(2, 0), RankKey::new(0, 2), RankKey::new(u64::MAX, 0), RankKey::new(1 << 32, 0)] {
            assert_eq!(fleet.prefill(rank, &chain(&[1, 2])), FleetPrefill::default());
            assert_eq!(fleet.cached_prefix(rank, &chain(&[1, 2])), 0);
            assert!(fleet.cache(rank).is_none());
        }
        let empty = Fleet::new(FleetConfig { workers: 0, dp_size: 4, capacity_blocks: 8 });
        assert!(empty.ranks().is_empty());
        let no_ranks = Fleet::new(FleetConfig { workers: 4, dp_size: 0, capacity_blocks: 8 });
        assert!(no_ranks.ranks().is_empty() && no_ranks.cache(RankKey::new(0, 0)).is_none());
    }

    /// A rank's standing for one request.
    #[derive(Clone, Copy)]
    struct Candidate {
        rank: RankKey,
        overlap: usize,
        held: usize,
    }

    /// The longest cached prefix wins; ties go to the rank holding fewest blocks, then to
    /// the lowest rank (candidates come in rank order).
    fn longest_prefix(candidates: &[Candidate]) -> RankKey {
        let mut best = candidates[0];
        for &c in &candidates[1..] {
            if c.overlap > best.overlap || (c.overlap == best.overlap && c.held < best.held) {
                best = c;
            }
        }
        best.rank
    }

    /// Totals of one replay.
    #[derive(Debug, Default)]
    struct ReplayTotals {
        request_blocks: usize,
        cached_blocks: usize,
        removed_blocks: usize,
        ranks_used: usize,
    }

    /// Replays the first 2000 Mooncake requests at 16-token blocks through 8 workers x 2
    /// ranks with small caches, routing request `i` to `route(i, candidates)`. Feeds every
    /// event to the reference and checks, after every request, that it agrees with every
    /// cache: no anomalies, as many blocks held as the caches hold, and each rank's overlap
    /// for the request equal to its cache's cached prefix.
    fn replay_first_2000(route: impl Fn(usize, &[Candidate]) -> RankKey) -> ReplayTotals {
        const TRACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/conversation_trace.jsonl");
        let file = std::fs::File::open(TRACE).expect("shipped trace present");
        let trace = parse_trace(std::io::BufReader::new(file)).expect("shipped trace parses");
        let capacity = 2048;
        let mut fleet = Fleet::new(FleetConfig { workers: 8, dp_size: 2, capacity_blocks: capacity });
        let mut reference = ReferenceIndex::new();
        for &rank in fleet.ranks() {
            reference.register_rank(rank);
        }
        let ranks = fleet.ranks().to_vec();
        let overlap_of = |matches: &[(RankKey, u32)], rank: RankKey| {
            matches.iter().find(|(k, _)| *k == rank).map_or(0, |(_, d)| *d as usize)
        };
        let mut blocks = Vec::new();
        let mut totals = ReplayTotals::default();
        let mut used = std::collections::BTreeSet::new();
        let mut events = 0u64;
        for (index, request) in trace.iter().take(2000).enumerate() {
            request_blocks_into(request, 16, &mut blocks).expect("16 divides 512");
            let matches = reference.find_matches(&blocks);
            let candidates: Vec<Candidate> = ranks
                .iter()
                .map(|&rank| {
                    let overlap = fleet.cached_prefix(rank, &blocks);
                    assert_eq!(overlap, overlap_of(&matches, rank), "rank {rank} before request {index}");
                    Candidate { rank, overlap, held: fleet.cache(rank).map_or(0, RankCache::len) }
                })
                .collect();
            let target = route(index, &candidates);
            used.insert(target);
            let prefill = fleet.prefill(target, &blocks);
            assert_eq!(prefill.cached_blocks, overlap_of(&matches, target));
            for event in &prefill.events {
                assert_eq!(event.rank, target);
                if let KvEventData::Removed { blocks } = &event.data {
                    totals.removed_blocks += blocks.len();
                }
                reference.apply(event);
            }
            events += prefill.events.len() as u64;
            totals.request_blocks += blocks.len();
            totals.cached_blocks += prefill.cached_blocks;

            let counters = reference.counters();
            assert_eq!(
                (counters.unknown_parent, counters.unknown_remove, counters.duplicate_store, counters.stale_event),
                (0, 0, 0, 0)
            );
            let held: usize = ranks.iter().map(|&r| fleet.cache(r).map_or(0, RankCache::len)).sum();
            assert_eq!(reference.held_pairs(), held);
            let after = reference.find_matches(&blocks);
            for &rank in &ranks {
                assert_eq!(
                    overlap_of(&after, rank),
                    fleet.cached_prefix(rank, &blocks),
                    "rank {rank} after request {index}"
                );
            }
            assert_eq!(overlap_of(&after, target), blocks.len().min(capacity));
        }
        assert_eq!(reference.counters().events_applied, events);
        totals.ranks_used = used.len();
        totals
    }

    /// Pure longest-prefix routing. Every one of these requests starts with the same
    /// 512-token block (hash id 0), so once rank (0, 0) holds it, it wins every request:
    /// this replay exercises one rank under heavy eviction.
    #[test]
    fn trace_replay_longest_prefix_keeps_the_reference_consistent() {
        let totals = replay_first_2000(|_, candidates| longest_prefix(candidates));
        assert_eq!(totals.ranks_used, 1, "{totals:?}");
        assert!(totals.removed_blocks > 0 && totals.cached_blocks > 0, "{totals:?}");
        assert!(totals.cached_blocks < totals.request_blocks, "{totals:?}");
    }

    /// Round robin over the 16 ranks (request `i` to rank `i % 16`): every rank gets
    /// traffic and evicts.
    #[test]
    fn trace_replay_round_robin_keeps_the_reference_consistent() {
        let totals = replay_first_2000(|index, candidates| candidates[index % candidates.len()].rank);
        assert_eq!(totals.ranks_used, 16, "{totals:?}");
        assert!(totals.removed_blocks > 0 && totals.cached_blocks > 0, "{totals:?}");
    }
}
