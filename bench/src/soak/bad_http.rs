//! Bad HTTP traffic, mixed into the run at a modest rate: [`run_bad_http`] sends one
//! malformed request every `interval`, cycling through [`Kind`]s, each on its own
//! connection, and checks the daemon's answer.
//!
//! | kind | sent | expected |
//! |---|---|---|
//! | garbage | random bytes, then a blank line | a 4xx or the connection closed |
//! | bad JSON | `POST /v1/route` with a truncated body | 400 |
//! | wrong type | `POST /v1/route` with `{"tokens":"abc"}` | a 4xx |
//! | oversize | a body one byte over `--max-body-bytes` | 413 (or closed) |
//! | unknown path | `GET /v1/no-such-thing` | 404 |
//! | unknown request | `finish` of a request id never issued | 404 |
//! | slow header | half a request head, then nothing | closed within the header timeout |
//! | idle keep-alive | `GET /healthz`, then nothing | closed within the header timeout |
//!
//! The last two hold their connection in a task of their own (at most [`MAX_HELD`] at
//! once) and count it closed when the daemon closes it within the header timeout plus
//! [`CLOSE_SLACK`]. Any other outcome is a failure ([`Tally::fail`]). Bad JSON and wrong
//! types also show in the daemon's `kvroute_route_decisions_total` error outcomes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use super::tally::Tally;
use crate::http_client::{self, connect, read_response, request_head, HttpClient};
use crate::rng::Rng;

/// Slow-header and idle connections held at once, at most.
const MAX_HELD: usize = 8;
/// How much later than the header timeout the daemon may close a held connection.
const CLOSE_SLACK: Duration = Duration::from_secs(3);

/// What the bad traffic needs to know.
#[derive(Clone)]
pub struct BadHttpContext {
    pub http: SocketAddr,
    pub tally: Arc<Tally>,
    /// The daemon's `--max-body-bytes`.
    pub max_body_bytes: u64,
    /// The daemon's `--http-header-timeout`.
    pub header_timeout: Duration,
    pub seed: u64,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Garbage,
    BadJson,
    WrongType,
    Oversize,
    UnknownPath,
    UnknownRequest,
    SlowHeader,
    IdleKeepAlive,
}

const KINDS: [Kind; 8] = [
    Kind::Garbage,
    Kind::BadJson,
    Kind::SlowHeader,
    Kind::WrongType,
    Kind::Oversize,
    Kind::IdleKeepAlive,
    Kind::UnknownPath,
    Kind::UnknownRequest,
];

/// Sends one bad request every `interval` until `stop`.
pub async fn run_bad_http(context: BadHttpContext, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut rng = Rng::new(context.seed, 3);
    let held = Arc::new(AtomicUsize::new(0));
    let mut holders = tokio::task::JoinSet::new();
    for i in 0.. {
        if !super::tick_or_stop(interval, &mut stop).await {
            break;
        }
        let kind = KINDS[i % KINDS.len()];
        Tally::bump(&context.tally.bad_http_sent);
        let result = match kind {
            Kind::SlowHeader | Kind::IdleKeepAlive => {
                if held.load(Ordering::Relaxed) < MAX_HELD {
                    held.fetch_add(1, Ordering::Relaxed);
                    let (context, held) = (context.clone(), held.clone());
                    holders.spawn(async move {
                        if let Err(error) = hold(&context, kind).await {
                            context.tally.fail(format!("bad HTTP {kind:?}: {error}"));
                        }
                        held.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Ok(())
            }
            _ => one_shot(&context, &mut rng, kind).await,
        };
        if let Err(error) = result {
            context.tally.fail(format!("bad HTTP {kind:?}: {error}"));
        }
        while holders.try_join_next().is_some() {}
    }
    // Held connections end by themselves within the header timeout plus the slack.
    while holders.join_next().await.is_some() {}
}

/// The kinds answered at once (see the module docs' table).
async fn one_shot(context: &BadHttpContext, rng: &mut Rng, kind: Kind) -> Result<(), String> {
    let http = context.http;
    let status = match kind {
        Kind::Garbage => {
            let len = rng.between(1, 2048) as usize;
            let mut bytes = rng.bytes(len);
            bytes.extend_from_slice(b"\r\n\r\n");
            match raw_exchange(http, &bytes).await? {
                None => return Ok(()),
                Some(status) if (400..500).contains(&status) => return Ok(()),
                Some(status) => return Err(format!("answered {status}")),
            }
        }
        Kind::BadJson => HttpClient::new(http).post_json("/v1/route", br#"{"tokens": [1, 2,"#).await?.status,
        Kind::WrongType => {
            let status = HttpClient::new(http).post_json("/v1/route", br#"{"tokens": "abc"}"#).await?.status;
            return if (400..500).contains(&status) { Ok(()) } else { Err(format!("answered {status}")) };
        }
        Kind::Oversize => {
            let len = context.max_body_bytes as usize + 1;
            let mut bytes = request_head("POST", "/v1/route", http, Some(len));
            bytes.extend(std::iter::repeat_n(b' ', len));
            match raw_exchange(http, &bytes).await? {
                None | Some(413) => return Ok(()),
                Some(status) => return Err(format!("answered {status}")),
            }
        }
        Kind::UnknownPath => HttpClient::new(http).get("/v1/no-such-thing").await?.status,
        Kind::UnknownRequest => {
            let id = (1u64 << 62) | rng.below(1 << 40);
            let status = HttpClient::new(http).post_json(&format!("/v1/requests/{id}/finish"), b"").await?.status;
            if status != 404 {
                return Err(format!("finish of a request never issued answered {status}"));
            }
            return Ok(());
        }
        Kind::SlowHeader | Kind::IdleKeepAlive => return Ok(()),
    };
    let expected = match kind {
        Kind::UnknownPath => 404,
        _ => 400,
    };
    if status == expected {
        Ok(())
    } else {
        Err(format!("answered {status}, not {expected}"))
    }
}

/// Writes `bytes` on a new connection (a write error is fine: the server may close
/// early) and reads a response: `Some(status)`, or `None` if the server closed instead.
async fn raw_exchange(http: SocketAddr, bytes: &[u8]) -> Result<Option<u16>, String> {
    let mut stream = BufReader::new(connect(http).await?);
    let exchange = async {
        let _ = stream.get_mut().write_all(bytes).await;
        read_response(&mut stream).await
    };
    match tokio::time::timeout(http_client::REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(response)) => Ok(Some(response.status)),
        Ok(Err(_)) => Ok(None),
        Err(_) => Err("neither an answer nor a close within the request timeout".into()),
    }
}

/// A slow-header or idle keep-alive connection: waits for the daemon to close it.
async fn hold(context: &BadHttpContext, kind: Kind) -> Result<(), String> {
    let mut stream = BufReader::new(connect(context.http).await?);
    let started = Instant::now();
    match kind {
        Kind::SlowHeader => {
            let partial = format!("POST /v1/route HTTP/1.1\r\nHost: {}\r\nContent-Ty", context.http);
            stream.get_mut().write_all(partial.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        }
        _ => {
            let head = request_head("GET", "/healthz", context.http, None);
            stream.get_mut().write_all(&head).await.map_err(|e| format!("write: {e}"))?;
            let response = read_response(&mut stream).await?;
            if response.status != 200 || response.close {
                return Err(format!("GET /healthz answered {} (close: {})", response.status, response.close));
            }
        }
    }
    let limit = context.header_timeout + CLOSE_SLACK;
    let mut rest = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut rest)).await {
        Ok(_) => {
            let counter = match kind {
                Kind::SlowHeader => &context.tally.slow_headers_closed,
                _ => &context.tally.idle_keepalive_closed,
            };
            Tally::bump(counter);
            Ok(())
        }
        Err(_) => Err(format!(
            "still open {:?} after the last byte (header timeout {:?})",
            started.elapsed(),
            context.header_timeout
        )),
    }
}
