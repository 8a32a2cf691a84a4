//! The proxy's upstream workers: for each worker registered with a `url`, its base URL,
//! its engine (which decides how the chosen DP rank is sent) and its [`WorkerHealth`].
//!
//! A worker's ranks are the router's; this table only says where the worker's HTTP server
//! is. Reads (every proxied request) take a read lock on a small map; health updates take
//! the worker's own mutex.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use kvroute_core::WorkerId;

use super::health::{HealthPolicy, WorkerHealth};
use crate::engine_ingest::EngineKind;

/// Where one worker serves HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub worker: WorkerId,
    /// `http://host:port` (with any path prefix), no trailing slash.
    pub base: String,
    pub engine: EngineKind,
}

impl Upstream {
    /// Checks `url`: `http://` with a host, optional port and path prefix (TLS to the
    /// engines is not supported: they serve plain HTTP).
    pub fn new(worker: WorkerId, url: &str, engine: EngineKind) -> Result<Upstream, String> {
        let uri: hyper::Uri = url.parse().map_err(|error| format!("url `{url}`: {error}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("url `{url}` must start with http:// (the engines serve plain HTTP)"));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("url `{url}` has no host"));
        }
        if uri.query().is_some() {
            return Err(format!("url `{url}` must not have a query"));
        }
        Ok(Upstream { worker, base: url.trim_end_matches('/').to_owned(), engine })
    }

    /// The URL of `path` (starting with `/`) on this worker.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

struct Entry {
    upstream: Arc<Upstream>,
    health: Mutex<WorkerHealth>,
}

/// Every upstream worker with its health.
#[derive(Default)]
pub struct Upstreams {
    entries: RwLock<HashMap<WorkerId, Arc<Entry>>>,
}

impl Upstreams {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<WorkerId, Arc<Entry>>> {
        // Plain data: a panic elsewhere cannot leave the map half-updated.
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds or replaces a worker's upstream (healthy).
    pub fn insert(&self, upstream: Upstream) {
        let entry = Arc::new(Entry { upstream: Arc::new(upstream), health: Mutex::default() });
        self.entries.write().unwrap_or_else(PoisonError::into_inner).insert(entry.upstream.worker, entry);
    }

    pub fn remove(&self, worker: WorkerId) -> bool {
        self.entries.write().unwrap_or_else(PoisonError::into_inner).remove(&worker).is_some()
    }

    pub fn get(&self, worker: WorkerId) -> Option<Arc<Upstream>> {
        self.read().get(&worker).map(|entry| Arc::clone(&entry.upstream))
    }

    /// Every upstream, by worker id.
    pub fn all(&self) -> Vec<Arc<Upstream>> {
        let mut all: Vec<Arc<Upstream>> = self.read().values().map(|entry| Arc::clone(&entry.upstream)).collect();
        all.sort_by_key(|upstream| upstream.worker);
        all
    }

    /// Workers that are down now.
    pub fn down_workers(&self) -> Vec<WorkerId> {
        self.read().iter().filter(|(_, entry)| lock(&entry.health).is_down()).map(|(&worker, _)| worker).collect()
    }

    /// Upstreams whose probe is due at `now`.
    pub fn probes_due(&self, now: Instant) -> Vec<Arc<Upstream>> {
        self.read()
            .values()
            .filter(|entry| lock(&entry.health).probe_due(now))
            .map(|e| Arc::clone(&e.upstream))
            .collect()
    }

    /// Records a success; returns whether the worker came back up.
    pub fn record_success(&self, worker: WorkerId) -> bool {
        self.read().get(&worker).is_some_and(|entry| lock(&entry.health).record_success())
    }

    /// Records a failure; returns whether the worker went down.
    pub fn record_failure(&self, worker: WorkerId, now: Instant, policy: &HealthPolicy) -> bool {
        self.read().get(&worker).is_some_and(|entry| lock(&entry.health).record_failure(now, policy))
    }

    pub fn probe_failed(&self, worker: WorkerId, now: Instant, policy: &HealthPolicy) {
        if let Some(entry) = self.read().get(&worker) {
            lock(&entry.health).probe_failed(now, policy);
        }
    }
}

fn lock(health: &Mutex<WorkerHealth>) -> std::sync::MutexGuard<'_, WorkerHealth> {
    health.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_joined() {
        let up = Upstream::new(WorkerId(1), "http://10.0.0.5:8000/", EngineKind::Vllm).unwrap();
        assert_eq!(up.url("/v1/completions"), "http://10.0.0.5:8000/v1/completions");
        let prefixed = Upstream::new(WorkerId(1), "http://gw/team-a", EngineKind::Sglang).unwrap();
        assert_eq!(prefixed.url("/generate"), "http://gw/team-a/generate");
        for bad in ["https://x:1", "x:1", "http://", "http://x:1/?a=b", "not a url"] {
            assert!(Upstream::new(WorkerId(1), bad, EngineKind::Vllm).is_err(), "{bad}");
        }
    }
}
