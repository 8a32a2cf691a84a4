//! The engines' own KV events into a sink: [`EngineIngest`] subscribes to vLLM's and
//! SGLang's ZeroMQ publishers, one task per DP rank, and applies what the core
//! [`EngineRankStream`] makes of their messages to an [`IngestSink`]: the router's index
//! in `kvroute serve`, a QUIC [`Publisher`](crate::transport::Publisher) in
//! `kvroute bridge`.
//!
//! # Shape
//! An [`EngineSource`] is one worker's publishers: the endpoint of its first DP rank (each
//! next rank adds one to the port, as the engines do), the replay endpoint likewise, a
//! topic filter, whether the router binds instead of connecting, and the page size to
//! expect. [`EngineIngest::add`] spawns, per rank, a [`rank_task`] on the current tokio
//! runtime; [`EngineIngest::remove`] stops a worker's tasks. The streams stay readable
//! for [`EngineIngest::snapshot`], which sums their counters (and lists each rank's) for
//! `/metrics`.
//!
//! # Bounds
//! Per rank: the subscriber's channel (default 1024 messages, backpressure), a message at
//! most `limits.max_payload_bytes`, a replay at most `replay.max_messages` replies, the
//! stream's buffer of live batches during a replay (`max_buffered`). Workers are
//! independent: one rank's bad input is dropped and counted in its own stream.

mod rank_task;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use kvroute_core::engine_events::block_mapper::{MapperConfig, SkipReason};
use kvroute_core::engine_events::decode::DecodeLimits;
use kvroute_core::engine_events::rank_stream::{add_labeled, EngineRankStream, RankStreamConfig, StreamCounters};
use kvroute_core::engine_events::sequence::{SeqStats, TrackerConfig};
use kvroute_core::ingest::IngestSink;
use kvroute_core::{DpRank, RankKey, WorkerId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine_zmq::{EndpointError, EngineEndpoint, ReplayConfig, SubscriberConfig, SubscriberMetrics};
use rank_task::{lock, RankTask, SharedStream};

/// Which engine publishes (for logs and metrics; both formats are decoded either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    #[default]
    Vllm,
    Sglang,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Vllm => "vllm",
            EngineKind::Sglang => "sglang",
        }
    }
}

/// One worker's KV-event publishers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineSource {
    pub worker: WorkerId,
    /// The worker's DP ranks (`dp_start..dp_start + dp_size`).
    pub ranks: Range<u32>,
    /// The PUB endpoint of the first rank; rank `dp_start + i` is at port + i.
    pub endpoint: EngineEndpoint,
    /// The replay ROUTER endpoint of the first rank (likewise offset), if the engine has one.
    pub replay: Option<EngineEndpoint>,
    /// Subscription prefix (the engines' default topic is empty).
    pub topic: String,
    pub engine: EngineKind,
    /// The page size the engine publishes; `None`: whatever each event says.
    pub page_size: Option<u32>,
}

/// Settings shared by every subscription.
#[derive(Clone, Copy, Debug)]
pub struct EngineIngestConfig {
    /// The router's hashing (block size and scheme) and the full-attention group.
    pub mapper: MapperConfig,
    pub limits: DecodeLimits,
    /// Live batches kept per rank while a replay runs.
    pub max_buffered: usize,
    pub replay: ReplayConfig,
    /// Messages queued per rank between its socket and its stream.
    pub channel_capacity: usize,
}

impl EngineIngestConfig {
    /// Defaults around a mapper configuration.
    pub fn new(mapper: MapperConfig) -> Self {
        EngineIngestConfig {
            mapper,
            limits: DecodeLimits::default(),
            max_buffered: TrackerConfig::DEFAULT_MAX_BUFFERED,
            replay: ReplayConfig::default(),
            channel_capacity: 1024,
        }
    }
}

/// Why a source could not be added.
#[derive(Debug)]
pub enum EngineIngestError {
    /// The worker already has a subscription.
    Exists(WorkerId),
    /// No DP rank.
    NoRanks(WorkerId),
    /// A rank's port is out of range.
    Endpoint(EndpointError),
    /// Not inside a tokio runtime.
    NoRuntime,
}

impl std::fmt::Display for EngineIngestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineIngestError::Exists(worker) => write!(f, "worker {} already has an engine subscription", worker.0),
            EngineIngestError::NoRanks(worker) => write!(f, "worker {} has no DP rank to subscribe to", worker.0),
            EngineIngestError::Endpoint(error) => write!(f, "engine endpoint: {error}"),
            EngineIngestError::NoRuntime => write!(f, "the engine ingest must be started inside a tokio runtime"),
        }
    }
}

impl std::error::Error for EngineIngestError {}

/// One rank's subscription.
struct RankHandle {
    rank: RankKey,
    stream: SharedStream,
    subscriber: Arc<Mutex<Option<Arc<SubscriberMetrics>>>>,
}

/// One worker's subscriptions.
struct SourceHandle {
    source: EngineSource,
    ranks: Vec<RankHandle>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Subscriptions to the engines' publishers; see the module docs.
pub struct EngineIngest {
    config: EngineIngestConfig,
    sink: Arc<dyn IngestSink>,
    sources: Mutex<HashMap<WorkerId, SourceHandle>>,
}

/// Counters summed over every rank, and each rank's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineIngestSnapshot {
    /// Messages, drops and clears by reason, batches and events applied.
    pub stream: StreamCounters,
    /// Gaps, replays, restarts, unrecovered batches.
    pub seq: SeqStats,
    /// Blocks of events not mapped, by reason.
    pub skipped_blocks: Vec<(&'static str, u64)>,
    /// The subscribers' socket counters, summed (messages, bytes, oversize, ...).
    pub sockets: Vec<(&'static str, u64)>,
    pub ranks: Vec<RankStatus>,
}

/// One rank's subscription as `/metrics` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankStatus {
    pub rank: RankKey,
    pub engine: EngineKind,
    pub connected: bool,
    pub last_seq: Option<u64>,
    /// Batch numbers this rank's state could never get (lost, not replayable).
    pub unrecovered_batches: u64,
}

impl EngineIngest {
    pub fn new(config: EngineIngestConfig, sink: Arc<dyn IngestSink>) -> Arc<EngineIngest> {
        Arc::new(EngineIngest { config, sink, sources: Mutex::new(HashMap::new()) })
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, SourceHandle>> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to a worker's ranks (a task each, on the current runtime).
    pub fn add(&self, source: EngineSource) -> Result<(), EngineIngestError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| EngineIngestError::NoRuntime)?;
        if source.ranks.is_empty() {
            return Err(EngineIngestError::NoRanks(source.worker));
        }
        let mut sources = self.sources();
        if sources.contains_key(&source.worker) {
            return Err(EngineIngestError::Exists(source.worker));
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut ranks = Vec::new();
        let mut tasks = Vec::new();
        for (offset, dp_rank) in source.ranks.clone().enumerate() {
            let offset = offset as u32;
            let rank = RankKey { worker: source.worker, dp_rank: DpRank(dp_rank) };
            let endpoint = source.endpoint.for_rank(offset).map_err(EngineIngestError::Endpoint)?;
            let replay = match &source.replay {
                Some(replay) => Some(replay.for_rank(offset).map_err(EngineIngestError::Endpoint)?),
                None => None,
            };
            let mut mapper = self.config.mapper;
            mapper.expected_page_size = source.page_size;
            let stream = EngineRankStream::new(RankStreamConfig {
                rank,
                worker_ranks: source.ranks.clone(),
                mapper,
                limits: self.config.limits,
                tracker: TrackerConfig { replay: replay.is_some(), max_buffered: self.config.max_buffered },
            });
            let stream = Arc::new(Mutex::new(stream));
            let mut subscriber = SubscriberConfig::new(endpoint);
            subscriber.topic = source.topic.clone();
            subscriber.channel_capacity = self.config.channel_capacity.max(1);
            subscriber.max_message_bytes = self.config.limits.max_payload_bytes.saturating_add(1024);
            subscriber.name = format!("{} worker {} rank {dp_rank}", source.engine.as_str(), source.worker.0);
            let metrics = Arc::new(Mutex::new(None));
            let task = RankTask {
                stream: stream.clone(),
                subscriber,
                replay,
                replay_config: self.config.replay,
                sink: self.sink.clone(),
                subscriber_metrics: metrics.clone(),
            };
            tasks.push(runtime.spawn(task.run(shutdown_rx.clone())));
            ranks.push(RankHandle { rank, stream, subscriber: metrics });
        }
        tracing::info!(
            worker = source.worker.0,
            engine = source.engine.as_str(),
            endpoint = %source.endpoint,
            ranks = ranks.len(),
            replay = source.replay.is_some(),
            "subscribed to engine KV events"
        );
        sources.insert(source.worker, SourceHandle { source, ranks, shutdown, tasks });
        Ok(())
    }

    /// Stops a worker's subscriptions (what they applied stays in the sink); false if it
    /// had none.
    pub fn remove(&self, worker: WorkerId) -> bool {
        match self.sources().remove(&worker) {
            Some(handle) => {
                handle.shutdown.send_replace(true);
                true
            }
            None => false,
        }
    }

    /// Every counter, summed over the ranks, and each rank's status.
    pub fn snapshot(&self) -> EngineIngestSnapshot {
        let mut s = EngineIngestSnapshot::default();
        for reason in SkipReason::ALL {
            add_labeled(&mut s.skipped_blocks, reason.label(), 0);
        }
        let sources = self.sources();
        let mut handles: Vec<&SourceHandle> = sources.values().collect();
        handles.sort_by_key(|h| h.source.worker);
        for handle in handles {
            for rank in &handle.ranks {
                let stream = lock(&rank.stream);
                s.stream.add(stream.counters());
                s.seq.add(stream.seq_stats());
                let skipped = stream.skipped();
                for reason in SkipReason::ALL {
                    add_labeled(&mut s.skipped_blocks, reason.label(), skipped.get(reason));
                }
                let last_seq = stream.last_applied_seq();
                let unrecovered = stream.seq_stats().unrecovered_batches;
                drop(stream);
                let socket = rank.subscriber.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|m| m.snapshot());
                let connected = socket.is_some_and(|m| m.connected > 0);
                for (label, n) in socket.map(|m| m.fields()).unwrap_or_default() {
                    add_labeled(&mut s.sockets, label, n);
                }
                s.ranks.push(RankStatus {
                    rank: rank.rank,
                    engine: handle.source.engine,
                    connected,
                    last_seq,
                    unrecovered_batches: unrecovered,
                });
            }
        }
        s
    }

    /// Stops every subscription and waits for the tasks (at most `timeout`).
    pub async fn shutdown(&self, timeout: std::time::Duration) {
        let handles: Vec<SourceHandle> = self.sources().drain().map(|(_, h)| h).collect();
        let mut tasks = Vec::new();
        for handle in handles {
            handle.shutdown.send_replace(true);
            tasks.extend(handle.tasks);
        }
        let _ = tokio::time::timeout(timeout, async {
            for task in tasks {
                let _ = task.await;
            }
        })
        .await;
    }
}
