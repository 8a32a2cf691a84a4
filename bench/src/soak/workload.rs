//! [`Workload`]: the prompts the soak's clients route, as token ids and as the block
//! hashes the daemon computes from them.
//!
//! Two kinds of prompt:
//! - **Conversation turns**, from a fixed universe: `conversations` conversations, each
//!   starting with one of [`SYSTEM_PROMPTS`] shared system prompts ([`SYSTEM_BLOCKS`]
//!   blocks), then its own text; turn `t` is the first [`SYSTEM_BLOCKS`] +
//!   [`FIRST_TURN_BLOCKS`] + `t` x [`TURN_BLOCKS`] blocks of it, so each turn extends the
//!   previous one and prompts share prefixes, which the router should find cached on the
//!   exact-mode workers the engines served them on.
//! - **Distinct prompts**: random tokens, never repeated (they miss every cache and charge
//!   whichever rank is cheapest; the clients also send some restricted to the
//!   approximate-mode workers).
//!
//! Block hashes come from `kvroute_core::hashing::BlockHasher` with the daemon's scheme
//! (`kv64`, seed 0) and block size, exactly as `POST /v1/route` hashes `tokens`; the
//! simulated engines store those hashes, so a route's overlap is what the engines hold.
//!
//! For the final exactness check, [`Workload::every_turn`] lists every conversation
//! turn's chain, and [`Workload::remember_distinct`] keeps the last `recent_cap` distinct
//! chains an exact-mode engine served (a bounded sample of the rest of what was
//! published).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Mutex;

use kvroute_core::hashing::BlockHasher;
use kvroute_core::BlockHash;

use crate::rng::Rng;

/// Shared system prompts.
pub const SYSTEM_PROMPTS: u64 = 16;
/// Blocks of each system prompt.
pub const SYSTEM_BLOCKS: usize = 8;
/// Blocks a conversation's first turn adds to its system prompt.
pub const FIRST_TURN_BLOCKS: usize = 4;
/// Blocks each later turn adds.
pub const TURN_BLOCKS: usize = 4;
/// Turns per conversation.
pub const TURNS: usize = 8;
/// Token ids are below this.
const VOCABULARY: u64 = 128_000;

struct Conversation {
    /// Tokens of the last turn (every turn is a prefix).
    tokens: Vec<u32>,
    /// Their block hashes.
    chain: Vec<BlockHash>,
}

/// A prompt to route: its tokens and their block hashes.
pub struct Prompt<'a> {
    pub tokens: Cow<'a, [u32]>,
    pub chain: Cow<'a, [BlockHash]>,
    /// A distinct (random) prompt rather than a conversation turn.
    pub distinct: bool,
}

/// See the module docs.
pub struct Workload {
    hasher: BlockHasher,
    block_size: usize,
    conversations: Vec<Conversation>,
    recent: Mutex<VecDeque<Vec<BlockHash>>>,
    recent_cap: usize,
}

fn tokens(rng: &mut Rng, count: usize) -> impl Iterator<Item = u32> + '_ {
    (0..count).map(|_| rng.below(VOCABULARY) as u32)
}

impl Workload {
    /// The universe of `conversations` conversations for `block_size`-token blocks, from
    /// `seed`; remembers up to `recent_cap` distinct chains.
    pub fn new(block_size: u32, conversations: usize, seed: u64, recent_cap: usize) -> Result<Self, String> {
        let hasher = BlockHasher::new(block_size as usize).map_err(|e| e.to_string())?;
        let block_size = block_size as usize;
        let system: Vec<Vec<u32>> = (0..SYSTEM_PROMPTS)
            .map(|p| tokens(&mut Rng::new(seed, 1 << 40 | p), SYSTEM_BLOCKS * block_size).collect())
            .collect();
        let own_blocks = FIRST_TURN_BLOCKS + (TURNS - 1) * TURN_BLOCKS;
        let conversations = (0..conversations as u64)
            .map(|c| {
                let mut tokens_of = system[(c % SYSTEM_PROMPTS) as usize].clone();
                tokens_of.extend(tokens(&mut Rng::new(seed, 2 << 40 | c), own_blocks * block_size));
                let chain = hasher.hash_blocks(&tokens_of);
                Conversation { tokens: tokens_of, chain }
            })
            .collect();
        Ok(Workload { hasher, block_size, conversations, recent: Mutex::new(VecDeque::new()), recent_cap })
    }

    /// Blocks of turn `turn` (0-based).
    fn turn_blocks(turn: usize) -> usize {
        SYSTEM_BLOCKS + FIRST_TURN_BLOCKS + turn * TURN_BLOCKS
    }

    /// A random conversation's random turn.
    pub fn conversation_turn(&self, rng: &mut Rng) -> Prompt<'_> {
        let conversation = &self.conversations[rng.below(self.conversations.len() as u64) as usize];
        let blocks = Self::turn_blocks(rng.below(TURNS as u64) as usize);
        Prompt {
            tokens: Cow::Borrowed(&conversation.tokens[..blocks * self.block_size]),
            chain: Cow::Borrowed(&conversation.chain[..blocks]),
            distinct: false,
        }
    }

    /// A random prompt of 4 to 40 blocks, plus a partial block (ignored by the hashing,
    /// as the engines ignore it).
    pub fn distinct(&self, rng: &mut Rng) -> Prompt<'static> {
        let len = rng.between(4, 40) as usize * self.block_size + rng.below(self.block_size as u64) as usize;
        let tokens: Vec<u32> = tokens(rng, len).collect();
        let chain = self.hasher.hash_blocks(&tokens);
        Prompt { tokens: Cow::Owned(tokens), chain: Cow::Owned(chain), distinct: true }
    }

    /// Every turn of every conversation, as block chains.
    pub fn every_turn(&self) -> impl Iterator<Item = &[BlockHash]> + '_ {
        self.conversations.iter().flat_map(|c| (0..TURNS).map(move |t| &c.chain[..Self::turn_blocks(t)]))
    }

    /// Keeps `chain` (a distinct prompt an exact-mode engine served) for the final check.
    pub fn remember_distinct(&self, chain: &[BlockHash]) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == self.recent_cap {
            recent.pop_front();
        }
        if self.recent_cap > 0 {
            recent.push_back(chain.to_vec());
        }
    }

    /// The distinct chains remembered.
    pub fn recent_distinct(&self) -> Vec<Vec<BlockHash>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }
}
