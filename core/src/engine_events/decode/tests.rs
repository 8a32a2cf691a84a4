//! Tests of the engine-event decoder and encoder.
//!
//! - Fixtures (data/engine-events/, bytes captured from vLLM 0.34 / 0.23 and SGLang
//!   0.5.23 / 0.5.19): every line decodes with its seq, rank and the scenario's events;
//!   replaying the decoded events as a block set reproduces the engines' expected final
//!   state and every query's overlap; the map and array releases of one engine decode
//!   to the same events; re-encoding reproduces the captured payload byte for byte.
//! - Accepted shapes the fixtures do not cover (batch maps, reordered or unknown keys,
//!   bin and narrow hashes, short arrays, unknown events), built with a small msgpack
//!   writer ([`Mp`]).
//! - Every error reason from a crafted input; every truncation of every fixture payload;
//!   forged huge lengths.
//! - Round trip through every format (proptest), and an ignored throughput check:
//!   `cargo test --release -p kvroute-core --lib decode_throughput -- --ignored --nocapture`.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::{decode_batch, decode_message, decode_replay_reply, DecodeError, DecodeLimits, ReplayReply};
use crate::engine_events::encode::{encode_batch, representable, EngineFormat};
use crate::engine_events::message::{BlockRemoved, BlockStored, EngineEvent, EngineMessage, EventBatch, Medium};
use crate::hashing::KeyValue;

// ---------------------------------------------------------------------------------------
// Fixtures

/// One line of a fixture file.
struct Line {
    worker: u64,
    dp_rank: u32,
    topic: String,
    seq: u64,
    payload: Vec<u8>,
}

struct Fixture {
    name: &'static str,
    format: EngineFormat,
    lines: &'static str,
    expected: &'static str,
}

macro_rules! fixture {
    ($name:literal, $format:expr) => {
        Fixture {
            name: $name,
            format: $format,
            lines: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/engine-events/", $name, ".jsonl")),
            expected: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../data/engine-events/",
                $name,
                ".expected.json"
            )),
        }
    };
}

fn fixtures() -> [Fixture; 4] {
    [
        fixture!("vllm", EngineFormat::VllmMap),
        fixture!("vllm-legacy", EngineFormat::VllmArray),
        fixture!("sglang", EngineFormat::SglangMap),
        fixture!("sglang-legacy", EngineFormat::SglangArray),
    ]
}

fn fixture(name: &str) -> Fixture {
    fixtures().into_iter().find(|f| f.name == name).expect("fixture")
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len() % 2 == 0, "odd hex length");
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit")).collect()
}

impl Fixture {
    fn lines(&self) -> Vec<Line> {
        self.lines
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).expect("fixture line is JSON");
                Line {
                    worker: value["worker"].as_u64().expect("worker"),
                    dp_rank: value["dp_rank"].as_u64().expect("dp_rank") as u32,
                    topic: value["topic"].as_str().expect("topic").to_owned(),
                    seq: value["seq"].as_u64().expect("seq"),
                    payload: unhex(value["payload_hex"].as_str().expect("payload_hex")),
                }
            })
            .collect()
    }

    fn expected(&self) -> serde_json::Value {
        serde_json::from_str(self.expected).expect("expected.json")
    }

    /// Every line decoded as a live message, with the line it came from.
    fn decoded(&self) -> Vec<(Line, EngineMessage)> {
        self.lines()
            .into_iter()
            .map(|line| {
                let seq = line.seq.to_be_bytes();
                let frames: [&[u8]; 3] = [line.topic.as_bytes(), &seq, &line.payload];
                let message = decode_message(&frames, &DecodeLimits::default())
                    .unwrap_or_else(|e| panic!("{} rank {} seq {}: {e}", self.name, line.dp_rank, line.seq));
                (line, message)
            })
            .collect()
    }
}

fn stored_events(batch: &EventBatch) -> impl Iterator<Item = &BlockStored> {
    batch.events.iter().filter_map(|event| match event {
        EngineEvent::Stored(stored) => Some(&**stored),
        _ => None,
    })
}

fn all_stored(decoded: &[(Line, EngineMessage)]) -> impl Iterator<Item = &BlockStored> {
    decoded.iter().flat_map(|(_, message)| stored_events(&message.batch))
}

#[test]
fn every_fixture_line_decodes_with_its_seq_rank_and_sensible_events() {
    for fixture in fixtures() {
        let decoded = fixture.decoded();
        assert_eq!(decoded.len(), 24, "{}: 12 batches per rank, 2 ranks", fixture.name);
        let mut next_seq: HashMap<u32, u64> = HashMap::new();
        let (mut stored, mut removed, mut cleared) = (0, 0, 0);
        for (line, message) in &decoded {
            assert_eq!(message.seq, line.seq);
            assert_eq!(message.topic, line.topic.as_bytes());
            assert_eq!(message.batch.dp_rank, Some(line.dp_rank), "{} seq {}", fixture.name, line.seq);
            assert_eq!(line.worker, 0);
            let expected_seq = next_seq.entry(line.dp_rank).or_insert(0);
            assert_eq!(line.seq, *expected_seq, "{}: seqs count from 0 per rank", fixture.name);
            *expected_seq += 1;
            assert!(message.batch.ts > 1.7e9 && message.batch.ts < 2.0e9, "ts {}", message.batch.ts);
            assert!(!message.batch.events.is_empty());
            assert_eq!(message.batch.unknown_events, 0);
            for event in &message.batch.events {
                match event {
                    EngineEvent::Stored(s) => {
                        stored += 1;
                        assert!(!s.block_hashes.is_empty());
                        assert_eq!(s.block_size, 16);
                        assert_eq!(s.token_ids.len(), 16 * s.block_hashes.len());
                        assert_eq!(s.medium, Some(Medium::Gpu));
                        assert_eq!(s.sliding_window, None);
                    }
                    EngineEvent::Removed(r) => {
                        removed += 1;
                        assert!(!r.block_hashes.is_empty());
                        assert_eq!(r.medium, Some(Medium::Gpu));
                    }
                    EngineEvent::AllCleared => cleared += 1,
                }
            }
        }
        assert!(stored > 20 && removed > 8, "{}: {stored} stored, {removed} removed", fixture.name);
        assert_eq!(cleared, 1, "{}: AllBlocksCleared once, on one rank", fixture.name);
    }
}

#[test]
fn vllm_fixture_values_match_what_python_msgpack_reads() {
    let decoded = fixture("vllm").decoded();
    let (_, first) = &decoded[0];
    let EngineEvent::Stored(stored) = &first.batch.events[0] else { panic!("first event is BlockStored") };
    assert_eq!(stored.block_hashes[..2], [4582682017653739674, 7764123318749915537]);
    assert_eq!(stored.token_ids[..2], [180365, 174401]);
    assert_eq!(stored.parent, None);
    assert_eq!(stored.lora_id, None);
    assert_eq!(stored.group_idx, Some(0));
    assert_eq!(stored.kv_cache_spec_kind.as_deref(), Some("full_attention"));
    assert_eq!(stored.extra_keys, Some(vec![None; 4]));
    assert_eq!(first.batch.ts, 1796222743.945247);
    // Hashes at or above 2^63 (uint64 on the wire) stay as they are.
    assert!(all_stored(&decoded).flat_map(|s| &s.block_hashes).any(|&h| h >= 1 << 63));
    // Token ids at or above 2^31 (uint32 on the wire).
    let expected = fixture("vllm").expected();
    let big_token = expected["queries"][0]["tokens"].as_array().unwrap().iter().filter_map(|t| t.as_u64()).max();
    assert!(big_token.unwrap() >= 1 << 31);
    assert!(all_stored(&decoded).flat_map(|s| &s.token_ids).any(|&t| u64::from(t) == big_token.unwrap()));
}

#[test]
fn vllm_lora_and_salted_events_carry_their_namespace() {
    for name in ["vllm", "vllm-legacy"] {
        let decoded = fixture(name).decoded();
        let lora: Vec<_> = all_stored(&decoded).filter(|s| s.lora_name.is_some()).collect();
        assert_eq!(lora.len(), 2, "{name}: one LoRA chain per rank");
        for stored in lora {
            assert_eq!(stored.lora_name.as_deref(), Some("adapter-1"));
            assert_eq!(stored.lora_id, Some(1));
            let every_block = vec![Some(vec![KeyValue::Str("adapter-1".into())]); stored.block_hashes.len()];
            assert_eq!(stored.extra_keys.as_ref(), Some(&every_block));
            assert_eq!(stored.cache_salt, None);
        }
        let salted: Vec<_> = all_stored(&decoded)
            .filter(|s| s.extra_keys.as_ref().and_then(|k| k.first()).is_some_and(|k| k.is_some()))
            .filter(|s| s.lora_name.is_none())
            .collect();
        assert_eq!(salted.len(), 2, "{name}: one salted chain per rank");
        for stored in salted {
            let keys = stored.extra_keys.as_ref().unwrap();
            assert_eq!(keys[0], Some(vec![KeyValue::Str("salt-1".into())]), "salt on the first block only");
            assert!(keys[1..].iter().all(Option::is_none));
        }
    }
}

#[test]
fn sglang_namespaces_and_signed_hashes() {
    // SGLang 0.5.23: `lora_name` and `cache_salt` fields.
    let decoded = fixture("sglang").decoded();
    assert_eq!(all_stored(&decoded).filter(|s| s.lora_name.as_deref() == Some("adapter-1")).count(), 2);
    assert_eq!(all_stored(&decoded).filter(|s| s.cache_salt.as_deref() == Some("salt-1")).count(), 2);
    assert!(all_stored(&decoded).all(|s| s.extra_keys.is_none() && s.group_idx.is_none() && s.lora_id.is_none()));
    // SGLang 0.5.19: the salt in the `metadata` map at position 7, no LoRA at all.
    let legacy = fixture("sglang-legacy").decoded();
    let salted: Vec<_> = all_stored(&legacy).filter(|s| s.cache_salt.is_some()).collect();
    assert_eq!(salted.len(), 2);
    assert!(salted.iter().all(|s| s.cache_salt.as_deref() == Some("salt-1") && s.lora_name.is_none()));
    assert!(all_stored(&legacy).all(|s| s.lora_name.is_none()));

    // Negative int64 hashes become their two's complement (values as msgpack-python reads them).
    for decoded in [&decoded, &legacy] {
        let (_, first) = &decoded[0];
        let EngineEvent::Stored(stored) = &first.batch.events[0] else { panic!("BlockStored") };
        assert_eq!(stored.block_hashes[0], -5209938056884792057i64 as u64);
        assert_eq!(stored.block_hashes[1], 1498950350304663318);
        let negatives = all_stored(decoded).flat_map(|s| &s.block_hashes).filter(|&&h| (h as i64) < 0).count();
        assert!(negatives > 10, "SGLang sends about half its hashes negative");
    }
    // A parent sent as a negative int64 is normalised the same way as the hash it names.
    let held: HashSet<u64> = all_stored(&decoded).flat_map(|s| s.block_hashes.iter().copied()).collect();
    assert!(all_stored(&decoded).filter_map(|s| s.parent).all(|parent| held.contains(&parent)));
}

/// The same scenario through vLLM 0.34 (maps) and 0.23 (arrays): identical events (the
/// 0.23 arrays carry every field 0.34 sends; `kv_cache_spec_sliding_window` is nil there
/// and absent here, `None` in both), identical ranks; only the timestamps differ.
#[test]
fn vllm_maps_and_arrays_decode_to_the_same_events() {
    let maps = fixture("vllm").decoded();
    let arrays = fixture("vllm-legacy").decoded();
    assert_eq!(maps.len(), arrays.len());
    for ((map_line, map), (array_line, array)) in maps.iter().zip(&arrays) {
        assert_eq!((map_line.dp_rank, map.seq), (array_line.dp_rank, array.seq));
        assert_eq!(map.batch.dp_rank, array.batch.dp_rank);
        assert_eq!(map.batch.events, array.batch.events, "rank {} seq {}", map_line.dp_rank, map.seq);
    }
}

/// SGLang 0.5.23 (maps) and 0.5.19 (arrays), same scenario: 0.5.19 has no LoRA, so its
/// streams lack the LoRA chain's event; every other event is identical.
#[test]
fn sglang_maps_and_arrays_decode_to_the_same_events_but_lora() {
    let maps = fixture("sglang").decoded();
    let arrays = fixture("sglang-legacy").decoded();
    assert_eq!(maps.len(), arrays.len());
    let mut lora_events_dropped = 0;
    for ((map_line, map), (array_line, array)) in maps.iter().zip(&arrays) {
        assert_eq!((map_line.dp_rank, map.seq), (array_line.dp_rank, array.seq));
        assert_eq!(map.batch.dp_rank, array.batch.dp_rank);
        let comparable: Vec<_> = map
            .batch
            .events
            .iter()
            .filter(|event| !matches!(event, EngineEvent::Stored(s) if s.lora_name.is_some()))
            .cloned()
            .collect();
        lora_events_dropped += map.batch.events.len() - comparable.len();
        assert_eq!(comparable, array.batch.events, "rank {} seq {}", map_line.dp_rank, map.seq);
    }
    assert_eq!(lora_events_dropped, 2);
}

/// Plays the decoded events into per-rank block sets (set semantics, as an index would)
/// and checks the engines' expected final state and every query's overlap.
#[test]
fn decoded_events_reproduce_the_expected_blocks_and_overlaps() {
    const BLOCK: usize = 16;
    for fixture in fixtures() {
        let expected = fixture.expected();
        // Per rank: held block -> stored under a namespace; (parent, tokens) -> hash of plain blocks.
        let mut held: HashMap<String, HashMap<u64, bool>> = HashMap::new();
        #[allow(clippy::type_complexity)]
        let mut plain_blocks: HashMap<String, HashMap<(Option<u64>, Vec<u32>), u64>> = HashMap::new();
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        for (line, message) in fixture.decoded() {
            let rank = format!("{}/{}", line.worker, line.dp_rank);
            last_seq.insert(rank.clone(), message.seq);
            let rank_held = held.entry(rank.clone()).or_default();
            let rank_blocks = plain_blocks.entry(rank).or_default();
            for event in &message.batch.events {
                match event {
                    EngineEvent::Stored(s) => {
                        let namespaced = s.lora_name.is_some()
                            || s.cache_salt.is_some()
                            || s.extra_keys.iter().flatten().any(Option::is_some);
                        let mut parent = s.parent;
                        for (hash, tokens) in s.block_hashes.iter().zip(s.token_ids.chunks_exact(BLOCK)) {
                            rank_held.insert(*hash, namespaced);
                            if !namespaced {
                                rank_blocks.insert((parent, tokens.to_vec()), *hash);
                            }
                            parent = Some(*hash);
                        }
                    }
                    EngineEvent::Removed(r) => r.block_hashes.iter().for_each(|h| {
                        rank_held.remove(h);
                    }),
                    EngineEvent::AllCleared => rank_held.clear(),
                }
            }
        }
        for (rank, state) in expected["final"].as_object().unwrap() {
            let rank_held = &held[rank];
            let namespaced = rank_held.values().filter(|&&n| n).count() as u64;
            assert_eq!(rank_held.len() as u64 - namespaced, state["held_blocks"].as_u64().unwrap(), "{}", fixture.name);
            assert_eq!(namespaced, state["held_namespaced"].as_u64().unwrap(), "{} {rank}", fixture.name);
            assert_eq!(last_seq[rank], state["last_seq"].as_u64().unwrap());
        }
        for query in expected["queries"].as_array().unwrap() {
            let tokens: Vec<u32> =
                query["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
            for (rank, overlap) in query["overlap"].as_object().unwrap() {
                let mut parent = None;
                let mut blocks = 0;
                for chunk in tokens.chunks_exact(BLOCK) {
                    match plain_blocks[rank].get(&(parent, chunk.to_vec())) {
                        Some(hash) if held[rank].get(hash) == Some(&false) => {
                            blocks += 1;
                            parent = Some(*hash);
                        }
                        _ => break,
                    }
                }
                assert_eq!(blocks, overlap.as_u64().unwrap(), "{} {} on {rank}", fixture.name, query["name"]);
            }
        }
    }
}

/// Every fixture payload re-encodes to exactly its bytes: the encoder writes what each
/// engine writes (same field order, same key omissions, shortest ints, float64 ts,
/// vLLM's map16 header), and every decoded value (f64 ts included) is exact.
#[test]
fn reencoding_a_fixture_batch_reproduces_the_payload_bytes() {
    for fixture in fixtures() {
        for (line, message) in fixture.decoded() {
            let encoded = encode_batch(&message.batch, fixture.format);
            assert!(
                encoded == line.payload,
                "{} rank {} seq {}:\n  got      {}\n  expected {}",
                fixture.name,
                line.dp_rank,
                line.seq,
                hex(&encoded),
                hex(&line.payload)
            );
        }
    }
}

/// Each fixture batch survives a trip through every other format, minus what that
/// format cannot carry.
#[test]
fn fixture_batches_round_trip_through_every_format() {
    for fixture in fixtures() {
        for (_, message) in fixture.decoded() {
            for format in EngineFormat::ALL {
                let bytes = encode_batch(&message.batch, format);
                let back = decode_batch(&bytes, &DecodeLimits::default()).expect("re-encoded batch decodes");
                assert_eq!(back, representable(&message.batch, format), "{} via {}", fixture.name, format.name());
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Replay replies

#[test]
fn replay_replies_in_both_framings_and_the_end_marker() {
    let limits = DecodeLimits::default();
    let lines = fixture("vllm").lines();
    let line = &lines[3];
    let seq = line.seq.to_be_bytes();
    let live = decode_message(&[b"", &seq, &line.payload], &limits).unwrap();
    // vLLM >= 0.34: [topic, seq, payload]; older: [seq, payload].
    assert_eq!(decode_replay_reply(&[b"", &seq, &line.payload], &limits), Ok(ReplayReply::Batch(live.clone())));
    assert_eq!(decode_replay_reply(&[&seq, &line.payload], &limits), Ok(ReplayReply::Batch(live)));
    let end = [0xff; 8];
    assert_eq!(decode_replay_reply(&[b"", &end, b""], &limits), Ok(ReplayReply::End));
    assert_eq!(decode_replay_reply(&[&end, b""], &limits), Ok(ReplayReply::End));
    // A topic travels with replayed batches.
    match decode_replay_reply(&[b"kv", &seq, &line.payload], &limits) {
        Ok(ReplayReply::Batch(message)) => assert_eq!(message.topic, b"kv"),
        other => panic!("{other:?}"),
    }
    // An empty payload with any other seq is not an end marker.
    assert_eq!(decode_replay_reply(&[&seq, b""], &limits).unwrap_err().reason(), "msgpack");
    assert_eq!(decode_replay_reply(&[&end], &limits).unwrap_err().reason(), "frames");
    assert_eq!(decode_replay_reply(&[b"", b"", &end, b""], &limits).unwrap_err().reason(), "frames");
    assert_eq!(decode_replay_reply(&[&end[..7], b""], &limits).unwrap_err().reason(), "seq");
}

// ---------------------------------------------------------------------------------------
// A small msgpack writer for crafted inputs (`rmp::encode` onto a Vec).

#[derive(Default)]
struct Mp(Vec<u8>);

impl Mp {
    fn new() -> Self {
        Mp::default()
    }
    fn arr(mut self, len: u32) -> Self {
        rmp::encode::write_array_len(&mut self.0, len).unwrap();
        self
    }
    fn map(mut self, len: u32) -> Self {
        rmp::encode::write_map_len(&mut self.0, len).unwrap();
        self
    }
    fn str(mut self, text: &str) -> Self {
        rmp::encode::write_str(&mut self.0, text).unwrap();
        self
    }
    fn bin(mut self, bytes: &[u8]) -> Self {
        rmp::encode::write_bin(&mut self.0, bytes).unwrap();
        self
    }
    fn uint(mut self, value: u64) -> Self {
        rmp::encode::write_uint(&mut self.0, value).unwrap();
        self
    }
    fn sint(mut self, value: i64) -> Self {
        rmp::encode::write_sint(&mut self.0, value).unwrap();
        self
    }
    fn f64(mut self, value: f64) -> Self {
        rmp::encode::write_f64(&mut self.0, value).unwrap();
        self
    }
    fn f32(mut self, value: f32) -> Self {
        rmp::encode::write_f32(&mut self.0, value).unwrap();
        self
    }
    fn nil(mut self) -> Self {
        rmp::encode::write_nil(&mut self.0).unwrap();
        self
    }
    fn bool(mut self, value: bool) -> Self {
        rmp::encode::write_bool(&mut self.0, value).unwrap();
        self
    }
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    /// `count` token ids 1, 2, ...
    fn tokens(self, count: u32) -> Self {
        (1..=u64::from(count)).fold(self.arr(count), Mp::uint)
    }
    /// A batch header `[ts, [<events>...], rank]` up to the events (then append them and the rank).
    fn batch(events: u32) -> Self {
        Mp::new().arr(3).f64(1.5).arr(events)
    }
    fn done(self) -> Vec<u8> {
        self.0
    }
}

fn decode(payload: &[u8]) -> Result<EventBatch, DecodeError> {
    decode_batch(payload, &DecodeLimits::default())
}

fn reason(payload: &[u8]) -> &'static str {
    match decode(payload) {
        Ok(batch) => panic!("expected an error, decoded {batch:?}"),
        Err(error) => {
            // Display and reason must both work for every error.
            assert!(!error.to_string().is_empty());
            assert!(DecodeError::REASONS.contains(&error.reason()));
            error.reason()
        }
    }
}

/// `["BlockStored", [h1], nil, [16 tokens], 16]`, the shortest vLLM array event.
fn short_stored(hash: u64) -> Mp {
    Mp::new().arr(5).str("BlockStored").arr(1).uint(hash).nil().tokens(16).uint(16)
}

fn stored(block_hashes: Vec<u64>, parent: Option<u64>, block_size: u32) -> BlockStored {
    let token_ids = (1..=(block_hashes.len() as u32 * block_size)).collect();
    BlockStored { block_hashes, parent, token_ids, block_size, ..BlockStored::default() }
}

// ---------------------------------------------------------------------------------------
// Accepted shapes

#[test]
fn batch_shapes_array_of_two_longer_arrays_and_maps() {
    let event = short_stored(7).done();
    let expected_event: EngineEvent = stored(vec![7], None, 16).into();
    // [ts, events]: no rank.
    let two = Mp::new().arr(2).f64(2.5).arr(1).raw(&event).done();
    assert_eq!(
        decode(&two).unwrap(),
        EventBatch { ts: 2.5, events: vec![expected_event.clone()], dp_rank: None, unknown_events: 0 }
    );
    // [ts, events, rank, unknown...]: trailing elements of any type skipped; int ts.
    let long = Mp::new().arr(5).uint(3).arr(1).raw(&event).uint(4).map(1).str("x").arr(2).nil().bin(b"z").str("y");
    let batch = decode(&long.done()).unwrap();
    assert_eq!((batch.ts, batch.dp_rank, batch.events.len()), (3.0, Some(4), 1));
    // Nil rank; float32 ts.
    let nil_rank = Mp::new().arr(3).f32(0.5).arr(0).nil().done();
    assert_eq!(decode(&nil_rank).unwrap(), EventBatch { ts: 0.5, events: vec![], dp_rank: None, unknown_events: 0 });
    // A map, keys in any order, unknown keys skipped, either rank name.
    for rank_key in ["data_parallel_rank", "attn_dp_rank"] {
        let map = Mp::new()
            .map(4)
            .str("extra")
            .arr(1)
            .uint(1)
            .str(rank_key)
            .uint(9)
            .str("events")
            .arr(1)
            .raw(&event)
            .str("ts")
            .f64(8.0)
            .done();
        assert_eq!(
            decode(&map).unwrap(),
            EventBatch { ts: 8.0, events: vec![expected_event.clone()], dp_rank: Some(9), unknown_events: 0 }
        );
    }
    // A non-string key is skipped too.
    let odd_key = Mp::new().map(3).uint(1).uint(2).str("ts").f64(1.0).str("events").arr(0).done();
    assert_eq!(decode(&odd_key).unwrap().dp_rank, None);
}

#[test]
fn map_events_in_any_key_order_with_unknown_keys() {
    // `type` last, unknown keys in between, only the required fields.
    let event = Mp::new()
        .map(6)
        .str("token_ids")
        .tokens(2)
        .str("session_id")
        .map(1)
        .str("a")
        .arr(1)
        .nil()
        .str("block_hashes")
        .arr(2)
        .uint(1)
        .uint(2)
        .str("block_size")
        .uint(1)
        .str("future_field")
        .bin(&[1, 2, 3])
        .str("type")
        .str("BlockStored");
    let batch = decode(&Mp::batch(1).raw(&event.done()).uint(0).done()).unwrap();
    assert_eq!(batch.events, vec![stored(vec![1, 2], None, 1).into()]);

    let removed = Mp::new().map(3).str("group_idx").uint(2).str("block_hashes").arr(1).uint(5).str("type");
    let batch = decode(&Mp::batch(1).raw(&removed.str("BlockRemoved").done()).uint(0).done()).unwrap();
    assert_eq!(
        batch.events,
        vec![EngineEvent::Removed(BlockRemoved { block_hashes: vec![5], medium: None, group_idx: Some(2) })]
    );

    let cleared = Mp::new().map(2).str("why").str("reset").str("type").str("AllBlocksCleared").done();
    assert_eq!(decode(&Mp::batch(1).raw(&cleared).nil().done()).unwrap().events, vec![EngineEvent::AllCleared]);
}

#[test]
fn every_named_field_of_a_map_event() {
    let event = Mp::new()
        .map(14)
        .str("type")
        .str("BlockStored")
        .str("block_hashes")
        .arr(1)
        .uint(11)
        .str("parent_block_hash")
        .sint(-3)
        .str("token_ids")
        .tokens(4)
        .str("block_size")
        .uint(4)
        .str("lora_id")
        .sint(-7)
        .str("medium")
        .str("CPU_PINNED")
        .str("lora_name")
        .str("l")
        .str("extra_keys")
        .arr(1)
        .arr(2)
        .str("k")
        .uint(1)
        .str("group_idx")
        .uint(3)
        .str("kv_cache_spec_kind")
        .str("sliding_window")
        .str("kv_cache_spec_sliding_window")
        .uint(4096)
        .str("cache_salt")
        .str("s")
        .str("session_id")
        .str("ignored")
        .done();
    let batch = decode(&Mp::batch(1).raw(&event).uint(1).done()).unwrap();
    let expected = BlockStored {
        block_hashes: vec![11],
        parent: Some(-3i64 as u64),
        token_ids: vec![1, 2, 3, 4],
        block_size: 4,
        lora_id: Some(-7),
        medium: Some(Medium::CpuPinned),
        lora_name: Some("l".into()),
        extra_keys: Some(vec![Some(vec![KeyValue::Str("k".into()), KeyValue::Int(1)])]),
        group_idx: Some(3),
        kv_cache_spec_kind: Some("sliding_window".into()),
        sliding_window: Some(4096),
        cache_salt: Some("s".into()),
    };
    assert_eq!(batch.events, vec![expected.into()]);
}

#[test]
fn array_events_of_every_length_and_sglang_metadata() {
    // Required prefix only (old vLLM), then up to the 12 fields and beyond.
    let base = || Mp::new().str("BlockStored").arr(1).uint(1).uint(99).tokens(2).uint(2);
    let decode_one = |event: Mp| decode(&Mp::batch(1).raw(&event.done()).uint(0).done());
    let stored_only = decode_one(Mp::new().arr(5).raw(&base().done())).unwrap();
    assert_eq!(stored_only.events, vec![stored(vec![1], Some(99), 2).into()]);
    let full = Mp::new()
        .arr(14)
        .raw(&base().done())
        .uint(5)
        .str("DISK")
        .nil()
        .nil()
        .uint(1)
        .str("full_attention")
        .uint(128)
        .str("future")
        .arr(1)
        .nil();
    let EngineEvent::Stored(full) = &decode_one(full).unwrap().events[0] else { panic!() };
    assert_eq!(
        (full.lora_id, full.medium, &full.lora_name, &full.extra_keys, full.group_idx, full.sliding_window),
        (Some(5), Some(Medium::Disk), &None, &None, Some(1), Some(128))
    );
    // SGLang 0.5.19: a map at position 7 is `metadata`; what follows it is ignored.
    let sglang = Mp::new()
        .arr(9)
        .raw(&base().done())
        .nil()
        .str("GPU")
        .map(2)
        .str("other")
        .uint(1)
        .str("cache_salt")
        .str("salt")
        .str("not a vLLM field");
    let EngineEvent::Stored(sglang) = &decode_one(sglang).unwrap().events[0] else { panic!() };
    assert_eq!((sglang.cache_salt.as_deref(), &sglang.lora_name), (Some("salt"), &None));
    assert_eq!(sglang.kv_cache_spec_kind, None);
    // BlockRemoved: required prefix only, then with medium, group_idx and more.
    let removed = decode_one(Mp::new().arr(2).str("BlockRemoved").arr(1).sint(-1)).unwrap();
    assert_eq!(
        removed.events,
        vec![EngineEvent::Removed(BlockRemoved { block_hashes: vec![u64::MAX], ..Default::default() })]
    );
    let removed = decode_one(Mp::new().arr(5).str("BlockRemoved").arr(0).str("STORAGE").uint(2).bool(true)).unwrap();
    assert_eq!(
        removed.events,
        vec![EngineEvent::Removed(BlockRemoved {
            block_hashes: vec![],
            medium: Some(Medium::Storage),
            group_idx: Some(2)
        })]
    );
    // AllBlocksCleared with trailing fields.
    assert_eq!(
        decode_one(Mp::new().arr(2).str("AllBlocksCleared").uint(1)).unwrap().events,
        vec![EngineEvent::AllCleared]
    );
}

#[test]
fn unknown_event_classes_are_skipped_and_counted() {
    let unknown_array = Mp::new().arr(3).str("BlockMoved").arr(2).uint(1).uint(2).map(1).str("x").nil();
    let unknown_map = Mp::new().map(2).str("type").str("Heartbeat").str("block_hashes").str("not hashes");
    let unknown_map_type_last = Mp::new().map(2).str("token_ids").bool(false).str("type").str("Other");
    let batch = Mp::batch(4)
        .raw(&unknown_array.done())
        .raw(&short_stored(3).done())
        .raw(&unknown_map.done())
        .raw(&unknown_map_type_last.done())
        .uint(1);
    let batch = decode(&batch.done()).unwrap();
    assert_eq!(batch.unknown_events, 3);
    assert_eq!(batch.events, vec![stored(vec![3], None, 16).into()]);
}

#[test]
fn hashes_as_every_int_width_and_as_bin() {
    let mut digest = [0u8; 32];
    digest.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    let hashes = Mp::new()
        .arr(9)
        .uint(5) // fixint
        .uint(200) // uint8
        .uint(u64::MAX) // uint64
        .sint(-1) // negative fixint
        .sint(-100) // int8
        .sint(-40_000) // int32
        .sint(i64::MIN) // int64
        .bin(&digest) // bin(32): the last 8 bytes, big-endian
        .bin(&[1, 2, 3]); // shorter: all of it, zero-extended
    let event = Mp::new().arr(5).str("BlockStored").raw(&hashes.done()).bin(&[0xaa; 16]).tokens(9).uint(1).done();
    let batch = decode(&Mp::batch(1).raw(&event).uint(0).done()).unwrap();
    let EngineEvent::Stored(stored) = &batch.events[0] else { panic!() };
    assert_eq!(
        stored.block_hashes,
        vec![
            5,
            200,
            u64::MAX,
            u64::MAX,
            -100i64 as u64,
            -40_000i64 as u64,
            1 << 63,
            u64::from_be_bytes([24, 25, 26, 27, 28, 29, 30, 31]),
            0x010203
        ]
    );
    assert_eq!(stored.parent, Some(u64::from_be_bytes([0xaa; 8])));
}

#[test]
fn extra_keys_map_every_value_kind() {
    let keys = Mp::new()
        .arr(3)
        .nil()
        .arr(8)
        .nil()
        .bool(true)
        .sint(-5)
        .uint(u64::MAX)
        .f32(1.5)
        .f64(-2.25)
        .bin(b"mm")
        .arr(2)
        .str("a")
        .map(1)
        .str("k")
        .uint(1)
        .arr(0);
    let event = Mp::new().arr(9).str("BlockStored").arr(3).uint(1).uint(2).uint(3).nil().tokens(3).uint(1);
    let event = event.nil().nil().nil().raw(&keys.done()).done();
    let batch = decode(&Mp::batch(1).raw(&event).uint(0).done()).unwrap();
    let EngineEvent::Stored(stored) = &batch.events[0] else { panic!() };
    let pair = KeyValue::Array(vec![KeyValue::Str("k".into()), KeyValue::Int(1)]);
    assert_eq!(
        stored.extra_keys,
        Some(vec![
            None,
            Some(vec![
                KeyValue::Nil,
                KeyValue::Bool(true),
                KeyValue::Int(-5),
                KeyValue::Int(i128::from(u64::MAX)),
                KeyValue::Float(1.5),
                KeyValue::Float(-2.25),
                KeyValue::Bin(b"mm".to_vec()),
                KeyValue::Array(vec![KeyValue::Str("a".into()), KeyValue::Array(vec![pair])]),
            ]),
            Some(vec![]),
        ])
    );
}

// ---------------------------------------------------------------------------------------
// Errors

#[test]
fn frame_errors_frames_seq_oversize() {
    let limits = DecodeLimits { max_payload_bytes: 64, max_topic_bytes: 4 };
    let payload = Mp::batch(0).uint(0).done();
    let seq = 0u64.to_be_bytes();
    assert!(decode_message(&[b"", &seq, &payload], &limits).is_ok());
    let reason = |frames: &[&[u8]]| decode_message(frames, &limits).unwrap_err().reason();
    assert_eq!(reason(&[&seq, &payload]), "frames");
    assert_eq!(reason(&[b"", &seq, &payload, b""]), "frames");
    assert_eq!(reason(&[]), "frames");
    assert_eq!(reason(&[b"", &seq[..7], &payload]), "seq");
    assert_eq!(reason(&[b"", &[0; 9], &payload]), "seq");
    assert_eq!(reason(&[b"topic", &seq, &payload]), "oversize");
    assert_eq!(reason(&[b"", &seq, &[0x90; 65]]), "oversize");
    assert_eq!(
        decode_message(&[b"", &seq, &[0x90; 65]], &limits).unwrap_err(),
        DecodeError::Oversize { frame: "payload", len: 65, limit: 64 }
    );
    assert_eq!(decode_batch(&[0x90; 65], &limits).unwrap_err().reason(), "oversize");
}

#[test]
fn malformed_msgpack() {
    assert_eq!(reason(&[]), "msgpack");
    assert_eq!(reason(&[0xc1]), "msgpack");
    assert_eq!(reason(&Mp::batch(1).raw(&[0xc1]).done()), "msgpack");
    // Bytes after the batch.
    assert_eq!(reason(&Mp::batch(0).uint(0).uint(0).done()), "msgpack");
    // A string longer than the input.
    assert_eq!(reason(&Mp::new().arr(2).f64(1.0).arr(1).arr(1).raw(&[0xdb, 0, 0, 1, 0, b'x']).done()), "msgpack");
    // The reserved marker inside a skipped value, and where a token should be.
    let skipped = Mp::new().arr(4).f64(1.0).arr(0).nil().arr(1).raw(&[0xc1]).done();
    assert_eq!(reason(&skipped), "msgpack");
    let token = Mp::batch(1).arr(5).str("BlockStored").arr(1).uint(1).nil().arr(1).raw(&[0xc1]).uint(1).nil().done();
    assert_eq!(reason(&token), "msgpack");
}

#[test]
fn wrong_shapes() {
    let batch_of = |event: Mp| Mp::batch(1).raw(&event.done()).uint(0).done();
    assert_eq!(reason(&Mp::new().uint(1).done()), "shape", "batch neither array nor map");
    assert_eq!(reason(&Mp::new().arr(1).f64(1.0).done()), "shape", "batch array of one");
    assert_eq!(reason(&Mp::new().arr(2).str("ts").arr(0).done()), "shape", "ts not a number");
    assert_eq!(reason(&Mp::new().arr(2).f64(1.0).map(0).done()), "shape", "events not an array");
    assert_eq!(reason(&Mp::new().map(1).str("ts").f64(1.0).done()), "shape", "batch map without events");
    assert_eq!(reason(&Mp::new().map(1).str("events").arr(0).done()), "shape", "batch map without ts");
    assert_eq!(reason(&Mp::batch(1).uint(5).uint(0).done()), "shape", "event neither array nor map");
    assert_eq!(reason(&batch_of(Mp::new().arr(0))), "shape", "empty event array");
    assert_eq!(reason(&batch_of(Mp::new().arr(1).uint(3))), "shape", "class name not a string");
    assert_eq!(reason(&batch_of(Mp::new().map(0))), "shape", "empty event map");
    assert_eq!(reason(&batch_of(Mp::new().map(1).str("block_hashes").arr(0))), "shape", "map without type");
    assert_eq!(reason(&batch_of(Mp::new().map(1).str("type").uint(1))), "shape", "type not a string");
    let short = Mp::new().arr(4).str("BlockStored").arr(0).nil().arr(0);
    assert_eq!(reason(&batch_of(short)), "shape", "BlockStored array without block_size");
    assert_eq!(reason(&batch_of(Mp::new().arr(1).str("BlockRemoved"))), "shape", "BlockRemoved without hashes");
    let no_tokens = Mp::new().map(3).str("type").str("BlockStored").str("block_hashes").arr(0).str("block_size");
    assert_eq!(reason(&batch_of(no_tokens.uint(16))), "shape", "BlockStored map without token_ids");
    let no_hashes = Mp::new().map(1).str("type").str("BlockRemoved");
    assert_eq!(reason(&batch_of(no_hashes)), "shape", "BlockRemoved map without block_hashes");
    let hashes_not_array = Mp::new().arr(2).str("BlockRemoved").uint(1);
    assert_eq!(reason(&batch_of(hashes_not_array)), "shape", "block_hashes not an array");
    let tokens_not_array = Mp::new().arr(5).str("BlockStored").arr(0).nil().str("tokens").uint(1);
    assert_eq!(reason(&batch_of(tokens_not_array)), "shape", "token_ids not an array");
    let medium_int = Mp::new().arr(3).str("BlockRemoved").arr(0).uint(1);
    assert_eq!(reason(&batch_of(medium_int)), "shape", "medium not a string");
    let bad_utf8 = Mp::new().arr(3).str("BlockRemoved").arr(0).raw(&[0xa2, 0xff, 0xfe]);
    assert_eq!(reason(&batch_of(bad_utf8)), "shape", "medium not UTF-8");
    let lora_int = short_stored(1).done();
    let lora_int = Mp::new().arr(8).raw(&lora_int[1..]).nil().nil().uint(7);
    assert_eq!(reason(&batch_of(lora_int)), "shape", "lora_name an int");
    let group_negative = Mp::new().arr(4).str("BlockRemoved").arr(0).nil().sint(-1);
    assert_eq!(reason(&batch_of(group_negative)), "shape", "group_idx negative");
    assert_eq!(reason(&Mp::batch(0).str("0").done()), "shape", "dp_rank a string");
    let keys_not_array = Mp::new().map(5).str("type").str("BlockStored").str("block_hashes").arr(0);
    let keys_not_array = keys_not_array.str("token_ids").arr(0).str("block_size").uint(1).str("extra_keys").uint(1);
    assert_eq!(reason(&batch_of(keys_not_array)), "shape", "extra_keys not an array");
    let ext_key = Mp::new().map(5).str("type").str("BlockStored").str("block_hashes").arr(0);
    let ext_key = ext_key.str("token_ids").arr(0).str("block_size").uint(1).str("extra_keys").arr(1).arr(1);
    assert_eq!(reason(&batch_of(ext_key.raw(&[0xd4, 1, 0]))), "shape", "an ext extra key");
}

/// Extra keys nest at most [`super::msgpack::MAX_EXTRA_KEYS_DEPTH`] levels, counting
/// the `extra_keys` list and the block's entry; deeper input fails, never recursing further.
#[test]
fn extra_keys_nesting_is_limited() {
    let with_nested_keys = |levels: u32| {
        // `levels` containers in all: the list, the entry, then levels - 2 nested arrays.
        let mut keys = Mp::new().arr(1).arr(1);
        for _ in 0..levels - 2 {
            keys = keys.arr(1);
        }
        let keys = keys.nil();
        let event = Mp::new().arr(9).str("BlockStored").arr(0).nil().arr(0).uint(1).nil().nil().nil();
        Mp::batch(1).raw(&event.raw(&keys.done()).done()).uint(0).done()
    };
    let limit = super::msgpack::MAX_EXTRA_KEYS_DEPTH as u32;
    assert!(decode(&with_nested_keys(limit)).is_ok());
    assert_eq!(reason(&with_nested_keys(limit + 1)), "shape");
    assert_eq!(reason(&with_nested_keys(10_000)), "shape");
    // Maps count as two levels (the pairs list, then each pair).
    let map_at = |levels: u32| {
        let mut keys = Mp::new().arr(1).arr(1);
        for _ in 0..levels - 4 {
            keys = keys.arr(1);
        }
        let keys = keys.map(1).nil().nil();
        let event = Mp::new().arr(9).str("BlockStored").arr(0).nil().arr(0).uint(1).nil().nil().nil();
        Mp::batch(1).raw(&event.raw(&keys.done()).done()).uint(0).done()
    };
    assert!(decode(&map_at(limit)).is_ok());
    assert_eq!(reason(&map_at(limit + 1)), "shape");
}

#[test]
fn bad_hashes_tokens_block_sizes_and_ranks() {
    let removed = |hash: Mp| Mp::batch(1).arr(2).str("BlockRemoved").arr(1).raw(&hash.done()).uint(0).done();
    assert_eq!(reason(&removed(Mp::new().str("abc"))), "hash");
    assert_eq!(reason(&removed(Mp::new().nil())), "hash");
    assert_eq!(reason(&removed(Mp::new().f64(1.0))), "hash");
    assert_eq!(reason(&removed(Mp::new().bin(&[]))), "hash");
    let bad_parent = Mp::new().arr(5).str("BlockStored").arr(0).str("parent").arr(0).uint(1);
    assert_eq!(reason(&Mp::batch(1).raw(&bad_parent.done()).uint(0).done()), "hash");

    let with_token = |token: Mp| {
        let event = Mp::new().arr(5).str("BlockStored").arr(1).uint(1).nil().arr(1).raw(&token.done()).uint(1);
        Mp::batch(1).raw(&event.done()).uint(0).done()
    };
    assert!(decode(&with_token(Mp::new().uint(u64::from(u32::MAX)))).is_ok());
    assert_eq!(reason(&with_token(Mp::new().sint(-1))), "token");
    assert_eq!(reason(&with_token(Mp::new().uint(1 << 32))), "token");
    assert_eq!(reason(&with_token(Mp::new().str("1"))), "token");
    assert_eq!(reason(&with_token(Mp::new().f64(1.0))), "token");

    let with_size = |size: Mp, tokens: u32| {
        let event = Mp::new().arr(5).str("BlockStored").arr(1).uint(1).nil().tokens(tokens).raw(&size.done());
        Mp::batch(1).raw(&event.done()).uint(0).done()
    };
    assert!(decode(&with_size(Mp::new().uint(3), 3)).is_ok());
    assert_eq!(reason(&with_size(Mp::new().uint(0), 0)), "block_size");
    assert_eq!(reason(&with_size(Mp::new().sint(-16), 16)), "block_size");
    assert_eq!(reason(&with_size(Mp::new().uint(1 << 32), 16)), "block_size");
    assert_eq!(reason(&with_size(Mp::new().str("16"), 16)), "block_size");
    // token_ids must cover every block.
    assert_eq!(reason(&with_size(Mp::new().uint(16), 15)), "block_size");
    assert_eq!(reason(&with_size(Mp::new().uint(4), 16)), "block_size");
    let two_blocks = Mp::new().arr(5).str("BlockStored").arr(2).uint(1).uint(2).nil().tokens(16).uint(16);
    assert_eq!(reason(&Mp::batch(1).raw(&two_blocks.done()).uint(0).done()), "block_size");
    // Same check for map events.
    let map = Mp::new().map(4).str("type").str("BlockStored").str("block_hashes").arr(2).uint(1).uint(2);
    let map = map.str("token_ids").tokens(3).str("block_size").uint(2);
    assert_eq!(reason(&Mp::batch(1).raw(&map.done()).uint(0).done()), "block_size");

    assert_eq!(reason(&Mp::batch(0).sint(-1).done()), "rank");
    assert_eq!(reason(&Mp::batch(0).uint(1 << 32).done()), "rank");
    assert_eq!(
        reason(&Mp::new().map(3).str("ts").f64(1.0).str("events").arr(0).str("attn_dp_rank").sint(-2).done()),
        "rank"
    );
    assert_eq!(decode(&Mp::batch(0).uint(u64::from(u32::MAX)).done()).unwrap().dp_rank, Some(u32::MAX));
}

#[test]
fn every_truncation_of_every_fixture_payload_fails_cleanly() {
    for fixture in fixtures() {
        for line in fixture.lines() {
            for len in 0..line.payload.len() {
                let error = decode(&line.payload[..len]).expect_err("a strict prefix is not a batch");
                assert_eq!(error.reason(), "msgpack", "{} prefix of {len} bytes: {error}", fixture.name);
            }
            assert!(decode(&line.payload).is_ok());
        }
    }
}

/// Lengths that claim more elements than there are bytes are refused before allocating.
#[test]
fn forged_huge_lengths_fail_without_allocating() {
    let huge_array = [0xdd, 0xff, 0xff, 0xff, 0xff];
    let huge_map = [0xdf, 0xff, 0xff, 0xff, 0xff];
    let huge_str = [0xdb, 0xff, 0xff, 0xff, 0xff];
    let huge_bin = [0xc6, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(reason(&huge_array), "msgpack");
    assert_eq!(reason(&huge_map), "msgpack");
    // As the events, the hashes, the tokens, the extra keys, a skipped field, a skipped
    // nested container, a hash bin, a string.
    let cases = [
        Mp::new().arr(3).f64(1.0).raw(&huge_array).done(),
        Mp::batch(1).arr(2).str("BlockRemoved").raw(&huge_array).done(),
        Mp::batch(1).arr(5).str("BlockStored").arr(0).nil().raw(&huge_array).done(),
        Mp::batch(1).arr(9).str("BlockStored").arr(0).nil().arr(0).uint(1).nil().nil().nil().raw(&huge_array).done(),
        Mp::batch(1)
            .arr(9)
            .str("BlockStored")
            .arr(0)
            .nil()
            .arr(0)
            .uint(1)
            .nil()
            .nil()
            .nil()
            .arr(1)
            .raw(&huge_array)
            .done(),
        Mp::batch(1)
            .arr(9)
            .str("BlockStored")
            .arr(0)
            .nil()
            .arr(0)
            .uint(1)
            .nil()
            .nil()
            .nil()
            .arr(1)
            .arr(1)
            .raw(&huge_map)
            .done(),
        Mp::batch(1).arr(3).str("Unknown").raw(&huge_array).done(),
        Mp::batch(1).arr(3).str("Unknown").arr(2).raw(&huge_map).done(),
        Mp::batch(1).arr(3).str("Unknown").raw(&[0x91, 0x91, 0x91]).raw(&huge_str).done(),
        Mp::batch(1).arr(2).str("BlockRemoved").arr(1).raw(&huge_bin).done(),
        Mp::batch(1).raw(&huge_map).done(),
        Mp::batch(1).arr(1).raw(&huge_str).done(),
    ];
    for payload in cases {
        assert_eq!(reason(&payload), "msgpack", "{}", hex(&payload));
    }
    // Deeply nested containers in a skipped field: skipped iteratively, no recursion.
    let mut deep = Mp::batch(1).arr(2).str("Unknown");
    for _ in 0..200_000 {
        deep = deep.arr(1);
    }
    let deep = deep.nil().uint(0).done();
    let batch = decode(&deep).expect("skipping deep nesting succeeds");
    assert_eq!(batch.unknown_events, 1);
}

// ---------------------------------------------------------------------------------------
// Round trip (proptest)

fn key_value() -> impl Strategy<Value = KeyValue> {
    let leaf = prop_oneof![
        Just(KeyValue::Nil),
        any::<bool>().prop_map(KeyValue::Bool),
        any::<i64>().prop_map(|i| KeyValue::Int(i128::from(i))),
        any::<u64>().prop_map(|u| KeyValue::Int(i128::from(u))),
        // Not representable in msgpack: written as nil.
        Just(KeyValue::Int(i128::from(u64::MAX) + 1)),
        prop::num::f64::NORMAL.prop_map(KeyValue::Float),
        "[a-z0-9-]{0,40}".prop_map(KeyValue::Str),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(KeyValue::Bin),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| prop::collection::vec(inner, 0..4).prop_map(KeyValue::Array))
}

fn medium() -> impl Strategy<Value = Option<Medium>> {
    prop::option::of(prop::sample::select(vec![
        Medium::Gpu,
        Medium::CpuPinned,
        Medium::Cpu,
        Medium::Disk,
        Medium::Storage,
        Medium::External,
        Medium::Other,
    ]))
}

fn block_stored() -> impl Strategy<Value = BlockStored> {
    (prop::collection::vec(any::<u64>(), 0..5), 1u32..5).prop_flat_map(|(block_hashes, block_size)| {
        let blocks = block_hashes.len();
        (
            Just(block_hashes),
            prop::collection::vec(any::<u32>(), blocks * block_size as usize),
            any::<Option<u64>>(),
            any::<Option<i64>>(),
            medium(),
            prop::option::of("[a-z0-9-]{0,40}"),
            prop::option::of(prop::collection::vec(
                prop::option::of(prop::collection::vec(key_value(), 0..3)),
                blocks..=blocks,
            )),
            (any::<Option<u32>>(), prop::option::of("[a-z_]{0,20}"), any::<Option<u64>>()),
            prop::option::of("[a-z0-9-]{0,40}"),
        )
            .prop_map(
                move |(block_hashes, token_ids, parent, lora_id, medium, lora_name, extra_keys, group, cache_salt)| {
                    BlockStored {
                        block_hashes,
                        parent,
                        token_ids,
                        block_size,
                        lora_id,
                        medium,
                        lora_name,
                        extra_keys,
                        group_idx: group.0,
                        kv_cache_spec_kind: group.1,
                        sliding_window: group.2,
                        cache_salt,
                    }
                },
            )
    })
}

fn engine_event() -> impl Strategy<Value = EngineEvent> {
    prop_oneof![
        4 => block_stored().prop_map(EngineEvent::from),
        2 => (prop::collection::vec(any::<u64>(), 0..4), medium(), any::<Option<u32>>()).prop_map(
            |(block_hashes, medium, group_idx)| EngineEvent::Removed(BlockRemoved { block_hashes, medium, group_idx })
        ),
        1 => Just(EngineEvent::AllCleared),
    ]
}

fn event_batch() -> impl Strategy<Value = EventBatch> {
    (
        prop_oneof![prop::num::f64::NORMAL, Just(0.0), Just(-0.0), Just(f64::INFINITY)],
        prop::collection::vec(engine_event(), 0..6),
        any::<Option<u32>>(),
    )
        .prop_map(|(ts, events, dp_rank)| EventBatch { ts, events, dp_rank, unknown_events: 0 })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// decode(encode(b, f)) is what `f` can express of `b`, and re-encoding that gives
    /// the same bytes (the encoding is a function of what decodes).
    #[test]
    fn encode_then_decode_round_trips_in_every_format(batch in event_batch()) {
        for format in EngineFormat::ALL {
            let bytes = encode_batch(&batch, format);
            let decoded = decode_batch(&bytes, &DecodeLimits::default());
            prop_assert!(decoded.is_ok(), "{}: {:?}", format.name(), decoded);
            let decoded = decoded.unwrap();
            prop_assert_eq!(&decoded, &representable(&batch, format), "{}", format.name());
            prop_assert_eq!(encode_batch(&decoded, format), bytes);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Throughput

/// Decode-only throughput of vLLM-style BlockStored events of 16-token blocks.
#[test]
#[ignore = "timing; run with --release --ignored --nocapture"]
fn decode_throughput() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let events: Vec<EngineEvent> = (0..64)
        .map(|_| {
            let block_hashes: Vec<u64> = (0..8).map(|_| next()).collect();
            let token_ids = (0..8 * 16).map(|_| (next() % 200_000) as u32).collect();
            let extra_keys = Some(vec![None; 8]);
            EngineEvent::from(BlockStored {
                block_hashes,
                parent: Some(next()),
                token_ids,
                block_size: 16,
                medium: Some(Medium::Gpu),
                extra_keys,
                group_idx: Some(0),
                kv_cache_spec_kind: Some("full_attention".into()),
                ..BlockStored::default()
            })
        })
        .collect();
    let batch = EventBatch { ts: 1.0, events, dp_rank: Some(0), unknown_events: 0 };
    // KVROUTE_DECODE_FORMAT=<name> measures one format only (e.g. under `perf stat`).
    let only = std::env::var("KVROUTE_DECODE_FORMAT").ok();
    for format in EngineFormat::ALL.into_iter().filter(|f| only.as_deref().is_none_or(|name| name == f.name())) {
        let payload = encode_batch(&batch, format);
        // The best of 20 runs of 200 decodes: the machine may be shared.
        let rounds = 200;
        let mut best = f64::INFINITY;
        for _ in 0..20 {
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(decode(std::hint::black_box(&payload)).unwrap());
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        let (elapsed, blocks) = (best, batch.block_count() * rounds);
        println!(
            "{:>12}: {:.1} M block events/s, {:.0} MB/s ({} bytes per batch of {} blocks)",
            format.name(),
            blocks as f64 / elapsed / 1e6,
            (payload.len() * rounds) as f64 / elapsed / 1e6,
            payload.len(),
            batch.block_count()
        );
    }
}
