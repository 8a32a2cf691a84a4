"""The engines' own bytes through `apply_events`: every message captured from vLLM's and
SGLang's publisher code (data/engine-events, four releases), then every query of the
capture's expected.json must get exactly the overlaps it lists."""

import json
import pathlib

import pytest

import kvroute

CAPTURES = pathlib.Path(__file__).parents[2] / "data" / "engine-events"


@pytest.mark.parametrize("engine", ["vllm", "vllm-legacy", "sglang", "sglang-legacy"])
def test_every_capture_gives_exactly_the_expected_overlaps(engine):
    router = kvroute.Router(block_size=16)
    router.add_worker(0, dp_size=2)
    messages = [json.loads(line) for line in (CAPTURES / f"{engine}.jsonl").read_text().splitlines()]
    for message in messages:
        router.apply_events(message["worker"], message["dp_rank"], bytes.fromhex(message["payload_hex"]))
    stats = router.ingest_stats()["apply_events"]
    assert stats["batches"] == len(messages) == 24 and stats["dropped"] == 0
    expected = json.loads((CAPTURES / f"{engine}.expected.json").read_text())
    for query in expected["queries"]:
        found = router.overlaps(query["tokens"])
        for rank in (0, 1):
            want = query["overlap"][f"0/{rank}"]
            assert found.get((0, rank), 0) == want, (engine, query["name"], rank)
        if query["name"].endswith(".L"):
            blocks = len(query["tokens"]) // 16
            owner = int(query["name"][3])
            assert router.overlaps(query["tokens"], lora_name="adapter-1") == {(0, owner): blocks}
