//! The daemon's HTTP API as the soak calls it: typed requests and replies over an
//! [`HttpClient`].
//!
//! - [`route`]: `POST /v1/route` with `tokens` and `output_tokens` (optionally restricted
//!   to some `workers`), returning the [`Decision`];
//! - [`prefill_done`] and [`finish`]: `POST /v1/requests/{id}/prefill_done` and `/finish`;
//! - [`device_overlaps`]: `POST /v1/overlaps` with `block_hashes`, reduced to the device
//!   tier's `(rank, overlap)` pairs, sorted by rank (the shape of
//!   `ReferenceIndex::find_matches`);
//! - [`metrics`]: `GET /metrics`, parsed.
//!
//! Anything but the expected status is an error carrying the status and body.

use kvroute_core::{BlockHash, RankKey};

use crate::http_client::{HttpClient, Response};
use kvroute_core::metrics_page::MetricsPage;

/// The part of a `/v1/route` reply the soak uses.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Decision {
    pub worker_id: u64,
    pub dp_rank: u32,
    pub overlap_blocks: u32,
    pub request_id: Option<u64>,
}

#[derive(serde::Serialize)]
struct RouteBody<'a> {
    tokens: &'a [u32],
    output_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<&'a [u64]>,
}

#[derive(serde::Serialize)]
struct OverlapsBody<'a> {
    block_hashes: &'a [BlockHash],
}

#[derive(serde::Deserialize)]
struct OverlapsReply {
    overlaps: Vec<OverlapEntry>,
}

#[derive(serde::Deserialize)]
struct OverlapEntry {
    worker_id: u64,
    dp_rank: u32,
    tier: String,
    overlap_blocks: u32,
}

fn expect(response: Response, status: u16, what: &str) -> Result<Response, String> {
    if response.status == status {
        Ok(response)
    } else {
        Err(format!("{what}: status {} ({})", response.status, response.text().trim()))
    }
}

fn to_json<T: serde::Serialize>(body: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(body).map_err(|e| e.to_string())
}

/// `POST /v1/route`.
pub async fn route(
    client: &mut HttpClient,
    tokens: &[u32],
    output_tokens: u32,
    workers: Option<&[u64]>,
) -> Result<Decision, String> {
    let body = to_json(&RouteBody { tokens, output_tokens, workers })?;
    expect(client.post_json("/v1/route", &body).await?, 200, "POST /v1/route")?.json()
}

/// `POST /v1/requests/{id}/prefill_done`.
pub async fn prefill_done(client: &mut HttpClient, id: u64) -> Result<(), String> {
    let path = format!("/v1/requests/{id}/prefill_done");
    expect(client.post_json(&path, b"").await?, 200, &path).map(drop)
}

/// `POST /v1/requests/{id}/finish`.
pub async fn finish(client: &mut HttpClient, id: u64) -> Result<(), String> {
    let path = format!("/v1/requests/{id}/finish");
    expect(client.post_json(&path, b"").await?, 200, &path).map(drop)
}

/// `POST /v1/overlaps` for `chain`: the device tier's overlaps, sorted by rank.
pub async fn device_overlaps(client: &mut HttpClient, chain: &[BlockHash]) -> Result<Vec<(RankKey, u32)>, String> {
    let body = to_json(&OverlapsBody { block_hashes: chain })?;
    let reply: OverlapsReply =
        expect(client.post_json("/v1/overlaps", &body).await?, 200, "POST /v1/overlaps")?.json()?;
    let mut overlaps: Vec<(RankKey, u32)> = reply
        .overlaps
        .into_iter()
        .filter(|o| o.tier == "device")
        .map(|o| (RankKey::new(o.worker_id, o.dp_rank), o.overlap_blocks))
        .collect();
    overlaps.sort();
    Ok(overlaps)
}

/// `GET /metrics`, parsed.
pub async fn metrics(client: &mut HttpClient) -> Result<MetricsPage, String> {
    let response = expect(client.get("/metrics").await?, 200, "GET /metrics")?;
    let exposition = MetricsPage::parse(&response.text());
    if exposition.is_empty() {
        return Err("GET /metrics: no samples".into());
    }
    Ok(exposition)
}
