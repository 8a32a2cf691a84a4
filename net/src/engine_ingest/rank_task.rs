//! One engine rank's subscription: a tokio task that owns the rank's SUB socket and, when
//! the core [`EngineRankStream`] asks for one, a replay DEALER, and feeds every message to
//! the stream (which applies what it decides to the sink).
//!
//! ```text
//! loop select:
//!   subscriber: Connected (first)  -> stream.start()         (a late joiner replays from 0)
//!               Message(frames)    -> stream.queue_live(frames), for every message queued
//!                                     (up to LIVE_BATCH), then one stream.flush()
//!   replay:     Message(frames)    -> stream.on_replay_reply(id, frames)
//!               End                -> stream.on_replay_end(id)
//!               error / timeout    -> stream.on_replay_failed(id)
//!   shutdown                       -> stop
//! each step may return a ReplayRequest{id, from_seq}: connect a DEALER, send the request,
//! (a failure to connect or send -> stream.on_replay_failed(id)), read its replies above.
//! ```
//!
//! The stream sits behind a mutex so that `/metrics` can read its counters; only this
//! task changes it, so the lock is never contended but by a scrape. Every buffer is
//! bounded: the subscriber's channel (backpressure onto the engine's high-water mark),
//! the replay's reply count and sizes, the stream's buffer of live batches during a
//! replay.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use kvroute_core::engine_events::rank_stream::{EngineRankStream, ReplayRequest};
use kvroute_core::ingest::IngestSink;
use tokio::sync::watch;

use crate::engine_zmq::{
    request_replay_with, spawn_subscriber, EngineEndpoint, Replay, ReplayConfig, ReplayItem, SubscriberConfig,
    SubscriberEvent, SubscriberMetrics,
};

/// A rank's stream, shared between its task and the metrics.
pub(crate) type SharedStream = Arc<Mutex<EngineRankStream>>;

pub(crate) fn lock(stream: &SharedStream) -> MutexGuard<'_, EngineRankStream> {
    // The stream is consistent between calls (nothing in it can panic halfway through an
    // update that matters): poisoning is ignored.
    stream.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one rank task needs.
pub(crate) struct RankTask {
    pub(crate) stream: SharedStream,
    pub(crate) subscriber: SubscriberConfig,
    pub(crate) replay: Option<EngineEndpoint>,
    pub(crate) replay_config: ReplayConfig,
    pub(crate) sink: Arc<dyn IngestSink>,
    pub(crate) subscriber_metrics: Arc<Mutex<Option<Arc<SubscriberMetrics>>>>,
}

/// Most subscriber events handled in one step (one flush): bounds the events queued in
/// the stream between flushes, and the time a `/metrics` scrape waits for its lock.
const LIVE_BATCH: usize = 32;

/// The replay in progress, if any.
struct Running {
    id: u64,
    replay: Replay,
}

impl RankTask {
    /// Runs until `shutdown` turns true (or the subscriber cannot start).
    pub(crate) async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let name = self.subscriber.name.clone();
        let mut subscriber = match spawn_subscriber(self.subscriber.clone()) {
            Ok(subscriber) => subscriber,
            Err(error) => {
                tracing::error!(rank = %name, %error, "engine subscription not started");
                return;
            }
        };
        *self.subscriber_metrics.lock().unwrap_or_else(|e| e.into_inner()) = Some(subscriber.metrics().clone());
        let mut started = false;
        let mut running: Option<Running> = None;
        let mut events = Vec::with_capacity(LIVE_BATCH);
        loop {
            let request = tokio::select! {
                received = subscriber.recv_many(&mut events, LIVE_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    self.on_subscriber_events(&name, &mut events, &mut started)
                }
                item = next_reply(&mut running) => {
                    let Some(id) = running.as_ref().map(|r| r.id) else { continue };
                    match item {
                        Some(Ok(ReplayItem::Message(frames))) => {
                            let frames: Vec<&[u8]> = frames.iter().map(Bytes::as_ref).collect();
                            lock(&self.stream).on_replay_reply(id, &frames, &*self.sink)
                        }
                        Some(Ok(ReplayItem::End { messages })) => {
                            tracing::debug!(rank = %name, id, messages, "replay done");
                            running = None;
                            lock(&self.stream).on_replay_end(id, &*self.sink)
                        }
                        Some(Err(error)) => {
                            tracing::warn!(rank = %name, id, %error, "replay failed");
                            running = None;
                            lock(&self.stream).on_replay_failed(id, &*self.sink)
                        }
                        None => {
                            running = None;
                            lock(&self.stream).on_replay_failed(id, &*self.sink)
                        }
                    }
                }
                _ = shutdown.wait_for(|down| *down) => break,
            };
            if let Some(request) = request {
                running = self.begin_replay(&name, request).await;
            }
        }
        drop(running);
        subscriber.shutdown().await;
    }

    /// Feeds what the subscriber delivered to the stream, in order: the messages queued
    /// and flushed together (one writer-lock acquisition per tier for all of them), or
    /// before a connection event. Returns the last replay the stream asked for.
    fn on_subscriber_events(
        &self,
        name: &str,
        events: &mut Vec<SubscriberEvent>,
        started: &mut bool,
    ) -> Option<ReplayRequest> {
        let mut stream = lock(&self.stream);
        let sink = &*self.sink;
        let mut request = None;
        for event in events.drain(..) {
            let asked = match event {
                SubscriberEvent::Message(frames) => {
                    let frames: Vec<&[u8]> = frames.iter().map(Bytes::as_ref).collect();
                    stream.queue_live(&frames, sink)
                }
                SubscriberEvent::Connected if !*started => {
                    *started = true;
                    tracing::info!(rank = %name, "engine KV events connected");
                    // Applies what is queued first: `start` flushes before it returns.
                    stream.start(sink)
                }
                SubscriberEvent::Connected => {
                    tracing::info!(rank = %name, "engine KV events reconnected");
                    None
                }
                SubscriberEvent::Disconnected => {
                    tracing::warn!(rank = %name, "engine KV events disconnected");
                    None
                }
            };
            request = asked.or(request);
        }
        stream.flush(sink);
        request
    }

    /// Starts a replay; when it cannot even be sent, tells the stream at once (and starts
    /// whatever the stream asks for next).
    async fn begin_replay(&self, name: &str, mut request: ReplayRequest) -> Option<Running> {
        loop {
            let Some(endpoint) = &self.replay else {
                // A stream configured without replay never asks; answer as a failure.
                let next = lock(&self.stream).on_replay_failed(request.id, &*self.sink);
                let next = next?;
                request = next;
                continue;
            };
            tracing::debug!(rank = %name, id = request.id, from_seq = request.from_seq, "requesting replay");
            match request_replay_with(endpoint, request.from_seq, self.replay_config).await {
                Ok(replay) => return Some(Running { id: request.id, replay }),
                Err(error) => {
                    tracing::warn!(rank = %name, %error, "replay request failed");
                    let next = lock(&self.stream).on_replay_failed(request.id, &*self.sink);
                    let next = next?;
                    request = next;
                    // Do not spin on an endpoint that refuses.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// The next reply of the running replay; pending forever when there is none.
async fn next_reply(running: &mut Option<Running>) -> Option<Result<ReplayItem, crate::engine_zmq::ReplayError>> {
    match running {
        Some(running) => running.replay.next().await,
        None => std::future::pending().await,
    }
}
