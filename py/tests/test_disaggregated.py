"""Prefill/decode disaggregation: the room names the prefill rank for every P."""

import pytest

import kvroute


@pytest.mark.parametrize("prefill_dp", range(1, 65))
def test_the_room_names_the_prefill_rank(prefill_dp):
    router = kvroute.Router(seed=prefill_dp)
    router.add_worker(1, dp_size=prefill_dp, role="prefill", bootstrap_host="10.0.0.1", bootstrap_port=8998)
    router.add_worker(2, dp_size=3, role="decode")
    prefill_ranks = set()
    for i in range(8):
        pd = router.route_disaggregated(list(range(i * 50, i * 50 + 64)), request_id=f"r{i}")
        assert pd.bootstrap_room % prefill_dp == pd.prefill.dp_rank
        assert 0 <= pd.prefill.dp_rank < prefill_dp and 0 <= pd.decode.dp_rank < 3
        assert pd.prefill.worker_id == 1 and pd.decode.worker_id == 2
        assert pd.prefill_dp_size == prefill_dp and pd.request_id == f"r{i}"
        prefill_ranks.add(pd.prefill.dp_rank)
        to_prefill, to_decode = pd.prefill_fields(), pd.decode_fields()
        assert to_prefill == {"routed_dp_rank": pd.prefill.dp_rank, "bootstrap_host": "10.0.0.1",
                              "bootstrap_port": 8998, "bootstrap_room": pd.bootstrap_room}
        assert to_decode["disagg_prefill_dp_rank"] == pd.prefill.dp_rank
        assert to_decode["routed_dp_rank"] == to_decode["data_parallel_rank"] == pd.decode.dp_rank
        assert to_decode["bootstrap_room"] == pd.bootstrap_room and pd.bootstrap_room <= 2**63 - 1
    if prefill_dp > 1:
        assert len(prefill_ranks) > 1  # loads spread the eight prefills
    for i in range(8):
        assert router.prefill_done(f"r{i}") and router.finish(f"r{i}")
    assert router.active_requests() == 0


def test_no_prefill_worker_is_an_error():
    router = kvroute.Router()
    router.add_worker(2, dp_size=2, role="decode")
    with pytest.raises(kvroute.KvrouteError, match="no registered rank"):
        router.route_disaggregated([1] * 32)
