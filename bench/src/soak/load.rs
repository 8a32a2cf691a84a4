//! The routing load: [`run_client`] is one client task calling the daemon's API the way a
//! serving frontend would, at a fixed pace, until told to stop.
//!
//! Each step:
//! 1. picks a prompt ([`super::workload`]): 60% a conversation turn (shared prefixes, which
//!    exact-mode workers should have cached), 20% a distinct prompt, 20% a distinct prompt
//!    restricted (`workers`) to the approximate-mode workers, so that those are always
//!    charged and their approximate records exercised;
//! 2. `POST /v1/route` with `tokens` and a random `output_tokens`;
//! 3. if the decision names an exact-mode worker, its engine serves the prompt on the
//!    chosen rank ([`super::engine::Engine::serve`]: a prefill whose KV events go to the
//!    daemon and to the reference), unless the engine is down (restarting or away);
//! 4. keeps the request open for a random 0-2 s (so `kvroute_active_requests` is not
//!    always 0), half the time reporting `prefill_done` first, then `finish`es it.
//!
//! On stop every open request is finished, so the daemon must end with no active
//! request. Every reply that is not the documented one is a failure ([`Tally::fail`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::api;
use super::engine::Served;
use super::fleet::Fleet;
use super::tally::Tally;
use super::workload::Workload;
use crate::http_client::HttpClient;
use crate::rng::Rng;

/// Longest a request stays open before its `finish`.
const MAX_HOLD: Duration = Duration::from_secs(2);

/// What one client shares with the rest of the soak.
#[derive(Clone)]
pub struct ClientContext {
    pub http: SocketAddr,
    pub workload: Arc<Workload>,
    pub fleet: Arc<Fleet>,
    pub tally: Arc<Tally>,
    pub seed: u64,
}

/// A routed request not finished yet.
struct Open {
    id: u64,
    due: Instant,
    prefill_done: bool,
}

/// Client `index`: routes `rate` requests per second until `stop` turns true, then
/// finishes what it holds.
pub async fn run_client(context: ClientContext, index: u64, rate: f64, mut stop: watch::Receiver<bool>) {
    let mut client = HttpClient::new(context.http);
    let mut rng = Rng::new(context.seed, 100 + index);
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut open: VecDeque<Open> = VecDeque::new();
    let mut next = Instant::now();
    while !*stop.borrow() {
        next += interval;
        let now = Instant::now();
        if next + Duration::from_secs(1) < now {
            next = now; // fell behind (a slow reply): do not burst to catch up
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = stop.changed() => break,
        }
        finish_due(&context, &mut client, &mut open, Instant::now()).await;
        if let Some(id) = step(&context, &mut client, &mut rng).await {
            let due = Instant::now() + Duration::from_millis(rng.below(MAX_HOLD.as_millis() as u64));
            open.push_back(Open { id, due, prefill_done: rng.percent(50) });
        }
    }
    let far = Instant::now() + MAX_HOLD * 10;
    finish_due(&context, &mut client, &mut open, far).await;
}

/// Finishes every open request due by `now` (requests are kept in routing order, and
/// holds are short, so the ones due are found by a scan).
async fn finish_due(context: &ClientContext, client: &mut HttpClient, open: &mut VecDeque<Open>, now: Instant) {
    let tally = &context.tally;
    let mut kept = VecDeque::with_capacity(open.len());
    while let Some(request) = open.pop_front() {
        if request.due > now {
            kept.push_back(request);
            continue;
        }
        if request.prefill_done {
            match api::prefill_done(client, request.id).await {
                Ok(()) => Tally::bump(&tally.prefill_done_ok),
                Err(error) => tally.fail(format!("prefill_done of request {}: {error}", request.id)),
            }
        }
        match api::finish(client, request.id).await {
            Ok(()) => Tally::bump(&tally.finishes_ok),
            Err(error) => tally.fail(format!("finish of request {}: {error}", request.id)),
        }
    }
    *open = kept;
}

/// Steps 1-3 of the module docs; the request id to finish later.
async fn step(context: &ClientContext, client: &mut HttpClient, rng: &mut Rng) -> Option<u64> {
    let ClientContext { workload, fleet, tally, .. } = context;
    let approx = &fleet.spec().approx;
    let roll = rng.below(100);
    let (prompt, only) = match roll {
        0..60 => (workload.conversation_turn(rng), None),
        60..80 => (workload.distinct(rng), None),
        _ if approx.is_empty() => (workload.distinct(rng), None),
        _ => (workload.distinct(rng), Some(approx.as_slice())),
    };
    let output_tokens = rng.between(16, 512) as u32;
    let decision = match api::route(client, &prompt.tokens, output_tokens, only).await {
        Ok(decision) => decision,
        Err(error) => {
            tally.fail(format!("route: {error}"));
            return None;
        }
    };
    Tally::bump(&tally.routes_ok);
    let hit = decision.overlap_blocks > 0;
    match fleet.engine(decision.worker_id) {
        Some(engine) => {
            Tally::bump(&tally.routed_exact);
            Tally::add(&tally.routed_exact_hits, u64::from(hit));
            if only.is_some() {
                tally.fail(format!("a route restricted to workers {approx:?} went to {}", decision.worker_id));
            }
            match engine.serve(decision.dp_rank, &prompt.chain) {
                Served::Down => Tally::bump(&tally.served_down),
                Served::Published { block_events } => {
                    Tally::add(&tally.block_events_published, block_events);
                    if prompt.distinct {
                        workload.remember_distinct(&prompt.chain);
                    }
                }
            }
        }
        None => {
            Tally::bump(&tally.routed_approx);
            Tally::add(&tally.routed_approx_hits, u64::from(hit));
            Tally::add(&tally.routes_approx_only, u64::from(only.is_some()));
            if !approx.contains(&decision.worker_id) {
                tally.fail(format!("routed to worker {}, which the soak never registered", decision.worker_id));
            }
        }
    }
    match decision.request_id {
        Some(id) => Some(id),
        None => {
            tally.fail("a route that is not a dry run came back without a request_id");
            None
        }
    }
}
