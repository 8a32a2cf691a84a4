//! The cost of sending a request to a rank, and the choice among ranks.
//!
//! Cost (REFERENCE.md section 5, Dynamo's form), in KV blocks:
//!
//! ```text
//! credit   = device overlap + host_weight * (host-only extra) + disk_weight * (disk-only extra)
//! prefill  = (active prefill tokens + max(0, prompt tokens - credit * block_size)) / block_size
//! decode   = active decode blocks + blocks of this request (prompt + expected output)
//! cost     = prefill_scale * prefill + decode_weight * decode + request_weight * active requests
//! ```
//!
//! A tier's "extra" is how much further its prefix reaches than the faster tiers' (so a
//! block counts once, at the best tier holding it, when tiers hold nested prefixes, as
//! offloading engines do). Disaggregated routing uses the prefill terms alone for the
//! prefill rank and the decode terms alone for the decode rank.
//!
//! Choice: temperature 0 takes the cheapest, ties broken uniformly at random; a positive
//! temperature `t` normalises costs to `[0, 1]` and samples rank `i` with probability
//! proportional to `exp(-normalised_i / t)`.

use std::sync::atomic::{AtomicU64, Ordering};

use super::RouteError;

/// Weights of the cost terms; see the module docs.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CostWeights {
    /// Multiplies the prefill blocks (work not covered by cached overlap). Default 1.
    pub prefill_scale: f64,
    /// Multiplies the decode blocks (KV the rank keeps for running requests). Default 1.
    pub decode_weight: f64,
    /// Multiplies the rank's active request count. Default 0 (off).
    pub request_weight: f64,
    /// Worth of a block cached in host memory, relative to device memory. Default 0.75.
    pub host_tier_weight: f64,
    /// Worth of a block cached on disk, relative to device memory. Default 0.25.
    pub disk_tier_weight: f64,
    /// 0: cheapest rank (random among ties); above 0: softmax sampling. Default 0.
    pub temperature: f64,
}

impl Default for CostWeights {
    fn default() -> Self {
        CostWeights {
            prefill_scale: 1.0,
            decode_weight: 1.0,
            request_weight: 0.0,
            host_tier_weight: 0.75,
            disk_tier_weight: 0.25,
            temperature: 0.0,
        }
    }
}

impl CostWeights {
    pub fn validate(&self) -> Result<(), RouteError> {
        let fields = [
            ("prefill_scale", self.prefill_scale),
            ("decode_weight", self.decode_weight),
            ("request_weight", self.request_weight),
            ("host_tier_weight", self.host_tier_weight),
            ("disk_tier_weight", self.disk_tier_weight),
            ("temperature", self.temperature),
        ];
        for (name, value) in fields {
            if !value.is_finite() || value < 0.0 {
                return Err(RouteError::InvalidConfig(format!("{name} must be a finite number >= 0, got {value}")));
            }
        }
        for (name, value) in [("host_tier_weight", self.host_tier_weight), ("disk_tier_weight", self.disk_tier_weight)]
        {
            if value > 1.0 {
                return Err(RouteError::InvalidConfig(format!(
                    "{name} must be at most 1 (a device block is worth 1), got {value}"
                )));
            }
        }
        Ok(())
    }

    /// Overlap credit in blocks from the leading blocks held on device, host and disk.
    pub fn overlap_credit(&self, depths: [u32; 3]) -> f64 {
        let device = depths[0];
        let host = depths[1].max(device);
        let disk = depths[2].max(host);
        f64::from(device)
            + self.host_tier_weight * f64::from(host - device)
            + self.disk_tier_weight * f64::from(disk - host)
    }
}

/// How a decision's cost came about (all in blocks, before weights, except `total`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CostBreakdown {
    /// Full blocks of the prompt.
    pub request_blocks: u32,
    /// Cached prefix credit (device blocks count 1, lower tiers their weight).
    pub overlap_credit: f64,
    /// Prefill work on the rank if chosen: its queue plus this prompt's uncached part.
    pub prefill_blocks: f64,
    /// KV the rank would hold for running requests if chosen.
    pub decode_blocks: f64,
    /// Requests active on the rank before this one.
    pub active_requests: u64,
    /// The weighted sum that was compared.
    pub total: f64,
}

/// A lock-free SplitMix64 stream shared by routing threads: deterministic for a seed on
/// one thread, and never a lock or an allocation on the routing path.
#[derive(Debug)]
pub(crate) struct Rng {
    state: AtomicU64,
}

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng { state: AtomicU64::new(seed) }
    }

    pub(crate) fn next_u64(&self) -> u64 {
        // Relaxed by design: each caller needs a distinct state, not an ordering.
        let mut z = self.state.fetch_add(GAMMA, Ordering::Relaxed).wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// The cheapest and dearest of a set of costs, gathered while they are computed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CostRange {
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Default for CostRange {
    fn default() -> Self {
        CostRange { min: f64::INFINITY, max: f64::NEG_INFINITY }
    }
}

impl CostRange {
    #[inline(always)]
    pub(crate) fn include(&mut self, cost: f64) {
        // Plain compares (costs are finite): cheaper than f64::min/max's NaN handling.
        if cost < self.min {
            self.min = cost;
        }
        if cost > self.max {
            self.max = cost;
        }
    }
}

/// Index of the chosen one of `n` costs (`n > 0`), cost `i` being `cost_at(i)` (a slice's
/// element, or a policy's own measure computed as it is read, so that sampling it needs no
/// buffer); `range` is theirs.
#[inline]
pub(crate) fn choose(n: usize, cost_at: impl Fn(usize) -> f64, range: CostRange, temperature: f64, rng: &Rng) -> usize {
    debug_assert!(n > 0);
    let costs = (0..n).map(&cost_at);
    let CostRange { min, max } = range;
    if temperature <= 0.0 || max <= min {
        // Cheapest; ties (within rounding) broken uniformly with one random draw, which
        // is skipped when the cheapest is alone.
        let tolerance = 1e-9 * min.abs().max(1.0);
        let mut ties = 0usize;
        let mut first = 0usize;
        for (i, c) in costs.clone().enumerate() {
            if c - min <= tolerance {
                if ties == 0 {
                    first = i;
                }
                ties += 1;
            }
        }
        if ties <= 1 {
            return first;
        }
        let mut nth = rng.below(ties);
        for (i, c) in costs.enumerate().skip(first) {
            if c - min <= tolerance {
                if nth == 0 {
                    return i;
                }
                nth -= 1;
            }
        }
        return first;
    }
    let span = max - min;
    let weight = |c: f64| (-((c - min) / span) / temperature).exp();
    let total: f64 = costs.clone().map(weight).sum();
    let mut target = rng.next_f64() * total;
    for (i, c) in costs.enumerate() {
        target -= weight(c);
        if target < 0.0 {
            return i;
        }
    }
    n - 1
}
