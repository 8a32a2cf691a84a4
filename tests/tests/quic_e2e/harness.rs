//! The pieces every scenario uses: certificates ([`Certs`]), the workload (chains from
//! the shipped trace, engines from the core simulator: [`Engine`]), the expected state
//! ([`ReferenceSink`] fed directly), routers ([`start_router`]) and publishers
//! ([`start_publisher`]), the convergence barrier ([`converge`]) and the comparison of
//! every lookup ([`assert_same_lookups`]); for restarts, the daemon's snapshot steps
//! ([`shut_down_with_snapshot`], [`restore_router`]).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kvroute_core::route::{Router, RouterConfig, StorageTier, WorkerSpec};
use kvroute_core::sim::{Fleet, FleetConfig};
use kvroute_core::trace::{parse_trace_str, request_blocks};
use kvroute_core::{BlockHash, RankKey, WorkerId};
use kvroute_net::serve::options::TlsOptions;
use kvroute_net::serve::{snapshots, ServeConfig, ServeOptions};
use kvroute_net::tls::{generate_certs, CertsOptions, TlsFiles};
use kvroute_net::transport::{
    Backoff, IngestConfig, IngestHandle, IngestServer, IngestSink, Publisher, PublisherConfig, PublisherHandle,
    QuicTuning, RankCursorState, RouterTarget, TlsMode,
};

use super::reference_sink::ReferenceSink;

const TRACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/conversation_trace.jsonl");
/// Requests of the trace the tests use, and their block size.
const REQUESTS: usize = 400;
const BLOCK_SIZE: u32 = 64;
/// Blocks each simulated rank caches: small, so that evictions are constant.
const CAPACITY_BLOCKS: usize = 256;
pub const DP_SIZE: u32 = 2;
/// Longest any scenario waits for a condition.
const PATIENCE: Duration = Duration::from_secs(40);

/// The first [`REQUESTS`] requests of the trace as block chains.
pub fn chains() -> &'static [Vec<BlockHash>] {
    static CHAINS: OnceLock<Vec<Vec<BlockHash>>> = OnceLock::new();
    CHAINS.get_or_init(|| {
        let file = std::fs::File::open(TRACE).expect("the repo ships the trace");
        let lines: Vec<String> =
            std::io::BufReader::new(file).lines().take(REQUESTS).collect::<Result<_, _>>().expect("readable trace");
        let requests = parse_trace_str(&lines.join("\n")).expect("valid trace");
        requests.iter().map(|r| request_blocks(r, BLOCK_SIZE).expect("block size divides 512")).collect()
    })
}

/// A CA, the router certificate and one publisher certificate per worker of `workers`.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    pub fn new(workers: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut options = CertsOptions::new(dir.path());
        options.workers = workers.parse().unwrap();
        generate_certs(&options).unwrap();
        Certs { dir }
    }

    pub fn router(&self) -> TlsMode {
        TlsMode::Mutual(TlsFiles::in_dir(self.dir.path(), "router"))
    }

    pub fn publisher(&self, worker: u64) -> TlsMode {
        TlsMode::Mutual(TlsFiles::in_dir(self.dir.path(), &format!("publisher-{worker}")))
    }

    pub fn files(&self, name: &str) -> TlsFiles {
        TlsFiles::in_dir(self.dir.path(), name)
    }
}

/// Timers short enough for tests.
pub fn fast_quic() -> QuicTuning {
    QuicTuning { keep_alive: Duration::from_millis(500), idle_timeout: Duration::from_secs(5), ..QuicTuning::default() }
}

pub fn ingest_config(tls: TlsMode) -> IngestConfig {
    let mut config = IngestConfig::new("127.0.0.1:0".parse().unwrap(), tls);
    config.quic = fast_quic();
    config.resubscribe = Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(200) };
    config
}

/// A core `Router` (default configuration) knowing `workers`, each with [`DP_SIZE`] ranks.
pub fn router(workers: &[u64]) -> Arc<Router> {
    let start = Instant::now();
    let config = RouterConfig::default();
    let block_size = config.block_size;
    let router = Router::new(config, Arc::new(move || start.elapsed().as_millis() as u64)).unwrap();
    for &worker in workers {
        router.add_worker(WorkerSpec::new(WorkerId(worker), DP_SIZE, block_size)).unwrap();
    }
    Arc::new(router)
}

pub fn start_router(config: IngestConfig, sink: Arc<dyn IngestSink>) -> IngestHandle {
    IngestServer::start(config, sink).unwrap()
}

pub fn ranks_of(worker: u64) -> Vec<RankKey> {
    (0..DP_SIZE).map(|r| RankKey::new(worker, r)).collect()
}

/// Publisher settings for `worker`'s ranks, to `routers`, with test timers.
pub fn publisher_config(worker: u64, tls: TlsMode, routers: &[&IngestHandle]) -> PublisherConfig {
    let targets = routers.iter().map(|r| RouterTarget::new(r.local_addr(), "localhost")).collect();
    let mut config = PublisherConfig::new(format!("worker-{worker}"), targets, tls, ranks_of(worker));
    config.quic = fast_quic();
    config.reconnect = Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(200) };
    config.heartbeat_interval = Duration::from_millis(100);
    config
}

pub fn start_publisher(config: PublisherConfig) -> PublisherHandle {
    Publisher::start(config).unwrap()
}

/// A simulated engine serving one worker's ranks: which rank gets a request, and what its
/// cache publishes. `tier` is where each rank's events go.
pub struct Engine {
    pub worker: u64,
    fleet: Fleet,
    tier: fn(RankKey) -> StorageTier,
}

impl Engine {
    pub fn new(worker: u64) -> Self {
        Engine::with_tiers(worker, |_| StorageTier::Device)
    }

    pub fn with_tiers(worker: u64, tier: fn(RankKey) -> StorageTier) -> Self {
        let workers = u32::try_from(worker).unwrap() + 1;
        let fleet = Fleet::new(FleetConfig { workers, dp_size: DP_SIZE, capacity_blocks: CAPACITY_BLOCKS });
        Engine { worker, fleet, tier }
    }

    /// Serves request `i` on one of the worker's ranks that `publisher` publishes; its
    /// events go to `publisher` and, when given, to `expected`.
    pub fn serve(&mut self, i: usize, publisher: &PublisherHandle, expected: Option<&ReferenceSink>) {
        let chain = &chains()[i % chains().len()];
        let ranks: Vec<RankKey> = publisher.ranks().iter().copied().filter(|r| r.worker.0 == self.worker).collect();
        let pick = ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % ranks.len();
        let rank = ranks[pick];
        for event in self.fleet.prefill(rank, chain).events {
            let tier = (self.tier)(rank);
            if let Some(expected) = expected {
                expected.record(tier, rank, event.data.clone());
            }
            publisher.publish(rank, tier, event.data).unwrap();
        }
    }
}

/// Polls `condition` until it holds; panics with `what` after [`PATIENCE`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `router` applied every event every publisher published, in its current
/// incarnation.
pub async fn converge(router: &IngestHandle, publishers: &[&PublisherHandle]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let cursors = router.cursors();
        let behind: Vec<String> = publishers
            .iter()
            .flat_map(|p| p.ranks().iter().map(move |&rank| (p, rank)))
            .filter_map(|(p, rank)| {
                let want = p.last_seq(rank).unwrap();
                let have = cursors.iter().find(|c| c.rank == rank && c.incarnation == p.incarnation());
                match have {
                    Some(c) if c.applied_seq == want => None,
                    other => Some(format!("{rank}: at {:?} of {want}", other.map(|c| c.applied_seq))),
                }
            })
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "router did not converge: {behind:?}; metrics {:?}",
            router.metrics().snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every chain of the workload gets the same overlaps, in every tier, from `router` and
/// from `expected`.
pub fn assert_same_lookups(router: &Router, expected: &ReferenceSink) {
    let mut nonzero = 0;
    for tier in StorageTier::ALL {
        for (i, chain) in chains().iter().enumerate() {
            let got = router.tier_index(tier).find_matches(chain).sorted();
            let want = expected.find_matches(tier, chain);
            assert_eq!(got, want, "{tier:?} lookup of request {i}");
            nonzero += usize::from(!want.is_empty());
        }
    }
    assert!(nonzero > 0, "the workload left something cached");
}

/// The same for a reference-model router.
pub fn assert_same_reference(got: &ReferenceSink, expected: &ReferenceSink) {
    for tier in StorageTier::ALL {
        for (i, chain) in chains().iter().enumerate() {
            assert_eq!(got.find_matches(tier, chain), expected.find_matches(tier, chain), "{tier:?} request {i}");
        }
    }
}

/// Binds `addr` again (a restarted router), retrying while the old socket lingers.
pub async fn restart_router(config: IngestConfig, sink: Arc<dyn IngestSink>) -> IngestHandle {
    let addr: SocketAddr = config.listen;
    let deadline = Instant::now() + PATIENCE;
    loop {
        match IngestServer::start(config.clone(), sink.clone()) {
            Ok(handle) => return handle,
            Err(error) => {
                assert!(Instant::now() < deadline, "cannot bind {addr} again: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A `kvroute serve` configuration whose snapshot file is `path`: the daemon's snapshot
/// steps (`serve::snapshots`) take one. Only its snapshot settings are used here (the
/// routers and ingests are the tests' own).
pub fn serve_config_with_snapshot(path: &Path) -> ServeConfig {
    let options = ServeOptions {
        snapshot_path: Some(path.to_owned()),
        tls: TlsOptions { insecure_loopback: Some(true), ..TlsOptions::default() },
        ..ServeOptions::default()
    };
    ServeConfig::resolve(options).unwrap()
}

/// Shuts `ingest` and `router` down the way `kvroute serve` does: the cursors are read,
/// the ingest stops, and the final snapshot (`snapshots::write_final`: the router's
/// encoding with those cursors, written by `write_snapshot_file` to a temporary file,
/// fsynced and renamed) goes to `config`'s file. The router is then dropped, and this
/// waits until nothing holds it any more: a restart has to build a new one. Returns the
/// address the ingest listened on and the cursors saved.
pub async fn shut_down_with_snapshot(
    config: &ServeConfig,
    ingest: IngestHandle,
    router: Arc<Router>,
) -> (SocketAddr, Vec<RankCursorState>) {
    let addr = ingest.local_addr();
    let cursors = ingest.cursors();
    ingest.shutdown().await;
    let status = snapshots::SnapshotStatus::default();
    let saved = cursors.clone();
    let cursor_of: snapshots::CursorSource = Arc::new(move |rank| saved.iter().find(|c| c.rank == rank).copied());
    snapshots::write_final(config, Arc::clone(&router), cursor_of, &status).await.unwrap();
    let old = Arc::downgrade(&router);
    drop(router);
    wait_until("the old router to be freed", || old.strong_count() == 0).await;
    (addr, cursors)
}

/// Starts a router the way `kvroute serve` does: a new `Router` knowing the configured
/// `workers`, restored from `config`'s snapshot file (`snapshots::restore`: memory map,
/// checksum, restore; a bad file is ignored). Returns it with the restored cursors, sorted
/// by rank, for its ingest to resume from.
pub fn restore_router(config: &ServeConfig, workers: &[u64]) -> (Arc<Router>, Vec<RankCursorState>) {
    let restored = router(workers);
    let mut cursors = snapshots::restore(config, &restored, &snapshots::SnapshotStatus::default()).unwrap();
    cursors.sort_by_key(|c| c.rank);
    (restored, cursors)
}

/// Stops publishers that tried to connect while no router listened, in order
/// (`shutdown`). Their endpoints still hold those unanswered handshakes, which the
/// shutdown does not wait out (see `a_publisher_shuts_down_at_once_while_its_router_does_not_answer`).
pub async fn stop_after_outage(publishers: &[&PublisherHandle]) {
    for publisher in publishers {
        publisher.shutdown().await;
    }
}
