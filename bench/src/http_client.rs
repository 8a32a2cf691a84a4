//! A minimal HTTP/1.1 client for the daemon's API: [`HttpClient`] keeps one keep-alive
//! TCP connection and sends one request at a time; [`read_response`] parses a response
//! from any buffered reader (the soak's bad-traffic task uses it on raw sockets too). The
//! soak and the `flood` binary talk to the daemon through it.
//!
//! Shape: `client.post_json("/v1/route", body).await` writes the request head and body in
//! one write, reads the status line, the headers and a `Content-Length` or chunked body,
//! and returns a [`Response`]. The connection is kept unless the server said
//! `Connection: close` or the request failed.
//!
//! No request is ever retried, so that a decision is never charged twice behind the
//! test's back: a connection unused for [`IDLE_REUSE`] is replaced before the request
//! (the daemon closes idle keep-alive connections after its header timeout, and a request
//! written into a connection the server is closing would fail without being processed,
//! or worse, be ambiguous). Every transport failure is returned to the caller, which
//! counts it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A kept connection idle longer than this is replaced (below the daemon's
/// `--http-header-timeout`, which the soak sets to at least 2 s).
pub const IDLE_REUSE: Duration = Duration::from_millis(1000);
/// Longest a request may take, connect to last body byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body accepted.
const MAX_BODY: usize = 64 << 20;

/// A response: status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server asked to close the connection.
    pub close: bool,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON of type `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("bad JSON reply ({e}): {}", self.text()))
    }
}

/// One keep-alive connection to `addr`; see the module docs.
pub struct HttpClient {
    addr: SocketAddr,
    conn: Option<(BufReader<TcpStream>, Instant)>,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> Self {
        HttpClient { addr, conn: None }
    }

    pub async fn get(&mut self, path: &str) -> Result<Response, String> {
        self.request("GET", path, None).await
    }

    pub async fn post_json(&mut self, path: &str, body: &[u8]) -> Result<Response, String> {
        self.request("POST", path, Some(body)).await
    }

    /// Sends one request and reads its response (see the module docs on reuse).
    pub async fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Response, String> {
        let result = tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body)).await;
        let result = match result {
            Ok(result) => result,
            Err(_) => Err(format!("{method} {path}: no response within {REQUEST_TIMEOUT:?}")),
        };
        match &result {
            Ok(response) if !response.close => {}
            _ => self.conn = None,
        }
        result
    }

    async fn exchange(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Response, String> {
        if self.conn.as_ref().is_some_and(|(_, used)| used.elapsed() > IDLE_REUSE) {
            self.conn = None;
        }
        let (mut conn, _) = match self.conn.take() {
            Some(conn) => conn,
            None => (BufReader::new(connect(self.addr).await?), Instant::now()),
        };
        let mut bytes = request_head(method, path, self.addr, body.map(<[u8]>::len));
        bytes.extend_from_slice(body.unwrap_or_default());
        conn.get_mut().write_all(&bytes).await.map_err(|e| format!("{method} {path}: write: {e}"))?;
        let response = read_response(&mut conn).await.map_err(|e| format!("{method} {path}: {e}"))?;
        self.conn = Some((conn, Instant::now()));
        Ok(response)
    }
}

/// A TCP connection to `addr`, with Nagle off.
pub async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect {addr}: timed out"))?
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("set_nodelay: {e}"))?;
    Ok(stream)
}

/// The head of a request (`Content-Length` and a JSON type when there is a body).
pub fn request_head(method: &str, path: &str, host: SocketAddr, body_len: Option<usize>) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    if let Some(len) = body_len {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {len}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Reads one response: status line, headers, then a `Content-Length` body, a chunked
/// body, or (neither) everything until the server closes.
pub async fn read_response<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Response, String> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.map_err(|e| format!("read: {e}"))? == 0 {
        return Err("connection closed before a response".into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    loop {
        line.clear();
        if reader.read_line(&mut line).await.map_err(|e| format!("read: {e}"))? == 0 {
            return Err("connection closed in the headers".into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { return Err(format!("bad header {header:?}")) };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = Some(value.parse::<usize>().map_err(|_| format!("bad length {value:?}"))?),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let body = match (chunked, length) {
        (true, _) => read_chunked(reader).await?,
        (false, Some(len)) if len > MAX_BODY => return Err(format!("response body of {len} bytes")),
        (false, Some(len)) => {
            let mut body = vec![0; len];
            reader.read_exact(&mut body).await.map_err(|e| format!("read body: {e}"))?;
            body
        }
        (false, None) => {
            close = true;
            let mut body = Vec::new();
            reader.take(MAX_BODY as u64).read_to_end(&mut body).await.map_err(|e| format!("read body: {e}"))?;
            body
        }
    };
    Ok(Response { status, body, close })
}

async fn read_chunked<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.map_err(|e| format!("read chunk: {e}"))?;
        let size = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
        if body.len() + size > MAX_BODY {
            return Err("chunked body too long".into());
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).await.map_err(|e| format!("read chunk: {e}"))?;
        line.clear();
        reader.read_line(&mut line).await.map_err(|e| format!("read chunk end: {e}"))?;
        if size == 0 {
            return Ok(body);
        }
    }
}
