//! The end-of-run check that the daemon's index equals the reference model: [`settle`]
//! waits for the ingest to go quiet, [`check`] compares every chain.
//!
//! - [`settle`]: with load and churn stopped and every publisher up, polls `/metrics`
//!   until the ingest's progress counters (events and block events applied, Deltas
//!   frames, dumps, resumes, gaps) have not moved for [`QUIET`] (several publisher
//!   heartbeat intervals, so a lost last batch would have been found and re-fetched) and
//!   no handshake is in flight; at most `limit`.
//! - [`check`]: for every conversation turn and every remembered distinct chain,
//!   `POST /v1/overlaps` with `block_hashes`, keeps the device tier's entries for the
//!   exact-mode workers (the approximate-mode workers' entries are the router's own route
//!   records, not events, and have no reference), and compares them with
//!   [`Fleet::find_matches`] (the engines' references), on [`PARALLEL`] connections.
//!   If anything differs the check is repeated (after settling again) until it passes,
//!   `limit` runs out, or [`STUCK_ROUNDS`] more rounds find the same number of
//!   mismatches, since a batch may still have been on its way; the report says how many
//!   rounds it took.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvroute_core::{BlockHash, RankKey};

use super::api;
use super::fleet::Fleet;
use crate::http_client::HttpClient;

/// How long the ingest counters must stay still.
pub const QUIET: Duration = Duration::from_millis(1500);
/// Connections the comparison uses.
const PARALLEL: usize = 4;
/// Rounds with the same mismatch count, the ingest settled in between, after which the
/// difference is taken as final.
const STUCK_ROUNDS: u32 = 3;
/// Mismatches described in the report.
const EXAMPLES: usize = 5;

/// The comparison's outcome.
#[derive(Clone, Debug, Default)]
pub struct Exactness {
    pub chains: usize,
    /// Chains some exact-mode rank holds a prefix of (per the reference).
    pub nonzero: usize,
    pub mismatches: usize,
    pub examples: Vec<String>,
    /// Comparison rounds run (1 when the first one passed).
    pub rounds: u32,
    /// Requests that failed (each counts as a mismatch).
    pub errors: usize,
}

const PROGRESS: [&str; 6] = [
    "kvroute_ingest_events_applied_total",
    "kvroute_ingest_block_events_applied_total",
    "kvroute_ingest_deltas_frames_total",
    "kvroute_ingest_dumps_total",
    "kvroute_ingest_resumes_total",
    "kvroute_ingest_gaps_total",
];

/// Waits until the ingest is quiet (see the module docs); returns how long it took.
pub async fn settle(http: SocketAddr, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut client = HttpClient::new(http);
    let mut last: Option<(Vec<u64>, Instant)> = None;
    loop {
        let x = api::metrics(&mut client).await?;
        let progress: Vec<u64> = PROGRESS.iter().map(|name| x.value(name, &[])).collect();
        let in_flight = x.value("kvroute_ingest_handshakes_in_flight", &[]);
        match &last {
            Some((before, since)) if *before == progress => {
                if since.elapsed() >= QUIET && in_flight == 0 {
                    return Ok(started.elapsed());
                }
            }
            _ => last = Some((progress, Instant::now())),
        }
        if started.elapsed() > limit {
            return Err(format!("the ingest did not go quiet within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One comparison round over `chains`.
async fn round(http: SocketAddr, fleet: &Arc<Fleet>, chains: &Arc<Vec<Vec<BlockHash>>>) -> Exactness {
    let mut tasks = tokio::task::JoinSet::new();
    for part in 0..PARALLEL {
        let (fleet, chains) = (fleet.clone(), chains.clone());
        tasks.spawn(async move {
            let exact = &fleet.spec().exact;
            let mut client = HttpClient::new(http);
            let mut out = Exactness::default();
            for (i, chain) in chains.iter().enumerate().skip(part).step_by(PARALLEL) {
                let want = fleet.find_matches(chain);
                out.chains += 1;
                out.nonzero += usize::from(!want.is_empty());
                let got: Vec<(RankKey, u32)> = match api::device_overlaps(&mut client, chain).await {
                    Ok(got) => got.into_iter().filter(|(rank, _)| exact.contains(&rank.worker.0)).collect(),
                    Err(error) => {
                        out.errors += 1;
                        out.mismatches += 1;
                        out.examples.push(format!("chain {i}: {error}"));
                        continue;
                    }
                };
                if got != want {
                    out.mismatches += 1;
                    if out.examples.len() < EXAMPLES {
                        out.examples
                            .push(format!("chain {i} ({} blocks): daemon {got:?}, reference {want:?}", chain.len()));
                    }
                }
            }
            out
        });
    }
    let mut total = Exactness { rounds: 1, ..Exactness::default() };
    while let Some(part) = tasks.join_next().await {
        let part = part.unwrap_or_else(|e| Exactness {
            mismatches: 1,
            errors: 1,
            examples: vec![format!("comparison task failed: {e}")],
            ..Exactness::default()
        });
        total.chains += part.chains;
        total.nonzero += part.nonzero;
        total.mismatches += part.mismatches;
        total.errors += part.errors;
        total.examples.extend(part.examples);
    }
    total.examples.truncate(EXAMPLES);
    total
}

/// Compares until equal or `limit` (see the module docs).
pub async fn check(http: SocketAddr, fleet: &Arc<Fleet>, chains: Vec<Vec<BlockHash>>, limit: Duration) -> Exactness {
    let started = Instant::now();
    let chains = Arc::new(chains);
    let (mut rounds, mut same) = (0, 0);
    let mut previous = None;
    loop {
        rounds += 1;
        let mut result = round(http, fleet, &chains).await;
        result.rounds = rounds;
        same = if previous == Some(result.mismatches) { same + 1 } else { 0 };
        previous = Some(result.mismatches);
        if result.mismatches == 0 || same >= STUCK_ROUNDS || started.elapsed() > limit {
            return result;
        }
        println!(
            "exactness round {rounds}: {} of {} chains differ; settling and comparing again",
            result.mismatches, result.chains
        );
        let _ = settle(http, limit.saturating_sub(started.elapsed())).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
