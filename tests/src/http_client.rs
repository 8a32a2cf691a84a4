//! A small HTTP/1.1 client for the end-to-end tests (hyper-util's pooled client): JSON
//! requests, whole replies, server-sent events split into their `data:` payloads, and a
//! streamed reply that a test can read part of and drop (a client going away).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A whole reply.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpReply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `data:` payloads of a server-sent event stream, in order.
    pub fn sse_data(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.body)
            .split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A pooled client.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient { client: Client::builder(TokioExecutor::new()).build_http() }
    }
}

impl HttpClient {
    /// Sends a request and returns the reply's head and unread body.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> hyper::Response<Incoming> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body)).expect("request");
        self.client.request(request).await.unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    /// Sends a request and reads the whole reply.
    pub async fn exchange(&self, method: &str, url: &str, headers: &[(&str, &str)], body: Bytes) -> HttpReply {
        let response = self.send(method, url, headers, body).await;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.expect("reply body").to_bytes();
        HttpReply { status, headers, body }
    }

    /// `POST url` with a JSON body.
    pub async fn post_json(&self, url: &str, body: &serde_json::Value, headers: &[(&str, &str)]) -> HttpReply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.exchange("POST", url, &all, Bytes::from(body.to_string())).await
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> HttpReply {
        self.exchange("GET", url, &[], Bytes::new()).await
    }
}

/// Reads body frames of `response` until `count` data frames arrived; returns them.
pub async fn read_frames(response: &mut hyper::Response<Incoming>, count: usize) -> Vec<Bytes> {
    let mut frames = Vec::new();
    while frames.len() < count {
        match response.body_mut().frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    frames.push(data);
                }
            }
            _ => break,
        }
    }
    frames
}
