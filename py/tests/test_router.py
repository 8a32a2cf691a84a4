"""The Router API: registration, decisions, request bookkeeping, bad input."""

import array
import threading

import numpy as np
import pytest

import kvroute
from conftest import chain


def test_the_seeds_checks_dp_rank_in_range_and_spread_over_ranks():
    router = kvroute.Router(block_size=16, seed=1)
    router.add_worker(7, dp_size=4)
    worker, rank, overlap = router.best_worker([1, 2, 3, 4, 5], dry_run=True)
    assert (worker, overlap) == (7, 0) and 0 <= rank < 4
    ranks = set()
    for i in range(50):
        worker, rank, _ = router.best_worker(list(range(i * 7, i * 7 + 10)), dry_run=True)
        assert worker == 7 and 0 <= rank < 4
        ranks.add(rank)
    assert len(ranks) >= 2, ranks


def test_list_array_and_numpy_prompts_decide_alike():
    router = kvroute.Router(seed=3)
    router.add_worker(1, dp_size=2)
    tokens = chain(0, 8)
    decision = router.route(tokens, request_id="warm")  # approximate mode: remembered
    assert router.finish("warm")  # the load goes, the blocks stay credited
    for form in (tokens, tuple(tokens), array.array("I", tokens), np.array(tokens, dtype=np.uint32),
                 np.array(tokens, dtype=np.int64), np.array(tokens, dtype=np.int32)):
        worker, rank, overlap = router.best_worker(form, dry_run=True)
        assert (worker, rank, overlap) == (1, decision.dp_rank, 8)


def test_route_charges_load_until_finish_under_either_id():
    router = kvroute.Router(seed=5)
    router.add_worker(3, dp_size=2)
    named = router.route(chain(0, 4), request_id="req-1", output_tokens=32)
    assert named.request_id == "req-1"
    anonymous = router.route(chain(1000, 2))
    assert isinstance(anonymous.request_id, int)
    assert router.active_requests() == 2
    loads = router.loads()
    assert sum(l["requests"] for l in loads.values()) == 2
    assert loads[(3, named.dp_rank)]["prefill_tokens"] >= 64
    assert router.prefill_done("req-1")
    assert router.finish("req-1") and not router.finish("req-1")
    assert router.finish(anonymous.request_id)
    assert router.active_requests() == 0
    assert all(l == {"prefill_tokens": 0, "decode_blocks": 0, "requests": 0} for l in router.loads().values())
    dry = router.route(chain(0, 4), dry_run=True)
    assert dry.request_id is None and router.active_requests() == 0
    assert router.finish("never-seen") is False


def test_a_request_id_in_flight_cannot_be_reused():
    router = kvroute.Router()
    router.add_worker(1, dp_size=1)
    router.best_worker([1] * 32, request_id="dup")
    with pytest.raises(kvroute.KvrouteError, match="already in flight"):
        router.best_worker([1] * 32, request_id="dup")
    assert router.active_requests() == 1
    router.finish("dup")
    router.best_worker([1] * 32, request_id="dup")


def test_workers_filters_and_pinned_ranks():
    router = kvroute.Router()
    router.add_worker(1, dp_size=2)
    router.add_worker(2, dp_size=4, start_rank=4, dp_world_size=8)
    info = {w["worker_id"]: w for w in router.workers()}
    assert info[2]["start_rank"] == 4 and info[2]["dp_world_size"] == 8 and info[2]["role"] == "both"
    for _ in range(20):
        worker, rank, _ = router.best_worker([5] * 40, dry_run=True, workers=[2])
        assert worker == 2 and 4 <= rank < 8
    assert router.best_worker([5] * 40, dry_run=True, workers=[2], dp_rank=6)[:2] == (2, 6)
    with pytest.raises(kvroute.KvrouteError, match="outside"):
        router.best_worker([5] * 40, dry_run=True, workers=[2], dp_rank=1)
    router.remove_worker(1)
    assert [w["worker_id"] for w in router.workers()] == [2]
    with pytest.raises(kvroute.KvrouteError, match="unknown worker 1"):
        router.remove_worker(1)


def test_bad_input_raises_with_the_routers_message():
    router = kvroute.Router()
    router.add_worker(1, dp_size=2)
    with pytest.raises(ValueError, match="-1 at position 2"):
        router.best_worker([1, 2, -1])
    with pytest.raises(ValueError, match="4294967296 at position 0"):
        router.best_worker([2**32])
    with pytest.raises(ValueError, match="outside"):
        router.best_worker(np.array([1, -5], dtype=np.int64))
    with pytest.raises(TypeError, match="position 1"):
        router.best_worker([1, "x"])
    with pytest.raises(TypeError):
        router.best_worker(np.array([1.0, 2.0]))
    with pytest.raises(TypeError):
        router.best_worker("not tokens")
    with pytest.raises(kvroute.KvrouteError, match="empty prompt"):
        router.best_worker([])
    with pytest.raises(kvroute.KvrouteError, match="unknown worker 9"):
        router.best_worker([1] * 16, workers=[9])
    with pytest.raises(kvroute.KvrouteError, match="already registered"):
        router.add_worker(1, dp_size=2)
    with pytest.raises(kvroute.KvrouteError, match="dp_size"):
        router.add_worker(2, dp_size=0)
    with pytest.raises(kvroute.KvrouteError, match="bootstrap"):
        router.add_worker(3, dp_size=2, role="prefill")
    with pytest.raises(ValueError, match="role"):
        router.add_worker(3, dp_size=2, role="leader")
    with pytest.raises(ValueError, match="hashing"):
        kvroute.Router(hashing="md5")
    with pytest.raises(ValueError, match="policy must be one of predicted_ttft, cost"):
        kvroute.Router(policy="fastest")
    with pytest.raises(kvroute.KvrouteError, match="block"):
        kvroute.Router(block_size=0)
    with pytest.raises(kvroute.KvrouteError, match="temperature"):
        kvroute.Router(temperature=-1.0)
    with pytest.raises(TypeError):
        router.finish(1.5)
    assert issubclass(kvroute.KvrouteError, ValueError)


def test_a_2d_or_strided_array_is_refused():
    router = kvroute.Router()
    router.add_worker(1, dp_size=1)
    with pytest.raises(ValueError, match="one-dimensional"):
        router.best_worker(np.zeros((2, 16), dtype=np.uint32))
    with pytest.raises(ValueError, match="contiguous"):
        router.best_worker(np.arange(64, dtype=np.uint32)[::2])


def test_eight_threads_route_and_finish_with_exact_load_bookkeeping():
    router = kvroute.Router(seed=11)
    router.add_worker(1, dp_size=4)
    router.add_worker(2, dp_size=4)
    per_thread = 400
    held = [[] for _ in range(8)]
    errors = []
    barrier = threading.Barrier(8)

    def work(t):
        try:
            barrier.wait()
            tokens = np.arange(t * 10_000, t * 10_000 + 512, dtype=np.uint32)
            for i in range(per_thread):
                key = f"t{t}-{i}"
                router.route(tokens, request_id=key, output_tokens=16)
                if i % 2:
                    assert router.finish(key)
                else:
                    held[t].append(key)
        except Exception as error:  # reported below, with the thread
            errors.append((t, error))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    expected = 8 * per_thread // 2
    assert router.active_requests() == expected
    loads = router.loads()
    assert sum(l["requests"] for l in loads.values()) == expected
    # 512 prompt tokens + 16 output = 33 blocks charged as decode per request.
    assert sum(l["decode_blocks"] for l in loads.values()) == expected * 33
    for keys in held:
        for key in keys:
            assert router.finish(key)
    assert router.active_requests() == 0
    assert all(l["requests"] == 0 and l["decode_blocks"] == 0 and l["prefill_tokens"] == 0
               for l in router.loads().values())


def test_policies_pick_by_their_own_rule():
    def fleet(policy):
        router = kvroute.Router(policy=policy, seed=7)
        router.add_worker(1, dp_size=2)
        prompt = list(range(64))
        router.route(prompt, workers=[1], dp_rank=0)  # one request charged to rank 0
        return router, prompt

    router, prompt = fleet("round_robin")
    picks = [router.best_worker(prompt, dry_run=True)[1] for _ in range(4)]
    assert picks[0] != picks[1] and picks[:2] == picks[2:], picks
    router, prompt = fleet("least_loaded")
    assert all(router.best_worker(prompt, dry_run=True)[1] == 1 for _ in range(8))


def test_a_decision_says_what_overlap_it_left_and_why():
    router = kvroute.Router(policy="least_loaded", seed=11)
    router.add_worker(1, dp_size=2)
    prompt = list(range(64))
    router.route(prompt, request_id="held", workers=[1], dp_rank=0)  # rank 0: 4 blocks remembered, 1 request
    decision = router.route(prompt, dry_run=True)
    assert (decision.dp_rank, decision.overlap_blocks) == (1, 0)
    assert (decision.best_overlap_blocks, decision.shortfall) == (4, "policy")
    pinned = router.route(prompt, dry_run=True, workers=[1], dp_rank=0)
    assert (pinned.overlap_blocks, pinned.best_overlap_blocks, pinned.shortfall) == (4, 4, None)


def test_engine_cache_tokens_cap_what_running_requests_count():
    def fleet(**size):
        router = kvroute.Router(seed=13, **size)
        router.add_worker(1, dp_size=2)
        prompt = chain(0, 8)
        router.route(prompt, request_id="warm", workers=[1], dp_rank=0)  # rank 0 remembers the prompt
        assert router.prefill_done("warm") and router.finish("warm")
        router.route(chain(5000, 100), request_id="long", workers=[1], dp_rank=0)  # 100 blocks of KV
        assert router.prefill_done("long")  # still running: its KV counts, its prefill no longer
        return router, prompt

    # Unknown cache size: a quarter of 1,600 KV tokens on rank 0 outweighs 1.5 x 128 on rank 1.
    router, prompt = fleet()
    assert all(router.best_worker(prompt, dry_run=True)[1] == 1 for _ in range(8))
    # A 64-token cache holds 4 of those blocks at most: 16 tokens of queue, and the prompt is cached.
    router, prompt = fleet(engine_cache_tokens=64)
    assert all(router.best_worker(prompt, dry_run=True)[1:] == (0, 8) for _ in range(8))
    with pytest.raises(ValueError, match="engine_cache_tokens must hold at least one block of 16 tokens"):
        kvroute.Router(engine_cache_tokens=15)
