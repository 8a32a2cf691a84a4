//! [`Fleet`]: the workers the daemon routes to. Exact-mode workers are an [`Engine`]
//! each, with an in-process `kvroute_net::transport` publisher streaming its KV events to
//! the daemon's QUIC ingest; approximate-mode workers are only registered with the
//! daemon and never publish, so the router records its own routes for them.
//!
//! Shape: [`Fleet::bring_up`] starts a worker's publisher (its own `publisher-<id>`
//! certificate under mutual TLS, so it may publish only its own ranks; test-speed QUIC
//! keep-alive, heartbeats and reconnects) and hands it to the engine, which starts over
//! empty; [`Fleet::take_down`] takes the publisher out of the engine and either shuts it
//! down (goodbye: the daemon starts the grace at once) or kills it (a crash: no goodbye,
//! the endpoint closed). [`Fleet::find_matches`] merges every engine's reference into the
//! overlaps the daemon's index must report for a chain.

use std::net::SocketAddr;
use std::time::Duration;

use kvroute_core::{BlockHash, RankKey};
use kvroute_net::tls::{TlsFiles, INSECURE_SERVER_NAME};
use kvroute_net::transport::{Backoff, Publisher, PublisherConfig, QuicTuning, RouterTarget, TlsMode};

use super::daemon::Tls;
use super::engine::Engine;

/// The fleet's shape.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// The daemon's QUIC ingest.
    pub ingest: SocketAddr,
    pub tls: Tls,
    /// Workers with a publisher (exact mode).
    pub exact: Vec<u64>,
    /// Workers that never publish (approximate mode).
    pub approx: Vec<u64>,
    pub dp_size: u32,
    /// KV cache of each rank, in blocks.
    pub capacity_blocks: usize,
}

/// See the module docs.
pub struct Fleet {
    spec: FleetSpec,
    engines: Vec<Engine>,
}

impl Fleet {
    /// Every engine down; call [`Fleet::bring_up`] for each.
    pub fn new(spec: FleetSpec) -> Self {
        let engines = spec.exact.iter().map(|&w| Engine::new(w, spec.dp_size, spec.capacity_blocks)).collect();
        Fleet { spec, engines }
    }

    pub fn spec(&self) -> &FleetSpec {
        &self.spec
    }

    pub fn engines(&self) -> &[Engine] {
        &self.engines
    }

    /// The engine of an exact-mode worker; `None` for an approximate-mode one.
    pub fn engine(&self, worker: u64) -> Option<&Engine> {
        self.engines.iter().find(|e| e.worker == worker)
    }

    fn publisher_config(&self, engine: &Engine) -> PublisherConfig {
        let (tls, server_name) = match &self.spec.tls {
            Tls::Mutual(dir) => {
                (TlsMode::Mutual(TlsFiles::in_dir(dir, &format!("publisher-{}", engine.worker))), "localhost")
            }
            Tls::InsecureLoopback => (TlsMode::InsecureLoopback, INSECURE_SERVER_NAME),
        };
        let target = RouterTarget::new(self.spec.ingest, server_name);
        let name = format!("soak-worker-{}", engine.worker);
        let mut config = PublisherConfig::new(name, vec![target], tls, engine.ranks());
        config.quic = QuicTuning {
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(5),
            ..QuicTuning::default()
        };
        config.reconnect = Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(500) };
        config.heartbeat_interval = Duration::from_millis(100);
        config
    }

    /// Starts `worker`'s engine afresh with a new publisher (a new incarnation). Must run
    /// inside the tokio runtime.
    pub fn bring_up(&self, worker: u64) -> Result<(), String> {
        let engine = self.engine(worker).ok_or_else(|| format!("worker {worker} has no engine"))?;
        let publisher = Publisher::start(self.publisher_config(engine))
            .map_err(|e| format!("starting the publisher of worker {worker}: {e}"))?;
        engine.come_up(publisher);
        Ok(())
    }

    /// Takes `worker`'s publisher down: an orderly shutdown, or with `crash` a kill.
    pub async fn take_down(&self, worker: u64, crash: bool) {
        let Some(publisher) = self.engine(worker).and_then(Engine::go_down) else { return };
        if crash {
            publisher.kill();
        } else {
            publisher.shutdown().await;
        }
    }

    /// What the daemon's device-tier index must report for `chain` over the exact-mode
    /// workers: every engine's reference overlaps, sorted by rank.
    pub fn find_matches(&self, chain: &[BlockHash]) -> Vec<(RankKey, u32)> {
        let mut all: Vec<(RankKey, u32)> = self.engines.iter().flat_map(|e| e.find_matches(chain)).collect();
        all.sort();
        all
    }

    /// Orderly shutdown of every running publisher.
    pub async fn shutdown(&self) {
        for engine in &self.engines {
            if let Some(publisher) = engine.go_down() {
                publisher.shutdown().await;
            }
        }
    }
}
