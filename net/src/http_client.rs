//! [`HttpClient`]: the one HTTP/1.1 client of this crate (hyper-util's pooled client over
//! plain TCP, no Nagle), for the routing proxy's upstream requests, the engine
//! simulator's bootstrap lookups and the live demo's load generator.
//!
//! [`HttpClient::request`] sends any request and returns the response head with its body
//! unread (to stream it); [`HttpClient::get`] / [`HttpClient::post_json`] read a whole,
//! small answer within a deadline.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A pooled HTTP/1.1 client; cloning shares the pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    /// A client whose TCP connects give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        HttpClient { client: Client::builder(TokioExecutor::new()).build(connector) }
    }

    /// Sends `request`; the response's body is left to the caller.
    pub async fn request(&self, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        self.client.request(request).await.map_err(|error| error.to_string())
    }

    /// `GET url`, its status and whole body, within `timeout`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<(StatusCode, Bytes), String> {
        let request = Request::get(url).body(Full::new(Bytes::new())).map_err(|error| error.to_string())?;
        self.whole(request, timeout).await
    }

    /// `POST url` with a JSON body, its status and whole body, within `timeout`.
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let request = Request::post(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|error| error.to_string())?;
        self.whole(request, timeout).await
    }

    async fn whole(&self, request: Request<Full<Bytes>>, timeout: Duration) -> Result<(StatusCode, Bytes), String> {
        let exchange = async {
            let response = self.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|error| error.to_string())?.to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("no answer within {timeout:?}"))?
    }
}
