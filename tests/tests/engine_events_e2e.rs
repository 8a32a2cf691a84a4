//! The engines' own KV events over real ZeroMQ sockets on loopback, into a router.
//!
//! Each test runs stand-in engines ([`EnginePublisher`]: a PUB per DP rank on consecutive
//! ports, a replay ROUTER per rank, fault injection) that publish engine-format batches
//! (`encode_batch`, vLLM and SGLang encodings) built from a model engine: chains of
//! random tokens stored from the root or under a held block, held blocks evicted (leaves
//! and holes). The router subscribes with [`EngineIngest`] (`kvroute serve
//! --engine-events`'s machinery). After each scenario the router's index is compared with
//! the reference model fed the same engine events as index events: equal where nothing
//! was lost for good, never above it where the rank had to be cleared.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvroute_bench::rng::Rng;
use kvroute_core::engine_events::block_mapper::MapperConfig;
use kvroute_core::engine_events::encode::{encode_batch, EngineFormat};
use kvroute_core::engine_events::{BlockRemoved, BlockStored, EngineEvent, EventBatch, Medium};
use kvroute_core::event::{KvEvent, KvEventData, StoredBlock};
use kvroute_core::hashing::{xxh3_64_with_seed, BlockHasher, BlockIdentity};
use kvroute_core::ingest::IngestSink;
use kvroute_core::reference::ReferenceIndex;
use kvroute_core::route::{Prompt, Router, RouterConfig, WorkerSpec};
use kvroute_core::tier::StorageTier;
use kvroute_core::{BlockHash, EngineHash, RankKey, WorkerId};
use kvroute_net::engine_ingest::{EngineIngest, EngineIngestConfig, EngineKind, EngineSource};
use kvroute_net::engine_zmq::{EngineEndpoint, EnginePublisher, EnginePublisherOptions};
use kvroute_tests::ports::free_base_port;

const BLOCK: usize = 16;
const DP: u32 = 2;

/// One engine rank's cache, as the engine sees it: held blocks by hash, with their token
/// paths from the root.
#[derive(Default)]
struct EngineRank {
    /// hash -> (parent, the block's whole token path from the root)
    held: HashMap<u64, (Option<u64>, Vec<u32>)>,
    /// Every path ever stored, for probes.
    paths: Vec<Vec<u32>>,
}

impl EngineRank {
    fn block_hash(parent: Option<u64>, tokens: &[u32], lora: Option<&str>) -> u64 {
        let mut bytes = parent.unwrap_or(1).to_le_bytes().to_vec();
        bytes.extend(tokens.iter().flat_map(|t| t.to_le_bytes()));
        bytes.extend(lora.unwrap_or("").as_bytes());
        xxh3_64_with_seed(&bytes, 99)
    }

    /// A random event: mostly stores (from the root or under a held block), some evictions.
    fn event(&mut self, rng: &mut Rng) -> EngineEvent {
        let mut sorted: Vec<u64> = self.held.keys().copied().collect();
        sorted.sort_unstable();
        if !sorted.is_empty() && rng.below(3) == 0 {
            let hash = sorted[rng.below(sorted.len() as u64) as usize];
            self.held.remove(&hash);
            return EngineEvent::Removed(BlockRemoved {
                block_hashes: vec![hash],
                medium: Some(Medium::Gpu),
                group_idx: Some(0),
            });
        }
        let (mut parent, mut path) = if sorted.is_empty() || rng.below(2) == 0 {
            (None, Vec::new())
        } else {
            let hash = sorted[rng.below(sorted.len() as u64) as usize];
            (Some(hash), self.held[&hash].1.clone())
        };
        let first_parent = parent;
        let mut stored = BlockStored {
            parent: first_parent,
            block_size: BLOCK as u32,
            medium: Some(Medium::Gpu),
            ..BlockStored::default()
        };
        // A small vocabulary at the start, so that chains share prefixes across ranks.
        for _ in 0..1 + rng.below(4) {
            let tokens: Vec<u32> =
                (0..BLOCK).map(|i| if path.is_empty() && i < 8 { 7 } else { rng.below(50_000) as u32 }).collect();
            path.extend_from_slice(&tokens);
            let hash = Self::block_hash(parent, &path, None);
            self.held.insert(hash, (parent, path.clone()));
            self.paths.push(path.clone());
            stored.block_hashes.push(hash);
            stored.token_ids.extend_from_slice(&tokens);
            parent = Some(hash);
        }
        stored.into()
    }
}

/// The index events a correct router applies for an engine event.
fn reference_events(event: &EngineEvent, hasher: &BlockHasher) -> Vec<KvEventData> {
    match event {
        EngineEvent::Stored(s) => {
            let identity = BlockIdentity { lora_name: s.lora_name.as_deref(), ..BlockIdentity::default() };
            let mut contents = Vec::new();
            hasher.hash_blocks_with_into(&s.token_ids, &identity, &mut contents);
            let blocks = s
                .block_hashes
                .iter()
                .zip(contents)
                .map(|(&e, c)| StoredBlock { engine_hash: EngineHash(e), content_hash: c })
                .collect();
            vec![KvEventData::Stored { parent: s.parent.map(EngineHash), blocks }]
        }
        EngineEvent::Removed(r) => {
            vec![KvEventData::Removed { blocks: r.block_hashes.iter().map(|&h| EngineHash(h)).collect() }]
        }
        EngineEvent::AllCleared => vec![KvEventData::Cleared],
    }
}

/// One worker's engine ranks and their model state.
struct Engine {
    worker: u64,
    format: EngineFormat,
    ranks: Vec<(EnginePublisher, EngineRank)>,
    pub_base: u16,
    replay_base: Option<u16>,
}

impl Engine {
    async fn start(worker: u64, format: EngineFormat, replay: bool) -> Engine {
        let pub_base = free_base_port(DP as u16);
        let replay_base = replay.then(|| free_base_port(DP as u16));
        let mut ranks = Vec::new();
        for r in 0..DP as u16 {
            let pub_addr = format!("tcp://127.0.0.1:{}", pub_base + r);
            let replay_addr = replay_base.map(|b| format!("tcp://127.0.0.1:{}", b + r));
            let publisher = EnginePublisher::bind(&pub_addr, replay_addr.as_deref(), EnginePublisherOptions::default())
                .await
                .expect("engine publisher");
            ranks.push((publisher, EngineRank::default()));
        }
        Engine { worker, format, ranks, pub_base, replay_base }
    }

    fn source(&self) -> EngineSource {
        EngineSource {
            worker: WorkerId(self.worker),
            ranks: 0..DP,
            endpoint: EngineEndpoint::connect(&format!("tcp://127.0.0.1:{}", self.pub_base)).unwrap(),
            replay: self.replay_base.map(|b| EngineEndpoint::connect(&format!("tcp://127.0.0.1:{b}")).unwrap()),
            topic: String::new(),
            engine: EngineKind::Vllm,
            page_size: None,
        }
    }

    /// Publishes one batch of random events on `rank` (live, or buffered for replay only
    /// when `dropped`), recording it in the reference.
    async fn publish(&mut self, rank: u32, rng: &mut Rng, dropped: bool, model: &mut Model) {
        let (publisher, state) = &mut self.ranks[rank as usize];
        let events: Vec<EngineEvent> = (0..1 + rng.below(3)).map(|_| state.event(rng)).collect();
        let key = RankKey::new(self.worker, rank);
        for event in &events {
            for data in reference_events(event, &model.hasher) {
                model.apply(key, data);
            }
        }
        let batch = EventBatch { ts: 1.0, events, dp_rank: Some(rank), unknown_events: 0 };
        let payload = encode_batch(&batch, self.format);
        if dropped {
            publisher.publish_dropped(Bytes::new(), payload).await;
        } else {
            publisher.publish(Bytes::new(), payload).await;
        }
    }

    fn paths(&self) -> Vec<Vec<u32>> {
        self.ranks.iter().flat_map(|(_, s)| s.paths.iter().cloned()).collect()
    }
}

/// The reference index, fed the engines' events as index events.
struct Model {
    index: ReferenceIndex,
    hasher: BlockHasher,
    next_id: u64,
}

impl Model {
    fn new(workers: &[u64]) -> Model {
        let mut index = ReferenceIndex::new();
        for &w in workers {
            for r in 0..DP {
                index.register_rank(RankKey::new(w, r));
            }
        }
        Model { index, hasher: BlockHasher::new(BLOCK).unwrap(), next_id: 0 }
    }
    fn apply(&mut self, rank: RankKey, data: KvEventData) {
        self.next_id += 1;
        self.index.apply(&KvEvent { rank, event_id: self.next_id, data });
    }
}

struct RouterSide {
    router: Arc<Router>,
    ingest: Arc<EngineIngest>,
}

fn router_side(workers: &[u64]) -> RouterSide {
    let router = Arc::new(Router::new(RouterConfig::default(), Arc::new(|| 0u64)).expect("router"));
    for &w in workers {
        router.add_worker(WorkerSpec::new(WorkerId(w), DP, BLOCK as u32)).expect("worker");
    }
    let sink: Arc<dyn IngestSink> = router.clone();
    let mut config = EngineIngestConfig::new(MapperConfig::new(BlockHasher::new(BLOCK).unwrap()));
    config.replay.timeout = Duration::from_millis(500);
    RouterSide { ingest: EngineIngest::new(config, sink), router }
}

/// Waits until every rank's subscriber is connected.
async fn wait_connected(side: &RouterSide, ranks: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = side.ingest.snapshot();
        if snapshot.ranks.len() == ranks && snapshot.ranks.iter().all(|r| r.connected) {
            // The subscription message follows the connection: give it a moment.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
        assert!(Instant::now() < deadline, "subscribers not connected: {:?}", snapshot.ranks);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every rank applied its engine's last batch.
async fn wait_caught_up(side: &RouterSide, engines: &[&Engine]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let snapshot = side.ingest.snapshot();
        let done = engines.iter().all(|e| {
            e.ranks.iter().enumerate().all(|(r, (p, _))| {
                let rank = RankKey::new(e.worker, r as u32);
                let want = p.next_seq().checked_sub(1);
                snapshot.ranks.iter().any(|s| s.rank == rank && s.last_seq == want)
            })
        });
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "router did not catch up: {:?}", snapshot);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every probe's overlaps on the router, against the model's.
fn compare(side: &RouterSide, model: &Model, engines: &[&Engine], exact: bool) {
    let hasher = BlockHasher::new(BLOCK).unwrap();
    let mut probes = 0;
    for engine in engines {
        for path in engine.paths() {
            let hashes: Vec<BlockHash> = hasher.hash_blocks(&path);
            let got = side.router.tier_index(StorageTier::Device).find_matches(&hashes).sorted();
            let want = model.index.find_matches(&hashes);
            if exact {
                assert_eq!(got, want, "probe of {} blocks", hashes.len());
            } else {
                for (rank, overlap) in &got {
                    let expected = want.iter().find(|(r, _)| r == rank).map_or(0, |w| w.1);
                    assert!(*overlap <= expected, "over-credit: {rank} {overlap} > {expected}");
                }
            }
            probes += 1;
        }
    }
    assert!(probes > 20, "too few probes: {probes}");
}

async fn publish_round(engines: &mut [Engine], rng: &mut Rng, batches: usize, model: &mut Model) {
    for _ in 0..batches {
        for engine in engines.iter_mut() {
            for r in 0..DP {
                engine.publish(r, rng, false, model).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_two_workers_two_ranks_equal_the_reference() {
    let mut engines = vec![
        Engine::start(1, EngineFormat::VllmMap, true).await,
        Engine::start(2, EngineFormat::SglangArray, true).await,
    ];
    let side = router_side(&[1, 2]);
    let mut model = Model::new(&[1, 2]);
    for e in &engines {
        side.ingest.add(e.source()).expect("subscribe");
    }
    wait_connected(&side, 4).await;
    let mut rng = Rng::new(1, 0);
    publish_round(&mut engines, &mut rng, 30, &mut model).await;
    wait_caught_up(&side, &engines.iter().collect::<Vec<_>>()).await;
    compare(&side, &model, &engines.iter().collect::<Vec<_>>(), true);
    let s = side.ingest.snapshot();
    assert_eq!(s.seq.unrecovered_batches, 0);
    assert!(s.stream.block_events_applied > 0);
    assert!(side.router.is_exact(WorkerId(1)).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_batch_is_replayed_and_the_index_stays_exact() {
    let mut engine = Engine::start(3, EngineFormat::VllmArray, true).await;
    let side = router_side(&[3]);
    let mut model = Model::new(&[3]);
    side.ingest.add(engine.source()).expect("subscribe");
    wait_connected(&side, 2).await;
    let mut rng = Rng::new(2, 0);
    for i in 0..40 {
        for r in 0..DP {
            engine.publish(r, &mut rng, i % 7 == 3, &mut model).await;
        }
    }
    wait_caught_up(&side, &[&engine]).await;
    compare(&side, &model, &[&engine], true);
    let s = side.ingest.snapshot();
    assert!(s.seq.gaps > 0 && s.seq.replays_requested > 0, "{s:?}");
    assert_eq!(s.seq.unrecovered_batches, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_replay_socket_a_gap_clears_the_rank_and_never_over_credits() {
    let mut engine = Engine::start(4, EngineFormat::SglangMap, false).await;
    let side = router_side(&[4]);
    let mut model = Model::new(&[4]);
    side.ingest.add(engine.source()).expect("subscribe");
    wait_connected(&side, 2).await;
    let mut rng = Rng::new(3, 0);
    for i in 0..30 {
        for r in 0..DP {
            engine.publish(r, &mut rng, i == 10, &mut model).await;
        }
    }
    wait_caught_up(&side, &[&engine]).await;
    compare(&side, &model, &[&engine], false);
    let s = side.ingest.snapshot();
    assert!(s.stream.clears.iter().any(|&(reason, n)| reason == "gap_no_replay" && n >= 2), "{s:?}");
    assert!(s.seq.unrecovered_batches >= 2, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_restart_clears_the_rank_and_starts_over() {
    let mut engine = Engine::start(5, EngineFormat::VllmMap, true).await;
    let side = router_side(&[5]);
    let mut model = Model::new(&[5]);
    side.ingest.add(engine.source()).expect("subscribe");
    wait_connected(&side, 2).await;
    let mut rng = Rng::new(4, 0);
    publish_round(std::slice::from_mut(&mut engine), &mut rng, 15, &mut model).await;
    wait_caught_up(&side, &[&engine]).await;
    // Rank 0's engine restarts: an empty cache, batch numbers from 0 again.
    engine.ranks[0].0.restart().await.expect("restart");
    engine.ranks[0].1 = EngineRank::default();
    model.apply(RankKey::new(5, 0), KvEventData::Cleared);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        engine.publish(0, &mut rng, false, &mut model).await;
    }
    wait_caught_up(&side, &[&engine]).await;
    compare(&side, &model, &[&engine], true);
    let s = side.ingest.snapshot();
    assert!(s.seq.restarts >= 1 || s.stream.clears.iter().any(|&(r, _)| r == "restart"), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joining_router_replays_from_zero() {
    let mut engine = Engine::start(6, EngineFormat::SglangMap, true).await;
    let mut model = Model::new(&[6]);
    let mut rng = Rng::new(5, 0);
    // Published before any router listens: only the replay buffer has them.
    publish_round(std::slice::from_mut(&mut engine), &mut rng, 20, &mut model).await;
    let side = router_side(&[6]);
    side.ingest.add(engine.source()).expect("subscribe");
    wait_connected(&side, 2).await;
    publish_round(std::slice::from_mut(&mut engine), &mut rng, 5, &mut model).await;
    wait_caught_up(&side, &[&engine]).await;
    compare(&side, &model, &[&engine], true);
    assert_eq!(side.ingest.snapshot().seq.unrecovered_batches, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dropped_by_reason_and_nothing_else_changes() {
    let mut engine = Engine::start(7, EngineFormat::VllmMap, true).await;
    let side = router_side(&[7]);
    let mut model = Model::new(&[7]);
    side.ingest.add(engine.source()).expect("subscribe");
    wait_connected(&side, 2).await;
    let mut rng = Rng::new(6, 0);
    let garbage: Vec<Vec<Bytes>> = vec![
        vec![Bytes::new(), Bytes::from_static(b"short")],
        vec![Bytes::new(), Bytes::from_static(&[0; 9]), Bytes::from_static(b"\x93")],
        vec![Bytes::new(), Bytes::copy_from_slice(&u64::MAX.to_be_bytes()), Bytes::from_static(b"\x93\xcb")],
        vec![Bytes::new(), Bytes::copy_from_slice(&5u64.to_be_bytes()), Bytes::from_static(b"\xc1\xc1\xc1")],
    ];
    for i in 0..20 {
        for r in 0..DP {
            engine.publish(r, &mut rng, false, &mut model).await;
            engine.ranks[r as usize].0.send_raw(garbage[i % garbage.len()].clone()).await;
        }
    }
    wait_caught_up(&side, &[&engine]).await;
    compare(&side, &model, &[&engine], true);
    let s = side.ingest.snapshot();
    let dropped: u64 = s.stream.dropped.iter().map(|d| d.1).sum();
    assert_eq!(dropped, 40, "{s:?}");
    assert!(s.stream.dropped.len() >= 2, "several reasons: {:?}", s.stream.dropped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_blocks_are_not_credited_to_a_plain_request() {
    let engine = Engine::start(8, EngineFormat::VllmMap, true).await;
    let side = router_side(&[8]);
    side.ingest.add(engine.source()).expect("subscribe");
    wait_connected(&side, 2).await;
    let tokens: Vec<u32> = (0..64).collect();
    let hashes: Vec<u64> = (0..4).map(|i| 1000 + i).collect();
    let stored = BlockStored {
        block_hashes: hashes,
        token_ids: tokens.clone(),
        block_size: BLOCK as u32,
        lora_id: Some(1),
        medium: Some(Medium::Gpu),
        lora_name: Some("adapter-1".into()),
        extra_keys: Some(vec![Some(vec![kvroute_core::hashing::KeyValue::Str("adapter-1".into())]); 4]),
        ..BlockStored::default()
    };
    let batch = EventBatch { ts: 0.0, events: vec![stored.into()], dp_rank: Some(0), unknown_events: 0 };
    engine.ranks[0].0.publish(Bytes::new(), encode_batch(&batch, EngineFormat::VllmMap)).await;
    wait_caught_up(&side, &[&engine]).await;
    let (plain, _) = side.router.overlaps(Prompt::Tokens(&tokens)).expect("overlaps");
    assert!(plain.is_empty(), "{plain:?}");
    let identity = BlockIdentity { lora_name: Some("adapter-1"), ..BlockIdentity::default() };
    let (lora, _) = side.router.overlaps(Prompt::TokensWith(&tokens, identity)).expect("overlaps");
    assert_eq!(lora, vec![(StorageTier::Device, RankKey::new(8, 0), 4)]);
}

/// Polls until the router's index equals the model on every probe (or fails at the deadline).
async fn wait_equal(router: &Router, model: &Model, engine: &Engine) {
    let hasher = BlockHasher::new(BLOCK).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mismatch = engine.paths().into_iter().find(|path| {
            let hashes = hasher.hash_blocks(path);
            router.tier_index(StorageTier::Device).find_matches(&hashes).sorted() != model.index.find_matches(&hashes)
        });
        let Some(path) = mismatch else { return };
        assert!(Instant::now() < deadline, "the router never matched the model on a {}-token probe", path.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_carries_engine_events_over_quic_and_a_restarted_router_warms_up_by_dump() {
    use kvroute_net::bridge::{BridgeConfig, BridgeHandle};
    use kvroute_net::transport::{Backoff, IngestConfig, IngestServer, PublisherConfig, RouterTarget, TlsMode};

    let mut engine = Engine::start(9, EngineFormat::SglangMap, true).await;
    let mut model = Model::new(&[9]);
    let new_router = || {
        let router = Arc::new(Router::new(RouterConfig::default(), Arc::new(|| 0u64)).expect("router"));
        router.add_worker(WorkerSpec::new(WorkerId(9), DP, BLOCK as u32)).expect("worker");
        router
    };
    let router = new_router();
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let ingest =
        IngestServer::start(IngestConfig::new(listen, TlsMode::InsecureLoopback), router.clone()).expect("ingest");
    let addr = ingest.local_addr();

    let mut publisher = PublisherConfig::new(
        "bridge-test",
        vec![RouterTarget::new(addr, "localhost")],
        TlsMode::InsecureLoopback,
        Vec::new(),
    );
    publisher.reconnect = Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(200) };
    publisher.heartbeat_interval = Duration::from_millis(100);
    let bridge = BridgeHandle::start(BridgeConfig {
        sources: vec![engine.source()],
        publisher,
        ingest: EngineIngestConfig::new(MapperConfig::new(BlockHasher::new(BLOCK).unwrap())),
    })
    .expect("bridge");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bridge.engines().snapshot().ranks.iter().all(|r| r.connected) {
        assert!(Instant::now() < deadline, "bridge subscribers not connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut rng = Rng::new(7, 0);
    publish_round(std::slice::from_mut(&mut engine), &mut rng, 20, &mut model).await;
    wait_equal(&router, &model, &engine).await;

    // The router restarts with an empty index: the bridge's publisher dumps every rank.
    ingest.shutdown().await;
    let router = new_router();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ingest = loop {
        match IngestServer::start(IngestConfig::new(addr, TlsMode::InsecureLoopback), router.clone()) {
            Ok(ingest) => break ingest,
            Err(error) => {
                assert!(Instant::now() < deadline, "cannot bind {addr} again: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    publish_round(std::slice::from_mut(&mut engine), &mut rng, 5, &mut model).await;
    wait_equal(&router, &model, &engine).await;
    assert!(ingest.metrics().snapshot().dumps >= u64::from(DP), "{:?}", ingest.metrics().snapshot());
    bridge.shutdown().await;
    ingest.shutdown().await;
}
