//! The engine simulator over real sockets: HTTP requests in (OpenAI completions and chat,
//! SGLang /generate, streaming and not), its KV events out over ZeroMQ into a router
//! subscribed as `kvroute serve --engine-events` subscribes ([`EngineIngest`]).
//!
//! After the requests, the router's index must credit every rank with exactly the prefix
//! the simulator's cache holds (the reference here is the simulator's own cache, which
//! core's property test ties to the engine-event mapping); the rank that served is the
//! one the request named; a repeated prompt is reported cached; a client that goes away
//! frees its rank; bad requests get OpenAI-style errors and change nothing; a P/D prefill
//! request that names no rank is served on the rank its room names, where decode looks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvroute_bench::rng::Rng;
use kvroute_core::engine_events::block_mapper::MapperConfig;
use kvroute_core::hashing::{BlockHasher, BlockIdentity};
use kvroute_core::ingest::IngestSink;
use kvroute_core::route::{Router, RouterConfig, WorkerSpec};
use kvroute_core::tier::StorageTier;
use kvroute_core::{RankKey, WorkerId};
use kvroute_net::engine_ingest::{EngineIngest, EngineIngestConfig, EngineKind as IngestKind, EngineSource};
use kvroute_net::engine_sim::{EngineKind, EngineSim};
use kvroute_tests::http_client::{read_frames, HttpClient};
use kvroute_tests::sims::{self, SimShape, ADAPTER};
use serde_json::json;

const ROUTER_BLOCK: u32 = 16;
const WORKER: u64 = 7;

async fn start_sim(
    kind: EngineKind,
    dp_size: u32,
    block_size: u32,
    capacity_blocks: usize,
    decode: Duration,
) -> EngineSim {
    sims::start_sim(SimShape { kind, dp_size, block_size, capacity_blocks, decode, ..SimShape::vllm(dp_size) }).await
}

/// A router with the simulator's worker, subscribed to its ranks' events.
fn subscribe(
    sim: &EngineSim,
    dp_size: u32,
    kind: IngestKind,
    page_size: Option<u32>,
) -> (Arc<Router>, Arc<EngineIngest>) {
    let router = Arc::new(Router::new(RouterConfig::default(), Arc::new(|| 0u64)).expect("router"));
    router.add_worker(WorkerSpec::new(WorkerId(WORKER), dp_size, ROUTER_BLOCK)).expect("worker");
    let sink: Arc<dyn IngestSink> = router.clone();
    let ingest = EngineIngest::new(
        EngineIngestConfig::new(MapperConfig::new(BlockHasher::new(ROUTER_BLOCK as usize).unwrap())),
        sink,
    );
    ingest
        .add(EngineSource {
            worker: WorkerId(WORKER),
            ranks: 0..dp_size,
            endpoint: sim.subscriber_endpoint(0).expect("rank 0 publishes"),
            replay: sim.replay_endpoint(0),
            topic: String::new(),
            engine: kind,
            page_size,
        })
        .expect("subscribe");
    (router, ingest)
}

async fn wait_connected(ingest: &EngineIngest, ranks: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = ingest.snapshot();
        if snapshot.ranks.len() == ranks && snapshot.ranks.iter().all(|r| r.connected) {
            // The subscription message follows the connection: give it a moment.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return;
        }
        assert!(Instant::now() < deadline, "subscribers not connected: {:?}", snapshot.ranks);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the router applied every batch the simulator queued.
async fn wait_caught_up(sim: &EngineSim, ingest: &EngineIngest) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let snapshot = ingest.snapshot();
        let applied: u64 = snapshot.ranks.iter().map(|r| r.last_seq.map_or(0, |seq| seq + 1)).sum();
        if applied == sim.batches_queued() {
            assert_eq!(snapshot.seq.unrecovered_batches, 0);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "router applied {applied} of {} batches: {snapshot:?}",
            sim.batches_queued()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// For every prompt and rank, the router's overlap equals the simulator's held prefix
/// (in router blocks: `engine_block / router_block` engine blocks each... or, when the
/// engine's pages are smaller, the held tokens over the router's block).
fn assert_router_matches_sim(
    router: &Router,
    sim: &EngineSim,
    dp_size: u32,
    engine_block: u32,
    prompts: &[(Vec<u32>, Option<&str>)],
) {
    let hasher = BlockHasher::new(ROUTER_BLOCK as usize).unwrap();
    let mut credited_somewhere = 0;
    for (tokens, lora) in prompts {
        let mut hashes = Vec::new();
        hasher.hash_blocks_with_into(
            tokens,
            &BlockIdentity { lora_name: *lora, ..BlockIdentity::default() },
            &mut hashes,
        );
        let matches = router.tier_index(StorageTier::Device).find_matches(&hashes).sorted();
        for rank in 0..dp_size {
            let got = matches.iter().find(|(key, _)| *key == RankKey::new(WORKER, rank)).map_or(0, |m| m.1);
            let held_tokens = sim.held_prefix_blocks(rank, tokens, *lora).unwrap() * engine_block as usize;
            let want = (held_tokens / ROUTER_BLOCK as usize) as u32;
            assert_eq!(got, want, "rank {rank}, prompt of {} tokens, lora {lora:?}", tokens.len());
            credited_somewhere += usize::from(got > 0);
        }
    }
    assert!(credited_somewhere > prompts.len() / 4, "too little was cached to check: {credited_somewhere}");
}

/// Prompts over a few shared prefixes, so that ranks share and evict blocks.
fn prompt(rng: &mut Rng, prefixes: &[Vec<u32>]) -> Vec<u32> {
    let mut tokens = prefixes[rng.below(prefixes.len() as u64) as usize].clone();
    tokens.truncate(16 * (1 + rng.below(tokens.len() as u64 / 16)) as usize);
    tokens.extend((0..rng.below(100)).map(|_| rng.below(50_000) as u32));
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routers_index_follows_the_simulated_vllm_over_zeromq() {
    let dp_size = 2;
    // 40 blocks per rank: the prompts below need more, so ranks evict.
    let sim = start_sim(EngineKind::Vllm, dp_size, 16, 40, Duration::ZERO).await;
    let (router, ingest) = subscribe(&sim, dp_size, IngestKind::Vllm, None);
    wait_connected(&ingest, dp_size as usize).await;
    let base = format!("http://{}", sim.http_address());
    let client = HttpClient::default();
    let mut rng = Rng::new(11, 0);
    let prefixes: Vec<Vec<u32>> = (0..4).map(|_| (0..320).map(|_| rng.below(50_000) as u32).collect()).collect();
    let mut sent: Vec<(Vec<u32>, Option<&str>)> = Vec::new();
    for i in 0..60 {
        let tokens = prompt(&mut rng, &prefixes);
        let rank = rng.below(u64::from(dp_size)).to_string();
        let lora = (i % 5 == 4).then_some(ADAPTER);
        let model = lora.unwrap_or("kvroute-sim");
        let stream = i % 3 == 0;
        let body = json!({"model": model, "prompt": tokens, "max_tokens": 2, "stream": stream,
            "stream_options": {"include_usage": true}});
        let reply =
            client.post_json(&format!("{base}/v1/completions"), &body, &[("X-data-parallel-rank", &rank)]).await;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.header("x-kvroute-sim-dp-rank"), Some(rank.as_str()), "served on the rank the header named");
        let usage = if stream {
            let events = reply.sse_data();
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
            serde_json::from_str::<serde_json::Value>(&events[events.len() - 2]).unwrap()["usage"].clone()
        } else {
            reply.json()["usage"].clone()
        };
        assert_eq!(usage["prompt_tokens"], tokens.len());
        assert_eq!(usage["completion_tokens"], 2);
        sent.push((tokens, lora));
    }
    wait_caught_up(&sim, &ingest).await;
    assert_router_matches_sim(&router, &sim, dp_size, 16, &sent);

    // A prompt sent twice to one rank is reported cached the second time, as the router
    // credits it; a plain request gets nothing from the adapter's blocks.
    let tokens: Vec<u32> = (1000..1100).collect();
    let send = |model: &'static str| {
        let (client, url, tokens) = (client.clone(), format!("{base}/v1/completions"), tokens.clone());
        async move {
            let reply = client
                .post_json(&url, &json!({"model": model, "prompt": tokens}), &[("x-data-parallel-rank", "1")])
                .await;
            reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()
        }
    };
    assert_eq!(send(ADAPTER).await, 0);
    assert_eq!(send(ADAPTER).await, 96, "six full blocks of the 100 tokens");
    assert_eq!(send("kvroute-sim").await, 0, "the adapter's blocks are not the base model's");
    wait_caught_up(&sim, &ingest).await;
    assert_router_matches_sim(&router, &sim, dp_size, 16, &[(tokens.clone(), Some(ADAPTER)), (tokens, None)]);
    assert!(ingest.snapshot().stream.dropped.iter().all(|(_, n)| *n == 0), "no message dropped");
    assert!(sim.stats().iter().all(|s| s.in_flight == 0));
    ingest.shutdown(Duration::from_secs(2)).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sglang_pages_of_one_token_reach_the_router_as_its_blocks() {
    let dp_size = 2;
    let sim = start_sim(EngineKind::Sglang, dp_size, 1, 600, Duration::ZERO).await;
    let (router, ingest) = subscribe(&sim, dp_size, IngestKind::Sglang, Some(1));
    wait_connected(&ingest, dp_size as usize).await;
    let base = format!("http://{}", sim.http_address());
    let client = HttpClient::default();
    let mut rng = Rng::new(5, 0);
    let prefixes: Vec<Vec<u32>> = (0..3).map(|_| (0..200).map(|_| rng.below(50_000) as u32).collect()).collect();
    let mut sent = Vec::new();
    for i in 0..30 {
        let tokens = prompt(&mut rng, &prefixes);
        let rank = rng.below(u64::from(dp_size)) as u32;
        let field = if i % 2 == 0 { "routed_dp_rank" } else { "data_parallel_rank" };
        let mut body = json!({"input_ids": tokens, "sampling_params": {"max_new_tokens": 1}, "stream": i % 4 == 0});
        body[field] = json!(rank);
        let reply = client.post_json(&format!("{base}/generate"), &body, &[]).await;
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.header("x-kvroute-sim-dp-rank"), Some(rank.to_string().as_str()));
        sent.push((tokens, None));
    }
    wait_caught_up(&sim, &ingest).await;
    assert_router_matches_sim(&router, &sim, dp_size, 1, &sent);
    let info = client.get(&format!("{base}/get_server_info")).await.json();
    assert_eq!((info["dp_size"].as_u64(), info["page_size"].as_u64()), (Some(2), Some(1)));
    ingest.shutdown(Duration::from_secs(2)).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_stream_frees_its_rank() {
    let sim = start_sim(EngineKind::Vllm, 2, 16, 100, Duration::from_millis(20)).await;
    let base = format!("http://{}", sim.http_address());
    let client = HttpClient::default();
    let body = json!({"model": "kvroute-sim", "messages": [{"role": "user", "content": "tell me everything"}],
        "max_tokens": 500, "stream": true})
    .to_string();
    let mut response = client
        .send("POST", &format!("{base}/v1/chat/completions"), &[("x-data-parallel-rank", "1")], body.into())
        .await;
    assert_eq!(response.status(), 200);
    let frames = read_frames(&mut response, 3).await;
    assert_eq!(frames.len(), 3);
    assert!(String::from_utf8_lossy(&frames[0]).contains("\"role\":\"assistant\""));
    assert_eq!(sim.stats()[1].in_flight, 1);
    drop(response);
    let deadline = Instant::now() + Duration::from_secs(5);
    while sim.stats()[1].in_flight != 0 {
        assert!(Instant::now() < deadline, "the rank still counts the abandoned request");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = client.get(&format!("{base}/sim/stats")).await.json();
    assert_eq!((stats["cancelled"].as_u64(), stats["completed"].as_u64()), (Some(1), Some(0)));
    sim.shutdown().await;
}

/// A bad request: body, headers, the status and a piece of the message it must get.
type BadCase = (serde_json::Value, Vec<(&'static str, &'static str)>, u16, &'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_change_nothing() {
    let sim = start_sim(EngineKind::Vllm, 2, 16, 100, Duration::ZERO).await;
    let base = format!("http://{}", sim.http_address());
    let client = HttpClient::default();
    let completions = format!("{base}/v1/completions");
    let cases: Vec<BadCase> = vec![
        (json!({"prompt": "hi"}), vec![("x-data-parallel-rank", "2")], 400, "out of range"),
        (json!({"prompt": "hi"}), vec![("x-data-parallel-rank", "one")], 400, "non-negative integer"),
        (json!({"model": "other", "prompt": "hi"}), vec![], 404, "does not exist"),
        (json!({"prompt": [1, -2]}), vec![], 400, "token ids"),
        (json!({"prompt": ""}), vec![], 400, "no tokens"),
        (json!({"prompt": ["a", "b"]}), vec![], 400, "one prompt"),
        (json!({"prompt": "hi", "max_tokens": 0}), vec![], 400, "max_tokens"),
        (json!({"max_tokens": 3}), vec![], 400, "prompt"),
    ];
    for (body, headers, status, message) in &cases {
        let reply = client.post_json(&completions, body, headers).await;
        assert_eq!(reply.status, *status, "{body}");
        let error = reply.json()["error"].clone();
        assert!(error["message"].as_str().unwrap().contains(message), "{body}: {error}");
        assert_eq!(error["code"], *status);
    }
    let broken = client.exchange("POST", &completions, &[], "{not json".into()).await;
    assert_eq!(broken.status, 400);
    let generate = client
        .post_json(
            &format!("{base}/generate"),
            &json!({"text": "a", "routed_dp_rank": 0, "data_parallel_rank": 1}),
            &[],
        )
        .await;
    assert_eq!(generate.status, 400, "two different ranks");
    let room =
        client.post_json(&format!("{base}/generate"), &json!({"text": "a", "bootstrap_room": u64::MAX}), &[]).await;
    assert_eq!(room.status, 400);
    assert_eq!(client.get(&format!("{base}/no/such/path")).await.status, 404);
    let stats = client.get(&format!("{base}/sim/stats")).await.json();
    assert_eq!(stats["admitted"], 0);
    assert_eq!(stats["refused"].as_u64(), Some(cases.len() as u64 + 3));
    assert!(sim.stats().iter().all(|s| s.requests == 0 && s.blocks_held == 0));
    // And the server still serves.
    assert_eq!(client.post_json(&completions, &json!({"prompt": "fine"}), &[]).await.status, 200);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefill_request_naming_no_rank_follows_its_room_so_the_decode_side_finds_its_kv() {
    use kvroute_net::engine_sim::DisaggregationMode;
    let shape = |disaggregation, dp_size| SimShape {
        kind: EngineKind::Sglang,
        disaggregation,
        events: false,
        ..SimShape::vllm(dp_size)
    };
    let prefill = sims::start_sim(shape(DisaggregationMode::Prefill, 3)).await;
    let decode = sims::start_sim(shape(DisaggregationMode::Decode, 2)).await;
    let client = HttpClient::default();
    for room in [0u64, 1, 2, 5, 7, 9_000_000_000] {
        // As a router that sends no rank (smg's P/D mode does not) sends it: both at once.
        let body = json!({"text": format!("room {room} prompt"), "sampling_params": {"max_new_tokens": 2},
            "bootstrap_host": "127.0.0.1", "bootstrap_port": prefill.http_address().port(), "bootstrap_room": room});
        let (prefill_url, decode_url) = (
            format!("http://{}/generate", prefill.http_address()),
            format!("http://{}/generate", decode.http_address()),
        );
        let (to_prefill, to_decode) =
            tokio::join!(client.post_json(&prefill_url, &body, &[]), client.post_json(&decode_url, &body, &[]));
        assert_eq!(to_prefill.status, 200);
        assert_eq!(to_prefill.header("x-kvroute-sim-dp-rank"), Some((room % 3).to_string().as_str()), "room {room}");
        assert_eq!(to_decode.status, 200, "room {room}: {}", String::from_utf8_lossy(&to_decode.body));
    }
    let stats = client.get(&format!("http://{}/sim/stats", decode.http_address())).await.json();
    assert_eq!((stats["kv_transfers"].as_u64(), stats["kv_transfer_failures"].as_u64()), (Some(6), Some(0)));
    // A named prefill rank against its room: refused while the prefill follows the room ...
    let pinned = |room: u64, port: u16| {
        json!({"text": "pinned", "sampling_params": {"max_new_tokens": 2}, "routed_dp_rank": 0,
            "bootstrap_host": "127.0.0.1", "bootstrap_port": port, "bootstrap_room": room})
    };
    let exchange = async |prefill: &EngineSim, room: u64| {
        let body = pinned(room, prefill.http_address().port());
        let (prefill_url, decode_url) = (
            format!("http://{}/generate", prefill.http_address()),
            format!("http://{}/generate", decode.http_address()),
        );
        let (_, to_decode) =
            tokio::join!(client.post_json(&prefill_url, &body, &[]), client.post_json(&decode_url, &body, &[]));
        to_decode.status
    };
    assert_eq!(exchange(&prefill, 4).await, 500, "rank 0 named, but 4 % 3 = 1");
    assert_eq!(exchange(&prefill, 3).await, 200, "3 % 3 = 0: the named rank");
    prefill.shutdown().await;
    // ... and found through the bootstrap lookup when it does not (smg's P/D sends rank 0).
    let mut config = sims::sim_config(shape(DisaggregationMode::Prefill, 3), "127.0.0.1:0".parse().unwrap());
    config.follow_bootstrap_room = false;
    let by_load = EngineSim::start(config).await.unwrap();
    for room in [1u64, 2, 4, 5] {
        assert_eq!(exchange(&by_load, room).await, 200, "room {room}");
    }
    by_load.shutdown().await;
    decode.shutdown().await;
}
