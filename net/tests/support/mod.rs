//! What the `kvroute serve` integration tests (`serve_http`, `serve_hardening`) share:
//! the app state they route with, prompts, a raw HTTP/1.1 client, starting and stopping
//! the daemon on ephemeral ports, publishing a prompt's blocks, and parsing `serve`'s
//! flags as the binary does. Each test file is its own crate and uses part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use clap::Parser;
use kvroute_core::event::{KvEventData, StoredBlock};
use kvroute_core::hashing::{BlockHasher, HashScheme};
use kvroute_core::route::{RouterConfig, StorageTier};
use kvroute_core::{EngineHash, RankKey};
use kvroute_net::serve::{ApiLimits, AppState, ServeArgs, ServeConfig, ServeError, ServeOptions};
use kvroute_net::transport::PublisherHandle;

pub const BLOCK_SIZE: u32 = 16;

pub fn state_with(limits: ApiLimits) -> AppState {
    let config = RouterConfig { block_size: BLOCK_SIZE, room_seed: 1000, ..RouterConfig::default() };
    AppState::with_router_config(config, limits).expect("router config")
}

pub fn state() -> AppState {
    state_with(ApiLimits::default())
}

pub fn prompt(seed: u32, len: u32) -> Vec<u32> {
    (0..len).map(|i| seed.wrapping_mul(1_000_003).wrapping_add(i)).collect()
}

/// Publishes `tokens` as stored blocks of `rank` (engine hashes from `first_engine_hash`).
pub fn publish_prompt(publisher: &PublisherHandle, rank: RankKey, tokens: &[u32], first_engine_hash: u64) {
    let hasher = BlockHasher::with_scheme(BLOCK_SIZE as usize, HashScheme::Kv64).expect("hasher");
    let blocks = (hasher.hash_blocks(tokens).into_iter().enumerate())
        .map(|(i, content_hash)| StoredBlock { engine_hash: EngineHash(first_engine_hash + i as u64), content_hash })
        .collect();
    publisher.publish(rank, StorageTier::Device, KvEventData::Stored { parent: None, blocks }).expect("publish");
}

/// A raw HTTP/1.1 exchange over a socket (`Connection: close`), with an optional
/// `Authorization` header value and JSON body: status code and body.
pub async fn http_over_socket(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let body = body.unwrap_or("").to_owned();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream.write_all(request.as_bytes()).expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    })
    .await
    .expect("client thread")
}

/// A UDP port free a moment ago, for the ingest.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("udp bind").port()
}

/// A daemon configuration with QUIC ingest on `ingest_port` (insecure loopback) and
/// worker 7 with 2 dp ranks; `extra` adds top-level keys (one `key = value` per line).
pub fn ingest_daemon_toml(ingest_port: u16, extra: &str) -> String {
    format!(
        "ingest_listen = \"127.0.0.1:{ingest_port}\"\n{extra}\n[tls]\ninsecure_loopback = true\n\
         [[workers]]\nworker_id = 7\ndp_size = 2\n"
    )
}

pub type DaemonTask = tokio::task::JoinHandle<Result<(), ServeError>>;

/// Starts the daemon on an ephemeral HTTP port: its address, the stop sender and the task.
pub async fn start_daemon(toml: &str) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, DaemonTask) {
    let config = ServeConfig::resolve(ServeOptions::from_toml(toml).expect("options")).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(kvroute_net::serve::serve_on(config, listener, async move {
        let _ = stopped.await;
    }));
    (addr, stop, daemon)
}

/// Stops a daemon from [`start_daemon`]; it must shut down cleanly within `limit`.
pub async fn stop_daemon(stop: tokio::sync::oneshot::Sender<()>, daemon: DaemonTask, limit: Duration) {
    stop.send(()).expect("daemon running");
    tokio::time::timeout(limit, daemon)
        .await
        .expect("shuts down in time")
        .expect("daemon task")
        .expect("clean shutdown");
}

/// `kvroute serve`'s arguments, parsed as the binary parses them.
#[derive(Parser)]
struct ServeCli {
    #[command(flatten)]
    args: ServeArgs,
}

pub fn parse_flags(flags: &[&str]) -> ServeArgs {
    ServeCli::try_parse_from(std::iter::once("serve").chain(flags.iter().copied())).expect("flags parse").args
}

/// A temporary file holding `text` (a config or a token file).
pub fn temp_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write");
    file
}

/// The value of one unlabelled or labelled sample in an exposition, by its full text
/// before the value (`name{label="v"}`).
pub fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{exposition}"))
        .parse()
        .expect("sample value")
}
