//! What every simulated request goes through, whichever API it came by: admission on the
//! model (rank, cached tokens, timing) with its KV events queued in the same critical
//! section, then output tokens paced on the model's clock, and the in-flight count given
//! back however the response ends.
//!
//! [`SimState::admit`] takes the model lock, refuses the request (503) if the rank's event
//! queue is full, admits it, encodes its events as one `EventBatch` of that rank in the
//! engine's format and queues it; the returned [`Served`] holds an [`InFlight`] guard
//! whose drop releases the rank (counted as cancelled unless the response was finished:
//! hyper drops the response future or body when the client goes away).
//! [`Served::token_stream`] yields output tokens at their due times;
//! [`Served::wait_until_done`] sleeps until the last one is due.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::Stream;
use kvroute_core::engine_events::encode::encode_batch;
use kvroute_core::engine_events::EventBatch;
use kvroute_core::sim::{Admission, EngineModel, RankStats};

use super::bootstrap::{self, BootstrapRooms, DisaggFields};
use super::config::{DisaggregationMode, EngineSimConfig};
use super::events::RankEvents;
use crate::engine_zmq::EngineEndpoint;
use crate::http_client::HttpClient;
use crate::openai_error::OpenAiError;

/// Request counters (Relaxed by design: independent counts).
#[derive(Debug, Default)]
pub struct SimCounters {
    pub admitted: AtomicU64,
    pub completed: AtomicU64,
    /// Ended before their last token (the client went away).
    pub cancelled: AtomicU64,
    /// Refused before admission (bad request, unknown model, full event queue).
    pub refused: AtomicU64,
    /// Batches queued for publishing.
    pub batches_queued: AtomicU64,
    /// Decode servers: KV transfers done, and refused (wrong prefill rank, no room, ...).
    pub kv_transfers: AtomicU64,
    pub kv_transfer_failures: AtomicU64,
    /// `POST /tokenize` requests answered.
    pub tokenize_requests: AtomicU64,
}

/// The model and the rank streams its admissions feed, under one lock.
struct Engine {
    model: EngineModel,
    /// Empty when the simulator publishes no events (or has shut down).
    ranks: Vec<RankEvents>,
}

/// Everything the handlers share.
pub struct SimState {
    pub config: EngineSimConfig,
    engine: Mutex<Engine>,
    /// Per rank: (subscriber endpoint, replay endpoint), kept outside the lock.
    endpoints: Vec<(EngineEndpoint, Option<EngineEndpoint>)>,
    /// The model's clock: `now` is the time since this instant.
    clock: Instant,
    next_request: AtomicU64,
    pub counters: SimCounters,
    /// Prefill servers: the rooms of the requests prefilled here.
    pub rooms: BootstrapRooms,
    /// Decode servers: asks prefill servers for the KV.
    client: HttpClient,
    /// Transit times of stamped requests (nanoseconds), until taken; at most
    /// [`MAX_TRANSITS`] are kept.
    transits: Mutex<Vec<u64>>,
}

/// Transit times kept before new ones are dropped (a load generator takes them as it goes).
pub const MAX_TRANSITS: usize = 1 << 22;

/// A request as every API hands it to [`SimState::serve`].
pub struct PromptRequest<'a> {
    pub tokens: &'a [u32],
    /// The DP rank the request names, if any.
    pub rank: Option<u32>,
    pub lora_name: Option<&'a str>,
    pub max_tokens: u32,
    pub disagg: &'a DisaggFields,
}

/// One rank's event endpoints.
pub struct RankEndpoints<'a> {
    pub subscriber_endpoint: &'a EngineEndpoint,
    pub replay_endpoint: &'a Option<EngineEndpoint>,
}

impl SimState {
    pub fn new(config: EngineSimConfig, model: EngineModel, ranks: Vec<RankEvents>) -> SimState {
        let endpoints =
            ranks.iter().map(|rank| (rank.subscriber_endpoint.clone(), rank.replay_endpoint.clone())).collect();
        SimState {
            config,
            engine: Mutex::new(Engine { model, ranks }),
            endpoints,
            clock: Instant::now(),
            next_request: AtomicU64::new(1),
            counters: SimCounters::default(),
            rooms: BootstrapRooms::default(),
            client: HttpClient::new(Duration::from_secs(2)),
            transits: Mutex::new(Vec::new()),
        }
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        // The lock guards plain data that no panic leaves half-updated.
        self.engine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn rank_events(&self, rank: u32) -> Option<RankEndpoints<'_>> {
        self.endpoints
            .get(rank as usize)
            .map(|(subscriber_endpoint, replay_endpoint)| RankEndpoints { subscriber_endpoint, replay_endpoint })
    }

    pub fn stats(&self) -> Vec<RankStats> {
        self.engine().model.stats()
    }

    pub fn record_transit(&self, nanos: u128) {
        let mut transits = self.transits.lock().unwrap_or_else(PoisonError::into_inner);
        if transits.len() < MAX_TRANSITS {
            transits.push(u64::try_from(nanos).unwrap_or(u64::MAX));
        }
    }

    pub fn take_transits(&self) -> Vec<u64> {
        std::mem::take(&mut *self.transits.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn held_prefix_blocks(&self, rank: u32, tokens: &[u32], lora_name: Option<&str>) -> Option<usize> {
        self.engine().model.held_prefix_blocks(rank, tokens, lora_name)
    }

    /// Counts a refusal and passes it on.
    pub fn refuse(&self, error: OpenAiError) -> OpenAiError {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        error
    }

    /// Serves a request as the server's disaggregation mode says: aggregated, admitted
    /// as it is; prefill, admitted, its room recorded, answered after one token; decode,
    /// its KV fetched from the prefill server first. Returns the admission and the tokens
    /// to produce.
    pub async fn serve(self: &Arc<Self>, request: PromptRequest<'_>) -> Result<(Served, u32), OpenAiError> {
        request.disagg.check().map_err(|error| self.refuse(error))?;
        match self.config.disaggregation {
            DisaggregationMode::Null => {
                Ok((self.admit(request.tokens, request.rank, request.lora_name)?, request.max_tokens))
            }
            DisaggregationMode::Prefill => {
                // A request that names no rank goes where its room says, as SGLang's
                // prefill dispatches by `bootstrap_room % dp_size` (`follow_bootstrap_room`),
                // so the decode side finds its KV by the room rule.
                let dp_size = u64::from(self.config.model.dp_size.max(1));
                let by_room = request
                    .disagg
                    .bootstrap_room
                    .filter(|_| self.config.follow_bootstrap_room)
                    .map(|room| (room % dp_size) as u32);
                let served = self.admit(request.tokens, request.rank.or(by_room), request.lora_name)?;
                if let Some(room) = request.disagg.bootstrap_room {
                    self.rooms.record(room, served.rank(), served.admission.first_token_at, self.clock.elapsed());
                }
                Ok((served, 1))
            }
            DisaggregationMode::Decode => {
                if let Err(error) = bootstrap::fetch(&self.client, request.disagg).await {
                    self.counters.kv_transfer_failures.fetch_add(1, Ordering::Relaxed);
                    return Err(self.refuse(error));
                }
                self.counters.kv_transfers.fetch_add(1, Ordering::Relaxed);
                let admitted =
                    self.engine().model.admit_transferred(self.clock.elapsed(), request.rank, request.tokens.len());
                let admission = admitted.map_err(|error| self.refuse(error.into()))?;
                Ok((self.served(admission), request.max_tokens))
            }
        }
    }

    /// Admits a request (see the module doc).
    pub fn admit(
        self: &Arc<Self>,
        tokens: &[u32],
        rank: Option<u32>,
        lora_name: Option<&str>,
    ) -> Result<Served, OpenAiError> {
        let mut engine = self.engine();
        let Engine { model, ranks } = &mut *engine;
        let target = rank.unwrap_or_else(|| model.least_loaded_rank());
        if ranks.get(target as usize).is_some_and(|events| !events.has_room()) {
            drop(engine);
            return Err(self
                .refuse(OpenAiError::unavailable(format!("rank {target}'s KV event stream is backed up; try again"))));
        }
        let now = self.clock.elapsed();
        let mut admission = match model.admit(now, Some(target), tokens, lora_name) {
            Ok(admission) => admission,
            Err(error) => {
                drop(engine);
                return Err(self.refuse(error.into()));
            }
        };
        if let (Some(events), false) = (ranks.get(target as usize), admission.events.is_empty()) {
            let batch = EventBatch {
                ts: unix_seconds(),
                events: std::mem::take(&mut admission.events),
                dp_rank: Some(target),
                unknown_events: 0,
            };
            events.queue(Bytes::from(encode_batch(&batch, self.config.event_format)));
            self.counters.batches_queued.fetch_add(1, Ordering::Relaxed);
        }
        drop(engine);
        Ok(self.served(admission))
    }

    fn served(self: &Arc<Self>, admission: Admission) -> Served {
        self.counters.admitted.fetch_add(1, Ordering::Relaxed);
        let number = self.next_request.fetch_add(1, Ordering::Relaxed);
        let rank = admission.rank;
        Served {
            number,
            created: unix_seconds() as u64,
            admission,
            in_flight: InFlight { state: Arc::clone(self), rank, finished: false },
        }
    }

    /// Closes every rank's stream after publishing what is queued.
    pub async fn shutdown(&self) {
        let ranks = std::mem::take(&mut self.engine().ranks);
        for rank in ranks {
            rank.shutdown().await;
        }
    }

    /// The instant `due` on the model's clock falls at.
    pub fn due_instant(&self, due: Duration) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.clock + due)
    }
}

fn unix_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64())
}

/// A request in flight on a rank: released when dropped.
pub struct InFlight {
    state: Arc<SimState>,
    rank: u32,
    finished: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.engine().model.release(self.rank);
        let counter = if self.finished { &self.state.counters.completed } else { &self.state.counters.cancelled };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a handler streams: each output token, then the end.
pub enum Output {
    Token(u32),
    Done,
}

/// An admitted request.
pub struct Served {
    /// Per simulator, from 1 (the response ids' suffix).
    pub number: u64,
    /// Unix seconds at admission (the responses' `created`).
    pub created: u64,
    pub admission: Admission,
    in_flight: InFlight,
}

impl Served {
    pub fn rank(&self) -> u32 {
        self.admission.rank
    }

    /// Sleeps until all `max_tokens` output tokens are due, then marks the request done.
    pub async fn wait_until_done(&mut self, max_tokens: u32) {
        let last = self.admission.token_due(max_tokens.saturating_sub(1));
        tokio::time::sleep_until(self.in_flight.state.due_instant(last)).await;
        self.in_flight.finished = true;
    }

    /// `render(Output::Token(k))` for each of `max_tokens` tokens at its due time, then
    /// `render(Output::Done)`; the request is done once `Done` is rendered. Dropping the
    /// stream early (the client went away) releases the request as cancelled.
    pub fn token_stream<F>(self, max_tokens: u32, render: F) -> impl Stream<Item = Result<Bytes, Infallible>> + Send
    where
        F: FnMut(Output) -> Bytes + Send + 'static,
    {
        futures::stream::unfold((self, render, 0u32), move |(mut served, mut render, index)| async move {
            if index > max_tokens {
                return None;
            }
            if index == max_tokens {
                served.in_flight.finished = true;
                let chunk = render(Output::Done);
                return Some((Ok(chunk), (served, render, index + 1)));
            }
            let due = served.admission.token_due(index);
            tokio::time::sleep_until(served.in_flight.state.due_instant(due)).await;
            let chunk = render(Output::Token(index));
            Some((Ok(chunk), (served, render, index + 1)))
        })
    }
}
