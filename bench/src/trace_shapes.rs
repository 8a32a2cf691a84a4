//! Generated traces of shapes the shipped conversation trace lacks, in the Mooncake format
//! the replay reads (`kvroute_core::trace::TraceRequest`: timestamp, lengths, one hash id
//! per 512-token block), from a seed, so that no large file ships and every run of a shape
//! is the same workload. Both go through the same engine-cache simulator and schedule as a
//! file trace.
//!
//! - [`TraceShape::SharedPrefix`]: many users behind one long system prompt. Every request
//!   is the common prefix ([`SHARED_PREFIX_BLOCKS`] hash ids, 8,192 tokens) and a short
//!   unique tail (1 or 2 fresh ids, the last one partial), from one of
//!   [`SHARED_PREFIX_USERS`] users whose tails never repeat: the index holds one very hot
//!   chain and a wide, shallow fringe of cold blocks.
//! - [`TraceShape::Agent`]: a few long-running agents with very long, growing contexts.
//!   Each of [`AGENT_USERS`] agents sends turn after turn; a turn is the agent's whole
//!   context so far plus 1 to 4 new blocks (tool output, the model's last reply), until
//!   the context passes [`AGENT_MAX_BLOCKS`] blocks (128 Ki tokens) and the agent starts a
//!   new task (fresh ids). Deep chains, long shared prefixes per agent, few ranks.
//!
//! Timestamps advance by a random 1-20 ms per request (the replay paces by block ops
//! unless told `--pacing trace`). Hash ids are fresh counters, so equal ids mean equal
//! content exactly where the shape says so.

use kvroute_core::trace::{TraceRequest, TRACE_BLOCK_TOKENS};

use crate::rng::Rng;

/// Blocks of the shared system prompt.
pub const SHARED_PREFIX_BLOCKS: u64 = 16;
/// Users behind the shared prompt.
pub const SHARED_PREFIX_USERS: u64 = 2_000;
/// Concurrent agents.
pub const AGENT_USERS: u64 = 12;
/// An agent's context, in blocks, past which it starts a new task.
pub const AGENT_MAX_BLOCKS: usize = 256;

/// A generated workload shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TraceShape {
    /// One long common prefix, short unique tails, many users.
    SharedPrefix,
    /// Few agents, very long growing contexts.
    Agent,
}

impl TraceShape {
    pub fn name(self) -> &'static str {
        match self {
            TraceShape::SharedPrefix => "shared-prefix",
            TraceShape::Agent => "agent",
        }
    }
}

/// `requests` requests of `shape` from `seed`.
pub fn generate(shape: TraceShape, requests: usize, seed: u64) -> Vec<TraceRequest> {
    let mut rng = Rng::new(seed, shape as u64);
    let mut ids = IdSource(0);
    let mut clock = 0u64;
    let mut out = Vec::with_capacity(requests);
    match shape {
        TraceShape::SharedPrefix => {
            let prefix: Vec<u64> = (0..SHARED_PREFIX_BLOCKS).map(|_| ids.fresh()).collect();
            for _ in 0..requests {
                // Which user asks matters only to the schedule's routing; tails are unique.
                let _user = rng.below(SHARED_PREFIX_USERS);
                let mut hash_ids = prefix.clone();
                hash_ids.extend((0..rng.between(1, 2)).map(|_| ids.fresh()));
                out.push(request(&mut rng, &mut clock, hash_ids));
            }
        }
        TraceShape::Agent => {
            let mut contexts: Vec<Vec<u64>> = (0..AGENT_USERS).map(|_| Vec::new()).collect();
            for _ in 0..requests {
                let context = &mut contexts[rng.below(AGENT_USERS) as usize];
                if context.len() >= AGENT_MAX_BLOCKS {
                    context.clear();
                }
                let grow = rng.between(1, 4);
                context.extend((0..grow).map(|_| ids.fresh()));
                out.push(request(&mut rng, &mut clock, context.clone()));
            }
        }
    }
    out
}

/// A request over `hash_ids` whose last block is partial (1 to 512 tokens of it).
fn request(rng: &mut Rng, clock: &mut u64, hash_ids: Vec<u64>) -> TraceRequest {
    *clock += rng.between(1, 20);
    let full = (hash_ids.len() as u32 - 1) * TRACE_BLOCK_TOKENS;
    let input_length = full + rng.between(1, u64::from(TRACE_BLOCK_TOKENS)) as u32;
    TraceRequest { timestamp_ms: *clock, input_length, output_length: rng.between(16, 512) as u32, hash_ids }
}

/// Hash ids never used before in the trace.
struct IdSource(u64);

impl IdSource {
    fn fresh(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvroute_core::trace::request_blocks;

    #[test]
    fn shapes_are_valid_traces_of_their_kind() {
        for shape in [TraceShape::SharedPrefix, TraceShape::Agent] {
            let trace = generate(shape, 3_000, 7);
            assert_eq!(trace, generate(shape, 3_000, 7), "seeded: the same workload every run");
            assert_ne!(trace, generate(shape, 3_000, 8));
            for r in &trace {
                // What the trace reader checks: one id per started 512-token block.
                assert_eq!(r.hash_ids.len(), r.input_length.div_ceil(TRACE_BLOCK_TOKENS) as usize);
                assert!(request_blocks(r, 16).is_ok());
            }
            assert!(trace.windows(2).all(|w| w[0].timestamp_ms < w[1].timestamp_ms));
        }
        let shared = generate(TraceShape::SharedPrefix, 1_000, 1);
        assert!(shared.iter().all(|r| r.hash_ids[..16] == shared[0].hash_ids[..16]), "one common prefix");
        let tails: std::collections::HashSet<u64> = shared.iter().flat_map(|r| r.hash_ids[16..].to_vec()).collect();
        assert_eq!(tails.len(), shared.iter().map(|r| r.hash_ids.len() - 16).sum::<usize>(), "tails never repeat");
        let agent = generate(TraceShape::Agent, 3_000, 1);
        let longest = agent.iter().map(|r| r.hash_ids.len()).max().unwrap();
        assert!(longest > 128 && longest <= AGENT_MAX_BLOCKS + 3, "long contexts, bounded: {longest}");
        // Most turns extend an earlier request's context by 1 to 4 blocks (ids are fresh
        // counters, so the earlier context ends where this one's last 1-4 ids begin).
        let mut last_ids = std::collections::HashSet::new();
        let mut extends = 0;
        for r in &agent {
            let n = r.hash_ids.len();
            if (1..=4).any(|grow| n > grow && last_ids.contains(&r.hash_ids[n - grow - 1])) {
                extends += 1;
            }
            last_ids.insert(r.hash_ids[n - 1]);
        }
        assert!(extends > 2_800, "agents' turns grow their contexts: {extends} of 3000");
    }
}
