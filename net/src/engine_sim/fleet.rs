//! [`SimFleet`]: several engine simulators on loopback, each binding its per-rank ZeroMQ
//! ports as a real engine does (PUB at base + rank, replay at base + dp_size + rank), for
//! the live demo and the benchmarks. A base whose run of ports is taken is skipped for the
//! next candidate; [`SimFleet::worker_registrations`] gives `kvroute serve` the workers
//! (url, events, replay) to route to.

use super::config::{EngineSimConfig, EngineSimError};
use super::EngineSim;
use crate::serve::WorkerRegistration;

/// Candidate bases tried per engine before giving up.
const BASE_TRIES: u32 = 64;

/// Running simulators, by worker id (0, 1, ...).
pub struct SimFleet {
    engines: Vec<EngineSim>,
}

impl SimFleet {
    /// `workers` simulators like `template` (its HTTP port is replaced by a free one, its
    /// event ports by runs from `first_base_port` up; without events in the template,
    /// none are opened).
    pub async fn start(
        template: &EngineSimConfig,
        workers: u32,
        first_base_port: u32,
    ) -> Result<SimFleet, EngineSimError> {
        let mut engines = Vec::with_capacity(workers as usize);
        let mut base = first_base_port;
        let dp = template.model.dp_size;
        for _ in 0..workers {
            let mut last_error = None;
            let mut started = None;
            for _ in 0..BASE_TRIES {
                if base + 2 * dp > u32::from(u16::MAX) {
                    break;
                }
                let mut config = template.clone();
                config.listen.set_port(0);
                if template.kv_events_port.is_some() {
                    config.kv_events_port = Some(base as u16);
                    config.replay_port = template.replay_port.map(|_| (base + dp) as u16);
                }
                base += 2 * dp;
                match EngineSim::start(config).await {
                    Ok(engine) => {
                        started = Some(engine);
                        break;
                    }
                    Err(error) => last_error = Some(error),
                }
            }
            match started {
                Some(engine) => engines.push(engine),
                None => {
                    return Err(
                        last_error.unwrap_or(EngineSimError::PortRange { port: base.min(65_535) as u16, dp_size: dp })
                    )
                }
            }
        }
        Ok(SimFleet { engines })
    }

    pub fn engines(&self) -> &[EngineSim] {
        &self.engines
    }

    /// Every engine's base URL, by worker id.
    pub fn urls(&self) -> Vec<String> {
        self.engines.iter().map(|engine| format!("http://{}", engine.http_address())).collect()
    }

    /// The workers as `kvroute serve` registers them: id, DP size, url, and the event and
    /// replay endpoints of engines that publish.
    pub fn worker_registrations(&self) -> Result<Vec<WorkerRegistration>, String> {
        self.engines
            .iter()
            .enumerate()
            .map(|(worker, engine)| {
                let mut spec =
                    format!("worker_id={worker},dp_size={},url=http://{}", engine.dp_size(), engine.http_address());
                if let Some(endpoint) = engine.subscriber_endpoint(0) {
                    spec.push_str(&format!(",endpoint={endpoint}"));
                }
                if let Some(replay) = engine.replay_endpoint(0) {
                    spec.push_str(&format!(",replay={replay}"));
                }
                WorkerRegistration::parse_flag(&spec)
            })
            .collect()
    }

    /// Requests each rank has served, worker-major (the engines' own counts).
    pub fn requests_per_rank(&self) -> Vec<u64> {
        self.engines.iter().flat_map(|engine| engine.stats().into_iter().map(|rank| rank.requests)).collect()
    }

    /// Transit times every engine recorded since the last call (see `/sim/transits`).
    pub fn take_transits(&self) -> Vec<u64> {
        self.engines.iter().flat_map(EngineSim::take_transits).collect()
    }

    pub async fn shutdown(self) {
        for engine in self.engines {
            engine.shutdown().await;
        }
    }
}
