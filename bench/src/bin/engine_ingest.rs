//! Engine-format KV events over ZeroMQ on loopback, decoded and applied to a router's
//! index: block events per second end to end, and decode-only throughput.
//!
//! Workload: `--workers` x `--dp-size` engine ranks, each a stand-in engine PUB socket
//! ([`EnginePublisher`], with its replay buffer) publishing `--batches` msgpack batches
//! (`--format`), pre-encoded. A batch stores one chain of `--chain` blocks (16 tokens
//! each, under a shared 8-block system prompt half of the time), and once a rank holds
//! `--capacity` blocks, evicts the oldest chain block by block (one `BlockRemoved` each,
//! as vLLM sends them). The router side is `kvroute serve --engine-events`'s machinery:
//! `EngineIngest` (one task per rank) into a `Router`.
//!
//! End to end: from the first publish to the moment every rank has applied its last
//! batch; block events = stored + removed block hashes applied. PUB sockets drop past
//! their high-water mark; lost batches come back through the replay sockets, and the run
//! reports gaps, replays and unrecovered batches (a valid run has 0 unrecovered).
//! Decode-only: `decode_message` over the same payloads, single thread. In process: the
//! same payloads through each rank's `EngineRankStream` (decode, map, hash, apply to a
//! `Router`) on one thread, no sockets: the ceiling the end-to-end figure approaches.
//!
//! `cargo run --release -p kvroute-bench --bin engine_ingest`

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use kvroute_core::engine_events::block_mapper::MapperConfig;
use kvroute_core::engine_events::decode::{decode_message, DecodeLimits};
use kvroute_core::engine_events::encode::{encode_batch, EngineFormat};
use kvroute_core::engine_events::rank_stream::{EngineRankStream, RankStreamConfig};
use kvroute_core::engine_events::sequence::TrackerConfig;
use kvroute_core::engine_events::{BlockRemoved, BlockStored, EngineEvent, EventBatch, Medium};
use kvroute_core::hashing::{xxh3_64_with_seed, BlockHasher};
use kvroute_core::ingest::IngestSink;
use kvroute_core::route::{Router, RouterConfig, WorkerSpec};
use kvroute_core::{RankKey, WorkerId};
use kvroute_net::engine_ingest::{EngineIngest, EngineIngestConfig, EngineKind, EngineSource};
use kvroute_net::engine_zmq::{EngineEndpoint, EnginePublisher, EnginePublisherOptions};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

const BLOCK: usize = 16;

#[derive(Parser, Debug)]
#[command(about = "Engine KV events over ZeroMQ into the index: block events/s end to end, and decode-only")]
struct Args {
    /// Workers (each with --dp-size ranks, ports offset by rank).
    #[arg(long, default_value_t = 2)]
    workers: u64,
    #[arg(long, default_value_t = 2)]
    dp_size: u32,
    /// Batches per rank.
    #[arg(long, default_value_t = 20000)]
    batches: usize,
    /// Blocks per stored chain.
    #[arg(long, default_value_t = 32)]
    chain: usize,
    /// Blocks a rank holds before it evicts.
    #[arg(long, default_value_t = 4096)]
    capacity: usize,
    /// Wire encoding: vllm-map, vllm-array, sglang-map, sglang-array.
    #[arg(long, default_value = "vllm-map")]
    format: String,
    /// Repeats of the end-to-end run (each on fresh sockets and a fresh router).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Shards of the router's index (`kvroute serve --index-shards`): rank tasks of
    /// different shards apply in parallel.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    index_shards: u64,
    /// Print one JSON object per run instead of text.
    #[arg(long)]
    json: bool,
}

fn format_of(name: &str) -> Result<EngineFormat, String> {
    match name {
        "vllm-map" => Ok(EngineFormat::VllmMap),
        "vllm-array" => Ok(EngineFormat::VllmArray),
        "sglang-map" => Ok(EngineFormat::SglangMap),
        "sglang-array" => Ok(EngineFormat::SglangArray),
        _ => Err(format!("unknown --format {name}")),
    }
}

/// A rank's batches, encoded, and their block events.
fn rank_batches(args: &Args, rank: RankKey, format: EngineFormat) -> (Vec<Vec<u8>>, u64) {
    let mut seed = rank.worker.0 << 32 | u64::from(rank.dp_rank.0);
    let mut next = move || {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        xxh3_64_with_seed(&seed.to_le_bytes(), 0)
    };
    let system: Vec<u32> = (0..8 * BLOCK as u32).collect();
    let mut held: std::collections::VecDeque<Vec<u64>> = Default::default();
    let mut held_blocks = 0;
    let mut payloads = Vec::with_capacity(args.batches);
    let mut block_events = 0u64;
    for _ in 0..args.batches {
        let mut events = Vec::new();
        let mut tokens: Vec<u32> = Vec::with_capacity(args.chain * BLOCK);
        let shared = next() % 2 == 0;
        if shared {
            tokens.extend_from_slice(&system);
        }
        while tokens.len() < args.chain * BLOCK {
            tokens.push((next() % 150_000) as u32);
        }
        let hashes: Vec<u64> = (0..args.chain).map(|_| next()).collect();
        held_blocks += hashes.len();
        block_events += hashes.len() as u64;
        events.push(EngineEvent::from(BlockStored {
            block_hashes: hashes.clone(),
            token_ids: tokens,
            block_size: BLOCK as u32,
            medium: Some(Medium::Gpu),
            ..BlockStored::default()
        }));
        held.push_back(hashes);
        while held_blocks > args.capacity {
            let Some(old) = held.pop_front() else { break };
            held_blocks -= old.len();
            for hash in old.into_iter().rev() {
                block_events += 1;
                events.push(EngineEvent::Removed(BlockRemoved {
                    block_hashes: vec![hash],
                    medium: Some(Medium::Gpu),
                    group_idx: Some(0),
                }));
            }
        }
        let batch = EventBatch { ts: 0.0, events, dp_rank: Some(rank.dp_rank.0), unknown_events: 0 };
        payloads.push(encode_batch(&batch, format));
    }
    (payloads, block_events)
}

fn free_base_port(ranks: u16) -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        if first < u16::MAX - ranks && (1..ranks).all(|i| TcpListener::bind(("127.0.0.1", first + i)).is_ok()) {
            return first;
        }
    }
}

struct RunResult {
    seconds: f64,
    block_events: u64,
    messages: u64,
    gaps: u64,
    replays: u64,
    unrecovered: u64,
}

fn router_config(args: &Args) -> RouterConfig {
    RouterConfig { index_shards: args.index_shards as usize, ..RouterConfig::default() }
}

async fn run_once(args: &Args, payloads: &[(RankKey, Vec<Vec<u8>>)]) -> RunResult {
    let router = Arc::new(Router::new(router_config(args), Arc::new(|| 0u64)).expect("router"));
    let sink: Arc<dyn IngestSink> = router.clone();
    let ingest = EngineIngest::new(EngineIngestConfig::new(MapperConfig::new(BlockHasher::new(BLOCK).unwrap())), sink);
    let mut publishers = Vec::new();
    for w in 0..args.workers {
        router.add_worker(WorkerSpec::new(WorkerId(w), args.dp_size, BLOCK as u32)).expect("worker");
        let pub_base = free_base_port(args.dp_size as u16);
        let replay_base = free_base_port(args.dp_size as u16);
        for r in 0..args.dp_size as u16 {
            let options =
                EnginePublisherOptions { buffer_steps: args.batches + 1, ..EnginePublisherOptions::default() };
            let publisher = EnginePublisher::bind(
                &format!("tcp://127.0.0.1:{}", pub_base + r),
                Some(&format!("tcp://127.0.0.1:{}", replay_base + r)),
                options,
            )
            .await
            .expect("engine publisher");
            publishers.push(publisher);
        }
        ingest
            .add(EngineSource {
                worker: WorkerId(w),
                ranks: 0..args.dp_size,
                endpoint: EngineEndpoint::connect(&format!("tcp://127.0.0.1:{pub_base}")).unwrap(),
                replay: Some(EngineEndpoint::connect(&format!("tcp://127.0.0.1:{replay_base}")).unwrap()),
                topic: String::new(),
                engine: EngineKind::Vllm,
                page_size: None,
            })
            .expect("subscribe");
    }
    let ranks = (args.workers * u64::from(args.dp_size)) as usize;
    while !ingest.snapshot().ranks.iter().filter(|r| r.connected).count().eq(&ranks) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The payloads as the sockets take them, copied before the clock starts.
    let all: Vec<Vec<bytes::Bytes>> =
        payloads.iter().map(|(_, b)| b.iter().map(|p| bytes::Bytes::from(p.clone())).collect()).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (publisher, batches) in publishers.into_iter().zip(all) {
        tasks.push(tokio::spawn(async move {
            for payload in batches {
                publisher.publish(bytes::Bytes::new(), payload).await;
            }
            publisher
        }));
    }
    let mut publishers = Vec::new();
    for task in tasks {
        publishers.push(task.await.expect("publisher task"));
    }
    let last = args.batches as u64 - 1;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let s = ingest.snapshot();
        if s.ranks.iter().all(|r| r.last_seq == Some(last)) {
            let seconds = started.elapsed().as_secs_f64();
            let result = RunResult {
                seconds,
                block_events: s.stream.block_events_applied,
                messages: s.stream.messages,
                gaps: s.seq.gaps,
                replays: s.seq.replays_requested,
                unrecovered: s.seq.unrecovered_batches,
            };
            ingest.shutdown(Duration::from_secs(3)).await;
            for p in publishers {
                p.shutdown().await;
            }
            return result;
        }
        assert!(Instant::now() < deadline, "the router did not catch up: {s:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every rank's payloads through its own `EngineRankStream` into one `Router`, on this
/// thread, ranks interleaved batch by batch as the sockets would deliver them; seconds.
fn run_in_process(args: &Args, payloads: &[(RankKey, Vec<Vec<u8>>)], block_events: u64) -> f64 {
    let router = Router::new(router_config(args), Arc::new(|| 0u64)).expect("router");
    for w in 0..args.workers {
        router.add_worker(WorkerSpec::new(WorkerId(w), args.dp_size, BLOCK as u32)).expect("worker");
    }
    let mut streams: Vec<EngineRankStream> = payloads
        .iter()
        .map(|(rank, _)| {
            EngineRankStream::new(RankStreamConfig {
                rank: *rank,
                worker_ranks: 0..args.dp_size,
                mapper: MapperConfig::new(BlockHasher::new(BLOCK).unwrap()),
                limits: DecodeLimits::default(),
                tracker: TrackerConfig::without_replay(),
            })
        })
        .collect();
    for stream in &mut streams {
        stream.start(&router);
    }
    let started = Instant::now();
    for seq in 0..args.batches {
        let seq_bytes = (seq as u64).to_be_bytes();
        for (stream, (_, batches)) in streams.iter_mut().zip(payloads) {
            stream.on_live(&[b"", &seq_bytes, &batches[seq]], &router);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let applied: u64 = streams.iter().map(|s| s.counters().block_events_applied).sum();
    assert_eq!(applied, block_events, "every block event applied");
    seconds
}

fn main() {
    let args = Args::parse();
    // As `kvroute serve` runs: huge-page faults (zeroing 2 MiB at a time) otherwise
    // dominate this process's profile.
    if let Err(error) = kvroute_net::huge_pages::disable_transparent_huge_pages() {
        eprintln!("turning huge pages off: {error}");
    }
    let format = format_of(&args.format).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let mut payloads = Vec::new();
    let mut block_events = 0;
    for w in 0..args.workers {
        for r in 0..args.dp_size {
            let rank = RankKey::new(w, r);
            let (batches, events) = rank_batches(&args, rank, format);
            block_events += events;
            payloads.push((rank, batches));
        }
    }
    let bytes: usize = payloads.iter().flat_map(|(_, b)| b.iter().map(Vec::len)).sum();

    // Decode only, one thread.
    let limits = DecodeLimits::default();
    let started = Instant::now();
    let mut decoded_blocks = 0u64;
    for (seq, payload) in payloads.iter().flat_map(|(_, b)| b.iter().enumerate()) {
        let seq = (seq as u64).to_be_bytes();
        let message = decode_message(&[b"", &seq, payload], &limits).expect("decodes");
        decoded_blocks += message.batch.block_count() as u64;
    }
    let decode_seconds = started.elapsed().as_secs_f64();
    assert_eq!(decoded_blocks, block_events);
    let in_process_seconds = run_in_process(&args, &payloads, block_events);
    let machine = kvroute_bench::machine::Machine::this();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"kind": "decode", "format": args.format, "block_events": block_events, "bytes": bytes,
                "seconds": decode_seconds, "block_events_per_sec": block_events as f64 / decode_seconds,
                "machine": machine})
        );
        println!(
            "{}",
            serde_json::json!({"kind": "in_process", "format": args.format, "block_events": block_events,
                "seconds": in_process_seconds, "block_events_per_sec": block_events as f64 / in_process_seconds})
        );
    } else {
        println!("machine: {}", machine.line());
        println!(
            "workload: {} ranks x {} batches ({}), {} block events, {:.1} MB of msgpack; {} index shard(s)",
            payloads.len(),
            args.batches,
            args.format,
            block_events,
            bytes as f64 / 1e6,
            args.index_shards
        );
        println!(
            "decode only (1 thread): {:.2} M block events/s ({:.0} MB/s)",
            block_events as f64 / decode_seconds / 1e6,
            bytes as f64 / decode_seconds / 1e6
        );
        println!(
            "in process (1 thread, no sockets: decode, map, apply): {:.2} M block events/s",
            block_events as f64 / in_process_seconds / 1e6
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    for run in 0..args.runs {
        let r = runtime.block_on(run_once(&args, &payloads));
        let rate = r.block_events as f64 / r.seconds;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"kind": "end_to_end", "run": run, "seconds": r.seconds, "block_events": r.block_events,
                    "block_events_per_sec": rate, "messages": r.messages, "gaps": r.gaps, "replays": r.replays,
                    "unrecovered_batches": r.unrecovered})
            );
        } else {
            println!(
                "end to end run {run}: {:.2} M block events/s ({} block events in {:.3} s; {} live messages, {} gaps, \
                 {} replays, {} unrecovered batches)",
                rate / 1e6,
                r.block_events,
                r.seconds,
                r.messages,
                r.gaps,
                r.replays,
                r.unrecovered
            );
        }
    }
}
