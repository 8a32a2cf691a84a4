//! Picking a rank: the policy seam. Scoring (the index lookups, each candidate's overlap,
//! tier credit and load) happens once, in `Router::score`; a [`Policy`] then picks one
//! candidate from what scoring gathered, so every policy sees the same lookups and the
//! decision's breakdown is always the same cost terms (`cost.rs`), whatever picked it.
//!
//! | policy | picks | source |
//! |---|---|---|
//! | [`Policy::Cost`] | lowest `cost.rs` cost (Dynamo's), softmax at a temperature | REFERENCE.md section 5 |
//! | [`Policy::CacheAware`] | SGLang gateway / vllm-router `cache_aware` (below) | smg docs, `concepts/routing/cache-aware` |
//! | [`Policy::Weighted`] | llm-d's scorer sum: prefix 3, queue 2, KV use 2 | llm-d inference scheduler's default profile |
//! | [`Policy::LargestOverlap`] | most cached blocks, ties to fewest active requests | the demo's former baseline |
//! | [`Policy::LeastLoaded`] | fewest active requests | |
//! | [`Policy::RoundRobin`] / [`Policy::Random`] | in turn / uniformly | |
//! | [`Policy::PredictedTtft`] (default) | smallest predicted time to first token (below) | ours |
//!
//! `CacheAware`, in the order the gateway (smg, `policies/cache_aware.rs`, v1.5 and later)
//! applies it: if the busiest candidate has more than `balance_abs` requests over the
//! idlest *and* more than `balance_rel` times as many, the least loaded wins; otherwise the
//! candidate with the longest cached prefix wins if that prefix covers more than
//! `cache_threshold` of the prompt (ties to the less loaded); otherwise the least loaded.
//! (The older SGLang router took "the smallest tree" in that last case; smg's HTTP and
//! token-tree paths take the least loaded.) Defaults 0.3, 64, 1.5, the gateway's. Loads
//! are the router's own active requests.
//!
//! `Weighted` sums llm-d's three default scorers, each in `[0, 1]`, higher better: prefix
//! match (cached blocks / prompt blocks), queue (min-max normalised active requests,
//! inverted) and KV-cache utilisation (here min-max normalised decode blocks, inverted: the
//! router's own count stands in for the engine's reported utilisation).
//!
//! `PredictedTtft`: a rank's prefill queue is served in order, so this request's first
//! token comes after the rank's queued prefill tokens plus its own uncached ones (overlap
//! credit folded in, lower tiers at their weight). The queued tokens are those the router
//! charged, less what the rank has computed since its last `prefill_done` at its observed
//! rate (tokens per ms over busy time, `prefill_progress.rs`), plus what an engine report
//! says other routers queued. The sum stays in tokens, as if every rank prefilled at one
//! speed, rather than divided by each rank's rate: a router replica that sees only its
//! share of a rank's `prefill_done`s measures a rate that depends on the other replicas'
//! traffic. Three terms make the prediction look past this request: each uncached token
//! also delays every request queued behind it on that rank and is work a cache hit would
//! have saved for good, so it counts `recompute` times (default 1.5); the blocks it stores
//! evict other prefixes from a full cache, so it counts up to `pressure` times more
//! (default 5), scaled by how full the rank's cache is, held blocks (from its events) over
//! `cache_blocks` (new prefixes go to the emptier caches: SGLang's "smallest tree" as a
//! price instead of a rule; off while the cache size is unknown); and the rank's running
//! requests share its batches (chunked prefill), each of their KV tokens counting `decode`
//! tokens of queue (default 0.25), up to `cache_blocks` of them (an engine admits no more
//! KV than its cache holds, so a rank running a few agents with 100 Ki-token contexts does
//! not look busier than recomputing one of them elsewhere). The smallest sum wins, ties to
//! the fewest decode blocks. The defaults were the best of a grid over three fleet sizes
//! and four tie-break seeds of the shipped trace (README, "Routing policies"). At a
//! positive temperature the pick is sampled over the normalised sums instead, as `Cost`
//! samples its costs: router replicas that split a burst of arrivals and each see only
//! their own share until the next load report would otherwise all put their shares on the
//! same emptiest ranks.
//!
//! Every policy breaks remaining ties uniformly at random with the router's generator.

use super::cost::{choose, CostRange, Rng};
use super::load::LoadSnapshot;

/// SGLang's `cache_aware` thresholds; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheAwareThresholds {
    /// Fraction of the prompt the best prefix must cover to win. Default 0.3.
    pub cache_threshold: f64,
    /// Requests the busiest may have over the idlest before load decides. Default 64.
    pub balance_abs: u64,
    /// Ratio busiest / idlest past which load decides (with `balance_abs`). Default 1.5.
    pub balance_rel: f64,
}

impl CacheAwareThresholds {
    /// The defaults (a constant, for [`Policy::ALL`]).
    pub const DEFAULT: CacheAwareThresholds =
        CacheAwareThresholds { cache_threshold: 0.3, balance_abs: 64, balance_rel: 1.5 };
}

impl Default for CacheAwareThresholds {
    fn default() -> Self {
        CacheAwareThresholds::DEFAULT
    }
}

/// llm-d's scorer weights; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScorerWeights {
    /// Default 3.
    pub prefix: f64,
    /// Default 2.
    pub queue: f64,
    /// Default 2.
    pub kv_cache: f64,
}

impl ScorerWeights {
    /// The defaults (a constant, for [`Policy::ALL`]).
    pub const DEFAULT: ScorerWeights = ScorerWeights { prefix: 3.0, queue: 2.0, kv_cache: 2.0 };
}

impl Default for ScorerWeights {
    fn default() -> Self {
        ScorerWeights::DEFAULT
    }
}

/// `PredictedTtft`'s weights; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TtftWeights {
    /// Weight of this request's uncached tokens against queued ones. Default 1.5.
    pub recompute: f64,
    /// Tokens of queue each KV token of a running request counts as. Default 0.25.
    pub decode: f64,
    /// Extra weight of an uncached token on a full cache, scaled by how full a rank's
    /// cache is (held blocks over `cache_blocks`; an empty cache adds nothing). Default 5.
    pub pressure: f64,
    /// KV blocks one rank's device cache holds (vLLM's `num_gpu_blocks`). Unknown (the
    /// default): the pressure term is off, since no eviction can be predicted, and the
    /// decode term is not capped.
    pub cache_blocks: Option<u64>,
}

impl TtftWeights {
    /// The defaults (a constant, for [`Policy::ALL`]).
    pub const DEFAULT: TtftWeights = TtftWeights { recompute: 1.5, decode: 0.25, pressure: 5.0, cache_blocks: None };
}

impl Default for TtftWeights {
    fn default() -> Self {
        TtftWeights::DEFAULT
    }
}

/// How a decision picks among its scored candidates; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "name", deny_unknown_fields)]
pub enum Policy {
    Cost,
    CacheAware(CacheAwareThresholds),
    Weighted(ScorerWeights),
    LargestOverlap,
    LeastLoaded,
    RoundRobin,
    Random,
    PredictedTtft(TtftWeights),
}

/// The default policy: [`Policy::PredictedTtft`] at its default weights (it beat every
/// other on the shipped trace; README, "Routing policies").
impl Default for Policy {
    fn default() -> Self {
        Policy::PredictedTtft(TtftWeights::default())
    }
}

impl Policy {
    /// Every policy with its defaults, in the order reports list them.
    pub const ALL: [Policy; 8] = [
        Policy::PredictedTtft(TtftWeights::DEFAULT),
        Policy::Cost,
        Policy::CacheAware(CacheAwareThresholds::DEFAULT),
        Policy::Weighted(ScorerWeights::DEFAULT),
        Policy::LargestOverlap,
        Policy::LeastLoaded,
        Policy::RoundRobin,
        Policy::Random,
    ];

    /// A short stable name (configuration, metrics, reports).
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Cost => "cost",
            Policy::CacheAware(_) => "cache_aware",
            Policy::Weighted(_) => "weighted",
            Policy::LargestOverlap => "largest_overlap",
            Policy::LeastLoaded => "least_loaded",
            Policy::RoundRobin => "round_robin",
            Policy::Random => "random",
            Policy::PredictedTtft(_) => "predicted_ttft",
        }
    }

    /// The policy a name names, with its defaults.
    pub fn from_name(name: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.name() == name)
    }

    /// This policy told that one engine rank's KV cache holds `tokens` tokens, in blocks
    /// of `block_size` (rounded down): `PredictedTtft` takes it as `cache_blocks`; the
    /// others use no cache size and come back unchanged. Less than one block is an error.
    pub fn with_engine_cache_tokens(self, tokens: u64, block_size: u32) -> Result<Policy, String> {
        let blocks = tokens / u64::from(block_size.max(1));
        if blocks == 0 {
            return Err(format!("must hold at least one block of {block_size} tokens, got {tokens}"));
        }
        Ok(match self {
            Policy::PredictedTtft(weights) => {
                Policy::PredictedTtft(TtftWeights { cache_blocks: Some(blocks), ..weights })
            }
            other => other,
        })
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), String> {
        let finite = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("policy {}: {name} must be a finite number >= 0, got {v}", self.name()))
            }
        };
        match self {
            Policy::CacheAware(t) => {
                finite("cache_threshold", t.cache_threshold)?;
                finite("balance_rel", t.balance_rel)
            }
            Policy::Weighted(w) => {
                finite("prefix", w.prefix)?;
                finite("queue", w.queue)?;
                finite("kv_cache", w.kv_cache)
            }
            Policy::PredictedTtft(w) => {
                finite("recompute", w.recompute)?;
                finite("decode", w.decode)?;
                finite("pressure", w.pressure)?;
                if w.cache_blocks == Some(0) {
                    return Err(format!("policy {}: cache_blocks must be at least 1", self.name()));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// What scoring gathered about one candidate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    /// Position in the fleet snapshot's `ranks`.
    pub(crate) slot: usize,
    pub(crate) load: LoadSnapshot,
    /// Leading prompt blocks held on device.
    pub(crate) device_overlap: u32,
    /// Overlap credit in blocks, lower tiers at their weight.
    pub(crate) credit: f64,
    /// `Policy::PredictedTtft` with a known `cache_blocks` only (zero otherwise): the
    /// blocks the rank's device cache holds, as its events said.
    pub(crate) held_blocks: u64,
    /// `Policy::PredictedTtft` only (zero for the others): the prefill tokens still to
    /// compute on the rank (this router's own counted down by the rank's progress at its
    /// observed rate, plus any an engine reported beyond them).
    pub(crate) prefill_remaining: f64,
}

/// The request being placed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestShape {
    pub(crate) tokens: f64,
    pub(crate) request_blocks: u32,
    pub(crate) block_size: f64,
}

/// What a pick may use besides the candidates.
pub(crate) struct PickContext<'a> {
    pub(crate) rng: &'a Rng,
    /// Decisions so far (round-robin's turn).
    pub(crate) turn: u64,
    pub(crate) temperature: f64,
}

impl Policy {
    /// The pick among `candidates` (non-empty). `costs[i]` is candidate `i`'s `cost.rs`
    /// cost and `range` their extent.
    pub(crate) fn pick(
        &self,
        candidates: &[Candidate],
        costs: &[f64],
        range: CostRange,
        request: RequestShape,
        cx: &PickContext<'_>,
    ) -> Picked {
        debug_assert!(!candidates.is_empty());
        let lowest = |key: &dyn Fn(&Candidate) -> (f64, f64)| lowest_by(candidates, key, cx.rng);
        let index = match *self {
            Policy::Cost => return Picked::sample(costs.len(), |i| costs[i], range, cx.temperature, cx.rng),
            Policy::LargestOverlap => lowest(&|c| (-f64::from(c.device_overlap), c.load.requests as f64)),
            Policy::LeastLoaded => lowest(&|c| (c.load.requests as f64, 0.0)),
            Policy::Random => lowest(&|_| (0.0, 0.0)),
            Policy::RoundRobin => (cx.turn % candidates.len() as u64) as usize,
            Policy::PredictedTtft(w) => {
                // Unknown cache size: every cache counts as empty.
                let per_held_block = w.cache_blocks.map_or(0.0, |n| 1.0 / n as f64);
                // An engine holds no more KV than its cache (more running requests wait for
                // room), so no rank's running requests count past `cache_blocks`.
                let decode_cap = w.cache_blocks.unwrap_or(u64::MAX);
                let predicted = |c: &Candidate| {
                    let uncached = (request.tokens - c.credit * request.block_size).max(0.0);
                    let decode_tokens = c.load.decode_blocks.min(decode_cap) as f64 * request.block_size;
                    let fullness = (c.held_blocks as f64 * per_held_block).min(1.0);
                    c.prefill_remaining + (w.recompute + w.pressure * fullness) * uncached + w.decode * decode_tokens
                };
                if cx.temperature > 0.0 {
                    // Sampling (replicas): the sums are computed again as they are read
                    // (a few multiplies each), so no buffer is needed.
                    let mut extent = CostRange::default();
                    candidates.iter().for_each(|c| extent.include(predicted(c)));
                    let sum_at = |i: usize| predicted(&candidates[i]);
                    return Picked::sample(candidates.len(), sum_at, extent, cx.temperature, cx.rng);
                }
                lowest(&|c| (predicted(c), c.load.decode_blocks as f64))
            }
            Policy::CacheAware(t) => {
                let (min, max) = candidates
                    .iter()
                    .fold((u64::MAX, 0), |(lo, hi), c| (lo.min(c.load.requests), hi.max(c.load.requests)));
                let imbalanced = max - min > t.balance_abs && max as f64 > t.balance_rel * min as f64;
                let best = candidates.iter().map(|c| c.device_overlap).max().unwrap_or(0);
                let covers = best > 0 && f64::from(best) * request.block_size > t.cache_threshold * request.tokens;
                if covers && !imbalanced {
                    lowest(&|c| (-f64::from(c.device_overlap), c.load.requests as f64))
                } else {
                    // Imbalanced, or no prefix long enough: the least loaded.
                    lowest(&|c| (c.load.requests as f64, 0.0))
                }
            }
            Policy::Weighted(w) => {
                let (rmin, rmax, dmin, dmax) = candidates.iter().fold((u64::MAX, 0, u64::MAX, 0), |acc, c| {
                    (
                        acc.0.min(c.load.requests),
                        acc.1.max(c.load.requests),
                        acc.2.min(c.load.decode_blocks),
                        acc.3.max(c.load.decode_blocks),
                    )
                });
                let inverted =
                    |v: u64, lo: u64, hi: u64| if hi > lo { (hi - v) as f64 / (hi - lo) as f64 } else { 1.0 };
                let blocks = f64::from(request.request_blocks.max(1));
                // Highest score wins: the lowest negated score.
                lowest(&|c| {
                    let score = w.prefix * f64::from(c.device_overlap) / blocks
                        + w.queue * inverted(c.load.requests, rmin, rmax)
                        + w.kv_cache * inverted(c.load.decode_blocks, dmin, dmax);
                    (-score, 0.0)
                })
            }
        };
        Picked { index, above_lowest: false }
    }
}

/// A policy's pick.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Picked {
    /// Index into the candidates.
    pub(crate) index: usize,
    /// Sampling at a positive temperature took a candidate dearer than the cheapest.
    pub(crate) above_lowest: bool,
}

impl Picked {
    /// The cheapest of `n` costs `cost_at(i)` (extent `range`), or one sampled at a positive
    /// `temperature` ([`choose`]); the one road for every pick by a cost.
    pub(crate) fn sample(
        n: usize,
        cost_at: impl Fn(usize) -> f64,
        range: CostRange,
        temperature: f64,
        rng: &Rng,
    ) -> Picked {
        let index = choose(n, &cost_at, range, temperature, rng);
        Picked { index, above_lowest: temperature > 0.0 && cost_at(index) > range.min }
    }
}

/// The candidate with the lowest `(primary, secondary)` key, exact ties broken uniformly
/// (reservoir sampling: the `n`-th tie replaces the pick with probability `1/n`).
fn lowest_by(candidates: &[Candidate], key: &dyn Fn(&Candidate) -> (f64, f64), rng: &Rng) -> usize {
    let mut best = 0;
    let mut best_key = key(&candidates[0]);
    let mut ties = 1usize;
    for (i, c) in candidates.iter().enumerate().skip(1) {
        let k = key(c);
        match k.partial_cmp(&best_key) {
            Some(std::cmp::Ordering::Less) => {
                best = i;
                best_key = k;
                ties = 1;
            }
            Some(std::cmp::Ordering::Equal) => {
                ties += 1;
                if rng.below(ties) == 0 {
                    best = i;
                }
            }
            _ => {}
        }
    }
    best
}
