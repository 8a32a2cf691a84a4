//! Prefill/decode disaggregation: a prefill rank by overlap and prefill load, a decode
//! rank by decode load, independently (the pools' DP sizes may differ), tied together by
//! a bootstrap room that names the prefill rank (`room % prefill_dp_size == p`).

use super::load::{Charge, RequestId};
use super::registry::{RankSlot, Role};
use super::room::BootstrapRoom;
use super::router::{check_workers, Decision, Prompt, Router, Side};
use super::RouteError;
use crate::ids::{DpRank, RankKey, WorkerId};

/// Options of [`Router::route_disaggregated`].
#[derive(Clone, Copy, Debug, Default)]
pub struct PdOptions<'a> {
    /// Only these prefill workers are candidates.
    pub prefill_workers: Option<&'a [WorkerId]>,
    /// Only these decode workers are candidates.
    pub decode_workers: Option<&'a [WorkerId]>,
    /// Decode runs on the rank with the prefill rank's index (the first seed's mode):
    /// the prefill choice is limited to rank indexes that some decode worker has.
    pub same_rank: bool,
    /// Decide without charging load or recording anything (a room is still allocated so
    /// that the answer is complete; the room space is 2^63).
    pub dry_run: bool,
    /// Expected output tokens, charged to the decode rank until finish.
    pub output_tokens: u32,
    /// These ranks are candidates on neither side (a proxy's ranks that just failed, or
    /// whose worker is down). Unknown ranks here are ignored.
    pub excluded: &'a [RankKey],
}

/// Where the decode side fetches the KV from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Bootstrap {
    pub host: String,
    pub port: Option<u16>,
    pub room: BootstrapRoom,
    /// The prefill server's DP size, the modulus of the room rule.
    pub prefill_dp_size: u32,
}

/// A disaggregated decision.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PdDecision {
    pub prefill: Decision,
    pub decode: Decision,
    pub bootstrap: Bootstrap,
}

/// Fields to set on the request sent to the prefill server (serialises to SGLang's names).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SglangPrefillFields {
    pub routed_dp_rank: u32,
    pub bootstrap_host: String,
    pub bootstrap_port: Option<u16>,
    pub bootstrap_room: u64,
}

/// Fields to set on the request sent to the decode server.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SglangDecodeFields {
    pub routed_dp_rank: u32,
    /// Where the KV is: the prefill rank (SGLang reads this first).
    pub disagg_prefill_dp_rank: u32,
    /// Deprecated name of `routed_dp_rank`, still read by older SGLang.
    pub data_parallel_rank: u32,
    pub bootstrap_host: String,
    pub bootstrap_port: Option<u16>,
    pub bootstrap_room: u64,
}

impl PdDecision {
    /// The id to report prefill-done and finish under (one id for both sides; the same as
    /// `prefill.request` and `decode.request`); `None` for a dry run.
    pub fn request(&self) -> Option<RequestId> {
        self.prefill.request
    }

    pub fn prefill_fields(&self) -> SglangPrefillFields {
        SglangPrefillFields {
            routed_dp_rank: self.prefill.dp_rank.0,
            bootstrap_host: self.bootstrap.host.clone(),
            bootstrap_port: self.bootstrap.port,
            bootstrap_room: self.bootstrap.room.0,
        }
    }

    pub fn decode_fields(&self) -> SglangDecodeFields {
        SglangDecodeFields {
            routed_dp_rank: self.decode.dp_rank.0,
            disagg_prefill_dp_rank: self.prefill.dp_rank.0,
            data_parallel_rank: self.decode.dp_rank.0,
            bootstrap_host: self.bootstrap.host.clone(),
            bootstrap_port: self.bootstrap.port,
            bootstrap_room: self.bootstrap.room.0,
        }
    }
}

impl Router {
    /// Picks a prefill rank and a decode rank for a disaggregated request; see the module
    /// docs. Prefill candidates are workers with [`Role::Prefill`], decode candidates
    /// workers with [`Role::Decode`].
    pub fn route_disaggregated(&self, prompt: Prompt<'_>, options: &PdOptions<'_>) -> Result<PdDecision, RouteError> {
        let fleet = self.fleet.load();
        check_workers(&fleet, options.prefill_workers)?;
        check_workers(&fleet, options.decode_workers)?;
        let allowed = |slot: &RankSlot| !options.excluded.contains(&slot.key);
        let decode_ok =
            |slot: &RankSlot| options.decode_workers.is_none_or(|ws| ws.contains(&slot.key.worker)) && allowed(slot);
        let prefill_ok =
            |slot: &RankSlot| options.prefill_workers.is_none_or(|ws| ws.contains(&slot.key.worker)) && allowed(slot);
        // Same-rank mode: the rank indexes the decode pool has (sorted, for a binary search).
        let decode_ranks: Vec<DpRank> = if options.same_rank {
            let mut ranks: Vec<DpRank> =
                fleet.ranks.iter().filter(|s| s.role == Role::Decode && decode_ok(s)).map(|s| s.key.dp_rank).collect();
            ranks.sort_unstable();
            ranks.dedup();
            ranks
        } else {
            Vec::new()
        };
        let decode_has = |rank: DpRank| decode_ranks.binary_search(&rank).is_ok();
        if options.same_rank {
            let prefill_any = fleet.ranks.iter().any(|s| s.role == Role::Prefill && prefill_ok(s));
            let shared =
                fleet.ranks.iter().any(|s| s.role == Role::Prefill && prefill_ok(s) && decode_has(s.key.dp_rank));
            if prefill_any && !shared {
                return Err(RouteError::NoSharedRanks);
            }
        }
        self.with_prompt(prompt, |scratch, hashes, tokens| {
            let prefill = self.score(&fleet, scratch, hashes, tokens, 0, Side::Prefill, |s| {
                prefill_ok(s) && (!options.same_rank || decode_has(s.key.dp_rank))
            })?;
            let p_slot = &fleet.ranks[prefill.slot];
            let p_rank = p_slot.key.dp_rank;
            let decode = self.score(&fleet, scratch, hashes, tokens, options.output_tokens, Side::Decode, |s| {
                decode_ok(s) && (!options.same_rank || s.key.dp_rank == p_rank)
            })?;
            let d_slot = &fleet.ranks[decode.slot];
            let spec = &p_slot.worker.spec;
            let endpoint = spec.bootstrap.clone().ok_or(RouteError::MissingBootstrap(spec.worker))?;
            let prefill_dp_size = spec.dp_world();
            let room = self.rooms.allocate(p_rank.0, prefill_dp_size)?;
            let request = (!options.dry_run).then(|| {
                let prefill_charge = Charge::prefill(p_slot, prefill.prefill_tokens, true);
                let decode_charge = Charge::decode(d_slot, decode.decode_blocks);
                self.open_request(p_slot, hashes, prefill_charge, decode_charge)
            });
            Ok(PdDecision {
                prefill: Decision {
                    worker: p_slot.key.worker,
                    dp_rank: p_rank,
                    overlap_blocks: prefill.overlap_blocks,
                    best_overlap_blocks: prefill.best_overlap_blocks,
                    shortfall: prefill.shortfall,
                    cost: prefill.cost,
                    request,
                },
                decode: Decision {
                    worker: d_slot.key.worker,
                    dp_rank: d_slot.key.dp_rank,
                    overlap_blocks: 0,
                    best_overlap_blocks: 0,
                    shortfall: None,
                    cost: decode.cost,
                    request,
                },
                bootstrap: Bootstrap { host: endpoint.host, port: endpoint.port, room, prefill_dp_size },
            })
        })
    }
}
