//! `transport`: the QUIC KV event transport, publisher to router index, over loopback with
//! mutual TLS, in one process.
//!
//! ```text
//! cargo run --release -p kvroute-bench --bin transport -- [--workers 8 --dp-size 2]
//!     [--block-size 16] [--batch-delays-us 1000,0] [--loads 10,50,90] [--phase-seconds 3]
//!     [--reference-rate BLOCK_EVENTS_PER_SEC]
//! ```
//!
//! Method. The shipped trace runs through the core engine-cache simulator (`Fleet`,
//! workers x dp ranks with LRU caches; requests sticky per conversation), which yields the
//! KV events (stores and evictions) the engines would publish; they are generated before
//! each phase, outside the timed loop. One `Publisher` publishing every rank (one thread
//! calling `publish`, the publisher's tasks on their own one-thread tokio runtime) feeds one
//! `IngestServer` (its own one-thread runtime) applying to a core `Router`'s index.
//!
//! 1. Throughput: the events are published as fast as the router takes them, with at most
//!    `--window-events` published and not yet applied (so that no subscriber queue
//!    overflows). Deltas/s and block events/s = applied / (last applied - first publish).
//! 2. Event-to-visible latency at each `--loads` percentage of that block-event rate: the
//!    events are published open-loop at that rate, and every `--probe-interval-us` a probe
//!    event (a one-block `Stored` on the next rank, tagged, whose content hash carries its
//!    publish time) goes through the same path. Latency = from just before `publish` to the
//!    moment the router's index `apply` for the probe returned (from then on any lookup sees
//!    it), measured in the sink.
//!
//! With `--reference-rate R` the throughput run is skipped and the loads are percentages
//! of `R` (for comparing builds at the same offered rates). Like `kvroute serve` and
//! `kvroute publish`, the bench turns transparent huge pages off for itself
//! (`kvroute_net::huge_pages`).
//!
//! Both runs are repeated for each `--batch-delays-us` (the publisher's `BatchConfig::
//! max_delay`; 0 is the default configuration, which writes a batch as soon as the queue is
//! empty).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use kvroute_core::event::DumpBlock;
use kvroute_core::route::{Router, RouterConfig, StorageTier, WorkerSpec};
use kvroute_core::sim::{Fleet, FleetConfig};
use kvroute_core::trace::{parse_trace, request_blocks_into, TraceRequest};
use kvroute_core::{BlockHash, EngineHash, KvEvent, KvEventData, RankKey, StoredBlock, WorkerId};
use kvroute_net::tls::{generate_certs, CertsOptions, TlsFiles, WorkerGrant};
use kvroute_net::transport::{
    IngestConfig, IngestHandle, IngestServer, IngestSink, Publisher, PublisherConfig, PublisherHandle, RouterTarget,
    TlsMode,
};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Tag in the top 16 bits of a probe's engine hash.
const PROBE_TAG: u64 = 0xBEEF;

/// QUIC KV event transport benchmark: throughput and event-to-visible latency.
#[derive(Parser, Debug)]
#[command(name = "transport", version)]
struct Args {
    /// Mooncake-format trace. Default: data/conversation_trace.jsonl.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Tokens per KV block; must divide 512.
    #[arg(long, default_value_t = 16)]
    block_size: u32,
    /// Simulated engine workers (all published by the one publisher).
    #[arg(long, default_value_t = 8)]
    workers: u32,
    /// Data-parallel ranks per worker.
    #[arg(long, default_value_t = 2)]
    dp_size: u32,
    /// KV cache per rank, in blocks.
    #[arg(long, default_value_t = 16_384)]
    capacity_blocks: usize,
    /// Publisher batch delays to measure, microseconds (0 = the default configuration).
    #[arg(long, value_delimiter = ',', default_value = "0,1000")]
    batch_delays_us: Vec<u64>,
    /// Loads for the latency runs, percent of the measured block-event rate.
    #[arg(long, value_delimiter = ',', default_value = "10,50,90")]
    loads: Vec<u32>,
    /// Length of each latency run, seconds.
    #[arg(long, default_value_t = 3.0)]
    phase_seconds: f64,
    /// Block events published in the throughput run.
    #[arg(long, default_value_t = 8_000_000)]
    throughput_blocks: u64,
    /// Events published and not yet applied, at most, in the throughput run.
    #[arg(long, default_value_t = 20_000)]
    window_events: u64,
    /// Interval between latency probes, microseconds.
    #[arg(long, default_value_t = 500)]
    probe_interval_us: u64,
    /// Skip the throughput run and take this as the 100% block-event rate of the latency
    /// runs (block events/s), so that runs at fixed loads compare across builds.
    #[arg(long, value_name = "BLOCK_EVENTS_PER_SEC")]
    reference_rate: Option<f64>,
    /// Diagnostic: the router takes the events but does not apply them to its index (to
    /// see the transport's own cost).
    #[arg(long)]
    no_index: bool,
    /// Diagnostic: write every probe of the latency runs to FILE, one line each:
    /// load percent, publish time and latency (nanoseconds), to see when the tail happens.
    #[arg(long, value_name = "FILE")]
    probe_log: Option<PathBuf>,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    // As `kvroute serve` and `kvroute publish` do (see `kvroute_net::huge_pages`).
    kvroute_net::huge_pages::disable_transparent_huge_pages().map_err(|e| format!("turning huge pages off: {e}"))?;
    println!("machine: {}", kvroute_bench::machine::Machine::this().line());
    let trace = args
        .trace
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/conversation_trace.jsonl")));
    let file = std::fs::File::open(&trace).map_err(|e| format!("{}: {e}", trace.display()))?;
    let requests = parse_trace(std::io::BufReader::new(file)).map_err(|e| e.to_string())?;
    let certs = tempfile::tempdir().map_err(|e| e.to_string())?;
    let grant: WorkerGrant = format!("0-{}", args.workers.saturating_sub(1)).parse().map_err(|e| format!("{e}"))?;
    let mut options = CertsOptions::new(certs.path());
    options.groups = vec![grant.clone()];
    generate_certs(&options).map_err(|e| e.to_string())?;
    let publisher_files = TlsFiles::in_dir(certs.path(), &format!("publisher-{}", grant.to_string().replace(',', "_")));
    println!(
        "transport bench: {} workers x {} ranks, block size {}, {} blocks per rank cache, mutual TLS over loopback QUIC{}",
        args.workers,
        args.dp_size,
        args.block_size,
        args.capacity_blocks,
        if args.no_index { " (--no-index: events not applied)" } else { "" }
    );
    for &delay_us in &args.batch_delays_us {
        let mut source = EventSource::new(&args, &requests);
        let bench = Bench::start(&args, certs.path(), &publisher_files, Duration::from_micros(delay_us))?;
        println!("\n== publisher batch max_delay {delay_us} us ==");
        let rate = match args.reference_rate {
            Some(rate) => {
                println!("reference rate (--reference-rate): {:.2} M block events/s", rate / 1e6);
                rate
            }
            None => bench.throughput(&args, &mut source)?,
        };
        for &load in &args.loads {
            let target = rate * f64::from(load) / 100.0;
            bench.latency(&args, &mut source, load, target)?;
        }
        bench.shutdown();
    }
    Ok(())
}

/// Simulated engines turning the trace into KV events, request after request (wrapping).
struct EventSource<'a> {
    fleet: Fleet,
    requests: &'a [TraceRequest],
    next: usize,
    block_size: u32,
    chain: Vec<BlockHash>,
}

impl<'a> EventSource<'a> {
    fn new(args: &Args, requests: &'a [TraceRequest]) -> Self {
        let config =
            FleetConfig { workers: args.workers, dp_size: args.dp_size, capacity_blocks: args.capacity_blocks };
        EventSource { fleet: Fleet::new(config), requests, next: 0, block_size: args.block_size, chain: Vec::new() }
    }

    /// Events carrying at least `blocks` block hashes in all.
    fn take(&mut self, blocks: u64) -> Vec<KvEvent> {
        let mut events = Vec::new();
        let mut total = 0u64;
        while total < blocks {
            let request = &self.requests[self.next % self.requests.len()];
            self.next += 1;
            if request_blocks_into(request, self.block_size, &mut self.chain).is_err() {
                continue;
            }
            // Sticky per conversation (its first private hash id), like a cache-aware router.
            let conversation = request.hash_ids.get(1).copied().unwrap_or(0);
            let ranks = self.fleet.ranks();
            let rank = ranks[(conversation.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % ranks.len()];
            for event in self.fleet.prefill(rank, &self.chain).events {
                total += event.block_count() as u64;
                events.push(event);
            }
        }
        events
    }
}

/// The router's index behind a sink that times probe events.
struct ProbeSink {
    router: Router,
    /// `--no-index`: time the probes, apply nothing.
    no_index: bool,
    epoch: Instant,
    latencies: Mutex<Histogram<u64>>,
    /// `(publish time, latency)` of every probe, with `--probe-log`.
    probe_log: Option<Mutex<Vec<(u64, u64)>>>,
}

impl ProbeSink {
    fn probe_publish_ns(event: &KvEvent) -> Option<u64> {
        match &event.data {
            KvEventData::Stored { blocks, .. } if blocks.len() == 1 && blocks[0].engine_hash.0 >> 48 == PROBE_TAG => {
                Some(blocks[0].content_hash.0)
            }
            _ => None,
        }
    }
}

impl IngestSink for ProbeSink {
    fn apply_batch(&self, tier: StorageTier, events: &[KvEvent]) {
        if !self.no_index {
            self.router.apply_events_in(tier, events);
        }
        for event in events {
            let Some(published) = Self::probe_publish_ns(event) else { continue };
            let now = self.epoch.elapsed().as_nanos() as u64;
            let mut latencies = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
            let _ = latencies.record(now.saturating_sub(published).max(1));
            if let Some(log) = &self.probe_log {
                log.lock().unwrap_or_else(|e| e.into_inner()).push((published, now.saturating_sub(published)));
            }
        }
    }

    fn replace_rank(&self, tier: StorageTier, rank: RankKey, dump: &[DumpBlock]) {
        IngestSink::replace_rank(&self.router, tier, rank, dump);
    }

    fn remove_rank(&self, rank: RankKey) {
        IngestSink::remove_rank(&self.router, rank);
    }
}

struct Bench {
    router_runtime: tokio::runtime::Runtime,
    publisher_runtime: tokio::runtime::Runtime,
    sink: Arc<ProbeSink>,
    ingest: IngestHandle,
    publisher: PublisherHandle,
    ranks: Vec<RankKey>,
    /// Probes sent so far (their engine hashes are numbered across runs).
    probes_sent: std::cell::Cell<u64>,
}

fn runtime(name: &str) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

impl Bench {
    fn start(
        args: &Args,
        certs: &std::path::Path,
        publisher_files: &TlsFiles,
        delay: Duration,
    ) -> Result<Self, String> {
        let router_runtime = runtime("router")?;
        let publisher_runtime = runtime("publisher")?;
        let config = RouterConfig { block_size: args.block_size, ..RouterConfig::default() };
        let epoch = Instant::now();
        let router =
            Router::new(config, Arc::new(move || epoch.elapsed().as_millis() as u64)).map_err(|e| e.to_string())?;
        for worker in 0..args.workers {
            router
                .add_worker(WorkerSpec::new(WorkerId(u64::from(worker)), args.dp_size, args.block_size))
                .map_err(|e| e.to_string())?;
        }
        let histogram = Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
        let probe_log = args.probe_log.as_ref().map(|_| Mutex::new(Vec::new()));
        let sink =
            Arc::new(ProbeSink { router, no_index: args.no_index, epoch, latencies: Mutex::new(histogram), probe_log });
        let ingest = {
            let _guard = router_runtime.enter();
            let tls = TlsMode::Mutual(TlsFiles::in_dir(certs, "router"));
            let config = IngestConfig::new("127.0.0.1:0".parse().map_err(|e| format!("{e}"))?, tls);
            IngestServer::start(config, sink.clone()).map_err(|e| e.to_string())?
        };
        let ranks: Vec<RankKey> =
            (0..args.workers).flat_map(|w| (0..args.dp_size).map(move |r| RankKey::new(u64::from(w), r))).collect();
        let publisher = {
            let _guard = publisher_runtime.enter();
            let target = RouterTarget::new(ingest.local_addr(), "localhost");
            let tls = TlsMode::Mutual(publisher_files.clone());
            let mut config = PublisherConfig::new("bench", vec![target], tls, ranks.clone());
            config.batch.max_delay = delay;
            Publisher::start(config).map_err(|e| e.to_string())?
        };
        let bench = Bench {
            router_runtime,
            publisher_runtime,
            sink,
            ingest,
            publisher,
            ranks,
            probes_sent: Default::default(),
        };
        bench.wait_synced(Duration::from_secs(20))?;
        Ok(bench)
    }

    /// Waits until the router applied every event published so far.
    fn wait_synced(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let cursors = self.ingest.cursors();
            let synced = self.ranks.iter().all(|&rank| {
                let want = self.publisher.last_seq(rank);
                cursors.iter().any(|c| {
                    c.rank == rank && c.incarnation == self.publisher.incarnation() && Some(c.applied_seq) == want
                })
            });
            if synced {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("router not in sync after {limit:?}: {:?}", self.ingest.metrics().snapshot()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn throughput(&self, args: &Args, source: &mut EventSource<'_>) -> Result<f64, String> {
        let events = source.take(args.throughput_blocks);
        let blocks: u64 = events.iter().map(|e| e.block_count() as u64).sum();
        let metrics = self.ingest.metrics();
        let before = metrics.snapshot();
        let publisher_before = self.publisher.metrics();
        let start = Instant::now();
        for (published, event) in (0u64..).zip(events) {
            // Sleep rather than spin: on two cores a spinning publisher starves the runtimes.
            while published - metrics.events_applied.load(Ordering::Relaxed).saturating_sub(before.events_applied)
                >= args.window_events
            {
                std::thread::sleep(Duration::from_micros(20));
            }
            self.publish(event.rank, event.data)?;
        }
        self.wait_synced(Duration::from_secs(60))?;
        let elapsed = start.elapsed().as_secs_f64();
        let after = metrics.snapshot();
        let publisher_after = self.publisher.metrics();
        let applied = after.events_applied - before.events_applied;
        let applied_blocks = after.block_events_applied - before.block_events_applied;
        let frames = publisher_after.deltas_frames_sent - publisher_before.deltas_frames_sent;
        println!(
            "throughput: {applied} deltas, {applied_blocks} block events in {elapsed:.2} s: {:.0} deltas/s, {:.2} M block events/s \
             ({:.1} events per Deltas frame; gaps {}, subscribers cut {}, dumps {})",
            applied as f64 / elapsed,
            applied_blocks as f64 / elapsed / 1e6,
            applied as f64 / frames.max(1) as f64,
            after.gaps - before.gaps,
            publisher_after.subscribers_cut - publisher_before.subscribers_cut,
            after.dumps - before.dumps,
        );
        if applied_blocks != blocks {
            return Err(format!("published {blocks} block events, the router applied {applied_blocks}"));
        }
        Ok(applied_blocks as f64 / elapsed)
    }

    fn latency(&self, args: &Args, source: &mut EventSource<'_>, load: u32, rate: f64) -> Result<(), String> {
        let events = source.take((rate * args.phase_seconds) as u64);
        self.sink.latencies.lock().unwrap_or_else(|e| e.into_inner()).reset();
        if let Some(log) = &self.sink.probe_log {
            log.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        let probe_interval = Duration::from_micros(args.probe_interval_us.max(1));
        let start = Instant::now();
        let mut next_probe = start;
        let mut blocks = 0u64;
        for event in events {
            let due = start + Duration::from_secs_f64(blocks as f64 / rate);
            loop {
                let now = Instant::now();
                if now >= next_probe {
                    self.probe()?;
                    next_probe += probe_interval;
                }
                if now >= due {
                    break;
                }
                // Sleep, never spin (see `throughput`); the sleep may overshoot by tens of
                // microseconds, which delays the next publish, not the measurement.
                let wait = (due - now).min(next_probe.saturating_duration_since(now));
                std::thread::sleep(wait);
            }
            blocks += event.block_count() as u64;
            self.publish(event.rank, event.data)?;
        }
        let elapsed = start.elapsed().as_secs_f64();
        self.wait_synced(Duration::from_secs(60))?;
        let latencies = self.sink.latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let us = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "latency at {load}% ({:.2} M block events/s offered, {:.2} M achieved): {} probes, p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
            rate / 1e6,
            blocks as f64 / elapsed / 1e6,
            latencies.len(),
            us(0.5),
            us(0.99),
            us(0.999),
            latencies.max() as f64 / 1000.0,
        );
        if let (Some(path), Some(log)) = (&args.probe_log, &self.sink.probe_log) {
            let probes = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
            let lines: String = probes.iter().map(|(at, latency)| format!("{load} {at} {latency}\n")).collect();
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            std::io::Write::write_all(&mut file, lines.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    }

    fn publish(&self, rank: RankKey, data: KvEventData) -> Result<u64, String> {
        self.publisher.publish(rank, StorageTier::Device, data).map_err(|e| e.to_string())
    }

    /// A probe: a one-block store on the next rank in turn, whose content hash is its
    /// publish time; that rank's previous probe is removed first (untimed), so probes do
    /// not accumulate.
    fn probe(&self) -> Result<(), String> {
        let sent = self.probes_sent.get();
        let ranks = self.ranks.len() as u64;
        let rank = self.ranks[(sent % ranks) as usize];
        if let Some(previous) = sent.checked_sub(ranks) {
            self.publish(rank, KvEventData::Removed { blocks: vec![EngineHash(PROBE_TAG << 48 | previous)] })?;
        }
        let published = self.sink.epoch.elapsed().as_nanos() as u64;
        let block = StoredBlock { engine_hash: EngineHash(PROBE_TAG << 48 | sent), content_hash: BlockHash(published) };
        self.publish(rank, KvEventData::Stored { parent: None, blocks: vec![block] })?;
        self.probes_sent.set(sent + 1);
        Ok(())
    }

    fn shutdown(self) {
        let Bench { router_runtime, publisher_runtime, ingest, publisher, .. } = self;
        publisher_runtime.block_on(publisher.shutdown());
        router_runtime.block_on(ingest.shutdown());
    }
}
