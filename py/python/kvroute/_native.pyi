"""Type stubs of kvroute's native module (re-exported by ``kvroute``)."""

from array import array
from collections.abc import Sequence
from os import PathLike
from typing import Any, Literal, Protocol

__version__: str

class _Buffer(Protocol):
    def __buffer__(self, flags: int, /) -> memoryview: ...

TokenIds = Sequence[int] | array | _Buffer
"""A list or tuple of ints, an ``array('I')``, or a one-dimensional NumPy array
(``uint32`` is read in place; other integer dtypes are converted)."""

RankKey = tuple[int, int]
"""``(worker_id, dp_rank)``."""

class KvrouteError(ValueError):
    """The router refused a call (unknown worker, empty prompt, bad configuration, an
    event batch that does not decode, a request id already in flight, ...)."""

class Decision:
    """Where a request goes and why."""

    @property
    def worker_id(self) -> int: ...
    @property
    def dp_rank(self) -> int: ...
    @property
    def overlap_blocks(self) -> int:
        """Leading prompt blocks the rank holds in device memory."""
    @property
    def best_overlap_blocks(self) -> int:
        """The most leading prompt blocks any candidate held in device memory."""
    @property
    def shortfall(self) -> str | None:
        """Why ``overlap_blocks`` is below ``best_overlap_blocks``: ``"load"``, ``"tier"``,
        ``"temperature"`` or ``"policy"``; ``None`` when it is not."""
    @property
    def request_id(self) -> str | int | None:
        """The id for ``prefill_done`` / ``finish``: the caller's ``request_id``, else the
        router's own (an int); ``None`` for a dry run."""
    @property
    def cost(self) -> dict[str, float]:
        """``request_blocks``, ``overlap_credit``, ``prefill_blocks``, ``decode_blocks``,
        ``active_requests``, ``total``."""
    def as_tuple(self) -> tuple[int, int, int]:
        """``(worker_id, dp_rank, overlap_blocks)``."""

class PdDecision:
    """A prefill rank and a decode rank tied by a bootstrap room:
    ``bootstrap_room % prefill_dp_size == prefill.dp_rank``."""

    @property
    def prefill(self) -> Decision: ...
    @property
    def decode(self) -> Decision: ...
    @property
    def bootstrap_room(self) -> int: ...
    @property
    def bootstrap_host(self) -> str: ...
    @property
    def bootstrap_port(self) -> int | None: ...
    @property
    def prefill_dp_size(self) -> int: ...
    @property
    def request_id(self) -> str | int | None: ...
    def prefill_fields(self) -> dict[str, Any]:
        """Merge into the prefill server's request: ``routed_dp_rank``, ``bootstrap_host``,
        ``bootstrap_port``, ``bootstrap_room``."""
    def decode_fields(self) -> dict[str, Any]:
        """Merge into the decode server's request: ``routed_dp_rank``,
        ``disagg_prefill_dp_rank``, ``data_parallel_rank``, ``bootstrap_host``,
        ``bootstrap_port``, ``bootstrap_room``."""

class Router:
    """A KV-cache-aware router over (worker, DP rank). Thread-safe."""

    def __init__(
        self,
        block_size: int = 16,
        *,
        hashing: Literal["kv64", "xxh3"] = "kv64",
        policy: Literal[
            "predicted_ttft", "cost", "cache_aware", "weighted", "largest_overlap",
            "least_loaded", "round_robin", "random",
        ] = "predicted_ttft",
        temperature: float = 0.0,
        prefill_scale: float = 1.0,
        decode_weight: float = 1.0,
        request_weight: float = 0.0,
        host_tier_weight: float = 0.75,
        disk_tier_weight: float = 0.25,
        request_ttl_s: float = 300.0,
        approx_ttl_s: float = 120.0,
        index_shards: int = 1,
        engine_cache_tokens: int | None = None,
        seed: int | None = None,
    ) -> None: ...
    @property
    def block_size(self) -> int: ...
    def add_worker(
        self,
        worker_id: int,
        dp_size: int,
        *,
        start_rank: int = 0,
        role: Literal["both", "prefill", "decode"] = "both",
        bootstrap_host: str | None = None,
        bootstrap_port: int | None = None,
        dp_world_size: int | None = None,
    ) -> None:
        """Registers a worker owning ranks ``start_rank .. start_rank + dp_size``. A
        prefill worker needs ``bootstrap_host`` (and usually ``bootstrap_port``)."""
    def remove_worker(self, worker_id: int) -> None: ...
    def workers(self) -> list[dict[str, Any]]: ...
    def best_worker(
        self,
        token_ids: TokenIds,
        *,
        dry_run: bool = False,
        workers: Sequence[int] | None = None,
        dp_rank: int | None = None,
        lora_name: str | None = None,
        request_id: str | None = None,
        output_tokens: int = 0,
    ) -> tuple[int, int, int]:
        """``(worker_id, dp_rank, overlap_blocks)``. Unless ``dry_run`` the rank is
        charged until ``finish(request_id)`` (or ``request_ttl_s``)."""
    def route(
        self,
        token_ids: TokenIds,
        *,
        dry_run: bool = False,
        workers: Sequence[int] | None = None,
        dp_rank: int | None = None,
        lora_name: str | None = None,
        request_id: str | None = None,
        output_tokens: int = 0,
    ) -> Decision: ...
    def route_disaggregated(
        self,
        token_ids: TokenIds,
        *,
        dry_run: bool = False,
        prefill_workers: Sequence[int] | None = None,
        decode_workers: Sequence[int] | None = None,
        same_rank: bool = False,
        lora_name: str | None = None,
        request_id: str | None = None,
        output_tokens: int = 0,
    ) -> PdDecision: ...
    def prefill_done(self, request_id: str | int) -> bool: ...
    def finish(self, request_id: str | int) -> bool: ...
    def active_requests(self) -> int: ...
    def loads(self) -> dict[RankKey, dict[str, int]]: ...
    def overlaps(
        self,
        token_ids: TokenIds,
        *,
        lora_name: str | None = None,
        tier: Literal["device", "host", "disk"] = "device",
    ) -> dict[RankKey, int]: ...
    def apply_events(self, worker_id: int, dp_rank: int, batch: bytes | Any) -> None:
        """One engine ``EventBatch``: its msgpack payload, or the engine's event objects
        (vLLM / SGLang ``msgspec`` structs), or lists and dicts of the same shape."""
    def subscribe_engine_events(
        self,
        worker_id: int,
        endpoint: str,
        *,
        replay: str | None = None,
        dp_size: int | None = None,
        bind: bool = False,
        topic: str = "",
        engine: Literal["vllm", "sglang"] = "vllm",
        page_size: int | None = None,
    ) -> None:
        """Subscribes to the worker's ZeroMQ KV-event publishers (rank ``r`` at the
        endpoint's port + r), on the router's own I/O threads."""
    def unsubscribe_engine_events(self, worker_id: int) -> bool: ...
    def listen_events(
        self,
        address: str = "127.0.0.1:0",
        *,
        ca: str | PathLike[str] | None = None,
        cert: str | PathLike[str] | None = None,
        key: str | PathLike[str] | None = None,
    ) -> str:
        """Accepts QUIC KV-event publishers (``kvroute bridge``) on ``address``; returns
        the bound address."""
    def ingest_stats(self) -> dict[str, Any]: ...
    def _time_decisions(self, token_ids: TokenIds, iterations: int, *, dry_run: bool = True) -> list[int]:
        """Benchmark aid: nanoseconds of each of ``iterations`` identical decisions, timed
        in Rust (no Python in the loop)."""
