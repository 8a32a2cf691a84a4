//! Decision quality: how many cached blocks a decision took against the most any
//! candidate held, and why it took fewer.
//!
//! Scoring already has every candidate's device overlap, so the best is a running max in
//! the candidate loop; only a decision that took less than the best pays for a second
//! look at the candidates, to name the reason ([`Shortfall`]). The reasons, checked in
//! this order:
//!
//! 1. `Policy`: the policy never looks at overlap (least-loaded, round-robin, random).
//! 2. `Tier`: the chosen rank's overlap credit (host and disk blocks at their weights) is
//!    at least that of every candidate with the best device overlap: the lower tiers made
//!    up the difference.
//! 3. `Temperature`: the cost or predicted-TTFT policy sampled at a positive temperature
//!    and took a rank dearer than the cheapest.
//! 4. `Load`: everything else; the policy traded cached blocks for a less loaded rank (or,
//!    for the cache-aware and predicted-TTFT policies, for an emptier cache).
//!
//! `kvroute serve` sums these per decision in `/metrics`, so an operator sees the hit rate
//! left on the table and why.

use super::policy::{Candidate, Policy};

/// Why a decision took fewer cached blocks than the best candidate held; see the module
/// docs for the order they are checked in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shortfall {
    /// A rank with more cached blocks was busier (or its cache fuller).
    Load,
    /// The chosen rank's host or disk blocks credited it as much as the best device overlap.
    Tier,
    /// Sampling at a positive temperature picked a rank dearer than the cheapest.
    Temperature,
    /// The policy ignores overlap.
    Policy,
}

impl Shortfall {
    /// Every reason, in the order the module docs check them.
    pub const ALL: [Shortfall; 4] = [Shortfall::Policy, Shortfall::Tier, Shortfall::Temperature, Shortfall::Load];

    /// A short stable name (metrics labels, JSON).
    pub fn name(self) -> &'static str {
        match self {
            Shortfall::Load => "load",
            Shortfall::Tier => "tier",
            Shortfall::Temperature => "temperature",
            Shortfall::Policy => "policy",
        }
    }
}

/// What a scored decision's pick was, for [`classify`].
pub(crate) struct Pick<'a> {
    pub(crate) candidates: &'a [Candidate],
    /// Index into `candidates`.
    pub(crate) picked: usize,
    /// Most device blocks any candidate held.
    pub(crate) best_overlap: u32,
    /// Whether the pick was the cost's (lowest, or sampled at `temperature`).
    pub(crate) by_cost: bool,
    pub(crate) policy: Policy,
    /// Sampling at a positive temperature took a candidate dearer than the cheapest (by
    /// the cost, or by the policy's own measure).
    pub(crate) sampled_above_lowest: bool,
}

/// Why the pick took fewer blocks than the best; `None` if it took the best.
pub(crate) fn classify(pick: &Pick<'_>) -> Option<Shortfall> {
    let chosen = &pick.candidates[pick.picked];
    if chosen.device_overlap >= pick.best_overlap {
        return None;
    }
    if !pick.by_cost && matches!(pick.policy, Policy::LeastLoaded | Policy::RoundRobin | Policy::Random) {
        return Some(Shortfall::Policy);
    }
    let best_credit = pick
        .candidates
        .iter()
        .filter(|c| c.device_overlap == pick.best_overlap)
        .map(|c| c.credit)
        .fold(f64::NEG_INFINITY, f64::max);
    if chosen.credit >= best_credit {
        return Some(Shortfall::Tier);
    }
    if pick.sampled_above_lowest {
        return Some(Shortfall::Temperature);
    }
    Some(Shortfall::Load)
}
