//! `flood`: rows 3 and 4 of the hardening issue against a running `kvroute serve`: a flood
//! of half-open QUIC handshakes at its ingest and of slow or idle HTTP connections at its
//! API, while a real publisher connects and `/healthz` is probed.
//!
//! ```text
//! kvroute serve --insecure-loopback --http-listen 127.0.0.1:18461 --ingest-listen 127.0.0.1:18462 \
//!     --worker worker_id=0,dp_size=1 &
//! cargo run --release -p kvroute-bench --bin flood -- --http 127.0.0.1:18461 --quic 127.0.0.1:18462 \
//!     [--seconds 24] [--quic-rate 140] [--idle 2000] [--slow-headers 500] [--slow-bodies 100]
//! ```
//!
//! Method. For `--seconds`: one thread sends half-open QUIC connection attempts
//! (`kvroute_bench::quic_flood`, `--quic-rate` per second: row 3 was 3,300 datagrams in 24 s
//! for 1,100 handshakes); the HTTP side opens `--idle` connections that send nothing,
//! `--slow-headers` that send half a request line and then one byte a second, and
//! `--slow-bodies` that send a whole head announcing 100 body bytes and then one body byte
//! a second (row 4). Two seconds in, a real publisher (insecure loopback, worker
//! `--worker` rank 0) starts and the time until its connection is established is taken.
//! Every 100 ms `GET /healthz` is timed on a fresh connection. At the end the daemon's
//! `/metrics` lines for QUIC handshakes and HTTP connections are printed, and how many of
//! the flood's HTTP connections the daemon had closed.
//!
//! The figures printed: the publisher's connect time, the `/healthz` latency (p50, p99,
//! max, probes over 50 ms or failed), and the counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use kvroute_bench::http_client::HttpClient;
use kvroute_bench::quic_flood::HalfOpenFlood;
use kvroute_core::RankKey;
use kvroute_net::transport::{Publisher, PublisherConfig, RouterTarget, TlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Half-open QUIC handshakes and slow/idle HTTP connections against a running kvroute serve")]
struct Args {
    /// The daemon's HTTP address.
    #[arg(long)]
    http: SocketAddr,
    /// The daemon's QUIC ingest address (loopback).
    #[arg(long)]
    quic: SocketAddr,
    /// How long the flood lasts.
    #[arg(long, default_value_t = 24)]
    seconds: u64,
    /// Half-open QUIC connection attempts per second (0: none).
    #[arg(long, default_value_t = 140)]
    quic_rate: u64,
    /// HTTP connections that send nothing.
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// HTTP connections that send their request head a byte a second.
    #[arg(long, default_value_t = 500)]
    slow_headers: usize,
    /// HTTP connections that send their body a byte a second.
    #[arg(long, default_value_t = 100)]
    slow_bodies: usize,
    /// The worker the real publisher publishes for (rank 0; the daemon must know it).
    #[arg(long, default_value_t = 0)]
    worker: u64,
}

/// How a flood connection behaves.
#[derive(Clone, Copy)]
enum Slow {
    Idle,
    Header,
    Body,
}

/// Holds one flood connection for `until`; returns whether the daemon closed it first.
async fn hold(addr: SocketAddr, kind: Slow, until: Instant) -> Option<bool> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let (first, drip): (&[u8], &[u8]) = match kind {
        Slow::Idle => (b"", b""),
        Slow::Header => (b"POST /v1/rou", b"t"),
        Slow::Body => (
            b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
            b" ",
        ),
    };
    stream.write_all(first).await.ok()?;
    let mut buf = [0u8; 512];
    loop {
        let tick = tokio::time::sleep(Duration::from_secs(1));
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(true),
                Ok(_) => {} // a 408 answer; the close follows
            },
            () = tick => {
                if Instant::now() >= until {
                    return Some(false);
                }
                if !drip.is_empty() && stream.write_all(drip).await.is_err() {
                    return Some(true);
                }
            }
        }
    }
}

/// One `GET /healthz` on a fresh connection: its latency, or `None` when it failed.
async fn healthz(addr: SocketAddr) -> Option<Duration> {
    let started = Instant::now();
    let response = HttpClient::new(addr).get("/healthz").await.ok()?;
    (response.status == 200).then(|| started.elapsed())
}

async fn metrics_lines(addr: SocketAddr) -> Vec<String> {
    let text = HttpClient::new(addr).get("/metrics").await.map(|r| r.text()).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with("kvroute_ingest_handshakes") || l.starts_with("kvroute_ingest_connections"))
        .chain(text.lines().filter(|l| l.starts_with("kvroute_http_")))
        .filter(|l| !l.starts_with('#') && !l.starts_with("kvroute_http_unauthorized"))
        .map(str::to_owned)
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    println!("machine: {}", kvroute_bench::machine::Machine::this().line());
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let quic = (args.quic_rate > 0).then(|| {
        let (stop, sent, target, rate) = (Arc::clone(&stop), Arc::clone(&sent), args.quic, args.quic_rate);
        std::thread::spawn(move || {
            let mut flood = match HalfOpenFlood::new(target) {
                Ok(flood) => flood,
                Err(error) => return eprintln!("quic flood: {error}"),
            };
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Err(error) = flood.send_attempt() {
                    eprintln!("quic flood: {error}");
                }
                sent.fetch_add(1, Ordering::Relaxed);
                next += interval;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        })
    });

    let mut holders = tokio::task::JoinSet::new();
    let kinds = [(Slow::Idle, args.idle), (Slow::Header, args.slow_headers), (Slow::Body, args.slow_bodies)];
    for (slot, (kind, count)) in kinds.into_iter().enumerate() {
        for i in 0..count {
            holders.spawn(async move { (slot, hold(args.http, kind, until).await) });
            // Paced (about 50 a millisecond), so the connects do not overflow the listen
            // backlog: an overflowed connect completes late and skews the closing times.
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let rank = RankKey::new(args.worker, 0);
    let config = PublisherConfig::new(
        "flood-check",
        vec![RouterTarget::new(args.quic, "localhost")],
        TlsMode::InsecureLoopback,
        vec![rank],
    );
    let publisher_started = Instant::now();
    let publisher = Publisher::start(config).expect("publisher");
    let mut connect_time = None;
    let mut probes = Vec::new();
    let mut failed = 0usize;
    while Instant::now() < until {
        if connect_time.is_none() && publisher.metrics().connects > 0 {
            connect_time = Some(publisher_started.elapsed());
        }
        match healthz(args.http).await {
            Some(latency) => probes.push(latency),
            None => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(quic) = quic {
        let _ = quic.join();
    }
    // Per kind (idle, slow header, slow body): closed by the daemon, still open, never connected.
    let mut outcomes = [[0usize; 3]; 3];
    while let Some(done) = holders.join_next().await {
        if let Ok((slot, outcome)) = done {
            let column = match outcome {
                Some(true) => 0,
                Some(false) => 1,
                None => 2,
            };
            outcomes[slot][column] += 1;
        }
    }
    probes.sort_unstable();
    let slow = probes.iter().filter(|d| **d > Duration::from_millis(50)).count();
    println!(
        "flood: {} s, {} half-open QUIC attempts, HTTP {} idle + {} slow-header + {} slow-body connections",
        args.seconds,
        sent.load(Ordering::Relaxed),
        args.idle,
        args.slow_headers,
        args.slow_bodies
    );
    match connect_time {
        Some(t) => println!("publisher connected {:.1} ms after it started, during the flood", t.as_secs_f64() * 1e3),
        None => println!("publisher did NOT connect during the flood ({:?})", publisher.metrics()),
    }
    println!(
        "/healthz: {} probes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} over 50 ms, {} failed",
        probes.len() + failed,
        percentile(&probes, 0.5).as_secs_f64() * 1e3,
        percentile(&probes, 0.99).as_secs_f64() * 1e3,
        probes.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        slow,
        failed
    );
    for (name, [closed, held, unconnected]) in ["idle", "slow-header", "slow-body"].iter().zip(outcomes) {
        println!(
            "{name} connections: {closed} closed by the daemon, {held} still open at the end, {unconnected} never connected"
        );
    }
    for line in metrics_lines(args.http).await {
        println!("  {line}");
    }
    publisher.shutdown().await;
}
