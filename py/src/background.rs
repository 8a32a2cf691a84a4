//! The I/O a `Router` runs off the Python threads: one tokio runtime per router (two
//! worker threads, started with the router, stopped when it is collected) carrying
//!
//! - the expiry timer (`kvroute_net::serve::expiry`, the daemon's): requests never
//!   finished release their load after `request_ttl_s`, and the caller-id book forgets
//!   them at the same time;
//! - engine subscriptions (`kvroute_net::engine_ingest`): per DP rank a ZeroMQ SUB socket
//!   (and replay DEALER) decoding vLLM's / SGLang's batches into the index;
//! - QUIC listeners (`kvroute_net::transport::IngestServer`): `kvroute bridge` and other
//!   publishers connect and stream their ranks' deltas (mutual TLS, resume, dumps).
//!
//! None of it takes the GIL: events go from socket to index in Rust.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvroute_core::engine_events::block_mapper::MapperConfig;
use kvroute_core::ingest::IngestSink;
use kvroute_core::route::{Clock, Router};
use kvroute_net::engine_ingest::{EngineIngest, EngineIngestConfig, EngineIngestSnapshot, EngineSource};
use kvroute_net::transport::{IngestConfig, IngestHandle, IngestMetricsSnapshot, IngestServer, TlsMode};

use crate::request_keys::RequestKeys;

/// The runtime and what runs on it.
pub(crate) struct Background {
    runtime: Option<tokio::runtime::Runtime>,
    engine_ingest: Arc<EngineIngest>,
    listeners: Mutex<Vec<IngestHandle>>,
}

impl Background {
    pub(crate) fn start(
        router: Arc<Router>,
        clock: Arc<dyn Clock>,
        keys: Arc<RequestKeys>,
        mapper: MapperConfig,
    ) -> std::io::Result<Background> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kvroute-io")
            .enable_all()
            .build()?;
        let _entered = runtime.enter();
        kvroute_net::serve::expiry::start(Arc::clone(&router));
        let ttl_ms = router.config().request_ttl_ms;
        let interval = Duration::from_millis(router.expiry_interval_ms());
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                keys.forget_expired(clock.now_ms(), ttl_ms);
            }
        });
        let sink: Arc<dyn IngestSink> = router;
        let engine_ingest = EngineIngest::new(EngineIngestConfig::new(mapper), sink);
        Ok(Background { runtime: Some(runtime), engine_ingest, listeners: Mutex::new(Vec::new()) })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    pub(crate) fn subscribe(&self, source: EngineSource) -> Result<(), String> {
        let _entered = self.runtime().enter();
        self.engine_ingest.add(source).map_err(|error| error.to_string())
    }

    pub(crate) fn unsubscribe(&self, worker: kvroute_core::WorkerId) -> bool {
        self.engine_ingest.remove(worker)
    }

    pub(crate) fn engine_snapshot(&self) -> EngineIngestSnapshot {
        self.engine_ingest.snapshot()
    }

    /// Starts a QUIC ingest listener applying to `sink`; its bound address.
    pub(crate) fn listen(
        &self,
        listen: SocketAddr,
        tls: TlsMode,
        sink: Arc<dyn IngestSink>,
    ) -> Result<SocketAddr, String> {
        let _entered = self.runtime().enter();
        let handle = IngestServer::start(IngestConfig::new(listen, tls), sink).map_err(|error| error.to_string())?;
        let addr = handle.local_addr();
        self.listeners.lock().unwrap_or_else(|e| e.into_inner()).push(handle);
        Ok(addr)
    }

    /// Every listener's counters, summed.
    pub(crate) fn quic_counters(&self) -> Vec<(&'static str, u64)> {
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let mut sums: Vec<(&'static str, u64)> = IngestMetricsSnapshot::default().fields();
        for handle in listeners.iter() {
            for ((_, sum), (_, value)) in sums.iter_mut().zip(handle.metrics().snapshot().fields()) {
                *sum += value;
            }
        }
        sums
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Tasks are cancelled without waiting: this may run on a Python thread holding
        // the GIL, which no task needs, so nothing can deadlock.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
