//! `kvroute serve`'s two guards: the cap on QUIC publisher connections
//! (`max_publisher_connections`) and the optional bearer token of the HTTP API
//! (`http_token_file`). The API is driven in process with `tower::ServiceExt::oneshot`
//! and, for the daemon, over a socket; the connection cap with real publishers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{Method, Request, StatusCode};
use kvroute_core::route::RouterConfig;
use kvroute_core::RankKey;
use kvroute_net::serve::config::ConfigError;
use kvroute_net::serve::{http, BearerToken, ServeArgs, ServeConfig, TlsMode};
use kvroute_net::transport::{IngestConfig, IngestServer, Publisher, PublisherConfig, PublisherHandle, RouterTarget};
use serde_json::{json, Value};
use tower::ServiceExt;

mod support;
use support::*;

const TOKEN: &str = "s3cret-Token_42";

fn token() -> BearerToken {
    BearerToken::new(TOKEN).expect("token")
}

struct Reply {
    status: StatusCode,
    challenge: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts a 401 with the API's error body and a Bearer challenge.
    fn assert_unauthorized(&self) {
        assert_eq!(self.status, StatusCode::UNAUTHORIZED, "{}", self.body);
        let body = self.json();
        assert_eq!(body["kind"], "unauthorized", "{body}");
        assert!(body["error"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        assert!(self.challenge.as_deref().is_some_and(|c| c.starts_with("Bearer ")), "{:?}", self.challenge);
    }
}

/// One request through the app, with an optional `Authorization` header value.
async fn call(app: &axum::Router, method: Method, path: &str, auth: Option<&str>, body: Option<Value>) -> Reply {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(auth) = auth {
        request = request.header(AUTHORIZATION, auth);
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible service");
    let status = response.status();
    let challenge = response.headers().get(WWW_AUTHENTICATE).map(|v| v.to_str().expect("ascii").to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    Reply { status, challenge, body: String::from_utf8(bytes.to_vec()).expect("utf-8 body") }
}

#[tokio::test]
async fn with_a_token_every_endpoint_but_healthz_needs_it() {
    let app = http::app(state().with_http_token(token()));
    let bearer = format!("Bearer {TOKEN}");

    // No token, a wrong one, a malformed header: 401 with a JSON error, on every endpoint.
    let register = json!({"worker_id": 7, "dp_size": 2});
    call(&app, Method::GET, "/v1/workers", None, None).await.assert_unauthorized();
    call(&app, Method::POST, "/v1/workers", None, Some(register.clone())).await.assert_unauthorized();
    call(&app, Method::GET, "/v1/workers", Some("Bearer s3cret-Token_43"), None).await.assert_unauthorized();
    call(&app, Method::GET, "/v1/workers", Some(&format!("Bearer {TOKEN}x")), None).await.assert_unauthorized();
    call(&app, Method::GET, "/v1/workers", Some(&format!("Basic {TOKEN}")), None).await.assert_unauthorized();
    let route = json!({"tokens": [1, 2, 3]});
    call(&app, Method::POST, "/v1/route", Some("Bearer nope"), Some(route.clone())).await.assert_unauthorized();
    call(&app, Method::DELETE, "/v1/workers/7", None, None).await.assert_unauthorized();
    call(&app, Method::POST, "/v1/requests/1/finish", None, None).await.assert_unauthorized();
    call(&app, Method::GET, "/metrics", None, None).await.assert_unauthorized();
    // Unknown paths and other methods on /healthz too: nothing is learnt without the token.
    call(&app, Method::GET, "/no/such/path", None, None).await.assert_unauthorized();
    call(&app, Method::POST, "/healthz", None, None).await.assert_unauthorized();

    // The right token: the API as usual.
    let created = call(&app, Method::POST, "/v1/workers", Some(&bearer), Some(register)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let listed = call(&app, Method::GET, "/v1/workers", Some(&bearer), None).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert_eq!(listed.json()["workers"][0]["worker_id"], 7);
    let routed = call(&app, Method::POST, "/v1/route", Some(&format!("bearer  {TOKEN}")), Some(route)).await;
    assert_eq!(routed.status, StatusCode::OK, "the scheme is case-insensitive: {}", routed.body);
    assert_eq!(routed.json()["worker_id"], 7);
    let unknown = call(&app, Method::GET, "/no/such/path", Some(&bearer), None).await;
    assert_eq!((unknown.status, unknown.json()["kind"].clone()), (StatusCode::NOT_FOUND, json!("not_found")));

    // The health check needs no token (nor minds one).
    let health = call(&app, Method::GET, "/healthz", None, None).await;
    assert_eq!((health.status, health.body.as_str()), (StatusCode::OK, "ok"));
    let health = call(&app, Method::GET, "/healthz", Some("Bearer wrong"), None).await;
    assert_eq!(health.status, StatusCode::OK);

    // Counted by reason.
    let metrics = call(&app, Method::GET, "/metrics", Some(&bearer), None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(sample(&metrics.body, r#"kvroute_http_unauthorized_total{reason="missing"}"#), 7.0, "{}", metrics.body);
    assert_eq!(sample(&metrics.body, r#"kvroute_http_unauthorized_total{reason="wrong_token"}"#), 3.0);
    assert_eq!(sample(&metrics.body, r#"kvroute_http_unauthorized_total{reason="malformed"}"#), 1.0);
}

#[tokio::test]
async fn without_a_token_the_api_is_open_as_before() {
    let app = http::app(state());
    let created = call(&app, Method::POST, "/v1/workers", None, Some(json!({"worker_id": 7, "dp_size": 2}))).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    // An Authorization header is ignored, whatever it holds.
    for auth in [None, Some("Bearer anything"), Some("Basic Zm9v")] {
        let listed = call(&app, Method::GET, "/v1/workers", auth, None).await;
        assert_eq!(listed.status, StatusCode::OK, "{auth:?}: {}", listed.body);
        assert_eq!(listed.challenge, None);
    }
    let unknown = call(&app, Method::GET, "/no/such/path", None, None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let metrics = call(&app, Method::GET, "/metrics", None, None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(sample(&metrics.body, r#"kvroute_http_unauthorized_total{reason="missing"}"#), 0.0);
    let health = call(&app, Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
}

// ---- configuration ----

fn invalid_field(flags: &[&str]) -> (String, String) {
    match ServeConfig::load(&parse_flags(flags)) {
        Err(ConfigError::Invalid { field, reason }) => (field, reason),
        other => panic!("{flags:?}: expected an invalid field, got {other:?}"),
    }
}

#[test]
fn guard_options_from_flags_and_file() {
    // Defaults: an open API, 1024 publisher connections, 64 handshakes apart from them.
    let config = ServeConfig::load(&parse_flags(&["--insecure-loopback"])).expect("valid");
    assert!(config.http_token.is_none());
    assert_eq!((config.max_publisher_connections, config.max_publisher_handshakes), (1024, 64));
    assert_eq!(config.effective.max_publisher_connections, Some(1024), "--print-config shows the default");
    assert_eq!(config.effective.max_publisher_handshakes, Some(64));
    let (field, _) = invalid_field(&["--insecure-loopback", "--max-publisher-handshakes", "0"]);
    assert_eq!(field, "max_publisher_handshakes");

    let token_file = temp_file(&format!("\n  {TOKEN}  \n"));
    let path = token_file.path().to_str().expect("utf-8 path");
    let args = parse_flags(&["--insecure-loopback", "--http-token-file", path, "--max-publisher-connections", "8"]);
    let config = ServeConfig::load(&args).expect("valid");
    assert_eq!(config.http_token, Some(token()), "read once, whitespace trimmed");
    assert_eq!(config.max_publisher_connections, 8);
    assert!(!format!("{config:?}").contains(TOKEN), "the token never shows in Debug");
    let printed = config.effective.to_toml().expect("to TOML");
    assert!(printed.contains("http_token_file") && !printed.contains(TOKEN), "{printed}");

    let file = temp_file(&format!(
        "http_token_file = {:?}\nmax_publisher_connections = 3\n[tls]\ninsecure_loopback = true\n",
        path
    ));
    let args = ServeArgs { config: Some(file.path().to_owned()), ..ServeArgs::default() };
    let config = ServeConfig::load(&args).expect("valid");
    assert_eq!((config.http_token, config.max_publisher_connections), (Some(token()), 3));

    let (field, reason) = invalid_field(&["--insecure-loopback", "--max-publisher-connections", "0"]);
    assert_eq!(field, "max_publisher_connections");
    assert!(reason.contains("at least 1"), "{reason}");
    let empty = temp_file(" \n\t\n");
    let (field, reason) =
        invalid_field(&["--insecure-loopback", "--http-token-file", empty.path().to_str().expect("utf-8")]);
    assert_eq!(field, "http_token_file");
    assert!(reason.contains("empty"), "{reason}");
    let (field, reason) = invalid_field(&["--insecure-loopback", "--http-token-file", "/nonexistent/kvroute.token"]);
    assert_eq!(field, "http_token_file");
    assert!(reason.contains("/nonexistent/kvroute.token"), "{reason}");
}

#[test]
fn an_unreadable_token_file_stops_the_binary() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvroute"))
        .args(["serve", "--insecure-loopback", "--http-token-file", "/nonexistent/kvroute.token"])
        .output()
        .expect("run kvroute");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("http_token_file") && !stderr.contains("panicked"), "{stderr}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvroute"))
        .args(["serve", "--help"])
        .output()
        .expect("run kvroute");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--http-token-file") && help.contains("--max-publisher-connections"), "{help}");
}

// ---- the daemon ----

/// A JSON POST over a socket that must answer 200: the body as JSON.
async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Value {
    let (status, text) = http_over_socket(addr, "POST", path, None, Some(&body.to_string())).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_requires_the_token_from_its_file() {
    let token_file = temp_file(&format!("{TOKEN}\n"));
    let toml = format!(
        "http_token_file = {:?}\ningest_listen = \"127.0.0.1:{}\"\n[tls]\ninsecure_loopback = true\n",
        token_file.path().to_str().expect("utf-8 path"),
        free_udp_port()
    );
    let (addr, stop, daemon) = start_daemon(&toml).await;
    assert_eq!(http_over_socket(addr, "GET", "/healthz", None, None).await, (200, "ok".to_owned()));
    let (status, body) = http_over_socket(addr, "GET", "/v1/workers", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).expect("JSON error")["kind"], "unauthorized");
    assert_eq!(http_over_socket(addr, "GET", "/v1/workers", Some("Bearer wrong"), None).await.0, 401);
    let (status, body) = http_over_socket(addr, "GET", "/v1/workers", Some(&format!("Bearer {TOKEN}")), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = http_over_socket(addr, "GET", "/metrics", Some(&format!("Bearer {TOKEN}")), None).await;
    assert_eq!(status, 200);
    assert_eq!(sample(&metrics, r#"kvroute_http_unauthorized_total{reason="missing"}"#), 1.0);
    assert_eq!(sample(&metrics, r#"kvroute_http_unauthorized_total{reason="wrong_token"}"#), 1.0);
    stop_daemon(stop, daemon, Duration::from_secs(20)).await;
}

/// Routes `tokens` (dry) until `rank` holds `want` blocks of it, or 20 s pass.
async fn wait_for_overlap(addr: SocketAddr, tokens: &[u32], rank: RankKey, want: u64) {
    let body = json!({"tokens": tokens, "dry_run": true});
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let decision = post_json(addr, "/v1/route", &body).await;
        if decision["dp_rank"] == rank.dp_rank.0 && decision["overlap_blocks"] == want {
            return;
        }
        assert!(Instant::now() < deadline, "rank {rank} never held the prompt: {decision}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `/metrics` until `series` satisfies `ok`, or 20 s pass; returns the exposition.
async fn wait_for_metric(addr: SocketAddr, series: &str, ok: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, metrics) = http_over_socket(addr, "GET", "/metrics", None, None).await;
        assert_eq!(status, 200);
        if ok(sample(&metrics, series)) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "{series} never reached the expected value:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn publisher(ingest: SocketAddr, name: &str, rank: RankKey) -> PublisherHandle {
    Publisher::start(PublisherConfig::new(
        name,
        vec![RouterTarget::new(ingest, "localhost")],
        TlsMode::InsecureLoopback,
        vec![rank],
    ))
    .expect("publisher")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_connections_beyond_the_cap_are_refused_until_one_ends() {
    let ingest_port = free_udp_port();
    let toml = ingest_daemon_toml(ingest_port, "max_publisher_connections = 1");
    let (addr, stop, daemon) = start_daemon(&toml).await;
    let ingest: SocketAddr = ([127, 0, 0, 1], ingest_port).into();
    let (rank0, rank1) = (RankKey::new(7, 0), RankKey::new(7, 1));

    // The first publisher connects and delivers.
    let first = publisher(ingest, "first", rank0);
    let prompt_a = prompt(1, 64);
    publish_prompt(&first, rank0, &prompt_a, 1);
    wait_for_overlap(addr, &prompt_a, rank0, 4).await;

    // The second is refused (and keeps retrying); each refusal is counted.
    let second = publisher(ingest, "second", rank1);
    let prompt_c = prompt(3, 64);
    publish_prompt(&second, rank1, &prompt_c, 1);
    let metrics = wait_for_metric(addr, "kvroute_ingest_connections_refused_total", |n| n >= 2.0).await;
    assert_eq!(sample(&metrics, "kvroute_ingest_connections_open"), 1.0);
    assert_eq!(sample(&metrics, "kvroute_ingest_connections_total"), 1.0);
    assert_eq!(sample(&metrics, "kvroute_ingest_handshakes_in_flight"), 0.0);
    // The publisher learns of a refusal a moment after the router counts it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while second.metrics().connect_failures < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(second.metrics().connect_failures >= 2, "{:?}", second.metrics());
    assert_eq!(second.metrics().connects, 0);

    // The first keeps working: a new event still arrives.
    let prompt_b = prompt(2, 48);
    publish_prompt(&first, rank0, &prompt_b, 100);
    wait_for_overlap(addr, &prompt_b, rank0, 3).await;

    // Once it leaves, the second gets in (at its next retry) and delivers its rank.
    first.shutdown().await;
    wait_for_overlap(addr, &prompt_c, rank1, 4).await;
    let metrics = wait_for_metric(addr, "kvroute_ingest_connections_total", |n| n == 2.0).await;
    assert_eq!(sample(&metrics, "kvroute_ingest_connections_open"), 1.0);
    assert_eq!(second.metrics().connects, 1);

    second.shutdown().await;
    stop_daemon(stop, daemon, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn the_ingest_refuses_a_zero_connection_cap() {
    let mut config = IngestConfig::new("127.0.0.1:0".parse().expect("addr"), TlsMode::InsecureLoopback);
    config.max_connections = 0;
    let sink = std::sync::Arc::new(
        kvroute_core::route::Router::new(RouterConfig::default(), std::sync::Arc::new(|| 0u64)).expect("router"),
    );
    let error = IngestServer::start(config, sink).err().expect("refused");
    assert!(error.to_string().contains("max_connections"), "{error}");
}

/// Reads until the peer closes; the bytes read (a refused or timed-out connection gets
/// none).
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut bytes)).await.expect("closed in time");
    bytes
}

async fn healthz(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.expect("read");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_are_capped_and_idle_or_slow_ones_closed() {
    use kvroute_net::serve::http_server::{self, HttpConnectionMetrics, HttpServerLimits};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = HttpServerLimits { max_connections: 2, header_read_timeout: Duration::from_millis(300) };
    let metrics = Arc::new(HttpConnectionMetrics::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(http_server::serve(listener, http::app(state()), limits, Arc::clone(&metrics), stop_rx));

    // Two connections hold the cap: one idle, one sending its head a byte at a time.
    let started = Instant::now();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /heal").await.unwrap();
    while metrics.open.load(Ordering::Relaxed) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A third is closed at once and counted.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(read_until_closed(&mut third).await.is_empty());
    assert_eq!(metrics.refused.load(Ordering::Relaxed), 1);
    // The header timeout closes both (hyper answers the slow one 408, the idle one nothing).
    assert!(read_until_closed(&mut idle).await.is_empty());
    let slow_reply = String::from_utf8(read_until_closed(&mut slow).await).unwrap();
    assert!(slow_reply.is_empty() || slow_reply.starts_with("HTTP/1.1 408"), "{slow_reply:?}");
    assert!(started.elapsed() >= Duration::from_millis(300), "not before the timeout");
    // Then a real client gets through.
    let reply = healthz(addr).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    stop_tx.send(true).unwrap();
    server.await.unwrap().unwrap();
    assert_eq!(metrics.open.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_answered_408_and_counted() {
    use kvroute_net::serve::http_server::{self, HttpServerLimits};
    use kvroute_net::serve::ApiLimits;
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app_state = state_with(ApiLimits { request_timeout: Duration::from_millis(300), ..ApiLimits::default() });
    let metrics = app_state.http_connections.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = http::app(app_state.clone());
    let server = tokio::spawn(http_server::serve(listener, app, HttpServerLimits::default(), metrics.clone(), stop_rx));

    // The head arrives at once, the body never completes.
    let started = Instant::now();
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        b"POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"tok",
    )
    .await
    .unwrap();
    let reply = String::from_utf8(read_until_closed(&mut slow).await).unwrap();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply:?}");
    assert!(started.elapsed() >= Duration::from_millis(300), "not before the timeout");
    assert_eq!(metrics.timed_out.load(Ordering::Relaxed), 1);
    // A whole request in time is answered as usual, and /metrics shows the count.
    let (status, body) = http_over_socket(addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(sample(&body, "kvroute_http_requests_timed_out_total"), 1.0);
    stop_tx.send(true).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_request_head_closes_its_connection() {
    use kvroute_net::serve::http_server::{self, HttpConnectionMetrics, HttpServerLimits, MAX_READ_BUFFER};
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(HttpConnectionMetrics::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server =
        tokio::spawn(http_server::serve(listener, http::app(state()), HttpServerLimits::default(), metrics, stop_rx));
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX_READ_BUFFER + 1));
    // The server may close before taking it all: a failed write is fine, the reply counts.
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move { write.write_all(head.as_bytes()).await });
    let mut reply = Vec::new();
    let read_all = tokio::io::AsyncReadExt::read_to_end(&mut read, &mut reply);
    // Closed at once: hyper answers 431, or just closes when it has not read the whole
    // head before giving up. A head that fits in one read must not slip through.
    let closed = tokio::time::timeout(Duration::from_secs(5), read_all).await;
    assert!(closed.is_ok(), "the connection must be closed, not held");
    let _ = writer.await;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 431"), "{reply:?}");
    // A normal head still works.
    let reply = healthz(addr).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    stop_tx.send(true).unwrap();
    server.await.unwrap().unwrap();
}
