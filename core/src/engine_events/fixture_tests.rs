//! The whole core path on the engines' own bytes: every message captured from vLLM's and
//! SGLang's publisher code (data/engine-events/, four releases) goes through
//! [`EngineRankStream`] (decode, sequence, mapping) into a [`Router`], and every query of
//! the capture's `expected.json` must get exactly the overlaps it lists; the LoRA and
//! salted chains, which a plain request must not match, match a request that carries the
//! same adapter or salt.

use std::sync::Arc;

use serde_json::Value;

use super::block_mapper::MapperConfig;
use super::decode::DecodeLimits;
use super::rank_stream::{EngineRankStream, RankStreamConfig};
use super::sequence::TrackerConfig;
use crate::hashing::{BlockHasher, BlockIdentity};
use crate::ids::{DpRank, RankKey, WorkerId};
use crate::route::{Prompt, Router, RouterConfig, WorkerSpec};
use crate::tier::StorageTier;

const ENGINES: [&str; 4] = ["vllm", "vllm-legacy", "sglang", "sglang-legacy"];

fn fixture(name: &str) -> String {
    let path = format!("{}/../data/engine-events/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect()
}

/// A router fed every captured message of `engine`, in capture order, rank by rank.
fn replayed(engine: &str) -> (Router, Vec<EngineRankStream>) {
    let router = Router::new(RouterConfig::default(), Arc::new(|| 0u64)).expect("router");
    router.add_worker(WorkerSpec::new(WorkerId(0), 2, 16)).expect("worker");
    let hasher = BlockHasher::new(16).expect("hasher");
    let mut streams: Vec<EngineRankStream> = (0..2)
        .map(|r| {
            EngineRankStream::new(RankStreamConfig {
                rank: RankKey::new(0, r),
                worker_ranks: 0..2,
                mapper: MapperConfig::new(hasher),
                limits: DecodeLimits::default(),
                tracker: TrackerConfig::without_replay(),
            })
        })
        .collect();
    for stream in &mut streams {
        assert_eq!(stream.start(&router), None, "no replay endpoint, no replay");
    }
    for line in fixture(&format!("{engine}.jsonl")).lines() {
        let m: Value = serde_json::from_str(line).expect("json line");
        let rank = m["dp_rank"].as_u64().expect("rank") as usize;
        let seq = m["seq"].as_u64().expect("seq").to_be_bytes();
        let topic = m["topic"].as_str().expect("topic").as_bytes().to_vec();
        let payload = hex(m["payload_hex"].as_str().expect("payload"));
        let replay = streams[rank].on_live(&[&topic, &seq, &payload], &router);
        assert_eq!(replay, None, "{engine}: the capture has no gap");
    }
    (router, streams)
}

fn tokens(query: &Value) -> Vec<u32> {
    query["tokens"].as_array().expect("tokens").iter().map(|t| t.as_u64().expect("token") as u32).collect()
}

#[test]
fn every_capture_gives_exactly_the_expected_overlaps() {
    for engine in ENGINES {
        let (router, streams) = replayed(engine);
        let expected: Value = serde_json::from_str(&fixture(&format!("{engine}.expected.json"))).expect("expected");
        for stream in &streams {
            let c = stream.counters();
            assert!(c.dropped.is_empty(), "{engine}: dropped {:?}", c.dropped);
            assert_eq!(c.batches_applied, 12, "{engine}");
            assert_eq!(stream.seq_stats().unrecovered_batches, 0, "{engine}");
            assert_eq!(stream.last_applied_seq(), Some(11), "{engine}");
        }
        for query in expected["queries"].as_array().expect("queries") {
            let name = query["name"].as_str().expect("name");
            let tokens = tokens(query);
            let (found, _) = router.overlaps(Prompt::Tokens(&tokens)).unwrap_or_default();
            for r in 0..2u32 {
                let want = query["overlap"][format!("0/{r}")].as_u64().expect("overlap") as u32;
                let got = found
                    .iter()
                    .find(|(tier, rank, _)| *tier == StorageTier::Device && *rank == RankKey::new(0, r))
                    .map_or(0, |f| f.2);
                assert_eq!(got, want, "{engine} query {name} rank 0/{r}");
            }
            assert!(found.iter().all(|f| f.0 == StorageTier::Device), "{engine}: only GPU blocks were stored");
        }
        // Every block held (plain and namespaced) is in the index, nothing more.
        for r in 0..2u32 {
            let final_state = &expected["final"][format!("0/{r}")];
            let held = final_state["held_blocks"].as_u64().unwrap() + final_state["held_namespaced"].as_u64().unwrap();
            let rank = RankKey { worker: WorkerId(0), dp_rank: DpRank(r) };
            let dump = router.tier_index(StorageTier::Device).export_rank(rank).expect("rank");
            let in_index = dump.iter().filter(|b| !b.placeholder).count() as u64;
            assert_eq!(in_index, held, "{engine} rank 0/{r}: blocks held");
        }
    }
}

#[test]
fn namespaced_chains_match_only_requests_of_the_same_adapter_or_salt() {
    for engine in ENGINES {
        let (router, _) = replayed(engine);
        let expected: Value = serde_json::from_str(&fixture(&format!("{engine}.expected.json"))).expect("expected");
        let mut checked = 0;
        for query in expected["queries"].as_array().expect("queries") {
            let name = query["name"].as_str().expect("name");
            let Some((owner, kind)) = name.split_once('.') else { continue };
            let identity = match kind {
                "L" => BlockIdentity { lora_name: Some("adapter-1"), ..BlockIdentity::default() },
                "T" => BlockIdentity { cache_salt: Some("salt-1"), ..BlockIdentity::default() },
                _ => continue,
            };
            let rank: u32 = owner.trim_start_matches("w0r").parse().expect("rank");
            let tokens = tokens(query);
            let full_blocks = (tokens.len() / 16) as u32;
            let (found, _) = router.overlaps(Prompt::TokensWith(&tokens, identity)).expect("overlaps");
            let got = found.iter().find(|f| f.1 == RankKey::new(0, rank)).map_or(0, |f| f.2);
            assert_eq!(got, full_blocks, "{engine} {name}: the namespaced request gets the whole chain");
            let (plain, _) = router.overlaps(Prompt::Tokens(&tokens)).expect("overlaps");
            assert!(plain.is_empty(), "{engine} {name}: a plain request gets nothing");
            // Another adapter or salt gets nothing either.
            let other = BlockIdentity { lora_name: Some("adapter-2"), cache_salt: Some("salt-2"), ..identity };
            let (foreign, _) = router.overlaps(Prompt::TokensWith(&tokens, other)).expect("overlaps");
            assert!(foreign.is_empty(), "{engine} {name}: another namespace gets nothing");
            checked += 1;
        }
        // SGLang 0.5.19 has no LoRA fields: only its salted chains.
        let want = if engine == "sglang-legacy" { 2 } else { 4 };
        assert_eq!(checked, want, "{engine}: namespaced queries checked");
    }
}
