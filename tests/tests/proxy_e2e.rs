//! The routing proxy end to end over real sockets: clients -> `kvroute serve` (its
//! OpenAI-compatible endpoints) -> simulated engines, their KV events back to the router
//! over ZeroMQ.
//!
//! Checked: a prompt that extends one already served goes to the rank holding its prefix,
//! which is the rank that serves it (the engine's own header says so) and reports it
//! cached; streaming and whole answers, completions and chat (tokenized by the engine, or
//! by the router with the engine's own tokenizer.json and chat template);
//! a client that goes away mid-stream cancels the upstream request; a dead upstream is
//! retried on the next-best rank, taken out of decisions, probed and brought back; an
//! upstream killed under load breaks only its own streams, is routed around, and serves
//! again once it is back; bad
//! requests get OpenAI-style errors; and after all of it every rank's load is zero again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvroute_net::engine_sim::{DisaggregationMode, EngineKind, EngineSim};
use kvroute_net::serve::{ServeConfig, ServeError, ServeOptions};
use kvroute_net::tokenization::{PromptTokenizer, TokenizerSource};
use kvroute_tests::http_client::{read_frames, HttpClient, HttpReply};
use kvroute_tests::sims::{sim_config, start_sim, start_sim_on, SimShape, ADAPTER};
use serde_json::{json, Value};

type Daemon = (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), ServeError>>);

/// `[[workers]]` for a simulator: its url, and its event endpoints when it publishes.
fn worker_toml(worker: u64, sim: &EngineSim, dp_size: u32) -> String {
    let mut toml =
        format!("[[workers]]\nworker_id = {worker}\ndp_size = {dp_size}\nurl = \"http://{}\"\n", sim.http_address());
    if let Some(endpoint) = sim.subscriber_endpoint(0) {
        toml.push_str(&format!("endpoint = \"{endpoint}\"\n"));
    }
    if let Some(replay) = sim.replay_endpoint(0) {
        toml.push_str(&format!("replay = \"{replay}\"\n"));
    }
    toml
}

/// A daemon on an ephemeral port (QUIC ingest on a free UDP port, insecure loopback)
/// with `top` top-level keys, `[proxy]` keys and the workers' tables.
async fn start_daemon(top: &str, proxy: &str, workers: &str) -> Daemon {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let toml = format!(
        "ingest_listen = \"127.0.0.1:{udp}\"\n{top}\n[tls]\ninsecure_loopback = true\n[router]\nroom_seed = 1\n\
         [proxy]\n{proxy}\n{workers}"
    );
    let config = ServeConfig::resolve(ServeOptions::from_toml(&toml).expect("options")).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(kvroute_net::serve::serve_on(config, listener, async move {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

async fn stop_daemon((_, stop, task): Daemon) {
    stop.send(()).expect("running");
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops").expect("task").expect("clean");
}

/// Waits until `check` holds, polling.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every rank's active requests, from `GET /v1/workers`.
async fn active_requests(client: &HttpClient, base: &str) -> Vec<u64> {
    let workers = client.get(&format!("{base}/v1/workers")).await.json();
    workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| {
            w["ranks"].as_array().unwrap().iter().map(|r| r["requests"].as_u64().unwrap()).collect::<Vec<_>>()
        })
        .collect()
}

/// A `/metrics` sample's value (0 when absent).
async fn metric(client: &HttpClient, base: &str, sample: &str) -> f64 {
    let text = String::from_utf8(client.get(&format!("{base}/metrics")).await.body.to_vec()).unwrap();
    text.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// The sum of every sample of a family (all label sets).
async fn metric_sum(client: &HttpClient, base: &str, family: &str) -> f64 {
    let text = String::from_utf8(client.get(&format!("{base}/metrics")).await.body.to_vec()).unwrap();
    let labelled = format!("{family}{{");
    text.lines()
        .filter(|line| line.starts_with(&labelled))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the daemon's subscriptions to `ranks` engine ranks are connected (and their
/// subscription messages had a moment to follow).
async fn wait_subscribed(client: &HttpClient, base: &str, ranks: u32) {
    eventually("engine subscriptions", async || {
        metric_sum(client, base, "kvroute_engine_rank_connected").await >= f64::from(ranks)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
}

fn routed(reply: &HttpReply) -> (u64, u32, u32) {
    let number = |name: &str| reply.header(name).unwrap_or_else(|| panic!("no {name}")).parse::<u64>().unwrap();
    (number("x-kvroute-worker-id"), number("x-kvroute-dp-rank") as u32, number("x-kvroute-overlap-blocks") as u32)
}

fn cached_tokens(reply: &HttpReply, stream: bool) -> u64 {
    let usage = if stream {
        let events = reply.sse_data();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        serde_json::from_str::<Value>(&events[events.len() - 2]).unwrap()["usage"].clone()
    } else {
        reply.json()["usage"].clone()
    };
    usage["prompt_tokens_details"]["cached_tokens"].as_u64().expect("cached_tokens")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_goes_to_the_rank_holding_its_prefix_and_every_load_returns_to_zero() {
    let (sim1, sim2) = (start_sim(SimShape::vllm(2)).await, start_sim(SimShape::vllm(2)).await);
    let daemon = start_daemon("", "", &(worker_toml(1, &sim1, 2) + &worker_toml(2, &sim2, 2))).await;
    let base = format!("http://{}", daemon.0);
    let client = HttpClient::default();
    // The subscriptions connect.
    wait_subscribed(&client, &base, 4).await;

    let mut served = Vec::new();
    for (i, stream) in [false, true, false, true].into_iter().enumerate() {
        let head: Vec<u32> = (0..160).map(|t| t * 7 + i as u32 * 100_000).collect();
        let body = json!({"model": "kvroute-sim", "prompt": head, "max_tokens": 3, "stream": stream,
            "stream_options": {"include_usage": true}});
        let first = client.post_json(&format!("{base}/v1/completions"), &body, &[]).await;
        assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
        let (worker, rank, overlap) = routed(&first);
        assert_eq!(overlap, 0);
        assert_eq!(
            first.header("x-kvroute-sim-dp-rank"),
            Some(rank.to_string().as_str()),
            "the engine served on the chosen rank"
        );
        // Once the engine's events are in, the same prefix plus more goes to that rank.
        let probe = json!({"tokens": head});
        eventually("the prefix in the index", async || {
            let overlaps = client.post_json(&format!("{base}/v1/overlaps"), &probe, &[]).await.json();
            overlaps["overlaps"].as_array().is_some_and(|o| !o.is_empty())
        })
        .await;
        let mut longer = head.clone();
        longer.extend(500_000..500_040);
        let body = json!({"model": "kvroute-sim", "prompt": longer, "max_tokens": 2, "stream": stream,
            "stream_options": {"include_usage": true}});
        let second = client.post_json(&format!("{base}/v1/completions"), &body, &[]).await;
        assert_eq!(second.status, 200);
        assert_eq!(routed(&second), (worker, rank, 10), "160 tokens = 10 blocks held there");
        assert_eq!(second.header("x-kvroute-sim-dp-rank"), Some(rank.to_string().as_str()));
        assert_eq!(cached_tokens(&second, stream), 160, "the engine found the prefix cached");
        served.push((worker, rank));
    }
    // Chat, tokenized by the engine: the second turn extends the first and follows it.
    let turn =
        |text: &str| json!({"model": "kvroute-sim", "messages": [{"role": "user", "content": text}], "max_tokens": 2});
    let long_question = "why ".repeat(60);
    let first = client.post_json(&format!("{base}/v1/chat/completions"), &turn(&long_question), &[]).await;
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    let (worker, rank, _) = routed(&first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = client.post_json(&format!("{base}/v1/chat/completions"), &turn(&long_question), &[]).await;
    let (w2, r2, overlap) = routed(&again);
    assert_eq!((w2, r2), (worker, rank));
    assert!(overlap >= 10, "the rendered chat prompt's blocks are held: {overlap}");
    assert!(again.json()["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() >= 160);
    // Models come from an upstream.
    let models = client.get(&format!("{base}/v1/models")).await;
    assert_eq!(models.json()["data"][0]["id"], "kvroute-sim");

    eventually("every rank idle", async || active_requests(&client, &base).await.iter().all(|&n| n == 0)).await;
    assert!(sim1.stats().iter().chain(sim2.stats().iter()).all(|s| s.in_flight == 0));
    assert_eq!(
        metric(&client, &base, "kvroute_proxy_requests_total{outcome=\"completed\"}").await,
        10.0,
        "8 completions and 2 chats"
    );
    stop_daemon(daemon).await;
    sim1.shutdown().await;
    sim2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_cancels_the_upstream_request_and_frees_its_rank() {
    let sim = start_sim(SimShape { decode: Duration::from_millis(20), ..SimShape::vllm(2) }).await;
    let daemon = start_daemon("", "", &worker_toml(1, &sim, 2)).await;
    let base = format!("http://{}", daemon.0);
    let client = HttpClient::default();
    let body =
        json!({"model": "kvroute-sim", "prompt": (0..64).collect::<Vec<u32>>(), "max_tokens": 1000, "stream": true});
    let mut response = client.send("POST", &format!("{base}/v1/completions"), &[], body.to_string().into()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(read_frames(&mut response, 2).await.len(), 2);
    assert_eq!(active_requests(&client, &base).await.iter().sum::<u64>(), 1);
    drop(response);
    eventually("the router's load released", async || active_requests(&client, &base).await.iter().all(|&n| n == 0))
        .await;
    eventually("the engine's request cancelled", async || sim.stats().iter().all(|s| s.in_flight == 0)).await;
    let stats = client.get(&format!("http://{}/sim/stats", sim.http_address())).await.json();
    assert_eq!(stats["cancelled"], 1);
    assert_eq!(metric(&client, &base, "kvroute_proxy_requests_total{outcome=\"cancelled\"}").await, 1.0);
    stop_daemon(daemon).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_counts_the_requests_another_replica_sent_from_the_engines_metrics() {
    for kind in [EngineKind::Vllm, EngineKind::Sglang] {
        let shape = SimShape { kind, ..SimShape::vllm(2) };
        let sim = start_sim(SimShape { decode: Duration::from_millis(20), ..shape }).await;
        let scrape = "engine_load_interval = \"50ms\"";
        let sender = start_daemon("", scrape, &worker_toml(1, &sim, 2)).await;
        let watcher = start_daemon("", scrape, &worker_toml(1, &sim, 2)).await;
        let (sender_base, watcher_base) = (format!("http://{}", sender.0), format!("http://{}", watcher.0));
        let client = HttpClient::default();
        let body = json!({"model": "kvroute-sim", "prompt": (0..64).collect::<Vec<u32>>(), "max_tokens": 1000, "stream": true});
        let mut response =
            client.send("POST", &format!("{sender_base}/v1/completions"), &[], body.to_string().into()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(read_frames(&mut response, 2).await.len(), 2);
        let rank: usize = response.headers()["x-kvroute-dp-rank"].to_str().unwrap().parse().unwrap();
        let mut expected = vec![0u64; 2];
        expected[rank] = 1;
        // The watcher routed nothing, yet counts the request on the rank that runs it.
        eventually("the engine's load scraped", async || active_requests(&client, &watcher_base).await == expected)
            .await;
        assert_eq!(metric(&client, &watcher_base, "kvroute_active_requests").await, 0.0, "not its own request");
        assert!(metric(&client, &watcher_base, "kvroute_proxy_load_scrapes_total{outcome=\"ok\"}").await >= 1.0);
        // The sender counts it once, not its own plus the engine's.
        assert_eq!(active_requests(&client, &sender_base).await.iter().sum::<u64>(), 1);
        drop(response);
        eventually("the scraped load gone", async || {
            active_requests(&client, &watcher_base).await.iter().all(|&n| n == 0)
        })
        .await;
        stop_daemon(sender).await;
        stop_daemon(watcher).await;
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_retried_elsewhere_taken_out_probed_and_brought_back() {
    let alive = start_sim(SimShape { events: false, ..SimShape::vllm(1) }).await;
    // Worker 1's server is gone: its port was free a moment ago and nothing listens.
    let dead_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let workers =
        format!("[[workers]]\nworker_id = 1\ndp_size = 2\nurl = \"http://{dead_addr}\"\n{}", worker_toml(2, &alive, 1));
    let daemon = start_daemon("", "probe_backoff = \"100ms\"\nprobe_max_backoff = \"200ms\"", &workers).await;
    let base = format!("http://{}", daemon.0);
    let client = HttpClient::default();
    // Distinct prompts on idle ranks: ties broken at random, so worker 1's two ranks are
    // picked first about two times in three until it is taken out.
    for i in 0..20u32 {
        let body = json!({"model": "kvroute-sim", "prompt": (0..32).map(|t| t + i * 1000).collect::<Vec<u32>>(), "max_tokens": 1});
        let reply = client.post_json(&format!("{base}/v1/completions"), &body, &[]).await;
        assert_eq!(reply.status, 200, "request {i}: {}", String::from_utf8_lossy(&reply.body));
        assert_eq!(routed(&reply).0, 2, "only worker 2 can answer");
    }
    assert!(metric(&client, &base, "kvroute_proxy_attempts_failed_total{cause=\"connect\"}").await >= 3.0);
    assert!(metric(&client, &base, "kvroute_proxy_retries_total").await >= 3.0);
    assert_eq!(metric(&client, &base, "kvroute_proxy_upstreams{state=\"down\"}").await, 1.0);
    // Probed while down; back once a server answers there again.
    eventually("probes", async || metric(&client, &base, "kvroute_proxy_probes_total").await >= 2.0).await;
    let revived = start_sim_on(SimShape { events: false, ..SimShape::vllm(2) }, dead_addr).await;
    eventually("worker 1 back", async || {
        metric(&client, &base, "kvroute_proxy_upstreams{state=\"down\"}").await == 0.0
    })
    .await;
    assert_eq!(metric(&client, &base, "kvroute_proxy_recoveries_total").await, 1.0);
    let mut to_worker_1 = 0;
    for i in 0..20u32 {
        let body = json!({"model": "kvroute-sim", "prompt": (0..32).map(|t| t + 50_000 + i * 1000).collect::<Vec<u32>>(), "max_tokens": 1});
        let reply = client.post_json(&format!("{base}/v1/completions"), &body, &[]).await;
        assert_eq!(reply.status, 200);
        to_worker_1 += usize::from(routed(&reply).0 == 1);
    }
    assert!(to_worker_1 > 0, "worker 1 takes requests again");
    eventually("every rank idle", async || active_requests(&client, &base).await.iter().all(|&n| n == 0)).await;
    stop_daemon(daemon).await;
    alive.shutdown().await;
    revived.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_leave_no_load() {
    let sim = start_sim(SimShape { events: false, ..SimShape::vllm(2) }).await;
    let daemon = start_daemon("max_body_bytes = 4096", "", &worker_toml(1, &sim, 2)).await;
    let base = format!("http://{}", daemon.0);
    let client = HttpClient::default();
    let completions = format!("{base}/v1/completions");
    let error_of = |reply: &HttpReply| reply.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
    let broken = client.exchange("POST", &completions, &[], "{nope".into()).await;
    assert_eq!(broken.status, 400);
    assert!(error_of(&broken).contains("invalid JSON"));
    for (body, status, message) in [
        (json!({"prompt": [[1, 2], [3, 4]]}), 400, "one prompt per request"),
        (json!({"prompt": [1, -5]}), 400, "token ids"),
        (json!({"prompt": [1, 2], "max_tokens": -1}), 400, "max_tokens"),
        (json!({"max_tokens": 3}), 400, "needs a prompt"),
        (json!({"prompt": (0..2000).collect::<Vec<u32>>()}), 413, "over this router's limit"),
        // The engine's own refusal (an unknown model) comes back as it is, not retried.
        (json!({"model": "nope", "prompt": [1, 2, 3]}), 404, "does not exist"),
    ] {
        let reply = client.post_json(&completions, &body, &[]).await;
        assert_eq!(reply.status, status, "{body}");
        assert!(error_of(&reply).contains(message), "{body}: {}", error_of(&reply));
        assert_eq!(reply.json()["error"]["code"], status);
    }
    assert_eq!(metric(&client, &base, "kvroute_proxy_retries_total").await, 0.0);
    assert!(active_requests(&client, &base).await.iter().all(|&n| n == 0));
    stop_daemon(daemon).await;

    // No upstream at all: 503, in the same shape.
    let daemon = start_daemon("", "", "[[workers]]\nworker_id = 1\ndp_size = 2\n").await;
    let reply =
        client.post_json(&format!("http://{}/v1/completions", daemon.0), &json!({"prompt": [1, 2, 3]}), &[]).await;
    assert_eq!(reply.status, 503);
    assert!(error_of(&reply).contains("no upstream worker"));
    stop_daemon(daemon).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disaggregated_requests_go_to_a_prefill_rank_and_a_decode_rank_tied_by_the_room() {
    let prefill = start_sim(SimShape {
        kind: EngineKind::Sglang,
        disaggregation: DisaggregationMode::Prefill,
        ..SimShape::vllm(4)
    })
    .await;
    let decode = start_sim(SimShape {
        kind: EngineKind::Sglang,
        disaggregation: DisaggregationMode::Decode,
        events: false,
        ..SimShape::vllm(2)
    })
    .await;
    let prefill_port = prefill.http_address().port();
    let workers = format!(
        "{}role = \"prefill\"\nengine = \"sglang\"\nbootstrap_host = \"127.0.0.1\"\nbootstrap_port = {prefill_port}\n\
         [[workers]]\nworker_id = 2\ndp_size = 2\nrole = \"decode\"\nurl = \"http://{}\"\n",
        worker_toml(1, &prefill, 4),
        decode.http_address()
    );
    let daemon = start_daemon("", "", &workers).await;
    let base = format!("http://{}", daemon.0);
    let client = HttpClient::default();
    wait_subscribed(&client, &base, 4).await;

    let (mut prefill_ranks, mut decode_ranks) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    for i in 0..24u32 {
        let tokens: Vec<u32> = (0..64).map(|t| t + i * 1000).collect();
        let body = json!({"model": "kvroute-sim", "prompt": tokens, "max_tokens": 3, "stream": i % 2 == 0});
        let reply = client.post_json(&format!("{base}/v1/completions"), &body, &[]).await;
        assert_eq!(reply.status, 200, "request {i}: {}", String::from_utf8_lossy(&reply.body));
        let header = |name: &str| reply.header(name).unwrap_or_else(|| panic!("no {name}")).parse::<u64>().unwrap();
        let (p, room, d) =
            (header("x-kvroute-prefill-dp-rank"), header("x-kvroute-bootstrap-room"), header("x-kvroute-dp-rank"));
        assert_eq!(room % 4, p, "the room names the prefill rank");
        assert_eq!(header("x-kvroute-worker-id"), 2, "the decode worker answers");
        assert_eq!(header("x-kvroute-sim-dp-rank"), d, "decoded on the chosen decode rank");
        prefill_ranks.insert(p);
        decode_ranks.insert(d);
    }
    assert!(prefill_ranks.len() >= 2 && decode_ranks.len() == 2, "{prefill_ranks:?} {decode_ranks:?}");
    let decode_stats = client.get(&format!("http://{}/sim/stats", decode.http_address())).await.json();
    assert_eq!(
        (decode_stats["kv_transfers"].as_u64(), decode_stats["kv_transfer_failures"].as_u64()),
        (Some(24), Some(0))
    );
    eventually("every rank idle", async || active_requests(&client, &base).await.iter().all(|&n| n == 0)).await;
    eventually("prefill answers drained", async || prefill.stats().iter().all(|s| s.in_flight == 0)).await;
    assert_eq!(prefill.stats().iter().map(|s| s.requests).sum::<u64>(), 24);

    // The decode side really checks: a room on prefill rank 1 looked for on rank 0 fails.
    let wrong = json!({"input_ids": [1, 2, 3], "bootstrap_host": "127.0.0.1", "bootstrap_port": prefill_port,
        "bootstrap_room": 4001, "disagg_prefill_dp_rank": 0});
    let right = json!({"input_ids": [1, 2, 3], "bootstrap_host": "127.0.0.1", "bootstrap_port": prefill_port,
        "bootstrap_room": 4001, "routed_dp_rank": 1});
    let (prefill_url, decode_url) =
        (format!("http://{}/generate", prefill.http_address()), format!("http://{}/generate", decode.http_address()));
    let (to_prefill, to_decode) =
        tokio::join!(client.post_json(&prefill_url, &right, &[]), client.post_json(&decode_url, &wrong, &[]));
    assert_eq!(to_prefill.status, 200);
    assert_eq!(to_decode.status, 500);
    assert!(to_decode.json()["error"]["message"].as_str().unwrap().contains("it is on rank 1"));
    stop_daemon(daemon).await;
    prefill.shutdown().await;
    decode.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lora_request_is_credited_with_its_adapters_blocks_only() {
    let sim = start_sim(SimShape::vllm(2)).await;
    let daemon = start_daemon("", "", &worker_toml(1, &sim, 2)).await;
    let base = format!("http://{}", daemon.0);
    let client = HttpClient::default();
    wait_subscribed(&client, &base, 2).await;
    let tokens: Vec<u32> = (0..96).map(|t| t * 3 + 11).collect();
    let send = |model: &'static str| {
        let (client, url, tokens) = (client.clone(), format!("{base}/v1/completions"), tokens.clone());
        async move { client.post_json(&url, &json!({"model": model, "prompt": tokens, "max_tokens": 1}), &[]).await }
    };
    let first = send(ADAPTER).await;
    assert_eq!(first.status, 200);
    let (_, rank, _) = routed(&first);
    eventually("the adapter's blocks in the index", async || {
        let overlaps = client
            .post_json(&format!("{base}/v1/overlaps"), &json!({"tokens": tokens, "lora_name": ADAPTER}), &[])
            .await
            .json();
        overlaps["overlaps"].as_array().is_some_and(|o| !o.is_empty())
    })
    .await;
    // The adapter's second request is routed to the rank holding its blocks, the base
    // model's is credited with none of them.
    let again = send(ADAPTER).await;
    assert_eq!(routed(&again).1, rank);
    assert_eq!(routed(&again).2, 6, "96 tokens = 6 blocks under the adapter");
    assert_eq!(cached_tokens(&again, false), 80, "the engine agrees (the last block is computed again)");
    let plain = send("kvroute-sim").await;
    assert_eq!(routed(&plain).2, 0, "a plain request gets none of the adapter's blocks");
    assert_eq!(cached_tokens(&plain, false), 0);
    stop_daemon(daemon).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_too_slowly_is_answered_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = start_sim(SimShape { events: false, ..SimShape::vllm(1) }).await;
    let daemon = start_daemon("http_request_timeout = \"300ms\"", "", &worker_toml(1, &sim, 1)).await;
    let mut stream = tokio::net::TcpStream::connect(daemon.0).await.unwrap();
    let head = "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"prompt\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await.expect("answered").unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(sim.stats()[0].requests, 0);
    stop_daemon(daemon).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_tokenizes_text_and_chat_itself_as_the_engine_does() {
    let model = tempfile::tempdir().unwrap();
    kvroute_bench::model_fixture::write_model_dir(model.path()).unwrap();
    let source = TokenizerSource::File(model.path().to_owned());
    let tokenizer = Arc::new(PromptTokenizer::load(&source, None).unwrap());
    let mut config = sim_config(SimShape::vllm(2), "127.0.0.1:0".parse().unwrap());
    config.tokenizer = Arc::clone(&tokenizer);
    let sim = EngineSim::start(config).await.unwrap();
    let proxy = format!("tokenizer = {:?}", model.path().display().to_string());
    let daemon = start_daemon("", &proxy, &worker_toml(1, &sim, 2)).await;
    let base = format!("http://{}", daemon.0);
    let client = HttpClient::default();
    wait_subscribed(&client, &base, 2).await;
    let mut rng = kvroute_bench::rng::Rng::new(7, 0);
    let head = kvroute_bench::model_fixture::sentence_text(&mut rng, 300);
    let tail = kvroute_bench::model_fixture::sentence_text(&mut rng, 40);

    // Completions: the text's ids are the engine's, so the longer prompt finds the head held.
    let head_ids = tokenizer.encode_prompt(&head).unwrap();
    let first =
        client.post_json(&format!("{base}/v1/completions"), &json!({"prompt": head, "max_tokens": 2}), &[]).await;
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    assert_eq!(first.json()["usage"]["prompt_tokens"].as_u64(), Some(head_ids.len() as u64));
    let (worker, rank, _) = routed(&first);
    let probe = json!({"tokens": head_ids});
    eventually("the head in the index", async || {
        let overlaps = client.post_json(&format!("{base}/v1/overlaps"), &probe, &[]).await.json();
        overlaps["overlaps"].as_array().is_some_and(|o| !o.is_empty())
    })
    .await;
    let longer = format!("{head} {tail}");
    let second =
        client.post_json(&format!("{base}/v1/completions"), &json!({"prompt": longer, "max_tokens": 2}), &[]).await;
    let held_blocks = (head_ids.len() - 1) / 16;
    let (w2, r2, overlap) = routed(&second);
    assert_eq!((w2, r2), (worker, rank));
    assert!(overlap as usize >= held_blocks - 1, "{overlap} of the head's {held_blocks} blocks");
    assert_eq!(second.header("x-kvroute-sim-dp-rank"), Some(rank.to_string().as_str()));
    assert!(cached_tokens(&second, false) >= (held_blocks as u64 - 1) * 16);

    // Chat through the model's template: the second turn extends the first conversation.
    let turn1 = json!([{"role": "system", "content": head}, {"role": "user", "content": "why"}]);
    let chat = |messages: &Value| json!({"messages": messages, "max_tokens": 2});
    let first = client.post_json(&format!("{base}/v1/chat/completions"), &chat(&turn1), &[]).await;
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    let rendered = tokenizer.encode_chat(&json!({"messages": turn1})).unwrap();
    assert_eq!(first.json()["usage"]["prompt_tokens"].as_u64(), Some(rendered.len() as u64));
    let (worker, rank, _) = routed(&first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let turn2 = json!([{"role": "system", "content": head}, {"role": "user", "content": "why"},
        {"role": "assistant", "content": "the cache"}, {"role": "user", "content": tail}]);
    let second = client.post_json(&format!("{base}/v1/chat/completions"), &chat(&turn2), &[]).await;
    let (w2, r2, overlap) = routed(&second);
    assert_eq!((w2, r2), (worker, rank));
    assert!(overlap as usize >= held_blocks - 1, "the conversation's prefix is held: {overlap}");
    // A template error is the client's 400; the engine's /tokenize was never asked.
    let bad = client.post_json(&format!("{base}/v1/chat/completions"), &json!({"messages": [{"role": 3}]}), &[]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(sim.tokenize_requests(), 0, "every prompt tokenized by the router");
    eventually("every rank idle", async || active_requests(&client, &base).await.iter().all(|&n| n == 0)).await;
    stop_daemon(daemon).await;
    sim.shutdown().await;
}

/// A streamed completion of `prompt`: `Ok(worker)` when it ran to `[DONE]`, `Err(worker)`
/// when its stream broke or ended short.
async fn stream_to_end(client: &HttpClient, base: &str, prompt: Vec<u32>) -> Result<u64, u64> {
    let body = json!({"model": "kvroute-sim", "prompt": prompt, "max_tokens": 40, "stream": true});
    let response = client.send("POST", &format!("{base}/v1/completions"), &[], body.to_string().into()).await;
    assert_eq!(response.status(), 200);
    let worker = response.headers()["x-kvroute-worker-id"].to_str().unwrap().parse::<u64>().unwrap();
    match http_body_util::BodyExt::collect(response.into_body()).await.map(|body| body.to_bytes()) {
        Ok(body) if String::from_utf8_lossy(&body).contains("data: [DONE]") => Ok(worker),
        _ => Err(worker),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_under_load_breaks_only_its_streams_and_is_routed_around_until_it_is_back() {
    let shape = SimShape { events: false, decode: Duration::from_millis(25), ..SimShape::vllm(2) };
    let (doomed, survivor) = (start_sim(shape).await, start_sim(shape).await);
    let doomed_addr = doomed.http_address();
    let workers = worker_toml(1, &doomed, 2) + &worker_toml(2, &survivor, 2);
    let daemon = start_daemon("", "probe_backoff = \"100ms\"\nprobe_max_backoff = \"200ms\"", &workers).await;
    let base = format!("http://{}", daemon.0);
    let client = HttpClient::default();
    // Eight streams of 40 tokens (1 s each), spread over the four idle ranks by load.
    let streams: Vec<_> = (0..8u32)
        .map(|i| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move { stream_to_end(&client, &base, (0..32).map(|t| t + i * 1000).collect()).await })
        })
        .collect();
    eventually("eight streams running", async || active_requests(&client, &base).await.iter().sum::<u64>() == 8).await;
    doomed.kill().await;
    let mut outcomes = Vec::new();
    for stream in streams {
        outcomes.push(stream.await.unwrap());
    }
    assert!(outcomes.iter().all(|o| matches!(o, Ok(2) | Err(1))), "only worker 1's streams broke: {outcomes:?}");
    assert!(outcomes.iter().any(|o| o.is_err()) && outcomes.iter().any(|o| o.is_ok()), "{outcomes:?}");
    let broken = outcomes.iter().filter(|o| o.is_err()).count() as f64;
    assert_eq!(metric(&client, &base, "kvroute_proxy_requests_total{outcome=\"upstream_broken\"}").await, broken);
    // The broken streams' load is released, so the dead worker's ranks look idle again.
    eventually("every rank idle", async || active_requests(&client, &base).await.iter().all(|&n| n == 0)).await;
    // New requests: refused by the dead worker, retried on the other, until it is taken out
    // (ties between idle ranks are broken at random, so how many requests that takes varies).
    for i in 0..40u32 {
        if metric(&client, &base, "kvroute_proxy_upstreams{state=\"down\"}").await == 1.0 {
            break;
        }
        let reply = client
            .post_json(
                &format!("{base}/v1/completions"),
                &json!({"model": "kvroute-sim", "prompt": (0..32).map(|t| t + 90_000 + i * 1000).collect::<Vec<u32>>(), "max_tokens": 1}),
                &[],
            )
            .await;
        assert_eq!(reply.status, 200, "request {i}: {}", String::from_utf8_lossy(&reply.body));
        assert_eq!(routed(&reply).0, 2);
    }
    assert_eq!(metric(&client, &base, "kvroute_proxy_upstreams{state=\"down\"}").await, 1.0);
    assert!(metric(&client, &base, "kvroute_proxy_attempts_failed_total{cause=\"connect\"}").await >= 3.0);
    eventually("every rank idle", async || active_requests(&client, &base).await.iter().all(|&n| n == 0)).await;
    // The engine comes back on its address: probed, back in decisions, serving again.
    let revived = start_sim_on(shape, doomed_addr).await;
    eventually("worker 1 back", async || {
        metric(&client, &base, "kvroute_proxy_upstreams{state=\"down\"}").await == 0.0
    })
    .await;
    // Four streams at once, spread by load over the four ranks again.
    let streams: Vec<_> = (0..4u32)
        .map(|i| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                stream_to_end(&client, &base, (0..32).map(|t| t + 200_000 + i * 1000).collect()).await
            })
        })
        .collect();
    let mut back = Vec::new();
    for stream in streams {
        back.push(stream.await.unwrap().expect("a whole stream"));
    }
    assert!(back.contains(&1), "worker 1 serves again: {back:?}");
    eventually("every rank idle", async || active_requests(&client, &base).await.iter().all(|&n| n == 0)).await;
    stop_daemon(daemon).await;
    survivor.shutdown().await;
    revived.shutdown().await;
}
