//! Worker churn: [`run_churn`] takes one exact-mode worker's publisher through a join /
//! leave / restart cycle every `interval`, round-robin over the workers, until stopped.
//!
//! Actions (worker `i % n` gets action `(i + i / n) % 3`, so every worker sees each):
//! - **restart**: orderly shutdown (goodbye), 0-1 s down, a new publisher: a new
//!   incarnation within the grace, so the daemon must take its dump and replace the ranks;
//! - **crash**: the publisher killed (no goodbye), 0-1 s down, a new one: the same, but the
//!   daemon learns of the old connection only from its close;
//! - **leave**: orderly shutdown, away for longer than the publisher grace, then rejoin.
//!   Checked on the way ([`leave`]): half-way through the grace the daemon still reports
//!   the worker's blocks for chains it held; after the grace
//!   `kvroute_ingest_ranks_removed_after_grace_total` grows by the worker's rank count and
//!   those chains report nothing for the worker. The reference then forgets the ranks too.
//!
//! In every case the engine restarts empty (a restarted engine has a cold cache). What the
//! daemon must hold afterwards is exactly what the new publisher published, which the
//! final exactness check compares.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvroute_core::BlockHash;
use tokio::sync::watch;

use super::api;
use super::fleet::Fleet;
use super::tally::Tally;
use super::workload::Workload;
use crate::http_client::HttpClient;
use crate::rng::Rng;

/// Chains a leaving worker held that the leave check follows.
const FOLLOWED_CHAINS: usize = 16;
/// The counter of ranks the ingest removed after their grace.
const REMOVED: &str = "kvroute_ingest_ranks_removed_after_grace_total";

/// What churn shares with the rest of the soak.
#[derive(Clone)]
pub struct ChurnContext {
    pub http: SocketAddr,
    pub fleet: Arc<Fleet>,
    pub workload: Arc<Workload>,
    pub tally: Arc<Tally>,
    /// The daemon's `--publisher-grace`.
    pub grace: Duration,
    pub seed: u64,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Restart,
    Crash,
    Leave,
}

/// Runs the cycle of the module docs every `interval` until `stop`. An action under way
/// when `stop` comes is completed, so every engine is up when this returns.
pub async fn run_churn(context: ChurnContext, interval: Duration, mut stop: watch::Receiver<bool>) {
    let workers = context.fleet.spec().exact.clone();
    if workers.is_empty() {
        return;
    }
    let mut rng = Rng::new(context.seed, 7);
    let mut client = HttpClient::new(context.http);
    let n = workers.len();
    for i in 0.. {
        if !super::tick_or_stop(interval, &mut stop).await {
            break;
        }
        let worker = workers[i % n];
        let action = [Action::Restart, Action::Crash, Action::Leave][(i + i / n) % 3];
        let result = match action {
            Action::Restart | Action::Crash => {
                restart(&context, &mut rng, worker, matches!(action, Action::Crash)).await
            }
            Action::Leave => leave(&context, &mut client, worker).await,
        };
        if let Err(error) = result {
            context.tally.fail(format!("{action:?} of worker {worker}: {error}"));
            // Whatever happened, the worker must be up again for the rest of the run.
            if context.fleet.engine(worker).is_some_and(|e| !e.is_up()) {
                if let Err(error) = context.fleet.bring_up(worker) {
                    context.tally.fail(error);
                }
            }
        }
    }
}

async fn restart(context: &ChurnContext, rng: &mut Rng, worker: u64, crash: bool) -> Result<(), String> {
    context.fleet.take_down(worker, crash).await;
    tokio::time::sleep(Duration::from_millis(rng.below(1000))).await;
    context.fleet.bring_up(worker)?;
    Tally::bump(if crash { &context.tally.crashes } else { &context.tally.restarts });
    Ok(())
}

/// The leave of the module docs, with its checks.
async fn leave(context: &ChurnContext, client: &mut HttpClient, worker: u64) -> Result<(), String> {
    let ChurnContext { fleet, workload, tally, grace, .. } = context;
    let engine = fleet.engine(worker).ok_or("no engine")?;
    let ranks = engine.ranks().len() as u64;
    let removed_before = api::metrics(client).await?.value(REMOVED, &[]);
    fleet.take_down(worker, false).await;
    Tally::bump(&tally.leaves);
    let left = Instant::now();
    // The engine is down: nothing changes its reference any more.
    let followed: Vec<&[BlockHash]> =
        workload.every_turn().filter(|chain| !engine.find_matches(chain).is_empty()).take(FOLLOWED_CHAINS).collect();

    tokio::time::sleep(*grace / 2).await;
    if !followed.is_empty() && left.elapsed() < *grace * 3 / 4 {
        let mut still_held = false;
        for chain in &followed {
            still_held |= api::device_overlaps(client, chain).await?.iter().any(|(rank, _)| rank.worker.0 == worker);
        }
        if !still_held {
            return Err(format!("half-way through the {grace:?} grace the daemon already forgot the worker's blocks"));
        }
    }

    let limit = *grace + Duration::from_secs(20);
    loop {
        let removed = api::metrics(client).await?.value(REMOVED, &[]);
        if removed >= removed_before + ranks {
            break;
        }
        if left.elapsed() > limit {
            return Err(format!(
                "{REMOVED} went from {removed_before} to {removed} in {limit:?}, not up by the worker's {ranks} ranks"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for chain in &followed {
        let overlaps = api::device_overlaps(client, chain).await?;
        if let Some((rank, blocks)) = overlaps.iter().find(|(rank, _)| rank.worker.0 == worker) {
            return Err(format!("after the grace removal the daemon still reports {blocks} blocks on {rank}"));
        }
    }
    engine.forget();
    Tally::bump(&tally.leaves_verified);
    fleet.bring_up(worker)
}
