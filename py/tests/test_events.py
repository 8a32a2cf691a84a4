"""Engine KV events from Python: msgpack bytes, the engines' objects, a ZeroMQ publisher."""

import os
import pathlib
import struct
import subprocess
import time

import msgpack
import msgspec
import pytest
import zmq

import kvroute
from conftest import BLOCK, batch, chain, removed, stored


def exact_router():
    router = kvroute.Router(block_size=BLOCK, seed=2)
    router.add_worker(1, dp_size=2)
    return router


def test_events_from_bytes_change_the_next_decision():
    router = exact_router()
    tokens = chain(0, 4)
    router.apply_events(1, 1, batch([stored([11, 12, 13, 14], tokens)], dp_rank=1))
    assert router.overlaps(tokens) == {(1, 1): 4}
    for _ in range(10):
        assert router.best_worker(tokens, dry_run=True) == (1, 1, 4)
    # A hole at block 3 ends rank 1's overlap there.
    router.apply_events(1, 1, batch([removed([13])], dp_rank=1))
    assert router.overlaps(tokens) == {(1, 1): 2}
    router.apply_events(1, 0, batch([stored([21, 22, 23, 24], tokens)], dp_rank=0))
    assert router.best_worker(tokens, dry_run=True) == (1, 0, 4)
    router.apply_events(1, 0, batch([["AllBlocksCleared"]], dp_rank=0))
    assert router.overlaps(tokens) == {(1, 1): 2}
    assert router.workers()[0]["exact"] is True
    stats = router.ingest_stats()["apply_events"]
    assert stats == {"batches": 4, "events": stats["events"], "dropped": 0} and stats["events"] >= 4


def test_map_encoded_events_and_plain_python_objects():
    router = exact_router()
    tokens = chain(100, 3)
    event = {"type": "BlockStored", "block_hashes": [1, 2, 3], "parent_block_hash": None,
             "token_ids": tokens, "block_size": BLOCK, "medium": "GPU", "future_field": [1]}
    router.apply_events(1, 0, {"ts": 0.5, "events": [event], "data_parallel_rank": 0})
    assert router.overlaps(tokens) == {(1, 0): 3}
    # The same as a plain list, unencoded.
    router.apply_events(1, 1, [0.5, [stored([7, 8, 9], tokens)], 1])
    assert router.overlaps(tokens) == {(1, 0): 3, (1, 1): 3}


class BlockStored(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    """vLLM's class (vllm/distributed/kv_events.py), field for field."""
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None = None


class BlockRemoved(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    block_hashes: list[int]
    medium: str | None


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[BlockStored | BlockRemoved]
    data_parallel_rank: int | None = None


def test_the_engines_msgspec_objects_and_their_encoding_agree():
    objects, encoded = exact_router(), exact_router()
    tokens = chain(500, 5)
    adapter_tokens = chain(900, 2)
    events = KVEventBatch(ts=time.time(), events=[
        BlockStored([1, 2, 3, 4, 5], None, tokens, BLOCK, None, "GPU"),
        BlockRemoved([5], "GPU"),
        BlockStored([31, 32], None, adapter_tokens, BLOCK, None, "GPU", lora_name="adapter-1"),
    ], data_parallel_rank=1)
    objects.apply_events(1, 1, events)
    encoded.apply_events(1, 1, msgspec.msgpack.encode(events))
    for router in (objects, encoded):
        assert router.overlaps(tokens) == {(1, 1): 4}
        # LoRA blocks credit only requests of that adapter.
        assert router.overlaps(adapter_tokens) == {}
        assert router.overlaps(adapter_tokens, lora_name="adapter-1") == {(1, 1): 2}
        assert router.best_worker(adapter_tokens, dry_run=True, lora_name="adapter-1") == (1, 1, 2)


def test_bad_batches_are_refused_and_counted_and_nothing_else_changes():
    router = exact_router()
    tokens = chain(0, 2)
    router.apply_events(1, 0, batch([stored([1, 2], tokens)], dp_rank=0))
    with pytest.raises(kvroute.KvrouteError, match="does not decode"):
        router.apply_events(1, 0, b"\xc1not msgpack")
    with pytest.raises(kvroute.KvrouteError, match="does not decode"):
        router.apply_events(1, 0, msgpack.packb([1.0, [["BlockStored", [1], None, [1, 2, 3], BLOCK]], 0]))
    with pytest.raises(kvroute.KvrouteError, match="dp rank 1"):
        router.apply_events(1, 0, batch([stored([3], chain(0, 1))], dp_rank=1))
    with pytest.raises(kvroute.KvrouteError, match="unknown worker 5"):
        router.apply_events(5, 0, batch([], dp_rank=0))
    with pytest.raises(kvroute.KvrouteError, match="outside worker 1"):
        router.apply_events(1, 2, batch([], dp_rank=2))
    with pytest.raises(TypeError):
        router.apply_events(1, 0, [1.0, [object()], 0])
    assert router.overlaps(tokens) == {(1, 0): 2}
    assert router.ingest_stats()["apply_events"]["dropped"] == 3


def test_a_subscription_to_an_engine_publisher_feeds_the_index():
    router = kvroute.Router(block_size=BLOCK, seed=4)
    router.add_worker(1, dp_size=2)
    context = zmq.Context.instance()
    publishers = [context.socket(zmq.PUB) for _ in range(2)]
    base = publishers[0].bind_to_random_port("tcp://127.0.0.1", min_port=20000, max_port=40000)
    try:
        publishers[1].bind(f"tcp://127.0.0.1:{base + 1}")
    except zmq.ZMQError:
        pytest.skip("port after the first one is taken")
    router.subscribe_engine_events(1, f"tcp://127.0.0.1:{base}", engine="sglang")
    tokens = chain(0, 6)
    deadline = time.time() + 20
    seq = 0
    # A SUB socket joins asynchronously: publish until the rank's blocks arrive (the
    # router's tracker takes the first batch it sees as a late join).
    while router.overlaps(tokens) != {(1, 1): 6}:
        assert time.time() < deadline, router.ingest_stats()
        payload = batch([stored([101, 102, 103, 104, 105, 106], tokens)], dp_rank=1)
        publishers[1].send_multipart([b"", struct.pack(">Q", seq), payload])
        seq += 1
        time.sleep(0.05)
    assert router.best_worker(tokens, dry_run=True) == (1, 1, 6)
    stats = router.ingest_stats()["engine"]
    assert stats["batches"] >= 1 and stats["dropped"] == 0
    assert {(r["worker_id"], r["dp_rank"]) for r in stats["ranks"]} == {(1, 0), (1, 1)}
    assert router.unsubscribe_engine_events(1)
    assert not router.unsubscribe_engine_events(1)
    with pytest.raises(kvroute.KvrouteError, match="endpoint"):
        router.subscribe_engine_events(1, "tcp://*:5557")
    for socket in publishers:
        socket.close(linger=0)


def kvroute_binary():
    """The `kvroute` binary the workspace build made (CI builds it before these tests)."""
    path = os.environ.get("KVROUTE_BIN") or str(pathlib.Path(__file__).parents[2] / "target" / "debug" / "kvroute")
    if not os.path.exists(path):
        if os.environ.get("KVROUTE_BIN"):
            pytest.fail(f"KVROUTE_BIN={path} does not exist")
        pytest.skip("no kvroute binary: run `cargo build -p kvroute-net` (CI sets KVROUTE_BIN)")
    return path


def test_a_bridge_publishes_an_engines_events_to_the_routers_quic_listener_with_mutual_tls(tmp_path):
    binary = kvroute_binary()
    subprocess.run([binary, "certs", "--out", str(tmp_path), "--workers", "1"], check=True, capture_output=True)
    router = kvroute.Router(block_size=BLOCK, seed=6)
    router.add_worker(1, dp_size=1)
    address = router.listen_events("127.0.0.1:0", ca=tmp_path / "ca.pem", cert=tmp_path / "router.pem",
                                   key=tmp_path / "router.key")
    publisher = zmq.Context.instance().socket(zmq.PUB)
    port = publisher.bind_to_random_port("tcp://127.0.0.1", min_port=20000, max_port=40000)
    bridge = subprocess.Popen(
        [binary, "bridge", "--engine-events", f"worker_id=1,endpoint=tcp://127.0.0.1:{port}",
         "--router", address, "--server-name", "localhost", "--ca", str(tmp_path / "ca.pem"),
         "--cert", str(tmp_path / "publisher-1.pem"), "--key", str(tmp_path / "publisher-1.key")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        tokens = chain(3000, 5)
        deadline = time.time() + 30
        seq = 0
        while router.overlaps(tokens) != {(1, 0): 5}:
            assert bridge.poll() is None, bridge.stderr.read().decode()
            assert time.time() < deadline, router.ingest_stats()
            payload = batch([stored([201, 202, 203, 204, 205], tokens)], dp_rank=0)
            publisher.send_multipart([b"", struct.pack(">Q", seq), payload])
            seq += 1
            time.sleep(0.05)
        quic = router.ingest_stats()["quic"]
        assert quic["connections_total"] >= 1 and quic["events_applied"] >= 1
        assert quic["rejected_unauthorized"] == 0
        assert router.best_worker(tokens, dry_run=True) == (1, 0, 5)
    finally:
        bridge.kill()
        bridge.wait()
        publisher.close(linger=0)


def test_a_quic_listener_binds_loopback_and_refuses_half_tls():
    router = exact_router()
    address = router.listen_events("127.0.0.1:0")
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert router.ingest_stats()["quic"]["connections_total"] == 0
    with pytest.raises(ValueError, match="ca, cert and key"):
        router.listen_events("127.0.0.1:0", ca="ca.pem")
    with pytest.raises(kvroute.KvrouteError, match="loopback"):
        router.listen_events("0.0.0.0:0")
