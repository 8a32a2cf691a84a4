//! `kvroute serve`'s HTTP API and configuration, in process: the axum app is driven with
//! `tower::ServiceExt::oneshot` (no socket), one test serves it on an ephemeral port and
//! shuts it down, and the config tests parse files and flags as the binary does.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use kvroute_core::hashing::{BlockHasher, HashScheme};
use kvroute_core::RankKey;
use kvroute_net::serve::config::ConfigError;
use kvroute_net::serve::{http, ApiLimits, MetricKind, MetricSample, ServeArgs, ServeConfig, ServeOptions, TlsMode};
use kvroute_net::transport::{Publisher, PublisherConfig, RouterTarget};
use serde_json::{json, Value};
use tower::ServiceExt;

mod support;
use support::*;

/// One request through the app: status and body text.
async fn call(app: &axum::Router, method: Method, path: &str, body: Option<&str>) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible service");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    (status, String::from_utf8(bytes.to_vec()).expect("utf-8 body"))
}

async fn call_json(app: &axum::Router, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let text = body.map(|b| b.to_string());
    let (status, text) = call(app, method, path, text.as_deref()).await;
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
    (status, value)
}

async fn post(app: &axum::Router, path: &str, body: Value) -> (StatusCode, Value) {
    call_json(app, Method::POST, path, Some(body)).await
}

/// Asserts an error response's status and kind.
fn assert_error(response: &(StatusCode, Value), status: StatusCode, kind: &str) {
    assert_eq!(response.0, status, "{}", response.1);
    assert_eq!(response.1["kind"], kind, "{}", response.1);
    assert!(response.1["error"].as_str().is_some_and(|m| !m.is_empty()), "{}", response.1);
}

async fn register(app: &axum::Router, body: Value) {
    let (status, listing) = post(app, "/v1/workers", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "register {body}: {listing}");
    assert_eq!(listing["worker_id"], body["worker_id"]);
    assert_eq!(listing["mode"], "approximate");
}

#[tokio::test]
async fn routes_by_tokens_and_by_block_hashes() {
    let app = http::app(state());
    register(&app, json!({"worker_id": 7, "dp_size": 4})).await;
    let tokens = prompt(1, 64);

    let (status, first) = post(&app, "/v1/route", json!({"tokens": tokens, "output_tokens": 16})).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["worker_id"], 7);
    let rank = first["dp_rank"].as_u64().expect("dp_rank");
    assert!(rank < 4);
    assert_eq!(first["overlap_blocks"], 0);
    assert_eq!(first["cost"]["request_blocks"], 4);
    let id = first["request_id"].as_u64().expect("request_id");
    let (status, _) = post(&app, &format!("/v1/requests/{id}/finish"), json!(null)).await;
    assert_eq!(status, StatusCode::OK);

    // Approximate mode recorded the prompt on the chosen rank: a dry run finds it there.
    let (status, again) = post(&app, "/v1/route", json!({"tokens": tokens, "dry_run": true})).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!((again["dp_rank"].as_u64(), again["overlap_blocks"].as_u64()), (Some(rank), Some(4)));
    assert_eq!(again["request_id"], Value::Null);

    // The same prompt as block hashes, hashed the router's way.
    let hasher = BlockHasher::with_scheme(BLOCK_SIZE as usize, HashScheme::Kv64).expect("hasher");
    let hashes: Vec<u64> = hasher.hash_blocks(&tokens).iter().map(|h| h.0).collect();
    let (status, by_hash) = post(&app, "/v1/route", json!({"block_hashes": hashes, "dry_run": true})).await;
    assert_eq!(status, StatusCode::OK, "{by_hash}");
    assert_eq!((by_hash["dp_rank"].as_u64(), by_hash["overlap_blocks"].as_u64()), (Some(rank), Some(4)));

    // A fixed rank: the other rank is taken, with no overlap.
    let other = (rank + 1) % 4;
    let body = json!({"tokens": tokens, "worker_id": 7, "dp_rank": other, "dry_run": true});
    let (status, fixed) = post(&app, "/v1/route", body).await;
    assert_eq!(status, StatusCode::OK, "{fixed}");
    assert_eq!((fixed["dp_rank"].as_u64(), fixed["overlap_blocks"].as_u64()), (Some(other), Some(0)));
}

#[tokio::test]
async fn disaggregated_rooms_name_the_prefill_rank() {
    let app = http::app(state());
    let prefill =
        json!({"worker_id": 1, "dp_size": 4, "role": "prefill", "bootstrap_host": "10.0.0.1", "bootstrap_port": 8998});
    register(&app, prefill).await;
    register(&app, json!({"worker_id": 2, "dp_size": 2, "role": "decode"})).await;

    let mut prefill_ranks = std::collections::BTreeSet::new();
    for seed in 0..24 {
        let (status, pd) = post(&app, "/v1/route/disaggregated", json!({"tokens": prompt(seed, 48)})).await;
        assert_eq!(status, StatusCode::OK, "{pd}");
        let p_rank = pd["prefill"]["dp_rank"].as_u64().expect("prefill rank");
        let d_rank = pd["decode"]["dp_rank"].as_u64().expect("decode rank");
        let room = pd["bootstrap"]["room"].as_u64().expect("room");
        assert_eq!(pd["prefill"]["worker_id"], 1);
        assert_eq!(pd["decode"]["worker_id"], 2);
        assert!(p_rank < 4 && d_rank < 2, "{pd}");
        assert_eq!(room % 4, p_rank, "bootstrap_room % prefill_dp_size must be the prefill rank: {pd}");
        assert_eq!(pd["bootstrap"], json!({"host": "10.0.0.1", "port": 8998, "room": room, "prefill_dp_size": 4}));
        let id = pd["request_id"].as_u64().expect("request_id");
        assert_eq!(pd["prefill"]["request_id"].as_u64(), Some(id));
        assert_eq!(
            pd["prefill_request"],
            json!({"routed_dp_rank": p_rank, "bootstrap_host": "10.0.0.1", "bootstrap_port": 8998, "bootstrap_room": room})
        );
        assert_eq!(
            pd["decode_request"],
            json!({
                "routed_dp_rank": d_rank,
                "disagg_prefill_dp_rank": p_rank,
                "data_parallel_rank": d_rank,
                "bootstrap_host": "10.0.0.1",
                "bootstrap_port": 8998,
                "bootstrap_room": room
            })
        );
        prefill_ranks.insert(p_rank);
        // Left active, so that prefill load spreads the next requests over the ranks.
    }
    assert_eq!(prefill_ranks.len(), 4, "load should spread prefill over all 4 ranks: {prefill_ranks:?}");

    // Same-rank mode: decode on the prefill rank's index (decode has ranks 0 and 1).
    let (status, pd) =
        post(&app, "/v1/route/disaggregated", json!({"tokens": prompt(99, 32), "same_rank": true, "dry_run": true}))
            .await;
    assert_eq!(status, StatusCode::OK, "{pd}");
    assert_eq!(pd["prefill"]["dp_rank"], pd["decode"]["dp_rank"]);
    assert_eq!(pd["request_id"], Value::Null);

    // Restricting decode to the prefill worker leaves no decode candidate.
    let body = json!({"tokens": prompt(5, 32), "decode_workers": [1]});
    assert_error(&post(&app, "/v1/route/disaggregated", body).await, StatusCode::SERVICE_UNAVAILABLE, "no_candidates");
}

#[tokio::test]
async fn request_lifecycle_prefill_done_then_finish() {
    let app = http::app(state());
    register(&app, json!({"worker_id": 7, "dp_size": 2})).await;
    let (_, decision) = post(&app, "/v1/route", json!({"tokens": prompt(3, 40)})).await;
    let id = decision["request_id"].as_u64().expect("request_id");
    let rank = decision["dp_rank"].as_u64().expect("dp_rank") as usize;

    let load = |workers: &Value| workers["workers"][0]["ranks"][rank].clone();
    let (_, workers) = call_json(&app, Method::GET, "/v1/workers", None).await;
    assert_eq!(workers["active_requests"], 1);
    assert_eq!(load(&workers), json!({"dp_rank": rank, "prefill_tokens": 40, "decode_blocks": 3, "requests": 1}));

    let (status, done) = post(&app, &format!("/v1/requests/{id}/prefill_done"), json!(null)).await;
    assert_eq!((status, done), (StatusCode::OK, json!({"request_id": id, "event": "prefill_done"})));
    let (_, workers) = call_json(&app, Method::GET, "/v1/workers", None).await;
    assert_eq!(load(&workers)["prefill_tokens"], 0);
    assert_error(
        &post(&app, &format!("/v1/requests/{id}/prefill_done"), json!(null)).await,
        StatusCode::NOT_FOUND,
        "unknown_request",
    );

    let (status, finished) = post(&app, &format!("/v1/requests/{id}/finish"), json!(null)).await;
    assert_eq!((status, finished), (StatusCode::OK, json!({"request_id": id, "event": "finish"})));
    let (_, workers) = call_json(&app, Method::GET, "/v1/workers", None).await;
    assert_eq!(workers["active_requests"], 0);
    assert_eq!(load(&workers), json!({"dp_rank": rank, "prefill_tokens": 0, "decode_blocks": 0, "requests": 0}));

    assert_error(
        &post(&app, &format!("/v1/requests/{id}/finish"), json!(null)).await,
        StatusCode::NOT_FOUND,
        "unknown_request",
    );
    assert_error(&post(&app, "/v1/requests/12345/finish", json!(null)).await, StatusCode::NOT_FOUND, "unknown_request");
    assert_error(&post(&app, "/v1/requests/abc/finish", json!(null)).await, StatusCode::BAD_REQUEST, "invalid_request");
    assert_error(
        &post(&app, "/v1/requests/99999999999999999999/finish", json!(null)).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
}

#[tokio::test]
async fn worker_registry_add_list_remove() {
    let app = http::app(state());
    register(&app, json!({"worker_id": 7, "dp_start": 2, "dp_size": 2, "dp_world_size": 4})).await;
    let dup = post(&app, "/v1/workers", json!({"worker_id": 7, "dp_size": 1})).await;
    assert_error(&dup, StatusCode::CONFLICT, "worker_exists");
    let no_bootstrap = post(&app, "/v1/workers", json!({"worker_id": 8, "dp_size": 1, "role": "prefill"})).await;
    assert_error(&no_bootstrap, StatusCode::BAD_REQUEST, "invalid_worker");
    let zero = post(&app, "/v1/workers", json!({"worker_id": 8, "dp_size": 0})).await;
    assert_error(&zero, StatusCode::BAD_REQUEST, "invalid_worker");
    let block = post(&app, "/v1/workers", json!({"worker_id": 8, "dp_size": 1, "block_size": 32})).await;
    assert_error(&block, StatusCode::BAD_REQUEST, "block_size_mismatch");
    let typo = post(&app, "/v1/workers", json!({"worker_id": 8, "dp_sise": 1})).await;
    assert_error(&typo, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(typo.1["error"].as_str().is_some_and(|m| m.contains("dp_sise")), "{}", typo.1);

    let (status, list) = call_json(&app, Method::GET, "/v1/workers", None).await;
    assert_eq!(status, StatusCode::OK);
    let worker = &list["workers"][0];
    assert_eq!(list["workers"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(
        (&worker["worker_id"], &worker["role"], &worker["mode"], &worker["dp_world_size"], &worker["block_size"]),
        (&json!(7), &json!("both"), &json!("approximate"), &json!(4), &json!(16))
    );
    let ranks: Vec<u64> =
        worker["ranks"].as_array().expect("ranks").iter().filter_map(|r| r["dp_rank"].as_u64()).collect();
    assert_eq!(ranks, vec![2, 3]);

    let out_of_range = post(&app, "/v1/route", json!({"tokens": [1, 2, 3], "worker_id": 7, "dp_rank": 0})).await;
    assert_error(&out_of_range, StatusCode::BAD_REQUEST, "rank_out_of_range");

    let (status, body) = call(&app, Method::DELETE, "/v1/workers/7", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::NO_CONTENT, ""));
    assert_error(
        &call_json(&app, Method::DELETE, "/v1/workers/7", None).await,
        StatusCode::NOT_FOUND,
        "unknown_worker",
    );
    assert_error(
        &post(&app, "/v1/route", json!({"tokens": [1, 2, 3]})).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "no_candidates",
    );
}

#[tokio::test]
async fn bad_input_is_a_json_error_never_a_panic() {
    let app = http::app(state_with(ApiLimits {
        max_body_bytes: 4096,
        max_prompt_tokens: 100,
        max_output_tokens: 1000,
        ..ApiLimits::default()
    }));
    register(&app, json!({"worker_id": 7, "dp_size": 2})).await;

    let cases: Vec<(&str, StatusCode, &str)> = vec![
        ("{\"tokens\": [1, 2", StatusCode::BAD_REQUEST, "bad_json"),
        ("", StatusCode::BAD_REQUEST, "bad_json"),
        ("not json", StatusCode::BAD_REQUEST, "bad_json"),
        ("{\"tokens\": [-1]}", StatusCode::BAD_REQUEST, "invalid_request"),
        ("{\"tokens\": \"abc\"}", StatusCode::BAD_REQUEST, "invalid_request"),
        ("{\"tokns\": [1]}", StatusCode::BAD_REQUEST, "invalid_request"),
        ("{}", StatusCode::BAD_REQUEST, "invalid_request"),
        ("{\"tokens\": [1], \"block_hashes\": [1]}", StatusCode::BAD_REQUEST, "invalid_request"),
        ("{\"tokens\": [1], \"dp_rank\": 0}", StatusCode::BAD_REQUEST, "invalid_request"),
        ("{\"tokens\": []}", StatusCode::BAD_REQUEST, "empty_prompt"),
        ("{\"block_hashes\": []}", StatusCode::BAD_REQUEST, "empty_prompt"),
        ("{\"tokens\": [1], \"workers\": [9]}", StatusCode::NOT_FOUND, "unknown_worker"),
        ("{\"tokens\": [1], \"worker_id\": 9, \"dp_rank\": 0}", StatusCode::NOT_FOUND, "unknown_worker"),
        ("{\"tokens\": [1], \"output_tokens\": 1001}", StatusCode::BAD_REQUEST, "invalid_request"),
        ("{\"tokens\": [1], \"output_tokens\": 4294967295}", StatusCode::BAD_REQUEST, "invalid_request"),
    ];
    for (body, status, kind) in cases {
        let (got_status, text) = call(&app, Method::POST, "/v1/route", Some(body)).await;
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{body}: not JSON ({e}): {text}"));
        assert_error(&(got_status, value), status, kind);
    }

    let long = json!({"tokens": prompt(1, 101)});
    assert_error(&post(&app, "/v1/route", long).await, StatusCode::PAYLOAD_TOO_LARGE, "prompt_too_long");
    let long_blocks = json!({"block_hashes": (0..8u64).collect::<Vec<_>>()}); // 100 tokens = 7 blocks
    assert_error(&post(&app, "/v1/route", long_blocks).await, StatusCode::PAYLOAD_TOO_LARGE, "prompt_too_long");
    let huge = format!("{{\"tokens\": [{}1]}}", "1, ".repeat(2000));
    let (status, text) = call(&app, Method::POST, "/v1/route", Some(&huge)).await;
    let value: Value = serde_json::from_str(&text).expect("JSON error body");
    assert_error(&(status, value), StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");

    let at_limit = post(&app, "/v1/route", json!({"tokens": [1], "output_tokens": 1000, "dry_run": true})).await;
    assert_eq!(at_limit.0, StatusCode::OK, "{at_limit:?}");
    let pd_output = json!({"tokens": [1], "output_tokens": 1001});
    assert_error(&post(&app, "/v1/route/disaggregated", pd_output).await, StatusCode::BAD_REQUEST, "invalid_request");
    let bad_host =
        json!({"worker_id": 8, "dp_size": 1, "role": "prefill", "bootstrap_host": "a\r\nb", "bootstrap_port": 1});
    assert_error(&post(&app, "/v1/workers", bad_host).await, StatusCode::BAD_REQUEST, "invalid_worker");
    let pd_unknown = json!({"tokens": [1], "prefill_workers": [9]});
    assert_error(&post(&app, "/v1/route/disaggregated", pd_unknown).await, StatusCode::NOT_FOUND, "unknown_worker");
    assert_error(&call_json(&app, Method::GET, "/v1/nope", None).await, StatusCode::NOT_FOUND, "not_found");
    assert_error(
        &call_json(&app, Method::GET, "/v1/route", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

/// One sample line of a Prometheus text exposition.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Checks every line of a Prometheus text exposition: comments `# HELP|TYPE name ...`,
/// samples `name{labels} value`.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let valid_name = |name: &str| {
        !name.is_empty()
            && name
                .chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            assert!(matches!(words.first(), Some(&"HELP") | Some(&"TYPE")), "bad comment line: {line}");
            assert!(words.get(1).is_some_and(|n| valid_name(n)), "bad metric name: {line}");
            if words[0] == "TYPE" {
                assert!(matches!(words.get(2), Some(&"counter") | Some(&"gauge") | Some(&"histogram")), "{line}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let labels = inner
                    .split(',')
                    .map(|pair| {
                        let (key, quoted) = pair.split_once('=').unwrap_or_else(|| panic!("bad label: {line}"));
                        assert!(valid_name(key), "bad label name: {line}");
                        let v = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"'));
                        (key.to_owned(), v.unwrap_or_else(|| panic!("unquoted label: {line}")).to_owned())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(valid_name(name), "bad metric name: {line}");
        samples.push(Sample { name: name.to_owned(), labels, value });
    }
    samples
}

fn find(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v)))
        .map(|s| s.value)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

#[tokio::test]
async fn metrics_expose_counters_and_parse_as_prometheus_text() {
    let ingest =
        || vec![MetricSample { name: "events_applied", help: "Events applied.", kind: MetricKind::Counter, value: 42 }];
    let state = state().with_ingest_counters(Arc::new(ingest));
    let app = http::app(state.clone());
    register(&app, json!({"worker_id": 7, "dp_size": 2})).await;
    let (_, decision) = post(&app, "/v1/route", json!({"tokens": prompt(1, 40)})).await;
    let rank = decision["dp_rank"].to_string();
    post(&app, "/v1/route", json!({"tokens": []})).await;
    post(&app, "/v1/route", json!({"tokens": [1], "workers": [9]})).await;
    post(&app, "/v1/requests/1/finish", json!(null)).await;

    let (status, text) = call(&app, Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let samples = parse_exposition(&text);
    let decisions = "kvroute_route_decisions_total";
    assert_eq!(find(&samples, decisions, &[("endpoint", "route"), ("outcome", "ok")]), 1.0);
    assert_eq!(find(&samples, decisions, &[("endpoint", "route"), ("outcome", "empty_prompt")]), 1.0);
    assert_eq!(find(&samples, decisions, &[("endpoint", "route"), ("outcome", "unknown_worker")]), 1.0);
    assert_eq!(find(&samples, decisions, &[("endpoint", "disaggregated"), ("outcome", "ok")]), 0.0);
    let histogram = "kvroute_decision_duration_seconds";
    // The decision and the unknown-worker refusal reached the router; the empty prompt too.
    let count = find(&samples, &format!("{histogram}_count"), &[("endpoint", "route")]);
    assert_eq!(find(&samples, &format!("{histogram}_bucket"), &[("endpoint", "route"), ("le", "+Inf")]), count);
    assert!(count >= 1.0);
    // Bounds as Go's client writes them (prometheus-client follows it): 1 us is "1e-06".
    find(&samples, &format!("{histogram}_bucket"), &[("endpoint", "route"), ("le", "1e-06")]);
    find(&samples, &format!("{histogram}_bucket"), &[("endpoint", "route"), ("le", "0.01")]);
    assert_eq!(find(&samples, "kvroute_request_lifecycle_total", &[("event", "finish"), ("outcome", "unknown")]), 1.0);
    assert_eq!(find(&samples, "kvroute_active_requests", &[]), 1.0);
    assert_eq!(find(&samples, "kvroute_workers", &[("mode", "approximate")]), 1.0);
    assert_eq!(find(&samples, "kvroute_rank_prefill_tokens", &[("worker", "7"), ("dp_rank", &rank)]), 40.0);
    assert_eq!(find(&samples, "kvroute_rank_decode_blocks", &[("worker", "7"), ("dp_rank", &rank)]), 3.0);
    assert_eq!(find(&samples, "kvroute_rank_requests", &[("worker", "7"), ("dp_rank", &rank)]), 1.0);
    find(&samples, "kvroute_index_events_applied_total", &[("tier", "device")]);
    find(&samples, "kvroute_index_unknown_rank_total", &[("tier", "disk")]);
    assert_eq!(find(&samples, "kvroute_ingest_events_applied_total", &[]), 42.0);
    assert_eq!(find(&samples, "kvroute_shutting_down", &[]), 0.0);
    assert!(text.contains("# TYPE kvroute_decision_duration_seconds histogram"));
}

#[tokio::test]
async fn metrics_show_the_overlap_decisions_left_on_the_table_and_why() {
    let app = http::app(state());
    register(&app, json!({"worker_id": 7, "dp_size": 2})).await;
    let pinned = |tokens: Vec<u32>| json!({"tokens": tokens, "worker_id": 7, "dp_rank": 0});
    // Rank 0 takes the prompt (remembered: approximate mode) and then ten others, so it
    // holds the prompt's 4 blocks but has a long prefill queue.
    let (status, first) = post(&app, "/v1/route", pinned(prompt(1, 64))).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!((first["overlap_blocks"].as_u64(), first["best_overlap_blocks"].as_u64()), (Some(0), Some(0)));
    for seed in 2..12 {
        post(&app, "/v1/route", pinned(prompt(seed, 64))).await;
    }
    // The prompt again: the predicted-TTFT policy sends it to idle rank 1, leaving 4 blocks.
    let (_, decision) = post(&app, "/v1/route", json!({"tokens": prompt(1, 64)})).await;
    assert_eq!(decision["dp_rank"], 1, "{decision}");
    assert_eq!((decision["overlap_blocks"].as_u64(), decision["best_overlap_blocks"].as_u64()), (Some(0), Some(4)));
    assert_eq!(decision["shortfall"], "load");
    // A dry run reports the same but is not counted; a decision at the best has no shortfall.
    let (_, dry) = post(&app, "/v1/route", json!({"tokens": prompt(1, 64), "dry_run": true})).await;
    assert_eq!(dry["best_overlap_blocks"], 4);
    let (_, at_best) = post(&app, "/v1/route", pinned(prompt(1, 64))).await;
    assert_eq!((at_best["overlap_blocks"].as_u64(), at_best["shortfall"].is_null()), (Some(4), true));

    let (_, text) = call(&app, Method::GET, "/metrics", None).await;
    let samples = parse_exposition(&text);
    let route = ("endpoint", "route");
    assert_eq!(find(&samples, "kvroute_decision_quality_decisions_total", &[route]), 13.0);
    let blocks = "kvroute_decision_blocks_total";
    assert_eq!(find(&samples, blocks, &[route, ("of", "prompt")]), 13.0 * 4.0);
    assert_eq!(find(&samples, blocks, &[route, ("of", "chosen")]), 4.0);
    assert_eq!(find(&samples, blocks, &[route, ("of", "best")]), 8.0);
    let below = "kvroute_decisions_below_best_total";
    assert_eq!(find(&samples, below, &[route, ("reason", "load")]), 1.0);
    for reason in ["tier", "temperature", "policy"] {
        assert_eq!(find(&samples, below, &[route, ("reason", reason)]), 0.0, "{reason}");
    }
    let missed = "kvroute_decision_missed_blocks";
    assert_eq!(find(&samples, &format!("{missed}_count"), &[route]), 13.0);
    assert_eq!(find(&samples, &format!("{missed}_sum"), &[route]), 4.0);
    assert_eq!(find(&samples, &format!("{missed}_bucket"), &[route, ("le", "2")]), 12.0);
    assert_eq!(find(&samples, &format!("{missed}_bucket"), &[route, ("le", "4")]), 13.0);
    let overlap = "kvroute_decision_overlap_blocks";
    assert_eq!(find(&samples, &format!("{overlap}_sum"), &[route, ("of", "best")]), 8.0);
    assert_eq!(find(&samples, &format!("{overlap}_bucket"), &[route, ("of", "chosen"), ("le", "0")]), 12.0);
    assert_eq!(find(&samples, &format!("{overlap}_count"), &[("endpoint", "proxy"), ("of", "chosen")]), 0.0);
    assert!(text.contains("# TYPE kvroute_decision_missed_blocks histogram"));
    assert!(text.contains("# TYPE kvroute_decisions_below_best_total counter"));
}

#[tokio::test]
async fn engine_load_reports_add_what_other_routers_sent_and_bad_ones_change_nothing() {
    let state = state();
    let app = http::app(state.clone());
    register(&app, json!({"worker_id": 7, "dp_size": 2})).await;
    let (status, _) = post(&app, "/v1/route", json!({"tokens": prompt(1, 64), "worker_id": 7, "dp_rank": 0})).await;
    assert_eq!(status, StatusCode::OK);
    let rank_load = |listing: &Value, rank: usize| {
        let r = &listing["workers"][0]["ranks"][rank];
        (r["prefill_tokens"].as_u64(), r["decode_blocks"].as_u64(), r["requests"].as_u64())
    };

    // Rank 0's engine runs 5 requests (this router sent 1); rank 1's has 900 tokens queued.
    let report =
        json!({"ranks": [{"dp_rank": 0, "requests": 5}, {"dp_rank": 1, "prefill_tokens": 900, "requests": 3}]});
    let (status, text) = call(&app, Method::POST, "/v1/workers/7/load", Some(&report.to_string())).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    let (_, listing) = call_json(&app, Method::GET, "/v1/workers", None).await;
    assert_eq!(rank_load(&listing, 0), (Some(64), Some(4), Some(5)), "{listing}");
    assert_eq!(rank_load(&listing, 1), (Some(900), Some(0), Some(3)), "{listing}");

    // Refused as a whole: nothing of the good rank is applied.
    let bad_rank = json!({"ranks": [{"dp_rank": 0, "requests": 50}, {"dp_rank": 2, "requests": 1}]});
    assert_error(&post(&app, "/v1/workers/7/load", bad_rank).await, StatusCode::BAD_REQUEST, "rank_out_of_range");
    assert_error(&post(&app, "/v1/workers/9/load", report).await, StatusCode::NOT_FOUND, "unknown_worker");
    let unknown_field = json!({"ranks": [{"dp_rank": 0, "running": 50}]});
    assert_eq!(post(&app, "/v1/workers/7/load", unknown_field).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(post(&app, "/v1/workers/7/load", json!({"ranks": []})).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        post(&app, "/v1/workers/7/load", json!({"ranks": [{"dp_rank": 0, "requests": -1}]})).await.0,
        StatusCode::BAD_REQUEST
    );
    let (_, listing) = call_json(&app, Method::GET, "/v1/workers", None).await;
    assert_eq!(rank_load(&listing, 0), (Some(64), Some(4), Some(5)), "{listing}");

    let (_, text) = call(&app, Method::GET, "/metrics", None).await;
    assert_eq!(find(&parse_exposition(&text), "kvroute_load_reports_total", &[]), 2.0);
}

#[tokio::test]
async fn healthz_is_ok_until_shutdown() {
    let state = state();
    let app = http::app(state.clone());
    assert_eq!(call(&app, Method::GET, "/healthz", None).await, (StatusCode::OK, "ok".to_owned()));
    state.begin_shutdown();
    let (status, _) = call(&app, Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_serves_on_a_socket_and_shuts_down_gracefully() {
    let toml = format!(
        r#"
        shutdown_grace = "2s"
        ingest_listen = "127.0.0.1:{}"
        [tls]
        insecure_loopback = true
        [router]
        room_seed = 1000
        [[workers]]
        worker_id = 7
        dp_size = 4
        "#,
        free_udp_port()
    );
    let (addr, stop, daemon) = start_daemon(&toml).await;

    assert_eq!(http_over_socket(addr, "GET", "/healthz", None, None).await, (200, "ok".to_owned()));
    let body = r#"{"tokens": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]}"#;
    let (status, text) = http_over_socket(addr, "POST", "/v1/route", None, Some(body)).await;
    assert_eq!(status, 200, "{text}");
    let decision: Value = serde_json::from_str(&text).expect("decision JSON");
    assert_eq!(decision["worker_id"], 7, "a configured worker is registered at start");
    let (status, metrics) = http_over_socket(addr, "GET", "/metrics", None, None).await;
    assert_eq!(status, 200);
    let samples = parse_exposition(&metrics);
    assert_eq!(find(&samples, "kvroute_ingest_connections_open", &[]), 0.0, "the ingest's counters are exposed");
    find(&samples, "kvroute_ingest_events_applied_total", &[]);

    stop_daemon(stop, daemon, Duration::from_secs(10)).await;
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_routes_by_kv_events_from_a_publisher() {
    let ingest_port = free_udp_port();
    let toml = ingest_daemon_toml(ingest_port, "");
    let (addr, stop, daemon) = start_daemon(&toml).await;

    let rank = RankKey::new(7, 1);
    let ingest_addr: SocketAddr = ([127, 0, 0, 1], ingest_port).into();
    let publisher = Publisher::start(PublisherConfig::new(
        "test-engine",
        vec![RouterTarget::new(ingest_addr, "localhost")],
        TlsMode::InsecureLoopback,
        vec![rank],
    ))
    .expect("publisher");
    let tokens = prompt(11, 64);
    publish_prompt(&publisher, rank, &tokens, 1);

    // The event travels publisher -> QUIC -> index; then rank 1 holds the whole prompt.
    let body = json!({"tokens": tokens, "dry_run": true}).to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let decision = loop {
        let (status, text) = http_over_socket(addr, "POST", "/v1/route", None, Some(&body)).await;
        assert_eq!(status, 200, "{text}");
        let decision: Value = serde_json::from_str(&text).expect("decision JSON");
        if decision["overlap_blocks"] == 4 || std::time::Instant::now() > deadline {
            break decision;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((&decision["dp_rank"], &decision["overlap_blocks"]), (&json!(1), &json!(4)), "{decision}");
    let (_, workers) = http_over_socket(addr, "GET", "/v1/workers", None, None).await;
    let workers: Value = serde_json::from_str(&workers).expect("workers JSON");
    assert_eq!(workers["workers"][0]["mode"], "exact", "the first event switches the worker to exact mode");
    let (_, metrics) = http_over_socket(addr, "GET", "/metrics", None, None).await;
    let samples = parse_exposition(&metrics);
    // Published before the router subscribed, the block arrives in the rank's dump (or, if
    // the subscription won the race, as a live event).
    let delivered =
        find(&samples, "kvroute_ingest_events_applied_total", &[]) + find(&samples, "kvroute_ingest_dumps_total", &[]);
    assert!(delivered >= 1.0, "{metrics}");
    assert_eq!(find(&samples, "kvroute_ingest_connections_open", &[]), 1.0);
    assert_eq!(find(&samples, "kvroute_ingest_connections_total", &[]), 1.0);
    assert_eq!(find(&samples, "kvroute_index_blocks_stored_total", &[("tier", "device")]), 4.0);
    assert_eq!(find(&samples, "kvroute_workers", &[("mode", "exact")]), 1.0);

    publisher.shutdown().await;
    stop_daemon(stop, daemon, Duration::from_secs(10)).await;
}

/// Routes `tokens` (dry) until the overlap is `want` or 20 s pass; returns the decision.
async fn route_until_overlap(addr: SocketAddr, tokens: &[u32], want: u64) -> Value {
    let body = json!({"tokens": tokens, "dry_run": true}).to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, text) = http_over_socket(addr, "POST", "/v1/route", None, Some(&body)).await;
        assert_eq!(status, 200, "{text}");
        let decision: Value = serde_json::from_str(&text).expect("decision JSON");
        if decision["overlap_blocks"] == want || std::time::Instant::now() > deadline {
            return decision;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_restarts_from_its_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshot = dir.path().join("index.snapshot");
    let ingest_port = free_udp_port();
    let extra = format!(
        "snapshot_path = {:?}\nsnapshot_interval = \"1h\"\npublisher_grace = \"1h\"",
        snapshot.display().to_string()
    );
    let toml = ingest_daemon_toml(ingest_port, &extra);
    let (addr, stop, daemon) = start_daemon(&toml).await;
    let rank = RankKey::new(7, 1);
    let publisher = Publisher::start(PublisherConfig::new(
        "test-engine",
        vec![RouterTarget::new(([127, 0, 0, 1], ingest_port).into(), "localhost")],
        TlsMode::InsecureLoopback,
        vec![rank],
    ))
    .expect("publisher");
    let tokens = prompt(5, 96);
    publish_prompt(&publisher, rank, &tokens, 1);
    let decision = route_until_overlap(addr, &tokens, 6).await;
    assert_eq!((&decision["dp_rank"], &decision["overlap_blocks"]), (&json!(1), &json!(6)), "{decision}");
    let (_, metrics) = http_over_socket(addr, "GET", "/metrics", None, None).await;
    assert_eq!(sample(&metrics, r#"kvroute_index_held_blocks{tier="device"}"#), 6.0, "{metrics}");
    assert!(sample(&metrics, r#"kvroute_index_nodes{tier="device"}"#) >= 1.0);
    assert_eq!(sample(&metrics, r#"kvroute_index_held_blocks{tier="host"}"#), 0.0);
    assert_eq!(sample(&metrics, "kvroute_snapshot_age_seconds"), -1.0, "no snapshot yet");
    assert_eq!(sample(&metrics, "kvroute_snapshot_bytes"), 0.0);
    publisher.shutdown().await;
    stop_daemon(stop, daemon, Duration::from_secs(20)).await;
    assert!(snapshot.exists(), "the final snapshot is written at shutdown");
    let file_len = std::fs::metadata(&snapshot).expect("snapshot metadata").len();

    // A new daemon with no publisher: the index comes back from the file alone.
    let (addr, stop, daemon) = start_daemon(&toml).await;
    let decision = route_until_overlap(addr, &tokens, 6).await;
    assert_eq!((&decision["dp_rank"], &decision["overlap_blocks"]), (&json!(1), &json!(6)), "{decision}");
    let (_, workers) = http_over_socket(addr, "GET", "/v1/workers", None, None).await;
    let workers: Value = serde_json::from_str(&workers).expect("workers JSON");
    assert_eq!(workers["workers"][0]["mode"], "exact", "the worker's mode is restored too");
    let (_, metrics) = http_over_socket(addr, "GET", "/metrics", None, None).await;
    assert_eq!(sample(&metrics, "kvroute_snapshot_bytes"), file_len as f64, "the restored file's size");
    let age = sample(&metrics, "kvroute_snapshot_age_seconds");
    assert!((0.0..600.0).contains(&age), "age {age}");
    assert_eq!(sample(&metrics, "kvroute_snapshot_writes_total"), 0.0, "restored, not written");
    assert_eq!(sample(&metrics, r#"kvroute_index_held_blocks{tier="device"}"#), 6.0);
    stop_daemon(stop, daemon, Duration::from_secs(20)).await;

    // A corrupt file is ignored with a warning: the daemon starts empty.
    let mut bytes = std::fs::read(&snapshot).expect("read snapshot");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&snapshot, &bytes).expect("corrupt snapshot");
    let (addr, stop, daemon) = start_daemon(&toml).await;
    let body = json!({"tokens": tokens, "dry_run": true}).to_string();
    let (status, text) = http_over_socket(addr, "POST", "/v1/route", None, Some(&body)).await;
    assert_eq!(status, 200, "{text}");
    let decision: Value = serde_json::from_str(&text).expect("decision JSON");
    assert_eq!(decision["overlap_blocks"], 0, "a corrupt snapshot must not be trusted: {decision}");
    stop_daemon(stop, daemon, Duration::from_secs(20)).await;
}

// ---- configuration ----

#[test]
fn config_round_trips_through_toml() {
    let args = parse_flags(&[
        "--insecure-loopback",
        "--http-listen",
        "127.0.0.1:9000",
        "--shutdown-grace",
        "1m 30s",
        "--snapshot-path",
        "/tmp/kv.snap",
        "--hash-scheme",
        "xxh3",
        "--temperature",
        "0.5",
        "--request-ttl",
        "500ms",
        "--room-seed",
        "77",
        "--log-format",
        "json",
        "--worker",
        "worker_id=1,dp_size=4,dp_world_size=8,role=prefill,bootstrap_host=h,bootstrap_port=9",
        "--worker",
        "worker_id=2,dp_size=2,role=decode",
    ]);
    let config = ServeConfig::load(&args).expect("valid");
    let printed = config.effective.to_toml().expect("to TOML");
    let reparsed = ServeOptions::from_toml(&printed).expect("printed config parses");
    assert_eq!(reparsed, config.effective, "round trip of\n{printed}");
    let again = ServeConfig::resolve(reparsed).expect("still valid");
    assert_eq!(again.effective.to_toml().expect("to TOML"), printed);
    assert_eq!(again.shutdown_grace, Duration::from_secs(90));
    assert_eq!(again.router.request_ttl_ms, 500);
    assert_eq!(again.router.room_seed, 77);
    assert_eq!(again.tls, TlsMode::InsecureLoopback);
    assert_eq!(again.workers.len(), 2);
    assert_eq!(again.workers[0].dp_world(), 8);

    // The documented example is valid.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/serve.toml");
    let args = ServeArgs { config: Some(example.into()), ..ServeArgs::default() };
    let config = ServeConfig::load(&args).expect("docs/serve.toml is valid");
    assert_eq!(config.workers.len(), 4);
    assert_eq!(config.http_listen, "127.0.0.1:8080".parse().expect("addr"));
}

#[test]
fn unknown_config_keys_are_errors() {
    for (text, key) in [
        ("http_listn = \"127.0.0.1:1\"\n", "http_listn"),
        ("[router]\nblocksize = 16\n", "blocksize"),
        ("[tls]\ninsecure = true\n", "insecure"),
        ("[[workers]]\nworker_id = 1\ndp_size = 1\nrank = 0\n", "rank"),
        ("[routr]\n", "routr"),
    ] {
        let file = temp_file(text);
        let args = ServeArgs { config: Some(file.path().to_owned()), ..ServeArgs::default() };
        let error = ServeConfig::load(&args).expect_err("unknown key");
        assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
        assert!(error.to_string().contains(key), "error should name `{key}`: {error}");
    }
    let file = temp_file("shutdown_grace = \"soon\"\n");
    let args = ServeArgs { config: Some(file.path().to_owned()), ..ServeArgs::default() };
    let error = ServeConfig::load(&args).expect_err("bad duration").to_string();
    assert!(error.contains("shutdown_grace") && error.contains("soon"), "{error}");
}

#[test]
fn flags_override_the_file() {
    let file = temp_file(
        r#"
        http_listen = "127.0.0.1:9001"
        ingest_listen = "127.0.0.1:9002"
        [tls]
        insecure_loopback = true
        [router]
        block_size = 32
        decode_weight = 2.0
        [[workers]]
        worker_id = 1
        dp_size = 2
        [[workers]]
        worker_id = 2
        dp_size = 2
        "#,
    );
    let path = file.path().to_str().expect("utf-8 path");
    let args = parse_flags(&[
        "--config",
        path,
        "--block-size",
        "64",
        "--ingest-listen",
        "127.0.0.1:9003",
        "--worker",
        "worker_id=2,dp_size=8",
    ]);
    let config = ServeConfig::load(&args).expect("valid");
    assert_eq!(config.router.block_size, 64, "flag wins");
    assert_eq!(config.router.weights.decode_weight, 2.0, "file kept where no flag");
    assert_eq!(config.http_listen, "127.0.0.1:9001".parse().expect("addr"));
    assert_eq!(config.ingest_listen, "127.0.0.1:9003".parse().expect("addr"));
    let sizes: Vec<(u64, u32, u32)> = config.workers.iter().map(|w| (w.worker.0, w.dp_size, w.block_size)).collect();
    assert_eq!(sizes, vec![(1, 2, 64), (2, 8, 64)], "the flag's worker 2 replaces the file's");
}

#[test]
fn engine_cache_tokens_tell_predicted_ttft_the_cache_size_in_blocks() {
    use kvroute_core::route::{Policy, TtftWeights};
    let load = |flags: &[&str]| ServeConfig::load(&parse_flags(flags));
    let sized = load(&["--insecure-loopback", "--engine-cache-tokens", "262144"]).expect("valid");
    let expected = TtftWeights { cache_blocks: Some(262_144 / 16), ..TtftWeights::default() };
    assert_eq!(sized.router.policy, Policy::PredictedTtft(expected));
    let unsized_ = load(&["--insecure-loopback"]).expect("valid");
    assert_eq!(unsized_.router.policy, Policy::PredictedTtft(TtftWeights::default()), "unknown: off");
    // Rounded down to whole blocks of the router's size; other policies ignore it.
    let wide = load(&["--insecure-loopback", "--block-size", "64", "--engine-cache-tokens", "1000"]).expect("valid");
    assert_eq!(
        wide.router.policy,
        Policy::PredictedTtft(TtftWeights { cache_blocks: Some(15), ..TtftWeights::default() })
    );
    let cost = load(&["--insecure-loopback", "--policy", "cost", "--engine-cache-tokens", "1000"]).expect("valid");
    assert_eq!(cost.router.policy, Policy::Cost);
    match load(&["--insecure-loopback", "--engine-cache-tokens", "15"]) {
        Err(ConfigError::Invalid { field, reason }) => {
            assert_eq!(field, "router.engine_cache_tokens");
            assert!(reason.contains("one block of 16 tokens"), "{reason}");
        }
        other => panic!("less than a block: expected an invalid field, got {other:?}"),
    }
    let file = ServeOptions::from_toml("[router]\nengine_cache_tokens = 32768\n").expect("toml");
    assert_eq!(file.router.engine_cache_tokens, Some(32_768));
}

#[test]
fn invalid_settings_name_their_field() {
    let invalid = |flags: &[&str]| match ServeConfig::load(&parse_flags(flags)) {
        Err(ConfigError::Invalid { field, reason }) => (field, reason),
        other => panic!("{flags:?}: expected an invalid field, got {other:?}"),
    };
    let (field, reason) = invalid(&["--insecure-loopback", "--ingest-listen", "0.0.0.0:4433"]);
    assert_eq!(field, "tls.insecure_loopback");
    assert!(reason.contains("0.0.0.0:4433") && reason.contains("loopback"), "{reason}");
    assert_eq!(invalid(&["--insecure-loopback", "--ingest-listen", "[::]:4433"]).0, "tls.insecure_loopback");
    assert_eq!(invalid(&[]).0, "tls");
    assert_eq!(invalid(&["--ca", "/nonexistent/ca.pem", "--cert", "/x", "--key", "/y"]).0, "tls.ca");
    assert_eq!(invalid(&["--insecure-loopback", "--ca", "/x"]).0, "tls.insecure_loopback");
    assert_eq!(invalid(&["--insecure-loopback", "--block-size", "0"]).0, "router.block_size");
    assert_eq!(invalid(&["--insecure-loopback", "--request-ttl", "0s"]).0, "router.request_ttl");
    assert!(invalid(&["--insecure-loopback", "--prefill-scale", "-1"]).1.contains("prefill_scale"));
    assert!(invalid(&["--insecure-loopback", "--host-tier-weight", "2"]).1.contains("host_tier_weight"));
    assert_eq!(invalid(&["--insecure-loopback", "--room-seed", "18446744073709551615"]).0, "router.room_seed");
    assert_eq!(invalid(&["--insecure-loopback", "--index-shards", "0"]).0, "router.index_shards");
    assert_eq!(invalid(&["--insecure-loopback", "--index-shards", "65"]).0, "router.index_shards");
    let four = ServeConfig::load(&parse_flags(&["--insecure-loopback", "--index-shards", "4"])).expect("valid");
    assert_eq!(four.router.index_shards, 4);
    assert_eq!(invalid(&["--insecure-loopback", "--log-filter", "info,[["]).0, "log_filter");
    let (field, reason) = invalid(&["--insecure-loopback", "--worker", "worker_id=1,dp_size=2,role=prefill"]);
    assert_eq!(field, "workers[0] (worker_id 1)");
    assert!(reason.contains("bootstrap"), "{reason}");
    // Two flags with one id: the last wins. Two file entries with one id: an error.
    let file = temp_file("[[workers]]\nworker_id = 1\ndp_size = 2\n[[workers]]\nworker_id = 1\ndp_size = 3\n");
    let path = file.path().to_str().expect("utf-8 path");
    let (field, reason) = invalid(&["--insecure-loopback", "--config", path]);
    assert_eq!(field, "workers[1] (worker_id 1)");
    assert!(reason.contains("already registered"), "{reason}");
}

#[test]
fn bad_configuration_exits_with_code_2() {
    let file = temp_file("[router]\nblok_size = 16\n");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvroute"))
        .args(["serve", "--config"])
        .arg(file.path())
        .output()
        .expect("run kvroute");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("blok_size") && !stderr.contains("panicked"), "{stderr}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvroute"))
        .args(["serve", "--insecure-loopback", "--ingest-listen", "0.0.0.0:4433"])
        .output()
        .expect("run kvroute");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("tls.insecure_loopback"));

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvroute"))
        .args(["serve", "--print-config", "--insecure-loopback", "--block-size", "32"])
        .output()
        .expect("run kvroute");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed = ServeOptions::from_toml(&String::from_utf8_lossy(&output.stdout)).expect("printed TOML parses");
    assert_eq!(printed.router.block_size, Some(32));
}
