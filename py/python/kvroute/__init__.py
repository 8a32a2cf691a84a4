"""kvroute: KV-cache-aware routing of LLM requests to (worker, DP rank), in-process.

``Router`` holds kvroute's index of which blocks each engine DP rank has cached (fed by
the engines' own KV events) and picks, per request, the rank whose cache holds the
longest prefix of the prompt at the lowest load::

    import kvroute

    router = kvroute.Router(block_size=16)
    router.add_worker(7, dp_size=4)
    worker_id, dp_rank, overlap_blocks = router.best_worker(token_ids, request_id="req-1")
    ...  # send the request to worker 7, rank dp_rank
    router.finish("req-1")

Calls take microseconds and release the GIL while they hash and look up; one router is
safe to share between threads and coroutines (no asyncio wrapper is needed).
"""

from ._native import Decision, KvrouteError, PdDecision, Router, __version__

__all__ = ["Router", "Decision", "PdDecision", "KvrouteError", "__version__"]
