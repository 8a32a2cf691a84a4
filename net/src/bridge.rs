//! The worker-side bridge (`kvroute bridge`): next to an engine, it subscribes to the
//! engine's own ZeroMQ KV events ([`EngineIngest`]) and publishes what they mean for the
//! index over the QUIC transport ([`Publisher`]: mutual TLS, resume, fan-out to every
//! router). Routers then need no ZeroMQ reachability to the workers, and nothing
//! unauthenticated reaches their index.
//!
//! ```text
//! engine rank r  --ZMQ PUB/replay-->  EngineIngest (decode, seq, map; one task per rank)
//!                                        | IngestSink::apply_batch(tier, events)
//!                                        v
//!                                     PublisherSink -> Publisher::publish(rank, tier, data)
//!                                        | per rank: seq numbers, ring of recent deltas,
//!                                        | the rank's current block set (RankState)
//!                                        v
//!                                     QUIC to every router: live deltas, resume, or a dump
//! ```
//!
//! The publisher keeps each rank's current block set, so a router that joins late, restarts
//! or falls behind its ring gets a full dump: what the engines themselves cannot give.
//! Content hashes are computed here, so the bridge must hash as the routers do (block size
//! and scheme, [`BridgeConfig::mapper`]).

use std::sync::Arc;
use std::time::Duration;

use kvroute_core::event::{dump_events, DumpBlock, KvEvent, KvEventData};
use kvroute_core::ingest::IngestSink;
use kvroute_core::tier::StorageTier;
use kvroute_core::{DpRank, RankKey};

use crate::engine_ingest::{EngineIngest, EngineIngestConfig, EngineIngestError, EngineSource};
use crate::transport::{Publisher, PublisherConfig, PublisherHandle, TransportError};

/// The QUIC publisher as an ingest sink: every index event the engine streams produce is
/// published for its rank and tier.
pub struct PublisherSink {
    publisher: PublisherHandle,
}

impl PublisherSink {
    fn publish(&self, rank: RankKey, tier: StorageTier, data: KvEventData) {
        if let Err(error) = self.publisher.publish(rank, tier, data) {
            // Only a rank the publisher was not started with: the bridge registers every
            // source's ranks, so this is a bug of the caller, logged rather than fatal.
            tracing::warn!(%rank, %error, "event not published");
        }
    }
}

impl IngestSink for PublisherSink {
    fn apply_batch(&self, tier: StorageTier, events: &[KvEvent]) {
        for event in events {
            self.publish(event.rank, tier, event.data.clone());
        }
    }

    fn replace_rank(&self, tier: StorageTier, rank: RankKey, dump: &[DumpBlock]) {
        self.publish(rank, tier, KvEventData::Cleared);
        for data in dump_events(dump) {
            self.publish(rank, tier, data);
        }
    }
}

/// What the bridge runs.
pub struct BridgeConfig {
    /// The engines to subscribe to.
    pub sources: Vec<EngineSource>,
    /// The QUIC publisher (routers, TLS); its ranks are set from the sources.
    pub publisher: PublisherConfig,
    /// Hashing and bounds of the engine ingest (must hash as the routers do).
    pub ingest: EngineIngestConfig,
}

/// Why the bridge did not start.
#[derive(Debug)]
pub enum BridgeError {
    Publisher(TransportError),
    Engine(EngineIngestError),
}

impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BridgeError::Publisher(error) => write!(f, "QUIC publisher: {error}"),
            BridgeError::Engine(error) => write!(f, "engine subscription: {error}"),
        }
    }
}

impl std::error::Error for BridgeError {}

/// A running bridge.
pub struct BridgeHandle {
    publisher: PublisherHandle,
    engines: Arc<EngineIngest>,
}

impl BridgeHandle {
    /// Starts the publisher and every engine subscription (inside a tokio runtime).
    pub fn start(config: BridgeConfig) -> Result<BridgeHandle, BridgeError> {
        let mut publisher_config = config.publisher;
        publisher_config.ranks = config
            .sources
            .iter()
            .flat_map(|s| s.ranks.clone().map(move |r| RankKey { worker: s.worker, dp_rank: DpRank(r) }))
            .collect();
        let publisher = Publisher::start(publisher_config).map_err(BridgeError::Publisher)?;
        let sink: Arc<dyn IngestSink> = Arc::new(PublisherSink { publisher: publisher.clone() });
        let engines = EngineIngest::new(config.ingest, sink);
        for source in config.sources {
            engines.add(source).map_err(BridgeError::Engine)?;
        }
        Ok(BridgeHandle { publisher, engines })
    }

    /// The engine subscriptions (counters for logs and tests).
    pub fn engines(&self) -> &Arc<EngineIngest> {
        &self.engines
    }

    /// The QUIC publisher.
    pub fn publisher(&self) -> &PublisherHandle {
        &self.publisher
    }

    /// Stops the subscriptions, then the publisher (a Goodbye to every router).
    pub async fn shutdown(self) {
        self.engines.shutdown(Duration::from_secs(3)).await;
        self.publisher.shutdown().await;
    }
}
